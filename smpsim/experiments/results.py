"""The results table of a sweep: one row per point, its swept parameters and headline metrics.

The metrics come from the point's summary.json (the counters smpsim.trace.counters computes from the
event stream), the ratios between them defined here, once, and the kmap latency p99 from the trace's
``kmap`` events with the percentile definition of ``smpsim analyze`` (nearest rank). The table is
written as CSV and Parquet; the Parquet file's metadata says which sweep and which points it holds, so the
tables of the shards of a sweep (``results-shard-I-of-N``) can be merged (``collect``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smpsim.experiments.runner import is_finished
from smpsim.experiments.sweep import Experiment, Point
from smpsim.trace.errors import TraceError
from smpsim.trace.rundir import read_summary

META_KEY = b"smpsim.sweep"
SHARD_GLOB = "results-shard-*-of-*.parquet"


def _ratio(a: float | None, b: float | None, scale: float = 1, digits: int = 1) -> float | None:
    return round(scale * a / b, digits) if a is not None and b else None


# (column, label in the printed table or None, value from (counters, summary)); the summary carries
# "kmap_latency", the distribution of kmap cycles in the trace (None without a trace). Per 1k: per 1000
# kmaps; refill: TLB misses caused by a flush (flush_caused), and their cycles, per CPU.
METRICS: tuple[tuple[str, str | None, Callable[[dict, dict], Any]], ...] = (
    ("kmaps", None, lambda c, s: c["kmaps"]),
    ("wraps", "wraps", lambda c, s: c["wraps"]),
    ("flushes", "flushes", lambda c, s: c["flushes"]),
    ("ipis", None, lambda c, s: c["ipis"]),
    ("ipis_per_1000_kmaps", "IPIs/1k", lambda c, s: c["ipis_per_1000_kmaps"]),
    ("flushes_per_1000_kmaps", None, lambda c, s: _ratio(c["flushes"], c["kmaps"], 1000, 3)),
    ("stall_cycles", None, lambda c, s: c["stall_cycles"]),
    ("stall_per_1000_kmaps", "stall/1k", lambda c, s: _ratio(c["stall_cycles"], c["kmaps"], 1000)),
    ("stall_per_flush", "stall/flush", lambda c, s: _ratio(c["stall_cycles"], c["flushes"])),
    ("kmap_mean_cycles", "kmap avg", lambda c, s: _ratio(c["kmap_cycles"], c["kmaps"])),
    ("kmap_p99_cycles", "kmap p99", lambda c, s: (s["kmap_latency"] or {}).get("p99")),
    ("lock_wait_mean_cycles", None, lambda c, s: _ratio(c["lock_wait_cycles"], c["kmaps"])),
    ("tlb_hit_rate", "TLB hit", lambda c, s: _ratio(c["tlb_hits"], c["tlb_hits"] + c["tlb_misses"], 1, 6)),
    ("flush_misses_per_cpu", "refill/CPU", lambda c, s: _per_cpu(s, "flush_misses")),
    ("flush_miss_cycles_per_cpu", "refill cyc/CPU", lambda c, s: _per_cpu(s, "flush_miss_cycles")),
    ("sleeps", "sleeps", lambda c, s: c["sleeps"]),
    ("stale", "stale", lambda c, s: c["stale"]),
)


def _per_cpu(summary: dict, key: str) -> float | None:
    """The mean over CPUs of a per-CPU counter (summary["per_cpu"])."""
    per_cpu = summary.get("per_cpu") or []
    return _ratio(sum(p[key] for p in per_cpu), len(per_cpu))


def columns(params: list[str]) -> list[str]:
    return ["point", *params, "status", *(name for name, _, _ in METRICS), "digest", "run", "error"]


def row(point: Point, run_dir: Path, failure: str | None = None) -> dict[str, Any]:
    """The point's row. status: "ok", "error" (the model stopped the run: a kernel BUG or a deadlock) or
    "unfinished" (no finished run: it failed, as ``failure`` says, or was interrupted); metrics only for
    "ok"; error: why the run stopped."""
    summary = read_summary(run_dir) if is_finished(run_dir, point.hash) else None
    status = summary.get("status", "error") if summary else "unfinished"
    r: dict[str, Any] = {"point": point.index, **point.params, "status": status}
    if status == "ok":
        summary = {**summary, "kmap_latency": kmap_latency(run_dir)}
    for name, _, value in METRICS:
        r[name] = value(summary["counters"], summary) if status == "ok" else None
    r["digest"] = summary.get("digest") if summary else None
    r["run"] = run_dir.name
    r["error"] = summary.get("error") if summary else failure
    return r


def kmap_latency(run_dir: Path) -> dict[str, Any] | None:
    """Count, mean and percentiles of the kmap events' cycles (None when the run recorded no trace)."""
    import pyarrow.compute as pc

    from smpsim.analysis.metrics import distribution
    from smpsim.trace.reader import read_table

    table = read_table(run_dir, ["ev", "cycles"])
    if table.num_rows == 0:
        return None
    return distribution(table.filter(pc.equal(table["ev"], "kmap"))["cycles"].to_numpy())


