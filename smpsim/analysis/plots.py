"""The figures of ``smpsim analyze``, ``compare`` and ``sweep`` (matplotlib Figures, no display needed) and the
self-contained HTML report. How every figure looks (size, lettering, series styles, log axes, legends,
saving) is smpsim.analysis.figstyle's; this module decides only what is drawn.

``smpsim analyze --plot`` (``analysis_figures``):
- ``ipi_heatmap``  IPIs by sending CPU (rows) and receiving CPU (columns)
- ``timeline``     flushes per time bin by scope, IPIs per bin (useless ones apart), and the slots in use
- ``latency_cdf``  CDFs of the kmap latency and of its kmap_lock wait; the initiator stall of each flush
                   against time
- ``hit_rate``     each CPU's TLB hit rate per time bin (a heatmap beyond 8 CPUs)

``smpsim compare --plot``: ``kmap_latency_cdf``, a kmap latency CDF per run. ``smpsim sweep --plot``: each
metric of SWEEP_METRICS against a swept key (``sweep_figures``: a figure per metric, named by its
results.csv column, and ``headline`` with all of them).

``write_html`` embeds the analyze figures as base64 data: URIs next to the report's tables; the page loads
nothing from anywhere (no scripts, fonts or stylesheets outside the file).
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from smpsim.analysis import series
from smpsim.analysis.figstyle import (MARKERS, SCOPE_COLOURS, Bins, auto_bins, even_bins, figure, legend, legend_height,
                                      png_bytes, save, scale, series_style, styled, ticks_at, time_axis, title)
from smpsim.analysis.load import Trace
from smpsim.headline import BY_KEY, describe, fmt

FIGURES = ("ipi_heatmap", "timeline", "latency_cdf", "hit_rate")
# What `smpsim sweep --plot` draws against the swept key: the headline of a flush policy's cost.
SWEEP_METRICS = ("ipis_per_1000_kmaps", "stall_per_flush", "kmap_mean_cycles", "kmap_p99_cycles",
                 "lock_utilisation", "flush_misses_per_cpu")
EXACT = 5000  # up to this many steps or flushes are drawn one by one; more as per-bin ranges


def run_title(a: dict[str, Any]) -> str:
    """What ran, never where it is stored: "linux-2.4, zipf, 64 CPUs"."""
    r = a["run"]
    return (f"{r.get('policy')}, {r.get('workload')}, {fmt(r['cpus'])} CPUs"
            + (" (truncated)" if r.get("truncated") else ""))


# ------------------------------------------------------------------------------------------- analyze

def ipi_heatmap_figure(a: dict[str, Any]):
    from matplotlib.ticker import MaxNLocator

    m = np.array(a["ipis"]["matrix"], dtype=np.int64)
    n = m.shape[0]
    fig = figure(3.4)
    ax = fig.add_subplot()
    ax.grid(False)
    edges = np.arange(n + 1) - 0.5
    # a mesh of exact cells, not a resampled image: no moire stripes at any size
    mesh = ax.pcolormesh(edges, edges, m, cmap="magma_r", vmin=0, vmax=max(1, int(m.max())), shading="flat",
                         edgecolors="none", antialiased=False, rasterized=n > 64)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_aspect("equal")
    fig.colorbar(mesh, ax=ax, label="IPIs (count)", shrink=0.9, ticks=MaxNLocator(integer=True))
    ax.set_xlabel("receiving CPU")
    ax.set_ylabel("sending CPU (flush initiator)")
    step = max(1, -(-n // 8))
    ax.set_xticks(range(0, n, step))
    ax.set_yticks(range(0, n, step))
    if n <= 8:
        top = max(1, int(m.max()))
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, fmt(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > top * 0.6 else "black")
    if not m.any():
        ax.text(0.5, 0.5, "no IPIs in this run", transform=ax.transAxes, ha="center", va="center")
    ip = a["ipis"]
    title(ax, f"IPIs by sender and receiver: {fmt(ip['sent'])} in all, {fmt(ip['useless'])} useless. "
              f"{run_title(a)}")
    return fig


def timeline_figure(tr: Trace, a: dict[str, Any], bins: Bins):
    from smpsim.analysis.trace_metrics import occupancy

    t_end = a["t_end"]
    tl = series.timeline(tr, t_end, bins.width)
    t, used = occupancy(tr)
    fig = figure(5.4)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True, height_ratios=[1, 1, 1.2])
    x, w = tl["start"] / bins.per, bins.width / bins.per
    bottom = np.zeros(x.size)
    for scope, k in tl["flushes"].items():
        ax1.bar(x, k, width=w, align="edge", bottom=bottom, color=SCOPE_COLOURS.get(scope, "grey"),
                label=f"{scope} flushes ({fmt(int(k.sum()))})", linewidth=0)
        bottom += k
    ax1.set_ylabel(f"flushes\nper {bins.text}")
    if not tl["flushes"]:
        ax1.text(0.5, 0.5, "no flushes", transform=ax1.transAxes, ha="center", va="center")
    useful = tl["ipis"] - tl["useless_ipis"]
    ax2.bar(x, useful, width=w, align="edge", color="#9467bd", linewidth=0,
            label=f"IPIs that dropped translations ({fmt(int(useful.sum()))})")
    ax2.bar(x, tl["useless_ipis"], width=w, align="edge", bottom=useful, color="#c7c7c7", linewidth=0,
            label=f"useless IPIs: dropped none ({fmt(int(tl['useless_ipis'].sum()))})")
    ax2.set_ylabel(f"IPIs\nper {bins.text}")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    cap = a["ring"]["capacity"]
    kind = "pkmap slots" if a["ring"]["slots"] == "pkmap" else "kmap_local slots"
    if used.size <= EXACT:
        ax3.step(np.r_[0, t, max(t_end, int(t[-1]) if t.size else 0)] / bins.per,
                 np.r_[0, used, used[-1] if used.size else 0], where="post", color="#1f77b4", linewidth=0.8,
                 label=f"{kind} in use")
    else:
        env = series.envelope(t, used, t_end)
        ax3.fill_between(env["start"] / bins.per, env["min"], env["max"], step="post", color="#1f77b4",
                         alpha=0.35, linewidth=0, label=f"{kind} in use (range)")
        ax3.step(env["start"] / bins.per, env["last"], where="post", color="#1f77b4", linewidth=0.6)
    if cap:
        ax3.axhline(cap, color="black", linestyle="--", linewidth=0.8, label=f"capacity ({fmt(cap)})")
    wraps = np.flatnonzero(tl["wraps"])
    if wraps.size and int(tl["wraps"].sum()) <= 60:  # more would hide the occupancy
        for b in wraps:
            ax3.axvline(x[b], color=SCOPE_COLOURS["all"], alpha=0.25, linewidth=0.6)
        ax3.plot([], [], color=SCOPE_COLOURS["all"], alpha=0.5, label="ring wrap")
    ax3.set_ylabel(f"{kind}\nin use")
    ax3.set_ylim(0, max(cap or 1, int(used.max()) if used.size else 1) * 1.08)
    time_axis(ax3, bins)
    ax3.set_xlim(0, max(1, t_end) / bins.per)
    title(fig, f"Flushes, IPIs and ring occupancy over time (bins of {bins.text}): {run_title(a)}")
    legend(fig)
    return fig


def _cdf(ax, data: list[tuple[str, Any, dict[str, Any]]]) -> None:
    """Empirical CDFs as steps, one per (label, values, style), on a log axis when the values span more
    than LOG_SPAN times. Each label says the median, or the one value all of them take."""
    values = [np.sort(np.asarray(v, dtype=np.int64)) for _, v, _ in data]
    allv = np.concatenate(values) if values else np.array([], dtype=np.int64)
    for (label, _, style), v in zip(data, values):
        if not v.size:
            continue
        vals, counts = np.unique(v, return_counts=True)
        note = (f"all {fmt(v.size)} = {fmt(int(vals[0]))}" if vals.size == 1
                else f"median {fmt(int(v[(v.size - 1) // 2]))}")
        y = np.r_[0, np.cumsum(counts) / v.size]
        # markers where the CDF crosses fixed fractions, shifted a little per line so overlapping lines
        # still show each marker
        i = len(ax.get_lines())
        at = sorted({int(np.searchsorted(y, q + 0.03 * (i % 5))) for q in (0.1, 0.3, 0.5, 0.7, 0.9)})
        ax.step(np.r_[vals[0], vals], y, where="post", label=f"{label} ({note})",
                markevery=[j for j in at if j < y.size], **style)
    if allv.size:
        scale(ax, "x", [int(allv.min()), int(allv.max())])
        lo, hi = int(allv.min()), int(allv.max())
        if ax.get_xscale() == "log":
            ax.set_xlim(lo / 1.5, hi * 1.5)
        else:
            pad = max(1, (hi - lo) * 0.05)
            ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(0, 1.02)


def latency_figure(tr: Trace, a: dict[str, Any], bins: Bins):
    """Top: CDFs of the kmap latency and of the kmap_lock wait within it. Bottom: the initiator stall of
    each flush against time (a row of points when every flush stalls the same)."""
    fig = figure(5.0)
    ax1, ax2 = fig.subplots(2, 1, height_ratios=[1.2, 1])
    d = tr.numpy("SELECT cycles, lock_wait FROM events WHERE ev = 'kmap'")
    if len(d["cycles"]):
        _cdf(ax1, [("kmap latency", d["cycles"], series_style(0)),
                   ("its kmap_lock wait", d["lock_wait"], series_style(1))])
        ax1.set_xlabel("latency (cycles)")
        ax1.set_ylabel("fraction of kmaps <= x")
    else:
        ax1.text(0.5, 0.5, "no kmaps in this run", transform=ax1.transAxes, ha="center", va="center")
        ax1.set_axis_off()
    title(ax1, "kmap latency, request to return, and the kmap_lock wait in it")
    f = tr.numpy("SELECT t, scope, stall FROM events WHERE ev = 'flush' ORDER BY seq")
    _stalls(ax2, np.asarray(f["t"], dtype=np.int64), np.asarray(f["scope"]),
            np.asarray(f["stall"], dtype=np.int64), bins)
    title(fig, f"Latency: {run_title(a)}")
    legend(fig)
    return fig


def _stalls(ax, t: np.ndarray, scope: np.ndarray, stall: np.ndarray, bins: Bins) -> None:
    """The initiator stall of each flush against time, by scope: each flush a point (up to EXACT of
    them), else the mean and range per bin."""
    title(ax, "shootdown latency: the initiator's stall of each flush")
    if not t.size:
        ax.text(0.5, 0.5, "no flushes in this run", transform=ax.transAxes, ha="center", va="center")
        ax.set_axis_off()
        return
    for i, s in enumerate(sorted(set(scope.tolist()))):
        sel = scope == s
        ts, st = t[sel], stall[sel]
        vals = np.unique(st)
        note = (f"{fmt(st.size)}, all {fmt(int(vals[0]))} cycles" if vals.size == 1
                else f"{fmt(st.size)}, median {fmt(int(np.sort(st)[(st.size - 1) // 2]))} cycles")
        colour = SCOPE_COLOURS.get(s, "grey")
        if ts.size <= EXACT:
            ax.plot(ts / bins.per, st, linestyle="none", marker=MARKERS[i % len(MARKERS)], markersize=2.5,
                    color=colour, label=f"{s} flushes ({note})")
            continue
        b = ts // bins.width
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        at = b[starts] * bins.width / bins.per
        n = np.diff(np.r_[starts, st.size])
        ax.fill_between(at, np.minimum.reduceat(st, starts), np.maximum.reduceat(st, starts), step="post",
                        color=colour, alpha=0.3, linewidth=0)
        ax.step(at, np.add.reduceat(st, starts) / n, where="post", color=colour, linewidth=0.8,
                label=f"{s} flushes ({note}): mean and range per {bins.text}")
    scale(ax, "y", [int(stall.min()), int(stall.max())])
    if ax.get_yscale() == "linear":
        ax.set_ylim(0, int(stall.max()) * 1.15 or 1)
    ax.set_ylabel("initiator stall\nper flush (cycles)")
    time_axis(ax, bins)


def hit_rate_bins(tr: Trace, a: dict[str, Any]) -> Bins:
    """The hit-rate figure's default bins: round, 8 to 100 of them, those into which the flushes fall most
    evenly (a bin with one flush more has a lower hit rate on every CPU: a stripe of the binning)."""
    t = tr.numpy("SELECT t FROM events WHERE ev = 'flush'")["t"]
    return even_bins(a["t_end"], t)


def hit_rate_figure(tr: Trace, a: dict[str, Any], bins: Bins | None = None):
    from matplotlib.ticker import PercentFormatter

    bins = bins or hit_rate_bins(tr, a)
    ncpu = a["run"]["cpus"]
    hr = series.hit_rate(tr, ncpu, a["t_end"], bins.width)
    rate = hr["rate"]
    if ncpu <= 8:
        fig = figure(2.6 + legend_height([f"CPU {c} (100.00%)" for c in range(ncpu)]))
        ax = fig.add_subplot()
        x = (hr["start"] + bins.width / 2) / bins.per
        for c in range(ncpu):
            pc = a["per_cpu"][c]["hit_rate"]
            ax.plot(x, rate[c], linewidth=0.8, markersize=2.5,
                    label=f"CPU {c}" + (f" ({pc:.2%})" if pc is not None else ""), **series_style(c))
        finite = rate[np.isfinite(rate)]
        lo = float(finite.min()) if finite.size else 0.0
        ax.set_ylim(max(0.0, lo - 0.05 * (1 - lo) - 0.01), 1.005)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylabel("TLB hit rate (%)")
        legend(fig, title_="CPU (hit rate over the run)")
    else:
        fig = figure(3.4)
        ax = fig.add_subplot()
        ax.grid(False)
        from matplotlib import colormaps

        cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")  # grey: no TLB lookup in the bin
        edges = np.r_[hr["start"], a["t_end"] + 1] / bins.per  # the last bin drawn as far as the run went
        # colours from 100% down to the lowest bin's rate in 5% steps: a difference of a few tenths of a
        # percent does not get the whole colour range
        finite = rate[np.isfinite(rate)]
        low = math.floor(20 * float(finite.min())) / 20 if finite.size else 0.0
        mesh = ax.pcolormesh(edges, np.arange(ncpu + 1) - 0.5, np.ma.masked_invalid(rate), cmap=cmap,
                             vmin=min(low, 0.95), vmax=1.0, shading="flat", edgecolors="none", antialiased=False)
        ax.set_ylim(ncpu - 0.5, -0.5)
        fig.colorbar(mesh, ax=ax, label="TLB hit rate (%)", format=PercentFormatter(1.0))
        ax.set_ylabel("CPU")
    time_axis(ax, bins)
    title(ax, f"Per-CPU TLB hit rate per {bins.text}: {run_title(a)}")
    return fig


def analysis_figures(tr: Trace, a: dict[str, Any], bins: Bins | None = None) -> dict[str, Any]:
    """The four figures of ``smpsim analyze --plot`` by name; ``bins`` (default: round, about 100) for the
    time-binned ones."""
    tb = bins or auto_bins(a["t_end"])
    with styled():
        return {"ipi_heatmap": ipi_heatmap_figure(a), "timeline": timeline_figure(tr, a, tb),
                "latency_cdf": latency_figure(tr, a, tb), "hit_rate": hit_rate_figure(tr, a, bins)}


def write_figures(tr: Trace, a: dict[str, Any], out_dir: Path, formats: Iterable[str] = ("png",),
                  bins: Bins | None = None) -> tuple[dict[str, Any], list[Path]]:
    """The figures of ``analysis_figures`` in out_dir (created), in each format: (figures, paths)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = analysis_figures(tr, a, bins)
    return figs, [p for name, fig in figs.items() for p in save(fig, out_dir, name, formats)]


