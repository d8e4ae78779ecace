"""Replications: [sweep] seeds, the per-point summary with 95% intervals, paired per-seed ratios, and
resuming a replicated sweep with more seeds."""

import csv
import math
from pathlib import Path

import pytest

from smpsim import api
from smpsim.config import ConfigError
from smpsim.experiments.stats import mean_ci, ratio_ci
from smpsim.experiments.sweep import load_experiment
from cli_helpers import invoke, user_error

# Two policies x 2 CPUs, kmaps close together on a small ring: the seeds give visibly different runs.
TINY = """
[machine]
cpus = 2
last_pkmap = 32
[workload]
pages = 256
kmaps_per_cpu = 50
think = 20000
[sweep]
"policy.name" = ["linux-2.4", "eager"]
seeds = {seeds}
[report]
baseline = {{"policy.name" = "eager"}}
"""


def experiment(tmp_path, seeds="3"):
    p = tmp_path / "exp.toml"
    p.write_text(TINY.format(seeds=seeds))
    return p


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_t_interval_and_the_log_scale_summary_of_ratios():
    # t(0.975, 2) = 4.302653 (any table): mean 2, s = 1, half-width 4.302653 / sqrt(3)
    m, lo, hi = mean_ci([1, 2, 3])
    assert m == 2 and hi - m == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6) and m - lo == hi - m
    assert mean_ci([5.0]) == (5.0, None, None) and mean_ci([None, 4, 4]) == (4.0, 4.0, 4.0)
    # seeds that agree give the value itself, not a mean with rounding noise (0.854 ±1.11e-16 was printed)
    same = 7 / 8.197
    assert mean_ci([same] * 5) == (same, same, same)
    assert ratio_ci([same] * 5) == (same, same, same)
    # ratios multiply: 4x and 1/4x summarise to 1, and the interval of r is the inverse of that of 1/r
    c, lo, hi = ratio_ci([4.0, 0.25])
    assert c == pytest.approx(1.0)
    c2, lo2, hi2 = ratio_ci([0.25, 4.0][::-1])
    assert (c, lo, hi) == (c2, lo2, hi2)
    c, lo, hi = ratio_ci([2.0, 4.0, 8.0])
    inv = ratio_ci([1 / 2, 1 / 4, 1 / 8])
    assert c == pytest.approx(4.0) and lo == pytest.approx(1 / inv[2]) and hi == pytest.approx(1 / inv[1])
    # a zero ratio has no log: arithmetic, low end clipped at 0
    c, lo, hi = ratio_ci([0.0, 0.0, 3.0])
    assert c == 1.0 and lo == 0.0 and hi > 3


def test_seeds_are_parsed_and_each_point_runs_once_per_seed(tmp_path):
    exp = load_experiment(experiment(tmp_path, "3"))
    assert exp.replicated and [r.seed for r in exp.runs()] == [1, 2, 3, 1, 2, 3]
    assert len({r.hash for r in exp.runs()}) == 6 and exp.runs()[0].hash == exp.points[0].hash
    listed = load_experiment(experiment(tmp_path, "[7, 9]"))
    assert [r.seed for r in listed.runs()] == [7, 9, 7, 9]
    one = load_experiment(experiment(tmp_path, "1"))
    assert not one.replicated and [r.hash for r in one.runs()] == [p.hash for p in one.points]
    assert "seeds = 3" in load_experiment(experiment(tmp_path, "3")).to_toml()


@pytest.mark.parametrize("seeds,problem", [
    ("0", "[sweep] seeds: 0 is not a number of seeds"),
    ("[1, 1]", "[sweep] seeds: [1, 1] is not a number of seeds"),
    ("'five'", "give a count (seeds = 5) or a list of distinct seeds"),
])
def test_bad_seeds_are_named(tmp_path, seeds, problem):
    with pytest.raises(ConfigError) as e:
        load_experiment(experiment(tmp_path, seeds))
    assert any(problem in p for p in e.value.problems), e.value.problems
    # and seeds with a swept seed: one or the other
    with pytest.raises(ConfigError) as e:
        load_experiment(experiment(tmp_path, "2"), ["sweep.seed=[1, 2]"])
    assert any("seed is swept as well" in p for p in e.value.problems)


