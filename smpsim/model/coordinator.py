"""Coordinator-side state: the pkmap ring, the kernel page table, kmap_lock, pkmap_map_wait and IPIs.

It serializes kmap_high / kunmap_high like kmap_lock does. kmap_lock is modelled as a FIFO (ticket) lock, so
requests are granted in the canonical order (request time, CPU id), and a request is only granted once no
CPU can still send an earlier one: every decision is a function of message contents, never of arrival
order. Global flushes run under the lock (2.4: smp_call_function with wait=1), so other CPUs that want the
lock spin until the initiator has every ack.
"""

from __future__ import annotations

import heapq

from smpsim.config import Config
from smpsim.model import messages as m
from smpsim.model.errors import DeadlockError, ModelError
from smpsim.model.policies import Flush, make_policy
from smpsim.model.ring import PkmapRing

INF = 1 << 62
# How far (cycles) a CPU that never takes kmap_lock may run ahead of the slowest: nothing else keeps such
# CPUs together, and the events waiting to be merged in canonical order would grow with the run.
RUN_AHEAD = 1 << 18
RUNNING, REQUESTED, ASLEEP, DONE = "running", "requested", "asleep", "done"


class _Request:
    """One kmap_high / kunmap_high call, kept across sleeps on pkmap_map_wait."""
    __slots__ = ("t", "cpu", "op", "page", "pc", "t_first", "lock_wait", "slept", "local_flushes")

    def __init__(self, t, cpu, op, page, pc):
        self.t, self.cpu, self.op, self.page, self.pc = t, cpu, op, page, pc
        self.t_first = t
        self.lock_wait = 0
        self.slept = False
        self.local_flushes: list[tuple[int, tuple | None]] = []  # (time, vpns) of the caller's own flushes

    def __lt__(self, other):
        return (self.t, self.cpu) < (other.t, other.cpu)


