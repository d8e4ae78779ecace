"""What a user reads: the saving lines of `smpsim sweep` and `smpsim compare`, the ratio columns of the results
table, the run summary, what `sweep --plot` writes (the figures themselves: tests/test_figures.py).

Expected figures are computed here from the recorded counters (summary.json) or the exported events, never
copied from an earlier run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cli_helpers import invoke, user_error
from smpsim.experiments.sweep import load_experiment
from sweep_helpers import SMALL as SWEPT  # 3 policies x 2 workloads, well under a second a point

ROOT = Path(__file__).resolve().parents[1]

SMALL = SWEPT + """
[report]
baseline = {"policy.name" = "eager"}
by = ["workload.kind"]
"""
SAVING = re.compile(r"^  (\S+) vs (\S+) \((\w+)\): (.*)$")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "exp.toml").write_text(SMALL)
    out = root / "out"
    r = invoke("sweep", root / "exp.toml", "--out", out, "--plot", root / "fig")
    assert r.exit_code == 0, r.output
    exp = load_experiment(root / "exp.toml")
    summaries = {(p.params["policy.name"], p.params["workload.kind"]):
                 json.loads((out / p.name / "summary.json").read_text()) for p in exp.points}
    return {"root": root, "out": out, "stdout": r.stdout, "exp": exp, "summaries": summaries}


def savings(stdout: str) -> list[tuple[str, str, str, str]]:
    """(run, baseline, group, text) of each saving line, continuation lines joined."""
    lines = stdout.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("against "))
    joined: list[str] = []
    for x in lines[start + 1:]:
        if x.startswith("      "):
            joined[-1] += " " + x.strip()
        elif x.startswith("  "):
            joined.append(x)
        else:
            break
    return [SAVING.match(x).groups() for x in joined]


def per_1000(c: dict, key: str) -> float:
    return 1000 * c[key] / c["kmaps"]


def times(text: str, noun: str) -> tuple[float, str]:
    """The "N.NNx fewer NOUN" of a saving line: (N, fewer/more)."""
    m = re.search(rf"([0-9][0-9,.]*)x (\w+) {noun}", text)
    assert m, (noun, text)
    return float(m[1].replace(",", "")), m[2]


def close(shown: float, want: float) -> bool:
    """As the line rounds: whole numbers from 10x on, 3 significant digits below."""
    return abs(shown - want) <= 0.5 if want >= 9.95 else shown == pytest.approx(want, rel=5e-3)


# ------------------------------------------------------------------------------------------- the saving line

def test_sweep_prints_one_saving_line_per_point_against_its_groups_baseline(swept):
    got = savings(swept["stdout"])
    # sweep order (policy first, then workload), grouped by workload; the baseline gets no line
    assert [(r, b, g) for r, b, g, _ in got] == [
        ("linux-2.4", "eager", "uniform"), ("kmap-local", "eager", "uniform"),
        ("linux-2.4", "eager", "zipf"), ("kmap-local", "eager", "zipf")]
    s = swept["summaries"]
    for run, base, group, text in got:
        c, b = s[run, group]["counters"], s[base, group]["counters"]
        if c["ipis"]:
            n, word = times(text, "IPIs")
            assert word == "fewer" and close(n, per_1000(b, "ipis") / per_1000(c, "ipis"))
        else:  # kmap-local sends none: the line says 0 against the baseline's figure, not a ratio
            m = re.search(r"\b0 vs ([0-9,.]+) IPIs per 1000 kmaps", text)
            assert m and float(m[1].replace(",", "")) == pytest.approx(per_1000(b, "ipis"), abs=0.05)
        n, word = times(text, "initiator stall")
        assert word == "less" and close(n, b["stall_cycles"] / c["stall_cycles"])
        n, word = times(text, "mean kmap latency")
        assert word == "lower" and close(n, (b["kmap_cycles"] / b["kmaps"]) / (c["kmap_cycles"] / c["kmaps"]))
    out = swept["stdout"]
    assert max(len(x) for x in out.splitlines() if str(swept["root"]) not in x) <= 100  # paths apart
    assert not re.search(r"\b[0-9a-f]{16}\b", out)  # points are named by their parameters, never by hash


def test_results_table_has_the_baseline_and_the_ratio_columns(swept):
    rows = pq.read_table(swept["out"] / "results.parquet").to_pylist()
    by_params = {(r["policy.name"], r["workload.kind"]): r for r in rows}
    s = swept["summaries"]
    for (policy, kind), r in by_params.items():
        base = by_params["eager", kind]
        assert r["baseline_point"] == base["point"]
        c, b = s[policy, kind]["counters"], s["eager", kind]["counters"]
        assert r["ipis_per_1000_kmaps_ratio"] == pytest.approx(per_1000(c, "ipis") / per_1000(b, "ipis"), rel=1e-3)
        assert r["stall_per_1000_kmaps_ratio"] == pytest.approx(c["stall_cycles"] / b["stall_cycles"], rel=1e-3)
    assert by_params["eager", "zipf"]["kmap_mean_cycles_ratio"] == 1.0
    header = (swept["out"] / "results.csv").read_text().splitlines()[0].split(",")
    assert {"baseline_point", "ipis_per_1000_kmaps_ratio", "kmap_mean_cycles_ratio"} <= set(header)


def test_compare_of_the_sweep_directory_says_the_same_in_the_sweeps_order(swept):
    r = invoke("compare", swept["out"], "--baseline", "policy.name=eager", "--by", "workload.kind")
    assert r.exit_code == 0, r.output
    assert savings(r.stdout) == savings(swept["stdout"])
    assert savings(invoke("compare", swept["out"]).stdout) == savings(swept["stdout"])  # the sweep's [report]
    assert not re.search(r"\b[0-9a-f]{16}\b", r.stdout) and max(map(len, r.stdout.splitlines())) <= 100
    doc = json.loads(invoke("compare", swept["out"], "--baseline", "policy.name=eager", "--by", "workload.kind",
                            "--json").stdout)
    assert [(x["policy"], x["workload"]) for x in doc["runs"]] == [
        (p.params["policy.name"], p.params["workload.kind"]) for p in swept["exp"].points]
    ipis = next(m for m in doc["metrics"] if m["key"] == "ipis")
    for run, ratio, value in zip(doc["runs"], ipis["ratios"], ipis["values"]):
        base = ipis["values"][run["baseline"]]
        assert doc["runs"][run["baseline"]]["policy"] == "eager"
        assert ratio == pytest.approx(value / base, rel=1e-4)


def test_compare_baseline_mistakes_are_one_error_paragraph(swept):
    out = swept["out"]
    assert "no run has policy.name = 'eagr'" in user_error(invoke("compare", out, "--baseline", "policy.name=eagr"))
    assert "add the keys that tell them apart to by" in user_error(
        invoke("compare", out, "--baseline", "policy.name=eager"))  # one eager per workload: ambiguous
    assert "policy.nme" in user_error(invoke("compare", out, "--baseline", "policy.nme=eager"))
    assert "--by needs --baseline" in user_error(invoke("compare", out, "--by", "workload.kind"))
    assert "KEY=VALUE" in user_error(invoke("compare", out, "--baseline", "eager"))


@pytest.mark.parametrize("table, message", [
    ('[report]\nbaseline = {"policy.nam" = "eager"}\n', "[report] baseline.policy.nam: not a config key"),
    ('[report]\nbaseline = {"policy.name" = "eager"}\nby = ["workload"]\n', "[report] by: 'workload': a table"),
    ('[report]\nbaselin = {}\n', "[report] baselin: unknown key"),
    ('[report]\nby = ["workload.kind"]\n', "[report] by needs a baseline"),
])
def test_report_table_mistakes_name_the_key(tmp_path, table, message):
    path = tmp_path / "exp.toml"
    path.write_text(SMALL[:SMALL.index("[report]")] + table)
    assert message in user_error(invoke("config", "check", path))
    assert message in user_error(invoke("sweep", path, "--out", tmp_path / "out"))


def test_a_sweep_without_its_baseline_point_warns_and_prints_no_saving(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(SMALL)
    r = invoke("sweep", path, "--out", tmp_path / "out", "--set", 'sweep.policy.name=["linux-2.4"]',
               "--set", "machine.cpus=1", "--set", "workload.kmaps_per_cpu=20")
    assert r.exit_code == 0, r.output
    assert "warning: " in r.stderr and "no point has policy.name = 'eager'" in r.stderr
    assert "against " not in r.stdout
    problem = user_error(invoke("config", "check", path, "--set", "report.baseline.policy.name=eagr"))
    assert "[report] baseline: no point has policy.name = 'eagr' among the points with workload.kind = 'uniform'" \
        in problem


@pytest.mark.parametrize("value, base, phrase", [
    (10.0, 1000.0, "100x fewer IPIs"),
    (1000.0, 10.0, "100x more IPIs"),
    (90.0, 100.0, "10% fewer IPIs"),
    (3.0, 1.0, "3x more IPIs"),
    (0.0, 12.0, "0 vs 12 IPIs per 1000 kmaps"),
    (12.0, 0.0, "12 vs 0 IPIs per 1000 kmaps"),
    (5.0, 5.0, "the same IPIs"),
])
def test_saving_words_follow_the_direction_of_the_ratio(value, base, phrase):
    from smpsim.headline import saving

    assert saving({"ipis_per_1000_kmaps": value}, {"ipis_per_1000_kmaps": base}).startswith(phrase)


# ------------------------------------------------------------------------------------------- run summary

def test_run_summary_says_what_ran_its_rates_and_the_next_command(tmp_path):
    out = tmp_path / "run"
    r = invoke("run", "--out", out, "--set", "machine.cpus=3", "--set", "workload.kmaps_per_cpu=100",
               "--set", "machine.last_pkmap=32", "--set", "policy.name=linux-2.6", "--set", "workload.kind=shared")
    assert r.exit_code == 0, r.output
    c = json.loads((out / "summary.json").read_text())["counters"]
    shown = dict(re.split(r"\s{2,}", x.strip(), maxsplit=1) for x in r.stdout.splitlines())
    assert shown["policy"] == "linux-2.6" and shown["CPUs"] == "3" and shown["workload"] == "shared"
    assert float(shown["IPIs per 1000 kmaps"]) == pytest.approx(per_1000(c, "ipis"), abs=5e-4)
    assert float(shown["initiator stall per flush"].replace(",", "")) == pytest.approx(
        c["stall_cycles"] / c["flushes"], abs=0.05)
    assert shown["next"] == f"smpsim analyze {out}"


# ------------------------------------------------------------------------------------------- figures

def test_sweep_plot_draws_each_headline_metric_of_the_points(swept):
    from smpsim.analysis.plots import SWEEP_METRICS, sweep_figure

    fig_dir = swept["root"] / "fig"
    assert sorted(p.name for p in fig_dir.iterdir()) == sorted(f"{n}.png" for n in ("headline", *SWEEP_METRICS))
    assert f"wrote {fig_dir / 'headline.png'}" in swept["stdout"]
    rows = pq.read_table(swept["out"] / "results.parquet").to_pylist()
    fig = sweep_figure(rows, ["policy.name", "workload.kind"], "stall_per_flush", by=["workload.kind"])
    ax = fig.axes[0]
    # no numeric swept key: the policies (not the [report] by key) are the categories, a series per workload
    assert ax.get_xlabel() == "policy.name" and ax.get_ylabel() == "initiator stall per flush (cycles)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["linux-2.4", "eager", "kmap-local"]
    lines = {x.get_label(): x for x in ax.get_lines() if not x.get_label().startswith("_")}
    assert sorted(lines) == ["uniform", "zipf"]
    for kind, line in lines.items():  # kmap-local flushes nothing: no stall per flush, no point
        assert list(line.get_ydata()) == [r["stall_per_flush"] for r in rows
                                          if r["workload.kind"] == kind and r["stall_per_flush"] is not None]


def test_sweep_plot_x_must_be_a_swept_key(tmp_path):
    (tmp_path / "exp.toml").write_text(SMALL)
    err = user_error(invoke("sweep", tmp_path / "exp.toml", "--out", tmp_path / "out", "--plot", tmp_path / "f",
                            "--x", "machine.cpus"))
    assert "--x machine.cpus: not a swept key" in err and "policy.name, workload.kind" in err
    assert not (tmp_path / "out").exists()  # refused before any point ran
    assert "add --plot" in user_error(invoke("sweep", tmp_path / "exp.toml", "--x", "policy.name"))


@pytest.mark.parametrize("name", ["lazy-vs-eager", "broken-flush", "ring-size", "cpus", "refill"])
def test_every_experiment_names_a_baseline_that_each_group_has_once(name):
    exp = load_experiment(ROOT / "configs" / f"{name}.toml")
    assert exp.report is not None and exp.report.baseline and exp.report_problems() == []
