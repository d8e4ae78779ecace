"""kmap_lock utilisation: held time (hand-offs included) over elapsed time, in summary.json and analyze."""

from __future__ import annotations

from smpsim.config import load_config
from smpsim.engines.inline import run


def _util(tmp_path, *overrides):
    cfg = load_config(None, ["workload.kmaps_per_cpu=300", *overrides])
    s = run(cfg, tmp_path).summary
    return s, s["kmap_lock"]["utilisation"]


def test_default_config_leaves_kmap_lock_unsaturated_at_8_cpus(tmp_path):
    s, u = _util(tmp_path / "a")
    assert s["cpus"] == 8 and 0 < u <= 0.5, u
    # The same workload with kmaps 2,000 cycles apart queues on the lock: that is what the default avoids.
    s2, u2 = _util(tmp_path / "b", "workload.think=2000")
    assert u2 > 0.9 and s2["counters"]["lock_wait_cycles"] > 5 * s["counters"]["lock_wait_cycles"]


def test_one_cpu_holds_the_lock_only_while_in_kmap_high(tmp_path):
    s, u = _util(tmp_path, "machine.cpus=1", "policy.name=eager")
    c = s["counters"]
    # Uncontended: each kmap holds it lock_hold (+ scan, PTE, flush) after lock_acquire; never the think time.
    assert 0 < s["kmap_lock"]["held_cycles"] < c["kmap_cycles"] + c["stall_cycles"] + 2 * 300 * 200
    assert u < 0.05


def test_analyze_reports_the_summary_utilisation(tmp_path):
    from smpsim.analysis.load import open_trace
    from smpsim.analysis.trace_metrics import analyze
    s, u = _util(tmp_path)
    a = analyze(open_trace(tmp_path))
    assert a["kmap_lock"]["utilisation"] == u and a["headline"]["lock_utilisation"] == u
