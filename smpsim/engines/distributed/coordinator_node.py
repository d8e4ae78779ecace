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
from smpsim.engines.core import Core, Up
from smpsim.engines.distributed import protocol as p
from smpsim.engines.recorder import Recorder
from smpsim.model import messages as mm
from smpsim.model import workloads
from smpsim.model.coordinator import Coordinator
from smpsim.model.errors import ModelError

class RunAborted(Exception):
    """The distributed run cannot go on (a CPU died or broke the protocol); the message says which."""


class CoordinatorNode:
    def __init__(self, cfg: Config, run_dir: Path | None, sock: zmq.Socket, run_id: str, token: str = "",
                 log=None, check_children: Callable[[], str | None] | None = None,
                 progress: Callable[[dict], None] | None = None, join_timeout: float = p.JOIN_TIMEOUT_S,
                 t_start: float | None = None):
        self.cfg, self.sock, self.run_id, self.token = cfg, sock, run_id, token
        self.log = log
        self.n = cfg.machine.cpus
        self.check_children = check_children
        self.progress = progress
        self.join_timeout = join_timeout
        self.ident: list[bytes | None] = [None] * self.n
        self.by_ident: dict[bytes, int] = {}
        self.hosts: dict[int, str] = {}
        self.links = [p.Link() for _ in range(self.n)]
        self.last_heard = [0.0] * self.n
        self.last_sent = [0.0] * self.n
        self.running = False
        self.dirty = False
        self.bye: set[int] = set()
        self.cpu_maxrss_kb: dict[int, int] = {}
        self.n_in = self.n_out = 0
        self.t_created = t_start if t_start is not None else time.monotonic()  # start-up counts from here
        self.t_all_joined: float | None = None
        self.last_liveness = 0.0
        self.config_dict = cfg.model_dump(mode="json")
        self.script: list | None = None
        if cfg.workload.kind == "script":  # CPUs on other hosts may not have the file: ship the ops
            self.script = [workloads.build_cpu(cfg, c) for c in range(self.n)]
        self.core = Core(Coordinator(cfg), Recorder(cfg, run_dir, "distributed"),
                         [lines for _, lines in self.script] if self.script is not None else None)
        self.rec = self.core.rec
        self.horizon = self.core.horizon  # how far each CPU has got (for fault messages)

    # ---- sending ----------------------------------------------------------------------------------
    def _send(self, cpu: int, kind: str, *fields) -> None:
        frame = p.pack([kind, self.links[cpu].out(), *fields])
        try:
            self.sock.send_multipart([self.ident[cpu], frame])
        except zmq.Again:
            raise RunAborted(f"CPU {cpu} is not taking messages (send queue full for "
                             f"{p.SEND_TIMEOUT_MS} ms)") from None
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                raise RunAborted(f"CPU {cpu} disconnected at virtual time t={self.horizon[cpu]}") from None
            raise
        self.last_sent[cpu] = time.monotonic()
        self.n_out += 1

    def _refuse(self, ident: bytes, reason: str, **kw) -> None:
        if self.log:
            self.log.warning("refused", reason=reason, **kw)
        try:
            self.sock.send_multipart([ident, p.pack([p.REFUSE, reason])], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    # ---- receiving --------------------------------------------------------------------------------
    def _handle(self, ident: bytes, frame: bytes) -> None:
        cpu = self.by_ident.get(ident)
        try:
            msg = p.unpack(frame)
        except p.ProtocolError as e:
            if cpu is None:
                return self._refuse(ident, f"garbage on the socket: {e}")
            raise RunAborted(f"CPU {cpu} sent an invalid message: {e}") from None
        kind = msg[0]
        if cpu is None:
            if kind != p.HELLO:
                return self._refuse(ident, f"{kind} message before joining")
            return self._hello(ident, msg)
        if kind == p.HELLO:
            return self._refuse(ident, f"CPU {cpu} is already joined on this connection")
        try:
            self.links[cpu].check_in(msg[1], f"CPU {cpu}")
        except p.ProtocolError as e:
            raise RunAborted(str(e)) from None
        self.last_heard[cpu] = time.monotonic()
        if kind == p.BATCH:
            _, _, msgs, events, horizon, seen = msg
            try:
                msgs = [mm.from_wire(x) for x in msgs]
                for x in msgs:
                    if type(x) not in (mm.Request, mm.Progress, mm.Done) or x.cpu != cpu:
                        raise ValueError(f"{type(x).__name__} message for CPU {x[1]}")
            except (ValueError, TypeError, IndexError) as e:
                raise RunAborted(f"CPU {cpu} sent an invalid batch: {e}") from None
            self.core.receive(cpu, Up(msgs, events, horizon, seen))
            self.dirty = True
        elif kind == p.FAIL:
            _, _, c, op, pos, what, t = msg
            raise ModelError(c, op, pos, what, t)
        elif kind == p.BYE:
            self._bye(cpu, msg)

    def _hello(self, ident: bytes, msg: list) -> None:
        _, version, run_id, cpu, pid, host, token = msg
        who = {"cpu": cpu, "pid": pid, "host": host}
        if version != p.VERSION:
            return self._refuse(ident, f"protocol version {version} (this coordinator speaks {p.VERSION})", **who)
        if self.token and token != self.token:
            return self._refuse(ident, "wrong or missing run token", **who)
        if run_id and run_id != self.run_id:
            return self._refuse(ident, f"run id {run_id!r} is not this run's ({self.run_id!r})", **who)
        if cpu == -1 and not self.running:  # "any": the lowest free id (ids only name CPUs, never order them)
            free = [c for c in range(self.n) if self.ident[c] is None]
            cpu = free[0] if free else self.n
            who["cpu"] = cpu
        if not isinstance(cpu, int) or isinstance(cpu, bool) or not 0 <= cpu < self.n:
            return self._refuse(ident, f"CPU id {cpu!r} out of range (this run has CPUs 0..{self.n - 1})", **who)
        if self.ident[cpu] is not None:
            return self._refuse(ident, f"CPU {cpu} has already joined (from {self.hosts[cpu]})", **who)
        if self.running:
            return self._refuse(ident, "the run has already started", **who)
        self.ident[cpu] = ident
        self.by_ident[ident] = cpu
        self.hosts[cpu] = f"{host} pid {pid}"
        self.last_heard[cpu] = time.monotonic()
        ops, lines = self.script[cpu] if self.script is not None else (None, None)
        self._send(cpu, p.WELCOME, cpu, self.config_dict, ops, lines)
        if self.log:
            self.log.info("joined", **who, joined=len(self.by_ident), of=self.n)
        if len(self.by_ident) == self.n:
            self.running = True  # the barrier: nobody runs before everybody is here
            self._send_downs(self.core.start())
            self.t_all_joined = time.monotonic()
            if self.log:
                self.log.info("all joined", cpus=self.n)

    # ---- the run ----------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        self._send_downs(self.core.step())

    def _send_downs(self, downs) -> None:
        to_wire = mm.to_wire
        for c, down in downs:
            self._send(c, p.BATCH, [to_wire(x) for x in down.msgs], down.safe)

    def _liveness(self) -> None:
        now = time.monotonic()
        if now - self.last_liveness < 0.05:  # waitpid and heartbeats: not on every loop turn
            return
        # This process itself was stalled (descheduled on a loaded host): read what waits before judging
        # anyone silent.
        stalled = now - self.last_liveness > 1.0
        self.last_liveness = now
        if self.check_children is not None:
            dead = self.check_children()
            if dead:
                raise RunAborted(dead)
        for c in range(self.n):
            if self.ident[c] is None:
                continue
            if now - self.last_heard[c] > p.PEER_TIMEOUT_S and not stalled:
                raise RunAborted(f"CPU {c} ({self.hosts[c]}) stopped responding "
                                 f"({p.PEER_TIMEOUT_S:.0f} s without a message) at virtual time "
                                 f"t={self.horizon[c]}")
            if now - self.last_sent[c] > p.HEARTBEAT_S:
                self._send(c, p.HB)

    def run(self) -> dict:
        """Serve the run to its end; returns the summary. Raises ModelError or RunAborted (trace kept)."""
        t0 = time.monotonic()
        last_progress = t0
        try:
            sock = self.sock
            while True:
                got = 0
                while got < 10_000:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    got += 1
                    if len(frames) == 2:  # anything else is not ours: ignore it
                        self.n_in += 1
                        self._handle(frames[0], frames[1])
                if not got or len(self.rec.merger) > 200_000:
                    # Idle (or much buffered): now is the time for the trace (merge, count, digest, write),
                    # off the round-trip path of the requests.
                    self.core.release()
                    if not got:
                        sock.poll(20)
                if not self.running:
                    if time.monotonic() - t0 > self.join_timeout:
                        missing = [c for c in range(self.n) if self.ident[c] is None]
                        raise RunAborted(f"only {self.n - len(missing)} of {self.n} CPUs joined within "
                                         f"{self.join_timeout:.0f} s (missing: {missing[:16]})")
                    self._liveness()
                    continue
                if self.dirty:
                    self.dirty = False
                    self._dispatch()
                    if self.core.complete():
                        break
                self._liveness()
                if self.progress is not None and time.monotonic() - last_progress > 0.25:
                    last_progress = time.monotonic()
                    self.progress(self.core.progress())
        except (ModelError, RunAborted) as e:
            self._end("error")
            self.summary = self.core.fail(e)
            raise
        self._end("ok")
        self.summary = self.core.close()
        return self.summary

    def _bye(self, cpu: int, msg: list) -> None:
        self.bye.add(cpu)
        if isinstance(msg[2], int):
            self.cpu_maxrss_kb[cpu] = msg[2]

    def timing(self) -> dict:
        """Wall-clock facts of the run for benchmarks (never part of the trace or digest)."""
        return {"startup_s": self.t_all_joined - self.t_created if self.t_all_joined else None,
                "messages_in": self.n_in, "messages_out": self.n_out,
                "cpu_maxrss_kb": max(self.cpu_maxrss_kb.values(), default=None)}

    def _end(self, status: str) -> None:
        for c in range(self.n):
            if self.ident[c] is not None:
                try:
                    self._send(c, p.END, status)
                except (RunAborted, zmq.ZMQError):
                    pass
        deadline = time.monotonic() + 2.0
        while len(self.bye) < len(self.by_ident) and time.monotonic() < deadline:
            if self.sock.poll(50):
                try:
                    ident, frame = self.sock.recv_multipart(flags=zmq.NOBLOCK)[:2]
                    cpu = self.by_ident.get(ident)
                    msg = p.unpack(frame)
                    if cpu is not None and msg[0] == p.BYE:
                        self._bye(cpu, msg)
                except (zmq.ZMQError, ValueError, p.ProtocolError):
                    pass
