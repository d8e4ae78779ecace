"""The safe-time rule, checked at every step of the engine core: no IPI reaches a CPU earlier than a safe
time already sent to it (a CPU may have run up to just below that time, so an earlier IPI would arrive in
its past). The pinned configs hide a lookahead one cycle too generous; random small scripts with cheap locks
(lock_acquire = 0), short ticks and no broadcast delay find some such bugs, and the hand-built scripts at the
end reach the tightest bounds on purpose (random ones rarely do: a request exactly at its bound, a ring call
just past the scan window)."""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smpsim.engines.inline import InlineEngine
from smpsim.trace.recorder import Recorder
from smpsim.model.errors import DeadlockError
from smpsim.model.messages import RUNNING, Ipi

from registries import RING_POLICIES  # kmap_local sends no IPI, and random scripts break its stack order
from script_helpers import A, C, K, U, script_cfg, scripts, write_script
from smpsim.model.cpu import Cpu


def early_ipis(cfg) -> tuple[list[str], list[str], int]:
    """Drive the inline engine step by step; every IPI that comes earlier than a safe time, every
    disagreement between a CPU's port and the coordinator on that CPU's bound, and how many IPIs were sent.

    Two checks of the IPIs, on what the core hands the transport: an IPI to a CPU comes no earlier than the
    safe time that CPU already has; and no earlier than any safe time the core has computed (the promise it
    could have sent any CPU: a lookahead one cycle too generous breaks this one even when no CPU used it).
    And once every batch is in, a running CPU's port believes the bound the coordinator has for it
    (model/lookahead.py: both sides work it out, the port to know when the core counts its CPU as waiting)."""
    engine = InlineEngine(cfg, Recorder(cfg, None, "inline"))
    core = engine.core
    coord = core.coord
    given_safe = [-1] * cfg.machine.cpus   # the largest safe time each CPU has been sent
    early: list[str] = []
    mismatched: list[str] = []
    ipis = 0
    downs = core.start()
    promised = core.safe                   # the largest safe time computed before this step's IPIs
    step = 0
    while True:
        for c, down in downs:
            for msg in down.msgs:
                if type(msg) is Ipi:
                    ipis += 1
                    what = f"step {step}: IPI from CPU {msg.src} for t={msg.t_recv} to CPU {c}"
                    if msg.t_recv < given_safe[c]:
                        early.append(f"{what}, which already had safe time {given_safe[c]}")
                    if msg.t_recv < promised:
                        early.append(f"{what}, below the safe time {promised} the core had computed")
            given_safe[c] = max(given_safe[c], down.safe)
        promised = core.safe
        engine.deliver(downs)
        core.release()
        if core.complete():
            return early, mismatched, ipis
        downs = engine.step()
        step += 1
        for c, port in enumerate(engine.ports):  # a CPU with a reply on its way is not running yet
            if coord.status[c] == RUNNING and port.cpu.state == RUNNING and port.believed() != coord.lb[c]:
                mismatched.append(f"step {step}: CPU {c}'s port believes its bound is {port.believed()}, "
                                  f"the coordinator has {coord.lb[c]}")


