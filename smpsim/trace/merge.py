"""Canonical merge of per-source event batches into one stream in seq order.

The canonical order (docs/architecture.md, "Time and ordering") is the sort key ``(t, source, n)``:
source 0 is the coordinator, source ``1 + cpu`` a CPU, and ``n`` counts that source's events in the order
they were added. Sources hand in batches as they produce them; the engine releases everything below a
watermark once no source can still produce an event with a smaller ``t``.

For speed the key is packed into one integer, ``t * 2**43 + source * 2**32 + n``, which orders exactly as
the tuple does for any integer t (negative too) as long as ``source < 2**11`` and ``n < 2**32``; heapq on
plain ints is about twice as fast as on tuples. The events themselves wait in a dict keyed the same way.
"""

from __future__ import annotations

import heapq
from typing import Any

Event = dict[str, Any]

_T_SHIFT = 43
_SRC_SHIFT = 32
MAX_SOURCE = (1 << (_T_SHIFT - _SRC_SHIFT)) - 1  # 2047: coordinator + 1024 CPUs fit
MAX_EVENTS_PER_SOURCE = 1 << _SRC_SHIFT


def order_key(t: int, source: int, n: int) -> tuple[int, int, int]:
    """The canonical sort key, as a tuple (for tests and documentation)."""
    return (t, source, n)


class CanonicalMerger:
    """Buffers events from several sources and releases them in ``(t, source, n)`` order with ``seq``.

    ``add`` raises ValueError for an event whose ``t`` is below a watermark already released: that event
    would have had to come before events that are already out, so the engine broke its own promise.
    """

    __slots__ = ("_heap", "_events", "_counters", "_seq", "_max_key", "_released", "_finished")

    def __init__(self, first_seq: int = 0) -> None:
        self._heap: list[int] = []
        self._events: dict[int, Event] = {}
        self._counters: dict[int, int] = {}
        self._seq = first_seq
        self._max_key: int | None = None  # an upper bound of the buffered keys
        self._released: int | None = None  # highest watermark released so far
        self._finished = False

    def __len__(self) -> int:
        """Events buffered, not yet released."""
        return len(self._heap)

    @property
    def next_seq(self) -> int:
        """The seq the next released event gets (= number of events released so far + first_seq)."""
        return self._seq

    @property
    def watermark(self) -> int | None:
        """The highest watermark released so far (None before the first release)."""
        return self._released

    def add(self, source: int, events: list[Event]) -> None:
        if not events:
            return
        if self._finished:
            raise ValueError("CanonicalMerger.add after finish()")
        if not 0 <= source <= MAX_SOURCE:
            raise ValueError(f"source {source} out of range 0..{MAX_SOURCE}")
        n0 = self._counters.get(source, 0)
        n1 = n0 + len(events)
        if n1 > MAX_EVENTS_PER_SOURCE:
            raise ValueError(f"source {source}: more than {MAX_EVENTS_PER_SOURCE} events")
        base = source << _SRC_SHIFT
        keys = [(ev["t"] << _T_SHIFT) + base + n for n, ev in enumerate(events, n0)]
        lo = min(keys)
        if self._released is not None and lo >> _T_SHIFT < self._released:
            raise ValueError(
                f"event at t={lo >> _T_SHIFT} from source {source} added after events below watermark "
                f"{self._released} were released")
        self._counters[source] = n1
        hi = max(keys)
        if self._max_key is None or hi > self._max_key:
            self._max_key = hi
        self._events.update(zip(keys, events))
        heap = self._heap
        if len(keys) * 4 >= len(heap):
            heap += keys
            heapq.heapify(heap)
        else:
            push = heapq.heappush
            for k in keys:
                push(heap, k)

    def release(self, watermark: int) -> list[Event]:
        """Every buffered event with ``t < watermark``, in canonical order, ``seq`` assigned."""
        if self._released is None or watermark > self._released:
            self._released = watermark
        heap = self._heap
        limit = watermark << _T_SHIFT  # key < limit  <=>  t < watermark
        if not heap or heap[0] >= limit:
            return []
        if self._max_key is not None and self._max_key < limit:
            heap.sort()
            self._heap = []
            self._max_key = None
            return self._number(heap)
        pop = heapq.heappop
        keys = []
        append = keys.append
        while heap and heap[0] < limit:
            append(pop(heap))
        return self._number(keys)

    def finish(self) -> list[Event]:
        """Release everything still buffered; no event may be added afterwards."""
        heap = self._heap
        heap.sort()
        self._heap = []
        self._max_key = None
        self._finished = True
        return self._number(heap)

    def _number(self, keys: list[int]) -> list[Event]:
        take = self._events.pop
        out = [take(k) for k in keys]
        seq = self._seq
        for ev in out:
            ev["seq"] = seq
            seq += 1
        self._seq = seq
        return out
