"""vmalloc's lazy accounting (mm/vmalloc.c, https://github.com/torvalds/linux/blob/master/mm/vmalloc.c), pure.

A freed vmap area is not flushed: free_vmap_area_noflush() puts it on a lazy list and adds its size in
pages (guard page included) to ``vmap_lazy_nr``. Once that count EXCEEDS ``lazy_max_pages()`` a drain is
scheduled; __purge_vmap_area_lazy() takes every lazy area (of every vmap node since 6.9: one purge drains
them all), flushes one kernel range from the lowest start to the highest end of them
(flush_tlb_kernel_range) and subtracts their pages. Here the drain runs at once, at the free that crossed
the limit; in the kernel it runs on a workqueue soon after, so frees that land in between join it.

``LazyVmap`` replays a sequence of allocations and frees (addresses in bytes, sizes in pages) and returns
the purges. The ring-scaled vmap-lazy policy (smpsim/model/policies.py) takes ``lazy_max_pages`` from here.
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
# lazy_max_pages()'s unit: 32 MB worth of pages.
LAZY_UNIT_PAGES = (32 << 20) >> PAGE_SHIFT


def fls(x: int) -> int:
    """The kernel's fls(): position of the most significant set bit, 1-based; fls(0) = 0."""
    return x.bit_length()


def lazy_max_pages(ncpus: int) -> int:
    """mm/vmalloc.c lazy_max_pages(): fls(num_online_cpus()) * (32 MB >> PAGE_SHIFT)."""
    return fls(ncpus) * LAZY_UNIT_PAGES


def purge_ipis(ncpus: int) -> int:
    """IPIs of one purge's flush_tlb_kernel_range on x86 without INVLPGB: on_each_cpu() reaches every other
    online CPU. Kernel mappings are global, so a CPU in lazy-TLB mode is not skipped (that applies to user
    mm flushes only)."""
    return max(0, ncpus - 1)


@dataclass(frozen=True)
class Purge:
    """One purge: the areas and pages it took off the lazy list and the range it flushed (bytes)."""
    after: int            # index in the replayed sequence of the free that crossed the limit
    areas: int
    pages: int
    start: int | None     # lowest start of the purged areas (None: some were of unknown address)
    end: int | None       # highest end (start + size, guard page included)
    ipis: int

    @property
    def span_pages(self) -> int | None:
        return None if self.start is None or self.end is None else (self.end - self.start) >> PAGE_SHIFT


class LazyVmap:
    """vmap_lazy_nr and the lazy list for ``ncpus`` online CPUs.

    ``lazy_pages``/``lazy_areas``: what was already waiting when the replay starts (areas freed by others
    before the trace began, whose addresses are not known: the first purge counts them and has no span).
    """

    def __init__(self, ncpus: int, lazy_pages: int = 0, lazy_areas: int = 0):
        self.ncpus = ncpus
        self.limit = lazy_max_pages(ncpus)
        self.lazy_nr = lazy_pages
        self._unknown_areas = lazy_areas
        # (start, pages) of the areas waiting for a purge: a list, as a replayed trace may reuse an address the
        # kernel had purged already (its drain runs later than here)
        self._lazy: list[tuple[int, int]] = []
        self._busy: dict[int, int] = {}   # start -> pages, allocated areas
        self.steps = 0

    def alloc(self, start: int, pages: int) -> None:
        self._busy[start] = pages
        self.steps += 1

    def size_of(self, start: int) -> int | None:
        """Pages of a busy area, or None if it was allocated before the replay began."""
        return self._busy.get(start)

    def free(self, start: int, pages: int | None = None) -> Purge | None:
        """vfree of the area at ``start``: lazily freed; returns the purge it causes, if any. ``pages`` is
        needed only for an area allocated before the replay began."""
        known = self._busy.pop(start, None)
        size = known if known is not None else pages
        if size is None:
            raise ValueError(f"free of the area at {start:#x}: not allocated in this replay and no size given")
        self.lazy_nr += size
        self._lazy.append((start, size))
        self.steps += 1
        return self.purge() if self.lazy_nr > self.limit else None

    def purge(self) -> Purge:
        """__purge_vmap_area_lazy(): every lazy area goes, after one range flush over all of them."""
        known = self._lazy and not self._unknown_areas  # the span of areas of unknown address is unknown
        start = min(s for s, _ in self._lazy) if known else None
        end = max(s + (p << PAGE_SHIFT) for s, p in self._lazy) if known else None
        p = Purge(self.steps - 1, len(self._lazy) + self._unknown_areas, self.lazy_nr, start, end,
                  purge_ipis(self.ncpus))
        self._lazy.clear()
        self._unknown_areas = 0
        self.lazy_nr = 0
        return p


def replay(ops, ncpus: int, lazy_pages: int = 0, lazy_areas: int = 0) -> list[Purge]:
    """Purges of a sequence of ("alloc", start, pages) and ("free", start, pages or None)."""
    m = LazyVmap(ncpus, lazy_pages, lazy_areas)
    out = []
    for kind, start, pages in ops:
        if kind == "alloc":
            m.alloc(start, pages)
        elif (p := m.free(start, pages)) is not None:
            out.append(p)
    return out
