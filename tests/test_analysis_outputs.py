"""What `smpsim analyze --plot`, `smpsim export --format chrome`, `smpsim compare` and `smpsim query` write."""

from __future__ import annotations

import bisect
import csv
import io
import itertools
import json
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from analysis_helpers import analyze_json, exported, make
from cli_helpers import invoke

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {name: make(name, root / name) for name in ("linux-2.4", "eager", "kmap-local", "sleepy", "no-ipi")}


def shown_ratio(text: str) -> float:
    return float(text.replace(",", ""))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG, path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ---------------------------------------------------------------------------------------------- figures

@pytest.mark.parametrize("name", ["linux-2.4", "kmap-local"])
def test_plot_writes_four_figures_and_a_self_contained_html_report(runs, tmp_path, name):
    out = tmp_path / "fig"
    r = invoke("analyze", runs[name], "--plot", out)
    assert r.exit_code == 0, r.output
    names = {"ipi_heatmap.png", "timeline.png", "latency_cdf.png", "hit_rate.png", "report.html"}
    assert {p.name for p in out.iterdir()} == names
    for png in names - {"report.html"}:
        w, h = _png_size(out / png)
        assert w >= 400 and h >= 300 and (out / png).stat().st_size > 15_000, png
        assert b"http" not in (out / png).read_bytes()  # no "Software: matplotlib (url)" chunk
        assert f"wrote {out / png}" in r.stdout
    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)  # nothing loaded from elsewhere
    assert not re.search(r"<(script|link|iframe)\b", page)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4
    import base64
    assert sorted(base64.b64decode(i) for i in images) == sorted(
        (out / p).read_bytes() for p in names - {"report.html"})
    a = analyze_json(runs[name])
    assert f"{a['counters']['kmaps']:,}" in page and "Per-CPU TLB" in page and "Shootdown latency" in page


def test_plot_with_json_keeps_stdout_a_json_document(runs, tmp_path):
    r = invoke("analyze", runs["eager"], "--json", "--plot", tmp_path / "f")
    assert r.exit_code == 0
    json.loads(r.stdout)
    assert "wrote " in r.stderr and (tmp_path / "f" / "report.html").exists()


def test_plot_into_an_unwritable_place_is_an_error(runs, tmp_path):
    (tmp_path / "file").write_text("x")
    r = invoke("analyze", runs["eager"], "--plot", tmp_path / "file")
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and str(tmp_path / "file") in r.stderr


# ---------------------------------------------------------------------------------------------- chrome

def chrome(run: Path, *extra) -> dict:
    r = invoke("export", run, "--format", "chrome", *extra)
    assert r.exit_code == 0, r.output[:2000]
    return json.loads(r.stdout)


def ns(x: float) -> int:
    """Back to virtual cycles (ts and dur are microseconds, 1 cycle shown as 1 ns)."""
    return round(x * 1000)


