"""Flush policies: what happens to pkmap slots and TLBs when slots are torn down.

A policy is behaviour, called by the coordinator under kmap_lock at four points:

- ``wrap(ring, cpu)``: the ring cursor wrapped to 0 (map_new_virtual); returns the slots torn down and the
  flush that follows (flush_all_zero_pkmaps plus the flush, in the kernel);
- ``unmap_flush(ring, slot, cpu)``: kunmap_high dropped ``slot`` to count 1; a policy that tears slots
  down here (eager, vmap-lazy's purge) does so on the ring and returns the flush that makes it safe;
- ``rescue(ring, cpu)``: a scan found no free slot; a policy may free some (vmap-lazy purges) instead of
  letting the caller sleep;
- ``kmapped(cpu, page)`` / ``kunmapped(cpu, page)``: bookkeeping of who may cache a pkmap translation.

A Flush names the pages (after the policy's own flush ceiling), the CPUs that get an IPI, and, for LATR,
the tick at which the other CPUs invalidate instead. Timing and delivery are the coordinator's.
"""

from __future__ import annotations

from dataclasses import dataclass

# 32 MB worth of 4 KiB pages, the unit of lazy_max_pages() (mm/vmalloc.c), and the x86-32 vmalloc area it
# is measured against (__VMALLOC_RESERVE, 128 MB): the ratio scales the formula to the pkmap ring.
LAZY_UNIT_PAGES = (32 << 20) >> 12
VMALLOC_AREA_PAGES = (128 << 20) >> 12


@dataclass(frozen=True)
class Flush:
    scope: str                    # as recorded in the trace: "all", "range", "page", "local" or "lazy"
    vpns: tuple[int, ...] | None  # pages each flushed TLB invalidates; None = the whole TLB
    targets: tuple[int, ...]      # CPUs sent an IPI (synchronous, wait=1); the initiator always flushes itself
    slots: int                    # slots this teardown took to count 0
    tick: int | None = None       # LATR: the other CPUs invalidate vpns at their next tick of this period,
    deferred: tuple[int, ...] = ()  # ... and these slots (deferred on the ring) are free only after it