# ------------------------------------------------------------------------------------------- compare

def compare_figure(labels: list[str], groups: list[str], cycles: list[Any], varying: Iterable[str] = ()):
    """kmap latency CDF, one line per compared run, each its own colour, marker and line style, each
    named once in the legend."""
    names = [f"{label} ({g})" if g else label for label, g in zip(labels, groups)]
    if len(set(names)) < len(names):
        names = [f"{n} #{i + 1}" for i, n in enumerate(names)]
    varying = list(varying)
    with styled():
        fig = figure(2.6 + legend_height([f"{n} (median 1,000,000)" for n in names]))
        ax = fig.add_subplot()
        _cdf(ax, [(n, c, series_style(i)) for i, (n, c) in enumerate(zip(names, cycles))])
        ax.set_xlabel("kmap latency: request to return (cycles)")
        ax.set_ylabel("fraction of kmaps <= x")
        title(ax, f"kmap latency CDF of {len(labels)} runs"
                  + (f" differing in {', '.join(varying)}" if varying else ""))
        legend(fig, title_="run")
    return fig


# ------------------------------------------------------------------------------------------- sweep

def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def sweep_layout(rows: list[dict[str, Any]], params: list[str], x: str | None = None,
                 by: Iterable[str] = ()) -> tuple[str, list[str], bool]:
    """(the x key, the keys that make one line each, whether x is categorical). x: given, else the first
    numeric swept key, else the first swept key not in ``by``. A key that goes with x (zipped with it)
    makes no lines of its own. ValueError when x is not a swept key."""
    if not params:
        raise ValueError("the sweep has no swept keys: nothing to draw against")
    ok = [r for r in rows if r["status"] == "ok"]
    numeric = [k for k in params if ok and all(_number(r[k]) for r in ok)]
    by = list(by)
    if x is None:
        x = numeric[0] if numeric else next((k for k in params if k not in by), params[0])
    elif x not in params:
        raise ValueError(f"--x {x}: not a swept key of this sweep; its swept keys are {', '.join(params)}")
    xs = {repr(r[x]) for r in ok}
    keys = [k for k in params if k != x and len({(repr(r[x]), repr(r[k])) for r in ok}) > len(xs)]
    return x, keys, x not in numeric


