"""The Python API (smpsim.run, smpsim.open_run, smpsim.sweep): what a notebook sees."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import smpsim
from smpsim.trace.errors import TraceError

SMALL = {"machine": {"cpus": 3, "last_pkmap": 16},
         "workload": {"kind": "shared", "kmaps_per_cpu": 40, "pages": 64, "hot_pages": 8}}


def test_run_without_a_directory_keeps_its_events_until_closed():
    run = smpsim.run(SMALL, engine="inline", overrides={"policy.name": "eager"})
    path = run.path
    assert path.is_dir() and run.summary["status"] == "ok"
    c = run.summary["counters"]
    assert c["kmaps"] == 120 and run.summary["policy"] == "eager"
    events = run.events
    assert isinstance(events, pa.Table)
    assert events.num_rows == run.summary["events"]
    assert events.column("seq").to_pylist() == list(range(events.num_rows))
    assert events.column("ev").to_pylist().count("kmap") == c["kmaps"]
    assert sum(1 for e in events.column("ev").to_pylist() if e == "ipi") == c["ipis"] > 0
    got = run.sql("SELECT ev, count(*) AS n FROM events GROUP BY ev ORDER BY ev")
    assert isinstance(got, pa.Table)
    counts = dict(zip(got.column("ev").to_pylist(), got.column("n").to_pylist()))
    assert counts["kmap"] == c["kmaps"] and counts["flush"] == c["flushes"]
    from smpsim.analysis.query import QueryError

    with pytest.raises(QueryError, match="no_such_column"):
        run.sql("SELECT no_such_column FROM events")
    a = run.analyze()
    assert a["counters"] == c
    run.close()
    assert not path.exists()


def test_a_dropped_run_removes_its_temporary_directory():
    run = smpsim.run(SMALL)
    path = run.path
    del run
    gc.collect()
    assert not path.exists()


def test_run_with_a_directory_equals_the_cli_run(tmp_path, smpsim_cmd, subprocess_env):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[machine]\ncpus = 2\nlast_pkmap = 16\n[workload]\nkmaps_per_cpu = 30\n")
    with smpsim.run(cfg, overrides=["policy.name=linux-2.6"], out=tmp_path / "api") as run:
        assert run.path == tmp_path / "api"
    assert (tmp_path / "api" / "summary.json").exists()  # kept: the directory is the caller's
    p = subprocess.run([*smpsim_cmd, "run", cfg, "--set", "policy.name=linux-2.6", "--out", tmp_path / "cli"],
                       capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert p.returncode == 0, p.stderr
    cli = smpsim.open_run(tmp_path / "cli")
    assert cli.summary["digest"] == smpsim.open_run(tmp_path / "api").summary["digest"]
    assert cli.summary["counters"] == run.summary["counters"]
    assert cli.config.policy.name == "linux-2.6"


def test_open_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(TraceError, match="not a run directory"):
        smpsim.open_run(tmp_path)


def test_a_failed_run_carries_the_run_up_to_the_failure(tmp_path):
    from smpsim.model.errors import ModelError

    (tmp_path / "ops.jsonl").write_text('{"cpu": 0, "op": "kmap", "page": 1}\n'
                                        '{"cpu": 0, "op": "kunmap", "page": 1}\n'
                                        '{"cpu": 1, "op": "kunmap", "page": 1}\n')
    cfg = {"machine": {"cpus": 2}, "workload": {"kind": "script", "script": str(tmp_path / "ops.jsonl")}}
    with pytest.raises(ModelError) as e:
        smpsim.run(cfg)
    assert e.value.run.summary["status"] == "error"
    assert "kmap" in e.value.run.events.column("ev").to_pylist()
    e.value.run.close()


def test_a_bad_script_fails_before_any_directory_is_made(tmp_path):
    from smpsim.model.workloads import WorkloadError

    (tmp_path / "ops.jsonl").write_text('{"cpu": 0, "op": "map", "page": 1}\n')
    cfg = {"workload": {"kind": "script", "script": str(tmp_path / "ops.jsonl")}}
    with pytest.raises(WorkloadError, match="ops.jsonl:1: unknown op"):
        smpsim.run(cfg, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_sweep_returns_the_results_table(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text('[machine]\ncpus = 2\nlast_pkmap = 16\n[workload]\nkmaps_per_cpu = 20\n'
                   '[sweep]\n"policy.name" = ["linux-2.4", "eager"]\n')
    table = smpsim.sweep(exp, out=tmp_path / "sw", jobs=1)
    rows = table.to_pylist()
    assert [r["policy.name"] for r in rows] == ["linux-2.4", "eager"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for r in rows:
        summary = json.loads((tmp_path / "sw" / r["run"] / "summary.json").read_text())
        assert r["ipis"] == summary["counters"]["ipis"] and r["digest"] == summary["digest"]


def test_import_is_light():
    """`import smpsim` and a run import no analysis library (a CPU process never needs them)."""
    code = ("import sys, smpsim\n"
            "heavy = ('duckdb', 'matplotlib', 'numpy', 'pyarrow', 'zmq', 'pydantic')\n"
            "print([m for m in heavy if m in sys.modules])\n"
            "smpsim.run({'machine': {'cpus': 2}, 'workload': {'kmaps_per_cpu': 5}}).close()\n"
            "print([m for m in ('duckdb', 'matplotlib') if m in sys.modules])\n")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["[]", "[]"]


def test_both_engines_through_the_api():
    runs = [smpsim.run(SMALL, engine=engine, overrides={"policy.name": "linux-2.6"})
            for engine in ("inline", "distributed")]
    assert runs[0].summary["engine"] == "inline" and runs[1].summary["engine"] == "distributed"
    assert runs[0].summary["digest"] == runs[1].summary["digest"]
    assert runs[0].events.equals(runs[1].events)
    for run in runs:
        run.close()


def test_the_readme_example_names_only_real_api():
    """Every smpsim.X and run.X the README's Python example uses exists, with the keywords it passes."""
    import ast
    import inspect
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme[readme.index("## Python API"):], re.S)[:1]
    tree = ast.parse(code)
    used = {(n.value.id, n.attr) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    assert ("smpsim", "run") in used and ("run", "sql") in used
    for owner, attr in used:
        assert hasattr(smpsim if owner == "smpsim" else smpsim.Run, attr), f"{owner}.{attr}"
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and getattr(n.func.value, "id", None) == "smpsim"):
        params = inspect.signature(getattr(smpsim, call.func.attr)).parameters
        assert {k.arg for k in call.keywords} <= set(params), call.func.attr


def test_a_run_in_a_notebook_prints_one_line_and_gives_its_events_to_pandas():
    import pandas as pd

    with smpsim.run(SMALL, overrides={"policy.name": "eager"}) as run:
        c = run.summary["counters"]
        text = repr(run)
        assert text.startswith("<smpsim.Run eager, shared, 3 CPUs: ok; ") and "\n" not in text
        assert f"kmaps {c['kmaps']:,}" in text and str(run.path) in text and run.summary["digest"][:12] in text
        assert len(text) < 250 and "seq" not in text  # a summary, not the columns
        df = run.events.to_pandas()
        assert isinstance(df, pd.DataFrame) and len(df) == run.summary["events"]
        assert int((df["ev"] == "ipi").sum()) == c["ipis"] and list(df["seq"]) == list(range(len(df)))
        assert (run.path / "summary.json").is_file()
    assert "run directory" in smpsim.Run.path.__doc__
