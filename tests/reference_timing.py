"""An independent second model of everything smpsim times and caches, checked against a recorded trace.

It shares no code with smpsim.model (a bug copied into both would hide itself). It is written from the
documented behaviour (docs/architecture.md "Time and ordering", the cost keys in smpsim/config.py, the
kernel's mm/highmem.c, and the hardware's documented TLB behaviour) in three parts:

RefTlb       a set-associative TLB with LRU replacement: the set of a virtual page number is vpn mod sets;
             a hit makes the entry most recently used; a fill into a full set evicts the least recently
             used; INVLPG drops one entry; a full flush drops all.
CpuReplay    one CPU's side of a run: walk its program, keep its clock and TLB, take the coordinator's
             answers (kmap/kunmap return times and slots, IPIs, the CPU's own flushes) from the trace, and
             predict every event the CPU records (access, tlb_miss, stale, ipi, kmap-local's kmap, kunmap
             and flush) plus the time of each of its ring requests.
RefLockRing  the coordinator's side: kmap_lock as a FIFO ticket lock granted in (request time, CPU) order,
             the pkmap ring of mm/highmem.c with its scan costs, pkmap_map_wait, the policies' teardowns
             and the shootdown timing (IPI n to the k-th target sent k broadcast steps after the flush
             starts, handled on arrival, acked; the initiator flushes itself after the last ack). Fed the
             request times CpuReplay predicted, it predicts every ring event and every IPI's send,
             arrival and ack times.

Together they recompute every figure of the trace. `check_run` runs both and reports the first difference.
Which pages a recorded flush invalidates is the ring reference's answer (reference_highmem replays the
trace's ring events); RefLockRing predicts them again, and the two must agree.

The policies, as documented (docs/policies.md; written here, not taken from smpsim.model):
  linux-2.4   at a wrap: tear the count-1 slots down; flush_tlb_all, by IPI to every other CPU
  linux-2.6   at a wrap that tore a slot down: a range over the window, by IPI to every other CPU
  eager       a kunmap that leaves count 1 tears that slot down: one page, by IPI to every other CPU
  kmap-local  CPU-private slots, no lock, no IPI (below)
  vmap-lazy   a wrap tears nothing down; the kunmap that leaves lazy_max slots at count 1 purges: every
              count-1 slot to 0, one range over their span, by IPI to every other CPU; a scan that finds
              no free slot purges the same way (if anything is at count 1) and scans again
  tlb-gen     linux-2.6, the IPIs only to CPUs that kmapped, ended a hold of theirs, or hold a page, since
              their last flush (a flush also reaches its initiator)
  latr        linux-2.6's teardown with no IPI: the initiator invalidates the torn slots at once; every
              other CPU at its first tick after the wrap (ticks at multiples of policy.tick; a `tick`
              flush of invalidation work only, taken like an IPI), and then (max of that tick and the lock's
              release; a `free` event before any request at the tick) the slots are usable again and the
              sleepers are woken; on one CPU the slots are free at once
  no-ipi      linux-2.4's teardown, the flush on the initiator only;  no-flush: no flush at all

The cost rules, as documented:
  access op of n accesses        n*access + hits*tlb_hit + misses*page_walk (one walk, then hits)
  first access after a full flush  + background*page_walk (the background working set walks back in)
  IPI handled while running      the interrupted work ends (ipi_handler + flush work) later
  IPI while spinning or asleep   serviced meanwhile; the CPU resumes no earlier than the handler's end
  kmap_lock                      acquire at request + lock_acquire if free, else at release + lock_handoff;
                                 then lock_hold of bookkeeping
  map_new_virtual                pkmap_scan per slot probed (a wrap's flush overlaps the scan so far), then
                                 pte_write for the new PTE
  flush work                     full_flush, or invlpg per page (a range above flush_ceiling is a full flush)
  kmap_local                     pte_write to map; pte_write + invlpg (local INVLPG) to unmap
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import reference_highmem

LOCAL_BASE = 1 << 20  # kmap_local's fixmap vpns start here (architecture doc); pkmap slot i is vpn i

SUPPORTED = ("linux-2.4", "linux-2.6", "eager", "kmap-local", "vmap-lazy", "tlb-gen", "latr", "no-ipi", "no-flush")
CPU_EVENTS = ("access", "tlb_miss", "stale", "ipi")  # and latr's `tick` flushes


class Mismatch(AssertionError):
    pass


def flush_work(c, vpns) -> int:
    """Cycles a TLB takes to flush vpns (None: all of it)."""
    return c.full_flush if vpns is None else c.invlpg * len(vpns)


def next_tick(t: int, period: int) -> int:
    """latr: the first scheduler tick after t; ticks come at 0, period, 2*period, ... on every CPU."""
    return (t // period + 1) * period


def is_tick(e: dict) -> bool:
    return e["ev"] == "flush" and e["scope"] == "tick"


# ---- the TLB ------------------------------------------------------------------------------------------

class RefTlb:
    def __init__(self, entries: int, ways: int):
        self.ways = ways
        self.nsets = entries // ways
        self.sets = [OrderedDict() for _ in range(self.nsets)]   # LRU first

    def lookup(self, vpn: int):
        s = self.sets[vpn % self.nsets]
        if vpn not in s:
            return None
        s.move_to_end(vpn)
        return s[vpn]

    def fill(self, vpn: int, frame: int) -> int | None:
        """Insert; returns the evicted vpn, if any."""
        s = self.sets[vpn % self.nsets]
        s.pop(vpn, None)
        victim = None
        if len(s) == self.ways:
            victim, _ = s.popitem(last=False)
        s[vpn] = frame
        return victim

    def invlpg(self, vpn: int) -> bool:
        return self.sets[vpn % self.nsets].pop(vpn, None) is not None

    def flush_all(self) -> list[int]:
        gone = [v for s in self.sets for v in s]
        for s in self.sets:
            s.clear()
        return gone


# ---- one CPU ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arrival:
    """An IPI reaching a CPU, or (latr) the lazy list a CPU invalidates at its tick: no IPI, no ack."""
    t_recv: int
    src: int
    t_send: int
    t_handled: int
    t_ack: int | None   # None: a tick
    scope: str
    vpns: tuple[int, ...] | None


def arrivals(cpu: int, events: list[dict], flushes: list[dict], cfg) -> list[Arrival]:
    """What reaches `cpu`, in the order it takes them: the IPIs the trace records for it, each matched to the
    flush that sent it (the k-th target is sent k broadcast steps in), and latr's ticks owed by lazy flushes."""
    c = cfg.cost
    sender = {(f["cpu"], j, f["t"] + k * c.ipi_broadcast_step): f
              for f in flushes for k, j in enumerate(f["targets"])}
    out = []
    for e in events:
        if e["ev"] == "ipi" and e["cpu"] == cpu:
            f = sender.get((e["src"], cpu, e["t_send"]))
            if f is None:
                raise Mismatch(f"CPU {cpu}: IPI from {e['src']} sent at {e['t_send']} matches no flush")
            t_handled = e["t_recv"] + c.ipi_handler + flush_work(c, f["_vpns"])
            out.append(Arrival(e["t_recv"], e["src"], e["t_send"], t_handled, t_handled + c.ipi_ack, f["scope"],
                               f["_vpns"]))
    if cfg.machine.cpus > 1:
        for f in flushes:
            if f["scope"] == "lazy" and f["cpu"] != cpu:
                t = next_tick(f["t"], cfg.policy.tick)
                out.append(Arrival(t, f["cpu"], f["t"], t + flush_work(c, f["_vpns"]), None, "tick", f["_vpns"]))
    return sorted(out, key=lambda a: (a.t_recv, a.src, a.t_send))


