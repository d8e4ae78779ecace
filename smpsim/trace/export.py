"""Export a recorded trace as JSON lines (docs/trace-format.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from smpsim.trace.errors import TraceError
from smpsim.trace.reader import RunDir, iter_events, open_run
from smpsim.trace.rundir import atomic_file

_CHUNK = 4096


def export_jsonl(run: RunDir | str | Path, out: IO[str] | str | Path) -> int:
    """Write one JSON object per event, in seq order: seq, t, cpu, ev first, then the event's own fields,
    nulls omitted. ``out`` is a text stream or a path. Returns the number of events written."""
    if not isinstance(run, RunDir):
        run = open_run(run)
    if not run.has_trace:
        raise TraceError(f"{run.path}: the run recorded no trace (trace.enabled = false)")
    if isinstance(out, (str, Path)):
        # Written under a temporary name and renamed, so a failed export leaves no half file behind.
        with atomic_file(Path(out)) as f:
            return _write(run, f)
    return _write(run, out)


def _write(run: RunDir, f: IO[str]) -> int:
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    lines: list[str] = []
    count = 0
    for ev in iter_events(run):  # keys already come in schema order: seq, t, cpu, ev, ...
        lines.append(dumps(ev))
        if len(lines) >= _CHUNK:
            f.write("\n".join(lines) + "\n")
            count += len(lines)
            lines = []
    if lines:
        f.write("\n".join(lines) + "\n")
        count += len(lines)
    return count
