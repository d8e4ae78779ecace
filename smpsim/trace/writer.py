"""TraceWriter: the run's digest and its bounded Parquet parts.

The digest (docs/trace-format.md, "Digest") is SHA-256 over the canonical stream: each event's tuple
``(t, cpu, ev, *fields)`` (smpsim.model.events) as a msgpack array, concatenated in seq order. It is computed
for every run, whether the trace is recorded or not, so two runs can be compared by digest alone; a batch is
packed by one msgpack call, never event by event.

Parts are ``RUN/trace/part-00000.parquet``, ``part-00001.parquet``, ... of at most ``part_events`` rows,
each written to a hidden temporary name and renamed into place as soon as it is full, so a crash loses at
most the part being written and a reader never sees a half-written part under a part name.

The run waits for as little of the writing as possible. The caller's thread only turns each event type's
columns (smpsim.trace.columns) into Arrow arrays (``convert``), the one step that needs Python objects; the
writer thread puts the rows in seq order (``assemble``), encodes and compresses them and appends them to the
open part as a row group, all in Arrow's C++, which releases the GIL, so it overlaps the simulation.
"""

from __future__ import annotations

import hashlib
import os
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from smpsim.model.events import FIELDS, from_record
from smpsim.trace.columns import Groups, by_type
from smpsim.trace.errors import TraceError, TraceWriteError
from smpsim.trace.rundir import PART_PREFIX, PART_SUFFIX, part_name  # noqa: F401 - part names live there
from smpsim.trace.schema import FIELD_SET, SCHEMA

COMPRESSION = "zstd"
# Dictionary encoding only where values repeat: elsewhere it costs time and saves nothing. Min/max statistics
# only for seq and t, the columns a row group is ordered by (a reader can skip row groups on them); on the
# other columns every row group spans about the whole range, and computing them cost ~10% of the encoding.
# One write batch per row group (Arrow's default 1,024 values) saves another ~3%; neither changes a row.
PARQUET_OPTIONS = {"compression": COMPRESSION, "use_dictionary": ["ev", "scope"], "write_page_checksum": True,
                   "column_encoding": {"seq": "DELTA_BINARY_PACKED", "t": "DELTA_BINARY_PACKED"},
                   "write_statistics": ["seq", "t"], "write_batch_size": 1 << 16}
# Rows per row group, at least (a part's last group may be shorter): the recorder's batches (16,384 events)
# are each one group, encoded while the run goes on. Smaller groups make parts larger and slower to write.
ROW_GROUP = 8192

_TYPES = {f.name: f.type for f in SCHEMA}
_I32, _I64, _STR, _BOOL, _U8 = pa.int32(), pa.int64(), pa.string(), pa.bool_(), pa.uint8()
_STRUCT_CODES = {_I64: "q", _I32: "i"}
_EMPTY = pa.Table.from_arrays([pa.nulls(0, f.type) for f in SCHEMA], schema=SCHEMA)
_SEQ = SCHEMA.field("seq")


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


# Columns are built from their buffers, never converted by pa.array or pa.scalar: Arrow's first conversion of a
# Python value imports pandas when it is installed (the analysis extra), ~35 MB and ~0.3 s of CPU in every
# process that writes a trace (tests/test_imports.py). pa.array is left for what the buffers do not take (a
# value out of range or of another type): it names what does not fit.


def _pack(values: Sequence[Any], code: str) -> pa.Buffer:
    return pa.py_buffer(struct.Struct(f"={len(values)}{code}").pack(*values))


def _bits(flags: bytes) -> pa.Buffer:
    """Bytes of 0 and 1 as an Arrow bitmap (one bit each, as validity and boolean values are stored)."""
    return pa.Array.from_buffers(_U8, len(flags), [None, pa.py_buffer(flags)]).cast(_BOOL).buffers()[1]


def _offsets(lengths: Iterable[int]) -> pa.Buffer:
    return _pack((0, *accumulate(lengths)), "i")


