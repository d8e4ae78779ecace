"""Messages between Cpu and Coordinator objects: typed tuples (NamedTuple), so any transport carries them
unchanged. On a wire a message is the array ``[kind, *fields]`` (`to_wire` / `from_wire`); nested items stay
plain arrays.

Shaped for mypyc (smpsim/native.py compiles it): fields that hold sequences are typed Any, not Sequence
(compiled code would check an ABC, slowly, at every access); the messages sent once per kmap are built with
tuple.__new__ (a NamedTuple's own constructor runs a Python __new__, an interpreted frame even when called
from compiled code).
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


# ---- CPU -> coordinator -------------------------------------------------------------------------------
class Request(NamedTuple):
    """kmap_high / kunmap_high calls that only compute separates: one round trip for all of them.

    ops: ((gap, op, page, pc), ...): op "kmap", "kunmap" or MIGRATED_KUNMAP at program position pc; gap is the compute
    cycles between the previous item's return (for the first item: 0) and this call, before IPI handlers
    stretch it. after: the least cycles from the last item's return to the CPU's next ring request (INF:
    none), the lookahead that lets the coordinator grant other CPUs' requests meanwhile."""
    cpu: int
    t: int
    ops: Any  # tuples here, arrays from a wire
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
    """The results of a Request, one per item: (t, t_done, slot, local_flushes): t when the call was made
    (as the coordinator worked it out for the items after the first), t_done when it returned,
    local_flushes ((t, vpns or None = full flush), ...) the caller's own flushes as initiator."""
    cpu: int
    results: Any


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


def request(cpu: int, t: int, ops: Any, after: int) -> Request:
    return _new(Request, (cpu, t, ops, after))


def reply(cpu: int, results: Any) -> Reply:
    return _new(Reply, (cpu, results))


KINDS: tuple[type, ...] = (Request, Progress, Done, Reply, Ipi)
_CODE = {k: i for i, k in enumerate(KINDS)}


def to_wire(msg: tuple) -> list:
    return [_CODE[type(msg)], *msg]


def from_wire(arr: list) -> tuple:
    """A message from its wire array; raises ValueError/TypeError for a malformed one."""
    code = arr[0] if isinstance(arr, list) and arr else None
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code < len(KINDS):
        raise ValueError(f"unknown message kind {code!r}")
    return KINDS[code](*arr[1:])
