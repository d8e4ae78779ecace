"""The generators of the checker's ``python`` workload cases (``workload.generator =
"smpsim.check.generators:neighbours"``): module specs, so they load in every CPU process."""

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


def migrated(cpu, rng, cfg):
    """A holder that migrates. CPU 0's task kmaps page 100, touches it, holds it across a wrap of CPU 1's
    (whose flush drops the translation), touches it again (refilling it) and migrates: CPU 1 kunmaps page
    100 for it (``kunmap_migrated``), then maps as many new pages as the ring has slots and holds them, so
    one takes page 100's slot after the wrap that tears it down. CPU 0 made no kmap or kunmap since the
    first wrap: a policy that counts only those as uses skips CPU 0's flush, and CPU 0, reading each held
    page (whose mapping it reuses: no wrap of its own), reads another page through the old translation."""
    ring = cfg.machine.last_pkmap
    step = 5_000  # cycles per kmap of CPU 1, generous: its phases end well before CPU 0's next move
    held = range(2000, 2000 + ring)
    if cpu == 0:
        yield ("kmap", 100)
        yield ("access", 100, 1, False)
        yield ("compute", 10_000 + 3 * ring * step)  # CPU 1 wraps the ring meanwhile, flushing CPU 0
        yield ("access", 100, 1, False)               # still held: the translation comes back
        yield ("compute", 5 * ring * step)            # migrated; CPU 1 kunmaps page 100 and fills the ring
        for page in held:
            yield ("kmap", page)
            yield ("access", page, 1, False)
            yield ("kunmap", page)
    elif cpu == 1:
        yield ("compute", 10_000)
        for page in range(1000, 1000 + 2 * ring):
            yield ("kmap", page)
            yield ("kunmap", page)
            yield ("compute", 1_000)
        yield ("compute", 4 * ring * step)
        yield ("kunmap_migrated", 100)
        for page in held:
            yield ("kmap", page)
        yield ("compute", 10 * ring * step)
        for page in reversed(held):
            yield ("kunmap", page)