def _ci(r: dict[str, Any], key: str) -> tuple[float, float] | None:
    lo, hi = r.get(f"{key}_ci95_lo"), r.get(f"{key}_ci95_hi")
    return (lo, hi) if _number(lo) and _number(hi) else None


def _per(keys: list[str], cats: list[Any] | None) -> str:
    """What the series of a sweep figure are: ", a line per policy.name" (markers over categories)."""
    return f", {'a line' if cats is None else 'markers'} per {', '.join(keys)}" if keys else ""


def _seeds_note(ok: list[dict[str, Any]]) -> str:
    seeds = sorted({int(r["seeds"]) for r in ok if _number(r.get("seeds"))})
    if not seeds or seeds[-1] <= 1:
        return ""
    n = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    return f"; mean of {n} seeds, bars: 95% CI"


def _panel(ax, key: str, series_rows: dict[str, list[dict[str, Any]]], x: str, cats: list[Any] | None) -> None:
    """One metric against x: a line per series (markers only over categories, dodged apart), with error
    bars where the rows carry a 95% confidence interval."""
    m = BY_KEY[key]
    shown: list[Any] = []
    k = len(series_rows)
    for i, (label, rs) in enumerate(series_rows.items()):
        rs = [r for r in rs if r.get(key) is not None]
        style = series_style(i)
        if cats is not None:
            dodge = (i - (k - 1) / 2) * min(0.6 / max(k, 1), 0.15)
            xs = [cats.index(r[x]) + dodge for r in rs]
            style["linestyle"] = "none"
        else:
            xs = [r[x] for r in rs]
        ys = [r[key] for r in rs]
        cis = [_ci(r, key) for r in rs]
        shown += ys + [b for c in cis if c for b in c]
        if any(cis):
            err = np.array([[y - c[0], c[1] - y] if c else [np.nan, np.nan] for y, c in zip(ys, cis)]).T
            ax.errorbar(xs, ys, yerr=err, label=label, elinewidth=0.8, **style)
        else:
            ax.plot(xs, ys, label=label, **style)
    scale(ax, "y", shown, percent=m.kind == "fraction")
    if cats is not None:
        ax.set_xticks(range(len(cats)), [str(c) for c in cats], rotation=30 if len(cats) > 3 else 0,
                      ha="right" if len(cats) > 3 else "center")
        ax.set_xlim(-0.5, len(cats) - 0.5)
        ax.xaxis.grid(False)
    else:
        allx = [r[x] for rs in series_rows.values() for r in rs]
        scale(ax, "x", allx)
        ticks_at(ax, "x", allx)


