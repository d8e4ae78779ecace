"""The lookahead of the conservative synchronization, in one place: how far a CPU may run before every
message that can reach it is known (its safe time), and the bounds on a CPU's next ring request that the
safe time rests on. The coordinator (Coordinator.safe_until and its lb of each CPU), the engine core (which
CPUs wait for a larger safe time) and each CPU (Cpu.request_bound, and CpuPort's mirror of its lb) ask here;
docs/architecture.md describes it. A policy's own part is its ``first_message`` (smpsim.Policy).

Compiled with the model (smpsim/native.py): every function is a native call from the hot loops.
"""

from __future__ import annotations

from typing import Final

from smpsim.model.messages import INF, sat_add
from smpsim.model.policies import Policy

# How far (cycles) a CPU that never takes kmap_lock may run ahead of the slowest: nothing else keeps such
# CPUs together, and the events waiting to be merged in canonical order would grow with the run.
RUN_AHEAD: Final = 1 << 18


def request_bound(uses_ring: bool, clock: int, least: int) -> int:
    """No ring request from a CPU before this time: its clock plus `least`, the least cycles its next
    operations take before its next kmap/kunmap (Cpu._least_to_request; IPI handlers and TLB misses only add
    to that). A CPU that never takes kmap_lock gives its clock: how far it got (safe_time keeps such CPUs
    together)."""
    return sat_add(clock, least) if uses_ring else clock


def after_reply(resumed: int, after: int) -> int:
    """A CPU's request bound once its reply is taken: when it resumes plus its request's `after`, the least
    cycles from the last call's return to its next ring request (Request.after). The coordinator sets the
    CPU's lb to it when it replies; the CPU's port works out the same from the reply it gets."""
    return sat_add(resumed, after)


def wrap_distance(free_ahead: int, lock_hold: int, pkmap_scan: int, pte_write: int) -> int:
    """A lower bound on the time from the next ring operation to the next wrap of the cursor.

    Between flushes no slot returns to 0 (deferred slots that become free only add new mappings before the
    wrap), so with `free_ahead` free slots ahead of the cursor the wrap comes no earlier than the
    (free_ahead + 1)-th new mapping, and kmap_lock serializes those: each holds the lock for at least
    lock_hold + pkmap_scan + pte_write."""
    return free_ahead * (lock_hold + pkmap_scan + pte_write) + lock_hold


def safe_time(policy: Policy, uses_ring: bool, bound: int, to_wrap: int) -> int:
    """The safe time: CPUs may start operations strictly before it, as every message that takes effect on a
    CPU earlier is known.

    bound: no ring operation starts earlier (Coordinator.bound; with CPUs that never take kmap_lock, the
    slowest one's clock, and they run at most RUN_AHEAD past it). to_wrap: wrap_distance for a policy that
    flushes only at a wrap, else 0. The policy says when the first message of a ring operation at or after
    bound + to_wrap takes effect (Policy.first_message; None: it sends none)."""
    if not uses_ring:
        return sat_add(bound, RUN_AHEAD)
    if bound >= INF:
        return INF
    first = policy.first_message(bound + to_wrap)
    return INF if first is None else first


def waits(running: bool, bound: int, safe: int) -> bool:
    """The waiting rule: a running CPU whose next ring request cannot come before the safe time it has
    (bound >= safe) may stop there with nothing to send, and goes on only with a larger safe time. The core
    keeps such CPUs to unblock; a CPU's port reports progress when the core would not know it waits."""
    return running and bound >= safe


def lets_on(bound: int, safe: int) -> bool:
    """Whether a safe time is worth sending a waiting CPU (or releases its held reply): it lets the CPU reach
    its next ring request, or, with none left (bound INF), any run further is worth it."""
    return safe > bound or bound >= INF
