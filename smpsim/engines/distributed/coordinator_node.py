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
from smpsim.engines.distributed.respawn import NO_RESPAWN, RespawnPolicy, Respawner
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
RELEASE_BUFFERED = 200_000  # ... and at once with this many events buffered in the merger: memory stays flat
LIVENESS_EVERY_S = 0.05  # children, silent CPUs, heartbeats and progress are looked at this often
STALLED_S = 1.0  # a liveness look this late: this process itself was stalled (a loaded host), not the CPUs
PROGRESS_EVERY_S = 0.25  # the progress callback (a terminal's live line) is called at most this often
REFUSE_ANSWERS = 3  # refusals answered per unjoined connection; the rest are only counted
REFUSE_MEMORY = 10_000  # unjoined connections whose answers are counted; more only forget the older ones
REFUSED_LOG_EVERY_S = 2.0  # refusals beyond the first few: one summary line in the log this often
STRANGER_BUDGET = 500  # messages from unjoined connections handled per loop turn
TURN_BUDGET = 10_000  # messages handled per loop turn before the trace and liveness get theirs
EXIT_STATUS_WAIT_S = 0.5  # a disconnected CPU process's exit status may come a moment after its socket closed
CHILD_POLL_S = 0.02  # how often that exit status is looked for meanwhile
BYE_WAIT_S = 2.0  # at the end, the CPUs' goodbyes (their peak memory) are waited for this long
BYE_POLL_MS = 50  # ... in polls this long

_SNDMORE, _NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)

# What a malformed message's contents raise when the coordinator applies them (the shape is checked first)
_BAD_CONTENT = (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError)


class Joins:
    """The join barrier: which connection is which CPU (ident, by_ident) and from where (hosts), each CPU's
    ordered link, the connections of lost processes (retired: what they left is dropped), and whether every
    CPU has joined (running)."""
    __slots__ = ("n", "timeout", "ident", "by_ident", "hosts", "links", "names", "retired", "running",
                 "t_all_joined")

    def __init__(self, n: int, timeout: float):
        self.n, self.timeout = n, timeout
        self.ident: list[bytes | None] = [None] * n
        self.by_ident: dict[bytes, int] = {}
        self.hosts: dict[int, str] = {}
        self.links = [p.Link() for _ in range(n)]
        self.names = [f"CPU {c}" for c in range(n)]  # for messages, made once
        self.retired: set[bytes] = set()
        self.running = False
        self.t_all_joined: float | None = None

    def free(self) -> list[int]:
        return [c for c in range(self.n) if self.ident[c] is None]

    def check_deadline(self, t0: float) -> None:
        """RunAborted once the CPUs have had join_timeout since t0 and some are still missing."""
        if time.monotonic() - t0 > self.timeout:
            missing = self.free()
            raise RunAborted(f"only {self.n - len(missing)} of {self.n} CPUs joined within {self.timeout:g} s "
                             f"(missing: {missing[:16]}; --join-timeout gives them longer)")


class Liveness:
    """When each CPU was last heard from and last sent to, and when the CPUs were last looked at (checked_at).
    check_children: launch's look at its CPU processes, (cpu, how it died) for one that exited; None under
    `smpsim coordinator`."""
    __slots__ = ("last_heard", "last_sent", "checked_at", "check_children")

    def __init__(self, n: int, check_children: Callable[[], tuple[int, str] | None] | None):
        self.last_heard = [0.0] * n
        self.last_sent = [0.0] * n
        self.checked_at = 0.0
        self.check_children = check_children

    def due(self, now: float) -> bool:
        return now - self.checked_at >= LIVENESS_EVERY_S


def _who(hello: list) -> dict:
    """Who a HELLO says it is, for the log and the record (a stranger's strings: bounded)."""
    return {"cpu": hello[3], "pid": hello[4], "host": hello[5][:100]}


