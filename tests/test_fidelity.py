"""Fidelity of the pkmap ring to mm/highmem.c: hand-worked slot sequences, sleeping, deadlock, kernel
BUG()s, and replays of generated runs through an independent reference model (reference_highmem.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from smpsim.config import validate
from smpsim.engines.inline import run
from smpsim.model.errors import DeadlockError, ModelError
from smpsim.trace.reader import TruncatedRunWarning, open_run

import reference_highmem as ref
from registries import RING_POLICIES
from script_helpers import A, C, K, U, run_script, script_cfg, scripts, write_script


# ---- helpers ------------------------------------------------------------------------------------------

def shape(events: list[dict]) -> list[tuple]:
    """The ring events in a compact form to compare with hand-written expectations."""
    out = []
    for e in events:
        ev = e["ev"]
        if ev == "kmap":
            out.append(("kmap", e["cpu"], e["page"], e["slot"], e["new"], e["slept"]))
        elif ev == "kunmap":
            out.append(("kunmap", e["cpu"], e["page"], e["slot"], e["count"]))
        elif ev == "wrap":
            out.append(("wrap", e["slots"]))
        elif ev == "flush":
            out.append(("flush", e["scope"], e["slots"], list(e.get("targets") or [])))
        elif ev == "wait":
            out.append(("wait", e["cpu"], e["page"]))
        elif ev == "wake":
            out.append(("wake", list(e["woken"])))
    return out


def km(page, slot, new=True, slept=False, cpu=0):
    return ("kmap", cpu, page, slot, new, slept)


def ku(page, slot, count=1, cpu=0):
    return ("kunmap", cpu, page, slot, count)


# ---- hand-worked slot sequences -----------------------------------------------------------------------

def test_distinct_pages_walk_the_ring_and_wrap(tmp_path):
    """last_pkmap_nr starts at 0 and is pre-incremented: slots 1..7, then the wrap to 0 runs
    flush_all_zero_pkmaps, which tears down every slot at count 1, and slot 0 is handed out."""
    ops = []
    for p in range(100, 117):
        ops += [K(0, p), A(0, p), U(0, p)]
    cfg, events = run_script(tmp_path, ops)
    assert shape(events) == [
        km(100, 1), ku(100, 1), km(101, 2), ku(101, 2), km(102, 3), ku(102, 3), km(103, 4), ku(103, 4),
        km(104, 5), ku(104, 5), km(105, 6), ku(105, 6), km(106, 7), ku(106, 7),
        ("wrap", 7), ("flush", "all", 7, []),           # slots 1..7 were at count 1; slot 0 never used
        km(107, 0), ku(107, 0),
        km(108, 1), ku(108, 1), km(109, 2), ku(109, 2), km(110, 3), ku(110, 3), km(111, 4), ku(111, 4),
        km(112, 5), ku(112, 5), km(113, 6), ku(113, 6), km(114, 7), ku(114, 7),
        ("wrap", 8), ("flush", "all", 8, []),           # now all 8 slots were at count 1
        km(115, 0), ku(115, 0),
        km(116, 1), ku(116, 1),
    ]
    ref.replay(events, 8, "linux-2.4", 1)


def test_linux26_flushes_the_pkmap_range(tmp_path):
    ops = []
    for p in range(100, 109):
        ops += [K(0, p), U(0, p)]
    cfg, events = run_script(tmp_path, ops, policy="linux-2.6")
    slots = [e["slot"] for e in events if e["ev"] == "kmap"]
    assert slots == [1, 2, 3, 4, 5, 6, 7, 0, 1]
    flushes = [e for e in events if e["ev"] == "flush"]
    assert len(flushes) == 1
    f = flushes[0]
    assert (f["scope"], f["slots"], f["pages"]) == ("range", 7, 8)  # flush_tlb_kernel_range over 8 pages
    # The flush directly follows the wrap, and both come before the kmap that wrapped.
    seqs = {e["ev"]: e["seq"] for e in events if e["ev"] in ("wrap", "flush")}
    kmap0 = next(e for e in events if e["ev"] == "kmap" and e["slot"] == 0)
    assert seqs["wrap"] < seqs["flush"] < kmap0["seq"]


@pytest.mark.parametrize("policy,ring,full", [
    ("linux-2.4", 8, True),     # flush_tlb_all: the whole TLB, background working set included
    ("linux-2.6", 8, False),    # 8 pages <= tlb_single_page_flush_ceiling (33): per-page INVLPG
    ("linux-2.6", 33, False),   # exactly the ceiling: still per page
    ("linux-2.6", 34, True),    # one page above it: a full flush
    ("linux-2.6", 64, True),    # 64 pages > 33: a full flush on every CPU
])
def test_wrap_flush_extent(tmp_path, policy, ring, full):
    ops = [K(0, 1000), A(0, 1000), U(0, 1000)]
    for p in range(1, ring + 1):
        ops += [K(0, p), U(0, p)]
    ops += [K(0, 2000), A(0, 2000)]
    cfg, events = run_script(tmp_path, ops, ring=ring, policy=policy)
    flush = [e for e in events if e["ev"] == "flush"]
    assert len(flush) == 1
    assert flush[0].get("pages") == (None if full else ring)
    refills = [e for e in events if e["ev"] == "tlb_miss" and e.get("page") is None]
    if full:
        assert len(refills) == 1 and refills[0]["n"] == cfg.tlb.background and refills[0]["flush_caused"]
        assert refills[0]["seq"] > flush[0]["seq"]
    else:
        assert refills == []


def test_count1_page_is_reused_at_its_slot_without_a_new_mapping(tmp_path):
    """A slot that falls back to 1 keeps its mapping: kmapping the page again returns the same address, no
    PTE write, no flush, and the translation still cached in the TLB is valid (a hit, not a miss)."""
    ops = [K(0, 5), A(0, 5, n=8), U(0, 5), K(0, 6), U(0, 6), K(0, 5), A(0, 5, n=8), U(0, 5)]
    cfg, events = run_script(tmp_path, ops)
    assert shape(events) == [km(5, 1), ku(5, 1), km(6, 2), ku(6, 2), km(5, 1, new=False), ku(5, 1)]
    acc = [e for e in events if e["ev"] == "access"]
    assert [(a["slot"], a["hits"], a["misses"]) for a in acc] == [(1, 7, 1), (1, 8, 0)]
    misses = [e for e in events if e["ev"] == "tlb_miss"]
    assert len(misses) == 1 and misses[0]["page"] == 5 and not misses[0]["flush_caused"]


def test_held_page_survives_the_wrap(tmp_path):
    """flush_all_zero_pkmaps leaves slots with users (count > 1) mapped; the scan skips them. On x86 the
    flush still drops the live slot's translation from the TLB, so the next access walks the page table."""
    ops = [K(0, 50), A(0, 50)]
    for p in range(60, 68):
        ops += [K(0, p), U(0, p)]
    ops += [A(0, 50), U(0, 50), K(0, 50), U(0, 50)]
    cfg, events = run_script(tmp_path, ops)
    assert shape(events) == [
        km(50, 1),
        km(60, 2), ku(60, 2), km(61, 3), ku(61, 3), km(62, 4), ku(62, 4), km(63, 5), ku(63, 5),
        km(64, 6), ku(64, 6), km(65, 7), ku(65, 7),
        ("wrap", 6), ("flush", "all", 6, []),   # slots 2..7 torn down, slot 1 (count 2) kept
        km(66, 0), ku(66, 0),
        km(67, 2), ku(67, 2),                    # slot 1 is skipped: still in use
        ku(50, 1, 1),                            # back to 1, mapping kept
        km(50, 1, new=False), ku(50, 1),         # same address, no new mapping
    ]
    misses = [(e["page"], e["slot"], e["flush_caused"]) for e in events if e["ev"] == "tlb_miss"
              and e.get("page") == 50]
    assert misses == [(50, 1, False), (50, 1, True)]
    ref.replay(events, 8, "linux-2.4", 1)


