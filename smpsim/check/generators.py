"""The generator of the checker's ``python`` workload case (``workload.generator =
"smpsim.check.generators:neighbours"``): a module spec, so it loads in every CPU process."""

from __future__ import annotations


def neighbours(cpu, rng, cfg):
    """CPU c maps pages it shares with CPU c+1, holding two at a time now and then: slots move between
    CPUs and are reused while their old translations sit in other CPUs' TLBs."""
    w = cfg.workload
    for _ in range(w.kmaps_per_cpu):
        page = (cpu + rng.randrange(2)) * 5 % w.pages + rng.randrange(3)
        yield ("compute", rng.randrange(2 * w.think + 1))
        yield ("kmap", page)
        yield ("access", page, 1 + rng.randrange(4), rng.random() < w.write_fraction)
        if rng.random() < 0.3:
            other = (page + 1) % w.pages
            yield ("kmap", other)
            yield ("access", other, 1, False)
            yield ("kunmap", other)
        yield ("compute", rng.randrange(2 * w.hold + 1))
        yield ("access", page, 1, False)
        yield ("kunmap", page)
