"""The run's counters, each defined once in ``SUMS``.

``SUMS`` is the one definition of every counter: which events it counts (or which field of them it sums),
under which condition, and whether it is a run total, per CPU, or per flush scope. From it come both
``Counters``, which keeps the sums while a run is recorded (summary.json), and ``sql_queries``, the DuckDB
SQL with which ``smpsim analyze`` recomputes the same sums from a recorded trace. Everything derived from the
sums (TLB totals, hit rates, IPIs per 1000 kmaps) is computed by ``Counters.summary`` alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import eq, is_, not_
from typing import Any

from smpsim.headline import hit_rate, per_1000
from smpsim.model.events import FIELDS, FIRST_FIELD

# Conditions on one field: (field, test). SQL and Python give the same answer for null fields.
TRUE, FALSE, ZERO, NULL = "true", "false", "zero", "null"
_SQL_TEST = {TRUE: "{f}", FALSE: "NOT coalesce({f}, false)", ZERO: "{f} = 0", NULL: "{f} IS NULL"}

RUN, CPU, SRC, SCOPE = None, "cpu", "src", "scope"  # what a counter is kept per


@dataclass(frozen=True)
class Sum:
    """One counter of summary.json: the event type it counts, the field it sums (or the events), the filter
    and what it is kept by (the run, a CPU, a flush scope)."""
    name: str                            # key in summary.json (counters, per_cpu[i] or flushes_by_scope)
    ev: str                              # the event type counted
    field: str | None = None             # None: count the events; else sum this field
    where: tuple[str, str] | None = None  # (field, TRUE | FALSE | ZERO | NULL)
    by: str | None = RUN                 # RUN total, per CPU (the event's cpu, or its src), per SCOPE


SUMS: tuple[Sum, ...] = (
    Sum("kmaps", "kmap"),
    Sum("new_mappings", "kmap", where=("new", TRUE)),
    Sum("reuses", "kmap", where=("new", FALSE)),
    Sum("kmap_cycles", "kmap", "cycles"),
    Sum("lock_wait_cycles", "kmap", "lock_wait"),
    Sum("kunmaps", "kunmap"),
    Sum("wraps", "wrap"),
    Sum("flushes", "flush"),
    Sum("stall_cycles", "flush", "stall"),
    Sum("ipis", "ipi"),
    Sum("useless_ipis", "ipi", where=("dropped", ZERO)),
    Sum("stale", "stale", "n"),
    Sum("stale_events", "stale"),
    Sum("sleeps", "wait"),
    Sum("wakes", "wake"),
    Sum("flushes", "flush", by=SCOPE),
    Sum("kmaps", "kmap", by=CPU),
    Sum("accesses", "access", "n", by=CPU),
    Sum("hits", "access", "hits", by=CPU),
    Sum("misses", "access", "misses", by=CPU),
    # a background refill after a full flush: its misses are in no access event
    Sum("misses", "tlb_miss", "n", where=("page", NULL), by=CPU),
    Sum("flush_misses", "tlb_miss", "n", where=("flush_caused", TRUE), by=CPU),
    Sum("flush_miss_cycles", "tlb_miss", "cycles", where=("flush_caused", TRUE), by=CPU),
    Sum("ipis_received", "ipi", by=CPU),
    Sum("ipis_sent", "ipi", by=SRC),
    Sum("stale", "stale", "n", by=CPU),
)

COUNTER_KEYS = tuple(dict.fromkeys(s.name for s in SUMS if s.by is RUN))

for _s in SUMS:  # a typo in the table fails at import, not as a silently zero counter
    _names = ("cpu",) + FIELDS[_s.ev]
    assert all(f is None or f in _names for f in (_s.field, _s.where and _s.where[0], _s.by)), _s
    assert _s.by != SCOPE or _s.field is None, _s

# Positions of the fields in an event tuple of each type.
_POS = {ev: {"t": 0, "cpu": 1, **{f: FIRST_FIELD + i for i, f in enumerate(names)}} for ev, names in FIELDS.items()}
_BY_EV: dict[str, list[Sum]] = {}
for _s in SUMS:
    _BY_EV.setdefault(_s.ev, []).append(_s)


def _mask(col: Sequence[Any], test: str) -> Iterable[Any]:
    if test == TRUE:
        return col
    if test == FALSE:
        return map(not_, col)
    if test == ZERO:
        return map(eq, col, repeat(0))
    return map(is_, col, repeat(None))


class Counters:
    """The running counters of a recorded run (the sums of SUMS, per CPU and per scope, events, t_end, time
    asleep), fed batch by batch as columns; ``summary()`` derives the rest."""
    def __init__(self, ncpu: int):
        self.ncpu = ncpu
        self.c: Counter = Counter()
        self.scopes: Counter = Counter()
        self.per_cpu = [Counter() for _ in range(ncpu)]
        self.events = 0
        self.t_end = 0
        self.asleep = 0                 # cycles asleep on pkmap_map_wait, episodes that ended in a kmap
        self._slept_since: dict[int, int] = {}  # CPU -> its first wait since its last kmap

    def feed(self, groups: dict[str, tuple[list[int], list[tuple]]]) -> None:
        """Add a batch given as columns per event type (``smpsim.trace.columns.by_type``)."""
        for ev, (_, cols) in groups.items():
            pos = _POS[ev]
            n = len(cols[0])
            self.events += n
            t_max = max(cols[0])
            if t_max > self.t_end:
                self.t_end = t_max
            for s in _BY_EV.get(ev, ()):
                values = cols[pos[s.field]] if s.field else None
                mask = list(_mask(cols[pos[s.where[0]]], s.where[1])) if s.where else None
                if s.by is RUN:
                    if values is None:
                        self.c[s.name] += n if mask is None else sum(map(bool, mask))
                    else:
                        self.c[s.name] += sum(values if mask is None else compress(values, mask))
                    continue
                keys = cols[pos[s.by]]
                if mask is not None:
                    keys = list(compress(keys, mask))
                    values = None if values is None else list(compress(values, mask))
                if s.by == SCOPE:
                    self.scopes.update(keys)
                    continue
                per, name = self.per_cpu, s.name
                if values is None:
                    for k, count in Counter(keys).items():
                        per[k][name] += count
                else:
                    acc = [0] * len(per)
                    for k, v in zip(keys, values):
                        acc[k] += v
                    for k, v in enumerate(acc):
                        if v:
                            per[k][name] += v
        self._sleep_episodes(groups)

    def _sleep_episodes(self, groups: dict[str, tuple[list[int], list[tuple]]]) -> None:
        """Time asleep, per episode as ``smpsim analyze`` has it (SLEEP_EPISODES_SQL): from a CPU's first
        ``wait`` after its previous kmap to its next kmap. Nothing to do while no CPU sleeps."""
        since = self._slept_since
        if "wait" not in groups and not since:
            return
        seq: list[tuple[int, int, int, bool]] = []
        cpus = set(since)
        if "wait" in groups:
            pos, cols = groups["wait"]
            seq += zip(pos, cols[0], cols[1], repeat(True))
            cpus.update(cols[1])
        if "kmap" in groups:
            pos, cols = groups["kmap"]
            seq += [(p, t, c, False) for p, t, c in zip(pos, cols[0], cols[1]) if c in cpus]
        for _, t, cpu, is_wait in sorted(seq):  # batch order: the canonical order
            if is_wait:
                since.setdefault(cpu, t)
            elif cpu in since:
                self.asleep += t - since.pop(cpu)

    @classmethod
    def from_sql(cls, rows: Callable[[str], list[tuple]], ncpu: int) -> "Counters":
        """The same sums recomputed from a recorded trace: ``rows(sql)`` runs a query over a table
        ``events`` with the trace's columns and returns its rows."""
        c = cls(ncpu)
        for by, (sql, names) in sql_queries().items():
            for row in rows(sql):
                if by is RUN:
                    values = dict(zip(names, (int(v or 0) for v in row)))
                    c.events, c.t_end = values.pop("events"), max(0, values.pop("t_end"))
                    c.c.update(values)
                    continue
                key, vals = row[0], row[1:]
                for name, v in zip(names, vals):
                    if not v:
                        continue
                    if by == SCOPE:
                        c.scopes[key] += int(v)
                    else:
                        c.per_cpu[key][name] += int(v)
        c.asleep = int(rows(ASLEEP_SQL)[0][0])
        return c

    def summary(self) -> dict:
        counters = {k: int(self.c[k]) for k in COUNTER_KEYS}
        hits = sum(p["hits"] for p in self.per_cpu)
        misses = sum(p["misses"] for p in self.per_cpu)
        counters["tlb_hits"], counters["tlb_misses"] = hits, misses
        counters["ipis_per_1000_kmaps"] = per_1000(counters["ipis"], counters["kmaps"])
        per_cpu = []
        for i, p in enumerate(self.per_cpu):
            per_cpu.append({"cpu": i, "kmaps": p["kmaps"], "accesses": p["accesses"], "hits": p["hits"],
                            "misses": p["misses"], "hit_rate": hit_rate(p["hits"], p["misses"]),
                            "flush_misses": p["flush_misses"], "flush_miss_cycles": p["flush_miss_cycles"],
                            "ipis_received": p["ipis_received"], "ipis_sent": p["ipis_sent"],
                            "stale": p["stale"]})
        return {"counters": counters, "flushes_by_scope": dict(sorted(self.scopes.items())),
                "per_cpu": per_cpu, "events": self.events, "t_end": self.t_end,
                "pkmap_map_wait": {"asleep_cycles": self.asleep}}


