"""The results table of a sweep: one row per point, its swept parameters and headline metrics.

The metrics are the headline table (smpsim.headline) over the point's summary.json (the counters
smpsim.trace.counters computes from the event stream) and the distributions of kmap latency and flush stall
in its trace (nearest-rank percentiles, as ``smpsim analyze``). With a ``[report]`` baseline, each row also
has ``baseline_point`` and the ratio columns ``KEY_ratio``: the metric over its baseline point's. The table is
written as CSV and Parquet; the Parquet file's metadata says which sweep and which points it holds, so the
tables of the shards of a sweep (``results-shard-I-of-N``) can be merged (``collect``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from smpsim.experiments.runner import is_finished
from smpsim.experiments.sweep import Experiment, Point
from smpsim.headline import (METRICS, POLICY_KEY, RATIO_COLUMNS, Group, confounders, describe, facts_from_summary,
                            group, headline, marks, ratios)
from smpsim.headline import saving_lines as metric_saving_lines
from smpsim.model.policies import label as policy_label
from smpsim.trace.errors import TraceError
from smpsim.trace.rundir import atomic_file, read_summary

META_KEY = b"smpsim.sweep"
SHARD_GLOB = "results-shard-*-of-*.parquet"


CI = ("_ci95_lo", "_ci95_hi")  # a summarised column's interval: KEY_ci95_lo, KEY_ci95_hi
SEEDS_TABLE = "results-seeds"  # one row per (point, seed) of a sweep run with several seeds


def _own(params: list[str]) -> list[str]:
    # With policy.name swept, "policy" is each point's policy by its own name (policy.name may be a spec).
    return ["policy"] if POLICY_KEY in params else []


def columns(params: list[str], seed: bool = False) -> list[str]:
    """One row per run: the point's (or, with ``seed``, each seed's of a replicated point)."""
    return ["point", *(["seed"] if seed else []), *params, *_own(params), "status", *(m.key for m in METRICS),
            "baseline_point", *RATIO_COLUMNS, "digest", "run", "error", "confounders"]


def summary_columns(params: list[str]) -> list[str]:
    """One row per point run with several seeds: each metric's and ratio's mean with its 95% interval."""
    with_ci = [c for m in METRICS for c in (m.key, *(m.key + x for x in CI))]
    ratio_ci = [c for k in RATIO_COLUMNS for c in (k, *(k + x for x in CI))]
    return ["point", *params, *_own(params), "status", "seeds", *with_ci, "baseline_point", *ratio_ci, "digest",
            "run", "error", "confounders"]


def row(point: Point, run_dir: Path, failure: str | None = None, seed: bool = False) -> dict[str, Any]:
    """The run's row. status: "ok", "error" (the model stopped the run: a kernel BUG or a deadlock) or
    "unfinished" (no finished run: it failed, as ``failure`` says, or was interrupted); metrics only for
    "ok"; error: why the run stopped; confounders: the marks of smpsim.headline.CONFOUNDERS it carries.
    ``seed``: the row has the run's seed (a point run with several). The ratio columns are filled in by
    ``with_ratios``."""
    summary = read_summary(run_dir) if is_finished(run_dir, point.hash) else None
    status = summary.get("status", "error") if summary else "unfinished"
    r: dict[str, Any] = {"point": point.index, **({"seed": point.seed} if seed else {}), **point.params,
                         "status": status}
    if POLICY_KEY in point.params:
        r["policy"] = summary.get("policy") if summary else policy_label(point.cfg)
    facts = None
    if status == "ok":
        try:
            facts = facts_from_summary(summary, *distributions(run_dir))
        except TraceError as e:  # damaged since the sweep checked it (or it was stopped before): run again
            summary, status, failure = None, "unfinished", str(e)
            r["status"] = status
    values = headline(facts) if facts is not None else {}
    r.update({m.key: values.get(m.key) for m in METRICS})
    r["digest"] = summary.get("digest") if summary else None
    r["run"] = run_dir.name
    r["error"] = summary.get("error") if summary else failure
    r["confounders"] = marks(confounders(facts)) if facts is not None else ""
    return r


def distributions(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The distributions of the kmap events' cycles and the flush events' stall (None, None when the run
    recorded no trace)."""
    import pyarrow.compute as pc

    from smpsim.analysis.trace_metrics import distribution
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
    """The rows with baseline_point and the ratio columns: each metric over its baseline point's, the same
    seed's when the rows are seeds (empty when that point is not among the rows or has no result)."""
    by_run = {(r["point"], r.get("seed")): r for r in rows}
    out = []
    for r in rows:
        b = base_of.get(r["point"])
        base = by_run.get((b, r.get("seed"))) if b is not None else None
        ok = base is not None and base["status"] == "ok" and r["status"] == "ok"
        out.append({**r, "baseline_point": b, **(ratios(r, base) if ok else dict.fromkeys(RATIO_COLUMNS))})
    return out


