"""Synthetic, schema-complete event streams for the trace tests (no model needed)."""

from __future__ import annotations

import random

import msgpack

# docs/trace-format.md, "Digest": each event type's fields in tuple order, written out here independently
# of smpsim.model.events.
LAYOUT = {
    "kmap": "page slot new slept cycles lock_wait", "kunmap": "page slot count", "wrap": "slots",
    "flush": "scope slots targets pages stall", "ipi": "src t_send t_recv t_ack scope dropped",
    "access": "page slot n writes hits misses", "tlb_miss": "page slot n cycles flush_caused",
    "stale": "page reached slot n", "wait": "page", "wake": "woken", "free": "slots",
}


def as_tuple(e: dict) -> tuple:
    """An event record (seq and nulls optional) as the model's event tuple."""
    return (e["t"], e["cpu"], e["ev"], *(e.get(f) for f in LAYOUT[e["ev"]].split()))


def event_bytes(e: dict) -> bytes:
    """One event's share of the digest: its tuple as one msgpack array."""
    return msgpack.packb(list(as_tuple(e)))


def make_events(count: int, seed: int = 1, cpus: int = 4) -> list[dict]:
    """``count`` events of every type, t non-decreasing, seq assigned, some fields None."""
    rng = random.Random(seed)
    out = []
    t = 0
    for i in range(count):
        t += rng.randrange(0, 40)
        cpu = rng.randrange(cpus)
        kind = i % 10  # (tests pick events by position: the types keep their places, free shares wake's)
        if kind == 0:
            e = {"ev": "kmap", "page": rng.randrange(1 << 40), "slot": rng.randrange(256), "new": rng.random() < .5,
                 "slept": False, "cycles": rng.randrange(10_000), "lock_wait": rng.randrange(5000)}
        elif kind == 1:
            e = {"ev": "kunmap", "page": rng.randrange(8192), "slot": rng.randrange(256), "count": 1}
        elif kind == 2:
            e = {"ev": "wrap", "slots": rng.randrange(256)}
        elif kind == 3:
            e = {"ev": "flush", "scope": "all", "slots": 3, "targets": [c for c in range(cpus) if c != cpu],
                 "pages": None, "stall": 10_800}
        elif kind == 4:
            e = {"ev": "ipi", "src": (cpu + 1) % cpus, "t_send": t - 2500, "t_recv": t, "t_ack": t + 1000,
                 "scope": "all", "dropped": rng.randrange(64)}
        elif kind == 5:
            e = {"ev": "access", "page": rng.randrange(8192), "slot": 4, "n": 8, "writes": rng.randrange(9),
                 "hits": 7, "misses": 1}
        elif kind == 6:
            e = {"ev": "tlb_miss", "page": None, "slot": None, "n": 32, "cycles": 960, "flush_caused": True}
        elif kind == 7:
            e = {"ev": "stale", "page": 5, "reached": 884, "slot": 13, "n": 8}
        elif kind == 8:
            e = {"ev": "wait", "page": rng.randrange(8192)}
        elif i % 20 == 9:
            e = {"ev": "wake", "woken": sorted(rng.sample(range(cpus), 2))}
        else:
            e = {"ev": "free", "slots": rng.randrange(1, 256)}
        out.append({"seq": i, "t": t, "cpu": cpu, **e})
    return out
