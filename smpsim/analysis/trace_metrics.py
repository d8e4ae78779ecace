"""The metrics of ``smpsim analyze``: pure functions over an opened trace (a DuckDB view ``events``) -> dicts.

Every figure is an aggregate over columns (SQL, or numpy over one fetched column): no Python loop runs per
event, so a 10-million-event trace takes seconds. Definitions (docs/analysis.md has the full list):

- The headline counters (``counters``, ``flushes_by_scope``, ``per_cpu``, ``events``, ``t_end``) are the
  sums of smpsim.trace.counters.SUMS, the one table from which both the running counters of a recorded run
  and the SQL of ``headline`` are made; ``Counters.summary`` derives the rest (IPIs per 1000 kmaps, hit
  rates, totals), so summary.json can be checked against the trace.
- Percentiles are nearest-rank: pN is the smallest value with at least N% of the values <= it
  (sorted[ceil(N * n / 100) - 1]); ``max`` is p100.
- A useless IPI is one whose receiver dropped no pkmap translation (``dropped == 0``).
- Shootdown latency is the initiator's ``stall`` of each flush event.
- Time asleep: a CPU that goes to sleep on pkmap_map_wait (``wait``) sleeps until its next ``kmap``
  (which has ``slept = true``); one episode runs from the first ``wait`` after the CPU's previous kmap to
  that kmap, however often it was woken and went back to sleep in between.
- Slots in use (ring occupancy): slots with ``pkmap_count >= 1``, i.e. not free: +1 for each ``kmap``
  with ``new = true``, -1 for each ``kunmap`` that left ``count == 0`` (eager tear-down), -``slots`` for
  each ``wrap`` (flush_all_zero_pkmaps); for kmap-local the same rule counts kmap_local slots in use.
  vmap-lazy tears down at its purges instead (-``slots`` for each ``flush``), latr frees torn slots only
  at the tick (-``slots`` for each ``free``, not at the wrap).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from smpsim.analysis.load import Trace
from smpsim.headline import asleep_share, confounders, facts_from_analysis, headline as headline_metrics, per_1000, ratio
from smpsim.trace.counters import SLEEP_EPISODES_SQL, Counters

PERCENTILES = (50, 90, 99)
STALE_EXAMPLES = 5


# ------------------------------------------------------------------------------------------- helpers

def distribution(values: Any) -> dict[str, Any]:
    """count, total, mean, p50, p90, p99 (nearest rank) and max of integer values."""
    v = np.sort(np.asarray(values, dtype=np.int64))
    n = int(v.size)
    out: dict[str, Any] = {"count": n, "total": int(v.sum()) if n else 0,
                           "mean": round(float(v.mean()), 3) if n else None}
    for p in PERCENTILES:
        out[f"p{p}"] = int(v[-(-p * n // 100) - 1]) if n else None
    out["max"] = int(v[-1]) if n else None
    return out


def _ratio(a: int | float, b: int | float) -> float | None:
    return ratio(a, b, digits=6)


# ------------------------------------------------------------------------------------------- headline

def cpu_count(tr: Trace) -> int:
    """The run's CPUs: from its config, or (a run without one) the highest CPU id in the trace + 1."""
    seen = tr.one("SELECT greatest(coalesce(max(cpu), -1), coalesce(max(src), -1)) + 1 FROM events")[0]
    return max(tr.meta.cpus, int(seen))


def headline(tr: Trace, ncpu: int) -> dict[str, Any]:
    """The summary.json counters recomputed from the trace: the same dict as ``Counters.summary()``, from
    SQL generated out of the same counter table (smpsim.trace.counters.SUMS)."""
    return Counters.from_sql(tr.rows, ncpu).summary()


# ------------------------------------------------------------------------------------------- sections

def events_by_type(tr: Trace) -> dict[str, int]:
    return {ev: int(k) for ev, k in tr.rows("SELECT ev, count(*) FROM events GROUP BY ev ORDER BY ev")}


