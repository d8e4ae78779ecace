"""Start a distributed run on this host: the coordinator here, one forked OS process per CPU.

CPU processes are forked before the trace machinery (pyarrow) is imported, so each stays small and starts
in milliseconds; they open their own ZeroMQ context and never touch the parent's.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import secrets
import shutil
import signal
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from smpsim.config import Config
from smpsim.engines import stopping
from smpsim.engines.distributed import cpu_node  # imported before forking: shared by every CPU process
from smpsim.engines.distributed import protocol as p
from smpsim.engines.distributed import respawn as rs
from smpsim.engines.distributed import sockdir as socket_dir
from smpsim.engines.distributed.limits import ensure_open_files
from smpsim.engines.distributed.security import new_token


def _cpu_child(address: str, cpu: int, run_id: str, token: str, log_dir: str | None, cfg: Config) -> None:
    os._exit(cpu_node.cpu_main(address, cpu, run_id, token, log_dir, child_of_launch=True, cfg=cfg))


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_distributed(cfg: Config, run_dir: Path | None, transport: str = "ipc",
                    progress: Callable[[dict], None] | None = None,
                    on_started: Callable[[list[int]], None] | None = None,
                    respawn: rs.RespawnPolicy | None = None):
    """Run cfg with cfg.machine.cpus CPU processes; returns RunResult (see engines.inline). A CPU process
    that dies is replaced as ``respawn`` says (default: rs.RespawnPolicy(); rs.NO_RESPAWN: the run stops)."""
    respawn = respawn if respawn is not None else rs.RespawnPolicy()
    ensure_open_files(cfg.machine.cpus, "a distributed run")  # before anything is made: nothing ran
    from smpsim.trace.rundir import create_run_dir
    if run_dir is not None:
        create_run_dir(run_dir, cfg)
    run_id = secrets.token_hex(6)
    token = new_token()  # only this process and its children know it: no other local process can join
    sockdir = None
    if transport == "ipc":
        sockdir = socket_dir.make()
        listen = f"ipc://{sockdir}/c.ipc"  # short: see sockdir
    else:
        listen = "tcp://127.0.0.1:0"
    log_dir = str(run_dir / "logs") if run_dir is not None else None
    t0 = time.perf_counter()
    t0_mono = time.monotonic()
    ctx = zmq.Context()
    sock, address = p.make_router(ctx, listen)
    mp = multiprocessing.get_context("fork")
    children: list = []
    lost: list = []  # replaced processes, reaped at the end
    node = None
    forget = stopping.at_second_signal(lambda: sockdir and shutil.rmtree(sockdir, ignore_errors=True))
    try:
        cpu_node.prepare(cfg)
        for c in range(cfg.machine.cpus):
            proc = mp.Process(target=_cpu_child, args=(address, c, run_id, token, log_dir, cfg),
                              name=f"smpsim-cpu-{c}")
            proc.start()
            children.append(proc)
        if on_started is not None:
            on_started([ch.pid for ch in children])
        from smpsim.engines.distributed.coordinator_node import CoordinatorNode
        from smpsim.engines.distributed.logs import process_logger
        from smpsim.engines.inline import RunResult

        def check_children() -> tuple[int, str] | None:
            for c, ch in enumerate(children):
                if ch.exitcode is not None and c not in node.bye and ch.exitcode != 0:
                    return c, (f"CPU {c} process (pid {ch.pid}) died ({_describe_exit(ch.exitcode)}) at "
                               f"virtual time t={node.horizon[c]}")
            return None

        def replace_cpu(c: int) -> None:
            old = children[c]
            if old.exitcode is None:  # silent, not dead (stopped, hung): make sure it is gone
                old.kill()
            lost.append(old)
            children[c] = rs.Child(rs.spawn_cpu(address, c, run_id, token, log_dir))

        log = process_logger(log_dir, "coordinator")
        node = CoordinatorNode(cfg, run_dir, sock, run_id, token, log=log, check_children=check_children,
                               progress=progress, t_start=t0_mono, respawn=respawn, replace_cpu=replace_cpu)
        log.info("listening", address=address, cpus=cfg.machine.cpus, run_id=run_id)
        summary = node.run()
        summary_hosts = sorted({h.split(" pid ")[0] for h in node.hosts.values()})
        summary["processes"] = cfg.machine.cpus + 1
        summary["hosts"] = len(summary_hosts)
        timing = {"seconds": time.perf_counter() - t0, **node.timing(),
                  "coordinator_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
        return RunResult(summary, run_dir, timing)
    finally:
        _reap(children + lost)
        sock.close(linger=0)
        ctx.term()
        if sockdir:
            shutil.rmtree(sockdir, ignore_errors=True)
        forget()


def _reap(children, grace: float = 3.0) -> None:
    """Wait for every CPU process; those that do not exit in time are killed. None is left behind."""
    deadline = time.monotonic() + grace
    for ch in children:
        ch.join(max(0.0, deadline - time.monotonic()))
    for ch in children:
        if ch.exitcode is None:
            ch.kill()
    for ch in children:
        ch.join(2.0)


def serve_coordinator(cfg: Config, run_dir: Path | None, listen: str, token: str = "",
                      progress: Callable[[dict], None] | None = None,
                      on_listening: Callable[[str], None] | None = None, curve=None,
                      join_timeout: float = p.JOIN_TIMEOUT_S, respawn: rs.RespawnPolicy | None = None):
    """`smpsim coordinator`: serve CPUs that join from anywhere (other hosts, Kubernetes pods).
    curve: a security.CurveServer (encrypt, and admit only its allowed CPU keys), or None. A CPU whose
    process is lost may join again (its restart, e.g. by the orchestrator) as ``respawn`` says (default:
    rs.RespawnPolicy(); rs.NO_RESPAWN: the run stops)."""
    from smpsim.engines.distributed.coordinator_node import CoordinatorNode
    from smpsim.engines.distributed.logs import process_logger
    from smpsim.engines.inline import RunResult

    log_dir = str(run_dir / "logs") if run_dir is not None else None
    ctx = zmq.Context()
    if curve is not None:
        curve.start(ctx)  # the ZAP handler must be there before the first handshake
    try:
        sock, address = p.make_router(ctx, listen, curve)
    except p.AddressError:
        if curve is not None:
            curve.stop()
        ctx.term()
        raise
    if curve is not None:
        curve.watch(sock)
    forget = stopping.at_second_signal(lambda: _unlink_ipc(address))
    try:
        log = process_logger(log_dir, "coordinator")
        log.info("listening", address=address, cpus=cfg.machine.cpus, curve=curve is not None,
                 token=bool(token))
        if on_listening is not None:
            on_listening(address)
        node = CoordinatorNode(cfg, run_dir, sock, run_id="", token=token, log=log, progress=progress,
                               curve=curve, join_timeout=join_timeout,
                               respawn=respawn if respawn is not None else rs.RespawnPolicy())
        summary = node.run()
        summary["processes"] = cfg.machine.cpus + 1
        summary["hosts"] = len({h.split(" pid ")[0] for h in node.hosts.values()} | {socket.gethostname()})
        return RunResult(summary, run_dir)
    finally:
        if curve is not None:
            curve.stop()
        sock.close(linger=0)
        ctx.term()
        _unlink_ipc(address)
        forget()


def _unlink_ipc(address: str) -> None:
    """Remove the socket file of an ipc address this process bound (ZeroMQ leaves it), and only a socket."""
    if address.startswith("ipc://"):
        path = address[len("ipc://"):]
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass
