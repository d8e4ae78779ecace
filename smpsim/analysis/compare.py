"""``smpsim compare`` and the table ``smpsim sweep`` prints: headline metrics of several runs, each run
labelled by its parameters, with the saving of each run over its baseline in one line.

An argument is a run directory or a directory with run directories somewhere below it (a sweep): every
directory that holds a run (``trace/``, or ``summary.json`` with ``config.toml``) is taken, and the search
does not descend into a run. The runs of a sweep come in the sweep's point order (provenance.json names
each run's point), other runs in path order.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from smpsim.config import NOT_SIMULATED, dotted
from smpsim.headline import METRICS, Group, describe, fmt, fmt_metric, group, marks, saving_lines
from smpsim.trace.errors import TraceError
from smpsim.trace.rundir import CONFIG_NAME, PROVENANCE_NAME, SUMMARY_NAME, TRACE_DIR, read_config_data

WIDTH = 100  # a printed table fits this many columns (its value columns are split into blocks)


def is_run_dir(path: Path) -> bool:
    return (path / TRACE_DIR).is_dir() or ((path / SUMMARY_NAME).is_file() and (path / CONFIG_NAME).is_file())


def find_runs(path: str | Path) -> list[Path]:
    """``path`` itself when it is a run, else every run below it in sweep point order (then path order);
    TraceError when there is none."""
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
    return sorted(found, key=_sweep_order)


def _sweep_order(path: Path) -> tuple:
    """(experiment, point, seed) from provenance.json for a sweep's run, so runs keep the sweep's order."""
    try:
        sweep = json.loads((path / PROVENANCE_NAME).read_text())["sweep"]
        return (0, str(sweep["experiment"]), int(sweep["point"]), int(sweep.get("seed") or 0), str(path))
    except (OSError, ValueError, KeyError, TypeError):
        return (1, "", 0, 0, str(path))


def run_config(path: Path) -> dict[str, Any]:
    """A run's resolved config (config.toml) as dotted key -> value; {} when it has none."""
    return dict(dotted(read_config_data(path)))


# Keys that follow another (policy.sha256 is the source of policy.name's file): not parameters of a run.
FOLLOWERS = ("policy.sha256",)


def differing(configs: list[dict[str, Any]]) -> list[str]:
    """The config keys whose values are not the same in every run, in config order; keys that change
    nothing simulated (the engine, its transport: the same digest either way) are no difference."""
    keys = [k for k in dict.fromkeys(k for c in configs for k in c) if k not in FOLLOWERS + NOT_SIMULATED]
    return [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1]


def compare(paths: list[Path], analyses: list[dict[str, Any]], baseline: dict[str, Any] | None = None,
            by: list[str] = (), fallback: list[str] | None = None) -> dict[str, Any]:
    """{runs: [{label, run, params, truncated, baseline}], groups, metrics: [{key, label, values, ratios}],
    savings: [{run, baseline, group, text}]}. Without ``baseline`` the first run is every run's baseline.
    A run's label is its values of the config keys that differ between the runs (``by`` keys apart);
    ``fallback`` labels (e.g. directory names) are used when they do not tell the runs apart.
    TraceError when a group has no baseline run or several."""
    configs = [run_config(p) for p in paths]
    vary = [k for k in differing(configs) if k not in by]
    params = [{k: c.get(k) for k in vary} for c in configs]
    labels = [describe(p, a["run"].get("policy")) for p, a in zip(params, analyses)]
    keyed = [(label, *(json.dumps(c.get(k)) for k in by)) for label, c in zip(labels, configs)]
    if len(set(keyed)) < len(keyed):  # the same config twice: name them apart, by number if need be
        named = fallback is not None and len(set(fallback)) == len(fallback) and not any(
            re.fullmatch(r"[0-9a-f]{16}", f) for f in fallback)
        labels = list(fallback) if named else [f"{label or 'run'} #{i + 1}" for i, label in enumerate(labels)]
    values = [a["headline"] for a in analyses]
    if baseline:
        groups, problems = group([{k: c.get(k) for k in [*baseline, *by]} for c in configs], dict(baseline),
                                 list(by))
        if problems:
            raise TraceError("; ".join(dict.fromkeys(problems)) + " (compare --baseline KEY=VALUE [--by KEY])")
    else:
        groups = [Group({}, list(range(len(paths))), 0)]
    base_of = {i: g.base for g in groups for i in g.members}
    group_of = {i: g.label for g in groups for i in g.members}
    found = [a.get("confounders") or [] for a in analyses]
    runs = [{"label": label, "run": str(p), "params": prm, "policy": a["run"].get("policy") or c.get("policy.name"),
             "workload": c.get("workload.kind"), "cpus": c.get("machine.cpus"), "truncated": a["run"]["truncated"],
             "group": group_of[i], "baseline": base_of.get(i), "confounders": found[i]}
            for i, (label, p, prm, c, a) in enumerate(zip(labels, paths, params, configs, analyses))]
    metrics = []
    for m in METRICS:
        vs = [v[m.key] for v in values]
        rs = [_ratio(v, vs[base_of[i]]) if base_of.get(i) is not None else None for i, v in enumerate(vs)]
        metrics.append({"key": m.key, "label": m.label, "values": vs, "ratios": rs})
    return {"runs": runs, "varying": vary, "by": list(by),
            "groups": [{"values": g.values, "runs": g.members, "baseline": g.base} for g in groups],
            "metrics": metrics, "savings": saving_lines(labels, values, groups, [marks(f) for f in found])}