def kmaps(counters: dict[str, Any], tr: Trace) -> dict[str, Any]:
    """New vs reused mappings, and the kmap latency (request to return, lock wait and sleeps included)."""
    total = counters["kmaps"]
    cycles = tr.numpy("SELECT cycles FROM events WHERE ev = 'kmap'")["cycles"]
    return {"total": total, "new": counters["new_mappings"], "reused": counters["reuses"],
            "new_fraction": _ratio(counters["new_mappings"], total), "reuse_fraction": _ratio(counters["reuses"], total),
            "slept": int(tr.one("SELECT count(*) FROM events WHERE ev = 'kmap' AND slept")[0]),
            "latency": distribution(cycles)}


def shootdowns(tr: Trace) -> dict[str, Any]:
    """Flushes by scope with the initiator's stall (shootdown latency), the slots they made free again
    and the IPIs they sent."""
    d = tr.numpy("SELECT scope, stall, coalesce(slots, 0) AS slots, coalesce(len(targets), 0) AS targets "
                 "FROM events WHERE ev = 'flush' ORDER BY seq")
    scope, stall = d["scope"], d["stall"]
    out: dict[str, Any] = {"stall": distribution(stall),
                           "slots_torn_down": int(d["slots"].sum()), "ipis_targeted": int(d["targets"].sum()),
                           "remote": int((d["targets"] > 0).sum()), "by_scope": {}}
    for s in sorted(set(scope.tolist())):
        m = scope == s
        out["by_scope"][s] = {"flushes": int(m.sum()), "stall": distribution(stall[m]),
                              "ipis_targeted": int(d["targets"][m].sum())}
    return out


def ipis(tr: Trace, ncpu: int, kmap_count: int) -> dict[str, Any]:
    """IPIs received, useless ones, per 1000 kmaps, latencies, and the sender x receiver matrix."""
    matrix = [[0] * ncpu for _ in range(ncpu)]
    useless = [[0] * ncpu for _ in range(ncpu)]
    for src, dst, k, u in tr.rows("SELECT src, cpu, count(*), count(*) FILTER (WHERE dropped = 0) "
                                  "FROM events WHERE ev = 'ipi' GROUP BY ALL"):
        matrix[src][dst], useless[src][dst] = int(k), int(u)
    d = tr.numpy("SELECT t_recv - t_send AS delivery, t_ack - t_recv AS handling, t_ack - t_send AS round_trip, "
                 "dropped FROM events WHERE ev = 'ipi'")
    total = int(d["dropped"].size)
    n_useless = int((d["dropped"] == 0).sum())
    return {"sent": total, "useless": n_useless, "useless_fraction": _ratio(n_useless, total),
            "per_1000_kmaps": per_1000(total, kmap_count),
            "translations_dropped": int(d["dropped"].sum()),
            "delivery": distribution(d["delivery"]), "handling": distribution(d["handling"]),
            "round_trip": distribution(d["round_trip"]),
            "matrix": matrix, "useless_matrix": useless,
            "received_by_cpu": [sum(matrix[s][r] for s in range(ncpu)) for r in range(ncpu)],
            "sent_by_cpu": [sum(row) for row in matrix]}


def kmap_lock(tr: Trace) -> dict[str, Any]:
    """Cycles each kmap waited for kmap_lock (the uncontended acquire included), and the lock's utilisation:
    the time it was held (hand-offs included) over the elapsed time, from summary.json (None before 0.2)."""
    held = ((tr.meta.summary or {}).get("kmap_lock") or {})
    return {"wait": distribution(tr.numpy("SELECT lock_wait FROM events WHERE ev = 'kmap'")["lock_wait"]),
            "held_cycles": held.get("held_cycles"), "utilisation": held.get("utilisation")}




def sleeps(tr: Trace, counters: dict[str, Any]) -> dict[str, Any]:
    """Sleeps on pkmap_map_wait and the time asleep (wait -> that CPU's next kmap)."""
    rows = tr.rows(SLEEP_EPISODES_SQL)
    done = [(cpu, t1 - t0) for cpu, t0, _, t1, _ in rows if t1 is not None]
    unfinished = sorted({cpu for cpu, _, _, t1, _ in rows if t1 is None})
    slept_kmaps = int(tr.one("SELECT count(*) FROM events WHERE ev = 'kmap' AND slept")[0])
    return {"sleeps": counters["sleeps"], "wakes": counters["wakes"], "episodes": len(done),
            "kmaps_that_slept": slept_kmaps, "asleep": distribution([d for _, d in done]),
            "asleep_at_end": unfinished}


