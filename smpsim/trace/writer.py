"""TraceWriter: the run's digest and its bounded Parquet parts.

The digest (docs/trace-format.md, "Digest") is SHA-256 over the canonical stream: each event's tuple
``(t, cpu, ev, *fields)`` (smpsim.model.events) as a msgpack array, concatenated in seq order. It is computed
for every run, whether the trace is recorded or not, so two runs can be compared by digest alone; a batch is
packed by one msgpack call, never event by event.

Parts are ``RUN/trace/part-00000.parquet``, ``part-00001.parquet``, ... of at most ``part_events`` rows,
each written to a hidden temporary name and renamed into place as soon as it is full, so a crash loses at
most the part being written and a reader never sees a half-written part under a part name. Rows are built
column by column from each event type's columns (smpsim.trace.columns), then put back in seq order by Arrow.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from smpsim.model.events import FIELDS, from_record
from smpsim.trace.columns import Groups, by_type
from smpsim.trace.errors import TraceError
from smpsim.trace.schema import FIELD_SET, SCHEMA

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
COMPRESSION = "zstd"

_TYPES = {f.name: f.type for f in SCHEMA}
_EV_TYPE = pa.string()


def part_name(index: int) -> str:
    return f"{PART_PREFIX}{index:05d}{PART_SUFFIX}"


def pack_events(events: Sequence[Sequence[Any]], _packb=msgpack.packb) -> bytes:
    """The digest's bytes for a batch of event tuples: each event as a msgpack array, concatenated.

    One C call for the batch: packing the batch as one array and dropping the array's header gives
    exactly the events' own encodings back to back."""
    n = len(events)
    if not n:
        return b""
    head = 1 if n < 16 else 3 if n < 0x10000 else 5
    return _packb(events)[head:]


def digest_events(records: Iterable[dict[str, Any]]) -> str:
    """The digest of a stream of records as a trace stores them (dicts from the Parquet parts or JSON lines,
    ``seq`` and nulls ignored), in seq order."""
    h = hashlib.sha256()
    batch: list[tuple] = []
    for rec in records:
        batch.append(from_record(rec))
        if len(batch) >= 4096:
            h.update(pack_events(batch))
            batch = []
    h.update(pack_events(batch))
    return h.hexdigest()


def _write_file(table: pa.Table, final: Path, tmp: Path) -> None:
    try:
        # Dictionary encoding only where values repeat: elsewhere it costs time and saves nothing.
        pq.write_table(table, tmp, compression=COMPRESSION, use_dictionary=["ev", "scope"],
                       write_page_checksum=True)
        os.replace(tmp, final)
    except OSError as e:
        raise TraceError(f"{final}: cannot write trace part: {e}") from None


def _type_table(ev: str, positions: list[int], cols: list[tuple], seq0: int) -> pa.Table:
    """One event type's rows with every column of the schema (the fields it lacks null)."""
    n = len(positions)
    arrays: dict[str, pa.Array] = {
        "seq": pc.add(pa.array(positions, pa.int64()), seq0),
        "t": pa.array(cols[0], pa.int64()),
        "cpu": pa.array(cols[1], pa.int32()),
        "ev": pa.repeat(pa.scalar(ev, _EV_TYPE), n),
    }
    for name, col in zip(FIELDS[ev], cols[3:]):
        arrays[name] = pa.array(col, _TYPES[name])
    return pa.table([arrays[name] if name in arrays else pa.nulls(n, _TYPES[name]) for name in SCHEMA.names],
                    schema=SCHEMA)


def groups_to_table(groups: Groups, seq0: int) -> pa.Table:
    """A batch's rows in seq order (seq0, seq0 + 1, ...) with the fixed trace schema."""
    try:
        tables = [_type_table(ev, pos, cols, seq0) for ev, (pos, cols) in groups.items()]
    except KeyError as e:
        raise ValueError(f"trace events of an unknown type {e.args[0]!r}") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as e:
        raise ValueError(f"trace events do not fit the trace schema: {e}") from None
    if not tables:
        return SCHEMA.empty_table()
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return table.take(pc.sort_indices(table["seq"]))


class TraceWriter:
    """Takes the canonical stream batch by batch (event tuples in seq order); ``close()`` returns the hex
    digest. With ``enabled`` false or ``run_dir`` None nothing is written, but the digest is still computed.
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
        self._buf: list[pa.Table] = []
        self._buffered = 0
        self._digest: str | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._inflight: Future | None = None

    def write(self, events: Sequence[Sequence[Any]] | Sequence[dict[str, Any]], groups: Groups | None = None) -> None:
        """Append the next events of the canonical stream: event tuples (``groups`` is their
        ``columns.by_type`` when the caller has it already), or records as a trace stores them (dicts,
        whose ``seq`` must continue the stream)."""
        if not events:
            return
        if self._digest is not None:
            raise ValueError("TraceWriter.write after close()")
        if isinstance(events[0], dict):
            events = self._from_records(events)  # type: ignore[arg-type]
            groups = None
        self._hash.update(pack_events(events))
        seq0 = self.events
        self.events += len(events)
        if self.trace_dir is None:
            return
        self._buf.append(groups_to_table(groups if groups is not None else by_type(events), seq0))
        self._buffered += len(events)
        while self._buffered >= self.part_events:
            table = pa.concat_tables(self._buf)
            self._write_part(table.slice(0, self.part_events))
            rest = table.slice(self.part_events)
            self._buf, self._buffered = [rest], rest.num_rows

    def _from_records(self, records: Sequence[dict[str, Any]]) -> list[tuple]:
        first, last = records[0].get("seq"), records[-1].get("seq")
        if first is not None and (first != self.events or last != self.events + len(records) - 1):
            raise ValueError(f"trace events out of seq order: batch starts at seq {first}, expected {self.events}")
        unknown = set().union(*records) - FIELD_SET
        if unknown:
            raise ValueError(f"trace events carry fields not in the trace schema: {sorted(unknown)}")
        return [from_record(r) for r in records]

    def _write_part(self, table: pa.Table) -> None:
        """Encode and write a part on the writer thread (Arrow releases the GIL meanwhile, so the
        simulation goes on); one part at a time, so at most one part is in flight."""
        assert self.trace_dir is not None
        self.wait()
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="smpsim-trace")
        name = part_name(self.parts)
        self.parts += 1
        self._inflight = self._thread.submit(_write_file, table, self.trace_dir / name,
                                             self.trace_dir / f".{name}.tmp")

    def wait(self) -> None:
        """Wait until every full part is on disk; a failed write raises its TraceError (naming the file) here."""
        if self._inflight is not None:
            done, self._inflight = self._inflight, None
            done.result()

    def flush(self) -> None:
        """Write the buffered events as a (short) part now, and wait until every part is on disk."""
        if self._buffered:
            self._write_part(pa.concat_tables(self._buf))
        self._buf, self._buffered = [], 0
        self.wait()

    def close(self) -> str:
        """Write what is buffered and return the hex digest; calling it again returns the same digest."""
        if self._digest is None:
            try:
                self.flush()
            finally:
                if self._thread is not None:
                    self._thread.shutdown(wait=True)
                    self._thread = None
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