def _ratio(value: Any, base: Any) -> float | None:
    if not isinstance(value, (int, float)) or not isinstance(base, (int, float)) or not base:
        return None
    return round(value / base, 6)


# ------------------------------------------------------------------------------------------- the table

def metrics_table(header: list[tuple[str, list[Any]]], values: list[dict[str, Any]],
                  blocks: list[tuple[str, list[int]]], width: int = WIDTH) -> list[str]:
    """Metrics as rows, runs as columns, as plain lines no wider than ``width``.

    header: (name, one value per run) rows naming the columns (a swept key and each run's value of it);
    blocks: (title, runs) shown one after the other (e.g. one per group). Only the metrics that differ
    between the runs get rows; the others are said once, in a line below. Columns that do not fit are
    continued in a further block. A value with KEY_ci95_lo/hi (a point run with several seeds) shows as
    "mean ±half"; runs with ``confounders`` get a row naming them, the marks said in full below.
    """
    shown = [m for m in METRICS if len({json.dumps(v.get(m.key)) for v in values}) > 1]
    same = [m for m in METRICS if m not in shown]
    cell = [[_with_ci(m.key, v) for m in shown] for v in values]
    found = [[x for x in (v.get("confounders") or "").split("; ") if x] for v in values]
    legend = list(dict.fromkeys(x for f in found for x in f))
    rows = [m.label for m in shown]
    if legend:  # short names in the cells ("lock-bound"), the marks in full below the table
        rows.append("confounded")
        for c, f in zip(cell, found):
            c.append(", ".join(dict.fromkeys(x.split(":")[0] for x in f)) or "-")
    heads = [[fmt(vals[i]) for _, vals in header] for i in range(len(values))]
    first = max([len(label) for label in rows] + [len(name) for name, _ in header] + [6])
    out: list[str] = []
    for title, runs in blocks:
        col = {i: max([len(x) for x in cell[i] + heads[i]] + [4]) for i in runs}
        chunks, cur, used = [], [], first
        for i in runs:
            if cur and used + 2 + col[i] > width:
                chunks.append(cur)
                cur, used = [], first
            cur.append(i)
            used += 2 + col[i]
        chunks.append(cur)
        for k, chunk in enumerate(chunks):
            if title:
                out.append(title + (" (continued)" if k else ""))
            for h, (name, _) in enumerate(header):
                out.append((name.ljust(first) + "".join("  " + heads[i][h].rjust(col[i]) for i in chunk)).rstrip())
            for j, label in enumerate(rows):
                out.append(label.ljust(first) + "".join("  " + cell[i][j].rjust(col[i]) for i in chunk))
            out.append("")
    if same and values:
        out += _wrapped("the same for every run: " + "; ".join(
            f"{m.label} {fmt_metric(m.key, values[0].get(m.key))}" for m in same), width)
    out += [f"confounded: {x}" for x in legend]
    return out


def _with_ci(key: str, v: dict[str, Any]) -> str:
    """A metric's cell: "1,143", or "1,143 ±42" for a mean with its 95% interval."""
    text = fmt_metric(key, v.get(key))
    lo, hi = v.get(key + "_ci95_lo"), v.get(key + "_ci95_hi")
    if lo is None or hi is None or v.get(key) is None:
        return text
    return f"{text} ±{fmt_metric(key, (hi - lo) / 2)}"


def savings_block(against: str, texts: list[str], width: int = WIDTH) -> list[str]:
    """The saving lines under a heading, each wrapped to ``width``."""
    out = ["", f"against {against}:"]
    for text in texts:
        out += _wrapped("  " + text, width, "      ")
    return out


def _wrapped(text: str, width: int, indent: str = "  ") -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False)


def layout(doc: dict[str, Any]) -> tuple[list[tuple[str, list[Any]]], list[tuple[str, list[int]]]]:
    """The header rows and blocks of ``compare``'s table: one block per --by group."""
    runs = doc["runs"]
    header = [(k, [r["params"][k] for r in runs]) for k in doc["varying"]] or [("run", [r["label"] for r in runs])]
    if not doc["by"]:
        return header, [("", list(range(len(runs))))]
    blocks = [(", ".join(f"{k} = {fmt(v)}" for k, v in g["values"].items()), g["runs"]) for g in doc["groups"]]
    return header, blocks