def stale(tr: Trace, counters: dict[str, Any], examples: int = STALE_EXAMPLES) -> dict[str, Any]:
    """Uses of stale translations (accesses that reached another page's frame) with the first examples."""
    cur = tr.sql("SELECT seq, t, cpu, page, reached, slot, n FROM events WHERE ev = 'stale' "
                 "ORDER BY seq LIMIT ?", [examples])
    names = [d[0] for d in cur.description]
    first = [dict(zip(names, r)) for r in cur.fetchall()]
    by_cpu = {int(c): int(k) for c, k in tr.rows(
        "SELECT cpu, sum(n) FROM events WHERE ev = 'stale' GROUP BY cpu ORDER BY cpu")}
    return {"uses": counters["stale"], "events": counters["stale_events"], "by_cpu": by_cpu, "examples": first}


def occupancy(tr: Trace) -> tuple[np.ndarray, np.ndarray]:
    """(t, slots in use after each change), in seq order; see the module docstring for the rule."""
    freed = {"vmap-lazy": "ev = 'flush' AND slots > 0", "latr": "ev = 'free'"}.get(
        tr.meta.policy, "(ev = 'kunmap' AND count = 0) OR (ev = 'wrap' AND slots > 0)")
    d = tr.numpy("SELECT t, CASE ev WHEN 'kmap' THEN 1 WHEN 'kunmap' THEN -1 ELSE -slots END AS delta "
                 f"FROM events WHERE (ev = 'kmap' AND new) OR {freed} ORDER BY seq")
    return np.asarray(d["t"], dtype=np.int64), np.cumsum(np.asarray(d["delta"], dtype=np.int64))


def ring(tr: Trace, t_end: int) -> dict[str, Any]:
    """Slots in use: peak, at the end, and the time-weighted mean over [0, t_end]."""
    meta = tr.meta
    t, used = occupancy(tr)
    cap = meta.slot_capacity
    out: dict[str, Any] = {"slots": "pkmap" if meta.uses_ring else "kmap_local", "capacity": cap,
                           "peak_in_use": 0, "t_peak": 0, "in_use_at_end": 0, "mean_in_use": 0.0,
                           "min_free": cap}
    if used.size:
        i = int(np.argmax(used))
        span = np.diff(np.append(t, max(t_end, int(t[-1]))))
        out.update(peak_in_use=int(used[i]), t_peak=int(t[i]), in_use_at_end=int(used[-1]),
                   mean_in_use=round(float((used * span).sum()) / t_end, 3) if t_end else float(used[-1]),
                   min_free=None if cap is None else cap - int(used[i]))
    return out


# ------------------------------------------------------------------------------------------- everything

def analyze(tr: Trace, logs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole report as one JSON-ready dict."""
    ncpu = cpu_count(tr)
    head = headline(tr, ncpu)
    counters = head["counters"]
    out: dict[str, Any] = {"run": {**tr.meta.describe(), "cpus": ncpu}}
    out.update(head)
    out["events_by_type"] = events_by_type(tr)
    out["kmaps"] = kmaps(counters, tr)
    out["shootdowns"] = shootdowns(tr)
    out["ipis"] = ipis(tr, ncpu, counters["kmaps"])
    out["kmap_lock"] = kmap_lock(tr)
    out["sleeps"] = sleeps(tr, counters)
    out["stale"] = stale(tr, counters)
    out["ring"] = ring(tr, head["t_end"])
    facts = facts_from_analysis(out)
    out["headline"] = headline_metrics(facts)
    out["sleeps"]["asleep_share"] = asleep_share(facts)
    out["confounders"] = confounders(facts)
    if logs is not None:
        out["logs"] = logs
    return out
