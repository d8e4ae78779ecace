"""PNG figures of a run (matplotlib, Agg: no display needed) and one self-contained HTML report.

Figures (``write_figures``):
- ``ipi_heatmap.png``  IPIs by sending CPU (rows) and receiving CPU (columns)
- ``timeline.png``     flushes per time bin by scope, IPIs per bin (useless ones apart), and the slots in use
- ``latency_cdf.png``  kmap latency CDF, and the initiator stall of the flushes (a CDF per scope, or a bar
                       per distinct stall when there are few)
- ``hit_rate.png``     each CPU's TLB hit rate per time bin

``write_html`` embeds them as base64 data: URIs next to the report's tables; the page loads nothing from
anywhere (no scripts, fonts or stylesheets outside the file).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from smpsim.analysis import series
from smpsim.analysis.load import Trace
from smpsim.metrics import fmt as _fmt

FIGURES = ("ipi_heatmap", "timeline", "latency_cdf", "hit_rate")
DPI = 110
_SCOPE_COLOURS = {"all": "#d62728", "range": "#ff7f0e", "page": "#1f77b4", "local": "#2ca02c"}
# PNG metadata: no "Software: matplotlib <url>" chunk, so the files are deterministic and carry no URL.
_PNG_META = {"Software": None}
_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.005, 1.0), "borderaxespad": 0.0}


def _figure(w: float, h: float):
    from matplotlib.figure import Figure  # Agg canvas by default; pyplot (and its global state) not used

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def _cycles_axis(ax, label: str = "virtual time (cycles)") -> None:
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel(label)


def _title(a: dict[str, Any]) -> str:
    r = a["run"]
    return (f"{Path(r['run']).name}: {r.get('policy')}, {r.get('workload')}, {r['cpus']} CPUs"
            + (" (truncated)" if r.get("truncated") else ""))


def ipi_heatmap(a: dict[str, Any], path: Path) -> Path:
    m = np.array(a["ipis"]["matrix"], dtype=np.int64)
    n = m.shape[0]
    fig = _figure(max(5.0, min(11.0, 3 + 0.35 * n)), max(4.2, min(10.0, 2.5 + 0.33 * n)))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="magma_r", interpolation="nearest", vmin=0, vmax=max(1, int(m.max())))
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(im, ax=ax, label="IPIs", shrink=0.85, ticks=MaxNLocator(integer=True))
    ax.set_xlabel("receiving CPU")
    ax.set_ylabel("sending CPU (flush initiator)")
    ip = a["ipis"]
    ax.set_title(f"IPIs by sender and receiver: {_fmt(ip['sent'])} in all, {_fmt(ip['useless'])} useless\n{_title(a)}",
                 fontsize=10)
    step = max(1, n // 16)
    ax.set_xticks(range(0, n, step))
    ax.set_yticks(range(0, n, step))
    if n <= 16:
        top = max(1, int(m.max()))
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, f"{_fmt(m[i, j])}", ha="center", va="center", fontsize=8,
                            color="white" if m[i, j] > top * 0.6 else "black")
    if not m.any():
        ax.text(0.5, 0.5, "no IPIs in this run", transform=ax.transAxes, ha="center", va="center")
    fig.savefig(path, metadata=_PNG_META)
    return path


def timeline(tr: Trace, a: dict[str, Any], path: Path, bins: int = 200) -> Path:
    t_end = a["t_end"]
    tl = series.timeline(tr, t_end, bins)
    from smpsim.analysis.metrics import occupancy

    t, used = occupancy(tr)
    fig = _figure(11, 7.5)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True, height_ratios=[1, 1, 1.3])
    x, w = tl["start"], tl["width"]
    bottom = np.zeros(bins)
    for scope, k in tl["flushes"].items():
        ax1.bar(x, k, width=w, align="edge", bottom=bottom, color=_SCOPE_COLOURS.get(scope, "grey"),
                label=f"{scope} ({_fmt(int(k.sum()))})", linewidth=0)
        bottom += k
    ax1.set_ylabel(f"flushes / {_fmt(w)} cycles")
    ax1.set_title(f"Flushes, IPIs and ring occupancy over time: {_title(a)}", fontsize=10)
    if tl["flushes"]:
        ax1.legend(title="flush scope", fontsize=8, **_OUTSIDE)
    else:
        ax1.text(0.5, 0.5, "no flushes", transform=ax1.transAxes, ha="center", va="center")
    useful = tl["ipis"] - tl["useless_ipis"]
    ax2.bar(x, useful, width=w, align="edge", color="#9467bd", linewidth=0,
            label=f"dropped translations ({_fmt(int(useful.sum()))})")
    ax2.bar(x, tl["useless_ipis"], width=w, align="edge", bottom=useful, color="#c7c7c7", linewidth=0,
            label=f"useless: dropped none ({_fmt(int(tl['useless_ipis'].sum()))})")
    ax2.set_ylabel(f"IPIs / {_fmt(w)} cycles")
    ax2.legend(fontsize=8, **_OUTSIDE)
    cap = a["ring"]["capacity"]
    kind = "pkmap slots" if a["ring"]["slots"] == "pkmap" else "kmap_local slots (all CPUs)"
    if used.size <= 5000:
        ax3.step(np.r_[0, t, max(t_end, int(t[-1]) if t.size else 0)], np.r_[0, used, used[-1] if used.size else 0],
                 where="post", color="#1f77b4", linewidth=1, label="in use")
    else:
        env = series.envelope(t, used, t_end)
        ax3.fill_between(env["start"], env["min"], env["max"], step="post", color="#1f77b4", alpha=0.35,
                         linewidth=0, label="in use (range per bin)")
        ax3.step(env["start"], env["last"], where="post", color="#1f77b4", linewidth=0.8)
    if cap:
        ax3.axhline(cap, color="black", linestyle="--", linewidth=0.8, label=f"capacity ({_fmt(cap)})")
    wraps = np.flatnonzero(tl["wraps"])
    if wraps.size and int(tl["wraps"].sum()) <= 60:  # more would hide the occupancy
        for b in wraps:
            ax3.axvline(x[b], color=_SCOPE_COLOURS["all"], alpha=0.25, linewidth=0.6)
        ax3.plot([], [], color=_SCOPE_COLOURS["all"], alpha=0.5, label="ring wrap")
    ax3.set_ylabel(f"{kind} in use")
    ax3.set_ylim(0, max(cap or 1, int(used.max()) if used.size else 1) * 1.08)
    ax3.legend(fontsize=8, **_OUTSIDE)
    _cycles_axis(ax3)
    ax3.set_xlim(0, max(1, t_end))
    fig.savefig(path, metadata=_PNG_META)
    return path


def _cdf(ax, data: list[tuple[str, Any]], colours: list[Any]) -> None:
    """Empirical CDFs as steps, one per (label, values); log x when the values span more than 50x. A run
    whose values are all equal is a single step: its label says so."""
    allv = np.concatenate([np.asarray(v, dtype=np.int64) for _, v in data]) if data else np.array([])
    lo = int(allv.min()) if allv.size else 0
    hi = max(1, int(allv.max())) if allv.size else 1
    positive = allv[allv > 0]
    log = bool(positive.size) and positive.max() > 50 * positive.min()
    x0, x1 = (max(1, lo) / 1.5, hi * 1.5) if log else (lo - 0.05 * (hi - lo) - 1, hi * 1.05 + 1)
    for (label, v), colour in zip(data, colours):
        v = np.sort(np.asarray(v, dtype=np.int64))
        if not v.size:
            continue
        vals, counts = np.unique(v, return_counts=True)
        note = f"all {_fmt(v.size)} = {_fmt(int(vals[0]))}" if vals.size == 1 else f"{_fmt(v.size)}, median {_fmt(int(v[(v.size - 1) // 2]))}"
        ax.step(np.r_[x0, vals, x1], np.r_[0, np.cumsum(counts) / v.size, 1.0], where="post", color=colour,
                linewidth=1.5, label=f"{label} ({note})")
    if log:
        ax.set_xscale("log")
    ax.set_xlim(x0, x1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)


FEW = 8  # at most this many distinct values: bars per value, not a CDF (a CDF of one value is one step)


def _distribution(ax, data: list[tuple[str, Any, Any]], what: str, unit: str = "cycles") -> None:
    """The distribution of each (label, values, colour): a CDF when the values take many distinct values,
    else a bar per (label, value) with its count."""
    values = [np.asarray(v, dtype=np.int64) for _, v, _ in data]
    if not any(v.size for v in values):
        ax.text(0.5, 0.5, f"no {what} in this run", transform=ax.transAxes, ha="center", va="center")
        ax.set_axis_off()
        return
    if np.unique(np.concatenate(values)).size > FEW:
        _cdf(ax, [(label, v) for (label, _, _), v in zip(data, values)], [c for _, _, c in data])
        ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel(f"{unit}")
        ax.set_ylabel(f"fraction of {what} <= x")
        return
    bars = [(label, int(x), int((v == x).sum()), c) for (label, _, c), v in zip(data, values) for x in np.unique(v)]
    y = np.arange(len(bars))
    ax.barh(y, [n for _, _, n, _ in bars], color=[c for *_, c in bars], height=0.6)
    ax.set_yticks(y, [f"{label}: {_fmt(x)} {unit}" for label, x, _, _ in bars])
    ax.invert_yaxis()
    for yi, (_, _, n, _) in zip(y, bars):
        ax.text(n, yi, f" {_fmt(n)}", va="center", fontsize=8)
    ax.set_xlim(0, max(n for _, _, n, _ in bars) * 1.2)
    ax.set_xlabel(what)


def latency_figure(tr: Trace, a: dict[str, Any]):
    """kmap latency (left) and the initiator stall of the flushes by scope (right)."""
    fig = _figure(12, 4.8)
    ax1, ax2 = fig.subplots(1, 2)
    _distribution(ax1, [("kmaps", kmap_cycles(tr), "#1f77b4")], "kmaps")
    ax1.set_title("kmap latency: request to return (cycles)", fontsize=10)
    d = tr.numpy("SELECT scope, stall FROM events WHERE ev = 'flush'")
    scope, stall = d["scope"], np.asarray(d["stall"], dtype=np.int64)
    _distribution(ax2, [(s, stall[scope == s], _SCOPE_COLOURS.get(s, "grey")) for s in sorted(set(scope.tolist()))],
                  "flushes")
    ax2.set_title("shootdown latency: initiator stall per flush, by scope (cycles)", fontsize=10)
    fig.suptitle(f"Latency: {_title(a)}", fontsize=10)
    return fig


def kmap_cycles(tr: Trace) -> np.ndarray:
    return np.asarray(tr.numpy("SELECT cycles FROM events WHERE ev = 'kmap'")["cycles"], dtype=np.int64)


def latency_cdf(tr: Trace, a: dict[str, Any], path: Path) -> Path:
    return _save(latency_figure(tr, a), path)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, metadata=_PNG_META)
    return path


def compare_figure(labels: list[str], groups: list[str], cycles: list[Any]):
    """kmap latency CDF, one line per compared run: a colour per label, a line style per group."""
    fig = _figure(10, 5)
    ax = fig.add_subplot()
    names, kinds = list(dict.fromkeys(labels)), list(dict.fromkeys(groups))
    cmap = _cmap(len(names))
    styles = ("-", "--", ":", "-.")
    full = [f"{label} ({g})" if g else label for label, g in zip(labels, groups)]
    _cdf(ax, list(zip(full, cycles)), [cmap(names.index(label) % cmap.N) for label in labels])
    for line, g in zip(ax.get_lines(), groups):
        line.set_linestyle(styles[kinds.index(g) % len(styles)])
    ax.legend(fontsize=8, title="run (kmaps)", **_OUTSIDE)
    ax.set_xlabel("kmap latency: request to return (cycles)")
    ax.set_ylabel("fraction of kmaps with latency <= x")
    ax.set_title(f"kmap latency CDF of {len(labels)} runs", fontsize=10)
    return fig


def kmap_latency_cdf(labels: list[str], groups: list[str], cycles: list[Any], path: Path) -> Path:
    return _save(compare_figure(labels, groups, cycles), path)


def sweep_figure(rows: list[dict[str, Any]], params: list[str], by: list[str]):
    """Initiator stall per flush and per 1000 kmaps against the swept key: a line per combination of the
    other swept keys when a swept key is a number (x: its values), else bars per point grouped by ``by``."""
    from smpsim.metrics import BY_KEY, describe

    ok = [r for r in rows if r["status"] == "ok"]
    numeric = [k for k in params if k not in by and all(isinstance(r[k], (int, float)) and not isinstance(r[k], bool)
                                                        for r in ok)]
    fig = _figure(12, 4.8)
    axes = fig.subplots(1, 2)
    metrics = ("stall_per_flush", "stall_per_1000_kmaps")
    if numeric:
        xkey = numeric[0]
        # keys that go with x (a zip sweep pairs them) make no series of their own
        rest = [k for k in params if k != xkey and len({(r[xkey], r[k]) for r in ok}) > len({r[xkey] for r in ok})]
        series: dict[str, list[dict[str, Any]]] = {}
        for r in ok:
            series.setdefault(describe({k: r[k] for k in rest}), []).append(r)
        cmap = _cmap(len(series))
        for ax, key in zip(axes, metrics):
            for i, (label, rs) in enumerate(series.items()):
                rs = sorted(rs, key=lambda r: r[xkey])
                ax.plot([r[xkey] for r in rs], [r[key] for r in rs], marker="o", color=cmap(i % cmap.N),
                        label=label or key)
            xs = [r[xkey] for r in ok]
            if min(xs) > 0 and max(xs) >= 8 * min(xs):
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted(set(xs)), [f"{_fmt(x)}" for x in sorted(set(xs))])
            ax.set_xlabel(xkey)
    else:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in ok:
            groups.setdefault(describe({k: r[k] for k in by}), []).append(r)
        cats = list(dict.fromkeys(describe({k: r[k] for k in params if k not in by}) for r in ok))
        cmap = _cmap(len(groups))
        width = 0.8 / max(1, len(groups))
        for ax, key in zip(axes, metrics):
            for i, (label, rs) in enumerate(groups.items()):
                at = {describe({k: r[k] for k in params if k not in by}): r[key] for r in rs}
                label += "" if any(at.values()) else " (none)"
                ax.bar(np.arange(len(cats)) + (i - (len(groups) - 1) / 2) * width,
                       [at.get(c) or 0 for c in cats], width=width, color=cmap(i % cmap.N), label=label or key)
            ax.set_xticks(np.arange(len(cats)), cats, rotation=20 if len(cats) > 4 else 0)
            ax.set_xlabel(", ".join(k for k in params if k not in by) or "point")
    for ax, key in zip(axes, metrics):
        vals = [r[key] for r in ok if r[key]]
        if vals and max(vals) > 50 * min(vals):
            ax.set_yscale("log")
        ax.set_ylabel(f"{BY_KEY[key].label} (cycles)")
        ax.set_title(BY_KEY[key].label, fontsize=10)
        ax.grid(alpha=0.3)
    if len(axes[1].get_legend_handles_labels()[0]) > 1:
        axes[1].legend(fontsize=8, title=", ".join(by) or None, **_OUTSIDE)
    fig.suptitle("Initiator stall across the sweep", fontsize=10)
    return fig


def sweep_stall(rows: list[dict[str, Any]], params: list[str], by: list[str], path: Path) -> Path:
    return _save(sweep_figure(rows, params, by), path)


def hit_rate(tr: Trace, a: dict[str, Any], path: Path, bins: int = 100) -> Path:
    return _save(hit_rate_figure(tr, a, bins), path)


def hit_rate_figure(tr: Trace, a: dict[str, Any], bins: int = 100):
    ncpu = a["run"]["cpus"]
    hr = series.hit_rate(tr, ncpu, a["t_end"], bins)
    fig = _figure(11, 5)
    ax = fig.add_subplot()
    x = hr["start"] + hr["width"] / 2
    rate = hr["rate"]
    if ncpu <= 16:
        cmap = _cmap(ncpu)
        for c in range(ncpu):
            pc = a["per_cpu"][c]["hit_rate"]
            ax.plot(x, rate[c], color=cmap(c), linewidth=1, marker=".", markersize=3,
                    label=f"CPU {c}" + (f" ({pc:.2%})" if pc is not None else ""))
        ax.legend(fontsize=7, ncol=2 if ncpu > 8 else 1, title="overall hit rate", **_OUTSIDE)
        finite = rate[np.isfinite(rate)]
        lo = float(finite.min()) if finite.size else 0.0
        ax.set_ylim(max(0.0, lo - 0.05 * (1 - lo) - 0.01), 1.005)
        ax.set_ylabel("TLB hit rate")
        _cycles_axis(ax)
    else:
        im = ax.imshow(rate, aspect="auto", interpolation="nearest", cmap="viridis",
                       extent=(0, hr["width"] * bins, ncpu - 0.5, -0.5))
        fig.colorbar(im, ax=ax, label="TLB hit rate")
        ax.set_ylabel("CPU")
        _cycles_axis(ax)
    ax.set_title(f"Per-CPU TLB hit rate per {_fmt(hr['width'])} cycles: {_title(a)}", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def _cmap(n: int):
    from matplotlib import colormaps

    return colormaps["tab10" if n <= 10 else "tab20"]


def write_figures(tr: Trace, a: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """The four PNGs in out_dir (created); returns {name: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "ipi_heatmap": ipi_heatmap(a, out_dir / "ipi_heatmap.png"),
        "timeline": timeline(tr, a, out_dir / "timeline.png"),
        "latency_cdf": latency_cdf(tr, a, out_dir / "latency_cdf.png"),
        "hit_rate": hit_rate(tr, a, out_dir / "hit_rate.png"),
    }


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
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_html(a: dict[str, Any], figures: dict[str, Path], path: Path,
               sections: list[tuple[str, list[str] | None, list[list[Any]]]]) -> Path:
    """One HTML file: the report's sections as tables (as the terminal report has them: title, headers or
    None, rows), the figures embedded as data: URIs, and the full JSON analysis."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>smpsim analysis: {html.escape(_title(a))}</title><style>{_CSS}</style></head><body>",
             f"<h1>smpsim analysis: {html.escape(_title(a))}</h1>"]
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
            data = base64.b64encode(Path(figures[name]).read_bytes()).decode("ascii")
            parts.append(f"<h2>{html.escape(captions[name])}</h2>"
                         f"<img alt=\"{html.escape(captions[name])}\" src=\"data:image/png;base64,{data}\">")
    parts.append("<h2>Full analysis (smpsim analyze --json)</h2>")
    parts.append(f"<pre>{html.escape(json.dumps(a, indent=1))}</pre>")
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
