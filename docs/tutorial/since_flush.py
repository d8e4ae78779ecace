"""IPIs at a wrap only to the CPUs that may still cache a pkmap translation: those that kmapped or
kunmapped since the last wrap, or hold a page now (the idea of tlb-gen; see docs/extending.md)."""
from collections import Counter

from smpsim import Policy


class SinceFlush(Policy):
    name = "since-flush"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.used_since = set()                           # CPUs that kmapped or kunmapped since the last wrap
        self.holds = [Counter() for _ in range(self.ncpu)]  # pages each CPU holds, with their counts

    def kmapped(self, cpu, page):
        self.used_since.add(cpu)
        self.holds[cpu][page] += 1

    def kunmapped(self, cpu, page):
        self.used_since.add(cpu)
        if self.holds[cpu][page]:                         # a migrated task's kunmap: held elsewhere
            self.holds[cpu][page] -= 1

    def wrap(self, ring, cpu):
        torn = ring.flush_all_zero_pkmaps()
        holding = {j for j in range(self.ncpu) if +self.holds[j]}
        targets = sorted((self.used_since | holding) - {cpu})
        self.used_since.clear()                           # every CPU that may cache one is flushed now
        return torn, self.flush("all", None, targets, len(torn))