@pytest.mark.parametrize("policy,flush", [
    ("linux-2.4", [("flush", "all", 0, [])]),   # 2.4: flush_tlb_all at every wrap, even with nothing torn
    ("linux-2.6", []),                            # 2008 on: no flush when no slot was torn down
])
def test_wrap_with_nothing_to_tear_down(tmp_path, policy, flush):
    ops = [K(0, p) for p in range(1, 8)] + [K(0, 8)]
    cfg, events = run_script(tmp_path, ops, policy=policy)
    assert shape(events) == [km(p, p) for p in range(1, 8)] + [("wrap", 0)] + flush + [km(8, 0)]


def test_eager_tears_down_at_kunmap(tmp_path):
    """Eager: the kunmap that drops a slot to 1 tears it down at once (count 0) and shoots the page down
    on every CPU; the same page is then mapped anew, and the wrap finds nothing to tear down."""
    ops = [K(0, 1), U(0, 1), K(0, 1), U(0, 1), K(0, 2), U(0, 2), K(0, 3), U(0, 3), K(0, 4), U(0, 4)]
    cfg, events = run_script(tmp_path, ops, cpus=2, ring=4, policy="eager")
    page = ("flush", "page", 1, [1])
    assert shape(events) == [
        km(1, 1), page, ku(1, 1, 0),
        km(1, 2), page, ku(1, 2, 0),
        km(2, 3), page, ku(2, 3, 0),
        ("wrap", 0), km(3, 0), page, ku(3, 0, 0),
        km(4, 1), page, ku(4, 1, 0),
    ]
    ipis = [e for e in events if e["ev"] == "ipi"]
    assert len(ipis) == 5 and all(e["cpu"] == 1 and e["src"] == 0 and e["scope"] == "page" for e in ipis)
    ref.replay(events, 4, "eager", 2)


