"""The experiments in configs/ make the point their comment says, on shrunk versions of the sweeps.

Each test runs `smpsim sweep configs/NAME.toml` with --set overrides that make it small (fewer CPUs or
kmaps, fewer points) and checks the direction of each effect in its results table.
"""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from smpsim.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXPERIMENTS = ("lazy-vs-eager", "broken-flush", "ring-size", "cpus", "refill", "modern")


def sweep(tmp_path, name, *sets):
    out = tmp_path / name
    args = ["sweep", str(CONFIGS / f"{name}.toml"), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert rows and all(r["status"] == "ok" for r in rows)
    return rows


def by(rows, *keys):
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in rows}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_experiment_says_its_question_and_what_to_look_at(name):
    text = (CONFIGS / f"{name}.toml").read_text()
    head = text[:text.index("\n\n")]
    assert all(line.startswith("#") for line in head.splitlines())
    assert "Question" in head and "Look at" in head and f"smpsim sweep configs/{name}.toml" in head
    assert "[sweep]" in text


def test_lazy_flush_sends_far_fewer_ipis_than_eager(tmp_path):
    rows = sweep(tmp_path, "lazy-vs-eager", "machine.cpus=4", "workload.kmaps_per_cpu=300",
                 "machine.last_pkmap=128", 'sweep.workload.kind=["uniform", "zipf"]')
    t = by(rows, "policy.name", "workload.kind")
    assert len(t) == 8
    for kind in ("uniform", "zipf"):
        lazy, eager, local = t["linux-2.4", kind], t["eager", kind], t["kmap-local", kind]
        assert lazy["wraps"] > 0
        assert 0 < lazy["ipis_per_1000_kmaps"] < eager["ipis_per_1000_kmaps"] / 10
        assert lazy["flushes_per_1000_kmaps"] < eager["flushes_per_1000_kmaps"] / 10
        assert lazy["stall_per_1000_kmaps"] < eager["stall_per_1000_kmaps"] / 10
        assert lazy["kmap_mean_cycles"] < eager["kmap_mean_cycles"]
        assert lazy["kmap_p99_cycles"] < eager["kmap_p99_cycles"]
        assert local["ipis"] == 0 and local["wraps"] == 0
        assert t["linux-2.6", kind]["ipis_per_1000_kmaps"] <= lazy["ipis_per_1000_kmaps"]
    # On the low-reuse workload nearly every kmap is a new mapping: eager shoots down on almost every kunmap.
    assert t["eager", "uniform"]["ipis_per_1000_kmaps"] > 0.9 * 3 * 1000


def test_stale_uses_appear_only_without_the_global_flush(tmp_path):
    rows = sweep(tmp_path, "broken-flush", "machine.cpus=4", "workload.kmaps_per_cpu=300",
                 "machine.last_pkmap=32")
    t = by(rows, "policy.name", "workload.kind")
    assert len(t) == 9
    for kind in ("shared", "pingpong", "zipf"):
        assert t["linux-2.4", kind]["stale"] == 0 and t["linux-2.4", kind]["ipis"] > 0
        assert t["no-ipi", kind]["stale"] > 0 and t["no-ipi", kind]["ipis"] == 0
        assert t["no-flush", kind]["stale"] > 0 and t["no-flush", kind]["flushes"] == 0


def test_smaller_rings_wrap_more_sleep_more_and_kmap_slower(tmp_path):
    rows = sweep(tmp_path, "ring-size", "workload.kmaps_per_cpu=150", "sweep.machine.last_pkmap=[16, 64, 256]")
    r16, r64, r256 = (by(rows, "machine.last_pkmap")[n] for n in (16, 64, 256))
    assert r16["wraps"] > r64["wraps"] > r256["wraps"] > 0
    assert r16["sleeps"] > 0 and r16["sleeps"] >= r64["sleeps"] >= r256["sleeps"]
    assert r16["kmap_mean_cycles"] > r64["kmap_mean_cycles"] > r256["kmap_mean_cycles"]
    assert r16["tlb_hit_rate"] < r64["tlb_hit_rate"] < r256["tlb_hit_rate"]


