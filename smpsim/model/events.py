"""Trace events as the model emits them: plain tuples ``(t, cpu, ev, *fields)``, one layout per event type.

Tuples, not dicts: an event costs one allocation at its emission site, crosses the wire as a msgpack array,
and is hashed into the digest in batches (docs/trace-format.md, "Digest"). Each event type has one builder
here, named after it, whose parameters after ``t`` and ``cpu`` are its fields in tuple order: the one
statement of the layout. Emission sites call it with keyword arguments (``events.kmap(t=t, cpu=cpu, ...)``;
the parameters are keyword-only); ``FIELDS`` is read off the builders' signatures, and
tests/test_event_builders.py checks that each builder returns its parameters in order and that no code
builds an event tuple by hand.

Compiled with the model (smpsim/native.py): a builder called from compiled code is a direct C call, its
keyword arguments matched at compile time, so it costs what the tuple literal it replaces cost.
"""

from __future__ import annotations

from inspect import signature
from typing import Any

T, CPU, EV = 0, 1, 2  # positions common to every event tuple
FIRST_FIELD = 3


def kmap(*, t: int, cpu: int, page: int, slot: int, new: bool, slept: bool, cycles: int,
         lock_wait: int) -> tuple:
    """kmap_high (slot of the pkmap ring) or kmap_local (slot of the CPU's stack) returned."""
    return (t, cpu, "kmap", page, slot, new, slept, cycles, lock_wait)


def kunmap(*, t: int, cpu: int, page: int, slot: int, count: int) -> tuple:
    """kunmap_high or kunmap_local; count is the slot's pkmap_count after it (0 for a local slot)."""
    return (t, cpu, "kunmap", page, slot, count)


def wrap(*, t: int, cpu: int, slots: int) -> tuple:
    """The ring scan wrapped; slots: how many the policy tore down."""
    return (t, cpu, "wrap", slots)


def flush(*, t: int, cpu: int, scope: str, slots: int | None, targets: list[int], pages: int | None,
          stall: int) -> tuple:
    """A TLB flush the CPU initiated (or LATR's tick); pages None: the whole TLB."""
    return (t, cpu, "flush", scope, slots, targets, pages, stall)


def ipi(*, t: int, cpu: int, src: int, t_send: int, t_recv: int, t_ack: int, scope: str,
        dropped: int) -> tuple:
    """A flush IPI this CPU handled; dropped: its TLB entries the handler invalidated."""
    return (t, cpu, "ipi", src, t_send, t_recv, t_ack, scope, dropped)


def access(*, t: int, cpu: int, page: int, slot: int, n: int, writes: int, hits: int, misses: int) -> tuple:
    """The accesses made through one hold of a page, recorded when the hold ends."""
    return (t, cpu, "access", page, slot, n, writes, hits, misses)


def tlb_miss(*, t: int, cpu: int, page: int | None, slot: int | None, n: int, cycles: int,
             flush_caused: bool) -> tuple:
    """Page walks; page None: the background working set walking back in after a full flush."""
    return (t, cpu, "tlb_miss", page, slot, n, cycles, flush_caused)


def stale(*, t: int, cpu: int, page: int, reached: int, slot: int, n: int) -> tuple:
    """n accesses meant for page reached frame `reached` through a stale TLB entry."""
    return (t, cpu, "stale", page, reached, slot, n)


def wait(*, t: int, cpu: int, page: int) -> tuple:
    """kmap_high found no free slot and sleeps on pkmap_map_wait."""
    return (t, cpu, "wait", page)


def wake(*, t: int, cpu: int, woken: list[int]) -> tuple:
    """wake_up(&pkmap_map_wait): the CPUs woken."""
    return (t, cpu, "wake", woken)


def free(*, t: int, cpu: int, slots: int) -> tuple:
    """latr: slots a wrap tore down, free once every CPU's tick invalidated them."""
    return (t, cpu, "free", slots)


BUILDERS: tuple[Any, ...] = (kmap, kunmap, wrap, flush, ipi, access, tlb_miss, stale, wait, wake, free)
# Each type's fields in tuple order: its builder's parameters after t and cpu.
FIELDS: dict[str, tuple[str, ...]] = {b.__name__: tuple(signature(b).parameters)[FIRST_FIELD - 1:]
                                      for b in BUILDERS}
EVENT_TYPES: tuple[str, ...] = tuple(FIELDS)


def from_record(rec: dict[str, Any]) -> tuple:
    """The event tuple of a record read back from a trace (a dict with ``t``, ``cpu``, ``ev`` and its fields;
    ``seq`` and absent or null fields are ignored): what the model emitted for it."""
    ev = rec["ev"]
    try:
        names = FIELDS[ev]
    except KeyError:
        raise ValueError(f"unknown event type {ev!r}") from None
    get = rec.get
    return (rec["t"], rec["cpu"], ev, *(get(f) for f in names))


def to_record(event: tuple | list) -> dict[str, Any]:
    """An event tuple as a dict of its non-null fields (``t``, ``cpu``, ``ev`` first)."""
    ev = event[EV]
    rec = {"t": event[T], "cpu": event[CPU], "ev": ev}
    for name, v in zip(FIELDS[ev], event[FIRST_FIELD:]):
        if v is not None:
            rec[name] = v
    return rec
