"""``smpsim run [CONFIG] [--out DIR] [--set key=value ...] [--point N]``: one simulation, and ``execute``,
the one way ``run`` and ``launch`` run a config (smpsim.api) and report the result or the failure."""

from __future__ import annotations

from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from smpsim.cli.common import EXIT_RUN_FAILED, classify, console, fail, handle_errors, interrupted, say
from smpsim.cli.config_cmd import ConfigArg, SetOpt
from smpsim.cli.progress import RunProgress, total_kmaps
from smpsim.config import Config
from smpsim.engines.distributed.respawn import CHECKPOINT_OPS, MAX_RESPAWNS

class Engine(str, Enum):
    """`--engine`: the engine a run uses (run.engine)."""
    inline = "inline"
    distributed = "distributed"


class Transport(str, Enum):
    """`--transport`: how the distributed engine's processes talk (run.transport)."""
    ipc = "ipc"
    tcp = "tcp"


TransportOpt = Annotated[Optional[Transport], typer.Option(
    "--transport", help="distributed engine: ipc or tcp on loopback (default: run.transport)", show_default=False)]
PointOpt = Annotated[Optional[int], typer.Option(
    "--point", metavar="N", help="run point N of a sweep file (0 is the first point `smpsim sweep` lists)",
    show_default=False)]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="run directory (default: runs/<UTC time>-<config hash>)", show_default=False)]
NoRespawnOpt = Annotated[bool, typer.Option(
    "--no-respawn", help="distributed engine: stop the run when a CPU process dies instead of replacing it")]
MaxRespawnsOpt = Annotated[int, typer.Option(
    "--max-respawns", metavar="K", help="distributed engine: replace each CPU's process at most K times")]
WaitOpt = Annotated[bool, typer.Option(
    "--wait", help="when another smpsim process is using --out, wait until it has finished instead of stopping")]
CheckpointOpt = Annotated[int, typer.Option(
    "--checkpoint-every", metavar="N",
    help="distributed engine: a CPU checkpoints every N operations (and messages received), for its "
         "replacement")]


def respawn_policy(no_respawn: bool, max_respawns: int, checkpoint_every: int):
    """The RespawnPolicy of the --no-respawn, --max-respawns and --checkpoint-every options."""
    from smpsim.cli.common import EXIT_USAGE
    from smpsim.engines.distributed.respawn import NO_RESPAWN, RespawnPolicy
    if max_respawns < 0:
        fail(f"--max-respawns {max_respawns}: give how many times a CPU's process may be replaced, 0 or more "
             "(0 is --no-respawn)", EXIT_USAGE)
    if checkpoint_every < 1:
        fail(f"--checkpoint-every {checkpoint_every}: give the operations between checkpoints, 1 or more",
             EXIT_USAGE)
    if no_respawn or max_respawns == 0:
        return NO_RESPAWN
    return RespawnPolicy(max_respawns, checkpoint_every)


@handle_errors
def run(
    config: ConfigArg = None,
    out: OutOpt = None,
    set_: SetOpt = None,
    engine: Annotated[Optional[Engine], typer.Option(
        "--engine", help="inline (one process) or distributed (a process per CPU); default: run.engine",
        show_default=False)] = None,
    transport: TransportOpt = None,
    point: PointOpt = None,
    no_respawn: NoRespawnOpt = False,
    max_respawns: MaxRespawnsOpt = MAX_RESPAWNS,
    checkpoint_every: CheckpointOpt = CHECKPOINT_OPS,
    wait: WaitOpt = False,
) -> None:
    """Run one simulation and print its summary."""
    from smpsim import api

    respawn = respawn_policy(no_respawn, max_respawns, checkpoint_every)
    execute(api.load(config, set_, engine=engine and engine.value, transport=transport and transport.value,
                     point=point), out, respawn, wait)


def execute(cfg: Config, out: Path | None, respawn=None, wait: bool = False) -> None:
    """Run a resolved config (``smpsim run`` and ``smpsim launch``) into ``out`` or a new runs/ directory,
    and print its summary. respawn: the distributed engine's RespawnPolicy (None: its default); wait: for
    another process using ``out``."""
    from smpsim import api

    about = api.check_workload(cfg)  # a trace: what it replays and skips (the run checks it again, cached)
    if about:
        typer.echo(about, err=True)
    report(cfg, lambda progress: api.run_config(cfg, out, runs_root=None if out is not None else "runs",
                                                progress=progress, respawn=respawn, wait=wait, on_wait=say))


def report(cfg: Config, body: Callable[[Callable[[dict], None]], Any], run_dir: Path | None = None) -> None:
    """Run ``body(progress)`` (returning a Run or a RunResult) under a progress display; print the summary,
    or the failure and where the trace up to it is (``run_dir``, else the run the exception carries)."""
    con = console()
    try:
        with progress_display(con, cfg) as progress:
            result = body(progress)
    except KeyboardInterrupt as e:
        interrupted(e, _where(e, run_dir))
    except Exception as e:
        known = classify(e)
        if known is not None and known[0] == EXIT_RUN_FAILED:
            where = _where(e, run_dir)
            fail(f"{known[1]}" + (f" (the trace up to the failure is in {where})" if where else ""),
                 EXIT_RUN_FAILED)
        raise
    print_summary(result.summary, getattr(result, "path", None) or result.run_dir, con, cfg)


def _where(e: BaseException, run_dir: Path | None) -> Path | None:
    """The run directory a failed run left: the one the exception's Run names, else run_dir."""
    return getattr(getattr(e, "run", None), "path", None) or run_dir


def print_summary(summary: dict[str, Any], run_dir: Path | None, con: Any = None, cfg: Any = None) -> None:
    """What ran, its headline figures and the next command (smpsim.headline.run_summary_rows)."""
    from smpsim.headline import run_summary_rows

    what = (summary.get("policy") or cfg.policy.name, cfg.machine.cpus, cfg.workload.kind) if cfg is not None else ()
    rows = run_summary_rows(summary, run_dir, *what)
    if con is None:
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            typer.echo(f"{label:<{width}}  {value}")
        return
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in rows:
        table.add_row(label, value)
    con.print(table)


def progress_display(con: Any, cfg: Config):
    """A context giving the progress callback of a run of cfg (kmaps of the total, ETA, virtual time,
    flushes, IPIs; the same for both engines) on a terminal, None off one."""
    if con is None:
        return nullcontext()
    what = f"{cfg.machine.cpus} CPU processes" if cfg.run.engine == "distributed" else "simulating"
    return RunProgress(con, total_kmaps(cfg), what)
