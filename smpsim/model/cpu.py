"""CPU-side state: a private TLB, the CPU's program (workload), its clock, and its kmap_local stack.

A Cpu runs its program locally and talks to the coordinator only through messages (messages.py): it sends
a request for kmap_high / kunmap_high and blocks until the reply; it receives IPIs. It only starts an
operation at time t once every IPI that can arrive at or before t is known (`safe`, from the coordinator),
so its behaviour does not depend on when messages physically arrive.

Shaped for mypyc (smpsim/native.py compiles it): constants are Final (read as constants, not module
attributes); ints read from tuples are declared int (compiled code then works on machine ints, not objects);
dict.get then del, not pop(k, None) (no fast pop with a default).
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Final

from smpsim.config import Config
from smpsim.model import events, lookahead
from smpsim.model import messages as m
from smpsim.model.messages import (ACCESS, BLOCKED, COMPUTE, DONE, INF, KMAP, KUNMAP, KUNMAP_MIGRATED, OP_CODES,
                                   RUNNING, Call, CallResult, Done, Ipi, Progress, Reply, Request, op_by_code,
                                   op_code, request, result_from_wire)
from smpsim.model.errors import ModelError
from smpsim.model.policies import make_policy, traits
from smpsim.model.tlb import Tlb
from smpsim.model.workloads import Program

# Virtual page number of the first kmap_local fixmap slot; pkmap slots are vpns 0 .. LAST_PKMAP - 1.
LOCAL_BASE: Final = 1 << 20

MAX_CHAIN: Final = 16      # ring calls in one compound request
CHAIN_SCAN: Final = 256    # operations looked at for one


def service_ipis(clock: int, inbox: list, running: bool, handle=None) -> int:
    """The IPI rule, in one place for the Cpu and for the Coordinator's account of a compound request.

    inbox is a heap of (t_recv, src, Ipi). Running (computing or accessing), the CPU takes every IPI due by
    its clock in arrival order, and each handler stretches the clock by its length (t_handled - t_recv), so
    IPIs arriving meanwhile are due too. Spinning on kmap_lock or asleep until `clock` (= t_done), it
    serviced the IPIs due by then with IRQs on and resumes no earlier than the last handler's end. Returns
    the new clock; handle(ipi, running) applies each IPI's effect."""
    end = clock
    while inbox and inbox[0][0] <= clock:
        ipi = heappop(inbox)[2]
        if handle is not None:
            handle(ipi, running)
        if running:
            clock += ipi.t_handled - ipi.t_recv
            end = clock
        elif ipi.t_handled > end:
            end = ipi.t_handled
    return end


class Hold:
    """A page's use through the address of its kmap since then, recorded as one `access` event when the hold
    ends: the slot, the accesses (n), how many of them wrote, and the TLB hits and misses among them."""
    __slots__ = ("slot", "n", "writes", "hits", "misses")

    def __init__(self, slot: int, n: int, writes: int, hits: int, misses: int):
        self.slot, self.n, self.writes, self.hits, self.misses = slot, n, writes, hits, misses

    def to_wire(self) -> list:
        return [self.slot, self.n, self.writes, self.hits, self.misses]