# Sleep episodes on pkmap_map_wait from a recorded trace (Counters._sleep_episodes keeps the same while
# recording): each CPU's first wait after its previous kmap, and that next kmap (null while still asleep).
SLEEP_EPISODES_SQL = """
WITH s AS (
  SELECT seq, t, cpu, ev, slept,
         -- kmaps of this CPU up to this row (a running sum: seq is unique, so RANGE = ROWS)
         sum(CASE WHEN ev = 'kmap' THEN 1 ELSE 0 END) OVER (PARTITION BY cpu ORDER BY seq) AS k
  FROM events WHERE ev IN ('wait', 'kmap')
),
episodes AS (  -- waits of one CPU between two of its kmaps: kmaps before them = k
  SELECT cpu, k + 1 AS kth, min(t) AS t_sleep, count(*) AS waits FROM s WHERE ev = 'wait' GROUP BY cpu, k
)
SELECT e.cpu, e.t_sleep, e.waits, m.t AS t_kmap, m.slept
FROM episodes e LEFT JOIN (SELECT cpu, k AS kth, t, slept FROM s WHERE ev = 'kmap') m USING (cpu, kth)
ORDER BY e.cpu, e.t_sleep
"""
ASLEEP_SQL = f"SELECT coalesce(sum(t_kmap - t_sleep), 0) FROM ({SLEEP_EPISODES_SQL}) WHERE t_kmap IS NOT NULL"


