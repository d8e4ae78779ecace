"""An independent second model of mm/highmem.c's persistent kmap ring, and a trace replayer.

Written from the kernel's own algorithm (kmap_high, map_new_virtual, flush_all_zero_pkmaps,
kunmap_high) as the tests' oracle. It deliberately shares no code with smpsim.model: a bug copied into
both would hide itself.

    kmap_high(page):
        slot = page->virtual
        if none: slot = map_new_virtual(page)          (may sleep on pkmap_map_wait)
        pkmap_count[slot]++                            (BUG if the result is < 2)

    map_new_virtual(page):
      start:
        count = LAST_PKMAP
        for (;;):
            last_pkmap_nr = (last_pkmap_nr + 1) & LAST_PKMAP_MASK
            if !last_pkmap_nr: flush_all_zero_pkmaps(); count = LAST_PKMAP
            if !pkmap_count[last_pkmap_nr]: break
            if --count: continue
            sleep; after wake-up: if page->virtual: return it; goto start
        set_pte(pkmap_page_table[last_pkmap_nr], page); pkmap_count[last_pkmap_nr] = 1
        page->virtual = last_pkmap_nr

    flush_all_zero_pkmaps():
        for every slot at count 1: count = 0, pte_clear (BUG if already clear), page->virtual = NULL
        then the TLB flush (2.4: always flush_tlb_all; 2008 on: flush_tlb_kernel_range only if any slot)

    kunmap_high(page):
        slot = page->virtual (BUG if none); --pkmap_count[slot] (BUG if 0); if 1: wake_up(pkmap_map_wait)

Later designs, as this model reads them (docs/policies.md has the sources):

    vmap-lazy (mm/vmalloc.c's lazy purge): a wrap tears nothing down. kunmap_high that leaves lazy_max
        slots at count 1 purges: every count-1 slot goes to 0, then ONE flush_tlb_kernel_range from the
        lowest to the highest of them (all of them if that is more than the ceiling). A scan that finds no
        slot purges (if anything is at count 1) and scans again before it sleeps. lazy_max defaults to
        ceil(LAST_PKMAP * fls(ncpus) / 4): lazy_max_pages() over the 128 MB x86-32 vmalloc area.
    tlb-gen: linux-2.6's flush, but the IPIs go only to CPUs that kmapped, or ended a hold of, a page
        since they were last flushed, or hold one now.
    latr: the wrap's torn slots are NOT free: the initiator invalidates them itself at once, every other
        CPU at its first tick after the wrap (ticks at multiples of `tick`), and only then (a `free`
        event, before any request made at or after that tick) may map_new_virtual take them; sleepers
        are woken then.

The replayer feeds the ring events of a trace (kmap, kunmap, wait, wrap, flush, wake, free) through this
model in seq order and reports the first disagreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

RING_POLICIES = ("linux-2.4", "linux-2.6", "eager", "no-ipi", "no-flush", "vmap-lazy", "tlb-gen", "latr")
RING_EVENTS = frozenset({"kmap", "kunmap", "wait", "wrap", "flush", "wake", "free"})


class KernelBug(AssertionError):
    """The reference kernel would BUG() here."""


class ReplayMismatch(AssertionError):
    """The trace disagrees with the reference model."""


class RefHighmem:
    """pkmap_count, pkmap_page_table, page->virtual and last_pkmap_nr, plus the policy's flush choice."""

    def __init__(self, last_pkmap: int, policy: str = "linux-2.4", ncpus: int = 1, flush_ceiling: int = 33,
                 lazy_max: int | None = None, tick: int = 2_500_000):
        if policy not in RING_POLICIES:
            raise ValueError(f"policy {policy!r} does not use the pkmap ring")
        self.LAST_PKMAP = last_pkmap
        self.policy = policy
        self.ncpus = ncpus
        self.flush_ceiling = flush_ceiling
        if lazy_max is None:
            lazy_max = -(-last_pkmap * ncpus.bit_length() // 4)
        self.lazy_max = min(max(lazy_max, 1), last_pkmap)
        self.tick = tick
        self.now = 0                           # time of the ring operation being replayed (latr)
        self.not_yet_free: set[int] = set()    # latr: torn down, some CPU's tick still due
        self.batches: list[tuple[int, int, list[int]]] = []  # latr: (tick that frees, initiator, slots)
        self.fresh = [False] * ncpus           # tlb-gen: used a pkmap address since its last flush
        self.holding: list[dict[int, int]] = [{} for _ in range(ncpus)]
        self.pkmap_count = [0 for _ in range(last_pkmap)]
        self.pkmap_page_table: list[int | None] = [None for _ in range(last_pkmap)]
        self.virtual: dict[int, int] = {}      # page -> slot ("page->virtual")
        self.last_pkmap_nr = 0
        # What the current call did besides its result, in order: ("wrap", torn) / ("flush", dict).
        self.side_effects: list[tuple[str, Any]] = []

    # ---- helpers -------------------------------------------------------------------------------------
    def page_address(self, page: int) -> int | None:
        return self.virtual.get(page)

    def _others(self, cpu: int) -> list[int]:
        return [c for c in range(self.ncpus) if c != cpu]

    def _flush_record(self, cpu: int, scope: str, torn: int, vpns, remote: bool) -> dict:
        """A flush of vpns (None: the whole TLB; a range above the ceiling is a full flush, as
        flush_tlb_kernel_range does) on `cpu`, by IPIs to every other CPU if remote."""
        vpns = None if vpns is None or len(vpns) > self.flush_ceiling else tuple(vpns)
        return {"scope": scope, "slots": torn, "pages": None if vpns is None else len(vpns), "vpns": vpns,
                "targets": self._others(cpu) if remote else []}

    # ---- mm/highmem.c --------------------------------------------------------------------------------
    def _tear_down_unused(self) -> list[int]:
        torn = []
        for i in range(self.LAST_PKMAP):
            if self.pkmap_count[i] != 1:
                continue
            self.pkmap_count[i] = 0
            page = self.pkmap_page_table[i]
            if page is None:
                raise KernelBug(f"flush_all_zero_pkmaps: slot {i} at count 1 has no pte")
            self.pkmap_page_table[i] = None
            if self.virtual.get(page) != i:
                raise KernelBug(f"page {page} mapped at slot {i} but page->virtual says {self.virtual.get(page)}")
            del self.virtual[page]
            torn.append(i)
        return torn

    def flush_all_zero_pkmaps(self, cpu: int) -> int:
        if self.policy == "vmap-lazy":  # the cursor's wrap frees nothing: purges do
            self.side_effects.append(("wrap", 0))
            return 0
        slots = self._tear_down_unused()
        torn = len(slots)
        self.side_effects.append(("wrap", torn))
        # The TLB flush that makes "count 0" mean "clean everywhere".
        if self.policy == "linux-2.4":
            self.side_effects.append(("flush", self._flush_record(cpu, "all", torn, None, True)))
        elif self.policy in ("linux-2.6", "tlb-gen"):
            if torn:
                rec = self._flush_record(cpu, "range", torn, range(self.LAST_PKMAP), True)
                if self.policy == "tlb-gen":
                    rec["targets"] = [j for j in rec["targets"] if self.fresh[j] or self.holding[j]]
                    for j in rec["targets"] + [cpu]:
                        self.fresh[j] = False
                self.side_effects.append(("flush", rec))
        elif self.policy == "latr":
            if torn:
                self.side_effects.append(("flush", self._flush_record(cpu, "lazy", torn, slots, False)))
                if self.ncpus > 1:
                    self.not_yet_free.update(slots)
                    self.batches.append(((self.now // self.tick + 1) * self.tick, cpu, slots))
        elif self.policy == "no-ipi":
            self.side_effects.append(("flush", self._flush_record(cpu, "local", torn, None, False)))
        # eager: nothing can be at count 1 here; no-flush: never flushes.
        return torn

    def purge(self, cpu: int) -> int:
        """vmap-lazy: tear every count-1 slot down, one flush over the span they cover."""
        slots = self._tear_down_unused()
        if slots:
            self.side_effects.append(("flush", self._flush_record(
                cpu, "range", len(slots), range(min(slots), max(slots) + 1), True)))
        return len(slots)

    def free_batch(self) -> tuple[int, int, int]:
        """latr: the oldest batch of torn slots becomes usable (every CPU has ticked)."""
        t_free, initiator, slots = self.batches.pop(0)
        self.not_yet_free -= set(slots)
        return t_free, initiator, len(slots)

    def map_new_virtual(self, page: int, cpu: int, purged: bool = False) -> int | None:
        """A slot, or None when the caller must sleep (one full fruitless scan)."""
        count = self.LAST_PKMAP
        while True:
            self.last_pkmap_nr = (self.last_pkmap_nr + 1) % self.LAST_PKMAP
            if self.last_pkmap_nr == 0:
                self.flush_all_zero_pkmaps(cpu)
                count = self.LAST_PKMAP
            if self.pkmap_count[self.last_pkmap_nr] == 0 and self.last_pkmap_nr not in self.not_yet_free:
                break
            count -= 1
            if count:
                continue
            if self.policy == "vmap-lazy" and not purged and self.purge(cpu):
                return self.map_new_virtual(page, cpu, purged=True)  # alloc_vmap_area: purge, retry once
            return None
        slot = self.last_pkmap_nr
        if self.pkmap_page_table[slot] is not None:
            raise KernelBug(f"slot {slot} at count 0 still has a pte (page {self.pkmap_page_table[slot]})")
        self.pkmap_page_table[slot] = page
        self.pkmap_count[slot] = 1
        self.virtual[page] = slot
        return slot

    def kmap_high(self, page: int, cpu: int = 0) -> tuple[int, bool] | None:
        """(slot, new mapping?) or None if the caller goes to sleep. The retry after a sleep is another
        call (the kernel re-checks page->virtual and restarts the scan from the current cursor)."""
        self.side_effects = []
        slot = self.page_address(page)
        new = False
        if slot is None:
            slot = self.map_new_virtual(page, cpu)
            if slot is None:
                return None
            new = True
        self.pkmap_count[slot] += 1
        if self.pkmap_count[slot] < 2:
            raise KernelBug(f"kmap_high: pkmap_count[{slot}] = {self.pkmap_count[slot]} < 2")
        self.holding[cpu][page] = self.holding[cpu].get(page, 0) + 1
        self.fresh[cpu] = True
        return slot, new

    def kunmap_high(self, page: int, cpu: int = 0) -> tuple[int, int, bool]:
        """(slot, count after, need_wakeup: the count fell to 1 (or 0 after an eager teardown))."""
        self.side_effects = []
        slot = self.page_address(page)
        if slot is None:
            raise KernelBug(f"kunmap_high: page {page} has no pkmap address")
        self.pkmap_count[slot] -= 1
        c = self.pkmap_count[slot]
        if c == 0:
            raise KernelBug(f"kunmap_high: pkmap_count[{slot}] (page {page}) reached 0")
        wake = c == 1
        if self.holding[cpu].get(page):  # this CPU's own hold ends (another CPU's kunmap ends none)
            self.holding[cpu][page] -= 1
            if not self.holding[cpu][page]:
                del self.holding[cpu][page]
            self.fresh[cpu] = True
        if c == 1 and self.policy == "vmap-lazy" and self.pkmap_count.count(1) >= self.lazy_max:
            self.purge(cpu)
            c = self.pkmap_count[slot]
        if c == 1 and self.policy == "eager":
            # Eager policy: tear the slot down now and shoot the page down on every CPU.
            self.pkmap_count[slot] = 0
            self.pkmap_page_table[slot] = None
            del self.virtual[page]
            c = 0
            self.side_effects.append(("flush", self._flush_record(cpu, "page", 1, (slot,), True)))
        return slot, c, wake

    def describe(self) -> str:
        return (f"ref: last_pkmap_nr={self.last_pkmap_nr} count={self.pkmap_count} "
                f"pte={self.pkmap_page_table}")


# ---- replay -------------------------------------------------------------------------------------------

@dataclass
class ReplayStats:
    kmaps: int = 0
    new: int = 0
    reuses: int = 0
    kunmaps: int = 0
    wraps: int = 0
    torn: int = 0
    flushes: int = 0
    sleeps: int = 0
    slept_kmaps: int = 0
    wakes: int = 0
    frees: int = 0
    slots: list[tuple[int, int, int]] = field(default_factory=list)  # (cpu, page, slot) per kmap
    # latr: (cpu, tick, pages) of every tick invalidation the lazy flushes owe, and of those in the trace
    ticks_owed: list[tuple[int, int, int | None]] = field(default_factory=list)
    ticks_seen: list[tuple[int, int, int | None]] = field(default_factory=list)
    flush_vpns: dict[int, tuple[int, ...] | None] = field(default_factory=dict)  # seq of a flush -> its pages
    ref: RefHighmem | None = None


class TraceReplay:
    """Feeds a trace's ring events, in seq order, to RefHighmem, one kernel step per event type; see replay."""

    def __init__(self, ref: RefHighmem, check_flushes: bool):
        self.ref, self.check_flushes = ref, check_flushes
        self.st = ReplayStats(ref=ref)
        self.effects: list[dict] = []        # wrap/flush events since the last ring operation
        self.waitq: list[int] = []           # CPUs asleep on pkmap_map_wait, in sleep order
        self.woken: set[int] = set()         # woken, retry not seen yet
        self.slept: set[int] = set()         # CPUs whose current kmap request has slept at least once
        self.expect_wake: list[int] | None = None
        self.freed_at: int | None = None     # latr: time of the frees just seen (a wake may follow them)
        self.last_free_tick = -1
        self.last_seq = -1

    def fail(self, ev: dict, why: str) -> None:
        raise ReplayMismatch(f"seq {ev.get('seq')}: {why}\n  event: {ev}\n  {self.ref.describe()}")

    # ---- one event ---------------------------------------------------------------------------------------
    def event(self, ev: dict) -> None:
        kind = ev.get("ev")
        if kind not in RING_EVENTS:
            return
        self.in_seq_order(ev)
        if kind == "flush" and ev.get("scope") == "tick":  # a CPU's own lazy invalidation (latr)
            self.st.ticks_seen.append((ev["cpu"], ev["t"], ev.get("pages")))
            return
        self.after_frees(ev)
        if self.expect_wake is not None:
            self.wake_up(ev)
        elif kind in ("wrap", "flush"):
            self.effects.append(ev)
        elif kind == "free":
            self.free_deferred(ev)
        elif kind == "wake":
            self.fail(ev, f"wake with no kunmap dropping a count to 1 and sleepers {self.waitq}")
        elif kind in ("kmap", "wait"):
            self.kmap_high(ev)
        else:
            self.kunmap_high(ev)

    def in_seq_order(self, ev: dict) -> None:
        seq = ev.get("seq", self.last_seq + 1)
        if seq <= self.last_seq:
            self.fail(ev, f"events out of seq order ({seq} after {self.last_seq})")
        self.last_seq = seq

    def after_frees(self, ev: dict) -> None:
        """latr: the frees of one tick are over; the sleepers, if any, are woken next."""
        if self.freed_at is not None and not (ev["ev"] == "free" and ev["t"] == self.freed_at):
            self.freed_at = None
            if self.waitq:
                self.expect_wake = list(self.waitq)

    # ---- mm/highmem.c, step by step ----------------------------------------------------------------------
    def wake_up(self, ev: dict) -> None:
        """wake_up(&pkmap_map_wait): every sleeper, in sleep order, right after the kunmap or frees."""
        if ev["ev"] != "wake":
            self.fail(ev, f"expected a wake of CPUs {self.expect_wake} right after the kunmap")
        if list(ev.get("woken") or []) != self.expect_wake:
            self.fail(ev, f"woke {ev.get('woken')}, the reference wakes {self.expect_wake} (all sleepers, in order)")
        self.woken.update(self.expect_wake)
        self.waitq.clear()
        self.st.wakes += 1
        self.expect_wake = None

    def free_deferred(self, ev: dict) -> None:
        """latr: the oldest lazily flushed slots become usable once every CPU has ticked."""
        if self.effects:
            self.fail(ev, f"free in the middle of a ring operation, after {[_short(e) for e in self.effects]}")
        if not self.ref.batches:
            self.fail(ev, "free with no lazily flushed slots awaiting it")
        t_tick, initiator, n = self.ref.free_batch()
        if (ev.get("cpu"), ev.get("slots")) != (initiator, n) or ev["t"] < t_tick:
            self.fail(ev, f"free of {ev.get('slots')} slots by CPU {ev.get('cpu')} at t={ev['t']}; the reference "
                          f"frees {n} slots of CPU {initiator}'s wrap at the tick t={t_tick} or later")
        self.last_free_tick = t_tick
        self.freed_at = ev["t"]
        self.st.frees += 1

    def kmap_high(self, ev: dict) -> None:
        """A kmap (or a wait: the scan found no slot): the same slot, `new` and `slept` as the reference."""
        cpu, page, st = ev.get("cpu"), ev.get("page"), self.st
        if cpu in self.slept and cpu not in self.woken:
            self.fail(ev, f"CPU {cpu} retries its kmap without having been woken (asleep: {self.waitq})")
        self.woken.discard(cpu)
        if ev["ev"] == "kmap" and not ev.get("slept") and ev.get("cycles") is not None:
            self.requested_in_tick_order(ev)
        self.ref.now = next((e["t"] for e in self.effects if e["ev"] == "wrap"), ev["t"])
        res = self.ref.kmap_high(page, cpu)
        self.match_effects(ev)
        if ev["ev"] == "wait":
            if res is not None:
                self.fail(ev, f"CPU {cpu} slept on page {page}, the reference maps it at slot {res[0]} (new={res[1]})")
            self.slept.add(cpu)
            self.waitq.append(cpu)
            st.sleeps += 1
            return
        if res is None:
            self.fail(ev, f"kmap of page {page} at slot {ev.get('slot')}, but the reference finds no free slot "
                          f"and sleeps")
        slot, new = res
        if ev.get("slot") != slot:
            self.fail(ev, f"kmap of page {page} at slot {ev.get('slot')}, reference slot {slot}")
        if bool(ev.get("new")) != new:
            self.fail(ev, f"kmap new={ev.get('new')}, reference new={new}")
        if bool(ev.get("slept")) != (cpu in self.slept):
            self.fail(ev, f"kmap slept={ev.get('slept')}, reference slept={cpu in self.slept}")
        st.slept_kmaps += cpu in self.slept
        self.slept.discard(cpu)
        st.kmaps += 1
        st.new += new
        st.reuses += not new
        st.slots.append((cpu, page, slot))

    def requested_in_tick_order(self, ev: dict) -> None:
        """latr: kmap_lock requests are taken in (time, CPU) order, a tick's frees before requests at it."""
        t_req, ref = ev["t"] - ev["cycles"], self.ref
        if ref.batches and ref.batches[0][0] <= t_req:
            self.fail(ev, f"kmap requested at t={t_req} before the slots freed by the tick at t={ref.batches[0][0]}")
        if t_req < self.last_free_tick:
            self.fail(ev, f"kmap requested at t={t_req} after slots freed by the tick at t={self.last_free_tick}")

    def kunmap_high(self, ev: dict) -> None:
        """The same slot and count afterwards; sleepers are woken next when the count fell to 1."""
        slot, count, wake = self.ref.kunmap_high(ev.get("page"), ev.get("cpu"))
        self.match_effects(ev)
        if ev.get("slot") != slot or ev.get("count") != count:
            self.fail(ev, f"kunmap slot={ev.get('slot')} count={ev.get('count')}, reference slot={slot} count={count}")
        self.st.kunmaps += 1
        if wake and self.waitq:
            self.expect_wake = list(self.waitq)

    # ---- what a ring operation did besides its result --------------------------------------------------------
    def match_effects(self, ev: dict) -> None:
        """The wraps and flushes the trace recorded before `ev` are those the reference's call made."""
        want = self.ref.side_effects
        got = self.effects
        if not self.check_flushes:
            want, got = [e for e in want if e[0] == "wrap"], [e for e in got if e["ev"] == "wrap"]
        if len(got) != len(want) or any(g["ev"] != kind for g, (kind, _) in zip(got, want)):
            self.fail(ev, f"reference side effects {want} but the trace has {[_short(e) for e in got]} "
                          f"before this event")
        for g, (kind, w) in zip(got, want):
            if g.get("cpu") != ev.get("cpu"):
                self.fail(g, f"{kind} on CPU {g.get('cpu')} during CPU {ev.get('cpu')}'s {ev['ev']}")
            if kind == "wrap":
                self.wrap(g, w)
            else:
                self.flush(g, w)
        self.effects.clear()

    def wrap(self, g: dict, torn: int) -> None:
        """flush_all_zero_pkmaps at the cursor's wrap: the same number of slots torn down."""
        if g.get("slots") != torn:
            self.fail(g, f"wrap tore down {g.get('slots')} slots, the reference tore down {torn}")
        self.st.wraps += 1
        self.st.torn += torn

    def flush(self, g: dict, w: dict) -> None:
        """The policy's flush: scope, slots, pages and targets; a lazy one owes every other CPU a tick."""
        for k in ("scope", "slots", "pages"):
            if g.get(k) != w[k]:
                self.fail(g, f"flush {k} = {g.get(k)!r}, reference {w[k]!r} ({w})")
        if sorted(g.get("targets") or []) != w["targets"]:
            self.fail(g, f"flush targets {g.get('targets')}, reference {w['targets']}")
        ncpus = self.ref.ncpus
        if w["scope"] == "lazy" and ncpus > 1:
            t_tick = self.ref.batches[-1][0]
            self.st.ticks_owed += [(j, t_tick, w["pages"]) for j in range(ncpus) if j != g["cpu"]]
        if "seq" in g:
            self.st.flush_vpns[g["seq"]] = w["vpns"]
        self.st.flushes += 1

    # ---- the end of the trace ----------------------------------------------------------------------------
    def finish(self) -> ReplayStats:
        """Nothing left half done, and every tick invalidation in the trace owed by a lazy flush."""
        if self.effects:
            raise ReplayMismatch(f"trailing {[_short(e) for e in self.effects]} after the last ring operation")
        if self.expect_wake is not None or (self.freed_at is not None and self.waitq):
            raise ReplayMismatch(f"trace ends without the wake of CPUs {self.expect_wake or self.waitq}")
        owed = list(self.st.ticks_owed)
        for x in self.st.ticks_seen:
            if x not in owed:
                raise ReplayMismatch(f"tick invalidation (cpu, t, pages) {x} that no lazy flush owes")
            owed.remove(x)
        return self.st


def replay(events: Iterable[dict[str, Any]], last_pkmap: int, policy: str, ncpus: int,
           flush_ceiling: int = 33, check_flushes: bool = True, lazy_max: int | None = None,
           tick: int = 2_500_000) -> ReplayStats:
    """Check a trace's ring events, in seq order, against RefHighmem; raise ReplayMismatch on the first
    disagreement. Returns what was seen (so callers can insist that wraps or sleeps actually happened).

    - every kmap: same slot, same `new`, same `slept` (the request slept on pkmap_map_wait at least once)
    - every wait: the reference also finds no free slot in that scan
    - wrap events occur exactly where the reference wraps (between the same ring operations) with the
      same number of torn-down slots; flush events (check_flushes) where the policy flushes, with scope,
      slots, targets and pages (flush_vpns: the pages each one invalidates, by seq)
    - every kunmap: same slot and count afterwards; a wake event right after it exactly when the count
      fell to 1 (or 0 by eager teardown) with sleepers waiting, naming all of them in sleep order
    - a sleeper retries only after it was woken
    - latr: a `free` event per lazy flush, in order, by its initiator, at or after the first tick after
      it, and before any kmap requested at or after that tick (none requested earlier comes after it);
      sleepers are woken right after the frees of a tick; every other CPU has one `tick` flush of the
      same pages at that tick (ticks_owed / ticks_seen)
    """
    r = TraceReplay(RefHighmem(last_pkmap, policy, ncpus, flush_ceiling, lazy_max, tick), check_flushes)
    for ev in events:
        r.event(ev)
    return r.finish()


def _short(ev: dict) -> str:
    if ev["ev"] == "wrap":
        return f"wrap(slots={ev.get('slots')})@{ev.get('seq')}"
    return f"flush({ev.get('scope')}, slots={ev.get('slots')})@{ev.get('seq')}"


# ---- run-directory helpers (the smpsim trace API) ---------------------------------------------------

def load_events(run_dir: str | Path) -> list[dict[str, Any]]:
    import warnings

    from smpsim.trace.reader import iter_events, open_run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a run stopped by a BUG/deadlock is "truncated" but readable
        run = open_run(run_dir)
    return list(iter_events(run))


def replay_run(run_dir: str | Path, cfg, **kw) -> ReplayStats:
    """Replay the run directory of `cfg` (a smpsim Config)."""
    return replay(load_events(run_dir), cfg.machine.ring_size, cfg.policy.name, cfg.machine.cpus,
                  cfg.policy.flush_ceiling, lazy_max=cfg.policy.lazy_max, tick=cfg.policy.tick, **kw)
