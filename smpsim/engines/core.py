"""The engine core: the drive loop every engine shares. Engines are transports around it.

`Core` is the coordinator's side: it takes the CPUs' batches (model messages, trace events, how far each CPU
has got), grants ring requests (Coordinator.step), says which CPU gets which messages and safe time, and
releases the trace below the watermark. `CpuPort` is a CPU's side: it applies what it gets, runs the Cpu and
says what to send back. Both sides decide only from message contents, so the run does not depend on when or
in which order the transport delivers batches (tests/test_timing.py shuffles them).

Safe times travel only to CPUs they unblock, or ride on the replies and IPIs a CPU gets anyway.

Shaped for mypyc (smpsim/native.py compiles it): Up and Down are plain classes, not NamedTuples (one of each
per round, and a compiled class is built without running Python code).
"""

from __future__ import annotations

from collections import deque

from smpsim.model import lookahead
from smpsim.model.coordinator import Coordinator
from smpsim.model.cpu import Cpu
from smpsim.model.errors import ModelError
from smpsim.model.messages import DONE, INF, RUNNING, Ipi, Progress, Request


# A transport sends the fields of Up and Down, never the objects.
class Up:
    """CPU -> core: model messages, trace events, the CPU's horizon, and how many IPIs it has received."""
    __slots__ = ("msgs", "events", "horizon", "ipis_seen")

    def __init__(self, msgs: list, events: list, horizon: int, ipis_seen: int):
        self.msgs, self.events, self.horizon, self.ipis_seen = msgs, events, horizon, ipis_seen


class Down:
    """core -> CPU: replies and IPIs, and the CPU's new safe time."""
    __slots__ = ("msgs", "safe")

    def __init__(self, msgs: list, safe: int):
        self.msgs, self.safe = msgs, safe


def _has_ipi(msgs: list) -> bool:
    for m in msgs:
        if type(m) is Ipi:
            return True
    return False


def locate(err: ModelError, lines: list | None) -> ModelError:
    """Add the script line to a model error raised at a scripted operation (lines: per CPU, or None)."""
    if lines is not None and err.cpu is not None and err.position is not None and 0 <= err.cpu < len(lines):
        mine = lines[err.cpu]
        if mine and 0 <= err.position < len(mine):
            err.args = (f"{err.args[0]} (script line {mine[err.position]})",)
    return err


