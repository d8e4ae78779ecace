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
    err = user_error(invoke("config", "check"))
    assert err == "error: missing argument 'config' (`smpsim config check --help` shows the usage)\n"


def test_config_check_reports_every_bad_script_line(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text("[machine]\ncpus = 2\n[workload]\nkind = 'script'\nscript = 'ops.jsonl'\n")
    ops = tmp_path / "ops.jsonl"
    ops.write_text('{"cpu": 0, "op": "kmap", "page": 1}\n'
                   '{"cpu": 0, "op": "kmapp", "page": 1}\n'
                   '# a comment\n'
                   'not json\n'
                   '{"cpu": 1, "op": "access", "page": 2}\n'
                   '{"cpu": 7, "op": "compute", "cycles": 3}\n'
                   '{"cpu": 0, "op": "kunmap", "page": 1}\n')
    err = user_error(invoke("config", "check", cfg))
    assert f"{ops}:2: unknown op \"kmapp\"" in err
    assert f"{ops}:4: not valid JSON" in err
    assert f"{ops}:5: op \"access\" on page 2, which CPU 1 has not kmapped" in err
    assert f"{ops}:6: cpu 7 is out of range" in err
    assert f"{ops}:1:" not in err and f"{ops}:7:" not in err  # the good lines are not blamed


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
    err = user_error(invoke("export", tmp_path / "run", "--format", "csv"))
    assert "'csv' is not one of 'jsonl', 'chrome'" in err and "`smpsim export --help`" in err


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


SWEEP = """[machine]\ncpus = 2\n[workload]\nkmaps_per_cpu = 10\n
[sweep]\n"policy.name" = ["linux-2.4", "eager"]\n"machine.last_pkmap" = [16, 32, 64]\n"""


@pytest.mark.parametrize("command", [["run"], ["launch", "--config"]])
def test_run_and_launch_refuse_a_sweep_file(tmp_path, fake_engine, command):
    exp = tmp_path / "exp.toml"
    exp.write_text(SWEEP)
    err = user_error(invoke(*command, exp, "--out", tmp_path / "r"))
    assert err == (f"error: {exp} is an experiment: its [sweep] table makes 6 points (policy.name x "
                   f"machine.last_pkmap). Run them all with `smpsim sweep {exp}`, or one with --point N (0 to 5, "
                   "in the order `smpsim sweep` lists them)\n")
    assert not fake_engine.calls and not (tmp_path / "r").exists()


def test_run_point_of_a_sweep_file(tmp_path, fake_engine):
    from smpsim.experiments.sweep import load_experiment

    exp = tmp_path / "exp.toml"
    exp.write_text(SWEEP)
    r = invoke("run", exp, "--point", "4", "--out", tmp_path / "r")
    assert r.exit_code == 0, r.output
    cfg = fake_engine.calls[0][0]
    assert load_experiment(exp).points[4].params == {"policy.name": "eager", "machine.last_pkmap": 32}
    assert (cfg.policy.name, cfg.machine.last_pkmap) == ("eager", 32)
    err = user_error(invoke("run", exp, "--point", "6", "--out", tmp_path / "r2"))
    assert "--point 6: the sweep has points 0 to 5" in err
    plain = tmp_path / "plain.toml"
    plain.write_text("[machine]\ncpus = 2\n")
    err = user_error(invoke("run", plain, "--point", "0", "--out", tmp_path / "r3"))
    assert "--point 0: the file has no [sweep] table" in err
    assert len(fake_engine.calls) == 1


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


@pytest.mark.parametrize("args, message", [
    (["config", "show", "--set", "nonsense"], "'nonsense': expected key=value"),
    (["config", "check", "/nonexistent.toml"], "/nonexistent.toml):\n  - file not found"),
    (["export", "/"], "/: not a run directory"),
    (["run", "--set", "machine.cpus=many"], "machine.cpus: Input should be a valid integer"),
    (["bogus-command"], "no such command 'bogus-command' (`smpsim --help` shows the usage)"),
    (["run", "--no-such-option"], "no such option: --no-such-option (`smpsim run --help` shows the usage)"),
    (["config", "check"], "missing argument 'config' (`smpsim config check --help` shows the usage)"),
    (["launch", "--cpus", "two"], "invalid value for '--cpus' / '-n'"),
    (["run", "--point", "-"], "invalid value for '--point'"),
    (["run", "--engine", "bogus"], "invalid value for '--engine': 'bogus' is not one of 'inline', 'distributed' ("),
    (["sweep", "--shard", "4/4", "configs/ring-size.toml"], "--shard '4/4': expected I/N with 0 <= I < N"),
])
def test_usage_mistakes_are_one_error_paragraph(args, message, subprocess_env, tmp_path):
    """What the user sees: exit 2, stderr one `error: ...` paragraph saying what is wrong, nothing else."""
    p = smpsim(args, subprocess_env, tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: ") and message in p.stderr, p.stderr
    assert "\n\n" not in p.stderr.strip() and "Usage:" not in p.stderr and "╭" not in p.stderr
    assert p.stdout == ""


def test_no_args_shows_help(subprocess_env, tmp_path):
    p = smpsim([], subprocess_env, tmp_path)
    assert p.returncode == 2
    assert "Usage: smpsim" in p.stdout
    for command in ("run", "launch", "sweep", "analyze", "compare", "query", "export", "config"):
        assert f" {command} " in p.stdout, command


def summary_lines(stdout: str) -> dict[str, str]:
    """The printed summary as label -> value (the last word of each line)."""
    return {line.rsplit(None, 1)[0].strip(): line.rsplit(None, 1)[1] for line in stdout.splitlines() if line.strip()}


def test_real_run_end_to_end(subprocess_env, tmp_path):
    out = tmp_path / "run"
    p = smpsim(["run", "--out", out, "--set", "machine.cpus=2", "--set", "workload.kmaps_per_cpu=40",
                "--set", "trace.part_events=500", "--set", "machine.last_pkmap=16"], subprocess_env, tmp_path)
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    shown = summary_lines(p.stdout)
    assert shown["kmaps"] == "80"  # 2 CPUs x 40 kmaps
    c = summary["counters"]
    assert c["wraps"] > 0  # a 16-slot ring wraps: the figures below are not all zero
    for label, key in [("new mappings", "new_mappings"), ("ring wraps", "wraps"), ("flushes", "flushes"),
                       ("IPIs sent", "ipis"), ("stale uses", "stale"), ("sleeps on pkmap_map_wait", "sleeps")]:
        assert shown[label] == f"{c[key]:,}", label
    assert shown["digest"] == summary["digest"] and shown["run dir"] == str(out)
    e = smpsim(["export", out, "--format", "jsonl"], subprocess_env, tmp_path)
    assert e.returncode == 0, e.stderr
    events = [json.loads(line) for line in e.stdout.splitlines()]
    assert digest_events(events) == summary["digest"]
    assert [ev["seq"] for ev in events] == list(range(len(events)))


def test_real_script_errors(subprocess_env, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[machine]\ncpus = 2\n[workload]\nkind = 'script'\nscript = 'ops.jsonl'\n")
    (tmp_path / "ops.jsonl").write_text('{"cpu": 0, "op": "kmapp", "page": 1}\n')
    p = smpsim(["run", cfg, "--out", tmp_path / "r1"], subprocess_env, tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and f"{tmp_path / 'ops.jsonl'}:1: unknown op" in p.stderr
    assert not (tmp_path / "r1").exists()  # failed before simulating: no run directory left behind
    p = smpsim(["run", cfg], subprocess_env, tmp_path)
    assert p.returncode == 2 and "unknown op" in p.stderr
    p = smpsim(["launch", "--config", cfg], subprocess_env, tmp_path)
    assert p.returncode == 2 and "unknown op" in p.stderr
    assert not list(tmp_path.glob("runs/*"))
    (tmp_path / "ops.jsonl").write_text('{"cpu": 0, "op": "kunmap", "page": 1}\n')
    p = smpsim(["run", cfg, "--out", tmp_path / "r2"], subprocess_env, tmp_path)
    assert p.returncode == 1 and p.stderr.startswith("error: ")
    assert str(tmp_path / "r2") in p.stderr


def test_real_run_without_trace(subprocess_env, tmp_path):
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


@pytest.mark.timeout(60)
def test_help_into_a_pipe_closed_early_is_quiet(subprocess_env, smpsim_cmd):
    """`smpsim bench --help | head -1` where head has gone: the write fails (EPIPE); no traceback on stderr."""
    import os
    for args in (["bench", "--help"], ["--help"]):
        r, w = os.pipe()
        os.close(r)  # the reader is gone before anything is written
        p = subprocess.Popen([*smpsim_cmd, *args], stdout=w, stderr=subprocess.PIPE, env=subprocess_env)
        os.close(w)
        _, err = p.communicate(timeout=30)
        assert "Traceback" not in err.decode(), err.decode()[-2000:]
