"""Messages between Cpu and Coordinator objects: typed tuples (NamedTuple), so any transport carries them
unchanged; the items of a compound request and of its reply are compiled classes (Call, CallResult). On a
wire a message is the array ``[kind, *fields]`` (`to_wire` / `from_wire`), its items arrays too.

Shaped for mypyc (smpsim/native.py compiles it): fields that hold sequences of plain data are typed Any, not
Sequence (compiled code would check an ABC, slowly, at every access); the messages sent once per kmap are
built with tuple.__new__ (a NamedTuple's own constructor runs a Python __new__, an interpreted frame even
when called from compiled code).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

# "Never": larger than any time. The largest int compiled code keeps unboxed (2**62 - 1): compared with
# it, a time stays a machine word, where 2**62 took the slow path of a boxed int at every comparison.
INF: Final = (1 << 62) - 1


def sat_add(a: int, b: int) -> int:
    """a + b for times and cycle counts (>= 0), where INF means never: never plus anything stays INF."""
    s = a + b
    return s if s < INF else INF


# A CPU's states: a Cpu's own (RUNNING its program, BLOCKED until a reply, DONE) and the coordinator's
# account of it (RUNNING: no ring call pending, REQUESTED: one pending, ASLEEP on pkmap_map_wait, DONE).
RUNNING: Final = "running"
BLOCKED: Final = "blocked"
REQUESTED: Final = "requested"
ASLEEP: Final = "asleep"
DONE: Final = "done"

# The op of a kunmap by a task that kmapped the page on another CPU and migrated (a kprobe trace's): a
# kunmap_high like any other, except that the replay may not run it before the kmap it pairs with, so
# while the page has no holder it waits for the next kmap of the page (model/coordinator.py).
MIGRATED_KUNMAP: Final = "kunmap_migrated"

# The kind of a program's operation. Inside the model an operation is a tuple whose first item is its kind,
# e.g. (KMAP, page), so the CPU's hot loops switch on op[0] with no lookup; users write and read the
# documented form, its code first (("kmap", page), docs/architecture.md "Workload operations"). OP_CODES /
# OP_KINDS are the one place that maps one to the other, op_by_kind / op_by_code the one converter pair.
# The ring calls are the kinds from KMAP on.
COMPUTE: Final = 0
ACCESS: Final = 1
KMAP: Final = 2
KUNMAP: Final = 3
KUNMAP_MIGRATED: Final = 4
UNKNOWN_OP: Final = -1
OP_CODES: Final = ("compute", "access", "kmap", "kunmap", MIGRATED_KUNMAP)  # OP_CODES[kind] is its code
OP_KINDS: Final[dict[str, int]] = {code: kind for kind, code in enumerate(OP_CODES)}


def op_kind(code: str) -> int:
    """The kind of an operation code (UNKNOWN_OP for none)."""
    return OP_KINDS.get(code, UNKNOWN_OP)


def op_code(kind: int) -> str:
    """The code of an operation kind, as users write it (for none: "kind N", to name it in an error)."""
    return OP_CODES[kind] if 0 <= kind < len(OP_CODES) else f"kind {kind!r}"


def op_by_kind(op: Any) -> tuple:
    """The model's form of an operation in the documented form (a tuple or list, its code first, checked by
    the caller)."""
    return (OP_KINDS[op[0]], *op[1:])


def op_by_code(op: tuple) -> tuple:
    """The documented form of an operation in the model's form (its kind first)."""
    return (op_code(op[0]), *op[1:])


class Call:
    """One kmap_high / kunmap_high call of a compound Request: the ring call of `kind` (KMAP, KUNMAP or
    KUNMAP_MIGRATED) on page at program position pc; gap is the compute cycles between the previous call's
    return (for the first call: 0) and this one, before IPI handlers stretch it."""
    __slots__ = ("gap", "kind", "page", "pc")

    def __init__(self, gap: int, kind: int, page: int, pc: int):
        self.gap, self.kind, self.page, self.pc = gap, kind, page, pc

    def to_wire(self) -> list:
        return [self.gap, OP_CODES[self.kind], self.page, self.pc]

    def __repr__(self) -> str:
        return f"Call{tuple(self.to_wire())!r}"


def call_from_wire(arr: Any) -> Call:
    """A Call from its wire array [gap, op code, page, pc]; ValueError for anything else."""
    if type(arr) is list and len(arr) == 4:
        gap, code, page, pc = arr
        if type(gap) is int and type(code) is str and type(page) is int and type(pc) is int:
            kind = op_kind(code)
            if kind >= KMAP:
                return Call(gap, kind, page, pc)
    raise ValueError(f"a malformed operation {str(arr)[:80]} (expected [gap, op, page, pc] with op "
                     f"{', '.join(OP_CODES[KMAP:])} and integers)")


