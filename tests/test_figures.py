"""The figures themselves, read back from the matplotlib Figure objects and the SVG text: what is on each
axis and in what unit, that every line looks different from every other, that nothing is cut off or too
small to read at one column's width, that titles name what was swept and never a run directory, error
bars exactly where the results table has confidence intervals.

The sweep tables here are synthetic (the columns `smpsim sweep` writes, with and without the seeds'
confidence-interval columns); the analyze and compare figures come from real runs.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from cli_helpers import invoke, user_error
from registries import POLICY_NAMES
from smpsim.analysis.figstyle import COLUMN, MIN_FONT, Bins, auto_bins, even_bins, parse_bins
from smpsim.headline import BY_KEY

CPUS = (2, 8, 32, 64, 128, 256)  # configs/scaling.toml's crowd at the right end
FAILED = "latr"  # its one point failed: a point without a result draws nothing
POLICIES = tuple(p for p in POLICY_NAMES if p != FAILED)  # a sweep over every built-in (configs/modern.toml)
RUN_DIR_NAME = "20261207-093351-7c877175"  # what `smpsim run` names a run directory


def table(ci: bool, workloads: tuple[str, ...] = ("uniform",)) -> list[dict]:
    """A results table over cpus x policies (x workloads): eager's IPIs grow 1000x past linux-2.4's,
    vmap-lazy sends none; with ``ci``, 5 seeds and a 95% interval of +-10% around each mean."""
    from smpsim.analysis.plots import SWEEP_METRICS

    rows = []
    for w in workloads:
        for p, pol in enumerate(POLICIES):
            for n in CPUS:
                r = {"point": len(rows), "policy.name": pol, "machine.cpus": n, "workload.kind": w,
                     "status": "ok"}
                for k in SWEEP_METRICS:
                    v = (1000.0 if pol == "eager" else 1.0 + p) * n
                    if k == "lock_utilisation":
                        v = min(1.0, 0.003 * n * (1 + p))
                    if k == "ipis_per_1000_kmaps" and pol == "vmap-lazy":
                        v = 0.0
                    r[k] = v
                    if ci:
                        r[f"{k}_ci95_lo"], r[f"{k}_ci95_hi"] = 0.9 * v, 1.1 * v
                if ci:
                    r["seeds"] = 5
                rows.append(r)
    rows.append({"point": len(rows), "policy.name": FAILED, "machine.cpus": 4, "workload.kind": workloads[0],
                 "status": "error"})  # a point without a result draws nothing
    return rows


PARAMS = ["policy.name", "machine.cpus"]


# ------------------------------------------------------------------------------------------- helpers

def texts(fig) -> list:
    """The texts a reader sees (tick labels outside the axes' view are made but never drawn)."""
    from matplotlib.text import Text

    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-9 * abs(hi - lo) <= tick.get_loc() <= hi + 1e-9 * abs(hi - lo):
                    hidden |= {id(tick.label1), id(tick.label2)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def assert_legible(fig) -> None:
    """One column wide; no lettering under MIN_FONT points; nothing cut off at the figure's edges; every
    legend outside every axes' data area."""
    fig.canvas.draw()
    assert fig.get_figwidth() == pytest.approx(COLUMN)
    box = fig.bbox
    r = fig.canvas.get_renderer()
    for t in texts(fig):
        assert t.get_fontsize() >= MIN_FONT, t.get_text()
        e = t.get_window_extent(r)
        assert box.x0 - 1 <= e.x0 and e.x1 <= box.x1 + 1 and box.y0 - 1 <= e.y0 and e.y1 <= box.y1 + 1, \
            f"cut off: {t.get_text()!r}"
    for ax in fig.axes:  # tick labels of one axis never run into each other ("64128256")
        shown = {id(t) for t in texts(fig)}
        labels = [t for t in ax.get_xticklabels() if id(t) in shown]
        boxes = sorted((t.get_window_extent(r) for t in labels), key=lambda b: b.x0)
        for a, b in zip(boxes, boxes[1:]):
            assert a.x1 <= b.x0 + 0.5, f"x tick labels overlap in {ax.get_title()!r}"
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    for lg in legends:
        e = lg.get_window_extent(r)
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            a = ax.get_window_extent(r)
            assert e.x1 <= a.x0 or e.x0 >= a.x1 or e.y1 <= a.y0 or e.y0 >= a.y1, "legend over the data"


def series(fig) -> dict[str, object]:
    """Legend label -> the data line of that series (an error-bar series' line too)."""
    from matplotlib.container import ErrorbarContainer

    out = {}
    for lg in fig.legends:
        for h, t in zip(lg.legend_handles, lg.get_texts()):
            out[t.get_text()] = h
    lines = {}
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            lines.setdefault(label, h.lines[0] if isinstance(h, ErrorbarContainer) else h)
    assert set(out) <= set(lines) or not out
    return lines


def look(line) -> tuple:
    return (line.get_color(), line.get_marker(), line.get_linestyle())


def titles(fig) -> list[str]:
    out = [ax.get_title() for ax in fig.axes]
    if fig._suptitle is not None:
        out.append(fig._suptitle.get_text())
    return [t for t in out if t]


# ------------------------------------------------------------------------------------------- sweep

@pytest.mark.parametrize("ci", [False, True], ids=["one seed", "5 seeds"])
def test_each_headline_metric_against_the_cpus_a_line_per_policy(ci):
    from smpsim.analysis.plots import SWEEP_METRICS, sweep_figures

    rows = table(ci)
    figs = sweep_figures(rows, PARAMS)
    assert set(figs) == {"headline", *SWEEP_METRICS}
    ok = [r for r in rows if r["status"] == "ok"]
    for key in SWEEP_METRICS:
        fig = figs[key]
        (ax,) = fig.axes
        assert ax.get_xlabel() == "machine.cpus"  # the first numeric swept key, not policy.name
        assert ax.get_ylabel() == BY_KEY[key].axis_label
        lines = series(fig)
        assert sorted(lines) == sorted(POLICIES)  # one line per policy, each named once
        assert len({look(line) for line in lines.values()}) == len(POLICIES)
        assert len({(line.get_color(), line.get_marker()) for line in lines.values()}) == len(POLICIES)
        for pol, line in lines.items():
            assert list(line.get_xdata()) == list(CPUS)
            assert list(line.get_ydata()) == pytest.approx([r[key] for r in ok if r["policy.name"] == pol])
        # 2 ... 256 CPUs and eager's 1000x: both axes logarithmic; vmap-lazy's 0 IPIs stay on the figure
        assert ax.get_xscale() == "log" and ax.get_yscale() in ("log", "symlog")
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(n) for n in CPUS]
        title = ax.get_title().replace("\n", " ")
        assert "machine.cpus" in title and "policy.name" in title
        assert ("95% CI" in title and "5 seeds" in title) == ci
        bars = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
        if not ci:
            assert bars == []
            continue
        assert len(bars) == len(POLICIES)
        for c in bars:
            pol = c.get_label()
            (segments,) = c.lines[2]
            want = [(r[f"{key}_ci95_lo"], r[f"{key}_ci95_hi"]) for r in ok if r["policy.name"] == pol]
            got = [(min(s[:, 1]), max(s[:, 1])) for s in segments.get_segments()]
            assert np.allclose(got, want)
        assert_legible(fig)
    assert_legible(figs["headline"])
    assert len(figs["headline"].axes) == len(SWEEP_METRICS)


def test_units_on_the_axes():
    from smpsim.analysis.plots import sweep_figure

    rows = table(False)
    assert sweep_figure(rows, PARAMS, "stall_per_flush").axes[0].get_ylabel() == "initiator stall per flush (cycles)"
    assert sweep_figure(rows, PARAMS, "kmap_p99_cycles").axes[0].get_ylabel() == "kmap latency p99 (cycles)"
    assert sweep_figure(rows, PARAMS, "kmap_mean_cycles").axes[0].get_ylabel() == "mean kmap latency (cycles)"
    for rs in (rows, [r for r in rows if r.get("machine.cpus") in (32, 64)]):  # 0.6% ... 100%, 10% ... 100%
        ax = sweep_figure(rs, PARAMS, "lock_utilisation").axes[0]
        ax.figure.canvas.draw()
        assert ax.get_ylabel() == "kmap_lock utilisation (%)"
        assert ax.get_yscale() == ("log" if rs is rows else "linear")
        shown = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert shown and all(t.endswith("%") for t in shown), shown


def test_x_is_the_key_asked_for_and_other_keys_make_the_lines():
    from smpsim.analysis.plots import sweep_figure

    rows = table(False, ("uniform", "zipf"))
    params = ["policy.name", "machine.cpus", "workload.kind"]
    fig = sweep_figure(rows, params, "ipis_per_1000_kmaps")
    lines = series(fig)
    assert len(lines) == 2 * len(POLICIES) and "eager, zipf" in lines  # every policy x workload its own line
    assert len({look(line) for line in lines.values()}) == len(lines)
    fig = sweep_figure(rows, params, "ipis_per_1000_kmaps", x="policy.name")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "policy.name"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(POLICIES)  # categories, in sweep order
    assert len(series(fig)) == 2 * len(CPUS) and all(line.get_linestyle() == "None" for line in series(fig).values())
    with pytest.raises(ValueError, match="workload.pages: not a swept key"):
        sweep_figure(rows, params, "ipis_per_1000_kmaps", x="workload.pages")


def test_a_key_zipped_with_x_makes_no_lines_of_its_own():
    from smpsim.analysis.plots import sweep_figure

    rows = [{"status": "ok", "machine.cpus": n, "workload.kmaps_per_cpu": 8000 // n, "stall_per_flush": 10.0 * n}
            for n in (1, 2, 4, 8, 16)]
    fig = sweep_figure(rows, ["machine.cpus", "workload.kmaps_per_cpu"], "stall_per_flush")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 1 and fig.legends == [] and ax.get_xscale() == "linear"  # 16x: linear
    assert ax.get_yscale() == "linear"  # 10 ... 160: not over 100x


def test_figures_in_every_format_the_svg_text_naming_the_swept_key(tmp_path):
    from smpsim.analysis.figstyle import save
    from smpsim.analysis.plots import sweep_figure

    fig = sweep_figure(table(True), PARAMS, "stall_per_flush")
    paths = save(fig, tmp_path, "stall", ["png", "svg", "pdf"])
    assert [p.name for p in paths] == ["stall.png", "stall.svg", "stall.pdf"]
    assert (tmp_path / "stall.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "stall.png").read_bytes()[:4] == b"\x89PNG"
    svg = ET.parse(tmp_path / "stall.svg")
    words = " ".join("".join(t.itertext()) for t in svg.iter("{http://www.w3.org/2000/svg}text"))
    assert "machine.cpus" in words and "initiator stall per flush (cycles)" in words and "linux-2.4" in words
    for p in save(sweep_figure(table(True), PARAMS, "stall_per_flush"), tmp_path / "..", "again",
                  ["png", "svg", "pdf"]):  # the same figure, the same bytes: no dates, no random ids
        assert p.read_bytes() == (tmp_path / f"stall{p.suffix}").read_bytes(), p.name


# ------------------------------------------------------------------------------------------- compare

def test_compare_plot_every_run_its_own_line_and_legend_entry():
    from smpsim.analysis.plots import compare_figure

    labels = [f"linux-2.4, cpus={n}" for n in (8, 32, 64) for _ in range(3)]
    groups = ["uniform", "zipf", "shared"] * 3
    rng = np.random.default_rng(1)
    cycles = [rng.integers(100, 100 + 10 ** (2 + i % 4), 400) for i in range(9)]
    cycles[4] = np.full(50, 20)  # one value: a single step, said in the legend
    fig = compare_figure(labels, groups, cycles, ["machine.cpus", "workload.kind"])
    lines = series(fig)
    assert len(lines) == 9 and len(fig.legends[0].get_texts()) == 9
    assert len({look(line) for line in lines.values()}) == 9
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert names[0].startswith("linux-2.4, cpus=8 (uniform) (median ")
    assert names[4] == "linux-2.4, cpus=32 (zipf) (all 50 = 20)"
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "kmap latency: request to return (cycles)"
    assert "machine.cpus" in ax.get_title()
    assert_legible(fig)


# ------------------------------------------------------------------------------------------- analyze

@pytest.fixture(scope="module")
def run12(tmp_path_factory):
    """A 12-CPU linux-2.4 run whose ring wraps every so often, in a directory named as `smpsim run` names
    them."""
    out = tmp_path_factory.mktemp("runs") / RUN_DIR_NAME
    r = invoke("run", "--out", out, "--set", "machine.cpus=12", "--set", "workload.kmaps_per_cpu=300",
               "--set", "machine.last_pkmap=64", "--set", "workload.think=20000")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def analysed(run12):
    from smpsim.analysis.load import open_trace
    from smpsim.analysis.trace_metrics import analyze
    from smpsim.analysis.plots import analysis_figures

    with open_trace(run12) as tr:
        a = analyze(tr)
        figs = analysis_figures(tr, a)
        t = np.asarray(tr.numpy("SELECT t FROM events WHERE ev = 'flush'")["t"])
        stalls = np.asarray(tr.numpy("SELECT stall FROM events WHERE ev = 'flush'")["stall"])
    return a, figs, t, stalls


def test_analyze_figures_are_legible_and_name_what_ran_not_where(analysed):
    a, figs, _, _ = analysed
    for name, fig in figs.items():
        assert_legible(fig)
        for t in titles(fig):
            assert RUN_DIR_NAME not in t, name
        assert any("linux-2.4" in t and "12 CPUs" in t for t in titles(fig)), name
        for ax in fig.axes:
            if ax.get_label() != "<colorbar>" and ax.get_xlabel():
                assert re.search(r"\((cycles|µs|%|count)\)|CPU$", ax.get_xlabel()), ax.get_xlabel()


def test_the_flush_stall_panel_is_a_point_per_flush_not_one_bar(analysed):
    a, figs, t, stalls = analysed
    assert len(set(stalls.tolist())) == 1  # linux-2.4: every wrap flush stalls the same
    ax = figs["latency_cdf"].axes[1]
    assert len(ax.patches) == 0
    (line,) = [x for x in ax.get_lines() if not x.get_label().startswith("_")]
    assert list(line.get_xdata()) == list(t) and set(line.get_ydata()) == {int(stalls[0])}
    assert f"all {int(stalls[0]):,} cycles" in line.get_label() and ax.get_ylabel().endswith("(cycles)")
    assert ax.get_ylim()[0] == 0  # the flat row sits at its height over 0, not in a zoomed band
    kmaps = figs["latency_cdf"].axes[0]
    assert [x.get_label().split(" (")[0] for x in kmaps.get_lines()] == ["kmap latency", "its kmap_lock wait"]


def test_the_hit_rate_heatmap_has_even_bins_and_exact_cells(analysed):
    from matplotlib.collections import QuadMesh

    a, figs, t, _ = analysed
    ax = figs["hit_rate"].axes[0]
    assert [type(c) for c in ax.collections] == [QuadMesh] and len(ax.images) == 0  # cells, not a resampled image
    (mesh,) = ax.collections
    assert mesh.get_array().shape[0] == 12
    width = int(re.search(r"per ([0-9]+)([kM]?) cycles", ax.get_title().replace("\n", " ")).expand(r"\1\2")
                .replace("k", "000").replace("M", "000000"))
    full = (a["t_end"] + 1) // width
    counts = np.bincount(t // width, minlength=full + 1)[:full]
    other = auto_bins(a["t_end"]).width
    counts_other = np.bincount(t // other, minlength=(a["t_end"] + 1) // other + 1)[:(a["t_end"] + 1) // other]
    # the flushes fall into the chosen bins at least as evenly as into the plain ~100 bins
    assert counts.std() / counts.mean() <= counts_other.std() / counts_other.mean() + 1e-9


def test_round_bins_and_the_bin_option():
    assert parse_bins("20us") == Bins(50_000, "µs") and parse_bins("20µs").text == "20 µs"
    assert parse_bins("50000") == Bins(50_000) and parse_bins("50000cycles").text == "50k cycles"
    assert auto_bins(999_999).width == 10_000 and auto_bins(1_000_000).width == 20_000
    for bad in ("fast", "0", "0.0001us", "-5"):
        with pytest.raises(ValueError, match="--bin"):
            parse_bins(bad)
    # flushes every 2.5M cycles: 5M bins (92 of them) hold 2 each; plain ~100 bins (5M too) alike
    t = np.arange(1, 185) * 2_500_000 - 1000
    assert even_bins(460_000_000, t).width == 5_000_000
    # every 2.57M cycles: 5M bins hold 1 or 2 (stripes), 50M bins 19 or 20
    t = np.arange(1, 179) * 2_574_622
    assert even_bins(460_000_000, t).width == 50_000_000 and auto_bins(460_000_000).width == 5_000_000


def test_analyze_bin_and_format_options(run12, tmp_path):
    out = tmp_path / "fig"
    r = invoke("analyze", run12, "--plot", out, "--bin", "20us", "--format", "svg,pdf")
    assert r.exit_code == 0, r.output
    names = {p.name for p in out.iterdir()}
    assert names == {f"{n}.{f}" for n in ("ipi_heatmap", "timeline", "latency_cdf", "hit_rate")
                     for f in ("svg", "pdf")} | {"report.html"}
    words = " ".join("".join(t.itertext()) for t in ET.parse(out / "timeline.svg").iter(
        "{http://www.w3.org/2000/svg}text"))
    assert "per 20 µs" in words and "virtual time (µs)" in words and RUN_DIR_NAME not in words
    assert 'src="data:image/png;base64,' in (out / "report.html").read_text()
    assert "--bin" in user_error(invoke("analyze", run12, "--plot", out, "--bin", "soon"))
    assert "add --plot" in user_error(invoke("analyze", run12, "--bin", "20us"))
    assert "gif" in user_error(invoke("analyze", run12, "--plot", out, "--format", "png,gif"))
    assert "add --plot" in user_error(invoke("compare", run12, run12, "--format", "svg"))
    assert "at most" in user_error(invoke("analyze", run12, "--plot", out, "--bin", "1"))
