"""Confounders: a run whose kmap_lock is more than half busy, or whose kmap latency is mostly time asleep on
pkmap_map_wait, says so in its summary, in analyze, and in every saving line and table row involving it."""

import json

import pytest

from smpsim import api
from smpsim.headline import CONFOUNDERS, LOCK_BOUND, SLEEP_BOUND
from cli_helpers import invoke

LOCK = "lock-bound: includes queueing for kmap_lock"
SLEEP = "sleep-bound: mostly time asleep on pkmap_map_wait"

# kmaps 2,000 cycles apart at 8 CPUs saturate kmap_lock (tests/test_lock_utilisation.py)
QUEUED = ["machine.cpus=8", "workload.kmaps_per_cpu=100", "workload.think=2000"]
# 8 CPUs holding 3 pages each for ~400,000 cycles on a 16-slot ring: kmaps mostly sleep, the lock is idle
ASLEEP = ["machine.cpus=8", "machine.last_pkmap=16", "workload.nesting=3", "workload.pages=200",
          "workload.kmaps_per_cpu=30", "workload.hold=100000", "workload.think=20000"]
CALM = ["machine.cpus=4", "workload.kmaps_per_cpu=100", "workload.think=50000"]


def test_each_mark_is_defined_once():
    assert [c.mark for c in CONFOUNDERS] == [LOCK, SLEEP] and LOCK_BOUND == SLEEP_BOUND == 0.5


def _run(tmp_path, name, sets):
    out = tmp_path / name
    r = invoke("run", "--out", out, *(x for s in sets for x in ("--set", s)))
    assert r.exit_code == 0, r.output
    return out, r.stdout, json.loads((out / "summary.json").read_text())


def test_a_lock_bound_run_says_so_in_its_summary_and_in_analyze(tmp_path):
    out, printed, s = _run(tmp_path, "q", QUEUED)
    assert s["kmap_lock"]["utilisation"] > LOCK_BOUND
    assert [(c["kind"], c["mark"]) for c in s["confounders"]] == [("lock_bound", LOCK)]
    row = next(x for x in printed.splitlines() if "confounded" in x)
    assert LOCK in row and "kmap_lock utilisation" in row and "above 50.0%" in row
    a = invoke("analyze", out)
    assert a.exit_code == 0 and LOCK in a.stdout
    doc = json.loads(invoke("analyze", out, "--json").stdout)
    assert [c["kind"] for c in doc["confounders"]] == ["lock_bound"]


def test_a_calm_run_has_no_mark(tmp_path):
    out, printed, s = _run(tmp_path, "c", CALM)
    assert s["confounders"] == [] and "confounded" not in printed
    assert "confounded" not in invoke("analyze", out).stdout


def test_time_asleep_is_counted_as_analyze_defines_it_and_a_sleep_bound_run_says_so(tmp_path):
    out, printed, s = _run(tmp_path, "s", ASLEEP)
    asleep, kmap_cycles = s["pkmap_map_wait"]["asleep_cycles"], s["counters"]["kmap_cycles"]
    assert asleep > SLEEP_BOUND * kmap_cycles and s["kmap_lock"]["utilisation"] < LOCK_BOUND
    assert [c["kind"] for c in s["confounders"]] == ["sleep_bound"] and SLEEP in printed
    doc = json.loads(invoke("analyze", out, "--json").stdout)
    # recomputed from the trace: the recorded counter equals the sum of analyze's sleep episodes
    assert doc["pkmap_map_wait"]["asleep_cycles"] == asleep
    assert doc["sleeps"]["asleep"]["total"] == asleep and doc["sleeps"]["asleep_share"] > SLEEP_BOUND
    assert SLEEP in invoke("analyze", out).stdout


def test_saving_lines_and_tables_carry_the_mark_in_sweep_compare_and_the_api(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text("""
[machine]
cpus = 4
[workload]
kmaps_per_cpu = 80
think = 50000
[sweep]
"policy.name" = ["linux-2.4", "eager"]
[report]
baseline = {"policy.name" = "eager"}
""")
    out = tmp_path / "out"
    # eager's shootdown under the lock at think 2,000 saturates it; linux-2.4 at 50,000 stays calm
    r = invoke("sweep", exp, "--out", out, "--jobs", "1", "--set", "workload.think=2000")
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert f"; {LOCK} (both)" in text or f"; {LOCK} (eager)" in text
    assert f"confounded: {LOCK}" in r.stdout
    assert any(x.startswith("confounded ") and "lock-bound" in x for x in r.stdout.splitlines())
    table = api.sweep(exp, ["workload.think=2000"], out=out, jobs=1)
    assert LOCK in table.column("confounders").to_pylist()[1]
    c = invoke("compare", out)
    assert c.exit_code == 0 and LOCK in " ".join(c.stdout.split())
    doc = json.loads(invoke("compare", out, "--json").stdout)
    assert LOCK in doc["savings"][0]["text"] and doc["runs"][1]["confounders"][0]["kind"] == "lock_bound"
    # calm: no mark anywhere
    calm = invoke("sweep", exp, "--out", tmp_path / "calm", "--jobs", "1")
    assert calm.exit_code == 0 and "bound" not in calm.stdout
    assert api.sweep(exp, out=tmp_path / "calm", jobs=1).column("confounders").to_pylist() == ["", ""]


@pytest.mark.parametrize("sets", [QUEUED])
def test_the_api_run_carries_the_confounders(tmp_path, sets):
    with api.run(overrides=dict(s.split("=") for s in sets)) as run:
        assert run.summary["confounders"][0]["mark"] == LOCK
        assert run.analyze()["confounders"][0]["mark"] == LOCK