def summarise(rows: list[dict[str, Any]], params: list[str]) -> list[dict[str, Any]]:
    """One row per point out of its seeds' rows (with their ratio columns): status "ok" when every seed's
    run is; each metric's mean over the seeds that ran ok with its 95% interval, each ratio column's
    per-seed ratios summarised the same way (smpsim.experiments.stats), seeds: how many ran ok. ``_cis``
    (not written): the summarised per-seed ratio of each saving-line metric, for the saving line."""
    from smpsim.experiments.stats import mean_ci, ratio_ci

    by_point: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_point.setdefault(r["point"], []).append(r)
    by_run = {(r["point"], r["seed"]): r for r in rows}
    out = []
    for p, rs in by_point.items():
        ok = [r for r in rs if r["status"] == "ok"]
        bad = [r for r in rs if r["status"] != "ok"]
        s: dict[str, Any] = {"point": p, **{k: rs[0][k] for k in params + _own(params)},
                             "status": bad[0]["status"] if bad else "ok", "seeds": len(ok)}
        for m in METRICS:
            s[m.key], s[m.key + CI[0]], s[m.key + CI[1]] = mean_ci([r[m.key] for r in ok])
        b = s["baseline_point"] = rs[0]["baseline_point"]
        for k in RATIO_COLUMNS:
            s[k], s[k + CI[0]], s[k + CI[1]] = ratio_ci([r[k] for r in ok])
        cis = {}
        for m in METRICS:
            base = [by_run.get((b, r["seed"])) for r in ok] if b is not None else []
            per_seed = [r[m.key] / x[m.key] for r, x in zip(ok, base)
                        if m.saving and x is not None and x["status"] == "ok" and isinstance(r[m.key], (int, float))
                        and x[m.key]]
            centre, lo, hi = ratio_ci(per_seed)
            if centre is not None:
                cis[m.key] = (centre, lo, hi, len(per_seed))
        s["_cis"] = cis
        s["digest"] = " ".join(r["digest"] or "-" for r in rs)
        s["run"] = " ".join(r["run"] for r in rs)
        s["error"] = "; ".join(f"seed {r['seed']}: {r['error'] or r['status']}" for r in bad) or None
        found = [m for r in ok for m in filter(None, (r["confounders"] or "").split("; "))]
        s["confounders"] = "; ".join(m if found.count(m) == len(ok) else f"{m} ({found.count(m)} of {len(ok)} seeds)"
                                     for m in dict.fromkeys(found))
        out.append(s)
    return out


def saving_lines(rows: list[dict[str, Any]], params: list[str], meta: dict[str, Any]) -> list[str]:
    """The one-line saving of each point over its baseline, group by group, in point order; with the
    confounder marks of the points it involves, and the intervals of points run with several seeds."""
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
    cis = [r["_cis"] for r in ok] if any("_cis" in r for r in ok) else None
    return [line["text"] for line in metric_saving_lines(labels, ok, list(groups.values()),
                                                         [r.get("confounders") or "" for r in ok], cis)]


