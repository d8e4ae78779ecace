"""A CPU process: one model Cpu behind a DEALER socket.

It joins the coordinator, receives the resolved config, then loops: run the Cpu up to the safe-time bound,
ship its model messages and trace events, apply the replies and IPIs it gets back. It exits on END, on a
coordinator that went silent (PEER_TIMEOUT_S), or when the parent that launched it dies.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import sys
import time
from collections import deque

import zmq
from zmq.utils.monitor import recv_monitor_message

from smpsim.config import WORKLOAD_FILE_KEYS, Config, ConfigError, validate
from smpsim.engines import stopping
from smpsim.engines.distributed import protocol as p
from smpsim.engines.distributed.logs import process_logger
from smpsim import workload_files
from smpsim.model import workloads
from smpsim.engines.core import CpuPort, Down
from smpsim.model.cpu import Cpu
from smpsim.model.messages import from_wire, to_wire
from smpsim.model.errors import ModelError


IDLE_WAIT_MS = 100  # a CPU with nothing to run waits this long in recv before its liveness checks
WAITING_NOTICE_S = 2.0  # a CPU still unanswered after this long says it is waiting for the coordinator
JOIN_POLL_MS = 200  # a joining CPU looks this often for a failed handshake (final: said at once)
SEEK_STEP_OPS = 200_000  # a replacement regenerates its program in steps this long, a heartbeat between
END_POLL_MS = 100  # a CPU that reported a model error waits for END in polls this long


_NOBLOCK = int(zmq.NOBLOCK)


class CpuExit(Exception):
    """The CPU process stops; the message says why (coordinator refused, vanished, protocol error)."""


_libc = None  # libc through ctypes, loaded once before CPU processes are forked (prepare)


def _load_libc():
    global _libc
    if _libc is None:
        try:
            import ctypes
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except Exception:
            _libc = False
    return _libc


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the launching process dies, so no CPU outlives `smpsim launch`."""
    try:
        import signal
        libc = _load_libc()
        if libc:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def prepare(cfg: Config) -> None:
    """Before CPU processes are forked: build what each would build alike, once. Generating CPU 0's first
    block builds the workload's shared tables (cached in the model, e.g. the zipf permutation), and the
    forked processes inherit them instead of each spending milliseconds on its own copy. So does loading
    ctypes and libc for _die_with_parent: about 9 ms of CPU (1,000 page faults) in each process otherwise."""
    _load_libc()
    if cfg.workload.kind not in WORKLOAD_FILE_KEYS:  # generated: share what the first block builds
        workloads.program(cfg, 0).fill(0)