def metadata(exp: Experiment, shard: tuple[int, int] | None = None) -> dict[str, Any]:
    return {"experiment": str(exp.path), "sweep_id": exp.sweep_id, "points": len(exp.points),
            "params": exp.keys, "shard": list(shard) if shard else None}


def write(rows: list[dict[str, Any]], params: list[str], meta: dict[str, Any], base: Path) -> tuple[Path, Path]:
    """base.csv and base.parquet; returns their paths."""
    cols = columns(params)
    csv_path, pq_path = base.with_suffix(".csv"), base.with_suffix(".parquet")
    try:
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(cols)
            w.writerows([["" if r[c] is None else r[c] for c in cols] for r in rows])
        table = pa.table({c: [r[c] for r in rows] for c in cols})
        pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), pq_path)
    except OSError as e:
        raise TraceError(f"{e.filename or base}: cannot write the results: {e.strerror or e}") from None
    return csv_path, pq_path


def collect(directory: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Merge the shards' tables found under directory: (rows in point order, metadata of the whole sweep).

    TraceError when there are none, when they come from different sweeps, or when points are missing.
    """
    if not directory.is_dir():
        raise TraceError(f"{directory}: no such directory")
    files = sorted(directory.rglob(SHARD_GLOB))
    if not files:
        raise TraceError(f"{directory}: no shard results ({SHARD_GLOB.replace('.parquet', '.*')}) under it; "
                         "run smpsim sweep EXPERIMENT --shard I/N --out DIR first")
    sweeps: dict[str, tuple[dict[str, Any], dict[int, dict[str, Any]]]] = {}
    for f in files:
        try:
            table = pq.read_table(f)
            meta = json.loads((table.schema.metadata or {})[META_KEY])
        except (OSError, KeyError, ValueError, pa.ArrowException) as e:
            raise TraceError(f"{f}: not a shard results table of smpsim sweep ({e})") from None
        rows = sweeps.setdefault(meta["sweep_id"], (meta, {}))[1]
        for r in table.to_pylist():  # a point in several tables (shards run twice): keep a result
            if rows.get(r["point"], {}).get("status") != "ok":
                rows[r["point"]] = r
    if len(sweeps) > 1:
        found = "; ".join(f"{m['experiment']} ({len(rows)} of {m['points']} points)" for m, rows in sweeps.values())
        raise TraceError(f"{directory}: holds shard results of {len(sweeps)} different sweeps ({found}); "
                         "collect one sweep per directory")
    (meta, rows), = sweeps.values()
    missing = [i for i in range(meta["points"]) if i not in rows]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise TraceError(f"{directory}: {len(missing)} of the {meta['points']} points of {meta['experiment']} "
                         f"have no results (points {shown}); run the shards that hold them, then collect again")
    return [rows[i] for i in range(meta["points"])], {**meta, "shard": None}
