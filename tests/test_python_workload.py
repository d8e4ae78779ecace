"""workload.kind = "python": a generator function from the user's file yields each CPU's ops
(docs/workloads.md, "Generator workloads")."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.compute as pc
import pytest

import smpsim
from smpsim import api, workload_files
from smpsim.config import ConfigError
from smpsim.model import generator, workloads
from smpsim.model.errors import ModelError
from smpsim.model.messages import ACCESS, COMPUTE, KUNMAP_MIGRATED

GEN = textwrap.dedent('''\
    import itertools


    def handoff(cpu, rng, cfg):
        """Neighbouring CPUs share pages, so slots move between CPUs."""
        w = cfg.workload
        for _ in range(w.kmaps_per_cpu):
            page = (cpu + rng.randrange(2)) * 7 % w.pages
            yield ("compute", rng.randrange(2 * w.think + 1))
            yield ("kmap", page)
            yield ("access", page, w.access_burst, rng.random() < w.write_fraction)
            yield ("kunmap", page)


    def forever(cpu, rng, cfg):
        for i in itertools.count():
            yield ("compute", i)


    def bad_op(cpu, rng, cfg):
        yield ("compute", 10)
        yield ("kmap", 3)
        if cpu == 1:
            yield ("kmap", -1)
        yield ("kunmap", 3)


    def raises(cpu, rng, cfg):
        yield ("compute", 10)
        raise RuntimeError("out of ideas")


    def migrated(cpu, rng, cfg):
        # CPU 1 kunmaps the page CPU 0 kmaps (the task migrated), earlier than CPU 0 gets to kmap it
        if cpu == 0:
            yield ("compute", 50_000)
            yield ("kmap", 5)
        else:
            yield ("kunmap_migrated", 5)


    not_a_function = 42
    ''')


def _cfg(tmp_path: Path, func: str = "handoff", **over) -> smpsim.config.Config:
    (tmp_path / "gen.py").write_text(GEN)
    (tmp_path / "gen.toml").write_text(f'[machine]\ncpus = 3\nlast_pkmap = 16\n\n[workload]\nkind = "python"\n'
                                       f'generator = "gen.py:{func}"\nkmaps_per_cpu = 60\n')
    return api.load(tmp_path / "gen.toml", over)


def _line(text: str) -> int:
    return next(i for i, line in enumerate(GEN.splitlines(), 1) if text in line)


def test_the_ops_follow_from_the_seed(tmp_path):
    cfg = _cfg(tmp_path)
    ops = [workloads.build_cpu(cfg, c)[0] for c in range(3)]
    assert ops == [workloads.build_cpu(_cfg(tmp_path), c)[0] for c in range(3)]
    assert len(ops[0]) == 4 * 60 and ops[0] != ops[1]  # each CPU its own stream
    assert [op[0] for op in ops[0][:4]] == ["compute", "kmap", "access", "kunmap"]  # as the generator wrote them
    assert [workloads.build_cpu(_cfg(tmp_path, seed=2), c)[0] for c in range(3)] != ops


def test_the_generator_is_consumed_as_the_cpu_runs(tmp_path):
    """A generator that never ends: the program holds a window of it, not all of it."""
    prog = workloads.program(_cfg(tmp_path, "forever"), 0)
    for pc in range(0, 200_000, 50):  # as a CPU consumes it, 64 ops ahead
        assert prog.fill(pc, 64)
    assert prog.ops[pc + 10 - prog.base] == (COMPUTE, pc + 10)  # the model's form: kind first
    assert len(prog.ops) < 2_000


def test_inline_and_distributed_give_the_same_digest(tmp_path):
    cfg = _cfg(tmp_path)
    with smpsim.run(cfg, engine="inline") as a, smpsim.run(cfg, engine="distributed") as b:
        assert a.summary["status"] == b.summary["status"] == "ok"
        assert a.summary["counters"]["kmaps"] == 3 * 60
        assert a.summary["digest"] == b.summary["digest"]


def test_an_op_is_checked_into_the_models_form():
    """What a generator yields (code first, a tuple or a list) the model holds kind first."""
    assert generator.check_op(["access", 3, 2, True]) == (ACCESS, 3, 2, True)
    assert generator.check_op(("kunmap_migrated", 5)) == (KUNMAP_MIGRATED, 5)
    assert generator.check_op(("kmapp", 5)).startswith("unknown op 'kmapp'")


def test_a_bad_op_stops_the_run_naming_cpu_index_file_and_line(tmp_path):
    with pytest.raises(ModelError) as e:
        smpsim.run(_cfg(tmp_path, "bad_op"))
    text = str(e.value)
    assert "CPU 1, operation #2" in text and "('kmap', -1): page must be an integer >= 0" in text
    yield_line = _line('yield ("kmap", -1)')
    assert f"gen.py:{yield_line})" in text
    assert e.value.run.summary["status"] == "error"


def test_an_exception_in_the_generator_names_its_line(tmp_path):
    with pytest.raises(ModelError, match=rf"CPU 0, operation #1 .*RuntimeError: out of ideas .*gen\.py:"
                                         rf"{_line('out of ideas')}\)"):
        smpsim.run(_cfg(tmp_path, "raises"))


def test_cli_errors(tmp_path, subprocess_env):
    _cfg(tmp_path)

    def smpsim_(*args):
        return subprocess.run([sys.executable, "-m", "smpsim", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=subprocess_env, timeout=60)

    ok = smpsim_("config", "check", "gen.toml")
    assert (ok.returncode, ok.stdout) == (0, "ok\n"), ok.stderr
    missing = smpsim_("config", "check", "gen.toml", "--set", 'workload.generator="gen.py:nope"')
    assert missing.returncode == 2 and "no 'nope' in" in missing.stderr and "it defines" in missing.stderr
    odd = smpsim_("run", "gen.toml", "--set", 'workload.generator="gen.py:not_a_function"', "--out", "r")
    assert odd.returncode == 2 and "is not a function" in odd.stderr and not (tmp_path / "r").exists()
    bad = smpsim_("run", "gen.toml", "--set", 'workload.generator="gen.py:bad_op"', "--out", "r2")
    assert bad.returncode == 1 and bad.stderr.startswith("error: the workload stopped the run: CPU 1")
    assert "Traceback" not in bad.stderr


def test_a_migrated_kunmap_waits_for_its_kmap(tmp_path):
    """kunmap_migrated before the kmap it pairs with (in the model's timing) waits for it, no BUG."""
    with smpsim.run(_cfg(tmp_path, "migrated", **{"machine.cpus": 2})) as run:
        assert run.summary["status"] == "ok"
        ev = run.events
        kmap = ev.filter(pc.equal(ev["ev"], "kmap")).to_pylist()
        kunmap = ev.filter(pc.equal(ev["ev"], "kunmap")).to_pylist()
        assert [(e["cpu"], e["page"]) for e in kmap] == [(0, 5)]
        assert [(e["cpu"], e["page"], e["count"]) for e in kunmap] == [(1, 5, 1)]
        assert kunmap[0]["t"] > kmap[0]["t"] >= 50_000


def test_the_hash_pins_the_file_and_a_cpu_checks_its_copy(tmp_path):
    cfg = _cfg(tmp_path)
    shipped = workload_files.shipped(cfg)
    assert shipped["workload"]["generator"] == f"{tmp_path.resolve() / 'gen.py'}:handoff"
    on_cpu = smpsim.config.validate(shipped)  # as a CPU process gets it: absolute path, the coordinator's hash
    workload_files.check_copy(on_cpu)
    (tmp_path / "gen.py").write_text(GEN + "\n# edited\n")
    with pytest.raises(workload_files.CopyMismatch, match="gen.py.* has SHA-256 .*but the coordinator"):
        workload_files.check_copy(on_cpu)
    with pytest.raises(ConfigError, match="the file changed since"):
        api.load(tmp_path / "gen.toml", {"workload.sha256": cfg.workload.sha256})
