"""A frozen copy of the list-building workload generator as it was before programs were streamed.

tests/test_workloads.py checks that smpsim.model.workloads streams exactly these operations, in this order,
for every generated kind: the seeded sequence, and with it every pinned counter and digest, must not move.
Do not edit it to follow the product; it is the reference the product is held to.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from itertools import accumulate
from typing import Any, Callable

Op = tuple
_MAX_REDRAWS = 64
_COMPUTE_TABLE_MAX = 1 << 16
_PINGPONG_SPAN = 64


def build_cpu(cfg, cpu: int) -> list[Op]:
    if cfg.workload.kind == "pingpong":
        return _pingpong(cfg, cpu)
    return _generated(cfg, cpu, cfg.workload.kind)


class _ComputeOps:
    """Stands in for the compute table when 2*mean+1 is too large to precompute."""

    __slots__ = ()

    def __getitem__(self, c: int) -> Op:
        return ("compute", c)


def _compute_table(mean: int) -> tuple[Any, int]:
    """(table, n): ``table[int(rand() * n)]`` is ("compute", c) with c uniform in [0, 2*mean].

    The table holds shared immutable tuples, which saves building one tuple per compute op.
    """
    n = 2 * mean + 1 if mean > 0 else 1
    if n <= _COMPUTE_TABLE_MAX:
        return [("compute", c) for c in range(n)], n
    return _ComputeOps(), n



def _zipf_tables(seed: int, pages: int, s: float) -> tuple[list[float], list[int]]:
    """Cumulative weights of ranks 1..pages (weight r**-s) and the rank -> page permutation."""
    cdf = list(accumulate(r ** -s for r in range(1, pages + 1)))
    perm = list(range(pages))
    random.Random(f"{seed}:zipf-perm").shuffle(perm)
    return cdf, perm


def _page_picker(cfg, cpu: int, rand: Callable[[], float]) -> tuple[Callable[[int], int], int]:
    """(pick(i) -> page of the i-th kmap, number of distinct pages pick can return)."""
    w = cfg.workload
    pages = w.pages
    kind = w.kind
    if kind == "uniform":
        return (lambda i: int(rand() * pages)), pages
    if kind == "zipf":
        cdf, perm = _zipf_tables(cfg.seed, pages, float(w.zipf_s))
        total = cdf[-1]
        last = pages - 1

        def pick_zipf(i: int) -> int:
            r = bisect_right(cdf, rand() * total)
            return perm[r if r <= last else last]
        return pick_zipf, pages
    if kind == "stream":
        start = cpu * (pages // cfg.machine.cpus)
        return (lambda i: (start + i) % pages), pages
    if kind == "shared":
        hot = min(w.hot_pages, pages)
        cold = pages - hot
        frac = w.hot_fraction
        if cold == 0:
            return (lambda i: int(rand() * hot)), pages

        def pick_shared(i: int) -> int:
            if rand() < frac:
                return int(rand() * hot)
            return hot + int(rand() * cold)
        return pick_shared, pages
    raise AssertionError(f"no page picker for workload kind {kind!r}")


def _generated(cfg, cpu: int, kind: str) -> list[Op]:
    w = cfg.workload
    total = w.kmaps_per_cpu
    if total == 0:
        return []
    rng = random.Random(f"{cfg.seed}:{cpu}:{kind}")
    rand = rng.random
    pick, distinct = _page_picker(cfg, cpu, rand)
    nest = min(w.nesting, distinct)
    sequential = kind == "stream"  # consecutive pages: distinct within a group by construction
    pages = w.pages

    think_t, think_n = _compute_table(w.think)
    hold_t, hold_n = _compute_table(w.hold)
    accesses = range(w.accesses_per_kmap)
    burst = w.access_burst
    wf = w.write_fraction

    ops: list[Op] = []
    app = ops.append
    if nest == 1:
        for i in range(total):
            app(think_t[int(rand() * think_n)])
            p = pick(i)
            app(("kmap", p))
            acc_w, acc_r = ("access", p, burst, True), ("access", p, burst, False)
            for _ in accesses:
                app(hold_t[int(rand() * hold_n)])
                app(acc_w if rand() < wf else acc_r)
            app(("kunmap", p))
        return ops

    i = 0
    while i < total:
        group: list[int] = []
        for _ in range(min(nest, total - i)):
            app(think_t[int(rand() * think_n)])
            p = pick(i)
            if not sequential and p in group:
                tries = 0
                while p in group and tries < _MAX_REDRAWS:
                    p = pick(i)
                    tries += 1
                while p in group:  # pathological (e.g. hot_fraction = 1 with few hot pages): probe
                    p = (p + 1) % pages
            group.append(p)
            app(("kmap", p))
            acc_w, acc_r = ("access", p, burst, True), ("access", p, burst, False)
            for _ in accesses:
                app(hold_t[int(rand() * hold_n)])
                app(acc_w if rand() < wf else acc_r)
            i += 1
        for p in reversed(group):
            app(("kunmap", p))
    return ops


def _pingpong(cfg, cpu: int) -> list[Op]:
    """Pairs (0, 1), (2, 3), ...: the even CPU writes page base + r % span in round r, the odd CPU
    then reads it.

    Both CPUs of a pair draw their think/hold times from the even CPU's generator
    (``f"{seed}:{even}:pingpong"``), so the odd CPU runs the same schedule shifted by an initial
    ``compute(think + hold * accesses_per_kmap)`` (means): it kmaps page r after the even CPU has
    kunmapped it. A lone last CPU (odd CPU count) behaves like an even one. Each pair cycles through its
    own ``span`` pages (span = min(64, pages // pairs), at least 1) so pairs do not collide as long as
    ``pages`` allows it. With nesting k, k consecutive rounds' pages are held at once.
    """
    w = cfg.workload
    total = w.kmaps_per_cpu
    if total == 0:
        return []
    ncpus = cfg.machine.cpus
    pair = cpu // 2
    reader = cpu % 2 == 1
    pairs = (ncpus + 1) // 2
    pages = w.pages
    span = min(max(1, min(_PINGPONG_SPAN, pages // pairs)), pages)
    base = (pair * span) % pages

    rng = random.Random(f"{cfg.seed}:{2 * pair}:pingpong")
    rand = rng.random
    think_t, think_n = _compute_table(w.think)
    hold_t, hold_n = _compute_table(w.hold)
    accesses = range(w.accesses_per_kmap)
    burst = w.access_burst
    write = not reader
    nest = min(w.nesting, span)

    ops: list[Op] = []
    app = ops.append
    if reader:
        app(("compute", w.think + w.hold * w.accesses_per_kmap))
    r = 0
    while r < total:
        group: list[int] = []
        for _ in range(min(nest, total - r)):
            app(think_t[int(rand() * think_n)])
            p = (base + r % span) % pages
            group.append(p)
            app(("kmap", p))
            acc = ("access", p, burst, write)
            for _ in accesses:
                app(hold_t[int(rand() * hold_n)])
                app(acc)
            r += 1
        for p in reversed(group):
            app(("kunmap", p))
    return ops
