import io
import json
import shutil
import warnings

import pyarrow as pa
import pytest

from smpsim.trace.errors import TraceError
from smpsim.trace.export import export_jsonl
from smpsim.trace.reader import TruncatedRunWarning, iter_events, open_run, read_table
from smpsim.trace.rundir import write_summary
from smpsim.trace.writer import TraceWriter
from tracegen import make_events


def make_run(path, n=250, part_events=100, status="ok", summary=True, enabled=True):
    events = make_events(n)
    w = TraceWriter(path, part_events, enabled)
    w.write([dict(e) for e in events])
    digest = w.close()
    if summary:
        write_summary(path, {"status": status, "error": "BUG at kunmap" if status != "ok" else None,
                             "digest": digest, "trace": w.stats()})
    return events


def strip_none(events):
    return [{k: v for k, v in e.items() if v is not None} for e in events]


def test_round_trip_in_seq_order_without_nulls(tmp_path):
    events = make_run(tmp_path)
    run = open_run(tmp_path)
    assert not run.truncated and run.reason is None
    assert [p.name for p in run.parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    back = list(iter_events(run))
    assert back == strip_none(events)
    assert all(None not in e.values() for e in back)
    table = read_table(run)
    assert table.num_rows == 250 and table.column("seq").to_pylist() == list(range(250))


def test_not_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match="not a run directory") as e:
        open_run(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value)
    with pytest.raises(TraceError, match="no such run directory"):
        open_run(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TraceError, match="file"):
        open_run(tmp_path / "file")


def test_truncated_run_missing_summary_warns_and_reads(tmp_path):
    events = make_run(tmp_path, summary=False)
    with pytest.warns(TruncatedRunWarning, match="did not finish"):
        run = open_run(tmp_path)
    assert run.truncated and "summary.json" in run.reason
    assert list(iter_events(run)) == strip_none(events)


def test_truncated_run_missing_last_parts(tmp_path):
    events = make_run(tmp_path, n=350, part_events=100)
    (tmp_path / "trace" / "part-00003.parquet").unlink()
    (tmp_path / "trace" / "part-00002.parquet").unlink()
    with pytest.warns(TruncatedRunWarning):
        run = open_run(tmp_path)
    assert run.truncated and "2 of 4 trace parts missing" in run.reason
    assert "part-00002.parquet" in run.reason
    assert list(iter_events(run)) == strip_none(events[:200])


def test_truncated_run_by_event_count_when_summary_has_no_trace_stats(tmp_path):
    make_run(tmp_path, n=350, part_events=100)
    summary = json.loads((tmp_path / "summary.json").read_text())
    del summary["trace"]
    summary["events"] = 350
    write_summary(tmp_path, summary)
    (tmp_path / "config.toml").write_text("[trace]\nenabled = true\npart_events = 100\n")
    (tmp_path / "trace" / "part-00003.parquet").unlink()
    run = open_run(tmp_path, warn=False)
    assert run.truncated and "1 of 4" in run.reason


def test_failed_run_status_is_truncated(tmp_path):
    make_run(tmp_path, status="error")
    with pytest.warns(TruncatedRunWarning, match="BUG at kunmap"):
        run = open_run(tmp_path)
    assert run.truncated and "'error'" in run.reason


def test_leftover_temporary_part_is_truncation(tmp_path):
    make_run(tmp_path)
    (tmp_path / "trace" / ".part-00003.parquet.tmp").write_bytes(b"PAR1 half")
    run = open_run(tmp_path, warn=False)
    assert run.truncated and "partly written" in run.reason


def test_complete_run_does_not_warn(tmp_path):
    make_run(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_run(tmp_path)


def test_corrupt_part_names_the_file(tmp_path):
    make_run(tmp_path)
    bad = tmp_path / "trace" / "part-00001.parquet"
    bad.write_bytes(b"this is not parquet at all")
    run = open_run(tmp_path)
    it = iter_events(run)
    first = [next(it) for _ in range(100)]  # part 0 is still readable
    assert first[-1]["seq"] == 99
    with pytest.raises(TraceError) as e:
        list(it)
    assert str(bad) in str(e.value)
    with pytest.raises(TraceError, match="part-00001.parquet"):
        read_table(run)


def test_truncated_parquet_file_names_the_file(tmp_path):
    make_run(tmp_path)
    part = tmp_path / "trace" / "part-00002.parquet"
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(TraceError, match="part-00002.parquet"):
        list(iter_events(open_run(tmp_path)))


def test_missing_part_in_the_middle_is_an_error(tmp_path):
    make_run(tmp_path)
    (tmp_path / "trace" / "part-00001.parquet").unlink()
    with pytest.raises(TraceError, match="part-00001.parquet"):
        open_run(tmp_path)


def test_parts_from_different_runs_do_not_mix(tmp_path):
    make_run(tmp_path / "a", n=250)
    make_run(tmp_path / "b", n=250)
    shutil.copy(tmp_path / "a" / "trace" / "part-00000.parquet", tmp_path / "b" / "trace" / "part-00001.parquet")
    with pytest.raises(TraceError, match="part-00001.parquet.*seq"):
        list(iter_events(open_run(tmp_path / "b")))


def test_empty_table_for_run_without_parts(tmp_path):
    make_run(tmp_path, enabled=False)
    run = open_run(tmp_path)
    assert not run.truncated and not run.has_trace
    assert read_table(run).num_rows == 0
    assert isinstance(read_table(run), pa.Table)
    with pytest.raises(TraceError, match="no trace"):
        export_jsonl(run, io.StringIO())


def test_export_jsonl(tmp_path):
    events = make_run(tmp_path)
    buf = io.StringIO()
    assert export_jsonl(tmp_path, buf) == 250
    lines = buf.getvalue().splitlines()
    assert len(lines) == 250
    objs = [json.loads(line) for line in lines]
    assert objs == strip_none(events)
    for o in objs:
        assert list(o)[:4] == ["seq", "t", "cpu", "ev"]
        assert None not in o.values()
    flush = next(o for o in objs if o["ev"] == "flush")
    assert "pages" not in flush and isinstance(flush["targets"], list)
    out = tmp_path / "out.jsonl"
    assert export_jsonl(tmp_path, out) == 250
    assert out.read_text() == buf.getvalue()
    assert not list(tmp_path.glob(".out.jsonl*"))


def test_damaged_page_data_is_caught_by_checksums(tmp_path):
    """Parts carry page checksums: bytes flipped inside a data page are an error naming the file, not
    silently wrong values."""
    from smpsim.config import validate
    from smpsim.engines.inline import run
    from smpsim.trace.errors import TraceError
    from smpsim.trace.reader import iter_events, open_run

    cfg = validate({"machine": {"cpus": 2, "last_pkmap": 16}, "workload": {"kmaps_per_cpu": 300}})
    run(cfg, tmp_path / "r")
    part = sorted((tmp_path / "r" / "trace").glob("part-*.parquet"))[0]
    data = bytearray(part.read_bytes())
    mid = len(data) // 3
    for i in range(mid, mid + 64):
        data[i] ^= 0x5A
    part.write_bytes(bytes(data))
    with pytest.raises(TraceError, match=part.name):
        list(iter_events(open_run(tmp_path / "r")))
