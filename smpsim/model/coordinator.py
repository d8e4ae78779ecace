"""Coordinator-side state: the pkmap ring, the kernel page table, kmap_lock, pkmap_map_wait and IPIs.

It serializes kmap_high / kunmap_high like kmap_lock does. kmap_lock is modelled as a FIFO (ticket) lock, so
requests are granted in the canonical order (request time, CPU id), and a request is only granted once no
CPU can still send an earlier one: every decision is a function of message contents, never of arrival
order. Global flushes run under the lock (2.4: smp_call_function with wait=1), so other CPUs that want the
lock spin until the initiator has every ack.

A compound request (messages.Request) holds ring calls that only compute separates; the coordinator makes
each later call at the time the CPU will, from its mirror of the IPIs it sent that CPU and the IPI rule
the CPU applies (cpu.service_ipis), and replies once for all of them.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from smpsim.config import Config
from smpsim.model.messages import (ASLEEP, DONE, INF, KMAP, KUNMAP_MIGRATED, REQUESTED, RUNNING, Call, CallResult,
                                   Done, Ipi, Progress, Request, reply)
from smpsim.model import events, lookahead
from smpsim.model.cpu import service_ipis
from smpsim.model.errors import DeadlockError, ModelError
from smpsim.model.policies import Flush, FlushPolicy, Guard, make_policy, next_tick, traits
from smpsim.model.ring import PkmapRing


class _Request:
    """One kmap_high / kunmap_high call (kind: messages.KMAP, ...), kept across sleeps on pkmap_map_wait;
    `ops[nxt:]` are the calls of the same compound request still to come (Request.ops: indexed, not sliced
    per call), `results` what the ones before it returned."""
    __slots__ = ("t", "cpu", "kind", "page", "pc", "t_first", "lock_wait", "slept", "local_flushes", "ops",
                 "nxt", "results", "after")

    def __init__(self, t: int, cpu: int, kind: int, page: int, pc: int, ops: tuple[Call, ...] = (),
                 nxt: int = 1, results: list[CallResult] | None = None, after: int = INF):
        self.t, self.cpu, self.kind, self.page, self.pc = t, cpu, kind, page, pc
        self.t_first = t
        self.lock_wait = 0
        self.slept = False
        # (time, vpns) of the caller's own flushes: a tuple, replaced on the rare flush, so a call without
        # one allocates nothing for it and its result takes it as it is.
        self.local_flushes: tuple = ()
        self.ops, self.nxt, self.after = ops, nxt, after
        self.results: list[CallResult] = results if results is not None else []


class _Free:
    """Slots deferred by lazy invalidation (LATR) that become free at time t, when the last CPU's tick has
    invalidated them. Ordered before any request at t (cpu -1): a kmap at t may take them."""
    __slots__ = ("t", "cpu", "batches")

    def __init__(self, t: int):
        self.t, self.cpu = t, -1
        self.batches: list[tuple[int, list[int]]] = []  # (initiator of the wrap, slots), in wrap order


class Coordinator:
    """The machine's shared state and kmap_lock. It owns the pkmap ring and page table (PkmapRing), the flush
    policy, the lock's timing, the pending ring calls in canonical order, each CPU's status and lower bound
    (lb) as far as it knows, its mirror of the IPIs it sent each CPU, the sleepers on pkmap_map_wait, and
    the messages (outbox) and events it produces. It never reads a Cpu: only their messages."""

    def __init__(self, cfg: Config):
        self.ncpu = cfg.machine.cpus
        self.cost = c = cfg.cost
        # The costs and policy traits read at every call, as plain ints and bools (not config lookups).
        self.c_acquire, self.c_handoff, self.c_hold = c.lock_acquire, c.lock_handoff, c.lock_hold
        self.c_scan, self.c_pte = c.pkmap_scan, c.pte_write
        self.ring = PkmapRing(cfg.machine.ring_size)
        # The wrap distance (_time_to_wrap), asked at every step, kept until a call that can change the free
        # slots ahead of the cursor (-1: work it out again): only a new mapping (the cursor moves, a wrap), a
        # policy's teardown or a deferred release do.
        self.to_wrap = -1
        self.policy: FlushPolicy = make_policy(cfg, self.ring)
        # The policy's traits (policies.traits): hooks it leaves as no-ops are not called at every kmap.
        kind = traits(self.policy)
        self.uses_ring, self.flushes_only_at_wrap = kind.uses_ring, kind.flushes_only_at_wrap
        self.tracks_holds, self.flushes_at_unmap = kind.tracks_holds, kind.flushes_at_unmap
        # A policy from outside the package: its flushes are checked against its lookahead.
        self.guard: Guard | None = self.policy if isinstance(self.policy, Guard) else None
        self.lock_free_at = 0
        self.lock_owned_from = 0
        self.lock_held_cycles = 0                # kmap_lock held (hand-offs included), for its utilisation
        # Heap of (t, cpu, _Request or _Free) in canonical order: (t, cpu) is unique (a CPU has one call
        # pending at a time, a _Free one per t), so tuples compare in C and never reach the object.
        self.pending: list[tuple[int, int, _Request | _Free]] = []
        self.frees: dict[int, _Free] = {}        # pending _Free by time
        # Per CPU, the IPIs it has been sent and has not taken yet as far as the coordinator knows: a mirror
        # of the CPU's inbox, to place the later calls of a compound request where the CPU will make them.
        self.inboxes: list[list] = [[] for _ in range(self.ncpu)]
        self.computing: list[_Request | None] = [None] * self.ncpu  # pending compound call, not yet made
        self.status = [RUNNING] * self.ncpu
        self.unfinished = self.ncpu              # CPUs not DONE: asked after every step
        self.lb = [0] * self.ncpu                # RUNNING CPUs: no request before this time
        self.running = [(0, c) for c in range(self.ncpu)]  # heap of (lb, cpu), outdated entries skipped
        self.pkmap_map_wait: list[_Request] = []  # sleepers, in the order they went to sleep
        self.parked: dict[int, list[_Request]] = {}  # page -> KUNMAP_MIGRATED calls waiting for its kmap
        self.events: list[tuple] = []  # trace events, tuples laid out as in events.py
        self.outbox: list[tuple[int, tuple]] = []  # (destination CPU, message)
        self.t_last = 0

    # ---- messages from CPUs ---------------------------------------------------------------------------
    def receive(self, msg: tuple) -> None:
        kind = type(msg)
        if kind is Request:
            cpu, t, ops, after = msg
            first = ops[0]
            self.status[cpu] = REQUESTED
            inbox = self.inboxes[cpu]
            while inbox and inbox[0][0] <= t:  # taken before the call
                heappop(inbox)
            self._pend(_Request(t, cpu, first.kind, first.page, first.pc, ops, 1, None, after))
        elif kind is Progress:
            cpu, bound = msg
            self.lb[cpu] = bound
            heappush(self.running, (bound, cpu))
        elif kind is Done:
            cpu, _ = msg
            if self.status[cpu] != DONE:
                self.unfinished -= 1
            self.status[cpu] = DONE
            self.inboxes[cpu] = []
        else:
            raise ModelError(getattr(msg, "cpu", None), type(msg).__name__, None, f"unexpected message {msg!r}")

    # ---- scheduling -----------------------------------------------------------------------------------
    def _pend(self, r: _Request | _Free) -> None:
        heappush(self.pending, (r.t, r.cpu, r))

    def _earliest_running(self) -> tuple[int, int]:
        """(lb, cpu) of the running CPU that can send the earliest request."""
        heap, status, lb = self.running, self.status, self.lb
        while heap:
            lb_c, c = heap[0]
            if status[c] == RUNNING and lb[c] == lb_c:
                return heap[0]
            heappop(heap)  # outdated: that CPU reported again, or is no longer running
        return (INF, INF)

    def step(self) -> None:
        """Grant every request that no CPU can still precede; results go to self.outbox / self.events."""
        pending = self.pending
        e_lb, e_c = self._earliest_running()
        while pending:
            t, c, head = pending[0]
            if e_lb < t or (e_lb == t and e_c < c):
                break  # that CPU may still ask for the lock earlier
            heappop(pending)
            if isinstance(head, _Free):
                self._free(head)
                continue
            if self.computing[head.cpu] is head:
                self.computing[head.cpu] = None
            if head.kind == KMAP:
                self._kmap_high(head)
            elif head.kind == KUNMAP_MIGRATED and not self._has_holder(head.page):
                # The replay has not made the kmap this kunmap pairs with: wait for it (_kmap_high).
                self.parked.setdefault(head.page, []).append(head)
                continue
            else:
                self._kunmap_high(head)
            c = head.cpu  # the only CPU that can have become RUNNING
            if self.status[c] == RUNNING:
                lb_c = self.lb[c]
                if lb_c < e_lb or (lb_c == e_lb and c < e_c):
                    e_lb, e_c = lb_c, c
        if not pending and e_lb == INF and self.parked and not self.pkmap_map_wait:
            t, c, pc, page = min((r.t, r.cpu, r.pc, r.page) for rs in self.parked.values() for r in rs)
            raise ModelError(c, "kunmap", pc, f"kunmap of page {page} by a task that migrated: the kmap it "
                             "pairs with never came (no CPU can kmap the page any more)", t)
        if not pending and e_lb == INF and self.pkmap_map_wait:
            sleepers = [r.cpu for r in self.pkmap_map_wait]
            raise DeadlockError(self.t_last, sleepers, self.ring.describe())

    def _has_holder(self, page: int) -> bool:
        slot = self.ring.page_address.get(page)
        return slot is not None and self.ring.pkmap_count[slot] > 1

    def bound(self) -> int:
        """No ring operation from now on starts before this time."""
        g = self._earliest_running()[0]
        if self.pending and self.pending[0][0] < g:
            g = self.pending[0][0]
        return g

    def safe_until(self, bound: int = -1) -> int:
        """CPUs may start operations strictly before this time (lookahead.safe_time); bound: self.bound(), if
        the caller has it."""
        to_wrap = 0
        if self.flushes_only_at_wrap:
            to_wrap = self.to_wrap if self.to_wrap >= 0 else self._time_to_wrap()
        return lookahead.safe_time(self.policy, self.uses_ring, bound if bound >= 0 else self.bound(), to_wrap)

    def _time_to_wrap(self) -> int:
        """lookahead.wrap_distance from the free slots ahead of the cursor, kept until the ring changes."""
        self.to_wrap = lookahead.wrap_distance(self.ring.free_ahead(), self.c_hold, self.c_scan, self.c_pte)
        return self.to_wrap

    def finished(self) -> bool:
        return self.unfinished == 0

    # ---- kmap_lock ------------------------------------------------------------------------------------
    def _lock(self, r: _Request) -> int:
        # The lock is this caller's from its request or the previous release (a ticket lock: the hand-off
        # already counts as held), until its release: the held time behind kmap_lock utilisation.
        self.lock_owned_from = max(r.t, self.lock_free_at)
        t_acq = r.t + self.c_acquire if r.t >= self.lock_free_at else self.lock_free_at + self.c_handoff
        r.lock_wait += t_acq - r.t
        return t_acq + self.c_hold

    def _unlock(self, t: int) -> None:
        self.lock_held_cycles += t - self.lock_owned_from
        self.lock_free_at = t
        self.t_last = t

    # ---- mm/highmem.c ---------------------------------------------------------------------------------
    def _kmap_high(self, r: _Request) -> None:
        ring, cpu, page = self.ring, r.cpu, r.page
        t = self._lock(r)
        slot = ring.page_address.get(page)
        new = False
        if slot is None:
            self.to_wrap = -1
            t_scan = t

            def on_wrap(probes: int) -> None:
                nonlocal t
                t = max(t, t_scan + probes * self.c_scan)
                torn, flush = self.policy.wrap(ring, cpu)
                self.events.append(events.wrap(t=t, cpu=cpu, slots=len(torn)))
                if flush is not None:
                    t = self._flush(t, cpu, flush, r)

            slot, probes = ring.map_new_virtual(page, on_wrap)
            t = max(t, t_scan + probes * self.c_scan)
            if slot is None:
                flush = self.policy.rescue(ring, cpu)
                if flush is not None:  # the policy freed slots instead of sleeping: scan again
                    t = t_scan = self._flush(t, cpu, flush, r)
                    slot, probes = ring.map_new_virtual(page, on_wrap)
                    t = max(t, t_scan + probes * self.c_scan)
            if slot is None:  # a fruitless full scan: sleep on pkmap_map_wait, kmap_lock released
                self._unlock(t)
                r.slept = True
                self.pkmap_map_wait.append(r)
                self.status[cpu] = ASLEEP
                self.events.append(events.wait(t=t, cpu=cpu, page=page))
                return
            new = True
            t += self.c_pte
        ring.pkmap_count[slot] += 1
        if self.tracks_holds:
            self.policy.kmapped(cpu, page)
        self._unlock(t)
        self.events.append(events.kmap(t=t, cpu=cpu, page=page, slot=slot, new=new, slept=r.slept,
                                       cycles=t - r.t_first, lock_wait=r.lock_wait))
        self._reply(r, t, slot)
        if self.parked and page in self.parked:  # migrated kunmaps that waited for a kmap of this page
            for w in self.parked.pop(page):
                w.t = max(w.t, t)
                self._pend(w)

    def _kunmap_high(self, r: _Request) -> None:
        ring, cpu, page = self.ring, r.cpu, r.page
        t = self._lock(r)
        slot = ring.page_address.get(page)
        if slot is None:
            raise ModelError(cpu, "kunmap", r.pc, f"kunmap_high of page {page}, which has no pkmap address "
                             f"(the kernel BUG()s)", r.t)
        ring.pkmap_count[slot] -= 1
        if self.tracks_holds:
            self.policy.kunmapped(cpu, page)
        count = ring.pkmap_count[slot]
        if count == 0:
            raise ModelError(cpu, "kunmap", r.pc, f"pkmap_count of slot {slot} (page {page}) reached 0 in "
                             f"kunmap_high: more kunmaps than kmaps (the kernel BUG()s: a count must never "
                             f"go down to zero without a TLB flush)", r.t)
        if count == 1 and self.flushes_at_unmap:
            self.to_wrap = -1
            flush = self.policy.unmap_flush(ring, slot, cpu)
            if flush is not None:  # the policy tore slots down (this one among them): make that safe
                count = ring.pkmap_count[slot]
                t = self._flush(t, cpu, flush, r)
        self._unlock(t)
        self.events.append(events.kunmap(t=t, cpu=cpu, page=page, slot=slot, count=count))
        if count <= 1 and self.pkmap_map_wait:
            self._wake(t, cpu)
        self._reply(r, t, slot)

    def _wake(self, t: int, cpu: int) -> None:
        """wake_up(&pkmap_map_wait) after unlock: every sleeper retries kmap_high from the scan."""
        if not self.pkmap_map_wait:
            return
        woken = self.pkmap_map_wait
        self.pkmap_map_wait = []
        self.events.append(events.wake(t=t, cpu=cpu, woken=[w.cpu for w in woken]))
        for w in woken:
            w.t = t + self.cost.wakeup_latency
            self.status[w.cpu] = REQUESTED
            self._pend(w)

    def _free(self, f: _Free) -> None:
        """Deferred slots become free once every CPU has invalidated them, then sleepers retry."""
        t = max(f.t, self.lock_free_at)
        self.to_wrap = -1
        for initiator, slots in f.batches:
            self.ring.release(slots)
            self.events.append(events.free(t=t, cpu=initiator, slots=len(slots)))
        del self.frees[f.t]
        self._wake(t, f.batches[0][0])

    def _reply(self, r: _Request, t: int, slot: int) -> None:
        cpu = r.cpu
        r.results.append(CallResult(r.t_first, t, slot, r.local_flushes))
        inbox = self.inboxes[cpu]  # as the CPU will: IPIs due by t were serviced while it waited
        end = service_ipis(t, inbox, False) if inbox and inbox[0][0] <= t else t
        if r.nxt < len(r.ops):
            call = r.ops[r.nxt]
            t_call = end + call.gap  # then stretched by the IPIs due meanwhile
            if inbox and inbox[0][0] <= t_call:
                t_call = service_ipis(t_call, inbox, True)
            nxt = _Request(t_call, cpu, call.kind, call.page, call.pc, r.ops, r.nxt + 1, r.results, r.after)
            self.computing[cpu] = nxt
            self._pend(nxt)
            return
        self.status[cpu] = RUNNING
        lb = self.lb[cpu] = lookahead.after_reply(end, r.after)
        heappush(self.running, (lb, cpu))
        self.outbox.append((cpu, reply(cpu, tuple(r.results))))

    def _ipi_to_computing(self, nxt: _Request, ipi: Ipi) -> None:
        """An IPI for a CPU between two calls of a compound request: it stretches that compute if it
        arrives before the later call (service_ipis' running rule), which moves the call."""
        inbox = self.inboxes[nxt.cpu]
        heappush(inbox, (ipi.t_recv, ipi.src, ipi))
        if ipi.t_recv <= nxt.t:
            pending = self.pending
            pending.remove((nxt.t, nxt.cpu, nxt))
            nxt.t = nxt.t_first = service_ipis(nxt.t, inbox, True)
            pending.append((nxt.t, nxt.cpu, nxt))  # nxt moved later
            heapify(pending)

    # ---- TLB shootdown --------------------------------------------------------------------------------
    def _send_ipi(self, j: int, ipi: Ipi) -> None:
        """Send CPU j an IPI (or a latr lazy list, which takes its time the same way) and mirror its inbox."""
        self.outbox.append((j, ipi))
        nxt = self.computing[j]
        if nxt is not None:
            self._ipi_to_computing(nxt, ipi)
        elif self.status[j] != DONE:
            heappush(self.inboxes[j], (ipi.t_recv, ipi.src, ipi))

    def _flush(self, t: int, initiator: int, flush: Flush, r: _Request) -> int:
        """Run a flush starting at t under kmap_lock; returns when the initiator resumes."""
        if self.guard is not None:
            self.guard.check_flush(t, initiator, flush)
        c = self.cost
        vpns = flush.vpns
        work = c.full_flush if vpns is None else c.invlpg * len(vpns)
        targets = list(flush.targets)
        if flush.tick is not None:  # LATR: every other CPU invalidates at its next tick, then deferred is free
            t_tick = next_tick(t, flush.tick)
            for j in range(self.ncpu):
                if j != initiator:
                    self._send_ipi(j, Ipi(initiator, t, t_tick, t_tick + work, t_tick + work, "tick", vpns))
            f = self.frees.get(t_tick)
            if f is None:
                f = self.frees[t_tick] = _Free(t_tick)
                self._pend(f)
            f.batches.append((initiator, list(flush.deferred)))
        t_end = t
        for k, j in enumerate(targets):
            t_send = t + k * c.ipi_broadcast_step
            t_recv = t_send + c.ipi_latency
            t_handled = t_recv + c.ipi_handler + work
            t_ack = t_handled + c.ipi_ack
            self._send_ipi(j, Ipi(initiator, t_send, t_recv, t_handled, t_ack, flush.scope, vpns))
            t_end = max(t_end, t_ack)
        r.local_flushes += ((t_end, vpns),)  # then the initiator flushes its own TLB
        t_end += work
        self.events.append(events.flush(t=t, cpu=initiator, scope=flush.scope, slots=flush.slots, targets=targets,
                                        pages=None if vpns is None else len(vpns), stall=t_end - t))
        return t_end
