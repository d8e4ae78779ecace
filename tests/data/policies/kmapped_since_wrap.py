"""A naive flush policy, unsafe on purpose: linux-2.4's wrap flush, with IPIs only to the CPUs that kmapped
since the last wrap. It forgets a CPU that kmapped a page before a wrap and still held it: that CPU touches
the page again after the wrap's flush, lets it go, and keeps the translation past the next wrap."""

try:
    from smpsim import Policy
except ImportError:  # before smpsim.Policy was public
    from smpsim.model.policies import FlushPolicy as Policy


class KmappedSinceWrap(Policy):
    name = "kmapped-since-wrap"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.since: set[int] = set()

    def kmapped(self, cpu, page):
        self.since.add(cpu)

    def wrap_flush(self, torn, cpu):
        targets = sorted(self.since - {cpu})
        self.since.clear()
        return self.flush("all", None, targets, len(torn))