def check_chrome_structure(doc: dict) -> dict:
    """The structure Perfetto's JSON importer relies on; returns the events grouped by phase."""
    assert doc["displayTimeUnit"] == "ns"
    evs = doc["traceEvents"]
    by_ph = defaultdict(list)
    for e in evs:
        assert e["ph"] in {"M", "X", "i", "s", "f", "C"}, e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        by_ph[e["ph"]].append(e)
    # metadata first, then everything sorted by ts: timestamps never decrease along a track, in any phase
    first_other = next((i for i, e in enumerate(evs) if e["ph"] != "M"), len(evs))
    assert all(e["ph"] != "M" for e in evs[first_other:])
    last = {}
    for e in evs[first_other:]:
        key = (e["pid"], e["tid"])
        assert e["ts"] >= last.get(key, float("-inf")), e
        last[key] = e["ts"]
    # every track that carries events is named
    named = {(e["pid"], e["tid"]) for e in by_ph["M"] if e["name"] == "thread_name"}
    assert {(e["pid"], e["tid"]) for e in evs if e["ph"] in "Xisf"} <= named
    # spans: name, category, dur >= 0, and properly nested on each track
    spans = defaultdict(list)
    for e in by_ph["X"]:
        assert e["name"] and e["cat"] and isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
        spans[(e["pid"], e["tid"])].append((ns(e["ts"]), ns(e["ts"]) + ns(e["dur"]), e))
    for track in spans.values():
        stack: list[int] = []
        for start, end, e in sorted(track, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= start:
                stack.pop()
            assert not stack or end <= stack[-1], f"span {e} overlaps its enclosing span without nesting"
            stack.append(end)
    # flows: each id starts once and finishes once, with the same name and category; the start lies in
    # a span of its track and the finish binds to the span that begins there on its own track
    starts = {e["id"]: e for e in by_ph["s"]}
    ends = {e["id"]: e for e in by_ph["f"]}
    assert len(starts) == len(by_ph["s"]) and len(ends) == len(by_ph["f"])
    assert starts.keys() == ends.keys()
    enclosing = {}  # track -> (sorted span starts, the latest end among the spans starting up to each)
    for key, track in spans.items():
        track.sort(key=lambda x: x[0])
        enclosing[key] = ([a for a, _, _ in track], list(itertools.accumulate((b for _, b, _ in track), max)))
    for i, s in starts.items():
        f = ends[i]
        assert f["bp"] == "e" and (s["name"], s["cat"]) == (f["name"], f["cat"]) and f["ts"] >= s["ts"]
        begin, reach = enclosing.get((s["pid"], s["tid"]), ([], []))
        k = bisect.bisect_right(begin, ns(s["ts"])) - 1
        assert k >= 0 and reach[k] >= ns(s["ts"]), f"flow start {s} lies in no span of its track"
        begin = enclosing.get((f["pid"], f["tid"]), ([], []))[0]
        k = bisect.bisect_left(begin, ns(f["ts"]))
        assert k < len(begin) and begin[k] == ns(f["ts"]), f"flow end {f} starts no span of its track"
    for e in by_ph["C"]:
        assert set(e["args"]) == {"free"} and e["args"]["free"] >= 0
    return by_ph


@pytest.mark.parametrize("name", ["linux-2.4", "eager", "kmap-local", "sleepy"])
def test_chrome_export_structure_and_content(runs, name):
    doc = chrome(runs[name])
    by_ph = check_chrome_structure(doc)
    a = analyze_json(runs[name])
    events = exported(runs[name])
    ncpu = a["run"]["cpus"]
    names = {e["tid"]: e["args"]["name"] for e in by_ph["M"] if e["name"] == "thread_name"}
    assert sorted(names.values()) == sorted([f"CPU {c}" for c in range(ncpu)] + [f"CPU {c} IPI" for c in range(ncpu)])
    spans = Counter(e["cat"] for e in by_ph["X"])
    assert spans["kmap"] == a["counters"]["kmaps"] and spans["flush"] == a["counters"]["flushes"]
    assert spans["ipi"] == a["counters"]["ipis"] == len(by_ph["s"])
    # each span matches its event: a kmap spans its cycles up to t on the CPU's track; an IPI handler spans
    # t_recv .. t_ack on the receiver's IPI track; the flow starts at t_send on the sender's track
    seq = {e["seq"]: e for e in events}
    for x in by_ph["X"]:
        e = seq[x["args"]["seq"]]
        if x["cat"] == "kmap":
            assert (x["tid"], ns(x["ts"]), ns(x["dur"])) == (e["cpu"], e["t"] - e["cycles"], e["cycles"])
        elif x["cat"] == "flush":
            assert (x["tid"], ns(x["ts"]), ns(x["dur"])) == (e["cpu"], e["t"], e["stall"])
        else:
            assert (names[x["tid"]], ns(x["ts"]), ns(x["dur"])) == (f"CPU {e['cpu']} IPI", e["t_recv"],
                                                                      e["t_ack"] - e["t_recv"])
    for s in by_ph["s"]:
        e = seq[s["id"]]
        assert (s["tid"], ns(s["ts"]), ns(ends_of(by_ph)[s["id"]]["ts"])) == (e["src"], e["t_send"], e["t_recv"])
    # the counter: capacity at 0, then capacity minus the slots in use after each change
    cap, ring = a["ring"]["capacity"], a["ring"]
    free = [c["args"]["free"] for c in by_ph["C"]]
    assert free[0] == cap and min(free) == cap - ring["peak_in_use"] and free[-1] == cap - ring["in_use_at_end"]
    label = "free pkmap slots" if name != "kmap-local" else "free kmap_local slots"
    assert {c["name"] for c in by_ph["C"]} == {label}


def ends_of(by_ph) -> dict:
    return {e["id"]: e for e in by_ph["f"]}


def test_chrome_export_time_window(runs, tmp_path):
    # window edges that cut IPIs in flight: one sent before the window and handled in it, one sent in the
    # window and handled after it; neither gets a flow, both keep the spans that overlap the window
    ipis = [e for e in exported(runs["linux-2.4"]) if e["ev"] == "ipi"]
    first, last = ipis[len(ipis) // 4], ipis[len(ipis) // 2]
    lo, hi = (first["t_send"] + first["t_recv"]) // 2, (last["t_send"] + last["t_recv"]) // 2
    out = tmp_path / "w.json"
    r = invoke("export", runs["linux-2.4"], "--format", "chrome", "--from", lo, "--to", hi, "--output", out)
    assert r.exit_code == 0 and r.stdout == ""
    doc = json.loads(out.read_text())
    by_ph = check_chrome_structure(doc)
    whole = check_chrome_structure(chrome(runs["linux-2.4"]))
    assert 0 < len(by_ph["X"]) < len(whole["X"]) and by_ph["s"]
    for x in by_ph["X"]:  # every span overlaps the window
        assert ns(x["ts"]) <= hi and ns(x["ts"]) + ns(x["dur"]) >= lo
    for e in by_ph["i"] + by_ph["s"] + by_ph["f"]:
        assert lo <= ns(e["ts"]) <= hi
    assert ns(by_ph["C"][0]["ts"]) == lo
    flows = {e["id"] for e in by_ph["s"]}
    assert first["seq"] not in flows and last["seq"] not in flows
    assert {ipi["seq"] for ipi in ipis if lo <= ipi["t_send"] and ipi["t_recv"] <= hi} == flows
    assert first["seq"] in {x["args"]["seq"] for x in by_ph["X"]}
    inside = [x for x in whole["X"] if ns(x["ts"]) <= hi and ns(x["ts"]) + ns(x["dur"]) >= lo]
    assert len(inside) == len(by_ph["X"])
    assert invoke("export", runs["linux-2.4"], "--format", "chrome", "--from", hi, "--to", lo).exit_code == 2
    assert invoke("export", runs["linux-2.4"], "--format", "jsonl", "--from", lo).exit_code == 2


# ---------------------------------------------------------------------------------------------- compare

def test_compare_shows_fewer_ipis_for_linux_24_than_eager_on_a_low_reuse_workload(runs):
    r = invoke("compare", runs["linux-2.4"], runs["eager"], "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [x["policy"] for x in doc["runs"]] == ["linux-2.4", "eager"]
    assert [x["label"] for x in doc["runs"]] == ["linux-2.4", "eager"]  # what differs between the configs
    m = {x["key"]: x for x in doc["metrics"]}
    a_eager = analyze_json(runs["eager"])
    (lazy, eager), ratio = m["ipis"]["values"], m["ipis"]["ratios"][1]
    assert 0 < lazy < eager and ratio == pytest.approx(eager / lazy, rel=1e-3) and ratio > 1
    assert m["ipis_per_1000_kmaps"]["values"][0] < m["ipis_per_1000_kmaps"]["values"][1]
    assert m["useless_ipis"]["values"] == [0, a_eager["counters"]["useless_ipis"]]
    assert m["useless_ipis"]["values"][1] > 0 and m["useless_ipis"]["ratios"] == [None, None]  # base 0: no ratio
    assert m["flushes"]["values"][1] == a_eager["counters"]["flushes"]
    assert m["stall_p99_cycles"]["values"][1] == a_eager["shootdowns"]["stall"]["p99"]
    r = invoke("compare", runs["linux-2.4"], runs["eager"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["policy.name", "linux-2.4", "eager"]
    assert next(x for x in lines if x.startswith("IPIs sent")).split()[-2:] == [f"{lazy:,}", f"{eager:,}"]
    # the first run is the baseline: eager's saving line says how many times more IPIs it sends
    c = [analyze_json(runs[n])["counters"] for n in ("linux-2.4", "eager")]
    per_1k = [1000 * x["ipis"] / x["kmaps"] for x in c]
    line = next(x for x in lines if x.startswith("  eager vs linux-2.4: "))
    times = re.search(r"([0-9,.]+)x more IPIs", line)
    assert times and shown_ratio(times[1]) == pytest.approx(per_1k[1] / per_1k[0], abs=0.5)  # 15x: no decimals
    assert "more initiator stall" in line and "higher mean kmap latency" in line and max(map(len, lines)) <= 100


def test_compare_finds_the_runs_of_a_sweep_directory(runs, tmp_path):
    sweep = tmp_path / "sweep"
    for i, name in enumerate(("linux-2.4", "eager", "kmap-local")):
        shutil.copytree(runs[name], sweep / "points" / f"p{i}-{name}")
    (sweep / "points" / "not-a-run").mkdir()
    (sweep / "results.csv").write_text("x\n")
    r = invoke("compare", sweep, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [x["policy"] for x in doc["runs"]] == ["linux-2.4", "eager", "kmap-local"]
    assert all(x["params"]["policy.name"] == x["policy"] for x in doc["runs"])
    r = invoke("compare", runs["no-ipi"], sweep, "--json")  # runs and sweeps mixed; the first is the baseline
    assert [x["policy"] for x in json.loads(r.stdout)["runs"]] == ["no-ipi", "linux-2.4", "eager", "kmap-local"]


def test_compare_does_not_call_the_engine_a_difference(runs, tmp_path):
    """The same config on the distributed engine (another transport, other part sizes) gives the same
    digest: compare shows no engine column or label, and says the runs do not differ."""
    import smpsim
    from analysis_helpers import CONFIGS

    dist = tmp_path / "again"
    cfg = {**CONFIGS["eager"], "trace": {"part_events": 5000}, "run": {"engine": "distributed", "transport": "tcp"}}
    smpsim.run(cfg, out=dist).close()
    assert smpsim.open_run(dist).summary["digest"] == smpsim.open_run(runs["eager"]).summary["digest"]
    r = invoke("compare", runs["linux-2.4"], runs["eager"], dist, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["varying"] == ["policy.name"]
    assert [x["params"] for x in doc["runs"]] == [{"policy.name": p} for p in ("linux-2.4", "eager", "eager")]
    r = invoke("compare", runs["eager"], dist)
    assert r.exit_code == 0, r.output
    assert not re.search(r"engine|transport|inline|distributed|part_events", r.stdout), r.stdout
    assert "the same for every run" in r.stdout


def test_compare_errors(runs, tmp_path):
    r = invoke("compare", runs["eager"])
    assert r.exit_code == 2 and "at least two runs" in r.stderr
    (tmp_path / "empty").mkdir()
    r = invoke("compare", runs["eager"], tmp_path / "empty")
    assert r.exit_code == 2 and "no run directories" in r.stderr and str(tmp_path / "empty") in r.stderr


# ---------------------------------------------------------------------------------------------- query

def test_query_counts_events_like_the_export(runs):
    events = exported(runs["sleepy"])
    want = Counter(e["ev"] for e in events)
    r = invoke("query", runs["sleepy"], "SELECT ev, count(*) AS n FROM events GROUP BY ev ORDER BY ev", "-f", "json")
    assert r.exit_code == 0, r.output
    assert {row["ev"]: row["n"] for row in json.loads(r.stdout)} == dict(want)
    r = invoke("query", runs["sleepy"], "SELECT seq, ev FROM events WHERE ev = 'wait' ORDER BY seq", "--format", "csv")
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["seq", "ev"] and [int(x[0]) for x in rows[1:]] == [e["seq"] for e in events if e["ev"] == "wait"]
    r = invoke("query", runs["sleepy"], "SELECT count(*) AS kmaps FROM events WHERE ev = 'kmap'")
    assert r.stdout.split() == ["kmaps", f"{want['kmap']:,}"]


@pytest.mark.parametrize("sql, what", [
    ("SELEC ev FROM events", "syntax error"),
    ("SELECT nope FROM events", "nope"),
    ("SELECT * FROM evnts", "evnts"),
    ("   ", "empty query"),
])
def test_query_with_bad_sql_is_a_clear_error(runs, sql, what):
    r = invoke("query", runs["eager"], sql)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: query failed: ") and what in r.stderr
    assert "\n\n" not in r.stderr.strip() and "Traceback" not in r.stderr


def test_readme_recipes_run(runs):
    """The three SQL recipes of README.md's Analysis section return the rows the events say (computed here
    from the JSON-lines export, one event at a time)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Analysis"):]
    recipes = [sql for sql in re.findall(r'smpsim query RUN "([^"]+)"', section) if sql != "SQL"]
    assert len(recipes) == 3
    events = exported(runs["linux-2.4"])
    got = []
    for sql in recipes:
        r = invoke("query", runs["linux-2.4"], sql, "--format", "json")
        assert r.exit_code == 0, (sql, r.output)
        got.append(json.loads(r.stdout))
    who, slowest, lock = got

    ipis = Counter((e["src"], e["cpu"]) for e in events if e["ev"] == "ipi")
    useless = Counter((e["src"], e["cpu"]) for e in events if e["ev"] == "ipi" and e["dropped"] == 0)
    assert ipis and len(who) == min(10, len(ipis))
    for row in who:
        pair = (row["sender"], row["receiver"])
        assert (row["ipis"], row["useless"]) == (ipis[pair], useless[pair])
    assert [row["ipis"] for row in who] == sorted(ipis.values(), reverse=True)[:len(who)]

    flushes = sorted((e for e in events if e["ev"] == "flush"), key=lambda e: (-e["stall"], e["seq"]))[:10]
    assert flushes and slowest == [{"seq": e["seq"], "t": e["t"], "cpu": e["cpu"], "scope": e["scope"],
                                    "slots": e["slots"], "ipis": len(e["targets"]), "stall": e["stall"]}
                                   for e in flushes]

    waits = defaultdict(list)
    for e in events:
        if e["ev"] == "kmap":
            waits[e["cpu"]].append(e["lock_wait"])
    assert [row["cpu"] for row in lock] == sorted(waits)
    for row in lock:
        w = sorted(waits[row["cpu"]])
        assert (row["kmaps"], row["max"]) == (len(w), w[-1])
        assert row["p50"] in w and row["p99"] in w and row["p50"] <= row["p99"] <= row["max"]
        assert sum(x <= row["p50"] for x in w) >= len(w) / 2
