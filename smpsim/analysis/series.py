"""Time series for the figures: per-bin aggregates over virtual time, computed in SQL.

The run's span [0, t_end] is cut into bins of ``width`` cycles (the figures choose round widths:
smpsim.analysis.figstyle.Bins), ``ceil((t_end + 1) / width)`` of them; bin b holds the events with
``b * width <= t < (b + 1) * width``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from smpsim.analysis.load import Trace


def bin_width(t_end: int, bins: int) -> int:
    return max(1, -(-(t_end + 1) // bins))


def bin_count(t_end: int, width: int) -> int:
    return max(1, -(-(t_end + 1) // width))


def timeline(tr: Trace, t_end: int, width: int) -> dict[str, Any]:
    """Flushes per bin by scope, ring wraps per bin, and IPIs per bin (useful and useless)."""
    w, bins = width, bin_count(t_end, width)
    flushes: dict[str, np.ndarray] = {}
    for scope, b, k in tr.rows("SELECT scope, t // ? AS b, count(*) FROM events WHERE ev = 'flush' "
                               "GROUP BY ALL", [w]):
        flushes.setdefault(scope, np.zeros(bins, dtype=np.int64))[b] = k
    wraps = np.zeros(bins, dtype=np.int64)
    ipis = np.zeros(bins, dtype=np.int64)
    useless = np.zeros(bins, dtype=np.int64)
    for b, k in tr.rows("SELECT t // ? AS b, count(*) FROM events WHERE ev = 'wrap' GROUP BY ALL", [w]):
        wraps[b] = k
    for b, k, u in tr.rows("SELECT t // ? AS b, count(*), count(*) FILTER (WHERE dropped = 0) FROM events "
                           "WHERE ev = 'ipi' GROUP BY ALL", [w]):
        ipis[b], useless[b] = k, u
    return {"width": w, "start": np.arange(bins, dtype=np.int64) * w, "flushes": dict(sorted(flushes.items())),
            "wraps": wraps, "ipis": ipis, "useless_ipis": useless}


def hit_rate(tr: Trace, ncpu: int, t_end: int, width: int) -> dict[str, Any]:
    """Per-CPU TLB hits and misses per bin (misses include background refills after a full flush, as in
    the per-CPU counters) and the hit rate (NaN for a bin without TLB lookups)."""
    w, bins = width, bin_count(t_end, width)
    hits = np.zeros((ncpu, bins), dtype=np.int64)
    misses = np.zeros((ncpu, bins), dtype=np.int64)
    for cpu, b, h, m in tr.rows(
            "SELECT cpu, t // ? AS b, coalesce(sum(hits), 0), coalesce(sum(misses), 0) + "
            "coalesce(sum(n) FILTER (WHERE ev = 'tlb_miss'), 0) FROM events "
            "WHERE ev = 'access' OR (ev = 'tlb_miss' AND page IS NULL) GROUP BY ALL", [w]):
        hits[cpu, b], misses[cpu, b] = h, m
    look = hits + misses
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(look > 0, hits / np.maximum(look, 1), np.nan)
    return {"width": w, "start": np.arange(bins, dtype=np.int64) * w, "hits": hits, "misses": misses,
            "rate": rate}


def envelope(t: np.ndarray, v: np.ndarray, t_end: int, bins: int = 2000) -> dict[str, np.ndarray]:
    """A step series (value v[i] from t[i] on) reduced to per-bin min, max and last value, for plotting
    millions of changes. A bin without a change carries the previous value."""
    w = bin_width(t_end, bins)
    lo = np.full(bins, np.nan)
    hi = np.full(bins, np.nan)
    last = np.full(bins, np.nan)
    if t.size:
        b = np.minimum(t // w, bins - 1)
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        idx = b[starts]
        lo[idx] = np.minimum.reduceat(v, starts)
        hi[idx] = np.maximum.reduceat(v, starts)
        last[idx] = v[np.r_[starts[1:], v.size] - 1]
    # carry the value through bins without changes (the level at the start of a bin is the last before it)
    prev = 0.0
    for i in range(bins):  # bins, not events: a few thousand steps
        if np.isnan(last[i]):
            lo[i] = hi[i] = last[i] = prev
        else:
            lo[i], hi[i] = min(lo[i], prev), max(hi[i], prev)
            prev = last[i]
    return {"start": np.arange(bins, dtype=np.int64) * w, "min": lo, "max": hi, "last": last}