class CpuNode:
    """One CPU's process: its DEALER socket to the coordinator and the link's sequence numbers, the CpuPort
    (and so the Cpu) it drives once WELCOME has said which CPU it is, and what a replacement needs: the
    checkpoint it resumes from, the batches it sent since its last checkpoint, and when it last heard
    the coordinator (it exits when the coordinator goes silent)."""

    def __init__(self, address: str, cpu_id: int | None, run_id: str = "", token: str = "", log=None,
                 ctx: zmq.Context | None = None, cfg: Config | None = None, curve=None):
        self.address, self.cpu_id, self.run_id, self.token = address, cpu_id, run_id, token
        self.checkpoint_ops = 0  # from WELCOME; 0: no checkpoints (nobody would replace this process)
        self.rejoin = False      # from WELCOME: a replacement, RESUME follows
        self.resume_state: dict | None = None  # a replacement's checkpoint (None: start afresh) ...
        self.replay: deque = deque()           # ... and the batches sent since, to catch up with
        self.last_checkpoint = 0
        self.preloaded = cfg  # a forked child already holds the validated config
        self.log = log
        self.ctx = ctx or zmq.Context()
        self.curve = curve
        self.sock, self.monitor = p.make_dealer(self.ctx, address, curve)
        self.waiting = p.waiting(self.sock)
        self.link = p.Link()
        self.last_sent = self.last_heard = time.monotonic()
        self.cpu: Cpu | None = None
        self.port: CpuPort | None = None

    @property
    def who(self) -> str:
        return f"CPU {self.cpu_id}" if self.cpu_id is not None else "CPU (id not yet assigned)"

    def _send(self, kind: str, *fields) -> None:
        frame = p.pack([kind, self.link.out(), *fields])
        try:
            p.send(self.sock, frame)
        except zmq.Again:
            raise CpuExit(f"{self.who}: could not send to the coordinator for "
                          f"{p.SEND_TIMEOUT_MS} ms") from None
        self.last_sent = time.monotonic()

    def _check_coordinator_heard(self) -> None:
        """CpuExit once the coordinator has been silent for PEER_TIMEOUT_S: it is gone, and so is the run."""
        if time.monotonic() - self.last_heard > p.PEER_TIMEOUT_S:
            raise CpuExit(f"{self.who}: the coordinator has been silent for {p.PEER_TIMEOUT_S:.0f} s; exiting")

    def _recv(self, timeout_ms: int, joining: bool = False) -> list | None:
        if not self.sock.poll(timeout_ms):
            if not joining:
                self._check_coordinator_heard()
            return None
        return self._recv_now()

    def _recv_now(self) -> list | None:
        """The next message if one is there, without waiting."""
        if not p.poll(self.waiting, 0):
            return None
        try:
            frame = self.sock.recv(_NOBLOCK)
        except zmq.Again:
            return None
        return self._accept(frame)

    def _recv_wait(self) -> list | None:
        """The next message, waiting for it in recv itself (RCVTIMEO, set in serve) rather than in a poll
        first: one call while a request waits for its reply."""
        try:
            frame = self.sock.recv()
        except zmq.Again:
            self._check_coordinator_heard()
            return None
        return self._accept(frame)

    def _accept(self, frame: bytes) -> list:
        msg = p.unpack(frame, p.TO_CPU)
        self.last_heard = time.monotonic()
        if msg[0] != p.REFUSE:
            self.link.check_in(msg[1], "the coordinator")
        return msg

    def join(self, timeout: float = p.JOIN_TIMEOUT_S) -> None:
        ask = -1 if self.cpu_id is None else self.cpu_id
        hello = [p.HELLO, p.VERSION, self.run_id, ask, os.getpid(), socket.gethostname(), self.token]
        self.sock.send(p.pack(hello))
        t0 = time.monotonic()
        noticed = False
        while True:
            self._check_handshake()
            msg = self._recv(JOIN_POLL_MS, joining=True)
            if msg is None:
                waited = time.monotonic() - t0
                if waited > timeout:
                    raise CpuExit(f"{self.who}: no answer from the coordinator at {self.address} within "
                                  f"{timeout:g} s (--join-timeout); check that it is running, that the address "
                                  "is right and that this host can reach it")
                if waited > WAITING_NOTICE_S and not noticed and self.log:
                    noticed = True
                    self.log.warning(f"waiting for the coordinator at {self.address}",
                                     gives_up_after_s=timeout)
                continue
            if msg[0] == p.REFUSE:
                raise CpuExit(f"{self.who}: refused by the coordinator: {msg[1]}")
            if msg[0] == p.WELCOME:
                _, _, self.cpu_id, config, self.checkpoint_ops, self.rejoin = msg
                try:
                    cfg = self.preloaded or validate(config, "config from the coordinator")
                except ConfigError as e:  # e.g. this host's copy of the policy file is not the coordinator's
                    self._send(p.FAIL, self.cpu_id, p.JOIN_OP, None, f"CPU {self.cpu_id} cannot take the run's "
                                                                     f"config on {socket.gethostname()}: {e}", None)
                    raise CpuExit(f"{self.who}: cannot take the coordinator's config: {e}") from None
                try:  # this host's copy of the workload's file, before anything of it runs
                    workload_files.check_copy(cfg)
                except workload_files.CopyMismatch as e:
                    self._send(p.FAIL, self.cpu_id, "workload", None, str(e), None)
                    raise CpuExit(f"{self.who}: {e}") from None
                self.cpu = Cpu(cfg, self.cpu_id, workloads.program(cfg, self.cpu_id))
                self._stop_monitor()
                if self.rejoin:
                    self._resume(timeout - (time.monotonic() - t0))
                return
            raise CpuExit(f"{self.who}: unexpected {msg[0]} before WELCOME")

    def _resume(self, timeout: float) -> None:
        """A replacement: restore the last checkpoint the coordinator has, and queue the batches since."""
        deadline = time.monotonic() + max(timeout, 1.0)
        while True:
            msg = self._recv(JOIN_POLL_MS, joining=True)
            if msg is not None:
                break
            if time.monotonic() > deadline:
                raise CpuExit(f"{self.who}: no checkpoint from the coordinator at {self.address} after joining")
        if msg[0] != p.RESUME:
            raise CpuExit(f"{self.who}: unexpected {msg[0]} instead of RESUME after joining again")
        _, _, self.resume_state, downs = msg
        try:
            self.replay = deque(Down([from_wire(x) for x in msgs], safe) for msgs, safe in downs)
        except (ValueError, TypeError, IndexError) as e:
            raise p.ProtocolError(f"invalid RESUME from the coordinator: {type(e).__name__}: {e}") from None

    def _catch_up(self, port: CpuPort) -> bool:
        """A replacement applies the batches sent since its checkpoint, each once the CPU has run as far as
        it could (a delivery the transport could have made), sending what it has to say as usual; returns
        whether it must report. What the coordinator has already is dropped there."""
        state = self.resume_state
        if state is not None:
            try:
                self._seek(state["cpu"]["pc"])
                port.restore(state)
            except (KeyError, ValueError, TypeError, IndexError) as e:
                raise p.ProtocolError(f"invalid checkpoint from the coordinator: {type(e).__name__}: {e}") from None
        self.last_checkpoint = self._progress()
        if self.log:
            self.log.info("resumed", cpu=self.cpu_id, from_checkpoint=state is not None, pc=self.cpu.pc,
                          clock=self.cpu.clock, batches=len(self.replay))
        report = False
        while self.replay:
            self._step(port, report)
            report = False
            if not port.runnable():
                report = port.deliver(self.replay.popleft())
        return report

    def _step(self, port: CpuPort, report: bool) -> None:
        """Run the CPU as far as it may and send what it has to say (and a checkpoint when one is due), or a
        heartbeat when the link was quiet."""
        up = port.work(stopping.RUN_CHUNK, report)
        if up is not None:
            self._send(p.BATCH, list(map(to_wire, up.msgs)), up.events, up.horizon, up.ipis_seen)
            if self.checkpoint_ops:
                self._checkpoint()
        elif time.monotonic() - self.last_sent > p.HEARTBEAT_S:
            self._send(p.HB)

    def _seek(self, pc: int, step: int = SEEK_STEP_OPS) -> None:
        """Regenerate the program up to pc (Program.seek) in steps, with heartbeats between them: deep in a
        long run that takes seconds, and silence that long would count as this process being lost."""
        prog = self.cpu.program
        while prog.base + len(prog.ops) <= pc and not prog.ended(prog.base + len(prog.ops)):
            prog.seek(min(pc, prog.base + len(prog.ops) + step))
            if time.monotonic() - self.last_sent > p.HEARTBEAT_S:
                self._send(p.HB)

    def _progress(self) -> int:
        """Operations done plus model messages received: what the checkpoint interval counts."""
        return self.cpu.pc + self.port.delivered

    def _checkpoint(self) -> None:
        """Every checkpoint_ops, right after a batch: the coordinator then knows what the state includes."""
        if not self.checkpoint_ops:
            return
        n = self._progress()
        if n - self.last_checkpoint >= self.checkpoint_ops:
            self.last_checkpoint = n
            self._send(p.CKPT, self.port.delivered, self.port.snapshot())

    def _check_handshake(self) -> None:
        """A failed handshake is final (a key the coordinator does not allow, the wrong coordinator key,
        CurveZMQ on one side only): say which instead of waiting for the join timeout."""
        if self.monitor is None or not self.monitor.poll(0):
            return
        ev = recv_monitor_message(self.monitor)["event"]
        where = f"CPU {self.cpu_id}: the coordinator at {self.address}"
        if ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            key = self.curve.public.decode() if self.curve is not None else "(none)"
            raise CpuExit(f"{where} refused this CPU's CurveZMQ key {key}: add its NAME.key to the "
                          "coordinator's --allow list")
        if self.curve is not None:
            raise CpuExit(f"{where}: the CurveZMQ handshake failed: is --coordinator-key that coordinator's "
                          "public key, and was it started with --key?")
        raise CpuExit(f"{where}: the handshake failed: the coordinator uses CurveZMQ; give this CPU its key "
                      "pair and the coordinator's public key (--key, --coordinator-key)")

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None

    def serve(self) -> str:
        """Main loop until END; returns the run's status the coordinator ended it with."""
        port = self.port = CpuPort(self.cpu)
        self.sock.setsockopt(zmq.RCVTIMEO, IDLE_WAIT_MS)
        report = False
        if self.rejoin:
            try:
                report = self._catch_up(port)
            except ModelError as e:
                return self._fail(e)
        step, runnable, deliver = self._step, port.runnable, port.deliver
        recv_now, recv_wait = self._recv_now, self._recv_wait
        while True:
            try:
                step(port, report)
            except ModelError as e:
                return self._fail(e)
            report = False
            msg = recv_now() if runnable() else recv_wait()
            while msg is not None:
                kind = msg[0]
                if kind == p.BATCH:
                    try:
                        report = deliver(Down(list(map(from_wire, msg[2])), msg[3])) or report
                    except ModelError as e:
                        return self._fail(e)
                    except (ValueError, TypeError, IndexError) as e:
                        raise p.ProtocolError(f"invalid batch from the coordinator: {e}") from None
                elif kind == p.END:
                    self._send(p.BYE, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
                    return msg[2]
                # More may wait: take it before a report it could make moot; otherwise run first (a CPU
                # that cannot run waits for the rest in recv, without a check per message).
                msg = recv_now() if report else None

    def _fail(self, e: ModelError) -> str:
        """Report a model error (with the events so far) and wait for the coordinator to end the run."""
        self._send(p.BATCH, [], self.cpu.events, self.cpu.horizon(), self.port.ipis_seen)
        self.cpu.events = []
        self._send(p.FAIL, e.cpu, e.op, e.position, e.what, e.t)
        deadline = time.monotonic() + p.PEER_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = self._recv(END_POLL_MS)
            if msg is not None and msg[0] == p.END:
                return msg[2]
        return "error"

    def close(self) -> None:
        self._stop_monitor()
        self.sock.close(linger=500)


def cpu_main(address: str, cpu_id: int | None, run_id: str = "", token: str = "", log_dir: str | None = None,
             child_of_launch: bool = False, cfg: Config | None = None, curve=None,
             join_timeout: float = p.JOIN_TIMEOUT_S) -> int:
    """Entry point of a CPU process; returns its exit code: 0 only when the run ended ok (see
    smpsim.engines.stopping for the others)."""
    if child_of_launch:
        _die_with_parent()
        stopping.ignore_stop_signals()
    name = f"cpu-{cpu_id}" if cpu_id is not None else f"cpu-pid{os.getpid()}"
    log = process_logger(log_dir, name, console=not child_of_launch)
    node = None
    # A CPU of launch is stopped by the coordinator in its parent, which keeps the trace whole.
    guard = contextlib.nullcontext() if child_of_launch else stopping.raising_on_signals()
    try:
        with guard:
            node = CpuNode(address, cpu_id, run_id, token, log, cfg=cfg, curve=curve)
            log.info("joining", coordinator=address, cpu=cpu_id, pid=os.getpid(), join_timeout_s=join_timeout)
            node.join(join_timeout)
            log.info("joined", cpu=node.cpu_id, **({"replacing": True} if node.rejoin else {}))
            status = node.serve()
        if status != "ok":  # the coordinator's log says why
            (log.info if status == "interrupted" else log.warning)(
                "run ended", cpu=node.cpu_id, status=status, clock=node.cpu.clock)
            if not child_of_launch:
                print(f"error: {node.who}: the coordinator ended the run with status {status!r}; its log "
                      "and summary.json say why", file=sys.stderr)
            return stopping.EXIT_RUN_FAILED
        log.info("finished", cpu=node.cpu_id, clock=node.cpu.clock)
        return stopping.EXIT_OK
    except CpuExit as e:
        log.error("exit", reason=str(e))
        if not child_of_launch:  # launch's CPUs share its terminal: its coordinator reports their loss
            print(f"error: {e}", file=sys.stderr)
        return stopping.EXIT_CPU_LOST
    except p.ProtocolError as e:
        who = node.who if node is not None else f"CPU {cpu_id}"
        log.error("protocol error", reason=str(e))
        if not child_of_launch:
            print(f"error: {who}: protocol error: {e}", file=sys.stderr)
        return stopping.EXIT_CPU_LOST
    except KeyboardInterrupt as e:
        log.warning("interrupted", reason=str(e) or "SIGINT")
        return stopping.exit_code_of(e)
    finally:
        if node is not None:
            node.close()
