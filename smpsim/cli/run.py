"""``smpsim run [CONFIG] [--out DIR] [--set key=value ...]``: one simulation in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from smpsim.cli.common import EXIT_RUN_FAILED, classify, console, fail, handle_errors, interrupted
from smpsim.cli.config_cmd import ConfigArg, SetOpt
from smpsim.config import load_config

# (summary["counters"] key, label) in the order the summary is printed.
SUMMARY_ROWS = (
    ("kmaps", "kmaps"),
    ("new_mappings", "new mappings"),
    ("wraps", "ring wraps"),
    ("flushes", "flushes"),
    ("ipis", "IPIs"),
    ("stale", "stale uses"),
    ("sleeps", "sleeps"),
)


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
        if con is not None:
            with _progress_bar(con, cfg.machine.cpus * cfg.workload.kmaps_per_cpu) as progress:
                result = run_config(cfg, out_dir, progress=progress)
        else:
            result = run_config(cfg, out_dir)
    except KeyboardInterrupt as e:
        interrupted(e, out_dir)
    except Exception as e:
        known = classify(e)
        if known is not None and known[0] == EXIT_RUN_FAILED:
            fail(f"{known[1]} (the trace up to the failure is in {out_dir})", EXIT_RUN_FAILED)
        raise
    print_summary(result.summary, result.run_dir, con)


def print_summary(summary: dict[str, Any], run_dir: Path | None, con: Any = None) -> None:
    counters = summary.get("counters", {})
    rows = [(label, _fmt(counters.get(key))) for key, label in SUMMARY_ROWS]
    rows.append(("digest", str(summary.get("digest", "-"))))
    rows.append(("run dir", str(run_dir) if run_dir is not None else "-"))
    if con is None:
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            typer.echo(f"{label:<{width}}  {value}")
        return
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label, value in rows:
        table.add_row(label, value)
    con.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class _progress_bar:
    """A rich progress bar for TTYs.

    The engine calls ``progress(state)`` with a dict of running counters (``kmaps`` is the one shown,
    against the total cpus * kmaps_per_cpu), or ``progress(done, total)`` with numbers.
    """

    def __init__(self, con: Any, total: int | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._progress = Progress("simulating: kmaps", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  console=con, transient=True)
        self._task = self._progress.add_task("run", total=total)

    def __enter__(self) -> Callable[..., None]:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, done: Any = None, total: Any = None, *args: Any, **kwargs: Any) -> None:
        if isinstance(done, dict):
            done = done.get("kmaps")
        if isinstance(done, (int, float)):
            if isinstance(total, (int, float)):
                self._progress.update(self._task, completed=done, total=total)
            else:
                self._progress.update(self._task, completed=done)
