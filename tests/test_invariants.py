"""The invariants of kernel-pkmap.md section 7, checked while the model runs.

The test drives the inline engine (the engine core) one step at a time and looks at the Coordinator and
the Cpu objects after every step, before and after delivering its messages:

- pkmap_count[i] == 0  =>  no CPU's TLB holds slot i (vpn i);
- a CPU's TLB holds slot i with pkmap_count[i] > 1  =>  its cached frame is the current PTE;
- pkmap_count only moves 1 -> 0 inside flush_all_zero_pkmaps (a wrap) or an eager teardown, 0 -> 1 only in
  map_new_virtual, and otherwise by +-1 between values >= 1.

CPUs are simulated up to different virtual times, so a CPU that has not yet reached the arrival time of
an IPI it has been sent still holds what that IPI will drop; the TLB checks count such pending
invalidations (queued IPIs, and the initiator's own flush carried in its reply or its sleeping request)
as done, and so do the results of a compound request not yet taken. The lock-window invariant (a flush's stall covers every target's ack, and no ring operation
happens inside it) is checked on the recorded trace.
"""

from __future__ import annotations


import pytest

from smpsim.config import validate
from smpsim.engines.inline import InlineEngine, run
from smpsim.engines.recorder import Recorder
from smpsim.model import messages as m
from smpsim.model.coordinator import Coordinator
from smpsim.model.cpu import LOCAL_BASE
from smpsim.model.events import to_record
from smpsim.model.ring import PkmapRing

import reference_highmem as ref


class Violation(AssertionError):
    pass


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
            pend[cpu.id] += [v for _, v in result[3]]
    for dest, msgs in downs:
        for msg in msgs:
            if type(msg) is m.Ipi:
                pend[dest].append(msg.vpns)
            else:
                for result in msg.results:
                    pend[dest] += [v for _, v in result[3]]
    for r in [e[2] for e in coord.pending] + list(coord.pkmap_map_wait):  # pending: (t, cpu, call)
        if r.cpu < 0:  # latr's timed release of slots, not a request
            continue
        pend[r.cpu] += [v for _, v in r.local_flushes]
        for result in r.results:
            pend[r.cpu] += [v for _, v in result[3]]
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


