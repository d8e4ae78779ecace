"""`smpsim bench --profile`: the profile job covers the coordinator and every forked CPU process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from smpsim.bench.profile import render


@pytest.mark.timeout(180)
def test_profile_job_covers_every_process(subprocess_env):
    spec = {"job": "profile", "cpus": 2, "kmaps_total": 300, "top": 400}
    r = subprocess.run([sys.executable, "-m", "smpsim.bench.jobs", json.dumps(spec)], capture_output=True,
                       text=True, env=subprocess_env, timeout=150)
    assert r.returncode == 0, r.stderr[-2000:]
    prof = json.loads(r.stdout.strip().splitlines()[-1])
    assert prof["kmaps"] == 300
    assert prof["coordinator"]["processes"] == 1 and prof["cpu_processes"]["processes"] == 2
    for key, loop in (("coordinator", "_receive_ready (distributed/coordinator_node.py"),
                      ("cpu_processes", "serve (distributed/cpu_node.py")):
        p = prof[key]
        assert p["user_us_per_kmap"] + p["sys_us_per_kmap"] > 0
        assert p["top"] and all(0 <= row["self_share"] <= 1 for row in p["top"])
        # each process's own loop is in its profile (the CPU processes are forked: profiled there)
        assert any(row["function"].startswith(loop) for row in p["top"]), [r["function"] for r in p["top"]]
    assert prof["messages_in_per_wakeup"] >= 1 and prof["messages_in_per_step"] >= 1
    text = render(prof)
    assert "coordinator: user" in text and "CPU processes, all together" in text


def test_critical_path_counts_each_round_trip_that_waits_on_the_one_before(tmp_path):
    """One CPU: each ring request waits for the reply to the one before, so the rounds of the single-process
    engine (what bench reports as the critical path) are at least the requests. Here kunmap, compute and
    the next kmap go as one compound request: n kmaps make n + 1 requests."""
    from smpsim.config import load_config
    from smpsim.engines.inline import run
    n = 6
    lines = []
    for i in range(n):
        lines += [{"cpu": 0, "op": "kmap", "page": i}, {"cpu": 0, "op": "access", "page": i, "n": 2},
                  {"cpu": 0, "op": "kunmap", "page": i}, {"cpu": 0, "op": "compute", "cycles": 500}]
    script = tmp_path / "chain.jsonl"
    script.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = load_config(None, ["machine.cpus=1", "workload.kind=script", f"workload.script={script}"])
    res = run(cfg)
    assert res.summary["counters"]["kmaps"] == n
    assert n + 1 <= res.timing["rounds"] <= n + 3


def test_missed_ratio_targets_say_how_far_this_machine_lets_them_go():
    from smpsim.bench.runner import check_targets, render
    fig = {k: {"median": v, "min": v, "max": v, "n": 1} for k, v in {
        "ratio_distributed_to_ceiling@8": 0.2, "ratio_bound_critical_path_to_ceiling@8": 0.41,
        "ratio_cpu_per_kmap_distributed_to_inline@8": 9.0, "ratio_cpu_floor_one_round_trip_to_inline@8": 3.6,
        "messages_per_kmap@8": 2.0}.items()}
    rows = {t["figure"]: t for t in check_targets(fig, {})}
    assert rows["ratio_distributed_to_ceiling@8"]["limit"] == "at most 0.410 with this run's critical path of round trips"
    assert rows["ratio_cpu_per_kmap_distributed_to_inline@8"]["limit"] == "at least 3.600 with one bare round trip per kmap"
    assert "limit" not in rows["messages_per_kmap@8"]
    text = render({"figures": fig, "targets": list(rows.values()), "digests_equal": {}, "setup": {}})
    assert "0.200 (target >= 0.5; at most 0.410 with this run's critical path of round trips)" in text


def test_steady_state_figure_sits_beside_the_short_run_with_its_overhead_share():
    """The inline job says what share of it is not the model running (imports, start-up, the final trace
    write); the bench shows the steady-state run beside the 12,000-kmap one, each with that share."""
    from smpsim.bench.jobs import job_inline
    from smpsim.bench.runner import check_targets, render
    r = job_inline(2, 400, True)
    assert r["kmaps"] == 400 and r["whole_s"] >= r["seconds"] > 0
    assert 0 < r["overhead_fraction"] < 1
    fig = {k: {"median": v, "min": v, "max": v, "n": 1} for k, v in {
        "inline_trace_on_kmaps_per_s": 60_000, "inline_trace_on_overhead_fraction": 0.2,
        "inline_steady_kmaps_per_s": 70_000, "inline_steady_overhead_fraction": 0.03}.items()}
    rows = {t["figure"]: t for t in check_targets(fig, {"steady": "400,000", "steady_cpus": 8})}
    assert not rows["inline_steady_kmaps_per_s"]["met"] and rows["inline_steady_overhead_fraction"]["met"]
    assert "8 CPUs x 400,000 kmaps" in rows["inline_steady_kmaps_per_s"]["what"]
    text = render({"figures": fig, "targets": list(rows.values()), "digests_equal": {},
                   "setup": {"cpus": [8], "kmaps_total": 12_000, "steady_kmaps": 400_000}})
    assert ("60,000 kmaps/s over 12,000 kmaps (20.0% imports, start-up and final write), "
            "70,000 kmaps/s in steady state over 400,000 (3.0%)") in text
