import json
import subprocess
import sys
import tomllib
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from smpsim.trace.writer import digest_events
from tracegen import make_events
from cli_helpers import invoke, user_error



# ---------------------------------------------------------------------------------------------- config

def test_config_show_default_and_overrides():
    r = invoke("config", "show")
    assert r.exit_code == 0
    data = tomllib.loads(r.stdout)
    assert data["machine"]["cpus"] == 8 and data["policy"]["name"] == "linux-2.4"
    r = invoke("config", "show", "--set", "machine.cpus=3", "-s", "policy.name=eager")
    data = tomllib.loads(r.stdout)
    assert data["machine"]["cpus"] == 3 and data["policy"]["name"] == "eager"


def test_config_show_bad_override():
    err = user_error(invoke("config", "show", "--set", "machine.cpus"))
    assert "expected key=value" in err
    err = user_error(invoke("config", "show", "--set", "machine.cpuz=3"))
    assert "machine.cpuz: unknown key" in err


def test_config_check_ok_and_errors(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[machine]\ncpus = 2\n")
    r = invoke("config", "check", good)
    assert r.exit_code == 0 and r.stdout.strip() == "ok"
    bad = tmp_path / "bad.toml"
    bad.write_text("[machine]\ncpus = 0\ncolour = 1\n[tlb]\nways = 'x'\n")
    err = user_error(invoke("config", "check", bad))
    for loc in ("machine.cpus", "machine.colour: unknown key", "tlb.ways"):
        assert loc in err
    assert str(bad) in err
    user_error(invoke("config", "check", tmp_path / "missing.toml"))


def test_config_check_missing_script(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text("[workload]\nkind = 'script'\nscript = 'ops.jsonl'\n")
    err = user_error(invoke("config", "check", cfg))
    assert "ops.jsonl" in err and "not found" in err
    (tmp_path / "ops.jsonl").write_text('{"cpu": 0, "op": "compute", "cycles": 5}\n')
    assert invoke("config", "check", cfg).stdout.strip() == "ok"


def test_config_check_requires_argument():
    r = invoke("config", "check")
    assert r.exit_code == 2


# ---------------------------------------------------------------------------------------------- export

def make_run(path, n=120, summary=True):
    from smpsim.trace.rundir import write_summary
    from smpsim.trace.writer import TraceWriter

    events = make_events(n)
    w = TraceWriter(path, 50, True)
    w.write([dict(e) for e in events])
    digest = w.close()
    if summary:
        write_summary(path, {"status": "ok", "digest": digest, "trace": w.stats()})
    return events


def test_export_stdout_and_file(tmp_path):
    events = make_run(tmp_path / "run")
    r = invoke("export", tmp_path / "run", "--format", "jsonl")
    assert r.exit_code == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert len(lines) == len(events)
    assert digest_events(json.loads(line) for line in lines) == digest_events(events)
    out = tmp_path / "o.jsonl"
    r = invoke("export", tmp_path / "run", "--output", out)
    assert r.exit_code == 0 and r.stdout == ""
    assert out.read_text().splitlines() == lines


def test_export_truncated_run_warns(tmp_path):
    make_run(tmp_path / "run", summary=False)
    r = invoke("export", tmp_path / "run")
    assert r.exit_code == 0
    assert r.stderr.startswith("warning: ") and "truncated" in r.stderr
    assert len(r.stdout.splitlines()) == 120


def test_export_errors(tmp_path):
    err = user_error(invoke("export", tmp_path))
    assert "not a run directory" in err and str(tmp_path) in err
    user_error(invoke("export", tmp_path / "nope"))
    make_run(tmp_path / "run")
    part = tmp_path / "run" / "trace" / "part-00001.parquet"
    part.write_bytes(b"garbage")
    err = user_error(invoke("export", tmp_path / "run"))
    assert str(part) in err
    r = invoke("export", tmp_path / "run", "--format", "csv")
    assert r.exit_code == 2


# ---------------------------------------------------------------------------------------------- run

@dataclass
class FakeResult:
    summary: dict
    run_dir: Path | None


COUNTERS = {"kmaps": 16, "new_mappings": 9, "wraps": 2, "flushes": 2, "ipis": 6, "stale": 0, "sleeps": 1}


@pytest.fixture
def fake_engine(monkeypatch):
    """Stands in for smpsim.engines.inline so the CLI's side can be tested on its own."""
    mod = types.ModuleType("smpsim.engines.inline")
    calls = []

    def run(cfg, out_dir, progress=None):
        calls.append((cfg, out_dir))
        if mod.raise_ is not None:
            raise mod.raise_
        return FakeResult({"status": "ok", "digest": "ab" * 32, "counters": COUNTERS}, out_dir)

    mod.run, mod.raise_, mod.calls = run, None, calls
    monkeypatch.setitem(sys.modules, "smpsim.engines.inline", mod)
    return mod


def test_run_prints_summary(tmp_path, fake_engine):
    out = tmp_path / "run1"
    r = invoke("run", "--out", out, "--set", "machine.cpus=2")
    assert r.exit_code == 0, r.output
    cfg, out_dir = fake_engine.calls[0]
    assert cfg.machine.cpus == 2 and out_dir == out
    assert (out / "config.toml").exists()
    text = r.stdout
    for label, value in [("kmaps", "16"), ("new mappings", "9"), ("ring wraps", "2"), ("flushes", "2"),
                         ("IPIs", "6"), ("stale uses", "0"), ("sleeps", "1"), ("digest", "ab" * 32),
                         ("run dir", str(out))]:
        line = next(x for x in text.splitlines() if x.startswith(label))
        assert line.split()[-1] == value
    assert "\x1b[" not in text  # no colours when stdout is not a terminal


def test_run_default_run_dir(tmp_path, fake_engine, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("run")
    assert r.exit_code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert fake_engine.calls[0][1] == Path("runs") / run_dir.name
    stamp, hash8 = run_dir.name.rsplit("-", 1)
    assert len(hash8) == 8 and len(stamp) == 15


def test_run_refuses_a_used_directory(tmp_path, fake_engine):
    (tmp_path / "summary.json").write_text("{}")
    err = user_error(invoke("run", "--out", tmp_path))
    assert str(tmp_path) in err and not fake_engine.calls


def test_run_config_errors_exit_2(tmp_path, fake_engine):
    user_error(invoke("run", tmp_path / "missing.toml"))
    err = user_error(invoke("run", "--set", "tlb.ways=5", "--set", "machine.cpus=-1"))
    assert "tlb" in err and "machine.cpus" in err
    assert not fake_engine.calls


def test_run_model_bug_exits_1_and_names_the_trace(tmp_path, fake_engine):
    from smpsim.model.errors import DeadlockError, ModelError

    fake_engine.raise_ = ModelError(3, "kunmap", 7, "kunmap_high: count would reach 0", t=1234)
    err = user_error(invoke("run", "--out", tmp_path / "r"), code=1)
    assert "BUG" in err and "CPU 3" in err and str(tmp_path / "r") in err
    fake_engine.raise_ = DeadlockError(99, [0, 1], "all 4 slots held")
    err = user_error(invoke("run", "--out", tmp_path / "r2"), code=1)
    assert "deadlock" in err


def test_run_workload_error_exits_2(tmp_path, fake_engine):
    from smpsim.model.workloads import WorkloadError

    fake_engine.raise_ = WorkloadError("ops.jsonl:3: unknown op \"kmapp\"")
    err = user_error(invoke("run", "--out", tmp_path / "r"), code=2)
    assert "ops.jsonl:3" in err


def test_run_internal_error_has_no_traceback(tmp_path, fake_engine):
    fake_engine.raise_ = RuntimeError("something broke")
    err = user_error(invoke("run", "--out", tmp_path / "r"), code=1)
    assert "internal error" in err and "something broke" in err


# ---------------------------------------------------------------------------------------------- process level

def smpsim(args, env, cwd):
    p = subprocess.run([sys.executable, "-m", "smpsim", *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=cwd, timeout=120)
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    return p


@pytest.mark.parametrize("args", [
    ["config", "show", "--set", "nonsense"],
    ["config", "check", "/nonexistent.toml"],
    ["export", "/"],
    ["run", "--set", "machine.cpus=many"],
    ["bogus-command"],
    ["run", "--no-such-option"],
])
def test_bad_input_exit_2_without_traceback(args, subprocess_env, tmp_path):
    p = smpsim(args, subprocess_env, tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip()


def test_no_args_shows_help(subprocess_env, tmp_path):
    p = smpsim([], subprocess_env, tmp_path)
    assert "Usage" in p.stdout + p.stderr
    assert "run" in p.stdout + p.stderr


def test_real_run_end_to_end(subprocess_env, tmp_path):
    pytest.importorskip("smpsim.engines.inline")
    out = tmp_path / "run"
    p = smpsim(["run", "--out", out, "--set", "machine.cpus=2", "--set", "workload.kmaps_per_cpu=40",
                "--set", "trace.part_events=500"], subprocess_env, tmp_path)
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["digest"] in p.stdout
    assert "kmaps" in p.stdout and "80" in p.stdout
    e = smpsim(["export", out, "--format", "jsonl"], subprocess_env, tmp_path)
    assert e.returncode == 0, e.stderr
    events = [json.loads(line) for line in e.stdout.splitlines()]
    assert digest_events(events) == summary["digest"]
    assert [ev["seq"] for ev in events] == list(range(len(events)))


def test_real_script_errors(subprocess_env, tmp_path):
    pytest.importorskip("smpsim.engines.inline")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[machine]\ncpus = 2\n[workload]\nkind = 'script'\nscript = 'ops.jsonl'\n")
    (tmp_path / "ops.jsonl").write_text('{"cpu": 0, "op": "kmapp", "page": 1}\n')
    p = smpsim(["run", cfg, "--out", tmp_path / "r1"], subprocess_env, tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "kmapp" in p.stderr
    (tmp_path / "ops.jsonl").write_text('{"cpu": 0, "op": "kunmap", "page": 1}\n')
    p = smpsim(["run", cfg, "--out", tmp_path / "r2"], subprocess_env, tmp_path)
    assert p.returncode == 1 and p.stderr.startswith("error: ")
    assert str(tmp_path / "r2") in p.stderr


def test_real_run_without_trace(subprocess_env, tmp_path):
    pytest.importorskip("smpsim.engines.inline")
    out = tmp_path / "run"
    args = ["run", "--set", "machine.cpus=2", "--set", "workload.kmaps_per_cpu=30"]
    p = smpsim([*args, "--out", out, "--set", "trace.enabled=false"], subprocess_env, tmp_path)
    assert p.returncode == 0, p.stderr
    q = smpsim([*args, "--out", tmp_path / "traced"], subprocess_env, tmp_path)
    digests = [json.loads((d / "summary.json").read_text())["digest"] for d in (out, tmp_path / "traced")]
    assert digests[0] == digests[1]
    assert q.returncode == 0 and not (out / "trace").exists()
    e = smpsim(["export", out], subprocess_env, tmp_path)
    assert e.returncode == 2 and "no trace" in e.stderr
