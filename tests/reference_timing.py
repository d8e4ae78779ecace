"""An independent second model of everything smpsim times and caches, checked against a recorded trace.

It shares no code with smpsim.model (a bug copied into both would hide itself). It is written from the
documented behaviour (docs/architecture.md "Time and ordering", the cost keys in smpsim/config.py, the
kernel's mm/highmem.c, and the hardware's documented TLB behaviour) in three parts:

RefTlb       a set-associative TLB with LRU replacement: the set of a virtual page number is vpn mod sets;
             a hit makes the entry most recently used; a fill into a full set evicts the least recently
             used; INVLPG drops one entry; a full flush drops all.
replay_cpu   one CPU's side of a run: walk its program, keep its clock and TLB, take the coordinator's
             answers (kmap/kunmap return times and slots, IPIs, the CPU's own flushes) from the trace, and
             predict every event the CPU records (access, tlb_miss, stale, ipi, kmap-local's kmap, kunmap
             and flush) plus the time of each of its ring requests.
RefLockRing  the coordinator's side: kmap_lock as a FIFO ticket lock granted in (request time, CPU) order,
             the pkmap ring of mm/highmem.c with its scan costs, pkmap_map_wait, and the shootdown timing
             (IPI n to the k-th target sent k broadcast steps after the flush starts, handled on arrival,
             acked; the initiator flushes itself after the last ack). Fed the request times replay_cpu
             predicted, it predicts every ring event and every IPI's send, arrival and ack times.

Together they recompute every figure of the trace. `check_run` runs both and reports the first difference.
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
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any

LOCAL_BASE = 1 << 20  # kmap_local's fixmap vpns start here (architecture doc); pkmap slot i is vpn i

SUPPORTED = ("linux-2.4", "linux-2.6", "eager", "kmap-local", "no-ipi", "no-flush")
CPU_EVENTS = ("access", "tlb_miss", "stale", "ipi")


class Mismatch(AssertionError):
    pass


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

@dataclass
class CpuReplay:
    events: list[dict] = field(default_factory=list)      # predicted CPU-recorded events
    requests: list[tuple[int, str, int]] = field(default_factory=list)  # (time, op, page) ring requests
    busy_ipis: int = 0   # IPIs that arrived while the CPU computed or accessed (not spinning or asleep)


def _same(a, b) -> bool:
    return a == b or (a is None and b is None)


def _ipi_vpns(flush: dict, cfg) -> tuple[int, ...] | None:
    """The pages a flush invalidates, from its recorded scope and size (None: the whole TLB)."""
    if flush.get("pages") is None:   # absent from the record: null
        return None
    if flush["scope"] == "range":   # flush_tlb_kernel_range over the pkmap window
        return tuple(range(cfg.machine.ring_size))
    if flush["scope"] == "page":    # eager: the slot its kunmap tore down
        return (flush["_slot"],)
    raise Mismatch(f"flush scope {flush['scope']!r} with pages={flush['pages']}: not a documented flush")


def replay_cpu(cpu: int, ops: list[tuple], events: list[dict], cfg) -> CpuReplay:
    """Predict CPU `cpu`'s own events from its program and the coordinator's answers in `events`."""
    c, pol = cfg.cost, cfg.policy.name
    tlb = RefTlb(cfg.tlb.entries, cfg.tlb.ways)
    out = CpuReplay()
    ring = pol != "kmap-local"
    # The coordinator's answers to this CPU, in the order it receives them.
    answers = [e for e in events if e["cpu"] == cpu and e["ev"] in ("kmap", "kunmap")] if ring else []
    flushes = [e for e in events if e["ev"] == "flush"]
    # An IPI is the one its source's flush sent this CPU: the k-th target is sent k broadcast steps in.
    sender = {(f["cpu"], j, f["t"] + k * c.ipi_broadcast_step): f
              for f in flushes for k, j in enumerate(f["targets"])}
    ipis = []   # (t_recv, src, t_send, t_handled, t_ack, scope, vpns) arriving at this CPU
    for e in events:
        if e["ev"] == "ipi" and e["cpu"] == cpu:
            f = sender.get((e["src"], cpu, e["t_send"]))
            if f is None:
                raise Mismatch(f"CPU {cpu}: IPI from {e['src']} sent at {e['t_send']} matches no flush")
            work = c.full_flush if f["_vpns"] is None else c.invlpg * len(f["_vpns"])
            t_handled = e["t_recv"] + c.ipi_handler + work
            ipis.append((e["t_recv"], e["src"], e["t_send"], t_handled, t_handled + c.ipi_ack, f["scope"], f["_vpns"]))
    ipis.sort(key=lambda x: (x[0], x[1]))
    own = sorted((f["t"] + f["stall"] - (c.full_flush if f["_vpns"] is None else c.invlpg * len(f["_vpns"])),
                  f["_vpns"]) for f in flushes if f["cpu"] == cpu and f["scope"] != "local" and ring)
    own_local = {f["t"]: f for f in flushes if f["cpu"] == cpu and f["scope"] == "local" and ring}

    clock = 0
    refill_due = False
    flushed: set[int] = set()
    held: dict[int, list[int]] = {}
    use: dict[int, list[int]] = {}
    local_stack: list[int] = []
    nxt = 0  # next IPI
    ans = 0  # next answer
    ev = out.events

    def flush(vpns) -> int:
        nonlocal refill_due
        if vpns is None:
            gone = tlb.flush_all()
            if cfg.tlb.background:
                refill_due = True
        else:
            gone = [v for v in vpns if tlb.invlpg(v)]
        flushed.update(gone)
        return len(gone)

    def handle(ipi, running: bool) -> int:
        nonlocal clock
        t_recv, src, t_send, t_handled, t_ack, scope, vpns = ipi
        dropped = flush(vpns)
        if running:
            clock += t_handled - t_recv
        ev.append({"t": t_recv, "cpu": cpu, "ev": "ipi", "src": src, "t_send": t_send, "t_recv": t_recv,
                   "t_ack": t_ack, "scope": scope, "dropped": dropped})
        return t_handled

    def record_use(page: int) -> None:
        u = use.pop(page, None)
        if u is not None:
            ev.append({"t": clock, "cpu": cpu, "ev": "access", "page": page, "slot": u[0], "n": u[1],
                       "writes": u[2], "hits": u[3], "misses": u[4]})

    def release(page: int) -> int:
        record_use(page)
        vpn = held[page].pop()
        if not held[page]:
            del held[page]
        return vpn

    for op in ops:
        while nxt < len(ipis) and ipis[nxt][0] <= clock:   # IPIs due at or before the op's start
            out.busy_ipis += ipis[nxt][0] < clock
            handle(ipis[nxt], True)
            nxt += 1
        kind = op[0]
        if kind == "compute":
            clock += op[1]
        elif kind == "access":
            _, page, n, write = op
            vpn = held[page][-1]
            t = clock
            if refill_due:
                refill_due = False
                ev.append({"t": t, "cpu": cpu, "ev": "tlb_miss", "page": None, "slot": None,
                           "n": cfg.tlb.background, "cycles": cfg.tlb.background * c.page_walk,
                           "flush_caused": True})
                t += cfg.tlb.background * c.page_walk
            slot = vpn if vpn < LOCAL_BASE else vpn - LOCAL_BASE - cpu * cfg.machine.kmap_local_slots
            frame = tlb.lookup(vpn)
            if frame is None:
                caused = vpn in flushed
                flushed.discard(vpn)
                tlb.fill(vpn, page)
                ev.append({"t": t, "cpu": cpu, "ev": "tlb_miss", "page": page, "slot": slot, "n": 1,
                           "cycles": c.page_walk, "flush_caused": caused})
                hits, misses = n - 1, 1
            else:
                if frame != page:
                    ev.append({"t": t, "cpu": cpu, "ev": "stale", "page": page, "reached": frame,
                               "slot": slot, "n": n})
                hits, misses = n, 0
            u = use.setdefault(page, [slot, 0, 0, 0, 0])
            u[1] += n
            u[2] += n if write else 0
            u[3] += hits
            u[4] += misses
            clock = t + n * c.access + hits * c.tlb_hit + misses * c.page_walk
        elif not ring:   # kmap_local
            page = op[1]
            if kind == "kmap":
                idx = len(local_stack)
                local_stack.append(page)
                held.setdefault(page, []).append(LOCAL_BASE + cpu * cfg.machine.kmap_local_slots + idx)
                clock += c.pte_write
                ev.append({"t": clock, "cpu": cpu, "ev": "kmap", "page": page, "slot": idx, "new": True,
                           "slept": False, "cycles": c.pte_write, "lock_wait": 0})
            else:
                idx = len(local_stack) - 1
                vpn = release(page)
                local_stack.pop()
                flushed.update([vpn] if tlb.invlpg(vpn) else [])
                ev.append({"t": clock, "cpu": cpu, "ev": "flush", "scope": "local", "slots": 1, "targets": [],
                           "pages": 1, "stall": c.invlpg})
                clock += c.pte_write + c.invlpg
                ev.append({"t": clock, "cpu": cpu, "ev": "kunmap", "page": page, "slot": idx, "count": 0})
        else:            # a ring request: blocked until the coordinator answers
            page = op[1]
            if kind == "kunmap" and page in held:
                release(page)
            out.requests.append((clock, kind, page))
            if ans >= len(answers):
                raise Mismatch(f"CPU {cpu}: no answer in the trace to its {kind} of page {page} at t={clock}")
            a = answers[ans]
            ans += 1
            if a["ev"] != kind or a["page"] != page:
                raise Mismatch(f"CPU {cpu}: its {kind}({page}) at t={clock} was answered by {a['ev']}({a['page']})")
            t_done = a["t"]
            end = t_done
            # Serviced while spinning/asleep, with the CPU's own flushes as initiator, in time order.
            pending_own = [o for o in own if clock <= o[0] <= t_done]
            own = [o for o in own if o not in pending_own]
            for lf in [f for t, f in own_local.items() if clock <= t <= t_done]:
                pending_own.append((lf["t"], None))   # no-ipi's local-only flush of the initiator's TLB
                del own_local[lf["t"]]
            pending_own.sort(key=lambda o: o[0])
            while (nxt < len(ipis) and ipis[nxt][0] <= t_done) or pending_own:
                if pending_own and not (nxt < len(ipis) and ipis[nxt][0] <= t_done
                                        and ipis[nxt][0] < pending_own[0][0]):
                    flush(pending_own.pop(0)[1])
                    continue
                end = max(end, handle(ipis[nxt], False))
                nxt += 1
            if kind == "kmap":
                held.setdefault(page, []).append(a["slot"])
            clock = end
    while nxt < len(ipis) and ipis[nxt][0] <= clock:   # due at the program's end: handled while running
        handle(ipis[nxt], True)
        nxt += 1
    for page in list(use):       # holds still open when the program ends
        record_use(page)
    while nxt < len(ipis):       # IPIs after the program's end: handled, the clock no longer matters
        handle(ipis[nxt], False)
        nxt += 1
    return out


# ---- the coordinator ------------------------------------------------------------------------------------

class RefLockRing:
    """kmap_lock, the pkmap ring and the shootdown timing, predicting ring events and IPI times."""

    def __init__(self, cfg):
        self.cfg, self.c = cfg, cfg.cost
        self.n = cfg.machine.ring_size
        self.pol = cfg.policy.name
        self.count = [0] * self.n
        self.pte: list[int | None] = [None] * self.n
        self.virtual: dict[int, int] = {}
        self.cursor = 0
        self.free_at = 0
        self.sleepers: list[list] = []
        self.events: list[dict] = []
        self.ipis: list[dict] = []

    def run(self, requests: dict[int, list[tuple[int, str, int]]]) -> None:
        """Grant every CPU's requests in (time, CPU) order. A CPU's next request is only known once the
        previous one returned, so each CPU's requests are released one at a time."""
        queue: list = []
        nxt = {cpu: 0 for cpu in requests}
        for cpu, reqs in requests.items():
            if reqs:
                t, op, page = reqs[0]
                heapq.heappush(queue, (t, cpu, [t, cpu, op, page, t, 0, False]))
                nxt[cpu] = 1
        while queue:
            _, _, r = heapq.heappop(queue)
            done = self._kmap(r) if r[2] == "kmap" else self._kunmap(r)
            for w in done["woken"]:
                heapq.heappush(queue, (w[0], w[1], w))
            if not done["asleep"]:
                cpu = r[1]
                if nxt[cpu] < len(requests[cpu]):
                    t, op, page = requests[cpu][nxt[cpu]]
                    heapq.heappush(queue, (t, cpu, [t, cpu, op, page, t, 0, False]))
                    nxt[cpu] += 1

    def _lock(self, r) -> int:
        t, c = r[0], self.c
        t_acq = t + c.lock_acquire if t >= self.free_at else self.free_at + c.lock_handoff
        r[5] += t_acq - t
        return t_acq + c.lock_hold

    def _flush(self, t: int, cpu: int, scope: str, vpns, slots: int, remote: bool) -> int:
        c = self.c
        if vpns is not None and len(vpns) > self.cfg.policy.flush_ceiling:
            vpns = None
        work = c.full_flush if vpns is None else c.invlpg * len(vpns)
        targets = [j for j in range(self.cfg.machine.cpus) if j != cpu] if remote else []
        end = t
        for k, j in enumerate(targets):
            t_send = t + k * c.ipi_broadcast_step
            t_recv = t_send + c.ipi_latency
            t_ack = t_recv + c.ipi_handler + work + c.ipi_ack
            self.ipis.append({"t": t_recv, "cpu": j, "src": cpu, "t_send": t_send, "t_recv": t_recv, "t_ack": t_ack})
            end = max(end, t_ack)
        end += work
        self.events.append({"t": t, "cpu": cpu, "ev": "flush", "scope": scope, "slots": slots,
                            "targets": targets, "pages": None if vpns is None else len(vpns), "stall": end - t})
        return end

    def _wrap_flush(self, t: int, cpu: int, torn: list[int]) -> int:
        if self.pol == "linux-2.4":
            return self._flush(t, cpu, "all", None, len(torn), True)
        if self.pol == "linux-2.6" and torn:
            return self._flush(t, cpu, "range", tuple(range(self.n)), len(torn), True)
        if self.pol == "no-ipi":
            return self._flush(t, cpu, "local", None, len(torn), False)
        return t

    def _kmap(self, r) -> dict:
        t_req, cpu, _, page, t_first, _, slept = r
        c = self.c
        t = self._lock(r)
        slot = self.virtual.get(page)
        new = False
        if slot is None:
            t_scan, probes, budget = t, 0, self.n
            while True:
                self.cursor = (self.cursor + 1) % self.n
                if self.cursor == 0:   # flush_all_zero_pkmaps, then the policy's flush
                    t = max(t, t_scan + probes * c.pkmap_scan)
                    torn = [i for i in range(self.n) if self.count[i] == 1]
                    for i in torn:
                        self.count[i] = 0
                        del self.virtual[self.pte[i]]
                        self.pte[i] = None
                    self.events.append({"t": t, "cpu": cpu, "ev": "wrap", "slots": len(torn)})
                    t = self._wrap_flush(t, cpu, torn)
                    budget = self.n
                probes += 1
                if self.count[self.cursor] == 0:
                    slot = self.cursor
                    break
                budget -= 1
                if not budget:
                    break
            t = max(t, t_scan + probes * c.pkmap_scan)
            if slot is None:   # sleep on pkmap_map_wait with the lock released
                self.free_at = t
                r[6] = True
                self.sleepers.append(r)
                self.events.append({"t": t, "cpu": cpu, "ev": "wait", "page": page})
                return {"woken": [], "asleep": True}
            new = True
            self.pte[slot] = page
            self.virtual[page] = slot
            self.count[slot] = 1
            t += c.pte_write
        self.count[slot] += 1
        self.free_at = t
        self.events.append({"t": t, "cpu": cpu, "ev": "kmap", "page": page, "slot": slot, "new": new,
                            "slept": r[6], "cycles": t - t_first, "lock_wait": r[5]})
        return {"woken": [], "asleep": False}

    def _kunmap(self, r) -> dict:
        cpu, page = r[1], r[3]
        t = self._lock(r)
        slot = self.virtual[page]
        self.count[slot] -= 1
        count = self.count[slot]
        if count == 1 and self.pol == "eager":
            self.count[slot] = 0
            del self.virtual[page]
            self.pte[slot] = None
            count = 0
            t = self._flush(t, cpu, "page", (slot,), 1, True)
        self.free_at = t
        self.events.append({"t": t, "cpu": cpu, "ev": "kunmap", "page": page, "slot": slot, "count": count})
        woken = []
        if count <= 1 and self.sleepers:
            woken, self.sleepers = self.sleepers, []
            self.events.append({"t": t, "cpu": cpu, "ev": "wake", "woken": [w[1] for w in woken]})
            for w in woken:
                w[0] = t + self.c.wakeup_latency
        return {"woken": woken, "asleep": False}


