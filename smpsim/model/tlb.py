"""A per-CPU TLB: set-associative, LRU replacement, holding kernel highmem translations (vpn -> frame).

Only translations the simulator tracks (pkmap and kmap_local addresses) live here. The rest of a CPU's
working set is the `background` count: a full flush drops it too, and its refill is charged afterwards
(the collateral cost of a full flush: what the CPU walks back in after it).

Shaped for mypyc (smpsim/native.py compiles it): dict.get then del, not pop(k, None) (compiled code has no
fast pop with a default).
"""

from __future__ import annotations


class Tlb:
    """One CPU's TLB for kernel translations: set-associative, each set in LRU order, and the background
    working set a full flush drops."""
    __slots__ = ("entries", "ways", "nsets", "sets", "background")

    def __init__(self, entries: int, ways: int, background: int = 0):
        if ways < 1 or entries % ways:
            raise ValueError("ways must divide entries")
        self.entries, self.ways, self.background = entries, ways, background
        self.nsets = entries // ways
        # One dict per set; insertion order is recency order (first = least recently used).
        self.sets: list[dict[int, int]] = [{} for _ in range(self.nsets)]

    def translate(self, vpn: int, walked: int) -> int | None:
        """An access through vpn: the cached frame on a hit (refreshing its LRU position), else None after
        the page walk filled in ``walked`` (evicting the set's least recently used entry if full)."""
        s = self.sets[vpn % self.nsets]
        frame = s.get(vpn)
        if frame is None:
            if len(s) >= self.ways:
                del s[next(iter(s))]
        else:
            del s[vpn]  # re-inserted last: the most recently used
        s[vpn] = walked if frame is None else frame
        return frame

    def invalidate_pages(self, vpns) -> list[int]:
        """INVLPG each vpn; returns the vpns that were cached."""
        sets, nsets = self.sets, self.nsets
        return [v for v in vpns if sets[v % nsets].pop(v, None) is not None]

    def invalidate_all(self) -> list[int]:
        """Full flush (CR4.PGE toggle): drops everything, global entries included; returns the vpns dropped."""
        dropped = [v for s in self.sets for v in s]
        for s in self.sets:
            s.clear()
        return dropped

    def cached(self) -> list[tuple[int, int]]:
        """(vpn, frame) of every entry, sorted by vpn (for invariant checks)."""
        return sorted(kv for s in self.sets for kv in s.items())

    def snapshot(self) -> list:
        """Each set's [vpn, frame] pairs in LRU order (first = least recently used): plain msgpack-able data."""
        return [[[v, f] for v, f in s.items()] for s in self.sets]

    def restore(self, state: list) -> None:
        if len(state) != self.nsets:
            raise ValueError(f"a TLB snapshot of {len(state)} sets for a TLB of {self.nsets}")
        self.sets = [{v: f for v, f in pairs} for pairs in state]
