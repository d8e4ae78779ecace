"""Flush policies: what happens to TLBs when pkmap slots are torn down.

A policy answers three questions for the coordinator: what flush follows flush_all_zero_pkmaps at a ring
wrap, whether kunmap tears a slot down at once (eager), and whether the ring is used at all (kmap-local).
Timing and delivery are the coordinator's; a policy only describes the flush.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flush:
    scope: str                 # "all", "range", "page" or "local" (as recorded in the trace)
    vpns: tuple[int, ...] | None  # pages to invalidate; None = the whole TLB
    remote: bool               # IPI every other CPU and wait for their acks (synchronous, wait=1)


class FlushPolicy:
    name = ""
    uses_ring = True           # False: kmap_local slots, CPU-private
    eager_teardown = False     # kunmap that drops a slot to 1 tears it down and shoots the page down
    sends_ipis = True
    flushes_only_at_wrap = False  # lets the coordinator look further ahead (Coordinator._time_to_wrap)

    def __init__(self, last_pkmap: int):
        self.last_pkmap = last_pkmap

    def wrap_flush(self, torn: list[int]) -> Flush | None:
        """The flush after flush_all_zero_pkmaps tore down `torn` slots at a ring wrap."""
        raise NotImplementedError

    def unmap_flush(self, slot: int) -> Flush:
        raise NotImplementedError


class Linux24(FlushPolicy):
    """2.4: flush_tlb_all() at every wrap, even when nothing was torn down [R3][R5]."""
    name = "linux-2.4"
    flushes_only_at_wrap = True

    def wrap_flush(self, torn):
        return Flush("all", None, True)


class Linux26(FlushPolicy):
    """flush_tlb_kernel_range over the whole pkmap window, skipped when nothing was torn down (2008 on) [R25][R1].

    Each CPU flushes everything when the window exceeds tlb_single_page_flush_ceiling [R11]."""
    name = "linux-2.6"
    flushes_only_at_wrap = True

    def wrap_flush(self, torn):
        return Flush("range", tuple(range(self.last_pkmap)), True) if torn else None


class Eager(FlushPolicy):
    """Tear down at kunmap and shoot the one page down on every CPU; the wrap then finds nothing to flush."""
    name = "eager"
    eager_teardown = True

    def wrap_flush(self, torn):
        return None

    def unmap_flush(self, slot):
        return Flush("page", (slot,), True)


class KmapLocal(FlushPolicy):
    """kmap_local / stack-based kmap_atomic: per-CPU slots, local INVLPG at unmap, no lock, no IPIs [R2][R13]."""
    name = "kmap-local"
    uses_ring = False
    sends_ipis = False

    def wrap_flush(self, torn):
        return None


class NoIpi(FlushPolicy):
    """BROKEN on purpose: the wrap flush reaches only the initiator's own TLB."""
    name = "no-ipi"
    sends_ipis = False

    def wrap_flush(self, torn):
        return Flush("local", None, False)


class NoFlush(FlushPolicy):
    """BROKEN on purpose: slots are torn down at wrap but no TLB is ever flushed."""
    name = "no-flush"
    sends_ipis = False

    def wrap_flush(self, torn):
        return None


POLICIES: dict[str, type[FlushPolicy]] = {
    p.name: p for p in (Linux24, Linux26, Eager, KmapLocal, NoIpi, NoFlush)
}


def make_policy(name: str, last_pkmap: int) -> FlushPolicy:
    return POLICIES[name](last_pkmap)
