"""``smpsim export RUN --format jsonl|chrome [--output FILE] [--from T --to T]``."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from smpsim.cli.common import fail, handle_errors, warn


class Format(str, Enum):
    """`smpsim export --format`: JSON lines or Chrome Trace Event JSON."""
    jsonl = "jsonl"
    chrome = "chrome"


@handle_errors
def export(
    run: Annotated[Path, typer.Argument(help="run directory (RUN/summary.json, RUN/trace/)")],
    format: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.jsonl,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="output file (default: stdout); never inside a run directory",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --output file")] = False,
    t_from: Annotated[Optional[int], typer.Option(
        "--from", help="chrome: start of the time window (virtual cycles)", show_default=False)] = None,
    t_to: Annotated[Optional[int], typer.Option(
        "--to", help="chrome: end of the time window (virtual cycles)", show_default=False)] = None,
) -> None:
    """Export a recorded trace as JSON lines or Chrome Trace Event JSON (Perfetto).

    jsonl: one event per line, in seq order. chrome: a track per CPU with spans for kmap, flush and IPI
    handling, flow arrows from each IPI's sender to its receiver, and a counter of free pkmap slots.
    """
    from smpsim.engines.stopping import raising_on_signals
    from smpsim.trace.reader import open_run

    if format is Format.jsonl and (t_from is not None or t_to is not None):
        fail("--from/--to apply to --format chrome only")
    if t_from is not None and t_to is not None and t_from > t_to:
        fail(f"--from {t_from} is after --to {t_to}")
    if output is not None:
        _check_output(output, force)
    rd = open_run(run, warn=False)
    if rd.truncated:
        warn(f"{rd.path}: truncated run ({rd.reason}); exporting the events recorded")
    with raising_on_signals():  # SIGTERM too unwinds, removing the temporary file of --output
        if format is Format.chrome:
            return _chrome(rd.path, output, t_from, t_to)
        from smpsim.trace.export import export_jsonl

        if output is None:
            export_jsonl(rd, sys.stdout)
            sys.stdout.flush()
        else:
            export_jsonl(rd, output)


def _check_output(output: Path, force: bool) -> None:
    """An export never writes inside a run directory (its own parts and summary.json included), and
    replaces an existing file only with --force."""
    from smpsim.trace.reader import is_run_dir

    parent = output.resolve().parent
    for d in (parent, *parent.parents):
        if is_run_dir(d):
            fail(f"--output {output}: inside the run directory {d}; a run directory holds only what its run "
                 "wrote: write the export elsewhere")
    if output.is_dir():
        fail(f"--output {output}: is a directory; give a file name")
    if not output.parent.is_dir():
        fail(f"--output {output}: no directory {output.parent}; create it first")
    if output.exists() and not force:
        fail(f"--output {output}: exists; give --force to replace it, or another file name")


def _chrome(run: Path, output: Path | None, t_from: int | None, t_to: int | None) -> None:
    from smpsim.analysis.chrome import write_chrome
    from smpsim.analysis.load import open_trace
    from smpsim.trace.rundir import atomic_file

    with open_trace(run) as tr:
        if output is None:
            write_chrome(tr, sys.stdout, t_from, t_to)
            sys.stdout.flush()
            return
        with atomic_file(output) as f:
            write_chrome(tr, f, t_from, t_to)