def _from_buffers(values: Sequence[Any], typ: pa.DataType, validity: pa.Buffer | None = None) -> pa.Array:
    n = len(values)
    code = _STRUCT_CODES.get(typ)
    if code is not None:
        return pa.Array.from_buffers(typ, n, [validity, _pack(values, code)])
    if typ == _BOOL:
        flags = bytes(values)
        if flags.translate(None, b"\0\1"):
            raise TypeError("a value is not a bool")
        return pa.Array.from_buffers(typ, n, [validity, _bits(flags)])
    if typ == _STR:
        data = [v.encode() for v in values]
        return pa.Array.from_buffers(typ, n, [validity, _offsets(map(len, data)), pa.py_buffer(b"".join(data))])
    if isinstance(typ, pa.ListType) and typ.value_type in _STRUCT_CODES:
        items = [x for v in values for x in v]
        child = pa.Array.from_buffers(typ.value_type, len(items), [None, _pack(items, _STRUCT_CODES[typ.value_type])])
        return pa.Array.from_buffers(typ, n, [validity, _offsets(map(len, values))], children=[child])
    raise TypeError(f"no buffers for {typ}")


def _with_nulls(values: Sequence[Any], typ: pa.DataType) -> pa.Array:
    """A column with nulls: a validity bitmap, and in place of each null a value of the type (never read)."""
    if None not in values:
        raise TypeError("no null")
    fill = "" if typ == _STR else () if isinstance(typ, pa.ListType) else False
    return _from_buffers([fill if v is None else v for v in values], typ,
                         _bits(bytes(v is not None for v in values)))


def _array(values: Sequence[Any], typ: pa.DataType) -> pa.Array:
    """One column of Python values as an Arrow array, built from buffers (one ``struct`` call for numbers,
    about 5x faster than ``pa.array``, which converts value by value). A value out of range or of another
    type goes through ``pa.array``, which names what does not fit."""
    errors = (struct.error, TypeError, AttributeError, UnicodeEncodeError, ValueError)
    try:
        return _from_buffers(values, typ)
    except errors:
        pass
    try:
        return _with_nulls(values, typ)
    except errors:
        return pa.array(values, typ)


# A batch converted: per event type, a table of its positions in the batch (as "seq"), "ev" and its fields.
Converted = list[pa.Table]


def convert(groups: Groups) -> Converted:
    """A batch's columns as Arrow tables, one per event type: the one step that reads Python objects (and so
    holds the GIL); the rest of the writing (``assemble``, the encoding) is Arrow's."""
    out: Converted = []
    try:
        for ev, (pos, cols) in groups.items():
            names = ("seq", "ev", "t", "cpu", *FIELDS[ev])
            arrays = [_array(pos, _I64), pa.repeat(_array((ev,), _STR)[0], len(pos)), _array(cols[0], _I64),
                      _array(cols[1], _I32), *(_array(col, _TYPES[name]) for name, col in zip(FIELDS[ev], cols[3:]))]
            out.append(pa.Table.from_arrays(arrays, names=names))
    except KeyError as e:
        raise ValueError(f"trace events of an unknown type {e.args[0]!r}") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError) as e:
        raise ValueError(f"trace events do not fit the trace schema: {e}") from None
    return out


def assemble(converted: Converted, seq0: int) -> pa.Table:
    """The rows of a converted batch in seq order (seq0, seq0 + 1, ...) with the fixed trace schema (a
    field an event type lacks null). A few calls into Arrow's C++, which releases the GIL meanwhile."""
    table = pa.concat_tables([_EMPTY, *converted], promote_options="default")  # the schema's columns, in order
    table = table.take(pc.sort_indices(table["seq"]))
    return table.set_column(0, _SEQ, pc.add(table["seq"], _array((seq0,), _I64)[0]))


def groups_to_table(groups: Groups, seq0: int) -> pa.Table:
    """A batch's rows in seq order (seq0, seq0 + 1, ...) with the fixed trace schema."""
    return assemble(convert(groups), seq0)