class Core:
    """The coordinator's side of every engine. It owns the Coordinator and the trace recorder, and per CPU:
    the horizon it last reported, the IPIs sent to it and not yet seen, the safe time sent to it, whether
    it is waiting for a larger one, and a reply held back to go with that; and the trace watermark."""

    def __init__(self, coord: Coordinator, recorder, lines: list | None = None):
        self.coord, self.rec, self.lines = coord, recorder, lines
        n = self.n = coord.ncpu
        self.horizon = [0] * n                          # as last reported
        self.ipi_unseen: list[deque[int]] = [deque() for _ in range(n)]  # t_recv of IPIs sent, not yet reported received
        self.ipis_sent = [0] * n
        self.in_flight: set[int] = set()                # CPUs with IPIs sent, not yet reported received
        self.sent_safe = [-1] * n
        self.safe = -1
        self.bound_at_step = -1                         # coord.bound() as of the last step (-1: changed since)
        self.watermark = 0
        self.touched: set[int] = set()                  # CPUs that reported since the last step
        self.waiting: set[int] = set()                  # running CPUs that may wait for a larger safe time
        self.held: dict[int, list] = {}                 # replies kept until the safe time lets their CPU on

    def receive(self, cpu: int, up: Up) -> None:
        """A CPU's batch. Raises ModelError for what the model rejects."""
        coord = self.coord
        for msg in up.msgs:
            coord.receive(msg)
        self.touched.add(cpu)
        self.bound_at_step = -1
        self.rec.add(1 + cpu, up.events)
        self.horizon[cpu] = up.horizon
        q = self.ipi_unseen[cpu]
        if q:
            for _ in range(up.ipis_seen - (self.ipis_sent[cpu] - len(q))):
                q.popleft()
            if not q:
                self.in_flight.discard(cpu)

    def step(self) -> list[tuple[int, Down]]:
        """Grant what can be granted; returns what to send to whom."""
        coord = self.coord
        coord.step()
        out = self._route(coord.outbox)
        if coord.events:
            self.rec.add(0, coord.events)
            coord.events = []
        # Only receive() and step() change the coordinator's bound: kept for release().
        self.bound_at_step = coord.bound()
        safe = coord.safe_until(self.bound_at_step)
        self._mark_waiting(self.touched)
        self._let_on(out, safe)
        return self._send(out, safe)

    # ---- the rules, each once ----------------------------------------------------------------------------
    def _holds(self, c: int, msgs: list, safe: int) -> bool:
        """The hold rule: a reply (no IPI with it) that would leave its CPU waiting at once, as `safe` does
        not let it on, waits here and goes with the safe time that does: one batch rather than two.
        Meanwhile the CPU could only run ahead silently."""
        lb = self.coord.lb[c]
        return (bool(msgs) and lookahead.waits(self.coord.status[c] == RUNNING, lb, self.sent_safe[c])
                and not lookahead.lets_on(lb, safe) and not _has_ipi(msgs))

    # ---- the steps ---------------------------------------------------------------------------------------
    def _route(self, outbox: list) -> dict[int, list]:
        """The coordinator's messages by destination, noting the IPIs each CPU has yet to see."""
        out: dict[int, list] = {}
        if outbox:
            for dest, msg in outbox:
                msgs = out.get(dest)
                if msgs is None:
                    out[dest] = [msg]
                else:
                    msgs.append(msg)
                if type(msg) is Ipi:
                    self.ipi_unseen[dest].append(msg.t_recv)
                    self.ipis_sent[dest] += 1
                    self.in_flight.add(dest)
            outbox.clear()
        return out

    def _mark_waiting(self, cpus: set[int] | list[int]) -> None:
        """Keep each of these CPUs in `waiting` as the waiting rule (lookahead.waits) says, from its lb, the
        coordinator's bound on its next request (only a report or a reply changes it), and the safe time
        sent to it: those that reported since the last step, then those sent a batch."""
        waiting, status, lb, sent = self.waiting, self.coord.status, self.coord.lb, self.sent_safe
        for c in cpus:
            if lookahead.waits(status[c] == RUNNING, lb[c], sent[c]):
                waiting.add(c)
            else:
                waiting.discard(c)

    def _let_on(self, out: dict[int, list], safe: int) -> None:
        """A batch, empty if nothing else goes there, for each waiting CPU and held reply `safe` lets on:
        every waiting CPU when the safe time grew, else those that reported."""
        waiting, touched = self.waiting, self.touched
        check: set[int] | list[int]
        if safe > self.safe:
            self.safe = safe
            check = waiting
        else:
            check = [c for c in touched if c in waiting]
        touched.clear()
        sent, lb = self.sent_safe, self.coord.lb
        for c in check:
            if c not in out and safe > sent[c] and lookahead.lets_on(lb[c], safe):
                out[c] = []
        for c in self.held:  # lb does not change while its reply is held
            if c not in out and lookahead.lets_on(lb[c], safe):
                out[c] = []

    def _send(self, out: dict[int, list], safe: int) -> list[tuple[int, Down]]:
        """Each batch with its CPU's safe time, held replies joined in; the hold rule keeps some back."""
        held, sent = self.held, self.sent_safe
        todo = []
        marked: list[int] = []  # as the waiting rule says once sent
        for c, msgs in out.items():
            if held and c in held:
                msgs = held.pop(c) + msgs
            if self._holds(c, msgs, safe):
                held[c] = msgs
                self.waiting.discard(c)
                continue
            if msgs or safe > sent[c]:
                sent[c] = max(sent[c], safe)
                todo.append((c, Down(msgs, sent[c])))
            marked.append(c)
        self._mark_waiting(marked)
        return todo

    def start(self) -> list[tuple[int, Down]]:
        """The first safe time, to every CPU."""
        safe = self.safe = self.coord.safe_until()
        self.sent_safe = [safe] * self.n
        return [(c, Down([], safe)) for c in range(self.n)]

    def release(self) -> None:
        """Hand the recorder every event below the watermark: no CPU or coordinator event can come earlier."""
        wm = self.bound_at_step if self.bound_at_step >= 0 else self.coord.bound()
        for h in self.horizon:
            if h < wm:
                wm = h
        if self.in_flight:  # an IPI not yet seen can still make its CPU emit events from its t_recv
            for c in self.in_flight:
                h = self.ipi_unseen[c][0]
                if h < wm:
                    wm = h
        if wm != self.watermark or wm == 0:  # an unchanged watermark (after the first) releases nothing new
            self.watermark = wm
            self.rec.release(wm)

    def complete(self) -> bool:
        return self.coord.finished() and not self.in_flight

    def fail(self, err: Exception) -> dict:
        """End the run on an error: locate it in the script, keep everything recorded; the summary."""
        if isinstance(err, ModelError):
            locate(err, self.lines)
        self.rec.add(0, self.coord.events)
        self.coord.events = []
        return self.rec.close(err, self.coord.lock_held_cycles)

    def close(self) -> dict:
        return self.rec.close(lock_held_cycles=self.coord.lock_held_cycles)

    def progress(self) -> dict:
        return {"t": self.watermark, **self.rec.counters.c}


