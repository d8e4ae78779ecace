"""Sweeps: expansion and validation of experiment files, resuming, shards, provenance, the CLI."""

import json
import os
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from smpsim.config import ConfigError
from smpsim.experiments.sweep import load_experiment
from cli_helpers import invoke, user_error
from sweep_helpers import SMALL

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p




def finished(out):
    return {p.parent.name: json.loads(p.read_text()) for p in Path(out).glob("*/provenance.json")}


# ------------------------------------------------------------------------------------------- expansion

def test_product_expands_in_table_order_last_key_fastest(tmp_path):
    exp = load_experiment(write(tmp_path, SMALL))
    assert exp.keys == ["policy.name", "workload.kind"] and exp.mode == "product"
    assert [tuple(p.params.values()) for p in exp.points] == [
        ("linux-2.4", "uniform"), ("linux-2.4", "zipf"), ("eager", "uniform"), ("eager", "zipf"),
        ("kmap-local", "uniform"), ("kmap-local", "zipf")]
    assert [p.index for p in exp.points] == list(range(6))
    assert all(p.cfg.machine.cpus == 2 and p.name == p.hash[:16] for p in exp.points)
    assert len({p.hash for p in exp.points}) == 6


def test_zip_mode_pairs_the_lists(tmp_path):
    exp = load_experiment(write(tmp_path, "[sweep]\nmode = 'zip'\n'machine.cpus' = [1, 2, 4]\n"
                                          "'workload.kmaps_per_cpu' = [40, 20, 10]\n"))
    assert [(p.cfg.machine.cpus, p.cfg.workload.kmaps_per_cpu) for p in exp.points] == [(1, 40), (2, 20), (4, 10)]


def test_set_pins_a_swept_key_and_sweep_set_replaces_a_list(tmp_path):
    path = write(tmp_path, SMALL)
    exp = load_experiment(path, ["policy.name=eager", "sweep.machine.last_pkmap=[16, 64]"])
    assert exp.keys == ["workload.kind", "machine.last_pkmap"]
    assert {p.cfg.policy.name for p in exp.points} == {"eager"} and len(exp.points) == 4
    exp = load_experiment(path, ['sweep.mode=zip', 'sweep.policy.name=["eager", "kmap-local"]'])
    assert [tuple(p.params.values()) for p in exp.points] == [("eager", "uniform"), ("kmap-local", "zipf")]


def test_a_config_without_sweep_is_one_point(tmp_path):
    exp = load_experiment(write(tmp_path, "[machine]\ncpus = 3\n"))
    assert len(exp.points) == 1 and exp.keys == [] and exp.points[0].cfg.machine.cpus == 3


def test_shards_partition_the_points(tmp_path):
    exp = load_experiment(write(tmp_path, SMALL))
    shards = [exp.shard(i, 4) for i in range(4)]
    assert [[p.index for p in s] for s in shards] == [[0, 4], [1, 5], [2], [3]]


# ------------------------------------------------------------------------------------------- bad configs

