import hashlib
import os
from pathlib import Path

import msgpack
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smpsim.trace.errors import TraceWriteError
from smpsim.trace.reader import iter_events, open_run
from smpsim.trace.rundir import write_summary
from smpsim.trace.schema import FIELD_NAMES, SCHEMA
from smpsim.trace.writer import ROW_GROUP, TraceWriter, digest_events, pack_events
from tracegen import as_tuple, event_bytes, make_events

def reference_digest(events):
    h = hashlib.sha256()
    for e in events:
        h.update(event_bytes(e))
    return h.hexdigest()


def write_all(run_dir, events, part_events, enabled=True, batch=97):
    """Write the stream as the recorder does: event tuples, batch by batch."""
    w = TraceWriter(run_dir, part_events, enabled)
    for i in range(0, len(events), batch):
        w.write([as_tuple(e) for e in events[i:i + batch]])
    return w, w.close()


def test_parts_are_bounded_and_named_in_order(tmp_path):
    events = make_events(1050)
    w, _ = write_all(tmp_path, events, part_events=200)
    parts = sorted(p.name for p in (tmp_path / "trace").iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(6)]
    rows = [pq.ParquetFile(tmp_path / "trace" / p).metadata.num_rows for p in parts]
    assert rows == [200, 200, 200, 200, 200, 50]
    assert w.parts == 6 and w.events == 1050
    assert pq.read_schema(tmp_path / "trace" / parts[0]).names == list(FIELD_NAMES)


def test_part_is_written_as_soon_as_it_is_full(tmp_path):
    w = TraceWriter(tmp_path, 10, True)
    events = make_events(25)
    w.write(events[:9])
    assert not list((tmp_path / "trace").glob("*.parquet"))
    w.write(events[9:12])
    w.wait()  # parts are encoded on the writer's thread
    assert [p.name for p in (tmp_path / "trace").glob("*.parquet")] == ["part-00000.parquet"]
    w.write(events[12:25])
    w.wait()
    assert len(list((tmp_path / "trace").glob("*.parquet"))) == 2
    w.close()
    assert len(list((tmp_path / "trace").glob("*.parquet"))) == 3


def test_rows_stream_into_the_open_part_in_row_groups(tmp_path):
    """Before its part is full, a batch is already encoded into the part's temporary file (so the run
    does not wait for it at the end); small batches gather into row groups of at least ROW_GROUP rows."""
    events = make_events(3 * ROW_GROUP + 500)
    w = TraceWriter(tmp_path, 10 * ROW_GROUP, True)
    tmp = tmp_path / "trace" / ".part-00000.parquet.tmp"
    w.write([as_tuple(e) for e in events[:ROW_GROUP + 10]])
    w.wait()
    assert tmp.stat().st_size > 0 and not list((tmp_path / "trace").glob("*.parquet"))
    for i in range(ROW_GROUP + 10, len(events), 97):
        w.write([as_tuple(e) for e in events[i:i + 97]])
    w.close()
    assert not tmp.exists()
    meta = pq.ParquetFile(tmp_path / "trace" / "part-00000.parquet").metadata
    rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(rows) == len(events) and len(rows) == 4 and min(rows[:-1]) >= ROW_GROUP  # not one per batch
    assert list(iter_events(open_run_ok(tmp_path, w))) == [{k: v for k, v in e.items() if v is not None}
                                                           for e in events]


def test_parts_are_written_under_a_temporary_name_then_renamed(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src).name, Path(dst).name))
        assert Path(src).exists() and not Path(dst).exists()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_all(tmp_path, make_events(30), part_events=10)
    assert seen == [(f".part-{i:05d}.parquet.tmp", f"part-{i:05d}.parquet") for i in range(3)]
    assert not [p for p in (tmp_path / "trace").iterdir() if p.name.endswith(".tmp")]


def test_digest_equals_independent_recomputation(tmp_path):
    events = make_events(777)
    _, digest = write_all(tmp_path, events, part_events=100)
    assert digest == reference_digest(events) == digest_events(events)
    for k in (0, 1, 15, 16, 17, 0xFFFF, 0x10000):  # a batch packs to its events' own encodings at any length
        batch = [as_tuple(e) for e in (events * 100)[:k]]
        assert pack_events(batch) == b"".join(msgpack.packb(e) for e in batch)
    # ... and from what was stored: the trace alone is enough to check a run's digest
    write_summary(tmp_path, {"status": "ok", "digest": digest})
    assert reference_digest(iter_events(open_run(tmp_path))) == digest


def test_digest_is_independent_of_part_size_batches_and_enabled(tmp_path):
    events = make_events(500)
    digests = {
        write_all(tmp_path / "a", events, part_events=1)[1],
        write_all(tmp_path / "b", events, part_events=64, batch=1)[1],
        write_all(tmp_path / "c", events, part_events=10_000, batch=500)[1],
        write_all(tmp_path / "d", events, part_events=64, enabled=False)[1],
        write_all(None, events, part_events=64)[1],
    }
    assert len(digests) == 1
    assert not (tmp_path / "d" / "trace").exists()


def test_empty_stream_digest():
    w = TraceWriter(None, 10, True)
    assert w.close() == hashlib.sha256().hexdigest()
    assert w.stats()["events"] == 0