class CpuReplay:
    """One CPU's program replayed step by step (compute, access, kmap/kunmap through the ring or kmap_local),
    with its clock, TLB and the IPIs and ticks that reach it; it predicts the events the CPU records."""

    def __init__(self, cpu: int, cfg, events: list[dict], flushes: list[dict]):
        self.cpu, self.cfg, self.c = cpu, cfg, cfg.cost
        self.ring = cfg.policy.name != "kmap-local"
        self.tlb = RefTlb(cfg.tlb.entries, cfg.tlb.ways)
        self.events: list[dict] = []                       # predicted CPU-recorded events
        self.requests: list[tuple[int, str, int]] = []     # (time, op, page) ring requests
        self.busy_ipis = 0   # IPIs that arrived while the CPU computed or accessed (not spinning or asleep)
        # The coordinator's answers to this CPU, in the order it receives them.
        self.answers = [e for e in events if e["cpu"] == cpu and e["ev"] in ("kmap", "kunmap")] if self.ring else []
        self.arrivals = arrivals(cpu, events, flushes, cfg)
        # Its own flushes as initiator: (time it flushes itself, pages), after the last ack.
        self.own = sorted((f["t"] + f["stall"] - flush_work(self.c, f["_vpns"]), f["_vpns"])
                          for f in flushes if f["cpu"] == cpu)
        self.clock = 0
        self.refill_due = False
        self.flushed: set[int] = set()
        self.held: dict[int, list[int]] = {}
        self.use: dict[int, list[int]] = {}
        self.local_stack: list[int] = []
        self.nxt = 0        # next arrival
        self.nxt_own = 0    # next own flush
        self.nxt_answer = 0

    def run(self, ops: list[tuple]) -> CpuReplay:
        for op in ops:
            self.interrupted()
            kind = op[0]
            if kind == "compute":
                self.clock += op[1]
            elif kind == "access":
                self.access(*op[1:])
            elif not self.ring:
                self.kmap_local(op[1]) if kind == "kmap" else self.kunmap_local(op[1])
            else:
                self.ring_call(kind, op[1])
        self.finish()
        return self

    # ---- IPIs and ticks ----------------------------------------------------------------------------------
    def due(self, t: int) -> bool:
        return self.nxt < len(self.arrivals) and self.arrivals[self.nxt].t_recv <= t

    def interrupted(self) -> None:
        """Running (computing or accessing), the CPU takes what is due by its clock before its next operation;
        each handler stretches the clock, so what arrives meanwhile is due too."""
        while self.due(self.clock):
            self.busy_ipis += self.arrivals[self.nxt].t_recv < self.clock
            self.take(running=True)

    def take(self, running: bool) -> int:
        """Handle the next arrival: invalidate, record it; returns when its handler ends."""
        a = self.arrivals[self.nxt]
        self.nxt += 1
        dropped = self.invalidate(a.vpns)
        if running:
            self.clock += a.t_handled - a.t_recv
        if a.t_ack is None:
            self.events.append({"t": a.t_recv, "cpu": self.cpu, "ev": "flush", "scope": "tick", "targets": [],
                                "pages": None if a.vpns is None else len(a.vpns), "stall": a.t_handled - a.t_recv})
        else:
            self.events.append({"t": a.t_recv, "cpu": self.cpu, "ev": "ipi", "src": a.src, "t_send": a.t_send,
                                "t_recv": a.t_recv, "t_ack": a.t_ack, "scope": a.scope, "dropped": dropped})
        return a.t_handled

    def invalidate(self, vpns) -> int:
        """Flush this TLB (vpns None: all of it, after which the background working set walks back in)."""
        if vpns is None:
            gone = self.tlb.flush_all()
            if self.cfg.tlb.background:
                self.refill_due = True
        else:
            gone = [v for v in vpns if self.tlb.invlpg(v)]
        self.flushed.update(gone)
        return len(gone)

    # ---- the operations ------------------------------------------------------------------------------
    def access(self, page: int, n: int, write: bool) -> None:
        """n accesses through the page's newest address: one walk on a miss, then hits; a stale hit if the
        TLB still maps the address to another page."""
        c, cpu, ev = self.c, self.cpu, self.events
        vpn = self.held[page][-1]
        t = self.clock
        if self.refill_due:
            self.refill_due = False
            bg = self.cfg.tlb.background
            ev.append({"t": t, "cpu": cpu, "ev": "tlb_miss", "page": None, "slot": None, "n": bg,
                       "cycles": bg * c.page_walk, "flush_caused": True})
            t += bg * c.page_walk
        slot = vpn if vpn < LOCAL_BASE else vpn - LOCAL_BASE - cpu * self.cfg.machine.kmap_local_slots
        frame = self.tlb.lookup(vpn)
        if frame is None:
            caused = vpn in self.flushed
            self.flushed.discard(vpn)
            self.tlb.fill(vpn, page)
            ev.append({"t": t, "cpu": cpu, "ev": "tlb_miss", "page": page, "slot": slot, "n": 1,
                       "cycles": c.page_walk, "flush_caused": caused})
            hits, misses = n - 1, 1
        else:
            if frame != page:
                ev.append({"t": t, "cpu": cpu, "ev": "stale", "page": page, "reached": frame, "slot": slot, "n": n})
            hits, misses = n, 0
        u = self.use.setdefault(page, [slot, 0, 0, 0, 0])
        u[1] += n
        u[2] += n if write else 0
        u[3] += hits
        u[4] += misses
        self.clock = t + n * c.access + hits * c.tlb_hit + misses * c.page_walk

    def record_use(self, page: int) -> None:
        """One access event per hold, when it ends."""
        u = self.use.pop(page, None)
        if u is not None:
            self.events.append({"t": self.clock, "cpu": self.cpu, "ev": "access", "page": page, "slot": u[0],
                                "n": u[1], "writes": u[2], "hits": u[3], "misses": u[4]})

    def release(self, page: int) -> int:
        self.record_use(page)
        vpn = self.held[page].pop()
        if not self.held[page]:
            del self.held[page]
        return vpn

    def kmap_local(self, page: int) -> None:
        """Map the next fixmap slot of this CPU: pte_write."""
        idx = len(self.local_stack)
        self.local_stack.append(page)
        self.held.setdefault(page, []).append(LOCAL_BASE + self.cpu * self.cfg.machine.kmap_local_slots + idx)
        self.clock += self.c.pte_write
        self.events.append({"t": self.clock, "cpu": self.cpu, "ev": "kmap", "page": page, "slot": idx, "new": True,
                            "slept": False, "cycles": self.c.pte_write, "lock_wait": 0})

    def kunmap_local(self, page: int) -> None:
        """Unmap the top fixmap slot: pte_write, and a local INVLPG."""
        c, cpu = self.c, self.cpu
        idx = len(self.local_stack) - 1
        vpn = self.release(page)
        self.local_stack.pop()
        self.flushed.update([vpn] if self.tlb.invlpg(vpn) else [])
        self.events.append({"t": self.clock, "cpu": cpu, "ev": "flush", "scope": "local", "slots": 1, "targets": [],
                            "pages": 1, "stall": c.invlpg})
        self.clock += c.pte_write + c.invlpg
        self.events.append({"t": self.clock, "cpu": cpu, "ev": "kunmap", "page": page, "slot": idx, "count": 0})

    def ring_call(self, kind: str, page: int) -> None:
        """kmap_high / kunmap_high: blocked until the coordinator's answer (from the trace)."""
        if kind == "kunmap" and page in self.held:
            self.release(page)
        self.requests.append((self.clock, kind, page))
        if self.nxt_answer >= len(self.answers):
            raise Mismatch(f"CPU {self.cpu}: no answer in the trace to its {kind} of page {page} at t={self.clock}")
        a = self.answers[self.nxt_answer]
        self.nxt_answer += 1
        if a["ev"] != kind or a["page"] != page:
            raise Mismatch(f"CPU {self.cpu}: its {kind}({page}) at t={self.clock} was answered by "
                           f"{a['ev']}({a['page']})")
        self.clock = self.waited(a["t"])
        if kind == "kmap":
            self.held.setdefault(page, []).append(a["slot"])

    def waited(self, t_done: int) -> int:
        """Spinning on kmap_lock or asleep until t_done, the CPU serviced what arrived meanwhile (IRQs on)
        and made its own flushes as initiator, in time order (its own first at a tie); it resumes at t_done
        or when the last handler ends."""
        end = t_done
        own = self.own
        while self.due(t_done) or (self.nxt_own < len(own) and own[self.nxt_own][0] <= t_done):
            if self.nxt_own < len(own) and own[self.nxt_own][0] <= t_done and not (
                    self.due(t_done) and self.arrivals[self.nxt].t_recv < own[self.nxt_own][0]):
                t, vpns = own[self.nxt_own]
                if t < self.clock:
                    raise Mismatch(f"CPU {self.cpu}: its own flush at t={t} comes before its request at {self.clock}")
                self.nxt_own += 1
                self.invalidate(vpns)
            else:
                end = max(end, self.take(running=False))
        return end

    def finish(self) -> None:
        """The program's end: what is due by then is taken running, the holds still open are recorded, and
        what comes later is handled (the clock no longer matters)."""
        self.interrupted()
        for page in list(self.use):
            self.record_use(page)
        while self.nxt < len(self.arrivals):
            self.take(running=False)