BAD = {
    "typo in a key": ("[machine]\ncpuz = 4\n[sweep]\n'policy.name' = ['eager']\n", ["machine.cpuz: unknown key"]),
    "wrong type": ("[workload]\nkmaps_per_cpu = 'many'\n[sweep]\n'policy.name' = ['eager']\n",
                   ["workload.kmaps_per_cpu: Input should be a valid integer", "'many'"]),
    "unknown sweep key": ("[sweep]\n'machine.cpuz' = [1, 2]\n", ["[sweep] machine.cpuz: unknown key"]),
    "unknown sweep table": ("[sweep]\n'machin.cpus' = [1, 2]\n", ["[sweep] machin.cpus: unknown key"]),
    "empty sweep list": ("[sweep]\n'machine.cpus' = []\n", ["[sweep] machine.cpus: empty list"]),
    "sweep value not a list": ("[sweep]\n'machine.cpus' = 4\n", ["[sweep] machine.cpus: expected a list"]),
    "bad sweep value": ("[sweep]\n'machine.cpus' = [2, 0, 'x']\n",
                        ["[sweep] machine.cpus: Input should be greater than or equal to 1 (given 0)",
                         "[sweep] machine.cpus: Input should be a valid integer", "(given 'x')"]),
    "bad mode": ("[sweep]\nmode = 'cross'\n'machine.cpus' = [1]\n", ["[sweep] mode: expected 'product' or 'zip'"]),
    "zip lengths": ("[sweep]\nmode = 'zip'\n'machine.cpus' = [1, 2]\n'seed' = [1, 2, 3]\n",
                    ["must be equally long (machine.cpus has 2, seed has 3)"]),
    "value twice": ("[sweep]\n'seed' = [1, 1]\n", ["points 0 and 1 are the same config (seed=1)"]),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_experiment_one_clear_error_exit_2(tmp_path, case):
    text, expected = BAD[case]
    path = write(tmp_path, text)
    for command in (["sweep", path, "--out", tmp_path / "out"], ["config", "check", path]):
        err = user_error(invoke(*command))
        assert err.startswith(f"error: invalid configuration ({path}):")
        for piece in expected:
            assert piece in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_every_problem_is_listed_at_once(tmp_path):
    text = ("seed = -1\n[machine]\ncpux = 4\n[workload]\nkmaps_per_cpu = 'many'\n[sweep]\n"
            "'machine.cpuz' = [1, 2]\n'tlb.ways' = []\n'policy.name' = ['linux-2.4', 'lazy']\n")
    with pytest.raises(ConfigError) as e:
        load_experiment(write(tmp_path, text))
    problems = e.value.problems
    assert len(problems) == len(set(problems)) == 6, problems
    for piece in ("seed:", "machine.cpux: unknown key", "workload.kmaps_per_cpu:", "[sweep] machine.cpuz: unknown key",
                  "[sweep] tlb.ways: empty list", "[sweep] policy.name:"):
        assert any(p.startswith(piece) for p in problems), piece
    err = user_error(invoke("sweep", tmp_path / "exp.toml", "--out", tmp_path / "out"))
    assert all(p in err for p in problems)


def test_usage_mistakes(tmp_path):
    path = write(tmp_path, SMALL)
    assert "--shard" in user_error(invoke("sweep", path, "--shard", "2/2"))
    assert "--shard" in user_error(invoke("sweep", path, "--shard", "x"))
    assert "--jobs" in user_error(invoke("sweep", path, "--jobs", "0"))
    assert "--collect" in user_error(invoke("sweep", path, "--collect", tmp_path))
    assert "experiment" in user_error(invoke("sweep"))
    assert "no shard results" in user_error(invoke("sweep", "--collect", tmp_path))
    assert "file not found" in user_error(invoke("sweep", tmp_path / "missing.toml"))


# ------------------------------------------------------------------------------------------- config show/check

def test_config_show_and_check_an_experiment(tmp_path):
    path = write(tmp_path, SMALL)
    r = invoke("config", "check", path)
    assert r.exit_code == 0 and r.stdout.strip() == "ok: a sweep of 6 points"
    r = invoke("config", "show", path, "--set", "sweep.seed=[1, 2]")
    data = tomllib.loads(r.stdout)
    assert data["machine"]["cpus"] == 2 and data["tlb"]["entries"] == 64  # defaults filled in
    assert data["sweep"] == {"mode": "product", "policy.name": ["linux-2.4", "eager", "kmap-local"],
                             "workload.kind": ["uniform", "zipf"], "seed": [1, 2]}
    shown = write(tmp_path, r.stdout, "shown.toml")  # what show prints is the same experiment
    assert [p.hash for p in load_experiment(shown).points] == \
        [p.hash for p in load_experiment(path, ["sweep.seed=[1, 2]"]).points]


# ------------------------------------------------------------------------------------------- running

def test_sweep_writes_a_run_per_point_results_and_provenance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, SMALL)
    r = invoke("sweep", "exp.toml", "--jobs", "2")
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs" / "exp"  # default: runs/<experiment name>
    exp = load_experiment(tmp_path / "exp.toml")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(p.name for p in exp.points)
    assert "6 points: 6 run, 0 already finished" in r.stdout
    assert "\x1b[" not in r.stdout  # no progress bar or colours off a terminal
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    for col in ("point", "policy.name", "workload.kind", "status", "kmaps", "flushes", "ipis", "ipis_per_1000_kmaps",
                "kmap_mean_cycles", "kmap_p99_cycles", "stall_cycles", "tlb_hit_rate", "sleeps", "stale", "digest"):
        assert col in header
    rows = pq.read_table(out / "results.parquet").to_pylist()
    for row, point in zip(rows, exp.points):
        run = out / point.name
        summary = json.loads((run / "summary.json").read_text())
        prov = json.loads((run / "provenance.json").read_text())
        assert row["run"] == point.name and row["digest"] == summary["digest"] == prov["digest"]
        assert row["kmaps"] == summary["counters"]["kmaps"] == 120
        assert tomllib.loads((run / "config.toml").read_text())["policy"]["name"] == point.params["policy.name"]
        assert prov["config_hash"] == point.hash and prov["seed"] == 1 and prov["engine"] == "inline"
        assert prov["processes"] == 1 and prov["hosts"] == 1 and prov["status"] == "ok"
        assert prov["command"].startswith("smpsim ") and prov["cwd"] == str(tmp_path)  # sys.argv: see the kill test
        assert prov["smpsim_version"] and "git_revision" in prov
        assert prov["started"] <= prov["ended"] and prov["wall_seconds"] >= 0
        assert prov["sweep"] == {"experiment": "exp.toml", "point": point.index, "params": point.params}
        assert not {"started", "ended", "wall_seconds"} & set(summary)
    # metrics as rows, a column per point in sweep order labelled by its values, split to fit 100 columns
    printed = r.stdout.splitlines()
    assert printed[0].startswith("policy.name") and printed[1].startswith("workload.kind")

    def row_of(label):
        return [cell for x in printed if x.startswith(label + "  ") for cell in x[len(label):].split()]
    assert row_of("policy.name") == [p.params["policy.name"] for p in exp.points]
    assert row_of("workload.kind") == [p.params["workload.kind"] for p in exp.points]
    assert row_of("flushes") == [f"{row['flushes']:,}" for row in rows]
    assert max(map(len, printed)) <= 100 and not any(p.name in r.stdout for p in exp.points)