def test_each_global_flush_costs_more_with_more_cpus(tmp_path):
    rows = sweep(tmp_path, "cpus", "sweep.machine.cpus=[1, 2, 4, 8, 16]",
                 "sweep.workload.kmaps_per_cpu=[800, 400, 200, 100, 50]")
    rows.sort(key=lambda r: r["machine.cpus"])
    assert [r["machine.cpus"] for r in rows] == [1, 2, 4, 8, 16]
    assert all(r["kmaps"] == 800 and r["flushes"] > 0 for r in rows)
    stall = [r["stall_per_flush"] for r in rows]
    assert stall == sorted(stall) and len(set(stall)) == len(stall)  # strictly growing
    for r in rows:
        assert r["ipis"] == (r["machine.cpus"] - 1) * r["flushes"]  # one IPI per other CPU per flush
    ipis = [r["ipis_per_1000_kmaps"] for r in rows]
    assert ipis == sorted(ipis) and ipis[0] == 0


def test_flush_induced_misses_follow_wrap_flushes(tmp_path):
    rows = sweep(tmp_path, "refill", "workload.kmaps_per_cpu=200", "sweep.machine.last_pkmap=[32, 1024]")
    t = by(rows, "policy.name", "machine.last_pkmap", "tlb.background")
    assert len(t) == 8
    for r in rows:
        assert (r["flush_misses_per_cpu"] > 0) == (r["wraps"] > 0)
        assert (r["flush_miss_cycles_per_cpu"] > 0) == (r["wraps"] > 0)
    assert t["linux-2.4", 1024, 64]["wraps"] == 0  # a ring that holds every page never wraps
    # A full flush (linux-2.4) also drops the background translations, which must be walked back in ...
    assert t["linux-2.4", 32, 64]["flush_misses_per_cpu"] > 2 * t["linux-2.4", 32, 0]["flush_misses_per_cpu"]
    assert t["linux-2.4", 32, 64]["tlb_hit_rate"] < t["linux-2.4", 32, 0]["tlb_hit_rate"]
    # ... a range flush within flush_ceiling (linux-2.6, 32 slots) keeps them, at the price of INVLPGs.
    assert t["linux-2.6", 32, 64]["flush_misses_per_cpu"] == t["linux-2.6", 32, 0]["flush_misses_per_cpu"]
    assert t["linux-2.6", 32, 64]["flush_misses_per_cpu"] < t["linux-2.4", 32, 64]["flush_misses_per_cpu"]
    assert t["linux-2.6", 32, 64]["stall_per_flush"] > t["linux-2.4", 32, 64]["stall_per_flush"]


def test_modern_designs_against_linux_24(tmp_path):
    rows = sweep(tmp_path, "modern", "machine.cpus=4", "workload.kmaps_per_cpu=150", "machine.last_pkmap=48")
    assert len(rows) == 28 and all(r["stale"] == 0 for r in rows)
    t = by(rows, "policy.name", "workload.kind", "workload.active_cpus")
    for kind, active in (("uniform", 8), ("zipf", 8), ("shared", 8), ("uniform", 2)):
        base = t["linux-2.4", kind, active]
        assert base["wraps"] > 0 and base["ipis"] > 0
        assert t["eager", kind, active]["ipis"] > 10 * base["ipis"]
        assert t["kmap-local", kind, active]["ipis"] == 0 and t["latr", kind, active]["ipis"] == 0
        assert t["latr", kind, active]["wraps"] > 0
    # tlb-gen: the same IPIs while every CPU kmaps; with 2 of 4 active, only the other active CPU's.
    assert t["tlb-gen", "uniform", 8]["ipis"] == t["linux-2.4", "uniform", 8]["ipis"]
    few, all_ = t["tlb-gen", "uniform", 2], t["linux-2.4", "uniform", 2]
    assert few["wraps"] == all_["wraps"] and few["ipis"] * 3 == all_["ipis"]
    # latr: no IPIs, paid for in sleeps while torn slots wait for the tick.
    assert t["latr", "uniform", 8]["sleeps"] > 0