def next_tick(t: int, tick: int) -> int:
    """The first scheduler tick strictly after t (ticks at 0, tick, 2*tick, ... on every CPU)."""
    return (t // tick + 1) * tick


def fls(x: int) -> int:
    """The kernel's fls(): position of the most significant set bit, 1-based; fls(0) = 0."""
    return x.bit_length()


class FlushPolicy:
    name = ""
    uses_ring = True             # False: kmap_local slots, CPU-private
    flushes_only_at_wrap = False  # lets the coordinator look further ahead (Coordinator._time_to_wrap)

    def __init__(self, cfg):
        self.last_pkmap = cfg.machine.ring_size
        self.ncpu = cfg.machine.cpus
        self.flush_ceiling = cfg.policy.flush_ceiling
        self.ipi_latency = cfg.cost.ipi_latency

    # ---- helpers ----------------------------------------------------------------------------------
    def flush(self, scope: str, vpns, targets, slots: int, tick: int | None = None, deferred=()) -> Flush:
        """A Flush of vpns, made a full flush when above tlb_single_page_flush_ceiling [R11]."""
        if vpns is not None and len(vpns) > self.flush_ceiling:
            vpns = None
        return Flush(scope, None if vpns is None else tuple(vpns), tuple(targets), slots, tick, tuple(deferred))

    def others(self, cpu: int) -> list[int]:
        return [j for j in range(self.ncpu) if j != cpu]

    # ---- hooks ------------------------------------------------------------------------------------
    def wrap(self, ring, cpu: int) -> tuple[list[int], Flush | None]:
        torn = ring.flush_all_zero_pkmaps()
        return torn, self.wrap_flush(torn, cpu)

    def wrap_flush(self, torn: list[int], cpu: int) -> Flush | None:
        return None

    def unmap_flush(self, ring, slot: int, cpu: int) -> Flush | None:
        return None

    def rescue(self, ring, cpu: int) -> Flush | None:
        return None

    def kmapped(self, cpu: int, page: int) -> None:
        pass

    def kunmapped(self, cpu: int, page: int) -> None:
        pass

    def first_message(self, t: int) -> int | None:
        """The earliest time a message this policy sends because of a ring operation at or after t can take
        effect on a CPU (None: it sends none): the lookahead of conservative synchronization."""
        return t + self.ipi_latency


class Linux24(FlushPolicy):
    """2.4: flush_tlb_all() at every wrap, even when nothing was torn down [R3][R5]."""
    name = "linux-2.4"
    flushes_only_at_wrap = True

    def wrap_flush(self, torn, cpu):
        return self.flush("all", None, self.others(cpu), len(torn))


class Linux26(FlushPolicy):
    """flush_tlb_kernel_range over the whole pkmap window, skipped when nothing was torn down (2008 on) [R25][R1].

    Each CPU flushes everything when the window exceeds tlb_single_page_flush_ceiling [R11]."""
    name = "linux-2.6"
    flushes_only_at_wrap = True

    def wrap_flush(self, torn, cpu):
        return self.flush("range", range(self.last_pkmap), self.others(cpu), len(torn)) if torn else None


class Eager(FlushPolicy):
    """Tear down at kunmap and shoot the one page down on every CPU; the wrap then finds nothing to flush."""
    name = "eager"

    def unmap_flush(self, ring, slot, cpu):
        ring.teardown(slot)
        return self.flush("page", (slot,), self.others(cpu), 1)


class KmapLocal(FlushPolicy):
    """kmap_local / stack-based kmap_atomic: per-CPU slots, local INVLPG at unmap, no lock, no IPIs [R2][R13]."""
    name = "kmap-local"
    uses_ring = False

    def first_message(self, t):
        return None


class VmapLazy(Linux26):
    """vmalloc's lazy purge (mm/vmalloc.c): slots left at count 1 by kunmap accumulate; when lazy_max of
    them are waiting, one flush_tlb_kernel_range over the span they cover purges them all. The cursor's
    wrap tears nothing down; a scan that finds no free slot purges first (alloc_vmap_area's retry after
    purge_vmap_area_lazy) and sleeps only if nothing was waiting."""
    name = "vmap-lazy"
    flushes_only_at_wrap = False

    def __init__(self, cfg):
        super().__init__(cfg)
        lazy_max = cfg.policy.lazy_max
        if lazy_max is None:  # lazy_max_pages() = fls(num_online_cpus()) * 32 MB, scaled to the ring
            lazy_max = -(-self.last_pkmap * fls(self.ncpu) * LAZY_UNIT_PAGES // VMALLOC_AREA_PAGES)
        self.lazy_max = max(1, min(lazy_max, self.last_pkmap))

    def wrap(self, ring, cpu):
        return [], None

    def _purge(self, ring, cpu) -> Flush | None:
        torn = ring.flush_all_zero_pkmaps()
        if not torn:
            return None
        return self.flush("range", range(min(torn), max(torn) + 1), self.others(cpu), len(torn))

    def unmap_flush(self, ring, slot, cpu):
        return self._purge(ring, cpu) if ring.unused() >= self.lazy_max else None

    def rescue(self, ring, cpu):
        return self._purge(ring, cpu)


class TlbGen(Linux26):
    """The wrap flush of linux-2.6, sent only to CPUs that may cache a pkmap translation: those that used
    one since their last flush (x86's per-mm tlb_gen with mm_cpumask, applied to the pkmap window).

    The ring's flush generation counts flushes; each CPU records the generation of its last flush and of
    its last use. A use is a kmap, a kunmap ending one of its holds, or holding a page at all (a page held
    across a flush can be touched again and its translation refilled). The flush after a wrap drops
    every pkmap translation of the CPUs it reaches, so a CPU skipped holds none: it stays correct."""
    name = "tlb-gen"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.gen = 0
        self.flushed_gen = [0] * self.ncpu
        self.used_gen = [-1] * self.ncpu
        self.holds: list[dict[int, int]] = [{} for _ in range(self.ncpu)]  # mirrors each Cpu's held pages

    def kmapped(self, cpu, page):
        h = self.holds[cpu]
        h[page] = h.get(page, 0) + 1
        self.used_gen[cpu] = self.gen

    def kunmapped(self, cpu, page):
        h = self.holds[cpu]
        n = h.get(page)
        if n:  # as in Cpu.run: a kunmap ends this CPU's hold only if it holds the page
            if n == 1:
                del h[page]
            else:
                h[page] = n - 1
            self.used_gen[cpu] = self.gen

    def may_cache(self, cpu: int) -> bool:
        return self.used_gen[cpu] >= self.flushed_gen[cpu] or bool(self.holds[cpu])

    def wrap_flush(self, torn, cpu):
        if not torn:
            return None
        targets = [j for j in self.others(cpu) if self.may_cache(j)]
        self.gen += 1
        for j in (*targets, cpu):
            self.flushed_gen[j] = self.gen
        return self.flush("range", range(self.last_pkmap), targets, len(torn))


class Latr(Linux26):
    """LATR (Kumar et al., ASPLOS 2018): no IPIs. At a wrap the initiator invalidates the torn slots
    locally; every other CPU gets them on its lazy list and invalidates them at its next scheduler tick
    (ticks every policy.tick cycles, at the same times on every CPU). The slots stay out of use until
    the last CPU has done so: map_new_virtual skips them, and a kmap may sleep because of them."""
    name = "latr"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tick = cfg.policy.tick

    def wrap(self, ring, cpu):
        torn = ring.flush_all_zero_pkmaps()
        if not torn:
            return torn, None
        if self.ncpu == 1:  # nobody else can cache them
            return torn, self.flush("lazy", torn, (), len(torn))
        ring.defer(torn)
        return torn, self.flush("lazy", torn, (), len(torn), self.tick, torn)

    def first_message(self, t):
        return next_tick(t, self.tick)


class NoIpi(FlushPolicy):
    """BROKEN on purpose: the wrap flush reaches only the initiator's own TLB."""
    name = "no-ipi"

    def wrap_flush(self, torn, cpu):
        return self.flush("local", None, (), len(torn))

    def first_message(self, t):
        return None


class NoFlush(FlushPolicy):
    """BROKEN on purpose: slots are torn down at wrap but no TLB is ever flushed."""
    name = "no-flush"

    def first_message(self, t):
        return None


POLICIES: dict[str, type[FlushPolicy]] = {
    p.name: p for p in (Linux24, Linux26, Eager, KmapLocal, VmapLazy, TlbGen, Latr, NoIpi, NoFlush)
}
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def unknown_policy(name: str) -> str:
    """The message for a policy name that is not registered: the closest one, and the choices."""
    from smpsim.inputs import did_you_mean, quote

    return f"no policy {quote(name)}{did_you_mean(name, POLICIES)} (the policies: {', '.join(POLICIES)})"


def policy_class(name: str) -> type[FlushPolicy]:
    """The registered policy called ``name``; ValueError saying the closest name when there is none."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(unknown_policy(name)) from None


def make_policy(cfg) -> FlushPolicy:
    return policy_class(cfg.policy.name)(cfg)