def _cfg(policy, workload, cpus, ring, nesting=1, kmaps=120, seed=3):
    return validate({"seed": seed, "machine": {"cpus": cpus, "last_pkmap": ring}, "policy": {"name": policy},
                     "tlb": {"entries": 64, "ways": 4},
                     "workload": {"kind": workload, "kmaps_per_cpu": kmaps, "pages": 3 * ring,
                                  "nesting": nesting, "hot_pages": max(4, ring // 2), "accesses_per_kmap": 3}})


CORRECT = [
    ("linux-2.4", "shared", 4, 16, 1),
    ("linux-2.4", "uniform", 4, 10, 3),     # sleepers on pkmap_map_wait
    ("linux-2.4", "pingpong", 2, 8, 1),
    ("linux-2.6", "pingpong", 4, 16, 2),
    ("linux-2.6", "zipf", 3, 8, 1),
    ("linux-2.6", "stream", 2, 64, 1),      # range above the flush ceiling: full flushes
    ("eager", "shared", 4, 16, 1),
    ("eager", "uniform", 3, 8, 3),
    ("kmap-local", "shared", 4, 16, 3),
]


@pytest.mark.parametrize("policy,workload,cpus,ring,nesting", CORRECT,
                         ids=["-".join(map(str, c)) for c in CORRECT])
def test_section7_invariants_hold(policy, workload, cpus, ring, nesting):
    cfg = _cfg(policy, workload, cpus, ring, nesting)
    violations, tracked, events = instrumented_run(cfg)
    assert not violations, "\n".join(violations[:20])
    kinds = {e["ev"] for e in events}
    assert "kmap" in kinds and "access" in kinds
    if policy != "kmap-local":
        # The run exercised the interesting transition.
        assert tracked.transitions_1_0 > 0
        assert sum(e["ev"] == "kmap" for e in events) == cpus * cfg.workload.kmaps_per_cpu


@pytest.mark.parametrize("policy", ["no-ipi", "no-flush"])
def test_invariant_checker_catches_broken_policies(policy):
    """The same checks flag the deliberately broken policies: a remote TLB keeps a torn-down slot."""
    cfg = _cfg(policy, "shared", 4, 16, 1)
    violations, _, _ = instrumented_run(cfg)
    assert any("at pkmap_count 0" in v or "PTE maps" in v for v in violations), violations[:5]


def test_transition_checker_flags_count_drop_outside_a_wrap():
    ring = TrackedRing(4)
    ring.ctx.append("map_new_virtual")
    ring.pkmap_count[1] = 1
    ring.ctx.pop()
    ring.pkmap_count[1] = 2
    ring.pkmap_count[1] = 1
    assert not ring.bad
    ring.pkmap_count[1] = 0   # what kunmap_high must never do
    assert ring.bad and "1 -> 0" in ring.bad[0]


# ---- the lock window of a shootdown, on the recorded trace ------------------------------------------

def check_flush_windows(events: list[dict]) -> tuple[list[str], int]:
    """For ring policies, whose every flush runs under kmap_lock. Returns (problems, flushes seen)."""
    bad = []
    flushes = [e for e in events if e["ev"] == "flush"]
    ipis: dict[int, list[dict]] = {}
    for e in events:
        if e["ev"] == "ipi":
            ipis.setdefault(e["src"], []).append(e)
    for src in ipis:
        ipis[src].sort(key=lambda e: (e["t_send"], e["cpu"]))
    used = {src: 0 for src in ipis}
    ring_ops = [e for e in events if e["ev"] in ("kmap", "kunmap", "wait", "wrap")]
    for f in sorted(flushes, key=lambda e: (e["t"], e["seq"])):
        t0, stall = f["t"], f["stall"]
        targets = sorted(f.get("targets") or [])
        mine = ipis.get(f["cpu"], [])[used.get(f["cpu"], 0): used.get(f["cpu"], 0) + len(targets)]
        used[f["cpu"]] = used.get(f["cpu"], 0) + len(targets)
        if sorted(e["cpu"] for e in mine) != targets:
            bad.append(f"flush seq {f['seq']} targets {targets}, IPIs received by {[e['cpu'] for e in mine]}")
            continue
        for e in mine:
            if e["t_send"] < t0:
                bad.append(f"flush seq {f['seq']} at t={t0}: IPI to CPU {e['cpu']} sent at {e['t_send']}")
            if e["t_ack"] - t0 > stall:
                bad.append(f"flush seq {f['seq']} at t={t0} stalls {stall} but CPU {e['cpu']} acks at "
                           f"{e['t_ack']} (t + {e['t_ack'] - t0})")
            if not (e["t_send"] <= e["t_recv"] <= e["t_ack"]):
                bad.append(f"IPI seq {e['seq']}: t_send {e['t_send']} t_recv {e['t_recv']} t_ack {e['t_ack']}")
        for e in ring_ops:
            if t0 <= e["t"] < t0 + stall and e["cpu"] != f["cpu"]:
                bad.append(f"CPU {e['cpu']}'s {e['ev']} (seq {e['seq']}) at t={e['t']} inside CPU "
                           f"{f['cpu']}'s flush [{t0}, {t0 + stall}) under kmap_lock")
    leftover = sum(len(v) for v in ipis.values()) - sum(used.values())
    if leftover > 0:
        bad.append(f"{leftover} IPI events belong to no flush")
    return bad, len(flushes)


WINDOW_CASES = [
    ("linux-2.4", "shared", 4, 16, 1),
    ("linux-2.4", "uniform", 8, 12, 2),
    ("linux-2.6", "pingpong", 4, 16, 1),
    ("eager", "zipf", 4, 16, 1),
    ("no-ipi", "shared", 4, 16, 1),
]


@pytest.mark.parametrize("policy,workload,cpus,ring,nesting", WINDOW_CASES,
                         ids=["-".join(map(str, c)) for c in WINDOW_CASES])
def test_flush_stall_covers_acks_and_holds_the_lock(tmp_path, policy, workload, cpus, ring, nesting):
    cfg = _cfg(policy, workload, cpus, ring, nesting, kmaps=80)
    run(cfg, tmp_path / "run")
    events = ref.load_events(tmp_path / "run")
    bad, nflush = check_flush_windows(events)
    assert nflush > 0
    assert not bad, "\n".join(bad[:20])
    if policy != "no-ipi":
        assert any(e["ev"] == "ipi" for e in events)


def test_flush_window_checker_detects_a_short_stall(tmp_path):
    cfg = _cfg("linux-2.4", "shared", 4, 16, 1, kmaps=40)
    run(cfg, tmp_path / "run")
    events = ref.load_events(tmp_path / "run")
    assert not check_flush_windows(events)[0]
    short = [dict(e, stall=1) if e["ev"] == "flush" else e for e in events]
    assert any("acks at" in b for b in check_flush_windows(short)[0])
    f = next(e for e in events if e["ev"] == "flush" and e["stall"] > 0)
    k = next(e for e in events if e["ev"] == "kmap" and e["cpu"] != f["cpu"])
    moved = [dict(e, t=f["t"] + 1) if e is k else e for e in events]
    assert any("inside" in b for b in check_flush_windows(moved)[0])