def test_each_point_runs_on_the_engine_its_config_names(tmp_path):
    path = write(tmp_path, "[machine]\ncpus = 3\nlast_pkmap = 16\n[workload]\nkmaps_per_cpu = 40\n"
                           "[sweep]\n'run.engine' = ['inline', 'distributed']\n")
    r = invoke("sweep", path, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    inline, distributed = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert inline["digest"] == distributed["digest"] and inline["run"] != distributed["run"]
    provs = [json.loads((tmp_path / "out" / row["run"] / "provenance.json").read_text()) for row in (inline, distributed)]
    assert [(p["engine"], p["processes"], p["hosts"]) for p in provs] == [("inline", 1, 1), ("distributed", 4, 1)]


def test_rerunning_a_finished_sweep_runs_nothing(tmp_path):
    path, out = write(tmp_path, SMALL), tmp_path / "out"
    assert invoke("sweep", path, "--out", out).exit_code == 0
    before, table = finished(out), (out / "results.csv").read_text()
    r = invoke("sweep", path, "--out", out)
    assert r.exit_code == 0 and "6 points: 0 run, 6 already finished" in r.stdout
    assert finished(out) == before  # provenance untouched: nothing ran again
    assert (out / "results.csv").read_text() == table
    # A changed config is a different point: only the new points run.
    r = invoke("sweep", path, "--out", out, "--set", "sweep.seed=[1, 2]")
    assert "12 points: 6 run, 6 already finished" in r.stdout


def test_same_config_same_summary_wall_time_only_in_provenance(tmp_path):
    path = write(tmp_path, SMALL)
    for out in ("a", "b"):
        assert invoke("sweep", path, "--out", tmp_path / out, "--set", "sweep.seed=[5]").exit_code == 0
    name = load_experiment(path, ["sweep.seed=[5]"]).points[0].name
    a, b = (tmp_path / d / name for d in ("a", "b"))
    assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()
    pa_, pb = (json.loads((d / "provenance.json").read_text()) for d in (a, b))
    assert pa_["started"] != pb["started"] and pa_["digest"] == pb["digest"]


def test_smpsim_run_writes_provenance_too(tmp_path):
    r = invoke("run", "--out", tmp_path / "r", "--set", "machine.cpus=2", "--set", "workload.kmaps_per_cpu=20")
    assert r.exit_code == 0, r.output
    prov = json.loads((tmp_path / "r" / "provenance.json").read_text())
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert prov["digest"] == summary["digest"] and prov["engine"] == "inline" and "sweep" not in prov


def test_a_point_the_model_stops_is_reported_and_not_rerun(tmp_path):
    # 4 CPUs holding 3 pages each can fill an 8-slot ring and all sleep: a deadlock (deterministic).
    path = write(tmp_path, "[machine]\ncpus = 4\n[workload]\nnesting = 3\nkmaps_per_cpu = 60\npages = 512\n"
                           "hold = 5000\n[sweep]\n'machine.last_pkmap' = [8, 64]\n")
    out = tmp_path / "out"
    err = user_error(invoke("sweep", path, "--out", out), code=1)
    assert "1 of 2 points" in err and "point 0 (error" in err and "deadlock" in err
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["error", "ok"] and rows[0]["kmaps"] is None
    assert "deadlock" in rows[0]["error"] and rows[1]["error"] is None
    r = invoke("sweep", path, "--out", out)
    assert r.exit_code == 1 and "2 points: 0 run, 2 already finished" in r.stdout and "deadlock" in r.stderr


def test_a_point_that_cannot_run_is_unfinished_and_the_others_go_on(tmp_path):
    path, out = write(tmp_path, SMALL), tmp_path / "out"
    first = load_experiment(path).points[0]
    (out / first.name).mkdir(parents=True)
    (out / first.name / "notes.txt").write_text("mine")  # not ours to delete
    err = user_error(invoke("sweep", path, "--out", out), code=1)
    assert "1 of 6 points" in err and "point 0 (unfinished:" in err and "notes.txt" in err
    assert (out / first.name / "notes.txt").read_text() == "mine"
    assert len(finished(out)) == 5


def test_killed_sweep_resumes_with_only_the_rest(tmp_path, smpsim_cmd, subprocess_env):
    text = SMALL.replace("kmaps_per_cpu = 60", "kmaps_per_cpu = 1500").replace("cpus = 2", "cpus = 4")
    path, out = write(tmp_path, text), tmp_path / "out"
    proc = subprocess.Popen([*smpsim_cmd, "sweep", str(path), "--out", str(out), "--jobs", "1"],
                            env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not finished(out):  # the first point has finished
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no point finished in 60 s"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, as an OOM kill or kill -9 would
    finally:
        proc.wait(10)
    done = finished(out)
    assert 1 <= len(done) < 6
    assert all(p["command"] == f"smpsim sweep {path} --out {out} --jobs 1" for p in done.values())
    r = invoke("sweep", path, "--out", out)
    assert r.exit_code == 0, r.output
    assert f"6 points: {6 - len(done)} run, {len(done)} already finished" in r.stdout
    after = finished(out)
    assert len(after) == 6 and all(after[name] == prov for name, prov in done.items())
    assert [row["status"] for row in pq.read_table(out / "results.parquet").to_pylist()] == ["ok"] * 6


def test_two_shards_and_collect_equal_the_whole_sweep(tmp_path):
    path = write(tmp_path, SMALL)
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert invoke("sweep", path, "--out", whole).exit_code == 0
    r = invoke("sweep", path, "--out", sharded, "--shard", "1/2")
    assert r.exit_code == 0 and "shard 1/2: 3 of 6 points: 3 run" in r.stdout
    assert "missing" not in r.stdout and (sharded / "results-shard-1-of-2.csv").exists()
    err = user_error(invoke("sweep", "--collect", sharded))
    assert "3 of the 6 points" in err and "points 0, 2, 4" in err
    assert invoke("sweep", path, "--out", sharded, "--shard", "0/2").exit_code == 0
    r = invoke("sweep", "--collect", sharded)
    assert r.exit_code == 0 and "6 points of" in r.stdout
    assert (sharded / "results.csv").read_text() == (whole / "results.csv").read_text()
    merged, full = (pq.read_table(d / "results.parquet") for d in (sharded, whole))
    assert merged.to_pylist() == full.to_pylist() and merged.schema == full.schema
    # A different sweep's shard in the same directory is refused.
    assert invoke("sweep", path, "--out", sharded, "--shard", "0/3", "--set", "seed=2").exit_code == 0
    assert "2 different sweeps" in user_error(invoke("sweep", "--collect", sharded))


# ------------------------------------------------------------------------------------------- kubernetes

def _container(path):
    yaml = pytest.importorskip("yaml")
    job = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Job")
    return job, job["spec"]["template"]["spec"]["containers"][0]


def test_kubernetes_indexed_job_runs_one_shard_per_index_then_collects(tmp_path):
    """The Indexed Job's pods, run here one index after another (the image's /opt/smpsim is this checkout,
    the volume a tmp dir, the experiment shrunk), then the collect Job, give the whole results table."""
    job, sweep = _container(ROOT / "deploy" / "kubernetes" / "sweep-job.yaml")
    _, collect = _container(ROOT / "deploy" / "kubernetes" / "sweep-collect.yaml")
    n = job["spec"]["completions"]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == n
    assert sweep["image"] == collect["image"] == "smpsim:analysis"  # sweeps write a results table: the analysis extra
    assert any(e["name"] == "JOB_COMPLETION_INDEX" for e in sweep["env"])
    args = sweep["args"]
    assert args[args.index("--shard") + 1] == f"$(JOB_COMPLETION_INDEX)/{n}"
    out = args[args.index("--out") + 1]
    assert collect["args"] == ["sweep", "--collect", out]

    def local(a):
        return a.replace("/opt/smpsim", str(ROOT)).replace(out, str(tmp_path / "runs"))

    shrink = ["--set", 'sweep.policy.name=["kmap-local"]', "--set", "workload.kmaps_per_cpu=100"]
    for index in range(n):
        r = invoke(*[local(a).replace("$(JOB_COMPLETION_INDEX)", str(index)) for a in args], *shrink)
        assert r.exit_code == 0, r.output
    r = invoke(*[local(a) for a in collect["args"]])
    assert r.exit_code == 0, r.output
    experiment = local(args[args.index("sweep") + 1])
    assert invoke("sweep", experiment, "--out", tmp_path / "whole", *shrink).exit_code == 0
    assert (tmp_path / "runs" / "results.csv").read_text() == (tmp_path / "whole" / "results.csv").read_text()