# ---- the coordinator ------------------------------------------------------------------------------------

@dataclass
class Call:
    """One kmap_high / kunmap_high, kept across sleeps on pkmap_map_wait."""
    t: int            # when it asks for kmap_lock (again, after a wake-up)
    cpu: int
    op: str
    page: int
    t_first: int      # its first request
    lock_wait: int = 0
    slept: bool = False


@dataclass
class RefLockRing:
    """kmap_lock, the pkmap ring, the policies and the shootdown timing, predicting ring events and IPI times."""
    cfg: Any
    events: list[dict] = field(default_factory=list)
    ipis: list[dict] = field(default_factory=list)
    flushed_pages: list[dict] = field(default_factory=list)  # t, cpu and vpns of every flush

    def __post_init__(self):
        cfg = self.cfg
        self.c, self.pol, self.ncpu, self.n = cfg.cost, cfg.policy.name, cfg.machine.cpus, cfg.machine.ring_size
        self.count = [0] * self.n
        self.pte: list[int | None] = [None] * self.n
        self.virtual: dict[int, int] = {}
        self.cursor = 0
        self.free_at = 0                      # kmap_lock's last release
        self.sleepers: list[Call] = []        # pkmap_map_wait, in sleep order
        self.queue: list = []                 # (t, cpu, n, Call or None: latr's free at t), canonical order
        self.pushed = 0
        # vmap-lazy: ceil(ring * fls(cpus) / 4), lazy_max_pages() over the 128 MB x86-32 vmalloc area
        lazy = cfg.policy.lazy_max or -(-self.n * self.ncpu.bit_length() // 4)
        self.lazy_max = max(1, min(lazy, self.n))
        self.fresh = [False] * self.ncpu      # tlb-gen: used a pkmap address since its last flush
        self.holding = [Counter() for _ in range(self.ncpu)]
        self.deferred: set[int] = set()       # latr: torn down, some CPU's tick still due
        self.frees: dict[int, list[tuple[int, list[int]]]] = {}  # latr: tick -> (initiator, slots), wrap order

    # ---- kmap_lock, in canonical order ---------------------------------------------------------------------
    def run(self, requests: dict[int, list[tuple[int, str, int]]]) -> None:
        """Grant every CPU's requests in (time, CPU) order. A CPU's next request is only known once the
        previous one returned, so each CPU's requests are released one at a time."""
        todo = {cpu: list(reversed(reqs)) for cpu, reqs in requests.items()}
        for cpu in todo:
            self.next_call(todo, cpu)
        while self.queue:
            t, _, _, call = heapq.heappop(self.queue)
            if call is None:
                self.free_deferred(t)
            elif self.kmap_high(call) if call.op == "kmap" else self.kunmap_high(call):
                self.next_call(todo, call.cpu)

    def next_call(self, todo: dict, cpu: int) -> None:
        if todo[cpu]:
            t, op, page = todo[cpu].pop()
            self.push(Call(t, cpu, op, page, t))

    def push(self, call: Call | None, t: int = 0) -> None:
        """Queue a call, or (None) latr's free at t, which comes before any request at t."""
        self.pushed += 1
        heapq.heappush(self.queue, (t, -1, self.pushed, None) if call is None else
                       (call.t, call.cpu, self.pushed, call))

    def lock(self, r: Call) -> int:
        """Acquire at the request if free, else at the release plus the hand-off; then the bookkeeping."""
        c = self.c
        t_acq = r.t + c.lock_acquire if r.t >= self.free_at else self.free_at + c.lock_handoff
        r.lock_wait += t_acq - r.t
        return t_acq + c.lock_hold

    # ---- mm/highmem.c ---------------------------------------------------------------------------------
    def kmap_high(self, r: Call) -> bool:
        """Returns False when the caller went to sleep on pkmap_map_wait."""
        t = self.lock(r)
        slot = self.virtual.get(r.page)
        new = False
        if slot is None:
            slot, t = self.map_new_virtual(r.cpu, t)
            if slot is None:   # sleep with the lock released
                self.free_at = t
                r.slept = True
                self.sleepers.append(r)
                self.events.append({"t": t, "cpu": r.cpu, "ev": "wait", "page": r.page})
                return False
            new = True
            self.pte[slot] = r.page
            self.virtual[r.page] = slot
            self.count[slot] = 1
            t += self.c.pte_write
        self.count[slot] += 1
        self.holding[r.cpu][r.page] += 1
        self.fresh[r.cpu] = True
        self.free_at = t
        self.events.append({"t": t, "cpu": r.cpu, "ev": "kmap", "page": r.page, "slot": slot, "new": new,
                            "slept": r.slept, "cycles": t - r.t_first, "lock_wait": r.lock_wait})
        return True

    def map_new_virtual(self, cpu: int, t: int) -> tuple[int | None, int]:
        """A free slot and the time the scan ends; vmap-lazy purges and scans again before giving up."""
        slot, t = self.scan(cpu, t)
        if slot is None and self.pol == "vmap-lazy":
            t_purged = self.purge(cpu, t)
            if t_purged is not None:
                slot, t = self.scan(cpu, t_purged)
        return slot, t

    def scan(self, cpu: int, t: int) -> tuple[int | None, int]:
        """One pass of the cursor: pkmap_scan per slot probed; a wrap's teardown and flush start when the
        probes so far are done. None after LAST_PKMAP fruitless probes since the start or the last wrap."""
        t_scan, probes, budget = t, 0, self.n
        while True:
            self.cursor = (self.cursor + 1) % self.n
            if self.cursor == 0:
                t = self.wrap(cpu, max(t, t_scan + probes * self.c.pkmap_scan))
                budget = self.n
            probes += 1
            if self.count[self.cursor] == 0 and self.cursor not in self.deferred:
                return self.cursor, max(t, t_scan + probes * self.c.pkmap_scan)
            budget -= 1
            if not budget:
                return None, max(t, t_scan + probes * self.c.pkmap_scan)

    def flush_all_zero_pkmaps(self) -> list[int]:
        torn = [i for i in range(self.n) if self.count[i] == 1]
        for i in torn:
            self.count[i] = 0
            del self.virtual[self.pte[i]]
            self.pte[i] = None
        return torn

    def wrap(self, cpu: int, t: int) -> int:
        """The cursor wrapped: the policy's teardown and flush; returns when the initiator goes on."""
        torn = [] if self.pol == "vmap-lazy" else self.flush_all_zero_pkmaps()
        self.events.append({"t": t, "cpu": cpu, "ev": "wrap", "slots": len(torn)})
        others = [j for j in range(self.ncpu) if j != cpu]
        if self.pol == "linux-2.4":
            return self.shootdown(t, cpu, "all", None, len(torn), others)
        if self.pol == "linux-2.6" and torn:
            return self.shootdown(t, cpu, "range", range(self.n), len(torn), others)
        if self.pol == "tlb-gen" and torn:
            targets = [j for j in others if self.fresh[j] or any(self.holding[j].values())]
            for j in (*targets, cpu):
                self.fresh[j] = False
            return self.shootdown(t, cpu, "range", range(self.n), len(torn), targets)
        if self.pol == "latr" and torn:
            return self.lazy_invalidate(t, cpu, torn)
        if self.pol == "no-ipi":
            return self.shootdown(t, cpu, "local", None, len(torn), [])
        return t

    def kunmap_high(self, r: Call) -> bool:
        t = self.lock(r)
        slot = self.virtual[r.page]
        self.count[slot] -= 1
        count = self.count[slot]
        if self.holding[r.cpu][r.page]:   # the caller's own hold ends (another CPU's kunmap ends none)
            self.holding[r.cpu][r.page] -= 1
            self.fresh[r.cpu] = True
        if count == 1 and self.pol == "eager":
            self.count[slot] = count = 0
            del self.virtual[r.page]
            self.pte[slot] = None
            t = self.shootdown(t, r.cpu, "page", (slot,), 1, [j for j in range(self.ncpu) if j != r.cpu])
        if count == 1 and self.pol == "vmap-lazy" and self.count.count(1) >= self.lazy_max:
            t = self.purge(r.cpu, t)
            count = self.count[slot]
        self.free_at = t
        self.events.append({"t": t, "cpu": r.cpu, "ev": "kunmap", "page": r.page, "slot": slot, "count": count})
        if count <= 1:
            self.wake_up(t, r.cpu)
        return True

    def wake_up(self, t: int, cpu: int) -> None:
        """wake_up(&pkmap_map_wait): every sleeper retries from the scan, wakeup_latency later."""
        if not self.sleepers:
            return
        woken, self.sleepers = self.sleepers, []
        self.events.append({"t": t, "cpu": cpu, "ev": "wake", "woken": [w.cpu for w in woken]})
        for w in woken:
            w.t = t + self.c.wakeup_latency
            self.push(w)

    # ---- the policies' teardowns -----------------------------------------------------------------------
    def purge(self, cpu: int, t: int) -> int | None:
        """vmap-lazy: every count-1 slot to 0, one range over their span (None: nothing was waiting)."""
        torn = self.flush_all_zero_pkmaps()
        if not torn:
            return None
        return self.shootdown(t, cpu, "range", range(min(torn), max(torn) + 1), len(torn),
                              [j for j in range(self.ncpu) if j != cpu])

    def lazy_invalidate(self, t: int, cpu: int, torn: list[int]) -> int:
        """latr: the initiator invalidates the torn slots now; the others at their next tick, when the slots
        become free (at once on one CPU)."""
        if self.ncpu > 1:
            self.deferred.update(torn)
            t_tick = next_tick(t, self.cfg.policy.tick)
            if t_tick not in self.frees:
                self.frees[t_tick] = []
                self.push(None, t_tick)
            self.frees[t_tick].append((cpu, torn))
        return self.shootdown(t, cpu, "lazy", torn, len(torn), [])

    def free_deferred(self, t_tick: int) -> None:
        """latr: every CPU has ticked; the slots its wraps deferred are free (once kmap_lock is released),
        then the sleepers are woken."""
        t = max(t_tick, self.free_at)
        batches = self.frees.pop(t_tick)
        for initiator, slots in batches:
            self.deferred.difference_update(slots)
            self.events.append({"t": t, "cpu": initiator, "ev": "free", "slots": len(slots)})
        self.wake_up(t, batches[0][0])

    # ---- TLB shootdown --------------------------------------------------------------------------------
    def shootdown(self, t: int, cpu: int, scope: str, vpns, slots: int, targets: list[int]) -> int:
        """IPI to the k-th target k broadcast steps after t, handled on arrival, acked; the initiator flushes
        itself after the last ack. vpns above the flush ceiling: a full flush. Returns when it is done."""
        c = self.c
        vpns = None if vpns is None or len(vpns) > self.cfg.policy.flush_ceiling else tuple(vpns)
        work = flush_work(c, vpns)
        end = t
        for k, j in enumerate(targets):
            t_send = t + k * c.ipi_broadcast_step
            t_recv = t_send + c.ipi_latency
            t_ack = t_recv + c.ipi_handler + work + c.ipi_ack
            self.ipis.append({"t": t_recv, "cpu": j, "src": cpu, "t_send": t_send, "t_recv": t_recv, "t_ack": t_ack})
            end = max(end, t_ack)
        end += work
        self.events.append({"t": t, "cpu": cpu, "ev": "flush", "scope": scope, "slots": slots, "targets": targets,
                            "pages": None if vpns is None else len(vpns), "stall": end - t})
        self.flushed_pages.append({"t": t, "cpu": cpu, "vpns": vpns})
        return end


# ---- the whole run ------------------------------------------------------------------------------------

def _key(e: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in e.items() if k not in ("seq",) and v is not None))