def _sql_term(s: Sum) -> str:
    cond = f"ev = '{s.ev}'"
    if s.where:
        cond += " AND " + _SQL_TEST[s.where[1]].format(f=s.where[0])
    if s.field is None:
        return f"count(*) FILTER (WHERE {cond})"
    return f"coalesce(sum({s.field}) FILTER (WHERE {cond}), 0)"


def sql_queries() -> dict[str | None, tuple[str, list[str]]]:
    """For each ``by`` (RUN, CPU, SRC, SCOPE): one query over ``events`` and the names of its columns after
    the group key (for RUN: ``events``, ``t_end`` and the run counters). Sums of the same name are added."""
    out: dict[str | None, tuple[str, list[str]]] = {}
    for by in (RUN, CPU, SRC, SCOPE):
        names = list(dict.fromkeys(s.name for s in SUMS if s.by == by))
        cols = [" + ".join(_sql_term(s) for s in SUMS if s.by == by and s.name == name) + f" AS {name}"
                for name in names]
        if by is RUN:
            cols = ["count(*) AS events", "coalesce(max(t), 0) AS t_end"] + cols
            names = ["events", "t_end"] + names
            sql = "SELECT " + ",\n  ".join(cols) + "\nFROM events"
        else:
            sql = (f"SELECT {by},\n  " + ",\n  ".join(cols)
                   + f"\nFROM events WHERE {by} IS NOT NULL GROUP BY {by}")
        out[by] = (sql, names)
    return out
