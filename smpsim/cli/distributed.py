"""``smpsim launch``, ``smpsim coordinator`` and ``smpsim cpu``: the distributed engine's commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from smpsim.cli.common import EXIT_USAGE, fail, handle_errors
from smpsim.cli.config_cmd import SetOpt
from smpsim.cli.run import (CheckpointOpt, MaxRespawnsOpt, NoRespawnOpt, OutOpt, PointOpt, TransportOpt, WaitOpt,
                            execute, report, respawn_policy)
from smpsim.engines.distributed.respawn import CHECKPOINT_OPS, MAX_RESPAWNS
from smpsim.engines.distributed.protocol import JOIN_TIMEOUT_S

JoinTimeoutOpt = Annotated[float, typer.Option(
    "--join-timeout", metavar="SECONDS", help="how long the CPUs may take to join before the run is given up")]


def _check_join_timeout(seconds: float) -> None:
    if not seconds > 0:
        fail(f"--join-timeout {seconds:g}: give the seconds to wait, more than 0 (default {JOIN_TIMEOUT_S:g})",
             EXIT_USAGE)


InsecureOpt = Annotated[bool, typer.Option(
    "--insecure", help="allow plain TCP beyond loopback: unencrypted, only the run token admits CPUs")]


@handle_errors
def launch(
    cpus: Annotated[Optional[int], typer.Option("--cpus", "-n", help="CPU processes (machine.cpus)")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="config (default: configs/default.toml)")] = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    transport: TransportOpt = None,
    point: PointOpt = None,
    no_respawn: NoRespawnOpt = False,
    max_respawns: MaxRespawnsOpt = MAX_RESPAWNS,
    checkpoint_every: CheckpointOpt = CHECKPOINT_OPS,
    wait: WaitOpt = False,
) -> None:
    """Run a config on one OS process per CPU plus a coordinator, on this host. A CPU process that dies is
    replaced: the new one resumes from that CPU's last checkpoint (--no-respawn: the run stops)."""
    from smpsim import api

    respawn = respawn_policy(no_respawn, max_respawns, checkpoint_every)
    overrides = list(set_ or ())
    if cpus is not None:
        overrides.append(f"machine.cpus={cpus}")
    execute(api.load(config, overrides, engine="distributed", transport=transport and transport.value,
                     point=point), out, respawn, wait)


