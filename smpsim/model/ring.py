"""The persistent-kmap ring of mm/highmem.c: pkmap_count, last_pkmap_nr, pkmap_page_table, page_address.

Pure data plus the kernel's own algorithms; timing and flushing belong to the coordinator and the policy.
pkmap_count[i]: 0 = free and clean on every CPU; 1 = unused but possibly still cached somewhere (must not
be reused before a flush); n > 1 = n - 1 users.
"""

from __future__ import annotations

from collections.abc import Callable


class PkmapRing:
    __slots__ = ("last_pkmap", "pkmap_count", "pkmap_page_table", "page_address", "last_pkmap_nr")

    def __init__(self, last_pkmap: int):
        self.last_pkmap = last_pkmap
        self.pkmap_count = [0] * last_pkmap
        self.pkmap_page_table: list[int | None] = [None] * last_pkmap  # slot -> page (the PTE)
        self.page_address: dict[int, int] = {}                         # page -> slot (page->virtual)
        self.last_pkmap_nr = 0

    def lookup(self, page: int) -> int | None:
        return self.page_address.get(page)

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
        budget = n
        probes = 0
        while True:
            self.last_pkmap_nr = (self.last_pkmap_nr + 1) % n
            if self.last_pkmap_nr == 0:
                on_wrap(probes)
                budget = n
            probes += 1
            if count[self.last_pkmap_nr] == 0:
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

    def describe(self) -> str:
        c = self.pkmap_count
        free = sum(1 for x in c if x == 0)
        unused = sum(1 for x in c if x == 1)
        held = len(c) - free - unused
        users = sum(x - 1 for x in c if x > 1)
        return (f"ring of {len(c)} slots: {free} free (count 0), {unused} awaiting flush (count 1), "
                f"{held} in use by {users} kmaps; last_pkmap_nr={self.last_pkmap_nr}")
