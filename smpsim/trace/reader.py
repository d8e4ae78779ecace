"""Reading a run directory back: open_run, iter_events, iter_tables, read_table.

A run is *truncated* when it did not finish cleanly: no summary.json (the process died), a status other
than "ok" (a model BUG or deadlock stopped it), fewer parts or events than summary.json records, or a
temporary part left by a crash. A truncated run is still readable up to where it ends; ``open_run`` warns
(TruncatedRunWarning) and sets ``RunDir.truncated`` and ``RunDir.reason``. What cannot be read at all
raises TraceError naming the file: a path that is not a run directory, a missing part with later parts
present, or a corrupt part.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from smpsim.trace.errors import TraceError
from smpsim.trace.rundir import PROVENANCE_NAME, SUMMARY_NAME, TRACE_DIR, read_config_data, read_summary
from smpsim.trace.schema import FIELD_NAMES, REQUIRED, SCHEMA
from smpsim.trace.writer import PART_PREFIX, PART_SUFFIX, part_name

_PART_RE = re.compile(re.escape(PART_PREFIX) + r"(\d+)" + re.escape(PART_SUFFIX) + "$")


class TruncatedRunWarning(UserWarning):
    """The run did not finish cleanly; its trace is readable up to where it ends."""


@dataclass
class RunDir:
    """An opened run directory: its path, summary, trace parts, and whether (and why) the trace is truncated."""
    path: Path
    summary: dict[str, Any] | None
    parts: list[Path] = field(default_factory=list)
    truncated: bool = False
    reason: str | None = None

    @property
    def status(self) -> str | None:
        return self.summary.get("status") if self.summary else None

    @property
    def trace_dir(self) -> Path:
        return self.path / TRACE_DIR

    @property
    def has_trace(self) -> bool:
        """False when the run recorded no trace (trace.enabled = false)."""
        if self.parts or self.trace_dir.is_dir():
            return True
        trace = (self.summary or {}).get("trace")
        if isinstance(trace, dict) and "enabled" in trace:
            return bool(trace["enabled"])
        return bool(_config_trace(self.path).get("enabled", True))

    @property
    def digest(self) -> str | None:
        return (self.summary or {}).get("digest")


def is_run_dir(path: Path) -> bool:
    """path holds a run: its summary.json or provenance.json, or trace parts."""
    trace = path / TRACE_DIR
    try:
        return ((path / SUMMARY_NAME).is_file() or (path / PROVENANCE_NAME).is_file()
                or (trace.is_dir() and any(_PART_RE.match(f.name) for f in trace.iterdir())))
    except OSError:  # a directory we may not read holds no run of ours
        return False


def open_run(path: str | Path, warn: bool = True) -> RunDir:
    p = Path(path)
    if not p.exists():
        raise TraceError(f"{p}: no such run directory")
    if not p.is_dir():
        raise TraceError(f"{p}: not a run directory (it is a file)")
    trace_dir = p / TRACE_DIR
    if not (p / SUMMARY_NAME).exists() and not trace_dir.is_dir():
        raise TraceError(f"{p}: not a run directory (it has neither {SUMMARY_NAME} nor {TRACE_DIR}/)")
    summary = read_summary(p)

    found: dict[int, Path] = {}
    partial: list[str] = []
    if trace_dir.is_dir():
        for f in trace_dir.iterdir():
            m = _PART_RE.match(f.name)
            if m:
                found[int(m.group(1))] = f
            elif f.name.startswith(".") and f.name.endswith(".tmp"):
                partial.append(f.name)
    count = max(found) + 1 if found else 0
    for i in range(count):
        if i not in found:
            raise TraceError(f"{trace_dir / part_name(i)}: missing (later parts exist): the trace is damaged")
    parts = [found[i] for i in range(count)]

    reasons: list[str] = []
    if summary is None:
        reasons.append(f"no {SUMMARY_NAME}: the run did not finish")
    else:
        status = summary.get("status")
        if status != "ok":
            msg = f"run status is {status!r}"
            if summary.get("error"):
                msg += f" ({summary['error']})"
            reasons.append(msg)
        want = _expected_parts(p, summary)
        if want is not None and want > count:
            missing = part_name(count) if want == count + 1 else f"{part_name(count)} .. {part_name(want - 1)}"
            reasons.append(f"{want - count} of {want} trace parts missing at the end ({missing})")
    if partial:
        reasons.append(f"a partly written part was left behind ({', '.join(sorted(partial))})")
    run = RunDir(path=p, summary=summary, parts=parts, truncated=bool(reasons),
                 reason="; ".join(reasons) or None)
    if run.truncated and warn:
        warnings.warn(f"{p}: truncated run: {run.reason}", TruncatedRunWarning, stacklevel=2)
    return run


def _expected_parts(path: Path, summary: dict[str, Any]) -> int | None:
    """How many parts the finished run wrote: summary.json's trace.parts (TraceWriter.stats()), else
    derived from its event count and config.toml's trace settings; None when neither is known."""
    trace = summary.get("trace")
    if isinstance(trace, dict) and isinstance(trace.get("parts"), int):
        return trace["parts"]
    events = summary.get("events")
    if not isinstance(events, int):
        return None
    cfg = _config_trace(path)
    size = cfg.get("part_events")
    if not cfg.get("enabled", True):
        return 0
    if not isinstance(size, int) or size < 1:
        return None
    return -(-events // size)


def _config_trace(path: Path) -> dict[str, Any]:
    """The [trace] table of RUN/config.toml ({} when it cannot be read)."""
    trace = read_config_data(path).get("trace", {})
    return trace if isinstance(trace, dict) else {}


def _read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        table = pq.read_table(path, columns=columns, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as e:
        raise TraceError(f"{path}: corrupt or unreadable trace part ({e})") from None
    missing = [c for c in REQUIRED if c not in table.column_names and (columns is None or c in columns)]
    if missing:
        raise TraceError(f"{path}: not a trace part (no column {', '.join(missing)})")
    return table


def read_part(path: str | Path) -> pa.Table:
    """One part file read in full, as written; TraceError naming the file when it is damaged."""
    return _read_part(Path(path))


def _check_seq(path: Path, table: pa.Table, expected: int) -> int:
    """Each part continues the seq numbering of the one before; returns the next expected seq."""
    n = table.num_rows
    if n == 0:
        return expected
    seq = table.column("seq")
    first, last = seq[0].as_py(), seq[n - 1].as_py()
    if first != expected or last != expected + n - 1:
        raise TraceError(f"{path}: seq runs {first}..{last}, expected {expected}..{expected + n - 1}: "
                         "the trace is damaged")
    return expected + n


def iter_events(run: RunDir | str | Path) -> Iterator[dict[str, Any]]:
    """Every event in seq order as a dict without null fields, keys in trace-schema order."""
    if not isinstance(run, RunDir):
        run = open_run(run)
    expected = 0
    for path in run.parts:
        table = _read_part(path)
        expected = _check_seq(path, table, expected)
        n = table.num_rows
        names = [c for c in FIELD_NAMES if c in table.column_names and table.column(c).null_count < n]
        cols = [table.column(c).to_pylist() for c in names]
        for row in zip(*cols):
            yield {k: v for k, v in zip(names, row) if v is not None}


def iter_tables(run: RunDir | str | Path, columns: list[str] | tuple[str, ...] | None = None) -> Iterator[pa.Table]:
    """Each part as a Table in the trace schema, in seq order, checked like iter_events.

    ``columns`` (trace field names) reads only those columns, in that order: much less I/O for a
    columnar analysis that needs a few of them. The parts' seq continuity is checked either way.
    """
    if not isinstance(run, RunDir):
        run = open_run(run)
    names = list(FIELD_NAMES) if columns is None else list(columns)
    unknown = [c for c in names if c not in FIELD_NAMES]
    if unknown:
        raise ValueError(f"not trace fields: {unknown}")
    schema = pa.schema([SCHEMA.field(c) for c in names])
    read = None if columns is None else list(dict.fromkeys(["seq", *REQUIRED, *names]))
    expected = 0
    for path in run.parts:
        table = _read_part(path, _present(path, read))
        expected = _check_seq(path, table, expected)
        try:
            yield table.select(names).cast(schema)
        except (pa.ArrowException, KeyError) as e:
            raise TraceError(f"{path}: does not match the trace schema ({e})") from None


def _present(path: Path, columns: list[str] | None) -> list[str] | None:
    """The requested columns the part has (a missing one is reported by the schema check, naming it)."""
    if columns is None:
        return None
    try:
        have = set(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as e:
        raise TraceError(f"{path}: corrupt or unreadable trace part ({e})") from None
    return [c for c in columns if c in have]


def read_table(run: RunDir | str | Path, columns: list[str] | tuple[str, ...] | None = None) -> pa.Table:
    """The whole trace as one Table with the trace schema (or just ``columns`` of it; empty when the run
    has no parts)."""
    tables = list(iter_tables(run, columns))
    if not tables:
        names = list(FIELD_NAMES) if columns is None else list(columns)
        return pa.schema([SCHEMA.field(c) for c in names]).empty_table()
    return pa.concat_tables(tables)