class Strangers:
    """Connections that have not joined: their refusals, in the log at a bounded rate (log), answered the
    first REFUSE_ANSWERS times per connection (answered); curve: the security.CurveServer whose handshake
    refusals are counted with them, or None."""
    __slots__ = ("log", "answered", "curve")

    def __init__(self, log, curve):
        self.log = RateLimitedLog(log, interval=REFUSED_LOG_EVERY_S)
        self.answered: dict[bytes, int] = {}
        self.curve = curve

    def answer(self, ident: bytes) -> bool:
        """Whether this refusal is answered (and counted as such): a flood costs a count, not a send."""
        n = self.answered.get(ident, 0)
        if n >= REFUSE_ANSWERS:
            return False
        if len(self.answered) >= REFUSE_MEMORY:
            self.answered.clear()
        self.answered[ident] = n + 1
        return True


class TraceRelease:
    """When the trace is next released below the watermark (merged, counted, digested, written): when the
    coordinator is idle, off the round-trip path of the requests, and not at every message (it looks at
    every CPU)."""
    __slots__ = ("at",)

    def __init__(self):
        self.at = 0.0  # when it was last released

    def due(self, idle: bool, waiting: list, buffered: int) -> bool:
        since = time.monotonic() - self.at
        return ((idle and since > RELEASE_EVERY_S and (since > RELEASE_LATEST_S or not p.poll(waiting, 0)))
                or buffered > RELEASE_BUFFERED)


class Progress:
    """What the run says about itself: the progress callback (at most every PROGRESS_EVERY_S), and the
    counts and times the bench reads (CoordinatorNode.timing)."""
    __slots__ = ("callback", "last_at", "n_in", "n_out", "n_wakeups", "n_steps", "t_created", "cpu_maxrss_kb")

    def __init__(self, callback: Callable[[dict], None] | None, t_created: float):
        self.callback = callback
        self.last_at = t_created
        self.n_in = self.n_out = 0
        self.n_wakeups = self.n_steps = 0  # turns that found messages; Core.step calls
        self.t_created = t_created  # start-up counts from here
        self.cpu_maxrss_kb: dict[int, int] = {}

    def report(self, now: float, core: Core) -> None:
        if self.callback is not None and now - self.last_at > PROGRESS_EVERY_S:
            self.last_at = now
            self.callback(core.progress())