def test_sleep_on_full_ring_and_wake_by_kunmap(tmp_path):
    """A ring of 2: both slots (1, then 0 after the wrap) are usable. With both held, CPU 0's scan finds
    nothing (a fruitless scan always passes slot 0, so it wraps once) and sleeps on pkmap_map_wait; CPU 1's
    kunmap drops slot 0 to 1 and wakes it; the retry resumes from the cursor (slot 1), wraps, tears slot 0
    down and takes it.

    linux-2.6, so the wraps that tear nothing down send no IPIs."""
    ops = [K(0, 10), C(0, 20000), K(0, 12), A(0, 12), U(0, 12), U(0, 10),
           C(1, 1000), K(1, 11), C(1, 100000), U(1, 11)]
    cfg, events = run_script(tmp_path, ops, cpus=2, ring=2, policy="linux-2.6")
    assert shape(events) == [
        km(10, 1, cpu=0),
        ("wrap", 0), km(11, 0, cpu=1),
        ("wrap", 0), ("wait", 0, 12),
        ku(11, 0, 1, cpu=1), ("wake", [0]),
        ("wrap", 1), ("flush", "range", 1, [1]), km(12, 0, slept=True, cpu=0),
        ku(12, 0, cpu=0), ku(10, 1, cpu=0),
    ]
    wait = next(e for e in events if e["ev"] == "wait")
    wake = next(e for e in events if e["ev"] == "wake")
    kmap12 = next(e for e in events if e["ev"] == "kmap" and e["page"] == 12)
    assert wait["t"] < wake["t"] < kmap12["t"]
    assert kmap12["t"] - kmap12["cycles"] < wait["t"]  # cycles count from the first request, sleep included
    ref.replay(events, 2, "linux-2.6", 2)