def _sweep_series(rows: list[dict[str, Any]], params: list[str], x: str | None, by: Iterable[str]):
    x, keys, categorical = sweep_layout(rows, params, x, by)
    ok = [r for r in rows if r["status"] == "ok"]
    out: dict[str, list[dict[str, Any]]] = {}
    for r in ok:
        out.setdefault(describe({k: r[k] for k in keys}), []).append(r)
    if not categorical:
        out = {label: sorted(rs, key=lambda r: r[x]) for label, rs in out.items()}
    cats = list(dict.fromkeys(r[x] for r in ok)) if categorical else None
    return x, keys, out, cats, ok


def sweep_figure(rows: list[dict[str, Any]], params: list[str], key: str, x: str | None = None,
                 by: Iterable[str] = ()):
    """One headline metric against the swept key x: a line per combination of the other swept keys."""
    x, keys, lines, cats, ok = _sweep_series(rows, params, x, by)
    m = BY_KEY[key]
    with styled():
        fig = figure(2.5 + (legend_height(list(lines)) if len(lines) > 1 else 0))
        ax = fig.add_subplot()
        _panel(ax, key, lines, x, cats)
        ax.set_xlabel(x)
        ax.set_ylabel(m.axis_label)
        title(ax, f"{m.label} against {x}" + _per(keys, cats) + _seeds_note(ok))
        if len(lines) > 1:
            legend(fig, title_=", ".join(keys))
    return fig


