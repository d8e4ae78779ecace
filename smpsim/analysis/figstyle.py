"""How every figure looks, in one place: the size and lettering (legible when printed one column wide,
3.5 in), each series' colour, marker and line style, axis labels with units, when an axis is logarithmic,
legends outside the data, titles, round time bins, and saving as PNG, SVG or PDF.

The figure modules (smpsim.analysis.plots) build matplotlib Figures inside ``styled`` (the rc settings
below) and never pick a colour, size or scale of their own.
"""

from __future__ import annotations

import contextlib
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from smpsim.config import CYCLES_PER_US
from smpsim.headline import fmt

COLUMN = 3.5      # inches: one column of a two-column paper; every figure is this wide
MIN_FONT = 7      # points: the smallest lettering on any figure (tests check it)
DPI = 200         # of PNGs: 700 pixels across a column
FORMATS = ("png", "svg", "pdf")
LOG_SPAN = 100    # an axis whose positive values span more than this factor is logarithmic

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "figure.titlesize": 8,
    "xtick.labelsize": MIN_FONT, "ytick.labelsize": MIN_FONT, "legend.fontsize": MIN_FONT,
    "legend.title_fontsize": MIN_FONT, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5,
    "lines.linewidth": 1.2, "lines.markersize": 4, "errorbar.capsize": 2, "legend.frameon": False,
    "svg.fonttype": "none",     # text stays text in an SVG: searchable, editable
    "svg.hashsalt": "smpsim",   # the same ids in every SVG of the same figure
    "pdf.fonttype": 42,         # TrueType, not Type 3 fonts: what publishers' PDF checks accept
    "ps.fonttype": 42,
}
# No "Software"/"Creator" URL and no date in the files: the same figure gives the same bytes.
_METADATA = {"png": {"Software": None}, "svg": {"Creator": None, "Date": None},
             "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}

# A series' style: colour, marker and line style cycle with coprime periods (10, 7, 4), so the first 140
# series all differ in the triple, and the first 70 in colour and marker alone.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")
SCOPE_COLOURS = {"all": "#d62728", "range": "#ff7f0e", "page": "#1f77b4", "local": "#2ca02c"}


def series_style(i: int) -> dict[str, str]:
    """The i-th series' colour, marker and line style."""
    return {"color": COLOURS[i % len(COLOURS)], "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[i % len(LINESTYLES)]}


@contextlib.contextmanager
def styled() -> Iterator[None]:
    """The rc settings every figure is built and saved under."""
    import matplotlib

    with matplotlib.rc_context(RC):
        yield


def figure(height: float, width: float = COLUMN):
    """A Figure (Agg canvas; pyplot and its global state are not used), constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # drawable, so what is drawn can be measured (tests read the text extents)
    return fig


def title(ax_or_fig: Any, text: str, width: int | None = None) -> None:
    """A title wrapped to fit a column (axes title, or the figure's when given a Figure)."""
    is_fig = hasattr(ax_or_fig, "suptitle")
    wrapped = "\n".join(textwrap.wrap(text, width or (50 if is_fig else 44), break_on_hyphens=False))
    if is_fig:
        ax_or_fig.suptitle(wrapped)
    else:
        ax_or_fig.set_title(wrapped)


def wants_log(values: Iterable[Any]) -> bool:
    """Positive values spanning more than LOG_SPAN times."""
    pos = [float(v) for v in values if v is not None and not _nan(v) and v > 0]
    return len(pos) >= 2 and max(pos) > LOG_SPAN * min(pos)


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def scale(ax: Any, axis: str, values: Iterable[Any], percent: bool = False) -> None:
    """Logarithmic ``axis`` ("x" or "y") when the values span more than LOG_SPAN times (symmetric-log
    with a linear part up to the smallest positive value when some are 0, so those stay on the figure);
    else linear with thousands separators (or percentages of 1.0)."""
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    vals = [v for v in values if v is not None and not _nan(v)]
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    target = ax.xaxis if axis == "x" else ax.yaxis
    if wants_log(vals):
        if any(v <= 0 for v in vals):  # 0 a decade below the smallest positive value's power of ten
            setter("symlog", linthresh=10 ** math.floor(math.log10(min(v for v in vals if v > 0))), linscale=1)
        else:
            setter("log")
        if percent:
            target.set_major_formatter(PercentFormatter(1.0, decimals=None))
        return
    target.set_major_formatter(PercentFormatter(1.0, decimals=None) if percent
                               else FuncFormatter(lambda v, _pos: fmt(round(v, 6))))


def legend(fig: Any, handles: list[Any] | None = None, labels: list[str] | None = None,
           title_: str | None = None, where: str = "lower center") -> Any:
    """One legend for the figure, outside every axes (below them by default), in as many columns as fit
    a column's width."""
    if handles is None:
        handles, labels = [], []
        seen = set()
        for ax in fig.axes:
            for h, label in zip(*ax.get_legend_handles_labels()):
                if label not in seen and not label.startswith("_"):
                    seen.add(label)
                    handles.append(h)
                    labels.append(label)
    if not handles:
        return None
    return fig.legend(handles, labels, loc=f"outside {where}", ncols=legend_columns(labels), title=title_)


def legend_columns(labels: list[str]) -> int:
    """As many columns as a column's width holds for labels this long."""
    longest = max([len(x) for x in labels] + [1])
    return max(1, min(len(labels), 3 if longest <= 16 else 2 if longest <= 30 else 1))


def legend_height(labels: list[str]) -> float:
    """Inches a legend of these labels takes below the axes (its rows, a title)."""
    rows = -(-len(labels) // legend_columns(labels))
    return 0.25 + 0.15 * rows


def time_axis(ax: Any, bins: "Bins") -> None:
    """Virtual time on x, in the bins' unit, with engineering prefixes (400M cycles, 180k µs)."""
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel(bins.time_label())


CROWDED_CHARS = 8  # x tick labels longer than this in all are turned upright, so they cannot run together


def ticks_at(ax: Any, axis: str, values: list[Any]) -> None:
    """Ticks at the swept values themselves when there are few of them."""
    vals = sorted(set(values))
    if len(vals) <= 10:
        labels = [fmt(v) for v in vals]
        (ax.set_xticks if axis == "x" else ax.set_yticks)(vals, labels)
        if axis == "x":
            ax.xaxis.set_minor_locator(_null())
            if sum(map(len, labels)) > CROWDED_CHARS:  # 2 ... 256 CPUs ran together as "64128256" in a panel
                ax.tick_params(axis="x", labelrotation=90)


def _null():
    from matplotlib.ticker import NullLocator

    return NullLocator()


def settle(fig: Any) -> None:
    """Lay the figure out once and keep that layout: every format (and the report's embedded copy) gets
    the same positions, and saving twice gives the same bytes."""
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    engine = fig.get_layout_engine()
    if engine is not None and not isinstance(engine, PlaceHolderLayoutEngine):
        with styled():
            fig.draw_without_rendering()
        fig.set_layout_engine(PlaceHolderLayoutEngine(engine.adjust_compatible, engine.colorbar_gridspec))


def save(fig: Any, out_dir: Path, name: str, formats: Iterable[str] = ("png",)) -> list[Path]:
    """``out_dir/name.FORMAT`` for each format; the paths written."""
    out = []
    settle(fig)
    with styled():
        for f in formats:
            path = out_dir / f"{name}.{f}"
            fig.savefig(path, format=f, metadata=_METADATA[f])
            out.append(path)
    return out


def png_bytes(fig: Any) -> bytes:
    import io

    buf = io.BytesIO()
    settle(fig)
    with styled():
        fig.savefig(buf, format="png", metadata=_METADATA["png"])
    return buf.getvalue()


def parse_formats(text: str) -> list[str]:
    """"png,svg,pdf" as a list; ValueError naming the formats there are."""
    got = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in got if f not in FORMATS]
    if bad or not got:
        raise ValueError(f"--format {text!r}: {'unknown format ' + ', '.join(bad) if bad else 'no format'}; "
                         f"give one or more of {', '.join(FORMATS)}, comma-separated (e.g. --format png,pdf)")
    return list(dict.fromkeys(got))


# ------------------------------------------------------------------------------------------- time bins

@dataclass(frozen=True)
class Bins:
    """Time bins of ``width`` cycles, shown in ``unit`` ("cycles" or "µs")."""
    width: int
    unit: str = "cycles"

    @property
    def per(self) -> float:
        """Cycles per shown unit."""
        return CYCLES_PER_US if self.unit == "µs" else 1

    @property
    def text(self) -> str:
        """The width as the axis labels say it: "50k cycles", "20M cycles", "20 µs"."""
        v = self.width / self.per
        for scale_, prefix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
            if v >= scale_ and v % scale_ == 0:
                return f"{int(v // scale_)}{prefix} {self.unit}"
        return f"{fmt(v)} {self.unit}"

    def count(self, t_end: int) -> int:
        from smpsim.analysis.series import bin_count

        return bin_count(t_end, self.width)

    def time_label(self) -> str:
        return f"virtual time ({self.unit})" if self.unit == "µs" else "virtual time (cycles)"


MAX_BINS = 20_000
_BIN = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(us|µs|cycles?|)\s*", re.I)


def parse_bins(text: str) -> Bins:
    """--bin: "20us" (or "20µs") or "50000" / "50000cycles"; ValueError saying what is expected."""
    m = _BIN.fullmatch(text)
    if not m:
        raise ValueError(f"--bin {text!r}: expected a width in cycles or µs, e.g. --bin 50000 or --bin 20us")
    n, unit = float(m[1]), ("µs" if m[2].lower() in ("us", "µs") else "cycles")
    cycles = n * (CYCLES_PER_US if unit == "µs" else 1)
    if cycles < 1 or cycles != int(cycles):
        raise ValueError(f"--bin {text!r}: a bin must be a whole number of cycles, at least 1 "
                         f"({CYCLES_PER_US:,} cycles per µs)")
    return Bins(int(cycles), unit)


def auto_bins(t_end: int, target: int = 100) -> Bins:
    """The round width (1, 2 or 5 times a power of ten cycles) giving at most ``target`` bins."""
    need = max(1, -(-(t_end + 1) // target))
    k = 10 ** max(0, len(str(need)) - 1)
    for step in (1, 2, 5, 10):
        if step * k >= need:
            return Bins(step * k)
    return Bins(10 * k)


def even_bins(t_end: int, times: Any, least: int = 8, most: int = 100) -> Bins:
    """The round width, among those that cut [0, t_end] into ``least`` to ``most`` bins, into which the
    event ``times`` fall most evenly (the lowest coefficient of variation of their count per full bin; the
    more bins on a tie). Periodic events (ring-wrap flushes) counted n in some bins and n + 1 in others
    would paint every figure over time with stripes of the bin width, not of what happened."""
    import numpy as np

    t = np.asarray(times, dtype=np.int64)
    candidates = []
    k = 1
    while k <= t_end + 1:
        candidates += [w * k for w in (1, 2, 5) if least <= Bins(w * k).count(t_end) <= most]
        k *= 10
    if t.size < 2 or not candidates:
        return auto_bins(t_end, most)

    def spread(w: int) -> tuple[float, int]:
        full = (t_end + 1) // w
        n = np.bincount(t // w, minlength=full + 1)[:full]
        return (round(float(n.std() / n.mean()), 2) if n.size and n.mean() else math.inf), w

    return Bins(min(candidates, key=spread))


def check_bins(bins: Bins, t_end: int) -> None:
    if bins.count(t_end) > MAX_BINS:
        least = auto_bins(t_end, MAX_BINS)
        raise ValueError(f"--bin {bins.text}: makes {fmt(bins.count(t_end))} bins over the run's "
                         f"{fmt(t_end)} cycles; at most {fmt(MAX_BINS)}: use --bin {least.width} or more")
