"""A CPU process: one model Cpu behind a DEALER socket.

It joins the coordinator, receives the resolved config, then loops: run the Cpu up to the safe-time bound,
ship its model messages and trace events, apply the replies and IPIs it gets back. It exits on END, on a
coordinator that went silent (PEER_TIMEOUT_S), or when the parent that launched it dies.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time

import zmq

from smpsim.config import Config, validate
from smpsim.engines.distributed import protocol as p
from smpsim.engines.distributed.logs import process_logger
from smpsim.model import workloads
from smpsim.engines.core import CpuPort, Down
from smpsim.model.cpu import Cpu
from smpsim.model.messages import from_wire, to_wire
from smpsim.model.errors import ModelError


# Operations per Cpu.run call: keeps the process answering heartbeats when it may run far ahead.
RUN_CHUNK = 20_000


class CpuExit(Exception):
    """The CPU process stops; the message says why (coordinator refused, vanished, protocol error)."""


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the launching process dies, so no CPU outlives `smpsim launch`."""
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class CpuNode:
    def __init__(self, address: str, cpu_id: int | None, run_id: str = "", token: str = "", log=None,
                 ctx: zmq.Context | None = None, cfg: Config | None = None):
        self.address, self.cpu_id, self.run_id, self.token = address, cpu_id, run_id, token
        self.preloaded = cfg  # a forked child already holds the validated config
        self.log = log
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.SNDHWM, p.HWM)
        self.sock.setsockopt(zmq.RCVHWM, p.HWM)
        self.sock.setsockopt(zmq.SNDTIMEO, p.SEND_TIMEOUT_MS)
        self.sock.connect(address)
        self.link = p.Link()
        self.last_sent = self.last_heard = time.monotonic()
        self.cpu: Cpu | None = None
        self.port: CpuPort | None = None

    def _send(self, kind: str, *fields) -> None:
        try:
            self.sock.send(p.pack([kind, self.link.out(), *fields]))
        except zmq.Again:
            raise CpuExit(f"CPU {self.cpu_id}: could not send to the coordinator for "
                          f"{p.SEND_TIMEOUT_MS} ms") from None
        self.last_sent = time.monotonic()

    def _recv(self, timeout_ms: int, joining: bool = False) -> list | None:
        if not self.sock.poll(timeout_ms):
            if not joining and time.monotonic() - self.last_heard > p.PEER_TIMEOUT_S:
                raise CpuExit(f"CPU {self.cpu_id}: the coordinator has been silent for "
                              f"{p.PEER_TIMEOUT_S:.0f} s; exiting")
            return None
        return self._recv_now()

    def _recv_now(self) -> list | None:
        """The next message if one is there, without waiting (and without a poll system call)."""
        try:
            frame = self.sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None
        msg = p.unpack(frame)
        self.last_heard = time.monotonic()
        if msg[0] != p.REFUSE:
            self.link.check_in(msg[1], "the coordinator")
        return msg

    def join(self) -> None:
        ask = -1 if self.cpu_id is None else self.cpu_id
        hello = [p.HELLO, p.VERSION, self.run_id, ask, os.getpid(), socket.gethostname(), self.token]
        self.sock.send(p.pack(hello))
        deadline = time.monotonic() + p.JOIN_TIMEOUT_S
        while True:
            msg = self._recv(200, joining=True)
            if msg is None:
                if time.monotonic() > deadline:
                    raise CpuExit(f"CPU {self.cpu_id}: no answer from the coordinator at {self.address}")
                continue
            if msg[0] == p.REFUSE:
                raise CpuExit(f"CPU {self.cpu_id}: refused by the coordinator: {msg[1]}")
            if msg[0] == p.WELCOME:
                _, _, self.cpu_id, config, ops, lines = msg
                cfg = self.preloaded or validate(config, "config from the coordinator")
                if ops is None:
                    prog = workloads.program(cfg, self.cpu_id)
                else:
                    prog = workloads.Program.of([tuple(o) for o in ops])
                self.cpu = Cpu(cfg, self.cpu_id, prog)
                return
            raise CpuExit(f"CPU {self.cpu_id}: unexpected {msg[0]} before WELCOME")

    def serve(self) -> None:
        """Main loop until END."""
        port = self.port = CpuPort(self.cpu)
        report = False
        while True:
            try:
                up = port.work(RUN_CHUNK, report)
            except ModelError as e:
                return self._fail(e)
            report = False
            if up is not None:
                self._send(p.BATCH, [to_wire(x) for x in up.msgs], up.events, up.horizon, up.ipis_seen)
            elif time.monotonic() - self.last_sent > p.HEARTBEAT_S:
                self._send(p.HB)
            msg = self._recv_now() if port.runnable() else self._recv(100)
            while msg is not None:
                if msg[0] == p.END:
                    self._send(p.BYE, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
                    return
                if msg[0] == p.BATCH:
                    _, _, msgs, safe = msg
                    try:
                        report = port.deliver(Down([from_wire(x) for x in msgs], safe)) or report
                    except ModelError as e:
                        return self._fail(e)
                    except (ValueError, TypeError, IndexError) as e:
                        raise p.ProtocolError(f"invalid batch from the coordinator: {e}") from None
                msg = self._recv_now()

    def _fail(self, e: ModelError) -> None:
        """Report a model error (with the events so far) and wait for the coordinator to end the run."""
        self._send(p.BATCH, [], self.cpu.events, self.cpu.horizon(), self.port.ipis_seen)
        self.cpu.events = []
        self._send(p.FAIL, e.cpu, e.op, e.position, e.what, e.t)
        deadline = time.monotonic() + p.PEER_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = self._recv(100)
            if msg is not None and msg[0] == p.END:
                return

    def close(self) -> None:
        self.sock.close(linger=500)


def cpu_main(address: str, cpu_id: int | None, run_id: str = "", token: str = "", log_dir: str | None = None,
             child_of_launch: bool = False, cfg: Config | None = None) -> int:
    """Entry point of a CPU process; returns its exit code."""
    if child_of_launch:
        _die_with_parent()
    name = f"cpu-{cpu_id}" if cpu_id is not None else f"cpu-pid{os.getpid()}"
    log = process_logger(log_dir, name, console=not child_of_launch)
    node = None
    try:
        node = CpuNode(address, cpu_id, run_id, token, log, cfg=cfg)
        log.info("joining", coordinator=address, cpu=cpu_id, pid=os.getpid())
        node.join()
        log.info("joined", cpu=cpu_id)
        node.serve()
        log.info("finished", cpu=cpu_id, clock=node.cpu.clock)
        return 0
    except CpuExit as e:
        log.error("exit", reason=str(e))
        print(f"error: {e}", file=sys.stderr)
        return 3
    except p.ProtocolError as e:
        log.error("protocol error", reason=str(e))
        print(f"error: CPU {cpu_id}: protocol error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    finally:
        if node is not None:
            node.close()
