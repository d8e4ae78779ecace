"""``smpsim launch``, ``smpsim coordinator`` and ``smpsim cpu``: the distributed engine's commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from smpsim.cli.common import EXIT_USAGE, fail, handle_errors
from smpsim.cli.config_cmd import SetOpt
from smpsim.cli.run import OutOpt, PointOpt, TransportOpt, execute, report

@handle_errors
def launch(
    cpus: Annotated[Optional[int], typer.Option("--cpus", "-n", help="CPU processes (machine.cpus)")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="config (default: configs/default.toml)")] = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    transport: TransportOpt = None,
    point: PointOpt = None,
) -> None:
    """Run a config on one OS process per CPU plus a coordinator, on this host."""
    from smpsim import api

    overrides = list(set_ or ())
    if cpus is not None:
        overrides.append(f"machine.cpus={cpus}")
    execute(api.load(config, overrides, engine="distributed", transport=transport and transport.value,
                     point=point), out)


@handle_errors
def coordinator(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="config (default: configs/default.toml)")] = None,
    set_: SetOpt = None,
    listen: Annotated[str, typer.Option("--listen", help="ZeroMQ address to bind, e.g. tcp://0.0.0.0:5555")] = "tcp://127.0.0.1:5555",
    token: Annotated[Optional[str], typer.Option("--token", envvar="SMPSIM_TOKEN",
                                                 help="run token CPUs must present (required beyond loopback)")] = None,
    out: OutOpt = None,
) -> None:
    """Serve a run to CPU processes that join from this or other hosts (`smpsim cpu`)."""
    from smpsim import api
    from smpsim.engines.distributed.launch import is_loopback, serve_coordinator
    from smpsim.experiments.provenance import recorded
    from smpsim.trace.rundir import create_run_dir, default_run_dir

    if not is_loopback(listen) and not token:
        fail(f"--listen {listen} is beyond loopback: give a run token (--token or SMPSIM_TOKEN) that every "
             "CPU must present", EXIT_USAGE)
    cfg = api.load(config, set_)
    out_dir = create_run_dir(out if out is not None else default_run_dir(cfg), cfg)
    def listening(address: str) -> None:
        print(f"coordinator listening on {address} for {cfg.machine.cpus} CPUs; run dir {out_dir}",
              file=sys.stderr, flush=True)

    report(cfg, lambda status: recorded(
        cfg, out_dir, lambda: serve_coordinator(cfg, out_dir, listen, token or "", progress=status,
                                                on_listening=listening),
        "distributed", processes=cfg.machine.cpus + 1, hosts=None), out_dir)


def _cpu_id_from_env() -> int | None:
    for var in ("SMPSIM_CPU_ID", "JOB_COMPLETION_INDEX"):
        v = os.environ.get(var)
        if v not in (None, ""):
            try:
                return int(v)
            except ValueError:
                fail(f"{var}={v!r} is not a CPU id (an integer)", EXIT_USAGE)
    return None


@handle_errors
def cpu(
    coordinator_address: Annotated[str, typer.Option("--coordinator", help="the coordinator's address, e.g. tcp://HOST:5555")],
    cpu_id: Annotated[Optional[int], typer.Option(
        "--cpu-id", help="CPU id (default: SMPSIM_CPU_ID, then JOB_COMPLETION_INDEX, else the lowest free id)")] = None,
    token: Annotated[Optional[str], typer.Option("--token", envvar="SMPSIM_TOKEN", help="the run token")] = None,
    log_dir: Annotated[Optional[Path], typer.Option("--log-dir", help="where to write this process's JSON log")] = None,
) -> None:
    """Run one simulated CPU, joining a coordinator (possibly on another host)."""
    from smpsim.engines.distributed.cpu_node import cpu_main

    if cpu_id is None:
        cpu_id = _cpu_id_from_env()
    if cpu_id is not None and cpu_id < 0:
        fail(f"--cpu-id {cpu_id}: must be >= 0", EXIT_USAGE)
    code = cpu_main(coordinator_address, cpu_id, "", token or "", str(log_dir) if log_dir else None)
    if code:
        raise typer.Exit(code)