class _Parts:
    """The writer thread's side: rows in seq order go into the open part, a row group at a time, under the
    part's temporary name; a full part is closed and renamed at once. Only the writer thread calls it."""

    def __init__(self, trace_dir: Path, part_events: int) -> None:
        self.trace_dir, self.part_events = trace_dir, part_events
        self.done = 0  # parts complete (renamed into place)
        self.kept = 0  # rows in them
        self._rows = 0  # rows in the open part
        self._file: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []  # rows not yet written: fewer than ROW_GROUP, or a part's end
        self._buffered = 0

    def add(self, converted: Converted, seq0: int) -> None:
        table = assemble(converted, seq0)
        while table.num_rows:
            room = self.part_events - self._rows - self._buffered
            self._pending.append(table.slice(0, room))
            self._buffered += min(room, table.num_rows)
            table = table.slice(room)
            if self._buffered == self.part_events - self._rows:
                self.finish()
            elif self._buffered >= ROW_GROUP:
                self._write()

    def finish(self) -> None:
        """Write what is pending and close the open part (if any rows went into it)."""
        self._write()
        if self._file is not None:
            final = self._final()
            self._guard(self._file.close)
            self._guard(lambda: os.replace(self._tmp(), final))
            self.kept += self._rows
            self._file, self._rows = None, 0
            self.done += 1

    def _write(self) -> None:
        if not self._buffered:
            return
        table = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._buffered = [], 0
        if self._file is None:
            self._file = self._guard(lambda: pq.ParquetWriter(self._tmp(), SCHEMA, **PARQUET_OPTIONS))
        self._guard(lambda: self._file.write_table(table, row_group_size=table.num_rows))
        self._rows += table.num_rows

    def _final(self) -> Path:
        return self.trace_dir / part_name(self.done)

    def _tmp(self) -> Path:
        return self.trace_dir / f".{part_name(self.done)}.tmp"

    def _guard(self, step: Callable[[], Any]) -> Any:
        """A write step; when it fails, the open part is given up and its temporary file removed (its space
        may be what summary.json needs), and TraceWriteError names the part."""
        try:
            return step()
        except (OSError, pa.ArrowException) as e:
            self._abort()
            raise TraceWriteError(f"the trace part {self.done} ({self._final()})", e) from None

    def _abort(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except (OSError, pa.ArrowException):
                pass
            self._file = None
        try:
            self._tmp().unlink(missing_ok=True)
        except OSError:
            pass
        self._pending, self._buffered, self._rows = [], 0, 0


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
        self._parts = _Parts(self.trace_dir, part_events) if self.trace_dir is not None else None
        self._hash = hashlib.sha256()
        self._digest: str | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._inflight: Future | None = None
        self.failed: TraceWriteError | None = None  # the write that failed: no part is written after it

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
        seq0 = self.events
        self.events += len(events)
        try:
            if self._parts is not None and self.failed is None:
                converted = convert(groups if groups is not None else by_type(events))
                self._submit(self._parts.add, converted, seq0)
        finally:  # the digest after the hand-off, so that it overlaps the writer thread's encoding
            self._hash.update(pack_events(events))

    def _from_records(self, records: Sequence[dict[str, Any]]) -> list[tuple]:
        first, last = records[0].get("seq"), records[-1].get("seq")
        if first is not None and (first != self.events or last != self.events + len(records) - 1):
            raise ValueError(f"trace events out of seq order: batch starts at seq {first}, expected {self.events}")
        unknown = set().union(*records) - FIELD_SET
        if unknown:
            raise ValueError(f"trace events carry fields not in the trace schema: {sorted(unknown)}")
        return [from_record(r) for r in records]

    def _submit(self, task: Callable[..., None], *args: Any) -> None:
        """Run a step of the parts on the writer thread, after the one before has finished (so at most one
        batch is in flight, and its error, if any, comes out here)."""
        self.wait()
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="smpsim-trace")
        self._inflight = self._thread.submit(task, *args)

    def wait(self) -> None:
        """Wait until the writer thread has written what it was given (full parts are then on disk); a
        failed write raises its TraceWriteError (naming the part) here."""
        if self._inflight is not None:
            done, self._inflight = self._inflight, None
            try:
                done.result()
            except TraceWriteError as e:
                self.failed = e
                raise

    def flush(self) -> None:
        """Write the rows given so far and close the part they are in (a short part), and wait until every
        part is on disk."""
        if self._parts is not None and self.failed is None:
            self._submit(self._parts.finish)
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

    @property
    def parts(self) -> int:
        """Parts complete on disk (after ``wait()``, every full one)."""
        return self._parts.done if self._parts is not None else 0

    def stats(self) -> dict[str, Any]:
        """What summary.json records under "trace" (the reader checks the parts against it); after a failed
        write, the events kept in the parts written before it, and the error."""
        if self.failed is not None and self._parts is not None:
            return {"enabled": self.enabled, "events": self._parts.kept, "parts": self.parts,
                    "part_events": self.part_events, "error": str(self.failed)}
        return {"enabled": self.enabled, "events": self.events, "parts": self.parts,
                "part_events": self.part_events, "digest": self.digest}

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
