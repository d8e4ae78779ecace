"""``smpsim run [CONFIG] [--out DIR] [--set key=value ...]``: one simulation in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from smpsim.cli.common import EXIT_RUN_FAILED, classify, console, fail, handle_errors
from smpsim.cli.config_cmd import ConfigArg, SetOpt
from smpsim.cli.progress import RunProgress, total_kmaps
from smpsim.config import load_config

@handle_errors
def run(
    config: ConfigArg = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="run directory (default: runs/<UTC time>-<config hash>)", show_default=False)] = None,
    set_: SetOpt = None,
    engine: Annotated[Optional[str], typer.Option(
        "--engine", help="inline (one process) or distributed (a process per CPU); default: run.engine")] = None,
    transport: Annotated[Optional[str], typer.Option(
        "--transport", help="distributed engine: ipc or tcp (default: run.transport)")] = None,
) -> None:
    """Run one simulation and print its summary."""
    from smpsim.trace.rundir import create_run_dir, default_run_dir

    overrides = list(set_ or ())
    if engine is not None:
        overrides.append(f"run.engine={engine}")
    if transport is not None:
        overrides.append(f"run.transport={transport}")
    cfg = load_config(config, overrides)
    if cfg.run.engine == "distributed":
        from smpsim.cli.distributed import run_distributed_config
        return run_distributed_config(cfg, out, cfg.run.transport)
    from smpsim.experiments.runner import run_config

    out_dir = create_run_dir(out if out is not None else default_run_dir(cfg), cfg)
    con = console()
    try:
        with RunProgress(con, total_kmaps(cfg)) as progress:
            result = run_config(cfg, out_dir, progress=progress if con is not None else None)
    except Exception as e:
        known = classify(e)
        if known is not None and known[0] == EXIT_RUN_FAILED:
            fail(f"{known[1]} (the trace up to the failure is in {out_dir})", EXIT_RUN_FAILED)
        raise
    print_summary(result.summary, result.run_dir, con, cfg)


def print_summary(summary: dict[str, Any], run_dir: Path | None, con: Any = None, cfg: Any = None) -> None:
    """What ran, its headline figures and the next command (smpsim.metrics.run_summary_rows)."""
    from smpsim.metrics import run_summary_rows

    what = (cfg.policy.name, cfg.machine.cpus, cfg.workload.kind) if cfg is not None else ()
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