class Coordinator:
    def __init__(self, cfg: Config):
        self.ncpu = cfg.machine.cpus
        self.cost = cfg.cost
        self.flush_ceiling = cfg.policy.flush_ceiling
        self.ring = PkmapRing(cfg.machine.ring_size)
        self.policy = make_policy(cfg.policy.name, cfg.machine.ring_size)
        # Smallest delay from a ring operation to an IPI's arrival: how far CPUs may run ahead.
        self.lookahead = self.cost.ipi_latency if self.policy.sends_ipis else None
        self.lock_free_at = 0
        self.pending: list[_Request] = []        # heap in canonical order
        self.status = [RUNNING] * self.ncpu
        self.lb = [0] * self.ncpu                # RUNNING CPUs: no request before this time
        self.pkmap_map_wait: list[_Request] = []  # sleepers, in the order they went to sleep
        self.events: list[dict] = []
        self.outbox: list[tuple[int, tuple]] = []  # (destination CPU, message)
        self.t_last = 0

    # ---- messages from CPUs ---------------------------------------------------------------------------
    def receive(self, msg: tuple) -> None:
        kind, cpu = msg[0], msg[1]
        if kind == m.REQUEST:
            _, cpu, t, op, page, pc = msg
            self.status[cpu] = REQUESTED
            heapq.heappush(self.pending, _Request(t, cpu, op, page, pc))
        elif kind == m.PROGRESS:
            self.lb[cpu] = msg[2]
        elif kind == m.DONE:
            self.status[cpu] = DONE
        else:
            raise ModelError(cpu, str(kind), None, f"unexpected message {msg!r}")

    # ---- scheduling -----------------------------------------------------------------------------------
    def _earliest_running(self) -> tuple[int, int]:
        best = (INF, INF)
        for c in range(self.ncpu):
            if self.status[c] == RUNNING and (self.lb[c], c) < best:
                best = (self.lb[c], c)
        return best

    def step(self) -> None:
        """Grant every request that no CPU can still precede; results go to self.outbox / self.events."""
        pending = self.pending
        earliest = self._earliest_running()
        while pending:
            head = pending[0]
            if earliest < (head.t, head.cpu):
                break  # that CPU may still ask for the lock earlier
            heapq.heappop(pending)
            if head.op == "kmap":
                self._kmap_high(head)
            else:
                self._kunmap_high(head)
            c = head.cpu  # the only CPU that can have become RUNNING
            if self.status[c] == RUNNING and (self.lb[c], c) < earliest:
                earliest = (self.lb[c], c)
        if not pending and earliest[0] == INF and self.pkmap_map_wait:
            sleepers = [r.cpu for r in self.pkmap_map_wait]
            raise DeadlockError(self.t_last, sleepers, self.ring.describe())

    def bound(self) -> int:
        """No ring operation from now on starts before this time."""
        g = self._earliest_running()[0]
        if self.pending and self.pending[0].t < g:
            g = self.pending[0].t
        return g

    def safe_until(self) -> int:
        """CPUs may start operations strictly before this time: every IPI arriving earlier is known."""
        if not self.policy.uses_ring:  # lb: how far each got (Cpu.request_bound)
            g = self._earliest_running()[0]
            return INF if g >= INF else g + RUN_AHEAD
        if self.lookahead is None:
            return INF
        g = self.bound()
        if g >= INF:
            return INF
        if self.policy.flushes_only_at_wrap:
            g += self._time_to_wrap()
        return g + self.lookahead

    def _time_to_wrap(self) -> int:
        """A lower bound on the time from the next ring operation to the next wrap.

        Between flushes no slot returns to 0, so with F free slots ahead of the cursor the wrap comes no
        earlier than the (F+1)-th new mapping, and kmap_lock serializes those: each holds the lock for at
        least lock_hold + pkmap_scan + pte_write."""
        ring, c = self.ring, self.cost
        free_ahead = ring.pkmap_count[ring.last_pkmap_nr + 1:].count(0)
        return free_ahead * (c.lock_hold + c.pkmap_scan + c.pte_write) + c.lock_hold

    def finished(self) -> bool:
        return all(s == DONE for s in self.status)

    # ---- kmap_lock ------------------------------------------------------------------------------------
    def _lock(self, r: _Request) -> int:
        c = self.cost
        t_acq = r.t + c.lock_acquire if r.t >= self.lock_free_at else self.lock_free_at + c.lock_handoff
        r.lock_wait += t_acq - r.t
        return t_acq + c.lock_hold

    def _unlock(self, t: int) -> None:
        self.lock_free_at = t
        self.t_last = t

    # ---- mm/highmem.c ---------------------------------------------------------------------------------
    def _kmap_high(self, r: _Request) -> None:
        ring, cpu, page = self.ring, r.cpu, r.page
        t = self._lock(r)
        slot = ring.lookup(page)
        new = False
        if slot is None:
            t_scan = t

            def on_wrap(probes: int) -> None:
                nonlocal t
                t = max(t, t_scan + probes * self.cost.pkmap_scan)
                torn = ring.flush_all_zero_pkmaps()
                self.events.append({"t": t, "cpu": cpu, "ev": "wrap", "slots": len(torn)})
                flush = self.policy.wrap_flush(torn)
                if flush is not None:
                    t = self._flush(t, cpu, flush, len(torn), r)

            slot, probes = ring.map_new_virtual(page, on_wrap)
            t = max(t, t_scan + probes * self.cost.pkmap_scan)
            if slot is None:  # a fruitless full scan: sleep on pkmap_map_wait, kmap_lock released
                self._unlock(t)
                r.slept = True
                self.pkmap_map_wait.append(r)
                self.status[cpu] = ASLEEP
                self.events.append({"t": t, "cpu": cpu, "ev": "wait", "page": page})
                return
            new = True
            t += self.cost.pte_write
        ring.pkmap_count[slot] += 1
        self._unlock(t)
        self.events.append({"t": t, "cpu": cpu, "ev": "kmap", "page": page, "slot": slot, "new": new,
                            "slept": r.slept, "cycles": t - r.t_first, "lock_wait": r.lock_wait})
        self._reply(r, t, slot)

    def _kunmap_high(self, r: _Request) -> None:
        ring, cpu, page = self.ring, r.cpu, r.page
        t = self._lock(r)
        slot = ring.lookup(page)
        if slot is None:
            raise ModelError(cpu, "kunmap", r.pc, f"kunmap_high of page {page}, which has no pkmap address "
                             f"(the kernel BUG()s)", r.t)
        ring.pkmap_count[slot] -= 1
        count = ring.pkmap_count[slot]
        if count == 0:
            raise ModelError(cpu, "kunmap", r.pc, f"pkmap_count of slot {slot} (page {page}) reached 0 in "
                             f"kunmap_high: more kunmaps than kmaps (the kernel BUG()s: a count must never "
                             f"go down to zero without a TLB flush)", r.t)
        if count == 1 and self.policy.eager_teardown:
            ring.teardown(slot)
            count = 0
            t = self._flush(t, cpu, self.policy.unmap_flush(slot), 1, r)
        self._unlock(t)
        self.events.append({"t": t, "cpu": cpu, "ev": "kunmap", "page": page, "slot": slot, "count": count})
        if count <= 1 and self.pkmap_map_wait:
            # wake_up(&pkmap_map_wait) after unlock: every sleeper retries kmap_high from the scan.
            woken = self.pkmap_map_wait
            self.pkmap_map_wait = []
            self.events.append({"t": t, "cpu": cpu, "ev": "wake", "woken": [w.cpu for w in woken]})
            for w in woken:
                w.t = t + self.cost.wakeup_latency
                self.status[w.cpu] = REQUESTED
                heapq.heappush(self.pending, w)
        self._reply(r, t, slot)

    def _reply(self, r: _Request, t: int, slot: int) -> None:
        self.status[r.cpu] = RUNNING
        self.lb[r.cpu] = t
        self.outbox.append((r.cpu, (m.REPLY, r.cpu, t, slot, r.local_flushes)))

    # ---- TLB shootdown --------------------------------------------------------------------------------
    def _flush(self, t: int, initiator: int, flush: Flush, torn: int, r: _Request) -> int:
        """Run a flush starting at t under kmap_lock; returns when the initiator resumes."""
        c = self.cost
        vpns = flush.vpns
        if vpns is not None and len(vpns) > self.flush_ceiling:
            vpns = None  # flush_tlb_kernel_range over more than the ceiling: flush everything [R11]
        work = c.full_flush if vpns is None else c.invlpg * len(vpns)
        targets = [j for j in range(self.ncpu) if j != initiator] if flush.remote else []
        t_end = t
        for k, j in enumerate(targets):
            t_send = t + k * c.ipi_broadcast_step
            t_recv = t_send + c.ipi_latency
            t_handled = t_recv + c.ipi_handler + work
            t_ack = t_handled + c.ipi_ack
            self.outbox.append((j, (m.IPI, initiator, t_send, t_recv, t_handled, t_ack, flush.scope, vpns)))
            t_end = max(t_end, t_ack)
        r.local_flushes.append((t_end, vpns))  # then the initiator flushes its own TLB
        t_end += work
        self.events.append({"t": t, "cpu": initiator, "ev": "flush", "scope": flush.scope, "slots": torn,
                            "targets": targets, "pages": None if vpns is None else len(vpns),
                            "stall": t_end - t})
        return t_end