@handle_errors
def coordinator(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="config (default: configs/default.toml)")] = None,
    set_: SetOpt = None,
    listen: Annotated[str, typer.Option("--listen", help="ZeroMQ address to bind, e.g. tcp://0.0.0.0:5555")] = "tcp://127.0.0.1:5555",
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="SMPSIM_TOKEN",
        help="run token CPUs must present (default on loopback without keys: one made for this run)")] = None,
    token_file: Annotated[Optional[Path], typer.Option(
        "--token-file", help="write the run token to this file, readable by this user only, for "
                             "`smpsim cpu --token-file` (default: print it)")] = None,
    key: Annotated[Optional[Path], typer.Option(
        "--key", envvar="SMPSIM_KEY", help="this coordinator's key pair, NAME.key_secret from `smpsim keygen`: "
                                           "CurveZMQ encryption and authentication")] = None,
    allow: Annotated[Optional[Path], typer.Option(
        "--allow", envvar="SMPSIM_ALLOW", help="the CPUs' public keys, each for one CPU id: a file of `KEY "
                                               "CPU_ID` lines (keygen's allowed.keys), or a directory of "
                                               "cpu-N.key files")] = None,
    insecure: InsecureOpt = False,
    out: OutOpt = None,
    join_timeout: JoinTimeoutOpt = JOIN_TIMEOUT_S,
    no_respawn: NoRespawnOpt = False,
    max_respawns: MaxRespawnsOpt = MAX_RESPAWNS,
    checkpoint_every: CheckpointOpt = CHECKPOINT_OPS,
) -> None:
    """Serve a run to CPU processes that join from this or other hosts (`smpsim cpu`). A CPU process that is
    lost may be restarted (by hand, or by its orchestrator) with the same id: it resumes from that CPU's last
    checkpoint (--no-respawn: the run stops)."""
    _check_join_timeout(join_timeout)
    respawn = respawn_policy(no_respawn, max_respawns, checkpoint_every)
    from smpsim import api
    from smpsim.engines.distributed import protocol as p
    from smpsim.engines.distributed import security
    from smpsim.engines.distributed.launch import serve_coordinator
    from smpsim.engines.distributed.limits import FDS_PER_CPU_CONNECTION, ensure_open_files
    from smpsim.experiments.provenance import recorded
    from smpsim.trace.rundir import claim_run_dir, default_run_dir

    try:
        listen = p.check_address(listen)
        token, curve, made = security.coordinator_side(listen, token, key, allow, insecure)
        if token_file is not None:
            if not token:
                raise security.SecurityError("--token-file: there is no run token to write (CurveZMQ keys "
                                             "admit the CPUs; give --token as well to require one)")
            security.write_private(token_file, token + "\n")
    except (p.AddressError, security.SecurityError) as e:
        fail(str(e), EXIT_USAGE)
    except OSError as e:
        fail(f"--token-file {token_file}: cannot write it ({e.strerror})", EXIT_USAGE)
    cfg = api.load(config, set_)
    ensure_open_files(cfg.machine.cpus, "a coordinator", FDS_PER_CPU_CONNECTION)  # before the run directory
    out_dir = out if out is not None else default_run_dir(cfg)
    how = []
    if curve is not None:
        how.append(f"CurveZMQ, {len(curve.allowed)} CPU keys allowed")
    if token_file is not None:
        how.append(f"run token in {token_file}")
    elif made:
        how.append(f"run token {token} (CPUs: --token or SMPSIM_TOKEN)")

    def listening(address: str) -> None:
        print(f"coordinator listening on {address} for {cfg.machine.cpus} CPUs; run dir {out_dir}"
              + "".join(f"; {h}" for h in how), file=sys.stderr, flush=True)

    try:
        with claim_run_dir(out_dir, cfg, lock=out is not None):
            report(cfg, lambda status: recorded(
                cfg, out_dir, lambda: serve_coordinator(cfg, out_dir, listen, token, progress=status,
                                                        on_listening=listening, curve=curve,
                                                        join_timeout=join_timeout, respawn=respawn),
                "distributed", processes=cfg.machine.cpus + 1, hosts=None), out_dir)
    except p.AddressError as e:
        fail(str(e), EXIT_USAGE)


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
    token_file: Annotated[Optional[Path], typer.Option(
        "--token-file", help="read the run token from this file (`smpsim coordinator --token-file`)")] = None,
    key: Annotated[Optional[Path], typer.Option(
        "--key", envvar="SMPSIM_KEY", help="this CPU's key pair, NAME.key_secret from `smpsim keygen`")] = None,
    coordinator_key: Annotated[Optional[Path], typer.Option(
        "--coordinator-key", envvar="SMPSIM_COORDINATOR_KEY",
        help="the coordinator's public key, NAME.key (with --key: CurveZMQ)")] = None,
    insecure: InsecureOpt = False,
    log_dir: Annotated[Optional[Path], typer.Option("--log-dir", help="where to write this process's JSON log")] = None,
    join_timeout: Annotated[float, typer.Option(
        "--join-timeout", metavar="SECONDS",
        help="how long to wait for the coordinator's answer before giving up (exit 3)")] = JOIN_TIMEOUT_S,
) -> None:
    """Run one simulated CPU, joining a coordinator (possibly on another host)."""
    _check_join_timeout(join_timeout)
    from smpsim.engines.distributed import protocol as p
    from smpsim.engines.distributed import security
    from smpsim.engines.distributed.cpu_node import cpu_main

    if cpu_id is None:
        cpu_id = _cpu_id_from_env()
    if cpu_id is not None and cpu_id < 0:
        fail(f"--cpu-id {cpu_id}: must be >= 0", EXIT_USAGE)
    try:
        p.check_address(coordinator_address, "--coordinator")
        token, curve = security.cpu_side(coordinator_address, token, token_file, key, coordinator_key, insecure)
    except (p.AddressError, security.SecurityError) as e:
        fail(str(e), EXIT_USAGE)
    code = cpu_main(coordinator_address, cpu_id, "", token, str(log_dir) if log_dir else None, curve=curve,
                    join_timeout=join_timeout)
    if code:
        raise typer.Exit(code)
