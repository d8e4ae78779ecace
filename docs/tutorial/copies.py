def copies(cpu, rng, cfg):
    """copy_highpage: map a source and a destination page at once, copy, unmap both."""
    w = cfg.workload
    for _ in range(w.kmaps_per_cpu // 2):
        src, dst = rng.randrange(w.pages), rng.randrange(w.pages)
        if src == dst:
            continue
        yield ("kmap", src)
        yield ("kmap", dst)
        yield ("access", src, 64, False)      # read the source, 64 cache lines
        yield ("access", dst, 64, True)       # write the destination
        yield ("kunmap", dst)
        yield ("kunmap", src)
        yield ("compute", rng.randrange(2 * w.think + 1))