def test_records_give_the_digest_of_their_tuples(tmp_path):
    """Records as a trace stores them (seq, nulls omitted or present) digest like the model's tuples."""
    events = make_events(300)
    w = TraceWriter(tmp_path, 64, True)
    w.write([dict(e) for e in events])
    stripped = [{k: v for k, v in e.items() if v is not None and k != "seq"} for e in events]
    assert w.close() == write_all(None, events, 64)[1] == digest_events(stripped)
    assert list(iter_events(open_run_ok(tmp_path, w))) == [{k: v for k, v in e.items() if v is not None}
                                                           for e in events]


def test_every_field_counts(tmp_path):
    """Changing any one field of one event changes the digest."""
    events = make_events(40)
    base = write_all(None, events, 64)[1]
    for i, e in enumerate(events[:10]):
        for k, v in e.items():
            if k in ("seq", "ev") or v is None:
                continue
            changed = [dict(x) for x in events]
            changed[i][k] = (not v) if isinstance(v, bool) else v + [99] if isinstance(v, list) else \
                v + "x" if isinstance(v, str) else v + 1
            assert write_all(None, changed, 64)[1] != base, (i, k)


def open_run_ok(path, w):
    write_summary(path, {"status": "ok", "digest": w.digest, "trace": w.stats()})
    return open_run(path)


def test_schema_types(tmp_path):
    write_all(tmp_path, make_events(20), part_events=100)
    schema = pq.read_schema(tmp_path / "trace" / "part-00000.parquet")
    assert schema.remove_metadata().equals(SCHEMA)
    for name in ("targets", "woken"):
        assert pa.types.is_list(schema.field(name).type)
        assert schema.field(name).type.value_type == pa.int32()
    for name in ("t", "seq", "t_send", "t_recv", "t_ack", "cycles", "lock_wait", "stall"):
        assert str(schema.field(name).type) == "int64"
    for name in ("new", "slept", "flush_caused"):
        assert str(schema.field(name).type) == "bool"
    assert str(schema.field("ev").type) == str(schema.field("scope").type) == "string"


def test_unknown_field_and_out_of_order_batches_are_rejected(tmp_path):
    w = TraceWriter(tmp_path, 1, True)
    with pytest.raises(ValueError, match="bogus"):
        w.write([{"seq": 0, "t": 0, "cpu": 0, "ev": "wrap", "bogus": 1}])
    with pytest.raises(ValueError, match="bogus"):
        TraceWriter(tmp_path / "y", 1, True).write([(0, 0, "bogus", 1)])
    w = TraceWriter(tmp_path / "x", 10, True)
    with pytest.raises(ValueError, match="seq"):
        w.write([{"seq": 5, "t": 0, "cpu": 0, "ev": "wrap"}])


def test_stats_and_close_twice(tmp_path):
    w, digest = write_all(tmp_path, make_events(25), part_events=10)
    assert w.close() == digest
    assert w.stats() == {"enabled": True, "events": 25, "parts": 3, "part_events": 10, "digest": digest}


def test_docs_list_each_event_types_digest_fields_in_order():
    import re
    from smpsim.model.events import FIELDS
    text = (Path(__file__).parent.parent / "docs" / "trace-format.md").read_text()
    digest = text[text.index("## Digest"):text.index("## Truncated runs")]
    rows = dict(re.findall(r"^\| `(\w+)` \| (`.*`) \|$", digest, re.M))
    assert {ev: tuple(re.findall(r"`(\w+)`", f)) for ev, f in rows.items()} == FIELDS


def test_a_part_that_cannot_be_written_is_an_error_naming_it(tmp_path):
    w = TraceWriter(tmp_path, 10, True)
    (tmp_path / "trace").rmdir()
    (tmp_path / "trace").write_text("not a directory")
    w.write([as_tuple(e) for e in make_events(15)])
    with pytest.raises(TraceWriteError, match="part-00000.parquet"):
        w.close()


def test_columns_built_from_buffers_equal_arrows_conversion():
    """The writer builds columns from buffers (no pandas: tests/test_imports.py); they must be what
    pa.array makes of the same values, nulls and empty lists included, so the Parquet parts are byte for
    byte as before. A value the buffers do not take goes to pa.array, which names it."""
    from smpsim.trace.columns import by_type
    from smpsim.trace.writer import groups_to_table
    events = make_events(400)
    for i, field, value in ((23, "pages", 12), (13, "targets", []), (33, "targets", None), (56, "flush_caused", None),
                            (44, "scope", None), (10, "new", None)):
        assert field in events[i]
        events[i][field] = value
    built = groups_to_table(by_type([as_tuple(e) for e in events]), 0)
    assert built.equals(pa.Table.from_pylist(events, schema=SCHEMA))
    bad = {"bool": (0, 0, "kmap", 1, 1, 7, False, 1, 1), "int": (0, 0, "kunmap", 1, 1 << 40, 1),
           "string": (0, 0, "flush", 5, 1, [1], None, 1), "list": (0, 0, "wake", ["x"])}
    for event in bad.values():
        with pytest.raises(ValueError, match="do not fit the trace schema"):
            groups_to_table(by_type([event]), 0)
