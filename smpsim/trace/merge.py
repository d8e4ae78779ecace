"""Canonical merge of per-source event batches into one stream in seq order.

The canonical order (docs/architecture.md, "Time and ordering") is the sort key ``(t, source, n)``:
source 0 is the coordinator, source ``1 + cpu`` a CPU, and ``n`` counts that source's events in the order
they were added. Sources hand in batches as they produce them; the engine releases everything below a
watermark once no source can still produce an event with a smaller ``t``.

Events are sequences whose item 0 is ``t`` (the model's event tuples, or lists after msgpack). No key is
built per event: each source's buffer is already almost in t order, so a stable sort by t (timsort, linear
on such runs) keeps n order among equal times; the released runs are concatenated in source order and
stably sorted by t once more, which leaves ties in source order. All of it runs in C.
"""

from __future__ import annotations

from bisect import bisect_left
from operator import itemgetter
from typing import Any

Event = Any  # a sequence whose item 0 is t (Any: compiled code would check an ABC at every use)

_T = itemgetter(0)


class CanonicalMerger:
    """Buffers events from several sources and releases them in ``(t, source, n)`` order.

    ``add`` raises ValueError for an event whose ``t`` is below a watermark already released: that event
    would have had to come before events that are already out, so the engine broke its own promise.
    """

    __slots__ = ("_bufs", "_buffered", "_seq", "_released", "_finished")

    def __init__(self, first_seq: int = 0) -> None:
        self._bufs: dict[int, list[Event]] = {}
        self._buffered = 0
        self._seq = first_seq
        self._released: int | None = None  # highest watermark released or promised so far
        self._finished = False

    def __len__(self) -> int:
        """Events buffered, not yet released."""
        return self._buffered

    @property
    def next_seq(self) -> int:
        """The seq the next released event gets (= number of events released so far + first_seq)."""
        return self._seq

    @property
    def watermark(self) -> int | None:
        """The highest watermark released or promised so far (None before the first)."""
        return self._released

    def add(self, source: int, events: list[Event]) -> None:
        if not events:
            return
        if self._finished:
            raise ValueError("CanonicalMerger.add after finish()")
        if source < 0:
            raise ValueError(f"source {source} out of range (must be >= 0)")
        if self._released is not None:
            lo = events[0][0]
            for e in events:  # (a loop: a handful of events, where min(map(...)) costs more than it saves)
                if e[0] < lo:
                    lo = e[0]
            if lo < self._released:
                raise ValueError(f"event at t={lo} from source {source} added after events below watermark "
                                 f"{self._released} were released")
        buf = self._bufs.get(source)
        if buf is None:
            self._bufs[source] = list(events)
        else:
            buf += events
        self._buffered += len(events)

    def advance(self, watermark: int) -> None:
        """Promise that no event with ``t < watermark`` will be added any more (without releasing yet)."""
        if self._released is None or watermark > self._released:
            self._released = watermark

    def release(self, watermark: int | None = None) -> list[Event]:
        """Every buffered event with ``t`` below the watermark (the highest given here or to ``advance``),
        in canonical order."""
        if watermark is not None:
            self.advance(watermark)
        if self._released is None:
            return []
        watermark = self._released
        runs: list[Event] = []
        bufs = self._bufs
        for source in sorted(bufs):
            buf = bufs[source]
            buf.sort(key=_T)
            cut = bisect_left(buf, watermark, key=_T)
            if cut == len(buf):
                runs += buf
                del bufs[source]
            elif cut:
                runs += buf[:cut]
                del buf[:cut]
        return self._out(runs)

    def finish(self) -> list[Event]:
        """Release everything still buffered; no event may be added afterwards."""
        runs: list[Event] = []
        for source in sorted(self._bufs):
            buf = self._bufs[source]
            buf.sort(key=_T)
            runs += buf
        self._bufs = {}
        self._finished = True
        return self._out(runs)

    def _out(self, runs: list[Event]) -> list[Event]:
        runs.sort(key=_T)  # stable: equal t stay in source order, then n order
        self._seq += len(runs)
        self._buffered -= len(runs)
        return runs