def test_sleeper_finds_its_page_mapped_by_another_sleeper(tmp_path):
    """Two CPUs sleep waiting to map the same page; one kunmap wakes both (wake_up wakes every waiter,
    in sleep order). The first retry maps the page; the second finds page_address set and takes the
    existing mapping (new=false, slept=true), as map_new_virtual's post-sleep check requires."""
    ops = [K(0, 1), C(0, 50000), U(0, 1),
           C(1, 500), K(1, 2), C(1, 200000), U(1, 2),
           C(2, 5000), K(2, 3), U(2, 3),
           C(3, 10000), K(3, 3), U(3, 3)]
    cfg, events = run_script(tmp_path, ops, cpus=4, ring=2, policy="linux-2.6")
    assert shape(events) == [
        km(1, 1, cpu=0),
        ("wrap", 0), km(2, 0, cpu=1),
        ("wrap", 0), ("wait", 2, 3),
        ("wrap", 0), ("wait", 3, 3),
        ku(1, 1, 1, cpu=0), ("wake", [2, 3]),
        ("wrap", 1), ("flush", "range", 1, [0, 1, 3]), km(3, 1, slept=True, cpu=2),
        km(3, 1, new=False, slept=True, cpu=3),
        ku(3, 1, 2, cpu=2), ku(3, 1, 1, cpu=3),
        ku(2, 0, 1, cpu=1),
    ]
    ref.replay(events, 2, "linux-2.6", 4)


def test_kmap_lock_serializes_simultaneous_requests(tmp_path):
    """Both CPUs ask at t=0: the ticket lock serves CPU 0 first; CPU 1 acquires only after CPU 0's
    kmap_high released it, and its wait is recorded."""
    cfg, events = run_script(tmp_path, [K(0, 1), K(1, 2)], cpus=2, ring=8)
    k0, k1 = [e for e in events if e["ev"] == "kmap"]
    assert (k0["cpu"], k0["slot"], k1["cpu"], k1["slot"]) == (0, 1, 1, 2)
    assert k0["t"] < k1["t"]
    t_req1 = k1["t"] - k1["cycles"]
    assert t_req1 == 0 and t_req1 + k1["lock_wait"] >= k0["t"]  # acquired after CPU 0's release
    assert k1["lock_wait"] > k0["lock_wait"]


def _deadlock(tmp_path, ops, **kw):
    cfg = script_cfg(write_script(tmp_path / "ops.jsonl", ops), **kw)
    out = tmp_path / "run"
    with pytest.raises(DeadlockError) as ei:
        run(cfg, out)
    return cfg, out, ei.value


def test_deadlock_every_cpu_holds_and_sleeps(tmp_path):
    ops = [K(0, 1), C(0, 10000), K(0, 3), K(1, 2), C(1, 10000), K(1, 4)]
    cfg, out, err = _deadlock(tmp_path, ops, cpus=2, ring=2, policy="linux-2.6")
    msg = str(err)
    assert "deadlock" in msg and "[0, 1]" in msg
    assert "ring of 2 slots" in msg and "0 free" in msg and "2 in use by 2 kmaps" in msg, msg
    assert sorted(err.sleepers) == [0, 1]
    # The run directory keeps the trace up to the deadlock and says it ended in an error.
    with pytest.warns(TruncatedRunWarning):
        r = open_run(out)
    assert r.truncated and r.status == "error" and "deadlock" in (r.summary.get("error") or "")
    events = ref.load_events(out)
    assert shape(events) == [
        km(1, 1, cpu=0), ("wrap", 0), km(2, 0, cpu=1),
        ("wrap", 0), ("wait", 0, 3), ("wrap", 0), ("wait", 1, 4),
    ]
    ref.replay(events, 2, "linux-2.6", 2)


def test_deadlock_single_cpu(tmp_path):
    cfg, out, err = _deadlock(tmp_path, [K(0, 1), K(0, 2), K(0, 3)], cpus=1, ring=2, policy="linux-2.4")
    assert "ring of 2 slots" in str(err) and err.sleepers == [0]
    assert shape(ref.load_events(out)) == [
        km(1, 1), ("wrap", 0), ("flush", "all", 0, []), km(2, 0),
        ("wrap", 0), ("flush", "all", 0, []), ("wait", 0, 3),
    ]


# ---- kernel BUG()s --------------------------------------------------------------------------------------

