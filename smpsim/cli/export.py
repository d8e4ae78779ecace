"""``smpsim export RUN --format jsonl [--output FILE]``."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from smpsim.cli.common import handle_errors, warn


class Format(str, Enum):
    jsonl = "jsonl"


@handle_errors
def export(
    run: Annotated[Path, typer.Argument(help="run directory (RUN/summary.json, RUN/trace/)")],
    format: Annotated[Format, typer.Option("--format", "-f", help="output format")] = Format.jsonl,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="output file (default: stdout)", show_default=False)] = None,
) -> None:
    """Export a recorded trace (JSON lines: one event per line, in seq order)."""
    from smpsim.trace.export import export_jsonl
    from smpsim.trace.reader import open_run

    rd = open_run(run, warn=False)
    if rd.truncated:
        warn(f"{rd.path}: truncated run ({rd.reason}); exporting the events recorded")
    if output is None:
        export_jsonl(rd, sys.stdout)
        sys.stdout.flush()
    else:
        export_jsonl(rd, output)