def test_a_replicated_sweep_summarises_each_point_with_intervals_and_paired_ratios(tmp_path):
    out = tmp_path / "out"
    r = invoke("sweep", experiment(tmp_path, "3"), "--out", out, "--jobs", "1")
    assert r.exit_code == 0, r.output
    points, seeds = read_csv(out / "results.csv"), read_csv(out / "results-seeds.csv")
    assert [p["policy.name"] for p in points] == ["linux-2.4", "eager"]
    assert [(s["point"], s["seed"]) for s in seeds] == [("0", "1"), ("0", "2"), ("0", "3"),
                                                        ("1", "1"), ("1", "2"), ("1", "3")]
    for p in points:
        mine = [s for s in seeds if s["point"] == p["point"]]
        assert p["seeds"] == "3"
        for key in ("kmap_mean_cycles", "lock_utilisation", "ipis_per_1000_kmaps"):
            m, lo, hi = mean_ci([float(s[key]) for s in mine])
            assert float(p[key]) == pytest.approx(m) and float(p[key + "_ci95_lo"]) == pytest.approx(lo)
            assert float(p[key + "_ci95_hi"]) == pytest.approx(hi) and lo <= m <= hi
    # the seeds differ (else the interval says nothing), and the ratio is per seed, paired, then summarised
    lazy = [s for s in seeds if s["point"] == "0"]
    eager = {s["seed"]: s for s in seeds if s["point"] == "1"}
    assert len({s["kmap_mean_cycles"] for s in lazy}) > 1
    per_seed = [float(s["kmap_mean_cycles"]) / float(eager[s["seed"]]["kmap_mean_cycles"]) for s in lazy]
    c, lo, hi = ratio_ci(per_seed)
    assert float(points[0]["kmap_mean_cycles_ratio"]) == pytest.approx(c, rel=1e-5)  # (per-seed: 6 decimals)
    assert float(points[0]["kmap_mean_cycles_ratio_ci95_lo"]) == pytest.approx(lo, rel=1e-5)
    unpaired = float(points[0]["kmap_mean_cycles"]) / float(points[1]["kmap_mean_cycles"])
    assert c != pytest.approx(unpaired, rel=1e-9)  # not the ratio of the means
    # what the user reads: the saving line with its interval, the table with mean ±half-width and seeds
    line = next(x for x in r.stdout.splitlines() if x.startswith("  linux-2.4 vs eager"))
    text = " ".join(r.stdout.split())
    assert "fewer IPIs (" in line and "3 seeds)" in text and "lower mean kmap latency (95% CI" in text
    assert f"{1 / c:.3g}x lower mean kmap latency (95% CI {1 / hi:.3g}–{1 / lo:.3g}; 3 seeds)" in text
    assert any(x.startswith("seeds ") and x.split()[1:] == ["3", "3"] for x in r.stdout.splitlines())
    assert any(x.startswith("mean kmap latency (cycles)") and "±" in x for x in r.stdout.splitlines())
    assert "2 points: 6 runs run, 0 runs already finished" in r.stdout
    # compare on the sweep directory pairs each run with its baseline's run of the same seed
    c = invoke("compare", out)
    assert c.exit_code == 0, c.output
    assert [x.split(":")[0].strip() for x in c.stdout.splitlines() if " vs " in x] == [
        f"linux-2.4 vs eager (seed={s})" for s in (1, 2, 3)]


def test_more_seeds_later_runs_only_the_missing_ones(tmp_path):
    out = tmp_path / "out"
    first = api.run_sweep(experiment(tmp_path, "2"), out=out, jobs=1)
    assert sorted(first.ran) == [(0, 1), (0, 2), (1, 1), (1, 2)] and first.skipped == []
    more = api.run_sweep(experiment(tmp_path, "3"), out=out, jobs=1)
    assert sorted(more.ran) == [(0, 3), (1, 3)] and sorted(more.skipped) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert [r["seeds"] for r in more.rows] == [3, 3] and len(more.seed_rows) == 6
    # the API's table is the file's: a row per point, the intervals and the seeds column
    table = api.sweep(experiment(tmp_path, "3"), out=out, jobs=1)
    assert table.num_rows == 2 and {"seeds", "kmaps_ci95_lo", "kmaps_ci95_hi"} <= set(table.column_names)


def test_shards_of_a_replicated_sweep_collect_into_the_whole_table(tmp_path):
    exp = experiment(tmp_path, "2")
    whole = tmp_path / "whole"
    api.run_sweep(exp, out=whole, jobs=1)
    for i in range(2):
        api.run_sweep(exp, out=whole, jobs=1, shard=(i, 2))  # the runs are there: nothing runs again
    table = (whole / "results.csv").read_text()
    r = invoke("sweep", "--collect", whole)
    assert r.exit_code == 0, r.output
    assert (whole / "results.csv").read_text() == table


def test_one_seed_keeps_the_single_run_table(tmp_path):
    out = tmp_path / "out"
    done = api.run_sweep(experiment(tmp_path, "1"), out=out, jobs=1)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert "seeds" not in header and "kmaps_ci95_lo" not in header and not (out / "results-seeds.csv").exists()
    assert done.ran == [0, 1] and done.seed_rows is None


def test_config_check_counts_the_runs(tmp_path):
    r = invoke("config", "check", experiment(tmp_path, "4"))
    assert r.exit_code == 0 and r.stdout.strip() == "ok: a sweep of 2 points x 4 seeds (8 runs)"
    user_error(invoke("config", "check", experiment(tmp_path, "-1")))