def test_bug_kunmap_of_unmapped_page(tmp_path):
    ops = ["# kunmap of a page nobody kmapped", K(0, 3), U(0, 3), U(0, 7)]
    cfg = script_cfg(write_script(tmp_path / "ops.jsonl", ops))
    with pytest.raises(ModelError) as ei:
        run(cfg, tmp_path / "run")
    e = ei.value
    assert not isinstance(e, DeadlockError)
    assert (e.cpu, e.op, e.position) == (0, "kunmap", 2)
    msg = str(e)
    assert "CPU 0" in msg and "operation #2 (kunmap)" in msg and "page 7" in msg and "script line 4" in msg, msg
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "error" and "page 7" in summary["error"]


def test_bug_count_reaching_zero(tmp_path):
    """CPU 1 kunmaps a page only CPU 0 kmapped (legal: the mapping is global), so CPU 0's own kunmap
    takes the count from 1 to 0, which kunmap_high BUG()s on."""
    ops = [K(0, 9), C(0, 20000), U(0, 9), C(1, 1000), U(1, 9)]
    cfg = script_cfg(write_script(tmp_path / "ops.jsonl", ops), cpus=2)
    with pytest.raises(ModelError) as ei:
        run(cfg, tmp_path / "run")
    e = ei.value
    assert (e.cpu, e.op, e.position) == (0, "kunmap", 2)
    msg = str(e)
    assert "CPU 0" in msg and "operation #2 (kunmap)" in msg and "script line 3" in msg, msg
    assert "pkmap_count" in msg and "0" in e.what
    events = ref.load_events(tmp_path / "run")
    assert shape(events) == [km(9, 1), ku(9, 1, 1, cpu=1)]  # the trace stops before the BUG


def test_ipi_arriving_during_a_long_compute(tmp_path):
    """An IPI may arrive in the middle of a CPU's compute operation: the handler interrupts it (IRQs are
    on) and the compute finishes later. CPU 0's wrap sends CPU 1 a flush_tlb_all IPI at t=2972 while CPU 1
    computes from 0 to 100000; CPU 1 must handle it and then kmap at 100000 + handler + flush."""
    ops = [K(0, 1), U(0, 1), K(0, 2), C(1, 100000), K(1, 3)]
    cfg, events = run_script(tmp_path, ops, cpus=2, ring=2, policy="linux-2.4")
    ipi = [e for e in events if e["ev"] == "ipi"]
    c = cfg.cost
    flush = next(e for e in events if e["ev"] == "flush")
    assert len(ipi) == 1 and ipi[0]["cpu"] == 1
    assert ipi[0]["t_recv"] == flush["t"] + c.ipi_latency < 100000
    k3 = next(e for e in events if e["ev"] == "kmap" and e["page"] == 3)
    assert k3["t"] - k3["cycles"] == 100000 + c.ipi_handler + c.full_flush
    ref.replay(events, 2, "linux-2.4", 2)


# ---- replay of generated runs through the reference model ----------------------------------------------

# (policy, workload, cpus, last_pkmap, nesting); small rings with nesting make callers sleep without
# deadlock: cpus * (nesting - 1) < last_pkmap <= cpus * nesting - 1.
REPLAY_CASES = [
    ("linux-2.4", "uniform", 1, 8, 1),
    ("linux-2.4", "zipf", 4, 16, 1),
    ("linux-2.4", "shared", 8, 64, 1),
    ("linux-2.4", "pingpong", 2, 16, 1),
    ("linux-2.4", "stream", 4, 1024, 1),
    ("linux-2.4", "uniform", 4, 10, 3),
    ("linux-2.6", "uniform", 3, 8, 2),
    ("linux-2.6", "zipf", 8, 8, 1),
    ("linux-2.6", "shared", 4, 32, 1),
    ("linux-2.6", "pingpong", 4, 16, 2),
    ("linux-2.6", "stream", 2, 7, 4),
    ("linux-2.6", "uniform", 8, 512, 1),
    ("eager", "uniform", 2, 8, 1),
    ("eager", "zipf", 3, 8, 2),
    ("eager", "shared", 8, 12, 2),
    ("eager", "pingpong", 4, 16, 1),
    ("eager", "stream", 1, 8, 1),
    ("no-ipi", "uniform", 4, 16, 1),
    ("no-ipi", "zipf", 2, 7, 4),
    ("no-ipi", "shared", 8, 64, 2),
    ("no-ipi", "pingpong", 2, 8, 1),
    ("no-ipi", "stream", 4, 10, 3),
    ("no-flush", "uniform", 8, 12, 2),
    ("no-flush", "zipf", 1, 16, 1),
    ("no-flush", "shared", 4, 16, 1),
    ("no-flush", "pingpong", 6, 32, 2),
    ("no-flush", "stream", 2, 1024, 1),
]


