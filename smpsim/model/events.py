"""Trace events as the model emits them: plain tuples ``(t, cpu, ev, *fields)``, one layout per event type.

Tuples, not dicts: an event costs one allocation at its emission site, crosses the wire as a msgpack array,
and is hashed into the digest in batches (docs/trace-format.md, "Digest"). ``FIELDS`` is the one definition
of which fields each type carries and in which order; emission sites in cpu.py and coordinator.py write the
tuples literally in that order (a constructor call per event would cost as much as the tuple itself).
"""

from __future__ import annotations

from typing import Any

T, CPU, EV = 0, 1, 2  # positions common to every event tuple
FIRST_FIELD = 3

FIELDS: dict[str, tuple[str, ...]] = {
    "kmap": ("page", "slot", "new", "slept", "cycles", "lock_wait"),
    "kunmap": ("page", "slot", "count"),
    "wrap": ("slots",),
    "flush": ("scope", "slots", "targets", "pages", "stall"),
    "ipi": ("src", "t_send", "t_recv", "t_ack", "scope", "dropped"),
    "access": ("page", "slot", "n", "writes", "hits", "misses"),
    "tlb_miss": ("page", "slot", "n", "cycles", "flush_caused"),
    "stale": ("page", "reached", "slot", "n"),
    "wait": ("page",),
    "wake": ("woken",),
}

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
