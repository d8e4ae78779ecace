"""The persistent-kmap ring of mm/highmem.c: pkmap_count, last_pkmap_nr, pkmap_page_table, page_address.

Pure data plus the kernel's own algorithms; timing and flushing belong to the coordinator and the policy.
pkmap_count[i]: 0 = free and clean on every CPU; 1 = unused but possibly still cached somewhere (must not
be reused before a flush); n > 1 = n - 1 users. A policy that invalidates lazily (LATR) defers torn-down
slots: at count 0 with no PTE, but not reused until every CPU has invalidated them (`deferred`).
"""

from __future__ import annotations

from collections.abc import Callable


class PkmapRing:
    """The pkmap ring's state as mm/highmem.c keeps it: pkmap_count, pkmap_page_table, page_address,
    last_pkmap_nr, and the slots torn down but not yet invalidated everywhere."""
    __slots__ = ("last_pkmap", "pkmap_count", "pkmap_page_table", "page_address", "last_pkmap_nr", "deferred")

    def __init__(self, last_pkmap: int):
        self.last_pkmap = last_pkmap
        self.pkmap_count = [0] * last_pkmap
        self.pkmap_page_table: list[int | None] = [None] * last_pkmap  # slot -> page (the PTE)
        self.page_address: dict[int, int] = {}                         # page -> slot (page->virtual)
        self.last_pkmap_nr = 0
        self.deferred: set[int] = set()  # torn down, awaiting invalidation on some CPU: not free yet

    def flush_all_zero_pkmaps(self) -> list[int]:
        """Tear down every slot at count 1 (count -> 0, PTE cleared, page dissociated); returns those slots.

        The caller owes the TLB flush that makes the 0 true ("clean on every CPU")."""
        torn = []
        count, pte = self.pkmap_count, self.pkmap_page_table
        for i in range(self.last_pkmap):
            if count[i] != 1:
                continue
            page = pte[i]
            if page is None:
                raise AssertionError(f"pkmap slot {i} at count 1 has no PTE")  # the kernel BUG()s here
            count[i] = 0
            pte[i] = None
            del self.page_address[page]
            torn.append(i)
        return torn

    def map_new_virtual(self, page: int, on_wrap: Callable[[int], None]) -> tuple[int | None, int]:
        """The slot search of map_new_virtual; returns (slot or None if the caller must sleep, slots probed).

        on_wrap(probes so far) runs flush_all_zero_pkmaps plus the policy's flush each time the cursor
        wraps to 0."""
        n = self.last_pkmap
        count = self.pkmap_count
        deferred = self.deferred
        budget = n
        probes = 0
        while True:
            self.last_pkmap_nr = (self.last_pkmap_nr + 1) % n
            if self.last_pkmap_nr == 0:
                on_wrap(probes)
                budget = n
            probes += 1
            if count[self.last_pkmap_nr] == 0 and not (deferred and self.last_pkmap_nr in deferred):
                break
            budget -= 1
            if budget:
                continue
            return None, probes
        slot = self.last_pkmap_nr
        self.pkmap_page_table[slot] = page
        count[slot] = 1
        self.page_address[page] = slot
        return slot, probes

    def teardown(self, slot: int) -> int:
        """Eager policy: take one slot from 1 to 0 now; returns the page it mapped."""
        page = self.pkmap_page_table[slot]
        self.pkmap_count[slot] = 0
        self.pkmap_page_table[slot] = None
        del self.page_address[page]
        return page

    def unused(self) -> int:
        """Slots at count 1: unmapped by every user, their translations possibly still cached."""
        return self.pkmap_count.count(1)

    def defer(self, slots: list[int]) -> None:
        self.deferred.update(slots)

    def release(self, slots: list[int]) -> None:
        """Deferred slots become free: every CPU has invalidated them."""
        self.deferred.difference_update(slots)

    def free_ahead(self) -> int:
        """Free slots between the cursor and the wrap: the new mappings that must come before it."""
        ahead = self.pkmap_count[self.last_pkmap_nr + 1:]
        free = ahead.count(0)
        if self.deferred:
            free -= sum(1 for s in self.deferred if s > self.last_pkmap_nr)
        return free

    def describe(self) -> str:
        c = self.pkmap_count
        free = sum(1 for x in c if x == 0) - len(self.deferred)
        unused = sum(1 for x in c if x == 1)
        held = len(c) - free - unused - len(self.deferred)
        users = sum(x - 1 for x in c if x > 1)
        lazy = f"{len(self.deferred)} awaiting lazy invalidation, " if self.deferred else ""
        return (f"ring of {len(c)} slots: {free} free (count 0), {unused} awaiting flush (count 1), "
                f"{lazy}{held} in use by {users} kmaps; last_pkmap_nr={self.last_pkmap_nr}")
