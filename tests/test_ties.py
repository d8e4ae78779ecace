"""Hand-built scripts for edges that random scripts and the pinned configs rarely reach: an IPI arriving in
the very cycle an operation starts, and a kunmap that takes a slot all the way to 0 with a sleeper waiting.
Each run is checked against the independent references (tests/reference_timing.py, reference_highmem.py),
and over a window of timings wide enough to cross the tie, so the test also shows the tie was reached.
(A mutation audit found each of these edges unguarded: the mutant is named in each test.)"""

from __future__ import annotations

import pytest

import reference_timing as ref
from script_helpers import A, C, K, U, run_script
from smpsim.model import workloads

# The costs the windows below are worked out with (the defaults as of writing, spelled out so a change of
# defaults moves nothing here).
COST = {"access": 4, "tlb_hit": 0, "page_walk": 30, "invlpg": 250, "full_flush": 500, "ipi_latency": 2500,
        "ipi_handler": 1000, "ipi_ack": 0, "ipi_broadcast_step": 1050, "lock_acquire": 50, "lock_hold": 100,
        "lock_handoff": 2200, "pkmap_scan": 2, "pte_write": 20, "wakeup_latency": 5000}


def _checked(tmp_path, ops, **kw):
    """Run a script and recompute every event with the references; (events, IPIs each CPU took while busy)."""
    tmp_path.mkdir()
    cfg, events = run_script(tmp_path, ops, cost=COST, **kw)
    busy: list[int] = []
    ref.check_run(cfg, [list(workloads.build_cpu(cfg, c)[0]) for c in range(cfg.machine.cpus)], events, busy)
    return events, busy


def _wraps_and_shoots_down(pages=range(10, 15)) -> list:
    """CPU 0 maps five pages one after another on a ring of 4: its fourth new mapping wraps and linux-2.4
    flushes every TLB, by IPI to CPU 1."""
    return [x for p in pages for x in (K(0, p), U(0, p))]


def test_an_ipi_arriving_as_an_access_starts_is_taken_first(tmp_path):
    """The IPI rule: a running CPU takes every IPI due by its clock, arrival in that very cycle included,
    before its next operation (an interrupt pending when an instruction starts is taken first). Over the
    window CPU 1's second access starts before, at, and after the shootdown's arrival: before it, the access
    hits; from the tie on, the flush has dropped the entry first and it misses. Mutant killed: service_ipis
    taking IPIs strictly before the clock (`<` for `<=`), so that the access at the tie hits."""
    hits = set()
    for gap in range(5234, 5243):
        ops = _wraps_and_shoots_down() + [K(1, 20), A(1, 20, n=1), C(1, gap), A(1, 20, n=1), U(1, 20)]
        events, _ = _checked(tmp_path / str(gap), ops, cpus=2, ring=4)
        hits.add(next(e["hits"] for e in events if e["ev"] == "access" and e["cpu"] == 1))
    assert hits == {0, 1}, "the window did not cross the tie: the second access always hit, or never"


def test_an_ipi_arriving_as_a_compound_call_is_made_moves_it(tmp_path):
    """A kmap and the kunmap that only compute separates from it go as one compound request; the coordinator
    places the kunmap where the CPU will make it, stretched by the IPIs due by then (Coordinator.
    _ipi_to_computing). Over the window the shootdown reaches CPU 1 before, at, and after the time of its
    kunmap; at the tie the CPU takes the IPI first, and the coordinator must move the call with it. Mutant
    killed: _ipi_to_computing moving the call only for IPIs strictly before it (the CPU then finds the call
    placed at a time it never got there: an engine-bug ModelError)."""
    busy = set()
    for gap in range(6186, 6195):
        ops = [C(0, 3000)] + [x for p in range(10, 15) for x in (K(0, p), A(0, p, n=1), U(0, p))]
        ops += [K(1, 20), C(1, gap), U(1, 20)]
        events, took = _checked(tmp_path / str(gap), ops, cpus=2, ring=4)
        assert [e["ev"] for e in events if e["cpu"] == 1] == ["kmap", "ipi", "kunmap"]
        busy.add(took[1])
    assert busy == {0, 1}, "the window did not cross the tie: the IPI always came while computing, or never"


@pytest.mark.parametrize("policy, keys", [("eager", {}), ("vmap-lazy", {"lazy_max": 1})])
def test_a_kunmap_that_frees_the_slot_wakes_the_sleepers(tmp_path, policy, keys):
    """kunmap_high wakes pkmap_map_wait when it leaves a slot reusable. With eager's teardown, or a purge
    of vmap-lazy, the kunmap takes the slot past 1 to 0: that frees it too, and the sleeper must be woken
    (mm/highmem.c wakes at count 1; the model at count <= 1). CPUs 0 and 1 hold both slots of a ring of 2;
    CPU 2's kmap sleeps until CPU 0's kunmap. Mutant killed: the wake-up only at count == 1 (CPU 2 then
    sleeps for ever: a deadlock)."""
    ops = [K(0, 1), C(0, 20000), U(0, 1), K(1, 2), C(1, 40000), U(1, 2),
           C(2, 2000), K(2, 3), A(2, 3), U(2, 3)]
    events, _ = _checked(tmp_path / "run", ops, cpus=3, ring=2, policy=policy, policy_keys=keys)
    kmap = next(e for e in events if e["ev"] == "kmap" and e["cpu"] == 2)
    woken = [e for e in events if e["ev"] == "wake"]
    assert kmap["slept"] and woken and woken[0]["cpu"] == 0 and 2 in woken[0]["woken"]
    assert kmap["t"] < next(e["t"] for e in events if e["ev"] == "kunmap" and e["cpu"] == 1)
