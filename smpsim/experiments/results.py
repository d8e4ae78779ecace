"""The results table of a sweep: one row per point, its swept parameters and headline metrics.

The metrics are smpsim.metrics' headline table over the point's summary.json (the counters
smpsim.trace.counters computes from the event stream) and the distributions of kmap latency and flush stall
in its trace (nearest-rank percentiles, as ``smpsim analyze``). With a ``[report]`` baseline, each row also
has ``baseline_point`` and the ratio columns ``KEY_ratio``: the metric over its baseline point's. The table is
written as CSV and Parquet; the Parquet file's metadata says which sweep and which points it holds, so the
tables of the shards of a sweep (``results-shard-I-of-N``) can be merged (``collect``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smpsim.experiments.runner import is_finished
from smpsim.experiments.sweep import Experiment, Point
from smpsim.metrics import (METRICS, POLICY_KEY, RATIO_COLUMNS, Group, describe, facts_from_summary, group,
                            headline, ratios)
from smpsim.metrics import saving_lines as metric_saving_lines
from smpsim.model.policies import label as policy_label
from smpsim.trace.errors import TraceError
from smpsim.trace.rundir import atomic_file, read_summary

META_KEY = b"smpsim.sweep"
SHARD_GLOB = "results-shard-*-of-*.parquet"


def columns(params: list[str]) -> list[str]:
    # With policy.name swept, "policy" is each point's policy by its own name (policy.name may be a spec).
    own = ["policy"] if POLICY_KEY in params else []
    return ["point", *params, *own, "status", *(m.key for m in METRICS), "baseline_point", *RATIO_COLUMNS,
            "digest", "run", "error"]


def row(point: Point, run_dir: Path, failure: str | None = None) -> dict[str, Any]:
    """The point's row. status: "ok", "error" (the model stopped the run: a kernel BUG or a deadlock) or
    "unfinished" (no finished run: it failed, as ``failure`` says, or was interrupted); metrics only for
    "ok"; error: why the run stopped. The ratio columns are filled in by ``with_ratios``."""
    summary = read_summary(run_dir) if is_finished(run_dir, point.hash) else None
    status = summary.get("status", "error") if summary else "unfinished"
    values: dict[str, Any] = {}
    if status == "ok":
        try:
            values = headline(facts_from_summary(summary, *distributions(run_dir)))
        except TraceError as e:  # damaged since the sweep checked it (or it was stopped before): run again
            summary, status, failure = None, "unfinished", str(e)
    r: dict[str, Any] = {"point": point.index, **point.params, "status": status}
    if POLICY_KEY in point.params:
        r["policy"] = summary.get("policy") if summary else policy_label(point.cfg)
    r.update({m.key: values.get(m.key) for m in METRICS})
    r["digest"] = summary.get("digest") if summary else None
    r["run"] = run_dir.name
    r["error"] = summary.get("error") if summary else failure
    return r


def distributions(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The distributions of the kmap events' cycles and the flush events' stall (None, None when the run
    recorded no trace)."""
    import pyarrow.compute as pc

    from smpsim.analysis.metrics import distribution
    from smpsim.trace.reader import open_run, read_table

    table = read_table(open_run(run_dir, warn=False), ["ev", "cycles", "stall"])
    if table.num_rows == 0:
        return None, None
    return (distribution(table.filter(pc.equal(table["ev"], "kmap"))["cycles"].to_numpy()),
            distribution(table.filter(pc.equal(table["ev"], "flush"))["stall"].to_numpy()))


def baselines(exp: Experiment) -> dict[int, int]:
    """Point -> its baseline point, from the experiment's [report] table (empty without one)."""
    rep = exp.report
    if rep is None or not rep.baseline:
        return {}
    groups, _ = group(exp.params([*rep.baseline, *rep.by]), rep.baseline, rep.by, "point")
    idx = [p.index for p in exp.points]
    return {idx[i]: idx[g.base] for g in groups if g.base is not None for i in g.members}


def with_ratios(rows: list[dict[str, Any]], base_of: dict[int, int]) -> list[dict[str, Any]]:
    """The rows with baseline_point and the ratio columns: each metric over its baseline point's (empty
    when that point is not among the rows or has no result)."""
    by_point = {r["point"]: r for r in rows}
    out = []
    for r in rows:
        b = base_of.get(r["point"])
        base = by_point.get(b) if b is not None else None
        ok = base is not None and base["status"] == "ok" and r["status"] == "ok"
        out.append({**r, "baseline_point": b, **(ratios(r, base) if ok else dict.fromkeys(RATIO_COLUMNS))})
    return out


def saving_lines(rows: list[dict[str, Any]], params: list[str], meta: dict[str, Any]) -> list[str]:
    """The one-line saving of each point over its baseline, group by group, in point order."""
    base_of = {int(k): v for k, v in (meta.get("baselines") or {}).items()}
    by = [k for k in (meta.get("report") or {}).get("by", []) if k in params]
    ok = [r for r in rows if r["status"] == "ok" and r["point"] in base_of]
    groups: dict[int, Group] = {}
    index = {r["point"]: i for i, r in enumerate(ok)}
    for i, r in enumerate(ok):
        b = base_of[r["point"]]
        g = groups.setdefault(b, Group({k: r[k] for k in by}, [], index.get(b)))
        g.members.append(i)
    labels = [describe({k: r[k] for k in params if k not in by}, r.get("policy")) for r in ok]
    return [line["text"] for line in metric_saving_lines(labels, ok, list(groups.values()))]


def metadata(exp: Experiment, shard: tuple[int, int] | None = None) -> dict[str, Any]:
    rep = exp.report
    return {"experiment": str(exp.path), "sweep_id": exp.sweep_id, "points": len(exp.points),
            "params": exp.keys, "shard": list(shard) if shard else None,
            "report": rep.model_dump() if rep is not None else None,
            "baselines": {str(k): v for k, v in baselines(exp).items()}}


def write(rows: list[dict[str, Any]], params: list[str], meta: dict[str, Any], base: Path) -> tuple[Path, Path]:
    """base.csv and base.parquet; returns their paths."""
    cols = columns(params)
    rows = with_ratios(rows, {int(k): v for k, v in (meta.get("baselines") or {}).items()})
    csv_path, pq_path = base.with_suffix(".csv"), base.with_suffix(".parquet")
    # Each replaced whole or not at all (a full disk leaves the previous table, never a 0-byte one).
    with atomic_file(csv_path) as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows([["" if r[c] is None else r[c] for c in cols] for r in rows])
    table = pa.table({c: [r[c] for r in rows] for c in cols})
    with atomic_file(pq_path, "wb") as f:
        try:
            pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), f)
        except pa.ArrowException as e:
            raise OSError(str(e)) from None
    return csv_path, pq_path


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata a results table was written with ({} when it has none)."""
    try:
        return json.loads((pq.read_schema(path).metadata or {})[META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return {}


def report_of(directory: Path) -> dict[str, Any] | None:
    """The [report] table (baseline, by) of the sweep whose results table is in directory, if any."""
    return read_meta(directory / "results.parquet").get("report") or None


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