def headline_figure(rows: list[dict[str, Any]], params: list[str], x: str | None = None, by: Iterable[str] = ()):
    """Every metric of SWEEP_METRICS against x, a panel each, one legend."""
    x, keys, lines, cats, ok = _sweep_series(rows, params, x, by)
    with styled():
        fig = figure(6.0 + (legend_height(list(lines)) if len(lines) > 1 else 0))
        axes = fig.subplots(3, 2, sharex=True).ravel()
        for ax, key in zip(axes, SWEEP_METRICS):
            _panel(ax, key, lines, x, cats)
            title(ax, BY_KEY[key].axis_label, width=22)
        for ax in axes[-2:]:
            ax.set_xlabel(x)
        title(fig, f"The headline metrics against {x}" + _per(keys, cats) + _seeds_note(ok))
        if len(lines) > 1:
            legend(fig, title_=", ".join(keys))
    return fig


def sweep_figures(rows: list[dict[str, Any]], params: list[str], x: str | None = None,
                  by: Iterable[str] = ()) -> dict[str, Any]:
    """``headline`` and a figure per metric of SWEEP_METRICS, named by its results.csv column."""
    return {"headline": headline_figure(rows, params, x, by),
            **{key: sweep_figure(rows, params, key, x, by) for key in SWEEP_METRICS}}


