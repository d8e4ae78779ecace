"""An unsafe flush policy that only a migration breaks: linux-2.4's wrap flush, with IPIs only to the CPUs
that kmapped or kunmapped since the last wrap (tlb-gen without its "holds a page now" clause). A CPU whose
task holds a page across a wrap touches it again after the wrap's flush and migrates; another CPU kunmaps
the page, and the next wrap tears the slot down without flushing the first CPU, which made no kmap or kunmap
since: its TLB keeps the old translation."""

from smpsim import Policy


class UsedSinceWrap(Policy):
    name = "used-since-wrap"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.since: set[int] = set()

    def kmapped(self, cpu, page):
        self.since.add(cpu)

    def kunmapped(self, cpu, page):
        self.since.add(cpu)

    def wrap_flush(self, torn, cpu):
        targets = sorted(self.since - {cpu})
        self.since.clear()
        return self.flush("all", None, targets, len(torn))
