"""TraceWriter: the run's digest and its bounded Parquet parts.

The digest (docs/architecture.md, "Run directory") is SHA-256 over the canonical stream: for each event in
seq order, ``msgpack.packb(sorted((k, v) for k, v in event.items() if v is not None))``. It is computed
for every run, whether the trace is recorded or not, so two runs can be compared by digest alone.

Parts are ``RUN/trace/part-00000.parquet``, ``part-00001.parquet``, ... of at most ``part_events`` rows,
each written to a hidden temporary name and renamed into place as soon as it is full, so a crash loses at
most the part being written and a reader never sees a half-written part under a part name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

import msgpack
import pyarrow as pa
import pyarrow.parquet as pq

from smpsim.trace.errors import TraceError
from smpsim.trace.schema import FIELD_SET, SCHEMA, STRUCT

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
COMPRESSION = "zstd"


def part_name(index: int) -> str:
    return f"{PART_PREFIX}{index:05d}{PART_SUFFIX}"


def event_bytes(ev: dict[str, Any], _pack=msgpack.Packer().pack) -> bytes:
    """One event's contribution to the digest (the reference definition, used by tests and tools)."""
    return _pack(sorted((k, v) for k, v in ev.items() if v is not None))


def digest_events(events: Iterable[dict[str, Any]]) -> str:
    """The digest of a whole stream, computed independently of TraceWriter."""
    h = hashlib.sha256()
    for ev in events:
        h.update(msgpack.packb(sorted((k, v) for k, v in ev.items() if v is not None)))
    return h.hexdigest()


def events_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (event dicts) as a Table with the fixed trace schema; unknown fields are an error."""
    unknown = set().union(*rows) - FIELD_SET
    if unknown:
        raise ValueError(f"trace events carry fields not in the trace schema: {sorted(unknown)}")
    try:
        arr = pa.array(rows, type=STRUCT)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as e:
        raise ValueError(f"trace events do not fit the trace schema: {e}") from None
    return pa.Table.from_batches([pa.RecordBatch.from_struct_array(arr)], schema=SCHEMA)


class TraceWriter:
    """Takes seq-ordered events batch by batch; ``close()`` returns the hex digest.

    With ``enabled`` false or ``run_dir`` None nothing is written, but the digest is still computed.
    """

    def __init__(self, run_dir: Path | None, part_events: int = 200_000, enabled: bool = True) -> None:
        if part_events < 1:
            raise ValueError(f"part_events must be >= 1, got {part_events}")
        self.part_events = part_events
        self.enabled = bool(enabled and run_dir is not None)
        self.trace_dir: Path | None = Path(run_dir) / "trace" if self.enabled else None
        if self.trace_dir is not None:
            try:
                self.trace_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TraceError(f"{self.trace_dir}: cannot create the trace directory: {e.strerror}") from None
        self.events = 0
        self.parts = 0
        self._hash = hashlib.sha256()
        self._pack = msgpack.Packer().pack
        self._buf: list[dict[str, Any]] = []
        self._digest: str | None = None

    def write(self, events: list[dict[str, Any]]) -> None:
        """Append events that are already in seq order (as CanonicalMerger releases them)."""
        if not events:
            return
        if self._digest is not None:
            raise ValueError("TraceWriter.write after close()")
        first = events[0].get("seq")
        if first is not None and (first != self.events or events[-1].get("seq") != self.events + len(events) - 1):
            raise ValueError(f"trace events out of seq order: batch starts at seq {first}, expected {self.events}")
        pack = self._pack
        # Fast path: events normally carry no None values, and their keys are unique, so sorting the items
        # never compares values.
        self._hash.update(b"".join([
            pack(sorted([(k, v) for k, v in ev.items() if v is not None]) if None in ev.values()
                 else sorted(ev.items()))
            for ev in events]))
        self.events += len(events)
        if self.trace_dir is None:
            return
        buf = self._buf
        buf += events
        size = self.part_events
        while len(buf) >= size:
            self._write_part(buf[:size])
            del buf[:size]

    def _write_part(self, rows: list[dict[str, Any]]) -> None:
        assert self.trace_dir is not None
        name = part_name(self.parts)
        final = self.trace_dir / name
        tmp = self.trace_dir / f".{name}.tmp"
        table = events_to_table(rows)
        try:
            pq.write_table(table, tmp, compression=COMPRESSION, write_page_checksum=True)
            os.replace(tmp, final)
        except OSError as e:
            raise TraceError(f"{final}: cannot write trace part: {e}") from None
        self.parts += 1

    def flush(self) -> None:
        """Write the buffered events as a (short) part now."""
        if self._buf:
            self._write_part(self._buf)
            self._buf = []

    def close(self) -> str:
        """Write what is buffered and return the hex digest; calling it again returns the same digest."""
        if self._digest is None:
            self.flush()
            self._digest = self._hash.hexdigest()
        return self._digest

    @property
    def digest(self) -> str:
        """The digest of everything written so far."""
        return self._digest if self._digest is not None else self._hash.hexdigest()

    def stats(self) -> dict[str, Any]:
        """What summary.json records under "trace" (the reader checks the parts against it)."""
        return {"enabled": self.enabled, "events": self.events, "parts": self.parts,
                "part_events": self.part_events, "digest": self.digest}

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
