"""The coordinator process: the model Coordinator and the run's Recorder behind a ROUTER socket.

Decisions come only from message contents: requests are granted in canonical order once no CPU can
precede them (Coordinator.step), CPUs run ahead no further than the IPI lookahead allows, and trace events
are merged by their (t, source, n) key. So the run digest equals the single-process engine's whatever the
arrival order, the placement of CPUs on hosts, or their PIDs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import zmq

from smpsim.config import Config
from smpsim.engines import stopping
from smpsim.engines.core import Core, Up
from smpsim.engines.distributed import protocol as p
from smpsim.engines.distributed.logs import RateLimitedLog
from smpsim.engines.distributed.respawn import NO_RESPAWN, CatchUp, CheckpointStore, RespawnPolicy
from smpsim.engines.distributed.security import same_token
from smpsim.trace.recorder import Recorder
from smpsim.engines.stopping import RunAborted
from smpsim.model import messages as mm
from smpsim import workload_files
from smpsim.model import workloads
from smpsim.model.coordinator import Coordinator
from smpsim.model.errors import ModelError
from smpsim.trace.errors import TraceWriteError


IDLE_WAIT_MS = 20  # an idle coordinator waits this long in recv (RCVTIMEO) before its liveness checks
RELEASE_EVERY_S = 0.005  # the trace is released below the watermark at most this often while idle ...
RELEASE_LATEST_S = 0.05  # ... and at least this often, even when a request is always waiting
LIVENESS_EVERY_S = 0.05  # children, silent CPUs, heartbeats and progress are looked at this often
CLAIM_WAIT_S = 2 * p.PEER_TIMEOUT_S  # a HELLO for a running CPU waits this long for its predecessor to be lost
REFUSE_ANSWERS = 3  # refusals answered per unjoined connection; the rest are only counted
STRANGER_BUDGET = 500  # messages from unjoined connections handled per loop turn

_SNDMORE, _NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)

# What a malformed message's contents raise when the coordinator applies them (the shape is checked first)
_BAD_CONTENT = (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError)


class CoordinatorNode:
    def __init__(self, cfg: Config, run_dir: Path | None, sock: zmq.Socket, run_id: str, token: str = "",
                 log=None, check_children: Callable[[], tuple[int, str] | None] | None = None,
                 progress: Callable[[dict], None] | None = None, join_timeout: float = p.JOIN_TIMEOUT_S,
                 t_start: float | None = None, curve=None, respawn: RespawnPolicy = NO_RESPAWN,
                 replace_cpu: Callable[[int], None] | None = None):
        self.cfg, self.sock, self.run_id, self.token = cfg, sock, run_id, token
        self.log = log
        self.refused = RateLimitedLog(log, interval=2.0)
        self.answered: dict[bytes, int] = {}  # REFUSE answers sent per unjoined connection
        self.curve = curve  # a security.CurveServer whose handshake refusals are logged here
        self.n = cfg.machine.cpus
        self.check_children = check_children
        self.progress = progress
        self.join_timeout = join_timeout
        self.ident: list[bytes | None] = [None] * self.n
        self.by_ident: dict[bytes, int] = {}
        self.hosts: dict[int, str] = {}
        sock.setsockopt(zmq.RCVTIMEO, IDLE_WAIT_MS)  # the wait for the next message, in recv itself
        self.waiting = p.waiting(sock)
        self.backlog = False  # messages left waiting by the last turn's budget
        self.released_at = 0.0  # when the trace was last released up to the watermark
        self.links = [p.Link() for _ in range(self.n)]
        self.names = [f"CPU {c}" for c in range(self.n)]  # for messages, made once
        self.last_heard = [0.0] * self.n
        self.last_sent = [0.0] * self.n
        self.running = False
        self.dirty = False
        self.bye: set[int] = set()
        self.cpu_maxrss_kb: dict[int, int] = {}
        self.n_in = self.n_out = 0
        self.n_wakeups = self.n_steps = 0  # turns that found messages; Core.step calls (for the bench)
        self.t_created = t_start if t_start is not None else time.monotonic()  # start-up counts from here
        self.t_all_joined: float | None = None
        self.last_liveness = 0.0
        # No workload travels: each CPU process reads its own copy of a file, checked by its SHA-256.
        self.config_dict = workload_files.shipped(cfg)
        self.core = Core(Coordinator(cfg), Recorder(cfg, run_dir, "distributed"), workloads.script_lines(cfg))
        self.rec = self.core.rec
        self.horizon = self.core.horizon  # how far each CPU has got (for fault messages)
        # Replacing lost CPU processes: launch's replace_cpu starts a new process for a CPU id; without it
        # (`smpsim coordinator`) the CPU's own restart (a pod's) joins again with the same id.
        self.respawn = respawn
        self.replace_cpu = replace_cpu
        self.claims: dict[int, tuple[bytes, dict, float]] = {}  # CPU -> a HELLO waiting for its predecessor's loss
        self.store = CheckpointStore(self.n) if self.respawn.enabled else None
        self.respawns = [0] * self.n
        self.replacing: dict[int, float] = {}      # CPU -> when its replacement was started
        self.catching_up: dict[int, CatchUp] = {}
        self.retired: set[bytes] = set()           # connections of lost processes: what they left is dropped

    # ---- sending ----------------------------------------------------------------------------------
    def _send(self, cpu: int, kind: str, *fields) -> None:
        frame = p.pack([kind, self.links[cpu].out(), *fields])
        sock = self.sock
        try:
            p.send(sock, self.ident[cpu], _SNDMORE)  # (send_multipart's checks cost more than the sends)
            p.send(sock, frame)
        except zmq.Again:
            raise RunAborted(f"CPU {cpu} is not taking messages (send queue full for "
                             f"{p.SEND_TIMEOUT_MS} ms)", cpu) from None
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                return self._disconnected(cpu)
            raise
        self.last_sent[cpu] = time.monotonic()
        self.n_out += 1

    def _fault(self, kind: str, reason: str, cpu: int | None = None, **kw) -> None:
        """A fault goes on record twice: an error line in the coordinator's log, an entry in summary.json."""
        if self.log:
            self.log.error(kind, reason=reason, **({"cpu": cpu} if cpu is not None else {}), **kw)
        self.rec.fault(kind, reason, cpu)

    def _refuse(self, ident: bytes | None, reason: str, **kw) -> None:
        """On record (the log rate-limited, summary.json bounded) and answered, the first few times per
        connection only: a flood from one peer costs a decode and a count per message, nothing more."""
        self.refused(reason, **kw)
        self.rec.fault("refused", reason, kw.get("cpu"))
        if ident is None:
            return
        n = self.answered.get(ident, 0)
        if n >= REFUSE_ANSWERS:
            return
        if len(self.answered) >= 10_000:  # bounded: many connections only forget older ones
            self.answered.clear()
        self.answered[ident] = n + 1
        try:
            self.sock.send_multipart([ident, p.pack([p.REFUSE, reason])], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    # ---- receiving --------------------------------------------------------------------------------
    def _handle(self, ident: bytes, frame: zmq.Frame) -> None:
        cpu = self.by_ident.get(ident)
        if cpu is None and ident in self.retired:
            return  # sent by a process since lost: its replacement sends it again
        try:
            msg = p.unpack(frame.bytes, p.TO_COORDINATOR)
        except p.ProtocolError as e:
            if cpu is None:
                return self._refuse(ident, f"garbage on the socket: {e}")
            raise RunAborted(f"CPU {cpu} ({self.hosts[cpu]}) sent an invalid message: {e}", cpu,
                             "cpu fault") from None
        if cpu is None:
            if msg[0] != p.HELLO:
                return self._refuse(ident, f"{msg[0]} message before joining")
            return self._hello(ident, msg, frame)
        try:
            self._from_cpu(cpu, msg)
        except _BAD_CONTENT as e:
            raise RunAborted(f"CPU {cpu} ({self.hosts[cpu]}) sent an invalid {msg[0]} message: "
                             f"{type(e).__name__}: {str(e)[:200]}", cpu, "cpu fault") from None

    def _from_cpu(self, cpu: int, msg: list) -> None:
        kind = msg[0]
        if kind == p.HELLO:
            raise RunAborted(f"CPU {cpu} ({self.hosts[cpu]}) sent a second HELLO on its connection", cpu,
                             "cpu fault")
        try:
            self.links[cpu].check_in(msg[1], self.names[cpu])
        except p.ProtocolError as e:
            raise RunAborted(str(e), cpu, "cpu fault") from None
        self.last_heard[cpu] = time.monotonic()
        if kind == p.BATCH:
            _, _, msgs, events, horizon, seen = msg
            core = self.core
            msgs = p.model_messages(msgs, cpu)
            p.check_events(events, cpu)
            if self.catching_up and cpu in self.catching_up:
                msgs, events, horizon, seen = self._catch_up(cpu, msgs, events, horizon, seen)
            q = core.ipi_unseen[cpu]
            before = core.ipis_sent[cpu] - len(q)
            if not 0 <= seen - before <= len(q):
                raise ValueError(f"{seen} IPIs seen, but {before} were seen before and {len(q)} more were "
                                 "sent since")
            if self.store is not None:
                self.store.received[cpu].add(msgs, events)
            core.receive(cpu, Up(msgs, events, horizon, seen))
            self.dirty = True
        elif kind == p.CKPT:
            if self.store is not None and cpu not in self.catching_up:  # catching up: it has sent less
                self.store.checkpoint(cpu, msg[2], msg[3])
                if self.log:
                    self.log.debug("checkpoint", cpu=cpu, n=self.store.count[cpu], t=self.horizon[cpu])
        elif kind == p.FAIL:
            _, _, c, op, pos, what, t = msg
            if c not in (cpu, None):
                raise ValueError(f"a failure reported for CPU {c}")
            if op == p.JOIN_OP:
                raise RunAborted(what, cpu, "config refused")
            raise ModelError(c, op, pos, what, t)
        elif kind == p.BYE:
            self._bye(cpu, msg)

    def _catch_up(self, cpu: int, msgs: list, events: list, horizon: int, seen: int) -> tuple:
        """A replacement's batch: what the lost process had sent already is dropped; until the replacement
        is back where that process was, the horizon and IPIs seen it reported stand."""
        catch = self.catching_up[cpu]
        core = self.core
        before = core.ipis_sent[cpu] - len(core.ipi_unseen[cpu])
        msgs, events = catch.filter(msgs, events, core.coord.lb[cpu])
        if catch.pending() or seen < before:
            return msgs, events, core.horizon[cpu], before
        del self.catching_up[cpu]
        if self.log:
            self.log.info("caught up", cpu=cpu, t=horizon)
        return msgs, events, horizon, seen

    def _disconnected(self, cpu: int) -> None:
        """CPU cpu's connection is gone (a send found no peer): its process died or its host was cut off."""
        self._child_died(wait=0.5)  # a CPU process of launch: say how it died, or replace it
        if self.ident[cpu] is not None:
            self._lost(cpu, f"CPU {cpu} ({self.hosts[cpu]}) disconnected at virtual time t={self.horizon[cpu]}")

    def _lost(self, cpu: int, reason: str, killed: bool = False) -> None:
        """CPU cpu's process is lost (reason says how): replaced while the respawn policy allows it (killed:
        the process is still there, silent, and launch kills it first), else the run stops (RunAborted)."""
        if not self.running and self.respawn.enabled and self.replace_cpu is None:
            return self._forget(cpu, reason)  # before the start: its slot is free again for its restart
        if not (self.running and self.respawn.enabled):
            raise RunAborted(reason, cpu)
        if self.respawns[cpu] >= self.respawn.max_per_cpu:
            raise RunAborted(f"{reason}; it was replaced {self.respawns[cpu]} times already, the most "
                             f"allowed (--max-respawns {self.respawn.max_per_cpu})", cpu)
        self._replace(cpu, reason + ("; its process was killed" if killed and self.replace_cpu else ""))

    def _replace(self, cpu: int, reason: str) -> None:
        """CPU cpu's process died or went silent: a new one (launch starts it and kills the old one if it is
        still there; otherwise the CPU's restart joins again) catches up from the last checkpoint."""
        self.respawns[cpu] += 1
        store = self.store
        where = (f"its checkpoint {store.count[cpu]}" if store.state[cpu] is not None
                 else "the start (no checkpoint yet)")
        how = ("replaced by a new process" if self.replace_cpu is not None
               else f"waiting for a new process to join as CPU {cpu}")
        self._fault("cpu respawned", f"{reason}; {how} ({self.respawns[cpu]} of at most "
                    f"{self.respawn.max_per_cpu}), which resumes from {where}", cpu)
        self._forget(cpu)
        self.catching_up.pop(cpu, None)
        self.replacing[cpu] = time.monotonic()
        if self.replace_cpu is not None:
            self.replace_cpu(cpu)

    def _forget(self, cpu: int, reason: str | None = None) -> None:
        """CPU cpu's connection is no longer that CPU: what it left or still sends is dropped. reason: it left
        before the run started, and its id is free to join again."""
        old = self.ident[cpu]
        if old is not None:
            del self.by_ident[old]
            self.retired.add(old)
        self.ident[cpu] = None
        self.links[cpu] = p.Link()
        if reason is not None and self.log:
            self.log.warning("left before the start", cpu=cpu, reason=reason)

    def _rejoin(self, ident: bytes, cpu: int, who: dict) -> None:
        """A replacement for CPU cpu joins: the config, then the checkpoint and the batches sent since."""
        del self.replacing[cpu]
        self._admit(ident, cpu, who, resume=True)
        if cpu in self.replacing:  # it died at once, and is being replaced again
            return
        state, downs, self.catching_up[cpu] = self.store.resume(cpu)
        try:
            self._send(cpu, p.RESUME, state, downs)
        except p.ProtocolError as e:
            raise RunAborted(f"CPU {cpu} cannot be replaced: {e} (its checkpoint and the messages sent to it "
                             "since; a smaller --checkpoint-every keeps that shorter)", cpu) from None
        self.core.touched.add(cpu)
        self.dirty = True
        if self.log:
            self.log.info("rejoined", **who, batches=len(downs), from_checkpoint=state is not None)

    def _admit(self, ident: bytes, cpu: int, who: dict, resume: bool = False) -> None:
        """The connection ident is CPU cpu from now on: it gets the config and how often to checkpoint
        (WELCOME), and whether RESUME follows."""
        self.ident[cpu] = ident
        self.by_ident[ident] = cpu
        self.hosts[cpu] = f"{who['host']} pid {who['pid']}"
        self.last_heard[cpu] = time.monotonic()
        self._send(cpu, p.WELCOME, cpu, self.config_dict, self.respawn.checkpoint_ops, resume)

    def _claimed(self, now: float) -> None:
        """HELLOs held for a running CPU: admitted once its predecessor is lost, refused if it still answers."""
        for c, (ident, who, since) in list(self.claims.items()):
            if c in self.replacing:
                del self.claims[c]
                self._rejoin(ident, c, who)
            elif now - since > CLAIM_WAIT_S:
                del self.claims[c]
                self._refuse(ident, f"CPU {c} has already joined (from {self.hosts[c]}) and still answers",
                             **who)

    def _hello(self, ident: bytes, msg: list, frame: zmq.Frame) -> None:
        _, version, run_id, cpu, pid, host, token = msg
        who = {"cpu": cpu, "pid": pid, "host": host[:100]}  # a stranger's strings: bounded in logs
        if version != p.VERSION:
            return self._refuse(ident, f"protocol version {version} (this coordinator speaks {p.VERSION})", **who)
        if self.token and not same_token(token, self.token):
            return self._refuse(ident, "wrong or missing run token", **who)
        if run_id and run_id != self.run_id:
            return self._refuse(ident, f"run id {run_id[:40]!r} is not this run's ({self.run_id!r})", **who)
        if self.curve is not None:  # a key joins as its one CPU id (ZAP named the key as the User-Id)
            key = frame.get("User-Id")
            bound = self.curve.allowed.get(key.encode())
            if cpu == -1:
                cpu = who["cpu"] = bound
            elif cpu != bound:
                return self._refuse(ident, f"CurveZMQ key {key} is CPU {bound}'s: refused as CPU {cpu}", **who)
        if cpu == -1 and not self.running:  # "any": the lowest free id (ids only name CPUs, never order them)
            free = [c for c in range(self.n) if self.ident[c] is None]
            cpu = free[0] if free else self.n
            who["cpu"] = cpu
        if not isinstance(cpu, int) or isinstance(cpu, bool) or not 0 <= cpu < self.n:
            return self._refuse(ident, f"CPU id {cpu!r} out of range (this run has CPUs 0..{self.n - 1})", **who)
        if self.ident[cpu] is not None:
            self._send(cpu, p.HB)  # a probe: a connection that is gone is found lost (ROUTER_MANDATORY)
        if self.ident[cpu] is not None:
            if self.running and self.store is not None and self.replace_cpu is None:
                # A restarted CPU (a pod) whose predecessor may have died or hung without its connection
                # closing yet: admitted once that one is lost (5 s of silence), refused if it still answers.
                earlier = self.claims.get(cpu)
                if earlier is not None:
                    self._refuse(earlier[0], f"another process asked to join as CPU {cpu} since", **earlier[1])
                self.claims[cpu] = (ident, who, time.monotonic())
                if self.log:
                    self.log.info("waiting for the predecessor", **who, predecessor=self.hosts[cpu])
                return
            return self._refuse(ident, f"CPU {cpu} has already joined (from {self.hosts[cpu]})", **who)
        if cpu in self.replacing:  # only for a CPU whose process is known dead
            return self._rejoin(ident, cpu, who)
        if self.running:
            return self._refuse(ident, "the run has already started", **who)
        self._admit(ident, cpu, who)
        if self.log:
            self.log.info("joined", **who, joined=len(self.by_ident), of=self.n)
        if len(self.by_ident) == self.n:
            self.running = True  # the barrier: nobody runs before everybody is here
            self._send_downs(self.core.start())
            self.t_all_joined = time.monotonic()
            if self.log:
                self.log.info("all joined", cpus=self.n)

    def _receive_ready(self, wait: bool) -> int:
        """Handle every message that is waiting (waiting up to IDLE_WAIT_MS for the first if wait); how many
        there were. Strangers' messages (all refused) get a budget per turn, so that a flood of them cannot
        keep the joined CPUs' requests waiting; the rest wait in their bounded queues (self.backlog: some
        do). The wait is in recv itself (RCVTIMEO); whether more is waiting, one zmq_poll (p.waiting)."""
        sock, by_ident = self.sock, self.by_ident
        recv, poll, waiting = sock.recv, p.poll, self.waiting
        got = 0
        strangers_until = self.refused.total + STRANGER_BUDGET
        self.backlog = False
        flags = 0 if wait else _NOBLOCK
        while True:
            try:
                ident = recv(flags)
                frame = recv(_NOBLOCK, copy=False)  # (there with the first part) a Frame says if more follow
            except zmq.Again:
                break
            flags = _NOBLOCK
            got += 1
            if not frame.more:
                self._handle(ident, frame)
            else:
                parts = 2
                while sock.getsockopt(zmq.RCVMORE):
                    sock.recv()
                    parts += 1
                if ident in by_ident:
                    c = by_ident[ident]
                    raise RunAborted(f"CPU {c} ({self.hosts[c]}) sent a message of {parts - 1} frames (one "
                                     "expected)", c, "cpu fault")
                self._refuse(None, f"message of {parts - 1} frames before joining")
            if not poll(waiting, 0):
                break
            if got >= 10_000 or self.refused.total >= strangers_until:
                self.backlog = True
                break
        if got:
            self.n_in += got
            self.n_wakeups += 1
        return got

    # ---- the run ----------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        self.n_steps += 1
        self._send_downs(self.core.step())

    def _send_downs(self, downs) -> None:
        to_wire = mm.to_wire
        store = self.store
        for c, down in downs:
            wire = list(map(to_wire, down.msgs))
            if store is not None:
                store.sent_batch(c, wire, down.safe)  # kept for a replacement until the next checkpoint
                if c in self.replacing:
                    continue
            self._send(c, p.BATCH, wire, down.safe)

    def _liveness(self) -> None:
        now = time.monotonic()
        if now - self.last_liveness < LIVENESS_EVERY_S:  # waitpid and heartbeats: not on every loop turn
            return
        # This process itself was stalled (descheduled on a loaded host): read what waits before judging
        # anyone silent.
        stalled = now - self.last_liveness > 1.0
        self.last_liveness = now
        if self.curve is not None:
            for reason in self.curve.refusals():
                self._refuse(None, reason)
        self.refused.tick(now)
        self._child_died()
        for c, since in self.replacing.items():
            if now - since > self.join_timeout:
                raise RunAborted(f"CPU {c}'s replacement process did not join within {self.join_timeout:g} s "
                                 "(--join-timeout)" + ("" if self.replace_cpu else
                                                       f": restart `smpsim cpu` for CPU {c}"), c)
        for c in range(self.n):
            if self.ident[c] is None:
                continue
            if now - self.last_heard[c] > p.PEER_TIMEOUT_S and not stalled:
                silent = (f"CPU {c} ({self.hosts[c]}) stopped responding ({p.PEER_TIMEOUT_S:.0f} s without a "
                          f"message) at virtual time t={self.horizon[c]}")
                self._lost(c, silent, killed=True)
                continue
            if now - self.last_sent[c] > p.HEARTBEAT_S:
                self._send(c, p.HB)
        if self.claims:
            self._claimed(now)

    def _child_died(self, wait: float = 0.0) -> None:
        """A CPU process of ours that has exited (waiting up to ``wait`` s for its exit status: its socket can
        close a moment before) is replaced while the respawn policy allows it; else RunAborted names it."""
        if self.check_children is None:
            return
        deadline = time.monotonic() + wait
        replaced = False
        while True:
            dead = self.check_children()
            if dead:
                self._lost(*dead)
                replaced = True
                continue  # another may have died too
            if replaced or time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    def run(self) -> dict:
        """Serve the run to its end; returns the summary. Raises ModelError or RunAborted (trace kept)."""
        t0 = time.monotonic()
        last_progress = t0
        try:
            idle = True
            while True:
                stopping.check()
                since = time.monotonic() - self.released_at
                if (idle and since > RELEASE_EVERY_S
                        and (since > RELEASE_LATEST_S or not p.poll(self.waiting, 0))) \
                        or len(self.rec.merger) > 200_000:
                    # Idle, with no request waiting (or much buffered, or long deferred): now is the time for
                    # the trace (merge, count, digest, write), off the round-trip path of the requests; not at
                    # every message (it looks at every CPU).
                    self.released_at = time.monotonic()
                    try:
                        self.core.release()
                    except _BAD_CONTENT as e:  # checked on receipt; this is what a check cannot see
                        raise RunAborted(f"a trace event could not be recorded: {type(e).__name__}: "
                                         f"{str(e)[:200]}") from None
                # The last turn emptied the queue: wait here (one poll) for the next message.
                self._receive_ready(idle)
                idle = not self.backlog
                if not self.running:
                    if time.monotonic() - t0 > self.join_timeout:
                        missing = [c for c in range(self.n) if self.ident[c] is None]
                        raise RunAborted(f"only {self.n - len(missing)} of {self.n} CPUs joined within "
                                         f"{self.join_timeout:g} s (missing: {missing[:16]}; --join-timeout "
                                         "gives them longer)")
                    self._liveness()
                    continue
                if self.dirty:
                    self.dirty = False
                    self._dispatch()
                    if self.core.complete():
                        break
                now = time.monotonic()
                if now - self.last_liveness < LIVENESS_EVERY_S:  # (the turns of a busy run end here)
                    continue
                self._liveness()
                if self.progress is not None and now - last_progress > 0.25:
                    last_progress = now
                    self.progress(self.core.progress())
        except (ModelError, RunAborted, stopping.Interrupted, TraceWriteError) as e:
            self.refused.flush()
            status = stopping.status_of(e)
            lost = None
            if isinstance(e, RunAborted):
                self._fault(e.kind, str(e), e.cpu)
                lost = e.cpu if e.kind == "cpu lost" else None
            self._end(status, lost)
            self.core.release()  # up to the last watermark (an interrupted run keeps no more)
            self.summary = self.core.fail(e)
            if self.log:
                level = self.log.warning if status == "interrupted" else self.log.error
                level("run ended", status=status, reason=str(e), t_reached=self.summary.get("t_reached"))
            raise
        self.refused.flush()
        self._end("ok")
        self.summary = self.core.close()
        if self.log:
            self.log.info("run ended", status="ok", t_end=self.summary.get("t_end"))
        return self.summary

    def _bye(self, cpu: int, msg: list) -> None:
        self.bye.add(cpu)
        if isinstance(msg[2], int):
            self.cpu_maxrss_kb[cpu] = msg[2]

    def timing(self) -> dict:
        """Wall-clock facts of the run for benchmarks (never part of the trace or digest)."""
        return {"startup_s": self.t_all_joined - self.t_created if self.t_all_joined else None,
                "messages_in": self.n_in, "messages_out": self.n_out, "wakeups": self.n_wakeups,
                "steps": self.n_steps,
                "cpu_maxrss_kb": max(self.cpu_maxrss_kb.values(), default=None)}

    def _end(self, status: str, lost: int | None = None) -> None:
        """Tell every CPU the run is over and wait a little for their goodbyes (none from a lost one)."""
        self.running = False  # a CPU lost from here on is not replaced
        for ident, who, _ in self.claims.values():
            self._refuse(ident, "the run has ended", **who)
        for c in range(self.n):
            if self.ident[c] is not None and c != lost:
                try:
                    self._send(c, p.END, status)
                except (RunAborted, zmq.ZMQError):
                    pass
        deadline = time.monotonic() + 2.0
        expected = len(self.by_ident) - (lost is not None)
        while len(self.bye) < expected and time.monotonic() < deadline:
            if self.sock.poll(50):
                try:
                    ident, frame = self.sock.recv_multipart(flags=zmq.NOBLOCK)[:2]
                    cpu = self.by_ident.get(ident)
                    msg = p.unpack(frame)
                    if cpu is not None and msg[0] == p.BYE:
                        self._bye(cpu, msg)
                except (zmq.ZMQError, ValueError, p.ProtocolError):
                    pass