def write_sweep_figures(rows: list[dict[str, Any]], params: list[str], out_dir: Path,
                        formats: Iterable[str] = ("png",), x: str | None = None, by: Iterable[str] = ()) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [p for name, fig in sweep_figures(rows, params, x, by).items() for p in save(fig, out_dir, name, formats)]


# ------------------------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.warn { background: #fff3cd; padding: 0.6em; border: 1px solid #e0c060; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
"""


def _table(headers: list[str] | None, rows: list[list[Any]]) -> str:
    out = ["<table>"]
    if headers:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_html(a: dict[str, Any], figures: dict[str, Any], path: Path,
               sections: list[tuple[str, list[str] | None, list[list[Any]]]]) -> Path:
    """One HTML file: the report's sections as tables (as the terminal report has them: title, headers or
    None, rows), the figures (matplotlib Figures by name) embedded as PNG data: URIs, and the full JSON
    analysis."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>smpsim analysis: {html.escape(run_title(a))}</title><style>{_CSS}</style></head><body>",
             f"<h1>smpsim analysis: {html.escape(run_title(a))}</h1>"]
    if a["run"].get("truncated"):
        parts.append(f"<p class=\"warn\">Truncated run ({html.escape(str(a['run'].get('truncation')))}): "
                     "the figures cover the events recorded up to where the trace ends.</p>")
    captions = {"ipi_heatmap": "IPIs by sending and receiving CPU",
                "timeline": "Flushes, IPIs and slots in use over virtual time",
                "latency_cdf": "Shootdown latency (initiator stall) and kmap latency",
                "hit_rate": "Per-CPU TLB hit rate over time"}
    for title, headers, rows in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(_table(headers, rows))
    for name in FIGURES:
        if name in figures:
            data = base64.b64encode(png_bytes(figures[name])).decode("ascii")
            parts.append(f"<h2>{html.escape(captions[name])}</h2>"
                         f"<img alt=\"{html.escape(captions[name])}\" src=\"data:image/png;base64,{data}\">")
    parts.append("<h2>Full analysis (smpsim analyze --json)</h2>")
    parts.append(f"<pre>{html.escape(json.dumps(a, indent=1))}</pre>")
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