def metadata(exp: Experiment, shard: tuple[int, int] | None = None) -> dict[str, Any]:
    rep = exp.report
    return {"experiment": str(exp.path), "sweep_id": exp.sweep_id, "points": len(exp.points),
            "params": exp.keys, "shard": list(shard) if shard else None,
            "report": rep.model_dump() if rep is not None else None,
            "baselines": {str(k): v for k, v in baselines(exp).items()},
            **({"seeds": [exp.seeds_of(p) for p in exp.points]} if exp.replicated else {})}


@dataclass
class Written:
    """The results table of a sweep as written: its rows and files, and the per-seed rows and files of a
    replicated sweep."""
    rows: list[dict[str, Any]]   # what results.* holds: a row per point
    paths: tuple[Path, Path]
    seed_rows: list[dict[str, Any]] | None = None  # points run with several seeds: a row per seed
    seed_paths: tuple[Path, Path] | None = None


def seeds_base(base: Path) -> Path:
    """Where the per-seed table of the results table ``base`` goes: results -> results-seeds,
    results-shard-0-of-2 -> results-seeds-shard-0-of-2."""
    return base.with_name(base.name.replace("results", SEEDS_TABLE, 1))


def write(rows: list[dict[str, Any]], params: list[str], meta: dict[str, Any], base: Path) -> Written:
    """base.csv and base.parquet from the runs' rows, ratio columns added; for points run with several
    seeds (meta has seeds) the runs' rows go to the seeds table and base.* summarises them per point."""
    rows = with_ratios(rows, {int(k): v for k, v in (meta.get("baselines") or {}).items()})
    if not meta.get("seeds"):
        return Written(rows, _write_table(rows, columns(params), meta, base))
    seed_paths = _write_table(rows, columns(params, seed=True), meta, seeds_base(base))
    points = summarise(rows, params)
    return Written(points, _write_table(points, summary_columns(params), meta, base), rows, seed_paths)


def _write_table(rows: list[dict[str, Any]], cols: list[str], meta: dict[str, Any], base: Path) -> tuple[Path, Path]:
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
    """The [report] table (baseline, by) of the sweep whose results table is in directory, if any. For
    points run with several seeds ``by`` gains ``seed``: each run is compared with its baseline point's run
    of the same seed (``smpsim sweep`` prints the summary over the seeds)."""
    meta = read_meta(directory / "results.parquet")
    rep = meta.get("report")
    if rep and meta.get("seeds") and rep.get("baseline"):
        return {**rep, "by": [*rep.get("by", []), "seed"]}
    return rep or None


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
    sweeps: dict[str, tuple[dict[str, Any], dict[Any, dict[str, Any]]]] = {}
    for f in files:
        try:
            table = pq.read_table(f)
            meta = json.loads((table.schema.metadata or {})[META_KEY])
            if meta.get("seeds"):  # points run with several seeds: their seeds' rows are what is merged
                table = pq.read_table(seeds_base(f.with_suffix("")).with_suffix(".parquet"))
        except (OSError, KeyError, ValueError, pa.ArrowException) as e:
            raise TraceError(f"{f}: not a shard results table of smpsim sweep ({e})") from None
        rows = sweeps.setdefault(meta["sweep_id"], (meta, {}))[1]
        for r in table.to_pylist():  # a run in several tables (shards run twice): keep a result
            key = (r["point"], r.get("seed"))
            if rows.get(key, {}).get("status") != "ok":
                rows[key] = r
    if len(sweeps) > 1:
        found = "; ".join(f"{m['experiment']} ({len(rows)} of {m['points']} points)" for m, rows in sweeps.values())
        raise TraceError(f"{directory}: holds shard results of {len(sweeps)} different sweeps ({found}); "
                         "collect one sweep per directory")
    (meta, rows), = sweeps.values()
    seeds = meta.get("seeds") or [[None]] * meta["points"]
    missing = [i for i in range(meta["points"]) if any((i, s) not in rows for s in seeds[i])]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise TraceError(f"{directory}: {len(missing)} of the {meta['points']} points of {meta['experiment']} "
                         f"have no results (points {shown}); run the shards that hold them, then collect again")
    return [rows[(i, s)] for i in range(meta["points"]) for s in seeds[i]], {**meta, "shard": None}
