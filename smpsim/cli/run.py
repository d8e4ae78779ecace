"""``smpsim run [CONFIG] [--out DIR] [--set key=value ...] [--point N]``: one simulation, and ``execute``,
the one way ``run`` and ``launch`` run a config (smpsim.api) and report the result or the failure."""

from __future__ import annotations

from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from smpsim.cli.common import EXIT_RUN_FAILED, classify, console, fail, handle_errors
from smpsim.cli.config_cmd import ConfigArg, SetOpt
from smpsim.config import Config

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


class Engine(str, Enum):
    inline = "inline"
    distributed = "distributed"


class Transport(str, Enum):
    ipc = "ipc"
    tcp = "tcp"


TransportOpt = Annotated[Optional[Transport], typer.Option(
    "--transport", help="distributed engine: ipc or tcp on loopback (default: run.transport)", show_default=False)]
PointOpt = Annotated[Optional[int], typer.Option(
    "--point", metavar="N", help="run point N of a sweep file (0 is the first point `smpsim sweep` lists)",
    show_default=False)]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="run directory (default: runs/<UTC time>-<config hash>)", show_default=False)]


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
) -> None:
    """Run one simulation and print its summary."""
    from smpsim import api

    execute(api.load(config, set_, engine=engine and engine.value, transport=transport and transport.value,
                     point=point), out)


def execute(cfg: Config, out: Path | None) -> None:
    """Run a resolved config (``smpsim run`` and ``smpsim launch``) into ``out`` or a new runs/ directory,
    and print its summary."""
    from smpsim import api

    report(cfg, lambda progress: api.run_config(cfg, out, runs_root=None if out is not None else "runs", progress=progress))


def report(cfg: Config, body: Callable[[Callable[[dict], None]], Any], run_dir: Path | None = None) -> None:
    """Run ``body(progress)`` (returning a Run or a RunResult) under a progress display; print the summary,
    or the failure and where the trace up to it is (``run_dir``, else the run the exception carries)."""
    con = console()
    try:
        with progress_display(con, cfg) as progress:
            result = body(progress)
    except Exception as e:
        known = classify(e)
        if known is not None and known[0] == EXIT_RUN_FAILED:
            where = getattr(getattr(e, "run", None), "path", None) or run_dir
            fail(f"{known[1]}" + (f" (the trace up to the failure is in {where})" if where else ""),
                 EXIT_RUN_FAILED)
        raise
    print_summary(result.summary, getattr(result, "path", None) or result.run_dir, con)


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


class _LiveStatus:
    """One status line on a terminal (virtual time, kmaps, flushes, IPIs) for the distributed engine."""

    def __init__(self, con: Any, cpus: int):
        from rich.live import Live

        self.cpus = cpus
        self.live = Live("", console=con, transient=True, refresh_per_second=8)

    def __enter__(self) -> "_LiveStatus":
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def __call__(self, state: dict) -> None:
        self.live.update(f"[bold]{self.cpus} CPU processes[/]  virtual t={state.get('t', 0):,} cycles  "
                         f"kmaps {state.get('kmaps', 0):,}  flushes {state.get('flushes', 0):,}  "
                         f"IPIs {state.get('ipis', 0):,}")


def progress_display(con: Any, cfg: Config):
    """A context giving the progress callback of a run of cfg: a bar (inline) or a status line
    (distributed) on a terminal, None off one."""
    if con is None:
        return nullcontext()
    if cfg.run.engine == "distributed":
        return _LiveStatus(con, cfg.machine.cpus)
    return _progress_bar(con, cfg.machine.cpus * cfg.workload.kmaps_per_cpu)