class CallResult:
    """What the coordinator worked out for one Call: t when the call was made (for the calls after the first,
    where the coordinator placed it), t_done when it returned, slot the page's pkmap slot, local_flushes
    ((t, vpns or None = full flush), ...) the caller's own flushes as initiator."""
    __slots__ = ("t", "t_done", "slot", "local_flushes")

    def __init__(self, t: int, t_done: int, slot: int, local_flushes: tuple):
        self.t, self.t_done, self.slot, self.local_flushes = t, t_done, slot, local_flushes

    def to_wire(self) -> list:
        return [self.t, self.t_done, self.slot, [[t, vpns] for t, vpns in self.local_flushes]]

    def __repr__(self) -> str:
        return f"CallResult{tuple(self.to_wire())!r}"


def result_from_wire(arr: Any) -> CallResult:
    """A CallResult from its wire array [t, t_done, slot, [[t, vpns or None], ...]]; ValueError for anything
    else."""
    if type(arr) is list and len(arr) == 4:
        t, t_done, slot, flushes = arr
        if (type(t) is int and type(t_done) is int and type(slot) is int and type(flushes) is list
                and all(type(f) is list and len(f) == 2 and type(f[0]) is int for f in flushes)):
            return CallResult(t, t_done, slot, tuple([(f[0], f[1]) for f in flushes]))
    raise ValueError(f"a malformed call result {str(arr)[:80]} (expected [t, t_done, slot, [[t, vpns], ...]])")


# ---- CPU -> coordinator -------------------------------------------------------------------------------
class Request(NamedTuple):
    """kmap_high / kunmap_high calls that only compute separates: one round trip for all of them.

    ops: the calls, in program order. after: the least cycles from the last call's return to the CPU's
    next ring request (INF: none), the lookahead that lets the coordinator grant other CPUs' requests
    meanwhile."""
    cpu: int
    t: int
    ops: tuple[Call, ...]
    after: int


class Progress(NamedTuple):
    """Running; no ring request before `bound`."""
    cpu: int
    bound: int


class Done(NamedTuple):
    """The program finished at `clock`."""
    cpu: int
    clock: int


# ---- coordinator -> CPU -------------------------------------------------------------------------------
class Reply(NamedTuple):
    """The results of a Request, one per call."""
    cpu: int
    results: tuple[CallResult, ...]


class Ipi(NamedTuple):
    """A TLB shootdown IPI; scope "tick" (latr) is no interrupt but the lazy list the CPU invalidates at its
    tick t_recv."""
    src: int
    t_send: int
    t_recv: int
    t_handled: int
    t_ack: int
    scope: str
    vpns: Any   # a sequence of ints; None: a full flush


# The messages sent once per kmap (see the module's note): same type, same fields.
_new: Final = tuple.__new__


def request(cpu: int, t: int, ops: tuple[Call, ...], after: int) -> Request:
    return _new(Request, (cpu, t, ops, after))


def reply(cpu: int, results: tuple[CallResult, ...]) -> Reply:
    return _new(Reply, (cpu, results))


KINDS: tuple[type, ...] = (Request, Progress, Done, Reply, Ipi)
_CODE = {k: i for i, k in enumerate(KINDS)}


_REQUEST: Final = _CODE[Request]
_REPLY: Final = _CODE[Reply]


def to_wire(msg: tuple) -> list:
    if isinstance(msg, Request):
        return [_REQUEST, msg.cpu, msg.t, [c.to_wire() for c in msg.ops], msg.after]
    if isinstance(msg, Reply):
        return [_REPLY, msg.cpu, [r.to_wire() for r in msg.results]]
    return [_CODE[type(msg)], *msg]


def from_wire(arr: list) -> tuple:
    """A message from its wire array; raises ValueError/TypeError for a malformed one."""
    code = arr[0] if isinstance(arr, list) and arr else None
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code < len(KINDS):
        raise ValueError(f"unknown message kind {code!r}")
    if code == _REQUEST and len(arr) == 5 and type(arr[3]) is list:  # (other shapes: the caller's check)
        return Request(arr[1], arr[2], tuple([call_from_wire(c) for c in arr[3]]), arr[4])
    if code == _REPLY and len(arr) == 3 and type(arr[2]) is list:
        return Reply(arr[1], tuple([result_from_wire(r) for r in arr[2]]))
    return KINDS[code](*arr[1:])
