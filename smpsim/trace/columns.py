"""A batch of event tuples as columns, one set per event type: what the counters and the Parquet writer
read, so that neither touches events one by one in Python."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Groups = dict[str, tuple[list[int], list[tuple]]]


def by_type(events: Sequence[Sequence[Any]]) -> Groups:
    """ev -> (positions of its events in the batch, its columns: t, cpu, ev, then its fields in layout order)."""
    rows: dict[str, tuple[list[int], list[Sequence[Any]]]] = {}
    for i, e in enumerate(events):
        g = rows.get(e[2])
        if g is None:
            rows[e[2]] = ([i], [e])
        else:
            g[0].append(i)
            g[1].append(e)
    return {ev: (pos, list(zip(*evs))) for ev, (pos, evs) in rows.items()}