# ---- the whole run ------------------------------------------------------------------------------------

def _key(e: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in e.items() if k not in ("seq",) and v is not None))


def _compare(what: str, predicted: list[dict], recorded: list[dict]) -> None:
    p = sorted(_key(e) for e in predicted)
    r = sorted(_key(e) for e in recorded)
    if p != r:
        pc, rc = defaultdict(int), defaultdict(int)
        for k in p:
            pc[k] += 1
        for k in r:
            rc[k] += 1
        only_p = [dict(k) for k in pc if pc[k] > rc.get(k, 0)][:3]
        only_r = [dict(k) for k in rc if rc[k] > pc.get(k, 0)][:3]
        raise Mismatch(f"{what}: {len(p)} predicted vs {len(r)} recorded events; the reference predicts "
                       f"{only_p} where the trace has {only_r}")


def check_run(cfg, ops: list[list[tuple]], events: list[dict[str, Any]], busy: list[int] | None = None) -> dict:
    """Recompute every event of a finished run from its programs; raises Mismatch at the first difference.
    Returns figures recomputed by the reference (for the caller to compare with summary.json); `busy`, if
    given, gets each CPU's count of IPIs that reached it while it computed."""
    if cfg.policy.name not in SUPPORTED:
        raise ValueError(f"the timing reference does not know policy {cfg.policy.name!r}")
    events = [dict(e) for e in events]
    for f in events:   # the pages each flush invalidates (eager: the slot its kunmap tears down)
        if f["ev"] == "flush":
            if f["scope"] == "page":
                f["_slot"] = next(k["slot"] for k in events if k["ev"] == "kunmap" and k["cpu"] == f["cpu"]
                                  and k["t"] == f["t"] + f["stall"] and k["count"] == 0)
            f["_vpns"] = None if f["scope"] in ("all", "local") else _ipi_vpns(f, cfg)
    ncpu = cfg.machine.cpus
    replays = [replay_cpu(cpu, ops[cpu], events, cfg) for cpu in range(ncpu)]
    if busy is not None:
        busy.extend(rp.busy_ipis for rp in replays)
    clean = [{k: v for k, v in e.items() if not k.startswith("_")} for e in events]
    for cpu, rp in enumerate(replays):
        mine = [e for e in clean if e["cpu"] == cpu and (e["ev"] in CPU_EVENTS or cfg.policy.name == "kmap-local")]
        _compare(f"CPU {cpu}'s own events", rp.events, mine)
    figures = {"ipis": sum(1 for e in clean if e["ev"] == "ipi")}
    if cfg.policy.name != "kmap-local":
        coord = RefLockRing(cfg)
        coord.run({cpu: rp.requests for cpu, rp in enumerate(replays)})
        ring_events = [e for e in clean if e["ev"] in ("kmap", "kunmap", "wrap", "flush", "wait", "wake")]
        _compare("ring and lock events", coord.events, ring_events)
        sent = [{k: e[k] for k in ("t", "cpu", "src", "t_send", "t_recv", "t_ack")} for e in clean if e["ev"] == "ipi"]
        _compare("IPI send/arrival/ack times", coord.ipis, sent)
        kmaps = [e for e in coord.events if e["ev"] == "kmap"]
        figures.update(kmap_cycles=sum(e["cycles"] for e in kmaps), lock_wait_cycles=sum(e["lock_wait"] for e in kmaps),
                       stall_cycles=sum(e["stall"] for e in coord.events if e["ev"] == "flush"))
    accesses = [e for rp in replays for e in rp.events if e["ev"] == "access"]
    refills = [e for rp in replays for e in rp.events if e["ev"] == "tlb_miss" and e["page"] is None]
    figures.update(tlb_hits=sum(e["hits"] for e in accesses),
                   tlb_misses=sum(e["misses"] for e in accesses) + sum(e["n"] for e in refills),
                   stale=sum(e["n"] for rp in replays for e in rp.events if e["ev"] == "stale"))
    return figures
