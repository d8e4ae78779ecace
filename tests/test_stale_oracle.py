"""The stale-translation oracle: a correct flush policy never lets a CPU reach the wrong frame through a
pkmap (or kmap_local) address; the deliberately broken policies do once slots get reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smpsim.config import validate
from smpsim.engines.inline import run

import reference_highmem as ref
from registries import CORRECT_POLICIES, GRID_WORKLOADS


def _script(tmp_path: Path, ncpu: int) -> Path:
    """The CPUs pass a small set of pages around a ring of 4: every slot is reused many times while
    other CPUs still cache its old translation at count 1."""
    lines = []
    for rnd in range(12):
        for cpu in range(ncpu):
            p = (rnd * ncpu + cpu) % 6
            lines += [{"cpu": cpu, "op": "kmap", "page": p},
                      {"cpu": cpu, "op": "access", "page": p, "n": 2, "write": cpu % 2 == 0},
                      {"cpu": cpu, "op": "compute", "cycles": 300 + 50 * cpu},
                      {"cpu": cpu, "op": "access", "page": p, "n": 2, "write": False},
                      {"cpu": cpu, "op": "kunmap", "page": p},
                      {"cpu": cpu, "op": "compute", "cycles": 500}]
    path = tmp_path / "ops.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _cfg(tmp_path, policy, workload, cpus=4, ring=16, kmaps=150, seed=7):
    w = {"kind": workload, "kmaps_per_cpu": kmaps, "pages": 3 * ring, "hot_pages": 8, "hot_fraction": 0.8,
         "accesses_per_kmap": 3, "think": 500}
    if workload == "script":
        w = {"kind": "script", "script": str(_script(tmp_path, cpus))}
        ring = 4
    # latr: ticks far more often than HZ=1000 so that its deferred slots are freed many times in the run
    return validate({"seed": seed, "machine": {"cpus": cpus, "last_pkmap": ring},
                     "policy": {"name": policy, "tick": 20000}, "workload": w})


def _stale_events(run_dir: Path) -> list[dict]:
    return [e for e in ref.load_events(run_dir) if e["ev"] == "stale"]


@pytest.mark.parametrize("workload", GRID_WORKLOADS)
@pytest.mark.parametrize("policy", CORRECT_POLICIES)
def test_correct_policies_never_use_a_stale_translation(tmp_path, policy, workload):
    cfg = _cfg(tmp_path, policy, workload)
    res = run(cfg, tmp_path / "run")
    c = res.summary["counters"]
    assert c["stale"] == 0 and c["stale_events"] == 0
    assert sum(p["stale"] for p in res.summary["per_cpu"]) == 0
    assert _stale_events(tmp_path / "run") == []
    # Not vacuous: the translations were used, and the ring was recycled.
    assert c["tlb_hits"] > 0
    if policy != "kmap-local":
        assert c["wraps"] > 0 and c["new_mappings"] > cfg.machine.ring_size


@pytest.mark.parametrize("workload", ["shared", "pingpong", "script"])
@pytest.mark.parametrize("policy", ["no-ipi", "no-flush"])
@pytest.mark.parametrize("cpus", [2, 4])
def test_broken_policies_reach_stale_frames(tmp_path, policy, workload, cpus):
    cfg = _cfg(tmp_path, policy, workload, cpus=cpus)
    res = run(cfg, tmp_path / "run")
    c = res.summary["counters"]
    assert c["stale"] > 0, c
    stale = _stale_events(tmp_path / "run")
    assert stale and len(stale) == c["stale_events"]
    assert sum(e["n"] for e in stale) == c["stale"]
    for e in stale:
        assert e["reached"] != e["page"], e
        assert 0 <= e["slot"] < cfg.machine.ring_size
    # A stale use goes through the slot the CPU legitimately got for `page` (its latest kmap of it), and
    # reaches a page that was mapped at that slot earlier.
    latest: dict[tuple[int, int], int] = {}   # (cpu, page) -> slot of that CPU's latest kmap of page
    ever: set[tuple[int, int]] = set()         # (page, slot) mapped at some point
    checked = 0
    for e in ref.load_events(tmp_path / "run"):
        if e["ev"] == "kmap":
            latest[e["cpu"], e["page"]] = e["slot"]
            ever.add((e["page"], e["slot"]))
        elif e["ev"] == "stale":
            assert latest.get((e["cpu"], e["page"])) == e["slot"], e
            assert (e["reached"], e["slot"]) in ever, e
            checked += 1
    assert checked == len(stale)


def test_single_cpu_never_stale_even_without_ipis(tmp_path):
    """no-ipi still flushes the initiator's own TLB: with one CPU nothing can go stale."""
    cfg = _cfg(tmp_path, "no-ipi", "uniform", cpus=1)
    res = run(cfg, tmp_path / "run")
    assert res.summary["counters"]["stale"] == 0 and res.summary["counters"]["wraps"] > 0
