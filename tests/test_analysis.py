"""`smpsim analyze --json` against an independent computation from `smpsim export --format jsonl`, against
summary.json, and on truncated, corrupt and foreign run directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analysis_reference import reference
from smpsim.config import validate
from smpsim.engines.inline import run as run_inline
from analysis_helpers import CONFIGS, analyze_json, exported, make
from cli_helpers import invoke, user_error


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {name: make(name, root / name) for name in CONFIGS}




def ref_for(path: Path, events: list[dict]) -> dict:
    summary_cfg = __import__("tomllib").loads((path / "config.toml").read_text())
    ncpu = summary_cfg["machine"]["cpus"]
    local = summary_cfg["policy"]["name"] == "kmap-local"
    cap = ncpu * summary_cfg["machine"]["kmap_local_slots"] if local else summary_cfg["machine"]["last_pkmap"]
    return reference(events, ncpu, not local, cap)


def check_against_reference(a: dict, ref: dict) -> None:
    approx = lambda v: pytest.approx(v, abs=1e-3) if v is not None else None  # noqa: E731
    # the headline counters (summary.json's), rounding as summary.json does
    assert a["counters"] == {**ref["counters"],
                             "ipis_per_1000_kmaps": round(ref["counters"]["ipis_per_1000_kmaps"], 3)}
    assert a["flushes_by_scope"] == ref["flushes_by_scope"]
    assert a["events"] == ref["events"] and a["t_end"] == ref["t_end"]
    for mine, theirs in zip(a["per_cpu"], ref["per_cpu"], strict=True):
        assert mine == {**theirs, "hit_rate": approx(theirs["hit_rate"])}
    assert a["events_by_type"] == ref["events_by_type"]

    def same_dist(mine: dict, theirs: dict) -> None:
        assert mine == {**theirs, "mean": approx(theirs["mean"])}

    same_dist(a["kmaps"]["latency"], ref["kmap_latency"])
    assert a["kmaps"]["slept"] == ref["slept_kmaps"]
    assert a["kmaps"]["new"] == ref["counters"]["new_mappings"]
    assert a["kmaps"]["reused"] == ref["counters"]["reuses"]
    same_dist(a["kmap_lock"]["wait"], ref["lock_wait"])
    same_dist(a["shootdowns"]["stall"], ref["stall"])
    assert sorted(a["shootdowns"]["by_scope"]) == sorted(ref["stall_by_scope"])
    for scope, d in ref["stall_by_scope"].items():
        same_dist(a["shootdowns"]["by_scope"][scope]["stall"], d)
    assert a["shootdowns"]["slots_torn_down"] == ref["slots_torn_down"]
    assert a["shootdowns"]["ipis_targeted"] == ref["ipis_targeted"]
    ip = a["ipis"]
    assert ip["sent"] == ref["counters"]["ipis"] and ip["useless"] == ref["counters"]["useless_ipis"]
    assert ip["per_1000_kmaps"] == round(ref["counters"]["ipis_per_1000_kmaps"], 3)
    assert ip["matrix"] == ref["matrix"] and ip["useless_matrix"] == ref["useless_matrix"]
    assert ip["translations_dropped"] == ref["translations_dropped"]
    same_dist(ip["delivery"], ref["delivery"])
    same_dist(ip["round_trip"], ref["round_trip"])
    sl = a["sleeps"]
    assert sl["sleeps"] == ref["counters"]["sleeps"] and sl["wakes"] == ref["counters"]["wakes"]
    same_dist(sl["asleep"], ref["asleep"])
    assert sl["episodes"] == ref["asleep"]["count"]
    assert sl["asleep_at_end"] == ref["asleep_at_end"]
    assert a["stale"]["uses"] == ref["counters"]["stale"]
    assert a["stale"]["examples"] == ref["stale_examples"]
    ring = a["ring"]
    for key in ("capacity", "peak_in_use", "t_peak", "in_use_at_end"):
        assert ring[key] == ref["ring"][key], key
    assert ring["mean_in_use"] == approx(ref["ring"]["mean_in_use"])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_analyze_json_agrees_with_an_independent_computation_from_the_jsonl_export(runs, name):
    path = runs[name]
    a = analyze_json(path)
    events = exported(path)
    check_against_reference(a, ref_for(path, events))
    assert a["run"]["policy"] == CONFIGS[name]["policy"]["name"] and a["run"]["truncated"] is False


@pytest.mark.parametrize("name", list(CONFIGS))
def test_analyze_agrees_with_the_counters_recorded_in_summary_json(runs, name):
    """smpsim.trace.counters counts while the run is recorded; the analysis recounts from the trace."""
    a = analyze_json(runs[name])
    summary = json.loads((runs[name] / "summary.json").read_text())
    for key in ("counters", "flushes_by_scope", "per_cpu", "events", "t_end"):
        assert a[key] == summary[key], key


def test_the_runs_exercise_what_they_are_meant_to(runs):
    """Guards the reference test: each figure is non-trivial in at least one run."""
    a = {name: analyze_json(p) for name, p in runs.items()}
    assert a["no-ipi"]["stale"]["uses"] > 0 and a["no-ipi"]["stale"]["examples"]
    sl = a["sleepy"]["sleeps"]
    assert 0 < sl["episodes"] < sl["sleeps"] and sl["asleep"]["total"] > 0  # woken, and asleep again
    assert a["eager"]["ipis"]["useless"] > 0 and a["linux-2.4"]["ipis"]["sent"] > 0
    assert a["kmap-local"]["ring"]["slots"] == "kmap_local" and a["kmap-local"]["ipis"]["sent"] == 0
    assert a["linux-2.6"]["flushes_by_scope"] and a["linux-2.4"]["flushes_by_scope"] == {
        "all": a["linux-2.4"]["counters"]["wraps"]}
    assert a["eager"]["ring"]["peak_in_use"] < a["linux-2.4"]["ring"]["peak_in_use"] == 16
    for name in runs:
        assert len(list((runs[name] / "trace").glob("part-*.parquet"))) > 1  # several parts


def test_report_on_the_terminal_names_every_section(runs):
    r = invoke("analyze", runs["no-ipi"])
    assert r.exit_code == 0 and r.stderr == ""
    out = r.stdout
    for text in ("kmaps", "new mappings", "reused mappings", "ring wraps", "flushes", "IPIs sent",
                 "per 1000 kmaps", "useless IPIs", "shootdown: initiator stall", "p50", "p90", "p99", "max",
                 "kmap_lock wait", "sleeps on pkmap_map_wait", "asleep: wait to kmap", "Per-CPU TLB", "hit rate",
                 "flush misses", "flush-miss cycles", "stale uses", "First", "Operational logs"):
        assert text in out, text
    assert "\x1b[" not in out
    a = analyze_json(runs["no-ipi"])
    first = a["stale"]["examples"][0]
    assert any(line.split()[:3] == [f"{first['seq']:,}", f"{first['t']:,}", str(first["cpu"])]
               for line in out.splitlines())
    r = invoke("analyze", runs["linux-2.4"])
    assert "IPI matrix (rows: sender, columns: receiver)" in r.stdout
    row0 = next(line for line in r.stdout.splitlines() if line.split()[:1] == ["0"] and "from" not in line
                and len(line.split()) == 4 + 2)
    m = analyze_json(runs["linux-2.4"])["ipis"]["matrix"]
    assert [int(x.replace(",", "")) for x in row0.split()[1:5]] == m[0]


# ---------------------------------------------------------------------------------------------- robustness

def test_truncated_run_is_analysed_up_to_where_it_ends_with_a_warning(runs, tmp_path):
    path = tmp_path / "cut"
    shutil.copytree(runs["linux-2.4"], path)
    parts = sorted((path / "trace").glob("part-*.parquet"))
    (path / "summary.json").unlink()  # killed: no summary, and the last part never written
    parts[-1].unlink()
    r = invoke("analyze", path, "--json")
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("warning: ") and "truncated" in r.stderr and str(path) in r.stderr
    a = json.loads(r.stdout)
    assert a["run"]["truncated"] is True and "did not finish" in a["run"]["truncation"]
    kept = sum(pq.read_metadata(p).num_rows for p in parts[:-1])
    assert a["events"] == kept < json.loads((runs["linux-2.4"] / "summary.json").read_text())["events"]
    events = exported(path)
    assert len(events) == kept
    check_against_reference(a, ref_for(path, events))
    r = invoke("analyze", path)  # the terminal report says so too
    assert r.exit_code == 0 and "TRUNCATED" in r.stdout and "warning: " in r.stderr


def test_run_that_failed_is_analysed_with_a_warning(runs, tmp_path):
    path = tmp_path / "failed"
    shutil.copytree(runs["sleepy"], path)
    s = json.loads((path / "summary.json").read_text())
    s.update(status="error", error="deadlock: CPUs [0, 1] all sleep on pkmap_map_wait")
    (path / "summary.json").write_text(json.dumps(s))
    r = invoke("analyze", path, "--json")
    assert r.exit_code == 0 and "deadlock" in r.stderr and "truncated" in r.stderr
    assert json.loads(r.stdout)["run"]["status"] == "error"


@pytest.mark.parametrize("damage", ["garbage", "cut", "page header"])
def test_corrupt_part_is_an_error_naming_the_file(runs, tmp_path, damage):
    path = tmp_path / "bad"
    shutil.copytree(runs["linux-2.4"], path)
    part = path / "trace" / "part-00001.parquet"
    data = bytearray(part.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not parquet at all" * 10)
    elif damage == "cut":
        data = data[: len(data) // 2]
    else:  # the footer is intact; the first data page header of column "t" (every command reads it) is not
        md = pq.read_metadata(part).row_group(0)
        col = next(md.column(i) for i in range(md.num_columns) if md.column(i).path_in_schema == "t")
        data[col.data_page_offset:col.data_page_offset + 24] = b"\xff" * 24
    part.write_bytes(bytes(data))
    for args in (["analyze", path, "--json"], ["analyze", path], ["query", path, "SELECT sum(t) FROM events"],
                 ["export", path, "--format", "chrome"]):
        assert str(part) in user_error(invoke(*args)), args


def test_not_a_run_directory_or_no_trace(tmp_path, runs):
    err = user_error(invoke("analyze", tmp_path))
    assert "not a run directory" in err and str(tmp_path) in err
    assert "no such run directory" in user_error(invoke("analyze", tmp_path / "missing"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert str(f) in user_error(invoke("analyze", f))
    cfg = json.loads(json.dumps(CONFIGS["linux-2.4"]))
    cfg["trace"] = {"enabled": False}
    run_inline(validate(cfg), tmp_path / "untraced")
    assert "no trace" in user_error(invoke("analyze", tmp_path / "untraced"))


def test_part_with_a_foreign_schema_is_an_error_naming_it(runs, tmp_path):
    path = tmp_path / "foreign"
    shutil.copytree(runs["linux-2.4"], path)
    part = path / "trace" / "part-00000.parquet"
    table = pq.read_table(part)
    pq.write_table(table.drop_columns(["hits"]), part)
    err = user_error(invoke("analyze", path))
    assert str(part) in err and "hits" in err


# ---------------------------------------------------------------------------------------------- logs

def test_operational_logs_warnings_and_errors_are_summarized(runs, tmp_path):
    path = tmp_path / "logged"
    shutil.copytree(runs["linux-2.4"], path)
    logs = path / "logs"
    logs.mkdir()
    (logs / "coordinator.log.jsonl").write_text(
        '{"event": "listening", "level": "info", "timestamp": "2024-01-01T00:00:00Z", "process": "coordinator"}\n'
        '{"event": "refused", "reason": "bad token", "level": "warning", "timestamp": "2024-01-01T00:00:01Z", '
        '"process": "coordinator"}\n')
    (logs / "cpu-1.log.jsonl").write_text(
        '{"event": "joined", "cpu": 1, "level": "info", "timestamp": "2024-01-01T00:00:01Z", "process": "cpu-1"}\n'
        '{"event": "protocol error", "reason": "lost the coordinator", "level": "error", '
        '"timestamp": "2024-01-01T00:00:02Z", "process": "cpu-1"}\n'
        '{"event": "half a li\n')
    a = analyze_json(path)
    lg = a["logs"]
    assert lg["files"] == ["coordinator.log.jsonl", "cpu-1.log.jsonl"]
    assert lg["warnings"] == 1 and lg["errors"] == 1 and lg["unparseable"] == 1 and lg["lines"] == 5
    assert lg["by_process"] == {"coordinator": {"info": 1, "warning": 1}, "cpu-1": {"error": 1, "info": 1}}
    assert [(p["process"], p["level"], p["event"], p["reason"]) for p in lg["problems"]] == [
        ("coordinator", "warning", "refused", "bad token"), ("cpu-1", "error", "protocol error", "lost the coordinator")]
    out = invoke("analyze", path).stdout
    assert "refused" in out and "protocol error" in out and "lost the coordinator" in out
    assert analyze_json(runs["linux-2.4"])["logs"]["files"] == []


# ---------------------------------------------------------------------------------------------- synthetic

def test_synthetic_big_run_is_a_valid_run_and_agrees_with_its_summary(tmp_path):
    from smpsim.analysis.synth import make_big_run

    s = make_big_run(tmp_path / "big", events=1000, overrides=("machine.cpus=2", "workload.kmaps_per_cpu=12"),
                     part_events=300)
    base = s["synthetic"]["base_events"]
    assert s["synthetic"]["copies"] == -(-1000 // base) and s["events"] == base * s["synthetic"]["copies"] >= 1000
    a = analyze_json(tmp_path / "big")
    assert a["run"]["truncated"] is False
    for key in ("counters", "flushes_by_scope", "per_cpu", "events", "t_end"):
        assert a[key] == s[key], key
    events = exported(tmp_path / "big")
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert all(x["t"] <= y["t"] for x, y in zip(events, events[1:]))


def test_report_on_a_terminal_uses_rich_tables(runs):
    import io

    from rich.console import Console

    from smpsim.analysis.report import sections
    from smpsim.cli.analyze import render

    a = analyze_json(runs["sleepy"])
    buf = io.StringIO()
    render(sections(a), Console(file=buf, force_terminal=True, width=160))
    text = buf.getvalue()
    assert "\x1b[" in text  # styled
    for title in ("Counts", "Latencies (cycles)", "Per-CPU TLB", "IPI matrix"):
        assert title in text
    assert f"{a['sleeps']['asleep']['total']:,}" in text


def test_run_without_events(tmp_path):
    cfg = json.loads(json.dumps(CONFIGS["linux-2.4"]))
    cfg["workload"]["kmaps_per_cpu"] = 0
    run_inline(validate(cfg), tmp_path / "idle")
    a = analyze_json(tmp_path / "idle")
    assert a["events"] == 0 and a["counters"]["kmaps"] == 0 and a["shootdowns"]["stall"]["p99"] is None
    assert a["ring"]["peak_in_use"] == 0 and a["ipis"]["matrix"] == [[0] * 4 for _ in range(4)]
    r = invoke("analyze", tmp_path / "idle", "--plot", tmp_path / "fig")
    assert r.exit_code == 0 and len(list((tmp_path / "fig").glob("*.png"))) == 4