COSTS = st.fixed_dictionaries({}, optional={
    "lock_acquire": st.sampled_from([0, 1, 50]),
    "lock_hold": st.sampled_from([1, 100]),
    "pkmap_scan": st.sampled_from([0, 2]),
    "pte_write": st.sampled_from([0, 20]),
    "ipi_latency": st.sampled_from([1, 2500]),
    "ipi_broadcast_step": st.sampled_from([0, 1050]),
    "lock_handoff": st.sampled_from([0, 2200]),
    "wakeup_latency": st.sampled_from([0, 5000]),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scripts(policies=RING_POLICIES), cost=COSTS, tick=st.sampled_from([1000, 3000, 2_500_000]),
       ceiling=st.sampled_from([0, 4, 33]))
def test_no_ipi_reaches_a_cpu_before_its_safe_time(case, cost, tick, ceiling):
    ncpu, ring, policy, ops = case
    keys = {"flush_ceiling": ceiling} | ({"tick": tick} if policy == "latr" else {})
    with tempfile.TemporaryDirectory() as d:
        cfg = script_cfg(write_script(Path(d) / "ops.jsonl", ops), cpus=ncpu, ring=ring, policy=policy,
                         cost=cost, policy_keys=keys)
        try:
            early, mismatched, _ = early_ipis(cfg)
        except DeadlockError:
            return
    assert not early, "\n".join(early[:5])
    assert not mismatched, "\n".join(mismatched[:5])


def test_the_safe_time_check_sees_ipis():
    """The property is not vacuous: a 2-CPU script whose wraps send IPIs, with locks costing nothing."""
    ops = [x for p in range(1, 12) for x in (K(0, p), U(0, p))] + [C(1, 500)] * 30
    with tempfile.TemporaryDirectory() as d:
        cfg = script_cfg(write_script(Path(d) / "ops.jsonl", ops), cpus=2, ring=4, cost={"lock_acquire": 0})
        early, mismatched, ipis = early_ipis(cfg)
    assert not early and not mismatched and ipis >= 2


# Costs that make the bounds exact: no lock acquire, scan, PTE write or page walk, one cycle of lock hold,
# access and IPI latency. A request that follows an access then comes exactly at its CPU's bound.
TIGHT = {"lock_acquire": 0, "lock_hold": 1, "pkmap_scan": 0, "pte_write": 0, "page_walk": 0, "tlb_hit": 0,
         "access": 1, "ipi_latency": 1, "ipi_broadcast_step": 0}


def _early(ops, **kw) -> tuple[list[str], int]:
    with tempfile.TemporaryDirectory() as d:
        cfg = script_cfg(write_script(Path(d) / "ops.jsonl", ops), **kw)
        early, mismatched, ipis = early_ipis(cfg)
    assert not mismatched, "\n".join(mismatched[:5])
    return early, ipis


@pytest.mark.parametrize("policy, tick", [("linux-2.4", None), ("latr", 7)])
def test_the_lookahead_is_exact_when_the_next_kmap_wraps(policy, tick):
    """The lookahead at its tightest: CPU 0's cursor is on the last slot with nothing free ahead, and its
    next request, due exactly at its bound, is the kmap that wraps. The safe time must then be no later
    than that wrap's first message: an IPI one lock hold after the bound (linux-2.4), the first tick after
    that (latr; every start time over one tick period). Mutants killed: wrap_distance counting one new
    mapping too many ((free_ahead + 1) * ...), and safe_time asking first_message one cycle late
    (bound + to_wrap + 1)."""
    keys = {"tick": tick} if tick else {}
    for start in range(tick or 1):
        # CPU 0 holds page 1, maps and drops 2 and 3 (count 1, torn down at the wrap), an access before
        # each request; the kmap of 4 wraps. CPU 1 only computes: it gets the flush.
        ops = [C(0, start), K(0, 1), A(0, 1, n=1), K(0, 2), U(0, 2), A(0, 1, n=1), K(0, 3), U(0, 3),
               A(0, 1, n=1), K(0, 4), U(0, 4), U(0, 1), C(1, 100_000)]
        early, ipis = _early(ops, cpus=2, ring=4, policy=policy, cost=TIGHT, policy_keys=keys)
        assert ipis >= 1 and not early, f"start {start}: " + "\n".join(early[:5])


def test_a_ring_call_just_past_the_scan_window_still_bounds_its_cpu():
    """Cpu._least_to_request looks `scan` operations ahead for the next ring call and gives INF (no request
    ever) only when the program ends within them. CPU 1 kmaps, then has `scan` operations without a ring
    call, give or take, then its kunmap, which eager answers with a shootdown IPI to CPU 0: however far
    the kunmap lies, CPU 0 (computing, never bounding) must not be let run past its arrival. Mutant
    killed: the program taken to end one operation early (`pc + scan + 1 >= end`), so a kunmap just past
    the window counts as none and CPU 0 gets an infinite safe time."""
    scan = inspect.signature(Cpu._least_to_request).parameters["scan"].default
    for computes in range(scan - 3, scan + 2):
        ops = [C(0, 1000)] * 5 + [K(1, 5), A(1, 5, n=1)] + [C(1, 1)] * computes + [U(1, 5)]
        early, ipis = _early(ops, cpus=2, ring=4, policy="eager")
        assert ipis == 1 and not early, f"{computes} computes: " + "\n".join(early[:5])
