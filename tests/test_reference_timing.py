"""Every figure of a run recomputed by independent references (tests/reference_timing.py): the TLB, the
cycle accounting (kmap cycles, lock waits, stalls, the time an IPI adds) and kmap_local."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smpsim.config import validate
from smpsim.engines.inline import run
from smpsim.model import workloads
from smpsim.model.tlb import Tlb

import reference_highmem as ring_ref
import reference_timing as ref
from registries import GENERATED_WORKLOADS, POLICY_NAMES


# ---- the TLB on its own --------------------------------------------------------------------------------

GEOMETRIES = [(1, 1), (4, 1), (4, 4), (8, 2), (64, 4), (16, 16)]


@st.composite
def tlb_ops(draw):
    """A geometry and mostly accesses over about twice as many vpns as entries, so that sets fill and the
    replacement order decides what stays; flushes are rare enough not to reset every set."""
    entries, ways = draw(st.sampled_from(GEOMETRIES))
    kind = st.sampled_from(["translate"] * 12 + ["invlpg", "flush"])
    op = st.tuples(kind, st.integers(0, 2 * entries + 1), st.integers(0, 9))
    return entries, ways, draw(st.lists(op, max_size=300))


@settings(max_examples=200, deadline=None)
@given(case=tlb_ops())
def test_tlb_matches_the_reference_lru(case):
    entries, ways, ops = case
    model, r = Tlb(entries, ways), ref.RefTlb(entries, ways)
    for op, vpn, frame in ops:
        if op == "translate":  # an access: a lookup, and on a miss the page walk's fill
            got = r.lookup(vpn)
            if got is None:
                r.fill(vpn, frame)
            assert model.translate(vpn, frame) == got
        elif op == "invlpg":
            assert model.invalidate_pages([vpn]) == ([vpn] if r.invlpg(vpn) else [])
        else:
            assert sorted(model.invalidate_all()) == sorted(r.flush_all())
        assert model.cached() == sorted((v, f) for s in r.sets for v, f in s.items())


def test_reference_tlb_evicts_the_least_recently_used():
    t = ref.RefTlb(4, 2)              # 2 sets of 2 ways: vpns 0, 2, 4 share set 0
    t.fill(0, 100)
    t.fill(2, 102)
    assert t.lookup(0) == 100         # 0 is now the most recently used
    assert t.fill(4, 104) == 2        # so 2 goes
    assert t.lookup(2) is None and t.lookup(0) == 100 and t.lookup(4) == 104
    assert t.fill(1, 101) is None     # set 1 is untouched


# ---- whole runs ----------------------------------------------------------------------------------------

CASES = [  # (policy, workload, cpus, ring, nesting, background[, {"section.key": value}])
    ("linux-2.4", "uniform", 4, 16, 1, 32),
    ("linux-2.4", "zipf", 8, 32, 2, 8),
    ("linux-2.4", "shared", 3, 64, 1, 0),
    ("linux-2.4", "uniform", 4, 10, 3, 16),     # sleeps on pkmap_map_wait
    ("linux-2.6", "uniform", 4, 16, 1, 32),     # range flush within the ceiling: INVLPG per page
    ("linux-2.6", "zipf", 2, 64, 2, 32),        # range above the ceiling: full flush
    ("linux-2.6", "stream", 3, 8, 2, 4),
    ("eager", "pingpong", 4, 16, 1, 32),
    ("eager", "shared", 6, 12, 2, 8),
    ("no-ipi", "shared", 4, 16, 1, 32),         # stale uses
    ("no-flush", "pingpong", 4, 16, 2, 8),
    ("kmap-local", "uniform", 3, 16, 3, 32),
    ("kmap-local", "zipf", 2, 16, 1, 0),
    ("vmap-lazy", "uniform", 4, 16, 1, 32),     # purges at kunmap, at the default lazy_max (12 of 16)
    ("vmap-lazy", "uniform", 4, 8, 2, 8),       # purges at kunmap, and at kmap when a scan finds no slot
    ("vmap-lazy", "uniform", 4, 6, 2, 8),       # mostly at kmap; sleeps when nothing was at count 1
    ("vmap-lazy", "uniform", 2, 64, 1, 8, {"policy.lazy_max": 40}),  # span above the ceiling: full flush
    ("tlb-gen", "uniform", 4, 16, 1, 32, {"workload.active_cpus": 2}),  # IPIs only to the other kmapper
    ("tlb-gen", "shared", 5, 16, 2, 8, {"workload.active_cpus": 3}),
    # holds across flushes: a CPU holding a page is a target, and so is one whose hold ended since its flush
    ("tlb-gen", "uniform", 4, 8, 3, 8, {"workload.active_cpus": 3, "workload.hold": 3000}),
    ("latr", "uniform", 4, 16, 1, 32, {"policy.tick": 20000}),  # ticks while computing; sleeps until one
    ("latr", "uniform", 4, 10, 2, 8, {"policy.tick": 50000}),   # mostly asleep on deferred slots
    ("latr", "zipf", 3, 64, 1, 8, {"policy.tick": 5000}),       # lazy flush above the ceiling: full
    ("latr", "uniform", 1, 12, 1, 8, {"policy.tick": 5000}),    # one CPU: the torn slots are free at once
]


def _cfg(policy, workload, cpus, ring, nesting, background, more=None, seed=3, think=700, **cost):
    """more: {"policy.tick": 5000, ...}, keys of the policy and workload sections."""
    doc = {"seed": seed, "machine": {"cpus": cpus, "last_pkmap": ring},
           "tlb": {"entries": 16, "ways": 4, "background": background},
           "policy": {"name": policy}, "cost": cost,
           "workload": {"kind": workload, "kmaps_per_cpu": 60, "pages": 3 * ring, "nesting": nesting,
                        "hot_pages": max(4, ring // 2), "accesses_per_kmap": 3, "think": think}}
    for key, value in (more or {}).items():
        section, name = key.split(".")
        doc[section][name] = value
    return validate(doc)


def _id(case) -> str:
    return "-".join(str(x) if not isinstance(x, dict) else ",".join(f"{k}={v}" for k, v in x.items()) for x in case)


def _check(cfg, tmp_path, busy=None):
    res = run(cfg, tmp_path / "run")
    assert res.summary["status"] == "ok"
    ops = [list(workloads.build_cpu(cfg, c)[0]) for c in range(cfg.machine.cpus)]
    events = ring_ref.load_events(tmp_path / "run")
    got = ref.check_run(cfg, ops, events, busy)
    counters = res.summary["counters"]
    for k, v in got.items():
        assert counters[k] == v, f"{k}: summary {counters[k]}, reference {v}"
    return res, events


@pytest.mark.parametrize("case", CASES, ids=map(_id, CASES))
def test_every_figure_matches_the_references(case, tmp_path):
    res, events = _check(_cfg(*case), tmp_path)
    c = res.summary["counters"]
    kmapping = case[6].get("workload.active_cpus", case[2]) if len(case) > 6 else case[2]
    assert c["kmaps"] == kmapping * 60 and c["tlb_hits"] + c["tlb_misses"] > 0
    if case[0] in ("no-ipi", "no-flush"):
        assert c["stale"] > 0, "the broken policy was chosen to use stale translations here"
    _shows_its_policy(case, events)


def _shows_its_policy(case, events):
    """The case exercises what makes its policy different, not only what it shares with linux-2.6."""
    policy, cpus = case[0], case[2]
    flushes = [e for e in events if e["ev"] == "flush"]
    if policy == "vmap-lazy":  # purges, none at a wrap
        assert flushes and all(f["scope"] == "range" for f in flushes)
        assert all(e["slots"] == 0 for e in events if e["ev"] == "wrap")
    if policy == "tlb-gen":    # some flush skips a CPU
        assert any(len(f["targets"]) < cpus - 1 for f in flushes) and any(f["targets"] for f in flushes)
    if policy == "latr":       # no IPI; with other CPUs, ticks invalidate and free the torn slots
        assert not any(e["ev"] == "ipi" for e in events) and any(f["scope"] == "lazy" for f in flushes)
        ticks, frees = (sum(1 for e in events if ok(e)) for ok in (
            lambda e: e["ev"] == "flush" and e["scope"] == "tick", lambda e: e["ev"] == "free"))
        assert (ticks > 0 and frees > 0) if cpus > 1 else ticks == frees == 0


BUSY = [  # long computes between kmaps: IPIs find their targets computing, not spinning on the lock
    ("linux-2.4", "uniform", 4, 16, 1, 32),
    ("linux-2.6", "uniform", 4, 40, 1, 8),     # above the flush ceiling: full flushes
    ("linux-2.6", "shared", 4, 16, 1, 8),      # INVLPG per page
    ("eager", "pingpong", 4, 16, 1, 8),
    ("no-ipi", "shared", 3, 16, 1, 8),
    ("vmap-lazy", "uniform", 4, 8, 2, 8),
    ("tlb-gen", "shared", 4, 16, 1, 8, {"workload.active_cpus": 3}),
    ("latr", "uniform", 4, 16, 1, 8, {"policy.tick": 30000}),   # ticks reach computing CPUs
]


@pytest.mark.parametrize("case", BUSY, ids=map(_id, BUSY))
def test_ipis_that_reach_a_computing_cpu(case, tmp_path):
    busy: list[int] = []
    res, _ = _check(_cfg(*case, think=20000), tmp_path, busy)
    if case[0] != "no-ipi":  # latr: its ticks
        assert sum(busy) >= 5 and (res.summary["counters"]["ipis"] > 0 or case[0] == "latr"), busy


def test_costs_other_than_the_defaults(tmp_path):
    """Nonzero ack, TLB-hit cost and zero broadcast step exercise rules the defaults hide."""
    _check(_cfg("linux-2.4", "shared", 4, 16, 2, 8, ipi_ack=70, tlb_hit=3, ipi_broadcast_step=0,
                lock_handoff=900, wakeup_latency=333), tmp_path)


def test_the_reference_is_not_vacuous(tmp_path):
    """A trace whose timing is off by one cycle anywhere is rejected."""
    cfg = _cfg("linux-2.4", "uniform", 3, 16, 1, 8)
    run(cfg, tmp_path / "run")
    ops = [list(workloads.build_cpu(cfg, c)[0]) for c in range(cfg.machine.cpus)]
    events = ring_ref.load_events(tmp_path / "run")
    rnd = random.Random(5)
    for field, kinds in (("stall", ("flush",)), ("lock_wait", ("kmap",)), ("hits", ("access",)),
                         ("t_ack", ("ipi",)), ("cycles", ("tlb_miss",))):
        bad = [dict(e) for e in events]
        i = rnd.choice([k for k, e in enumerate(bad) if e["ev"] in kinds])
        bad[i][field] += 1
        with pytest.raises(ref.Mismatch):
            ref.check_run(cfg, ops, bad)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), policy=st.sampled_from(POLICY_NAMES), cpus=st.integers(1, 5),
       ring=st.integers(6, 24), nesting=st.integers(1, 3), workload=st.sampled_from(GENERATED_WORKLOADS),
       tick=st.sampled_from([3000, 20000, 2_500_000]), lazy_max=st.none() | st.integers(1, 24))
def test_random_configs_match_the_references(tmp_path_factory, seed, policy, cpus, ring, nesting, workload, tick,
                                             lazy_max):
    if cpus * (nesting - 1) >= ring:   # every CPU could hold the whole ring and sleep forever
        nesting = 1
    more = {"policy.tick": tick, "policy.lazy_max": lazy_max}
    _check(_cfg(policy, workload, cpus, ring, nesting, 8, more, seed=seed), tmp_path_factory.mktemp("r"))


def test_the_timing_reference_knows_every_built_in_policy():
    """reference_timing.py names the policies it models (it imports nothing from the model): all of them."""
    assert sorted(ref.SUPPORTED) == sorted(POLICY_NAMES)