def _replay_cfg(policy, workload, cpus, ring, nesting, seed=1):
    kmaps = 100 if ring < 512 else max(100, 2 * ring // cpus)
    return validate({"seed": seed, "machine": {"cpus": cpus, "last_pkmap": ring}, "policy": {"name": policy},
                     "workload": {"kind": workload, "kmaps_per_cpu": kmaps, "pages": 4 * ring,
                                  "nesting": nesting, "hot_pages": max(4, ring // 2),
                                  "accesses_per_kmap": 2}})


@pytest.mark.parametrize("policy,workload,cpus,ring,nesting", REPLAY_CASES,
                         ids=["-".join(map(str, c)) for c in REPLAY_CASES])
def test_replay_agrees_with_reference(tmp_path, policy, workload, cpus, ring, nesting):
    cfg = _replay_cfg(policy, workload, cpus, ring, nesting)
    res = run(cfg, tmp_path / "run")
    stats = ref.replay_run(tmp_path / "run", cfg)
    assert stats.kmaps == res.summary["counters"]["kmaps"] == cpus * cfg.workload.kmaps_per_cpu
    assert stats.wraps == res.summary["counters"]["wraps"] >= 1  # every case reuses the ring
    if cpus * nesting > ring and workload in ("uniform", "stream"):  # distinct pages held: the ring fills
        assert stats.sleeps >= 1 and stats.slept_kmaps >= 1, "the case was chosen so that callers sleep"


def test_replay_detects_a_wrong_slot(tmp_path):
    """The replayer is not vacuous: a trace edited by one slot is rejected."""
    cfg, events = run_script(tmp_path, [K(0, 1), U(0, 1), K(0, 2), U(0, 2)], ring=2)
    ref.replay(events, 2, "linux-2.4", 1)
    bad = [dict(e) for e in events]
    next(e for e in bad if e["ev"] == "kmap" and e["page"] == 2)["slot"] = 1
    with pytest.raises(ref.ReplayMismatch, match="reference slot 0"):
        ref.replay(bad, 2, "linux-2.4", 1)
    with pytest.raises(ref.ReplayMismatch, match="wrap"):
        ref.replay([e for e in events if e["ev"] != "wrap"], 2, "linux-2.4", 1)
    with pytest.raises(ref.ReplayMismatch, match="count"):
        ref.replay([dict(e, count=0) if e["ev"] == "kunmap" else e for e in events], 2, "linux-2.4", 1)


# ---- property: random small scripts ---------------------------------------------------------------------

@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts())
def test_random_scripts_replay_identically(case):
    ncpu, ring, policy, ops = case
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        cfg = script_cfg(write_script(d / "ops.jsonl", ops), cpus=ncpu, ring=ring, policy=policy)
        try:
            res = run(cfg, d / "run")
            deadlock = False
        except DeadlockError:
            deadlock = True
        stats = ref.replay_run(d / "run", cfg)
        if not deadlock:
            assert stats.kmaps == sum(1 for o in ops if o["op"] == "kmap")
            assert stats.kunmaps == sum(1 for o in ops if o["op"] == "kunmap")
            assert res.summary["counters"]["wraps"] == stats.wraps
        else:
            # Every sleeper is still asleep in the reference too: all of its slots are held.
            assert stats.sleeps > stats.slept_kmaps
            assert all(c >= 2 for c in stats.ref.pkmap_count)


def test_the_reference_replays_every_ring_policy():
    """reference_highmem.py declares what it knows by name (it imports nothing from the model): every built-in
    policy whose kmaps reach the ring, so the random scripts above cover each."""
    assert sorted(ref.RING_POLICIES) == sorted(RING_POLICIES)
