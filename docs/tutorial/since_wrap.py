"""IPIs at a wrap only to the CPUs that kmapped since the last wrap (unsafe: see docs/extending.md)."""
from smpsim import Policy


class SinceWrap(Policy):
    name = "since-wrap"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.kmapped_since = set()          # CPUs that kmapped since the last wrap

    def kmapped(self, cpu, page):           # after kmap_high on `cpu`
        self.kmapped_since.add(cpu)

    def wrap(self, ring, cpu):              # map_new_virtual's cursor wrapped to 0 on `cpu`
        torn = ring.flush_all_zero_pkmaps() # every slot at pkmap_count 1 goes to 0
        targets = sorted(self.kmapped_since - {cpu})
        self.kmapped_since.clear()
        return torn, self.flush("all", None, targets, len(torn))