class CpuPort:
    """A CPU's side of the core: applies Down batches to its Cpu, runs it, and says what to send up."""

    def __init__(self, cpu: Cpu):
        self.cpu = cpu
        self.safe = -1
        self.ipis_seen = 0
        self.bound = 0         # the coordinator's idea of this CPU's next request time (its lb) ...
        self.after = INF       # ... or, after a reply, the CPU's resume time plus this lookahead
        self.replied = False
        self.reported: int | None = None
        self.delivered = 0     # model messages received: a checkpoint says which it includes

    def snapshot(self) -> dict:
        """This side's state and its Cpu's (Cpu.snapshot), as plain msgpack-able data (spelled out, not
        reflected: it must hold if these classes are compiled)."""
        return {"port": [self.safe, self.ipis_seen, self.bound, self.after, self.replied, self.reported,
                         self.delivered], "cpu": self.cpu.snapshot()}

    def restore(self, state: dict) -> None:
        """Take back a snapshot(); its Cpu must be new, of the same config and program."""
        (self.safe, self.ipis_seen, self.bound, self.after, self.replied, self.reported,
         self.delivered) = state["port"]
        self.cpu.restore(state["cpu"])

    def deliver(self, down: Down) -> bool:
        """Apply a batch; returns whether the CPU must report (it waits, the coordinator does not know)."""
        cpu = self.cpu
        self.delivered += len(down.msgs)
        for msg in down.msgs:
            if type(msg) is Ipi:
                self.ipis_seen += 1
                cpu.deliver(msg)
            else:
                cpu.deliver(msg)
                self.replied = True
        if down.safe > self.safe:
            self.safe = down.safe
        if cpu.state != RUNNING or cpu.can_run(self.safe):
            return False
        return not lookahead.waits(True, self.believed(), self.safe)

    def believed(self) -> int:
        """The coordinator's idea of when this CPU's next request can come at the earliest (its lb)."""
        if not self.replied:
            return self.bound
        return lookahead.after_reply(self.cpu.resumed, self.after)

    def work(self, max_ops: int | None = None, must_report: bool = False) -> Up | None:
        """Run the Cpu as far as it may; the batch to send up, or None when there is nothing to say."""
        cpu = self.cpu
        out: list
        if cpu.can_run(self.safe):
            out = cpu.run(self.safe, max_ops)
        elif must_report:
            out = [Progress(cpu.id, cpu.request_bound())]
        elif cpu.state != DONE:
            return None  # blocked, or waiting for a larger safe time: nothing new to say
        else:
            out = []
        if out and type(out[-1]) is Progress:
            if lookahead.waits(True, self.believed(), self.safe):
                out.pop()  # the coordinator already counts this CPU as waiting for a larger safe time
            else:
                self.bound = out[-1].bound
                self.replied = False
        elif out and type(out[-1]) is Request:
            self.after = out[-1].after
        h = cpu.horizon()
        # A blocked CPU's events ride with its next request; a finished one must report what its IPIs did
        # (the core waits for every IPI to be seen before it ends the run).
        if out or (cpu.state == DONE and (cpu.events or h != self.reported)):
            up = Up(out, cpu.events, h, self.ipis_seen)
            cpu.events = []
            self.reported = h
            return up
        return None

    def runnable(self) -> bool:
        return self.cpu.can_run(self.safe)