class Cpu:
    """One simulated CPU. It owns its program and position in it (pc), its clock, its TLB, the pages it
    holds (kmap_high and kmap_local) with their use since each kmap, its inbox of IPIs, and the events it
    records; it shares nothing with the coordinator or other CPUs but messages."""

    def __init__(self, cfg: Config, cpu_id: int, program: Program):
        self.id = cpu_id
        self.program = program  # streamed: holds a bounded window of the operations from pc on
        self.pc = 0
        self.clock = 0
        self.state = RUNNING
        c = cfg.cost
        self.c_access, self.c_hit, self.c_walk = c.access, c.tlb_hit, c.page_walk
        self.c_invlpg, self.c_pte = c.invlpg, c.pte_write
        self.tlb = Tlb(cfg.tlb.entries, cfg.tlb.ways, cfg.tlb.background)
        self.policy = make_policy(cfg)
        self.uses_ring = traits(self.policy).uses_ring  # read at every ring call
        self.local_slots = cfg.machine.kmap_local_slots
        self.held: dict[int, list[int]] = {}      # page -> vpns this CPU holds it at (one per nested kmap)
        self.use: dict[int, Hold] = {}            # page -> its use since its kmap
        self.local_stack: list[int] = []          # kmap_local: pages, top = last mapped
        self.inbox: list[tuple] = []              # heap of (t_recv, src, IPI message)
        self.flushed: set[int] = set()            # vpns dropped by a flush and not refilled since
        self.refill_due = False                   # background working set lost to a full flush
        self.results: list[CallResult] = []       # the rest of a compound reply, last item first
        self.resumed = 0                          # when the CPU resumed after its last reply
        self.events: list[tuple] = []             # trace events, tuples laid out as in events.py
        self.started = -1                         # start time of the latest operation

    # ---- the program ---------------------------------------------------------------------------------
    def run(self, safe: int, max_ops: int | None = None) -> list[tuple]:
        """Execute operations that start before `safe` (at most max_ops of them); returns messages for
        the coordinator. The items of a compound reply are taken whatever `safe` says: the coordinator
        granted them knowing every IPI that arrives before them."""
        out: list[tuple] = []
        prog = self.program
        ops, base = prog.ops, prog.base
        n = len(ops)
        stop_pc = INF if max_ops is None else self.pc + max_ops
        inbox = self.inbox
        while True:  # every way out of RUNNING (done, blocked) breaks out
            clock = self.clock
            if inbox and inbox[0][0] <= clock:
                clock = self.clock = service_ipis(clock, inbox, True, self._handle_ipi)
            pc = self.pc
            if pc - base >= n:
                if not prog.fill(pc):
                    self._finish()
                    out.append(Done(self.id, self.clock))
                    break
                ops, base = prog.ops, prog.base  # the window moved
                n = len(ops)
            if (clock >= safe or pc >= stop_pc) and not self.results:
                out.append(Progress(self.id, self.request_bound()))
                break
            op = ops[pc - base]
            kind: int = op[0]
            self.started = clock
            if kind == COMPUTE:
                cycles: int = op[1]
                self.clock = clock + cycles
            elif kind == ACCESS:
                self._access(op[1], op[2], op[3])
            elif KMAP <= kind <= KUNMAP_MIGRATED:
                if not self.uses_ring:
                    if kind == KUNMAP_MIGRATED:  # kmap_local pins the task to its CPU (migrate_disable)
                        raise self._error(OP_CODES[kind], f"kunmap_local of page {op[1]} by a task that "
                                                          "migrated since its kmap: kmap_local mappings are per-CPU "
                                                          "and forbid that")
                    self._kmap_local(op[1]) if kind == KMAP else self._kunmap_local(op[1])
                else:
                    if kind == KUNMAP and op[1] in self.held:
                        # Not held here is legal (the mapping is global); kunmap_high BUG()s if it is unmapped.
                        self._release(op[1], "kunmap")
                    if self.results:  # the next item of a compound reply
                        self._take_result(kind, op[1])
                        continue
                    self.state = BLOCKED
                    out.append(self._request(kind))
                    break
            else:
                raise self._error(op_code(kind), f"unknown operation {op_by_code(op)!r}")
            self.pc = pc + 1
        return out

    def _finish(self) -> None:
        """The program has ended: the holds still open are recorded, IPIs still due are taken."""
        self.state = DONE
        for page in list(self.use):  # pages still held when the program ends
            self._record_use(page)
        while self.inbox:
            self._handle_ipi(heappop(self.inbox)[2], False)

    def _request(self, kind: int) -> Request:
        """The ring call at pc (of that kind), with the ring calls after it that only compute separates
        from it."""
        pc = self.pc
        ops, base = self._window(pc + CHAIN_SCAN + 65)  # the chain, and the lookahead after it
        items = [Call(0, kind, ops[pc - base][1], pc)]
        gap, j, end, last = 0, pc + 1, min(base + len(ops), pc + CHAIN_SCAN), pc
        while j < end:
            op = ops[j - base]
            kind = op[0]
            if kind == COMPUTE:
                cycles: int = op[1]
                gap += cycles
            elif KMAP <= kind <= KUNMAP_MIGRATED:
                items.append(Call(gap, kind, op[1], j))
                gap, last = 0, j
                if len(items) >= MAX_CHAIN:
                    break
            else:
                break
            j += 1
        after = self._least_to_request(last + 1, ops, base)
        return request(self.id, self.clock, tuple(items), after)

    def can_run(self, safe: int) -> bool:
        """Whether run(safe) would get anywhere: an operation to start before safe, the next item of a
        compound reply, or the program's end."""
        return self.state == RUNNING and (self.clock < safe or bool(self.results) or self.program.ended(self.pc))

    def request_bound(self) -> int:
        """No ring request from this CPU before this time (lookahead.request_bound)."""
        return lookahead.request_bound(self.uses_ring, self.clock, self._least_to_request(self.pc))

    def _least_to_request(self, pc: int, ops: list[tuple] | None = None, base: int = 0, scan: int = 64) -> int:
        """The least cycles from starting the operation at pc to the next kmap/kunmap request (INF: none).
        (ops, base): a window already holding positions up to pc + scan (those that exist), if the caller
        has one."""
        if not self.uses_ring:
            return INF
        t = 0
        if ops is None:
            ops, base = self._window(pc + scan + 1)
        end = base + len(ops)  # the program's end if short of pc + scan + 1
        c_access = self.c_access
        for i in range(pc - base, min(end, pc + scan) - base):
            op = ops[i]
            kind: int = op[0]
            if kind == COMPUTE:
                cycles: int = op[1]
                t += cycles
            elif kind == ACCESS:
                n: int = op[2]
                t += n * c_access
            else:
                return t
        return INF if pc + scan >= end else t

    def _window(self, upto: int) -> tuple[list[tuple], int]:
        """(ops, base): the program's window, holding the operations from pc up to `upto` (those that exist);
        ops[i - base] is the operation at position i."""
        prog = self.program
        if upto > prog.base + len(prog.ops):  # mostly it does: the check costs less than the call
            prog.fill(self.pc, upto - self.pc)
        return prog.ops, prog.base

    def horizon(self) -> int:
        """No event this CPU emits from now on has an earlier time."""
        h = INF if self.state == DONE else self.clock
        if self.inbox and self.inbox[0][0] < h:
            h = self.inbox[0][0]
        return h

    # ---- messages from the coordinator ---------------------------------------------------------------
    def deliver(self, msg: tuple) -> None:
        if type(msg) is Ipi:
            if msg.t_recv <= self.started and self.state != DONE:
                raise ModelError(self.id, "ipi", None,
                                 f"causality violation: IPI for t={msg.t_recv} reached a CPU that "
                                 f"started an operation at t={self.started} (engine bug)")
            if self.state == DONE:
                self._handle_ipi(msg, False)
            else:
                heappush(self.inbox, (msg.t_recv, msg.src, msg))
        elif type(msg) is Reply:
            if self.state != BLOCKED:
                raise ModelError(self.id, "reply", None, "reply while not waiting for one (engine bug)")
            self.state = RUNNING
            self.results = list(msg.results)
            self.results.reverse()
            prog = self.program  # the call at pc is in the window: it was when the request went
            op = prog.ops[self.pc - prog.base]
            self._take_result(op[0], op[1])
        else:
            raise ModelError(self.id, type(msg).__name__, None, f"unexpected message {msg!r}")

    def _take_result(self, kind: int, page: int) -> None:
        """Apply the coordinator's result for the ring call at pc (of that kind)."""
        r = self.results.pop()
        t, t_done, local_flushes = r.t, r.t_done, r.local_flushes
        if t != self.clock:
            raise self._error(OP_CODES[kind], f"the coordinator placed this call at t={t}, the CPU got there at "
                                    f"t={self.clock} (engine bug)")
        # IPIs that arrived while this CPU spun on kmap_lock or slept were serviced meanwhile (IRQs stay
        # on); its own flushes (as initiator) happened at their times too: apply both in time order.
        inbox = self.inbox
        if inbox and inbox[0][0] <= t_done:
            own = list(local_flushes)
            own.reverse()

            def handle(ipi: Ipi, running: bool) -> None:
                while own and own[-1][0] <= ipi.t_recv:
                    self._flush_tlb(own.pop()[1])
                self._handle_ipi(ipi, running)

            end = service_ipis(t_done, inbox, False, handle)
            while own:
                self._flush_tlb(own.pop()[1])
        else:
            end = t_done
            for _, vpns in local_flushes:
                self._flush_tlb(vpns)
        if kind == KMAP:
            self.held.setdefault(page, []).append(r.slot)
        self.clock = end
        self.pc += 1
        if not self.results:
            self.resumed = end

    # ---- TLB ------------------------------------------------------------------------------------------
    def _handle_ipi(self, ipi: Ipi, running: bool) -> None:
        dropped = self._flush_tlb(ipi.vpns)
        if ipi.scope == "tick":  # not an interrupt: LATR's lazy list, invalidated locally at this tick
            self.events.append(events.flush(t=ipi.t_recv, cpu=self.id, scope="tick", slots=None, targets=[],
                                            pages=None if ipi.vpns is None else len(ipi.vpns),
                                            stall=ipi.t_handled - ipi.t_recv))
            return
        self.events.append(events.ipi(t=ipi.t_recv, cpu=self.id, src=ipi.src, t_send=ipi.t_send, t_recv=ipi.t_recv,
                                      t_ack=ipi.t_ack, scope=ipi.scope, dropped=dropped))

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
            ev.append(events.tlb_miss(t=t, cpu=self.id, page=None, slot=None, n=self.tlb.background, cycles=cycles,
                                      flush_caused=True))
            t += cycles
        slot = vpn if vpn < LOCAL_BASE else vpn - LOCAL_BASE - self.id * self.local_slots
        # On a miss the page walk fills in `page`: a held slot's PTE cannot change while held.
        frame = self.tlb.translate(vpn, page)
        if frame is None:
            caused = vpn in self.flushed
            if caused:
                self.flushed.discard(vpn)
            ev.append(events.tlb_miss(t=t, cpu=self.id, page=page, slot=slot, n=1, cycles=self.c_walk,
                                      flush_caused=caused))
            hits, misses = n - 1, 1
        else:
            if frame != page:
                ev.append(events.stale(t=t, cpu=self.id, page=page, reached=frame, slot=slot, n=n))
            hits, misses = n, 0
        u = self.use.get(page)
        if u is None:
            self.use[page] = Hold(slot, n, n if write else 0, hits, misses)
        else:
            u.n += n
            if write:
                u.writes += n
            u.hits += hits
            u.misses += misses
        self.clock = t + n * self.c_access + hits * self.c_hit + misses * self.c_walk

    def _record_use(self, page: int) -> None:
        """One `access` event for the accesses made through a page's address since it was kmapped,
        recorded when the hold ends: per hold, not per access, keeps the trace small."""
        u = self.use.get(page)
        if u is not None:
            del self.use[page]
            self.events.append(events.access(t=self.clock, cpu=self.id, page=page, slot=u.slot, n=u.n,
                                             writes=u.writes, hits=u.hits, misses=u.misses))

    # ---- kmap_local: CPU-private slots, no lock, no IPIs -------------------------------------------------
    def _kmap_local(self, page: int) -> None:
        idx = len(self.local_stack)
        if idx >= self.local_slots:
            raise self._error("kmap", f"kmap_local stack overflow: all {self.local_slots} slots in use")
        vpn = LOCAL_BASE + self.id * self.local_slots + idx
        self.local_stack.append(page)
        self.held.setdefault(page, []).append(vpn)
        self.clock += self.c_pte  # write the PTE; no flush: the slot was invalidated at its last unmap
        self.events.append(events.kmap(t=self.clock, cpu=self.id, page=page, slot=idx, new=True, slept=False,
                                       cycles=self.c_pte, lock_wait=0))

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
        self.events.append(events.flush(t=t, cpu=self.id, scope="local", slots=1, targets=[], pages=1,
                                        stall=self.c_invlpg))
        self.events.append(events.kunmap(t=self.clock, cpu=self.id, page=page, slot=idx, count=0))

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

    # ---- checkpoints (a lost CPU process is replaced from one) --------------------------------------
    def snapshot(self) -> dict:
        """The state this Cpu's future depends on, as plain msgpack-able data; restore() takes it back.
        What the config determines (costs, TLB shape, policy) and the program's operations are not in it:
        the program is regenerated from its seed up to pc. Orders that matter are kept: the TLB's LRU
        order, the inbox heap's layout, the order pages were first used (the end of a program records
        them in it)."""
        return {
            "pc": self.pc, "clock": self.clock, "state": self.state, "started": self.started,
            "resumed": self.resumed, "refill_due": self.refill_due,
            "held": [[page, list(vpns)] for page, vpns in self.held.items()],
            "use": [[page, u.to_wire()] for page, u in self.use.items()],
            "local_stack": list(self.local_stack),
            "inbox": [[t, src, m.to_wire(ipi)] for t, src, ipi in self.inbox],
            "flushed": sorted(self.flushed),
            "results": [r.to_wire() for r in self.results],
            "events": [list(e) for e in self.events],
            "tlb": self.tlb.snapshot(),
        }

    def restore(self, state: dict) -> None:
        """Take back a snapshot() of this CPU (made with the same config and program); raises KeyError,
        TypeError or ValueError for one that is not."""
        if state["state"] not in (RUNNING, BLOCKED, DONE):
            raise ValueError(f"unknown CPU state {state['state']!r}")
        self.pc, self.clock, self.state = int(state["pc"]), int(state["clock"]), state["state"]
        self.started, self.resumed = int(state["started"]), int(state["resumed"])
        self.refill_due = bool(state["refill_due"])
        self.held = {page: list(vpns) for page, vpns in state["held"]}
        self.use = {page: Hold(*u) for page, u in state["use"]}
        self.local_stack = list(state["local_stack"])
        self.inbox = [(t, src, m.from_wire(ipi)) for t, src, ipi in state["inbox"]]
        self.flushed = set(state["flushed"])
        self.results = [result_from_wire(r) for r in state["results"]]
        self.events = [tuple(e) for e in state["events"]]
        self.tlb.restore(state["tlb"])
        self.program.seek(self.pc)

    # ---- inspection (tests, invariants) --------------------------------------------------------------
    def tlb_entries(self) -> list[tuple[int, int]]:
        return self.tlb.cached()
