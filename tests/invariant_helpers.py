"""The section-7 invariant checks of test_invariants.py, run while the model runs: a ring whose pkmap_count
checks every transition against the context it happens in, the TLB checks, and the inline engine stepped
with both after every step (test_invariants.py's docstring says what each checks)."""

from __future__ import annotations

from smpsim.engines.inline import InlineEngine
from smpsim.trace.recorder import Recorder
from smpsim.model import messages as m
from smpsim.model.coordinator import Coordinator
from smpsim.model.cpu import LOCAL_BASE
from smpsim.model.events import to_record
from smpsim.model.ring import PkmapRing


class _TrackedCounts(list):
    """pkmap_count that checks every transition against the context it happens in."""

    def __init__(self, n: int, ring: "TrackedRing"):
        super().__init__([0] * n)
        self.ring = ring

    def __setitem__(self, i, v):
        old = list.__getitem__(self, i)
        ctx = self.ring.ctx[-1] if self.ring.ctx else None
        ok = ((old == 1 and v == 0 and ctx in ("flush_all_zero_pkmaps", "teardown"))
              or (old == 0 and v == 1 and ctx == "map_new_virtual")
              or (old >= 1 and v >= 1 and abs(v - old) == 1))
        if not ok and old == v:
            ok = True
        if not ok:
            self.ring.bad.append(f"pkmap_count[{i}]: {old} -> {v} in {ctx or 'kmap_high/kunmap_high'}")
        list.__setitem__(self, i, v)


class TrackedRing(PkmapRing):
    def __init__(self, last_pkmap: int):
        super().__init__(last_pkmap)
        self.ctx: list[str] = []
        self.bad: list[str] = []
        self.transitions_1_0 = 0
        self.pkmap_count = _TrackedCounts(last_pkmap, self)

    def _in(self, name, fn, *a):
        self.ctx.append(name)
        try:
            return fn(*a)
        finally:
            self.ctx.pop()

    def flush_all_zero_pkmaps(self):
        torn = self._in("flush_all_zero_pkmaps", super().flush_all_zero_pkmaps)
        self.transitions_1_0 += len(torn)
        return torn

    def teardown(self, slot):
        self.transitions_1_0 += 1
        return self._in("teardown", super().teardown, slot)

    def map_new_virtual(self, page, on_wrap):
        # on_wrap runs flush_all_zero_pkmaps, which pushes its own context.
        return self._in("map_new_virtual", super().map_new_virtual, page, on_wrap)


def pending_invalidations(coord: Coordinator, cpus, downs) -> list[list]:
    """Per CPU: the vpn sets (None = everything) it has been sent (or will be) but has not applied yet.
    downs: (CPU, model messages) on their way (in_flight)."""
    pend: list[list] = [[] for _ in cpus]
    for cpu in cpus:
        for _, _, ipi in cpu.inbox:
            pend[cpu.id].append(ipi.vpns)
        for result in cpu.results:
            pend[cpu.id] += [v for _, v in result.local_flushes]
    for dest, msgs in downs:
        for msg in msgs:
            if type(msg) is m.Ipi:
                pend[dest].append(msg.vpns)
            else:
                for result in msg.results:
                    pend[dest] += [v for _, v in result.local_flushes]
    for r in [e[2] for e in coord.pending] + list(coord.pkmap_map_wait):  # pending: (t, cpu, call)
        if r.cpu < 0:  # latr's timed release of slots, not a request
            continue
        pend[r.cpu] += [v for _, v in r.local_flushes]
        for result in r.results:
            pend[r.cpu] += [v for _, v in result.local_flushes]
    return pend


def _covered(pend: list, vpn: int) -> bool:
    return any(v is None or vpn in v for v in pend)


def check_state(coord: Coordinator, cpus, downs, where: str) -> list[str]:
    ring = coord.ring
    n = ring.last_pkmap
    count, pte = ring.pkmap_count, ring.pkmap_page_table
    bad = []
    # The ring's own bookkeeping: count 0 <=> no PTE; page_address is the inverse of the PTEs.
    for i in range(n):
        if (count[i] == 0) != (pte[i] is None):
            bad.append(f"{where}: slot {i} count {count[i]} with pte {pte[i]}")
        if pte[i] is not None and ring.page_address.get(pte[i]) != i:
            bad.append(f"{where}: pte[{i}] = page {pte[i]} but page_address says {ring.page_address.get(pte[i])}")
    if len(ring.page_address) != sum(p is not None for p in pte):
        bad.append(f"{where}: page_address has {len(ring.page_address)} entries for "
                   f"{sum(p is not None for p in pte)} PTEs")
    pend = pending_invalidations(coord, cpus, downs)
    for cpu in cpus:
        for vpn, frame in cpu.tlb_entries():
            if vpn >= LOCAL_BASE:
                idx = vpn - LOCAL_BASE - cpu.id * cpu.local_slots
                if not (0 <= idx < len(cpu.local_stack) and cpu.local_stack[idx] == frame):
                    bad.append(f"{where}: CPU {cpu.id} caches kmap_local vpn {vpn} -> {frame}, "
                               f"stack {cpu.local_stack}")
                continue
            if _covered(pend[cpu.id], vpn):
                continue
            if count[vpn] == 0:
                bad.append(f"{where}: CPU {cpu.id} caches slot {vpn} -> page {frame} at pkmap_count 0")
            elif count[vpn] > 1 and frame != pte[vpn]:
                bad.append(f"{where}: CPU {cpu.id} caches slot {vpn} -> page {frame}, PTE maps {pte[vpn]} "
                           f"(count {count[vpn]})")
    # Every flush sent so far completed (all acks in) before kmap_lock was released.
    for cpu in cpus:
        for _, _, ipi in cpu.inbox:
            if ipi.t_ack > coord.lock_free_at:
                bad.append(f"{where}: IPI to CPU {cpu.id} acked at {ipi.t_ack} after kmap_lock was released "
                           f"at {coord.lock_free_at}")
    return bad


def in_flight(engine, downs) -> list[tuple]:
    """(CPU, model messages) on their way: the batches of a step, and the replies the core holds back until
    their CPU's safe time lets it on."""
    return [(c, down.msgs) for c, down in downs] + list(engine.core.held.items())


def instrumented_run(cfg, max_violations: int = 20):
    """The inline engine, stepped, with state checks after every step. Returns (violations, ring, events)."""
    coord = Coordinator(cfg)
    ring = TrackedRing(cfg.machine.ring_size)
    coord.ring = ring
    events: list[dict] = []

    class Keeping(Recorder):  # the run's events, for the checks below
        def add(self, source, evs):
            events.extend(map(to_record, evs))
            super().add(source, evs)

    engine = InlineEngine(cfg, Keeping(cfg, None, "inline"), coord)
    cpus = engine.cpus
    violations: list[str] = []
    steps = 0
    engine.deliver(engine.core.start())
    while True:
        downs = engine.step()
        steps += 1
        violations += check_state(coord, cpus, in_flight(engine, downs), f"step {steps} (before delivery)")
        engine.deliver(downs)
        violations += check_state(coord, cpus, in_flight(engine, []), f"step {steps}")
        violations += ring.bad
        ring.bad = []
        engine.core.release()
        if len(violations) >= max_violations or engine.core.complete():
            break
    return violations, ring, events
