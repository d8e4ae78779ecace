"""``smpsim compare``: headline metrics of several runs side by side, with ratios to the first.

An argument is a run directory or a directory with run directories somewhere below it (a sweep): every
directory that holds a run (``trace/``, or ``summary.json`` with ``config.toml``) is taken, in path order,
and the search does not descend into a run.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from smpsim.trace.errors import TraceError
from smpsim.trace.rundir import CONFIG_NAME, SUMMARY_NAME, TRACE_DIR

# (key, label, path into the analysis dict) in the order compare prints them.
HEADLINE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("kmaps", "kmaps", ("counters", "kmaps")),
    ("new_mappings", "new mappings", ("counters", "new_mappings")),
    ("reuse_fraction", "reused mappings (fraction)", ("kmaps", "reuse_fraction")),
    ("wraps", "ring wraps", ("counters", "wraps")),
    ("flushes", "flushes", ("counters", "flushes")),
    ("ipis", "IPIs sent", ("counters", "ipis")),
    ("ipis_per_1000_kmaps", "IPIs per 1000 kmaps", ("counters", "ipis_per_1000_kmaps")),
    ("useless_ipis", "useless IPIs", ("counters", "useless_ipis")),
    ("stall_p50", "shootdown latency p50", ("shootdowns", "stall", "p50")),
    ("stall_p99", "shootdown latency p99", ("shootdowns", "stall", "p99")),
    ("stall_max", "shootdown latency max", ("shootdowns", "stall", "max")),
    ("stall_cycles", "initiator stall cycles", ("counters", "stall_cycles")),
    ("kmap_p50", "kmap latency p50", ("kmaps", "latency", "p50")),
    ("kmap_p99", "kmap latency p99", ("kmaps", "latency", "p99")),
    ("lock_wait_cycles", "kmap_lock wait cycles", ("counters", "lock_wait_cycles")),
    ("sleeps", "sleeps on pkmap_map_wait", ("counters", "sleeps")),
    ("asleep_cycles", "time asleep (cycles)", ("sleeps", "asleep", "total")),
    ("tlb_hit_rate", "TLB hit rate", ("derived", "tlb_hit_rate")),
    ("flush_misses", "flush-induced TLB misses", ("derived", "flush_misses")),
    ("flush_miss_cycles", "flush-induced miss cycles", ("derived", "flush_miss_cycles")),
    ("stale", "stale uses", ("counters", "stale")),
    ("t_end", "virtual time (cycles)", ("t_end",)),
)


def is_run_dir(path: Path) -> bool:
    return (path / TRACE_DIR).is_dir() or ((path / SUMMARY_NAME).is_file() and (path / CONFIG_NAME).is_file())


def find_runs(path: str | Path) -> list[Path]:
    """``path`` itself when it is a run, else every run below it (sorted); TraceError when there is none."""
    p = Path(path)
    if not p.exists():
        raise TraceError(f"{p}: no such run or sweep directory")
    if not p.is_dir():
        raise TraceError(f"{p}: not a run or sweep directory (it is a file)")
    if is_run_dir(p):
        return [p]
    found: list[Path] = []
    for root, dirs, _files in os.walk(p):
        dirs.sort()
        here = Path(root)
        keep = []
        for d in dirs:
            if d.startswith("."):
                continue
            if is_run_dir(here / d):
                found.append(here / d)
            else:
                keep.append(d)
        dirs[:] = keep
    if not found:
        raise TraceError(f"{p}: not a run directory, and no run directories below it")
    return sorted(found)


def headline(a: dict[str, Any]) -> dict[str, Any]:
    """The compared metrics of one analysis, by key."""
    per = a["per_cpu"]
    hits = sum(p["hits"] for p in per)
    look = hits + sum(p["misses"] for p in per)
    src = dict(a)
    src["derived"] = {"tlb_hit_rate": round(hits / look, 6) if look else None,
                      "flush_misses": sum(p["flush_misses"] for p in per),
                      "flush_miss_cycles": sum(p["flush_miss_cycles"] for p in per)}
    out = {}
    for key, _label, path in HEADLINE:
        v: Any = src
        for step in path:
            v = v.get(step) if isinstance(v, dict) else None
        out[key] = v
    return out


def ratio(value: Any, base: Any) -> float | None:
    """value / base; None when either is missing or the base is 0."""
    if not isinstance(value, (int, float)) or not isinstance(base, (int, float)) or not base:
        return None
    return round(value / base, 4)


def config_differences(paths: list[Path]) -> list[dict[str, Any]]:
    """For each run, the resolved config keys (dotted) whose values are not the same in every run."""
    flat = [_flatten(_config(p)) for p in paths]
    keys = sorted(k for k in set().union(*flat) if len({json.dumps(f.get(k)) for f in flat}) > 1)
    return [{k: f.get(k) for k in keys} for f in flat]


def _config(path: Path) -> dict[str, Any]:
    try:
        with open(Path(path) / CONFIG_NAME, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def compare(analyses: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """{runs: [{label, run, policy, workload, cpus, truncated, differs}], metrics: [{key, label, values:
    [...], ratios: [... to the first run]}]}; ``differs`` holds the config keys whose values vary between
    the runs compared."""
    heads = [headline(a) for _, a in analyses]
    differs = config_differences([Path(a["run"]["run"]) for _, a in analyses])
    runs = [{"label": label, "run": a["run"]["run"], "policy": a["run"].get("policy"),
             "workload": a["run"].get("workload"), "cpus": a["run"]["cpus"], "truncated": a["run"]["truncated"],
             "differs": d}
            for (label, a), d in zip(analyses, differs)]
    metrics = []
    for key, label, _ in HEADLINE:
        values = [h[key] for h in heads]
        metrics.append({"key": key, "label": label, "values": values,
                        "ratios": [ratio(v, values[0]) for v in values]})
    return {"baseline": runs[0]["label"] if runs else None, "runs": runs, "metrics": metrics}


def labels(paths: list[Path], args: list[Path]) -> list[str]:
    """Short unambiguous names: a run's path relative to the argument it was found under (the argument's
    own name for a single run); the full path when two names collide."""
    out = []
    for p, arg in zip(paths, args):
        out.append(p.name if p == arg else str(Path(arg.name) / p.relative_to(arg)))
    if len(set(out)) < len(out):
        out = [str(p) for p in paths]
    return out