class CoordinatorNode:
    """The coordinator process of a distributed run: the ROUTER socket, the run's Core (the model
    Coordinator and the Recorder), and one small object per concern: joins (the join barrier), live
    (liveness), strangers (refusing those that have not joined), respawner (replacing lost CPU processes),
    release (when the trace is released) and progress (what the run says about itself)."""

    def __init__(self, cfg: Config, run_dir: Path | None, sock: zmq.Socket, run_id: str, token: str = "",
                 log=None, check_children: Callable[[], tuple[int, str] | None] | None = None,
                 progress: Callable[[dict], None] | None = None, join_timeout: float = p.JOIN_TIMEOUT_S,
                 t_start: float | None = None, curve=None, respawn: RespawnPolicy = NO_RESPAWN,
                 replace_cpu: Callable[[int], None] | None = None):
        self.cfg, self.sock, self.run_id, self.token = cfg, sock, run_id, token
        self.log = log
        self.n = cfg.machine.cpus
        sock.setsockopt(zmq.RCVTIMEO, IDLE_WAIT_MS)  # the wait for the next message, in recv itself
        self.waiting = p.waiting(sock)
        self.backlog = False  # messages left waiting by the last turn's budget
        self.dirty = False    # messages received since the last Core.step
        self.bye: set[int] = set()  # CPUs that said goodbye at the end
        self.joins = Joins(self.n, join_timeout)
        self.live = Liveness(self.n, check_children)
        self.strangers = Strangers(log, curve)
        self.respawner = Respawner(self.n, respawn, replace_cpu, log)
        self.release = TraceRelease()
        self.progress = Progress(progress, t_start if t_start is not None else time.monotonic())
        # No workload travels: each CPU process reads its own copy of a file, checked by its SHA-256.
        self.config_dict = workload_files.shipped(cfg)
        self.core = Core(Coordinator(cfg), Recorder(cfg, run_dir, "distributed"), workloads.script_lines(cfg))
        self.rec = self.core.rec
        self.horizon = self.core.horizon  # how far each CPU has got (for fault messages)

    @property
    def hosts(self) -> dict[int, str]:
        """Where each joined CPU runs: "host pid N"."""
        return self.joins.hosts

    # ---- sending ----------------------------------------------------------------------------------
    def _send(self, cpu: int, kind: str, *fields) -> None:
        joins = self.joins
        frame = p.pack([kind, joins.links[cpu].out(), *fields])
        sock = self.sock
        try:
            p.send(sock, joins.ident[cpu], _SNDMORE)  # (send_multipart's checks cost more than the sends)
            p.send(sock, frame)
        except zmq.Again:
            raise RunAborted(f"CPU {cpu} is not taking messages (send queue full for "
                             f"{p.SEND_TIMEOUT_MS} ms)", cpu) from None
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                return self._disconnected(cpu)
            raise
        self.live.last_sent[cpu] = time.monotonic()
        self.progress.n_out += 1

    def _fault(self, kind: str, reason: str, cpu: int | None = None, **kw) -> None:
        """A fault goes on record twice: an error line in the coordinator's log, an entry in summary.json."""
        if self.log:
            self.log.error(kind, reason=reason, **({"cpu": cpu} if cpu is not None else {}), **kw)
        self.rec.fault(kind, reason, cpu)

    def _refuse(self, ident: bytes | None, reason: str, **kw) -> None:
        """On record (the log rate-limited, summary.json bounded) and answered, the first few times per
        connection only: a flood from one peer costs a decode and a count per message, nothing more."""
        self.strangers.log(reason, **kw)
        self.rec.fault("refused", reason, kw.get("cpu"))
        if ident is None or not self.strangers.answer(ident):
            return
        try:
            self.sock.send_multipart([ident, p.pack([p.REFUSE, reason])], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    # ---- receiving --------------------------------------------------------------------------------
    def _handle(self, ident: bytes, frame: zmq.Frame) -> None:
        joins = self.joins
        cpu = joins.by_ident.get(ident)
        if cpu is None and ident in joins.retired:
            return  # sent by a process since lost: its replacement sends it again
        try:
            msg = p.unpack(frame.bytes, p.TO_COORDINATOR)
        except p.ProtocolError as e:
            if cpu is None:
                return self._refuse(ident, f"garbage on the socket: {e}")
            raise RunAborted(f"CPU {cpu} ({joins.hosts[cpu]}) sent an invalid message: {e}", cpu,
                             "cpu fault") from None
        if cpu is None:
            if msg[0] != p.HELLO:
                return self._refuse(ident, f"{msg[0]} message before joining")
            return self._hello(ident, msg, frame)
        try:
            self._from_cpu(cpu, msg)
        except _BAD_CONTENT as e:
            raise RunAborted(f"CPU {cpu} ({joins.hosts[cpu]}) sent an invalid {msg[0]} message: "
                             f"{type(e).__name__}: {str(e)[:200]}", cpu, "cpu fault") from None

    def _from_cpu(self, cpu: int, msg: list) -> None:
        kind = msg[0]
        joins = self.joins
        if kind == p.HELLO:
            raise RunAborted(f"CPU {cpu} ({joins.hosts[cpu]}) sent a second HELLO on its connection", cpu,
                             "cpu fault")
        try:
            joins.links[cpu].check_in(msg[1], joins.names[cpu])
        except p.ProtocolError as e:
            raise RunAborted(str(e), cpu, "cpu fault") from None
        self.live.last_heard[cpu] = time.monotonic()
        respawner = self.respawner
        if kind == p.BATCH:
            _, _, msgs, events, horizon, seen = msg
            core = self.core
            msgs = p.model_messages(msgs, cpu)
            p.check_events(events, cpu)
            if respawner.catching_up and cpu in respawner.catching_up:
                msgs, events, horizon, seen = respawner.catch_up(cpu, msgs, events, horizon, seen, core)
            q = core.ipi_unseen[cpu]
            before = core.ipis_sent[cpu] - len(q)
            if not 0 <= seen - before <= len(q):
                raise ValueError(f"{seen} IPIs seen, but {before} were seen before and {len(q)} more were "
                                 "sent since")
            if respawner.store is not None:
                respawner.store.received[cpu].add(msgs, events)
            core.receive(cpu, Up(msgs, events, horizon, seen))
            self.dirty = True
        elif kind == p.CKPT:
            if respawner.checkpoint(cpu, msg[2], msg[3]) and self.log:
                self.log.debug("checkpoint", cpu=cpu, n=respawner.store.count[cpu], t=self.horizon[cpu])
        elif kind == p.FAIL:
            _, _, c, op, pos, what, t = msg
            if c not in (cpu, None):
                raise ValueError(f"a failure reported for CPU {c}")
            if op == p.JOIN_OP:
                raise RunAborted(what, cpu, "config refused")
            raise ModelError(c, op, pos, what, t)
        elif kind == p.BYE:
            self._bye(cpu, msg)

    # ---- CPUs lost, replaced, joining ----------------------------------------------------------------
    def _disconnected(self, cpu: int) -> None:
        """CPU cpu's connection is gone (a send found no peer): its process died or its host was cut off."""
        self._child_died(wait=EXIT_STATUS_WAIT_S)  # a CPU process of launch: say how it died, or replace it
        if self.joins.ident[cpu] is not None:
            self._lost(cpu, f"CPU {cpu} ({self.joins.hosts[cpu]}) disconnected at virtual time "
                            f"t={self.horizon[cpu]}")

    def _lost(self, cpu: int, reason: str, killed: bool = False) -> None:
        """CPU cpu's process is lost (reason says how): replaced while the respawn policy allows it (killed:
        the process is still there, silent, and launch kills it first), else the run stops (RunAborted)."""
        respawner, running = self.respawner, self.joins.running
        if not running and respawner.awaits_restarts:
            return self._forget(cpu, reason)  # before the start: its slot is free again for its restart
        if not (running and respawner.enabled):
            raise RunAborted(reason, cpu)
        respawner.check_allowed(cpu, reason)
        self._fault("cpu respawned", respawner.begin(cpu, reason, killed), cpu)
        self._forget(cpu)
        respawner.start(cpu, time.monotonic())

    def _forget(self, cpu: int, reason: str | None = None) -> None:
        """CPU cpu's connection is no longer that CPU: what it left or still sends is dropped. reason: it left
        before the run started, and its id is free to join again."""
        joins = self.joins
        old = joins.ident[cpu]
        if old is not None:
            del joins.by_ident[old]
            joins.retired.add(old)
        joins.ident[cpu] = None
        joins.links[cpu] = p.Link()
        if reason is not None and self.log:
            self.log.warning("left before the start", cpu=cpu, reason=reason)

    def _rejoin(self, ident: bytes, cpu: int, who: dict) -> None:
        """A replacement for CPU cpu joins: the config, then the checkpoint and the batches sent since."""
        respawner = self.respawner
        del respawner.replacing[cpu]
        self._admit(ident, cpu, who, resume=True)
        if cpu in respawner.replacing:  # it died at once, and is being replaced again
            return
        state, downs = respawner.resume(cpu)
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
        joins = self.joins
        joins.ident[cpu] = ident
        joins.by_ident[ident] = cpu
        joins.hosts[cpu] = f"{who['host']} pid {who['pid']}"
        self.live.last_heard[cpu] = time.monotonic()
        self._send(cpu, p.WELCOME, cpu, self.config_dict, self.respawner.policy.checkpoint_ops, resume)

    def _claimed(self, now: float) -> None:
        """HELLOs held for a running CPU: admitted once its predecessor is lost, refused if it still answers."""
        for admit, c, ident, who in self.respawner.settled_claims(now):
            if admit:
                self._rejoin(ident, c, who)
            else:
                self._refuse(ident, f"CPU {c} has already joined (from {self.joins.hosts[c]}) and still answers",
                             **who)

    def _hello(self, ident: bytes, msg: list, frame: zmq.Frame) -> None:
        _, version, run_id, cpu, _, _, token = msg
        who = _who(msg)
        joins, curve = self.joins, self.strangers.curve
        if version != p.VERSION:
            return self._refuse(ident, f"protocol version {version} (this coordinator speaks {p.VERSION})", **who)
        if self.token and not same_token(token, self.token):
            return self._refuse(ident, "wrong or missing run token", **who)
        if run_id and run_id != self.run_id:
            return self._refuse(ident, f"run id {run_id[:40]!r} is not this run's ({self.run_id!r})", **who)
        if curve is not None:  # a key joins as its one CPU id (ZAP named the key as the User-Id)
            key = frame.get("User-Id")
            bound = curve.allowed.get(key.encode())
            if cpu == -1:
                cpu = who["cpu"] = bound
            elif cpu != bound:
                return self._refuse(ident, f"CurveZMQ key {key} is CPU {bound}'s: refused as CPU {cpu}", **who)
        if cpu == -1 and not joins.running:  # "any": the lowest free id (ids only name CPUs, never order them)
            free = joins.free()
            cpu = free[0] if free else self.n
            who["cpu"] = cpu
        if not isinstance(cpu, int) or isinstance(cpu, bool) or not 0 <= cpu < self.n:
            return self._refuse(ident, f"CPU id {cpu!r} out of range (this run has CPUs 0..{self.n - 1})", **who)
        if joins.ident[cpu] is not None:
            self._send(cpu, p.HB)  # a probe: a connection that is gone is found lost (ROUTER_MANDATORY)
        if joins.ident[cpu] is not None:
            if joins.running and self.respawner.awaits_restarts:
                # A restarted CPU (a pod) whose predecessor may have died or hung without its connection
                # closing yet: admitted once that one is lost (5 s of silence), refused if it still answers.
                earlier = self.respawner.claim(cpu, ident, who, time.monotonic())
                if earlier is not None:
                    self._refuse(earlier[0], f"another process asked to join as CPU {cpu} since", **earlier[1])
                if self.log:
                    self.log.info("waiting for the predecessor", **who, predecessor=joins.hosts[cpu])
                return
            return self._refuse(ident, f"CPU {cpu} has already joined (from {joins.hosts[cpu]})", **who)
        if cpu in self.respawner.replacing:  # only for a CPU whose process is known dead
            return self._rejoin(ident, cpu, who)
        if joins.running:
            return self._refuse(ident, "the run has already started", **who)
        self._admit(ident, cpu, who)
        if self.log:
            self.log.info("joined", **who, joined=len(joins.by_ident), of=self.n)
        if len(joins.by_ident) == self.n:
            joins.running = True  # the barrier: nobody runs before everybody is here
            self._send_downs(self.core.start())
            joins.t_all_joined = time.monotonic()
            if self.log:
                self.log.info("all joined", cpus=self.n)

    def _receive_ready(self, wait: bool) -> int:
        """Handle every message that is waiting (waiting up to IDLE_WAIT_MS for the first if wait); how many
        there were. Strangers' messages (all refused) get a budget per turn, so that a flood of them cannot
        keep the joined CPUs' requests waiting; the rest wait in their bounded queues (self.backlog: some
        do). The wait is in recv itself (RCVTIMEO); whether more is waiting, one zmq_poll (p.waiting)."""
        sock, by_ident, refused = self.sock, self.joins.by_ident, self.strangers.log
        recv, poll, waiting = sock.recv, p.poll, self.waiting
        got = 0
        strangers_until = refused.total + STRANGER_BUDGET
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
                    raise RunAborted(f"CPU {c} ({self.joins.hosts[c]}) sent a message of {parts - 1} frames "
                                     "(one expected)", c, "cpu fault")
                self._refuse(None, f"message of {parts - 1} frames before joining")
            if not poll(waiting, 0):
                break
            if got >= TURN_BUDGET or refused.total >= strangers_until:
                self.backlog = True
                break
        if got:
            self.progress.n_in += got
            self.progress.n_wakeups += 1
        return got

    # ---- the run ----------------------------------------------------------------------------------
    def run(self) -> dict:
        """Serve the run to its end; returns the summary. Raises ModelError or RunAborted (trace kept)."""
        try:
            self._serve()
        except (ModelError, RunAborted, stopping.Interrupted, TraceWriteError) as e:
            self._failed(e)
            raise
        self.strangers.log.flush()
        self._end("ok")
        self.summary = self.core.close()
        if self.log:
            self.log.info("run ended", status="ok", t_end=self.summary.get("t_end"))
        return self.summary

    def _serve(self) -> None:
        """One turn per wakeup, one block per concern, until every CPU is done."""
        t0 = self.progress.last_at = time.monotonic()
        idle = True
        while True:
            stopping.check()
            # Trace: released while idle, off the round-trip path of the requests (or when much is buffered).
            if self.release.due(idle, self.waiting, len(self.rec.merger)):
                self._release_trace()
            # Receive: the last turn emptied the queue, so wait (in recv) for the next message.
            self._receive_ready(idle)
            idle = not self.backlog
            # Join barrier: nothing runs before every CPU has joined.
            if not self.joins.running:
                self.joins.check_deadline(t0)
                self._liveness()
                continue
            # Dispatch: what this turn's messages make possible.
            if self.dirty:
                self.dirty = False
                self._dispatch()
                if self.core.complete():
                    return
            # Liveness and progress: a few times a second (the turns of a busy run end here).
            now = time.monotonic()
            if not self.live.due(now):
                continue
            self._liveness()
            self.progress.report(now, self.core)

    def _release_trace(self) -> None:
        """The trace up to the watermark: merged, counted, digested, written."""
        self.release.at = time.monotonic()
        try:
            self.core.release()
        except _BAD_CONTENT as e:  # checked on receipt; this is what a check cannot see
            raise RunAborted(f"a trace event could not be recorded: {type(e).__name__}: "
                             f"{str(e)[:200]}") from None

    def _dispatch(self) -> None:
        self.progress.n_steps += 1
        self._send_downs(self.core.step())

    def _send_downs(self, downs) -> None:
        to_wire = mm.to_wire
        store, replacing = self.respawner.store, self.respawner.replacing
        for c, down in downs:
            wire = list(map(to_wire, down.msgs))
            if store is not None:
                store.sent_batch(c, wire, down.safe)  # kept for a replacement until the next checkpoint
                if c in replacing:
                    continue
            self._send(c, p.BATCH, wire, down.safe)

    def _liveness(self) -> None:
        """Children that died, CPUs gone silent, heartbeats to quiet links, replacements and claims that
        waited too long; at most every LIVENESS_EVERY_S."""
        live, joins = self.live, self.joins
        now = time.monotonic()
        if not live.due(now):  # waitpid and heartbeats: not on every loop turn
            return
        # This process itself was stalled (descheduled on a loaded host): read what waits before judging
        # anyone silent.
        stalled = now - live.checked_at > STALLED_S
        live.checked_at = now
        curve = self.strangers.curve
        if curve is not None:
            for reason in curve.refusals():
                self._refuse(None, reason)
        self.strangers.log.tick(now)
        self._child_died()
        self.respawner.check_overdue(now, joins.timeout)
        for c in range(self.n):
            if joins.ident[c] is None:
                continue
            if now - live.last_heard[c] > p.PEER_TIMEOUT_S and not stalled:
                silent = (f"CPU {c} ({joins.hosts[c]}) stopped responding ({p.PEER_TIMEOUT_S:.0f} s without a "
                          f"message) at virtual time t={self.horizon[c]}")
                self._lost(c, silent, killed=True)
                continue
            if now - live.last_sent[c] > p.HEARTBEAT_S:
                self._send(c, p.HB)
        if self.respawner.claims:
            self._claimed(now)

    def _child_died(self, wait: float = 0.0) -> None:
        """A CPU process of ours that has exited (waiting up to ``wait`` s for its exit status: its socket can
        close a moment before) is replaced while the respawn policy allows it; else RunAborted names it."""
        check_children = self.live.check_children
        if check_children is None:
            return
        deadline = time.monotonic() + wait
        replaced = False
        while True:
            dead = check_children()
            if dead:
                self._lost(*dead)
                replaced = True
                continue  # another may have died too
            if replaced or time.monotonic() >= deadline:
                return
            time.sleep(CHILD_POLL_S)

    # ---- the end ----------------------------------------------------------------------------------
    def _failed(self, e: Exception) -> None:
        """The run stops on e: on record, every CPU told, the trace kept up to the last watermark."""
        self.strangers.log.flush()
        status = stopping.status_of(e)
        lost = None
        if isinstance(e, RunAborted):
            self._fault(e.kind, str(e), e.cpu)
            lost = e.cpu if e.kind == "cpu lost" else None
        self._end(status, lost, str(e))
        self.core.release()  # up to the last watermark (an interrupted run keeps no more)
        self.summary = self.core.fail(e)
        if self.log:
            level = self.log.warning if status == "interrupted" else self.log.error
            level("run ended", status=status, reason=str(e), t_reached=self.summary.get("t_reached"))

    def _bye(self, cpu: int, msg: list) -> None:
        self.bye.add(cpu)
        if isinstance(msg[2], int):
            self.progress.cpu_maxrss_kb[cpu] = msg[2]

    def timing(self) -> dict:
        """Wall-clock facts of the run for benchmarks (never part of the trace or digest)."""
        pr, joined = self.progress, self.joins.t_all_joined
        return {"startup_s": joined - pr.t_created if joined else None,
                "messages_in": pr.n_in, "messages_out": pr.n_out, "wakeups": pr.n_wakeups,
                "steps": pr.n_steps, "cpu_maxrss_kb": max(pr.cpu_maxrss_kb.values(), default=None)}

    def _end(self, status: str, lost: int | None = None, reason: str = "") -> None:
        """Tell every CPU the run is over and wait a little for their goodbyes (none from a lost one). A run
        that fails before everyone joined waits the whole while: a CPU still on its way is told why the run
        ended rather than left to wait out its join timeout."""
        joins = self.joins
        joins.running = False  # a CPU lost from here on is not replaced
        for ident, who, _ in self.respawner.claims.values():
            self._refuse(ident, "the run has ended", **who)
        for c in range(self.n):
            if joins.ident[c] is not None and c != lost:
                try:
                    self._send(c, p.END, status)
                except (RunAborted, zmq.ZMQError):
                    pass
        late = f"the run has ended ({status}: {reason})" if reason else "the run has ended"
        deadline = time.monotonic() + BYE_WAIT_S
        expected = len(joins.by_ident) - (lost is not None)
        some_never_joined = joins.t_all_joined is None and status != "interrupted"  # (Ctrl-C: out at once)
        while (len(self.bye) < expected or some_never_joined) and time.monotonic() < deadline:
            if self.sock.poll(BYE_POLL_MS):
                try:
                    ident, frame = self.sock.recv_multipart(flags=zmq.NOBLOCK)[:2]
                    cpu = joins.by_ident.get(ident)
                    msg = p.unpack(frame, p.TO_COORDINATOR)
                    if cpu is not None and msg[0] == p.BYE:
                        self._bye(cpu, msg)
                    elif cpu is None and msg[0] == p.HELLO:
                        self._refuse(ident, late, **_who(msg))
                except (zmq.ZMQError, ValueError, p.ProtocolError):
                    pass