def _compare(what: str, predicted: list[dict], recorded: list[dict]) -> None:
    p, r = Counter(map(_key, predicted)), Counter(map(_key, recorded))
    if p != r:
        only_p, only_r = [dict(k) for k in p - r][:3], [dict(k) for k in r - p][:3]
        raise Mismatch(f"{what}: {sum(p.values())} predicted vs {sum(r.values())} recorded; the reference "
                       f"predicts {only_p} where the trace has {only_r}")


def flush_pages(cfg, events: list[dict]) -> dict[int, tuple[int, ...] | None]:
    """The pages each ring flush of the trace invalidates (by seq), as the ring reference replays them."""
    if cfg.policy.name == "kmap-local":
        return {}
    try:
        return reference_highmem.replay(events, cfg.machine.ring_size, cfg.policy.name, cfg.machine.cpus,
                                        cfg.policy.flush_ceiling, lazy_max=cfg.policy.lazy_max,
                                        tick=cfg.policy.tick).flush_vpns
    except reference_highmem.ReplayMismatch as e:
        raise Mismatch(f"the ring reference disagrees with the trace: {e}") from None


def check_run(cfg, ops: list[list[tuple]], events: list[dict[str, Any]], busy: list[int] | None = None) -> dict:
    """Recompute every event of a finished run from its programs; raises Mismatch at the first difference.
    Returns figures recomputed by the reference (for the caller to compare with summary.json); `busy`, if
    given, gets each CPU's count of IPIs that reached it while it computed."""
    if cfg.policy.name not in SUPPORTED:
        raise ValueError(f"the timing reference does not know policy {cfg.policy.name!r}")
    ring = cfg.policy.name != "kmap-local"
    pages = flush_pages(cfg, events)
    flushes = [dict(e, _vpns=pages[e["seq"]]) for e in events if ring and e["ev"] == "flush" and not is_tick(e)]
    replays = [CpuReplay(cpu, cfg, events, flushes).run(ops[cpu]) for cpu in range(cfg.machine.cpus)]
    if busy is not None:
        busy.extend(rp.busy_ipis for rp in replays)
    for cpu, rp in enumerate(replays):
        mine = [e for e in events if e["cpu"] == cpu and (e["ev"] in CPU_EVENTS or is_tick(e) or not ring)]
        _compare(f"CPU {cpu}'s own events", rp.events, mine)
    figures = {"ipis": sum(1 for e in events if e["ev"] == "ipi")}
    ticks = [e for rp in replays for e in rp.events if is_tick(e)]
    if ring:
        coord = RefLockRing(cfg)
        coord.run({cpu: rp.requests for cpu, rp in enumerate(replays)})
        ring_events = [e for e in events if e["ev"] in reference_highmem.RING_EVENTS and not is_tick(e)]
        _compare("ring and lock events", coord.events, ring_events)
        sent = [{k: e[k] for k in ("t", "cpu", "src", "t_send", "t_recv", "t_ack")} for e in events if e["ev"] == "ipi"]
        _compare("IPI send/arrival/ack times", coord.ipis, sent)
        _compare("pages each flush invalidates", coord.flushed_pages,
                 [{"t": f["t"], "cpu": f["cpu"], "vpns": f["_vpns"]} for f in flushes])
        kmaps = [e for e in coord.events if e["ev"] == "kmap"]
        figures.update(kmap_cycles=sum(e["cycles"] for e in kmaps), lock_wait_cycles=sum(e["lock_wait"] for e in kmaps),
                       stall_cycles=sum(e["stall"] for e in coord.events + ticks if e["ev"] == "flush"))
    accesses = [e for rp in replays for e in rp.events if e["ev"] == "access"]
    refills = [e for rp in replays for e in rp.events if e["ev"] == "tlb_miss" and e["page"] is None]
    figures.update(tlb_hits=sum(e["hits"] for e in accesses),
                   tlb_misses=sum(e["misses"] for e in accesses) + sum(e["n"] for e in refills),
                   stale=sum(e["n"] for rp in replays for e in rp.events if e["ev"] == "stale"))
    return figures
