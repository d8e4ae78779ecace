"""CPU-side state: a private TLB, the CPU's program (workload), its clock, and its kmap_local stack.

A Cpu runs its program locally and talks to the coordinator only through messages (messages.py): it sends
a request for kmap_high / kunmap_high and blocks until the reply; it receives IPIs. It only starts an
operation at time t once every IPI that can arrive at or before t is known (`safe`, from the coordinator),
so its behaviour does not depend on when messages physically arrive.
"""

from __future__ import annotations

import heapq

from smpsim.config import Config
from smpsim.model import messages as m
from smpsim.model.errors import ModelError
from smpsim.model.policies import make_policy
from smpsim.model.tlb import Tlb
from smpsim.model.workloads import Program

# Virtual page number of the first kmap_local fixmap slot; pkmap slots are vpns 0 .. LAST_PKMAP - 1.
LOCAL_BASE = 1 << 20

RUNNING, BLOCKED, DONE = "running", "blocked", "done"
INF = 1 << 62


class Cpu:
    def __init__(self, cfg: Config, cpu_id: int, program: Program):
        self.id = cpu_id
        self.program = program  # streamed: holds a bounded window of the operations around pc
        self.pc = 0
        self.clock = 0
        self.state = RUNNING
        c = cfg.cost
        self.c_access, self.c_hit, self.c_walk = c.access, c.tlb_hit, c.page_walk
        self.c_invlpg, self.c_pte = c.invlpg, c.pte_write
        self.tlb = Tlb(cfg.tlb.entries, cfg.tlb.ways, cfg.tlb.background)
        self.policy = make_policy(cfg.policy.name, cfg.machine.ring_size)
        self.local_slots = cfg.machine.kmap_local_slots
        self.held: dict[int, list[int]] = {}      # page -> vpns this CPU holds it at (one per nested kmap)
        self.use: dict[int, list[int]] = {}       # page -> [slot, n, writes, hits, misses] since its kmap
        self.local_stack: list[int] = []          # kmap_local: pages, top = last mapped
        self.inbox: list[tuple] = []              # heap of (t_recv, src, IPI message)
        self.flushed: set[int] = set()            # vpns dropped by a flush and not refilled since
        self.refill_due = False                   # background working set lost to a full flush
        self.blocked_op: tuple | None = None      # (op, page) awaiting the coordinator's reply
        self.events: list[dict] = []
        self.started = -1                         # start time of the latest operation

    # ---- the program ---------------------------------------------------------------------------------
    def run(self, safe: int, max_ops: int | None = None) -> list[tuple]:
        """Execute operations that start before `safe` (at most max_ops of them); returns messages for
        the coordinator."""
        out: list[tuple] = []
        prog = self.program
        ops, base = prog.ops, prog.base
        stop_pc = INF if max_ops is None else self.pc + max_ops
        while self.state == RUNNING:
            if self.inbox and self.inbox[0][0] <= self.clock:
                self._take_due_ipis()
            if self.pc - base >= len(ops) and not prog.fill(self.pc):
                self.state = DONE
                for page in list(self.use):  # pages still held when the program ends
                    self._record_use(page)
                while self.inbox:
                    self._handle_ipi(heapq.heappop(self.inbox)[2], running=False)
                out.append((m.DONE, self.id, self.clock))
                break
            if self.clock >= safe or self.pc >= stop_pc:
                out.append((m.PROGRESS, self.id, self.request_bound()))
                break
            if self.pc - base >= len(ops):
                ops, base = prog.ops, prog.base  # the window moved (fill above)
            op = ops[self.pc - base]
            code = op[0]
            self.started = self.clock
            if code == "access":
                self._access(op[1], op[2], op[3])
            elif code == "compute":
                self.clock += op[1]
            elif code == "kmap" or code == "kunmap":
                if not self.policy.uses_ring:
                    self._kmap_local(op[1]) if code == "kmap" else self._kunmap_local(op[1])
                else:
                    if code == "kunmap" and op[1] in self.held:
                        # Not held here is legal (the mapping is global); kunmap_high BUG()s if it is unmapped.
                        self._release(op[1], "kunmap")
                    self.state = BLOCKED
                    self.blocked_op = (code, op[1])
                    out.append((m.REQUEST, self.id, self.clock, code, op[1], self.pc))
            else:
                raise self._error(code, f"unknown operation {op!r}")
            self.pc += 1
        return out

    def can_run(self, safe: int) -> bool:
        """Whether run(safe) would get anywhere: an operation to start before safe, or the program's end."""
        return self.state == RUNNING and (self.clock < safe or self.program.ended(self.pc))

    def request_bound(self, scan: int = 64) -> int:
        """No ring request from this CPU before this time: its clock plus the least its next operations can
        take before the next kmap/kunmap (IPI handlers and TLB misses only add to that). A CPU that never
        takes kmap_lock reports its clock: how far it got (Coordinator.safe_until keeps CPUs together)."""
        t = self.clock
        if not self.policy.uses_ring:
            return t
        prog = self.program
        prog.fill(self.pc, scan + 1)
        i = self.pc - prog.base
        ahead = prog.ops[i:i + scan + 1]
        for op in ahead[:scan]:
            code = op[0]
            if code == "compute":
                t += op[1]
            elif code == "access":
                t += op[2] * self.c_access
            else:
                return t
        return INF if len(ahead) <= scan else t

    def horizon(self) -> int:
        """No event this CPU emits from now on has an earlier time."""
        h = INF if self.state == DONE else self.clock
        if self.inbox and self.inbox[0][0] < h:
            h = self.inbox[0][0]
        return h

    # ---- messages from the coordinator ---------------------------------------------------------------
    def deliver(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == m.IPI:
            if msg[m.IPI_T_RECV] <= self.started and self.state != DONE:
                raise ModelError(self.id, "ipi", None,
                                 f"causality violation: IPI for t={msg[m.IPI_T_RECV]} reached a CPU that "
                                 f"started an operation at t={self.started} (engine bug)")
            if self.state == DONE:
                self._handle_ipi(msg, running=False)
            else:
                heapq.heappush(self.inbox, (msg[m.IPI_T_RECV], msg[1], msg))
        elif kind == m.REPLY:
            self._reply(msg)
        else:
            raise ModelError(self.id, kind, None, f"unexpected message {msg!r}")

    def _reply(self, msg: tuple) -> None:
        _, _, t_done, slot, local_flushes = msg
        if self.state != BLOCKED:
            raise ModelError(self.id, "reply", None, "reply while not waiting for one (engine bug)")
        # IPIs that arrived while this CPU spun on kmap_lock or slept were serviced meanwhile (IRQs stay
        # on); its own flushes (as initiator) happened at their times too: apply both in time order.
        end = t_done
        inbox = self.inbox
        own = list(local_flushes)
        while (inbox and inbox[0][0] <= t_done) or own:
            if own and not (inbox and inbox[0][0] <= t_done and inbox[0][0] < own[0][0]):
                self._flush_tlb(own.pop(0)[1])
                continue
            ipi = heapq.heappop(inbox)[2]
            self._handle_ipi(ipi, running=False)
            if ipi[m.IPI_T_HANDLED] > end:
                end = ipi[m.IPI_T_HANDLED]
        op, page = self.blocked_op
        if op == "kmap":
            self.held.setdefault(page, []).append(slot)
        self.clock = end
        self.state = RUNNING
        self.blocked_op = None

    # ---- TLB ------------------------------------------------------------------------------------------
    def _take_due_ipis(self) -> None:
        inbox = self.inbox
        while inbox and inbox[0][0] <= self.clock:
            self._handle_ipi(heapq.heappop(inbox)[2], running=True)

    def _handle_ipi(self, ipi: tuple, running: bool) -> None:
        _, src, t_send, t_recv, t_handled, t_ack, scope, vpns = ipi
        dropped = self._flush_tlb(vpns)
        if running:  # the handler interrupted whatever ran at t_recv; that work finishes later
            self.clock += t_handled - t_recv
        self.events.append({"t": t_recv, "cpu": self.id, "ev": "ipi", "src": src, "t_send": t_send,
                            "t_recv": t_recv, "t_ack": t_ack, "scope": scope, "dropped": dropped})

    def _flush_tlb(self, vpns) -> int:
        if vpns is None:
            gone = self.tlb.invalidate_all()
            if self.tlb.background:
                self.refill_due = True
        else:
            gone = self.tlb.invalidate_pages(vpns)
        self.flushed.update(gone)
        return len(gone)

    def _access(self, page: int, n: int, write: bool) -> None:
        vpns = self.held.get(page)
        if not vpns:
            raise self._error("access", f"access to page {page}, which this CPU has not kmapped")
        vpn = vpns[-1]
        t = self.clock
        ev = self.events
        if self.refill_due:  # the background working set walks back in after a full flush
            self.refill_due = False
            cycles = self.tlb.background * self.c_walk
            ev.append({"t": t, "cpu": self.id, "ev": "tlb_miss", "n": self.tlb.background,
                       "cycles": cycles, "flush_caused": True})
            t += cycles
        slot = vpn if vpn < LOCAL_BASE else vpn - LOCAL_BASE - self.id * self.local_slots
        frame = self.tlb.lookup(vpn)
        if frame is None:
            # Page walk: a held slot's PTE cannot change while held, so it maps `page`.
            caused = vpn in self.flushed
            if caused:
                self.flushed.discard(vpn)
            self.tlb.fill(vpn, page)
            ev.append({"t": t, "cpu": self.id, "ev": "tlb_miss", "page": page, "slot": slot, "n": 1,
                       "cycles": self.c_walk, "flush_caused": caused})
            hits, misses = n - 1, 1
        else:
            if frame != page:
                ev.append({"t": t, "cpu": self.id, "ev": "stale", "page": page, "reached": frame,
                           "slot": slot, "n": n})
            hits, misses = n, 0
        u = self.use.get(page)
        if u is None:
            self.use[page] = [slot, n, n if write else 0, hits, misses]
        else:
            u[1] += n
            u[2] += n if write else 0
            u[3] += hits
            u[4] += misses
        self.clock = t + n * self.c_access + hits * self.c_hit + misses * self.c_walk

    def _record_use(self, page: int) -> None:
        """One `access` event for the accesses made through a page's address since it was kmapped,
        recorded when the hold ends: per hold, not per access, keeps the trace small."""
        u = self.use.pop(page, None)
        if u is not None:
            self.events.append({"t": self.clock, "cpu": self.id, "ev": "access", "page": page, "slot": u[0],
                                "n": u[1], "writes": u[2], "hits": u[3], "misses": u[4]})

    # ---- kmap_local: CPU-private slots, no lock, no IPIs -------------------------------------------------
    def _kmap_local(self, page: int) -> None:
        idx = len(self.local_stack)
        if idx >= self.local_slots:
            raise self._error("kmap", f"kmap_local stack overflow: all {self.local_slots} slots in use")
        vpn = LOCAL_BASE + self.id * self.local_slots + idx
        self.local_stack.append(page)
        self.held.setdefault(page, []).append(vpn)
        self.clock += self.c_pte  # write the PTE; no flush: the slot was invalidated at its last unmap
        self.events.append({"t": self.clock, "cpu": self.id, "ev": "kmap", "page": page, "slot": idx,
                            "new": True, "slept": False, "cycles": self.c_pte, "lock_wait": 0})

    def _kunmap_local(self, page: int) -> None:
        if not self.local_stack or self.local_stack[-1] != page:
            top = self.local_stack[-1] if self.local_stack else None
            raise self._error("kunmap", f"kunmap_local of page {page} out of stack order (top is {top})")
        idx = len(self.local_stack) - 1
        vpn = self._release(page, "kunmap")
        self.local_stack.pop()
        t = self.clock
        gone = self.tlb.invalidate_pages((vpn,))  # pte_clear + local INVLPG (arch_kmap_local_post_unmap)
        self.flushed.update(gone)
        self.clock += self.c_pte + self.c_invlpg
        self.events.append({"t": t, "cpu": self.id, "ev": "flush", "scope": "local", "slots": 1,
                            "targets": [], "pages": 1, "stall": self.c_invlpg})
        self.events.append({"t": self.clock, "cpu": self.id, "ev": "kunmap", "page": page, "slot": idx,
                            "count": 0})

    def _release(self, page: int, op: str) -> int:
        self._record_use(page)
        vpns = self.held.get(page)
        if not vpns:
            raise self._error(op, f"kunmap of page {page}, which this CPU has not kmapped")
        vpn = vpns.pop()
        if not vpns:
            del self.held[page]
        return vpn

    def _error(self, op: str, what: str) -> ModelError:
        return ModelError(self.id, op, self.pc, what, self.clock)

    # ---- inspection (tests, invariants) --------------------------------------------------------------
    def tlb_entries(self) -> list[tuple[int, int]]:
        return self.tlb.cached()
