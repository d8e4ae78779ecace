"""Policies from outside the package (issue 17 item 1): specs, entry points, smpsim.run(policy=...), the
guard of the contract, provenance, and every engine, checked against the built-ins themselves: a copy of
each built-in policy in a user's file simulates exactly what the built-in does."""

from __future__ import annotations

import inspect
import json
import signal
import subprocess
import textwrap
from pathlib import Path

import psutil
import pytest

import smpsim
from cli_helpers import invoke, user_error
from pinned_cases import config_for, observe
from smpsim.config import ConfigError, load_config, validate
from smpsim.engines import inline
from smpsim.model import policies
from smpsim.model.errors import PolicyError
from smpsim.trace.rundir import config_hash

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_counters.json").read_text())


def copy_of_builtins(path: Path) -> Path:
    """Every built-in policy class, its source copied as it is into one user file (bases first, as the
    registry lists them), deriving from the public base class."""
    parts = ["from __future__ import annotations", "from smpsim import Flush, Policy as FlushPolicy",
             "from smpsim.model.policies import VMALLOC_AREA_PAGES, fls, lazy_max_pages, next_tick", ""]
    parts += [inspect.getsource(cls) for cls in policies.POLICIES.values()]
    path.write_text("\n\n".join(parts))
    return path


def with_policy(case: dict, tmp: Path, name: str):
    cfg = config_for(case, tmp)
    data = cfg.model_dump(mode="json", exclude_none=True)
    data["policy"]["name"] = name
    return validate({**data, "base_dir": cfg.base_dir or str(tmp)})


# One pinned case per policy (the 4-CPU shared workload), and the ones that sleep on a small ring.
COPY_CASES = [f"{p}-shared-4cpu" for p in policies.POLICY_NAMES] + [
    "sleeps-small-ring-vmap-lazy", "sleeps-small-ring-latr", "linux-2.6-range"]


@pytest.mark.parametrize("name", COPY_CASES)
def test_a_user_file_copy_of_a_built_in_simulates_the_same(name, tmp_path):
    case = PINNED[name]
    builtin = case["config"]["policy"]["name"]
    src = copy_of_builtins(tmp_path / "copies.py")
    cls_name = policies.POLICIES[builtin].__name__
    cfg = with_policy(case, tmp_path, f"copies.py:{cls_name}")
    assert cfg.policy.sha256 and cfg.policy.name == f"copies.py:{cls_name}"
    mine = inline.run(cfg).summary
    want = inline.run(config_for(case, tmp_path)).summary
    assert observe(mine) == case["expect"] == observe(want)
    assert mine["digest"] == want["digest"]
    assert mine["policy"] == builtin and mine["policy_spec"] == cfg.policy.name  # its own name, and its spec
    assert src.exists()


@pytest.mark.timeout(180)
def test_a_user_copy_runs_in_the_distributed_engine_and_after_a_respawn(tmp_path, smpsim_cmd, subprocess_env):
    """launch (forked CPU processes) gives the inline digest; a CPU process killed mid-run is replaced by
    one that makes the user's policy again and the run still gives that digest."""
    copy_of_builtins(tmp_path / "copies.py")
    spec = f"{tmp_path / 'copies.py'}:TlbGen"  # tracks holds: the hook runs at every kmap
    sets = ["machine.cpus=4", "workload.kmaps_per_cpu=1500", "workload.kind=shared", "trace.part_events=5000",
            f"policy.name={spec}"]
    want = inline.run(smpsim.load(None, sets)).summary
    assert want["digest"] == inline.run(smpsim.load(None, [*sets[:-1], "policy.name=tlb-gen"])).summary["digest"]
    run = tmp_path / "run"
    proc = subprocess.Popen([*smpsim_cmd, "launch", "--out", str(run), "--checkpoint-every", "1500",
                             *[x for s in sets for x in ("--set", s)]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    try:
        from proc_helpers import wait_for

        def text(name: str) -> str:
            try:
                return (run / "logs" / name).read_text()
            except OSError:
                return ""

        wait_for(lambda: '"checkpoint"' in text("coordinator.log.jsonl") and '"joining"' in text("cpu-1.log.jsonl"),
                 90, "a checkpoint")
        pid = [json.loads(x)["pid"] for x in text("cpu-1.log.jsonl").splitlines() if '"joining"' in x][-1]
        psutil.Process(pid).send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["digest"] == want["digest"] and summary["faults"]["first"][0]["kind"] == "cpu respawned"
    assert "tlb-gen" in stdout  # the policy's own name in the printed summary


class Mine(smpsim.Policy):
    """Defined in a test module: smpsim.run(policy=Mine) runs it, in-process and in forked CPU processes."""
    name = "mine"

    def wrap_flush(self, torn, cpu):
        return self.flush("range", range(self.last_pkmap), self.others(cpu), len(torn)) if torn else None


@pytest.mark.timeout(120)
def test_python_api_takes_a_class(tmp_path):
    sets = {"machine.cpus": 3, "workload.kmaps_per_cpu": 200, "machine.last_pkmap": 32}
    with smpsim.run(None, overrides=sets, policy=Mine) as a, \
            smpsim.run(None, overrides=sets, policy=policies.Linux26) as b, \
            smpsim.run(None, overrides=sets, policy=Mine, engine="distributed") as c:
        assert a.summary["digest"] == b.summary["digest"] == c.summary["digest"]
        assert a.summary["policy"] == "mine" and a.summary["policy_spec"] == f"{__name__}:Mine"
        assert b.summary["policy"] == "linux-2.6" and "policy_spec" not in b.summary  # a built-in class


def test_entry_point_names_resolve(tmp_path, monkeypatch):
    pkg = tmp_path / "smpsim_lab_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from smpsim import Policy\n\nclass Lab(Policy):\n    name = 'lab'\n")
    dist = tmp_path / "smpsim_lab_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: smpsim-lab-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[smpsim.policies]\nlab-policy = smpsim_lab_pkg:Lab\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = validate({"policy": {"name": "lab-policy"}, "workload": {"kmaps_per_cpu": 20}})
    assert cfg.policy.sha256 == policies.resolve("lab-policy").sha256 is not None
    assert inline.run(cfg).summary["policy"] == "lab"
    with pytest.raises(ConfigError, match="lab-policy"):  # listed among the names it knows
        validate({"policy": {"name": "lab-polic"}})


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


CONFIG = "[machine]\ncpus = 2\nlast_pkmap = 16\n[workload]\nkmaps_per_cpu = 60\npages = 100\n"


def test_the_config_hash_covers_the_source(tmp_path):
    """Editing the file is a new config (a sweep runs the point again); the hash is in config.toml and
    provenance.json."""
    pol = write(tmp_path / "pol.py", "from smpsim import Policy\nclass P(Policy):\n    name = 'p'\n")
    conf = write(tmp_path / "c.toml", CONFIG + "[policy]\nname = 'pol.py:P'\n")
    first = load_config(conf)
    pol.write_text(pol.read_text() + "# a comment is an edit too\n")
    second = load_config(conf)
    assert first.policy.sha256 != second.policy.sha256 and config_hash(first) != config_hash(second)
    r = invoke("run", conf, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert f'sha256 = "{second.policy.sha256}"' in (tmp_path / "run" / "config.toml").read_text()
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["policy"] == {"spec": "pol.py:P", "file": str(pol), "sha256": second.policy.sha256}
    # A recorded run's config reads back without its file (analysis), and pins the hash when re-run.
    assert smpsim.open_run(tmp_path / "run").config.policy.sha256 == second.policy.sha256
    pol.write_text(pol.read_text() + "# edited again\n")
    with pytest.raises(ConfigError, match="resolved with"):
        validate({"policy": {"name": f"{pol}:P", "sha256": second.policy.sha256}})


@pytest.mark.parametrize("source, words", [
    (None, ["nothere.py", "file not found"]),
    ("x = 1\nraise RuntimeError('no lab')\n", ["pol.py:2", "import failed: RuntimeError: no lab"]),
    ("class P:\n    pass\n", ["pol.py:1", "class P is not a policy"]),
    ("from smpsim import Policy\nclass P(Policy):\n    def __init__(self, cfg):\n        raise ValueError('bad')\n",
     ["pol.py:4", "P(cfg) raised ValueError: bad"]),
    ("from smpsim import Policy\nclass P(Policy):\n    flushes_only_at_wrap = True\n"
     "    def unmap_flush(self, ring, slot, cpu):\n        return None\n",
     ["pol.py:2", "sets flushes_only_at_wrap = True but overrides unmap_flush"]),
])
def test_a_bad_policy_is_one_error_before_anything_runs(tmp_path, source, words):
    name = "nothere.py:P" if source is None else "pol.py:P"
    if source is not None:
        write(tmp_path / "pol.py", source)
    conf = write(tmp_path / "c.toml", CONFIG + f"[policy]\nname = '{name}'\n")
    err = user_error(invoke("run", conf, "--out", tmp_path / "run"))
    assert all(w in err for w in words), err
    assert not (tmp_path / "run").exists()


# ---- the guard: a policy that breaks the contract stops the run, named; never "engine bug" ---------------

BROKEN = {
    "kmapped": """
        from smpsim import Policy
        class P(Policy):
            name = "ring-in-kmapped"
            ring = None
            def wrap(self, ring, cpu):
                self.ring = ring
                return super().wrap(ring, cpu)
            def kmapped(self, cpu, page):
                if self.ring is not None:
                    self.ring.flush_all_zero_pkmaps()
        """,
    "first_message": """
        from smpsim import Policy
        class P(Policy):
            name = "says-no-ipis"
            def wrap_flush(self, torn, cpu):
                return self.flush("all", None, self.others(cpu), len(torn))
            def first_message(self, t):
                return None
        """,
    "wrap": """
        from smpsim import Policy
        class P(Policy):
            name = "tears-held-slots"
            def wrap(self, ring, cpu):
                torn = [i for i, c in enumerate(ring.pkmap_count) if c > 1][:1]
                for i in torn:
                    ring.pkmap_count[i] = 0
                return torn, None
        """,
    "unmap_flush": """
        from smpsim import Policy
        class P(Policy):
            name = "flushes-itself"
            def unmap_flush(self, ring, slot, cpu):
                ring.teardown(slot)
                return self.flush("page", (slot,), [cpu], 1)
        """,
}


@pytest.mark.parametrize("hook", sorted(BROKEN))
def test_a_broken_contract_stops_the_run_naming_policy_and_hook(tmp_path, hook):
    write(tmp_path / "pol.py", BROKEN[hook])
    cfg = validate({"machine": {"cpus": 4, "last_pkmap": 16}, "workload": {"kmaps_per_cpu": 200, "pages": 100,
                    "nesting": 2}, "policy": {"name": "pol.py:P"}, "base_dir": str(tmp_path)})
    with pytest.raises(PolicyError) as e:
        inline.run(cfg, tmp_path / "run")
    msg = str(e.value)
    assert e.value.hook == hook and f"policy {e.value.policy!r}" in msg and str(tmp_path / "pol.py") in msg, msg
    assert "engine bug" not in msg
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "error" and summary["events"] > 0  # the trace up to it is kept


def test_an_exception_in_a_hook_names_the_file_and_line(tmp_path):
    write(tmp_path / "pol.py", """
        from smpsim import Policy
        class P(Policy):
            name = "divides"
            def wrap_flush(self, torn, cpu):
                return self.flush("all", None, self.others(cpu), len(torn) // 0)
        """)
    conf = write(tmp_path / "c.toml", CONFIG + "[policy]\nname = 'pol.py:P'\n")
    r = invoke("run", conf, "--out", tmp_path / "run")
    assert r.exit_code == 1
    assert f"{tmp_path / 'pol.py'}:6" in r.stderr and "ZeroDivisionError" in r.stderr, r.stderr
    assert r.stderr.startswith("error: the policy stopped the run: ")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "error"


def test_traits_are_derived_from_the_hooks_a_class_overrides():
    assert [policies.POLICIES[n].flushes_only_at_wrap for n in ("linux-2.4", "linux-2.6", "tlb-gen", "latr")] \
        == [True] * 4
    assert not policies.Eager.flushes_only_at_wrap and not policies.VmapLazy.flushes_only_at_wrap

    class Rescuer(policies.Linux26):
        def rescue(self, ring, cpu):
            return None

    assert Rescuer.flushes_only_at_wrap is False
    cfg = validate({})
    assert policies.traits(policies.TlbGen(cfg)).tracks_holds and not policies.traits(policies.Linux26(cfg)).tracks_holds
    assert not policies.traits(policies.KmapLocal(cfg)).uses_ring and policies.traits(policies.Eager(cfg)).flushes_at_unmap


@pytest.mark.timeout(240)
def test_a_sweep_shows_the_policys_own_name_and_reruns_an_edited_file(tmp_path):
    pol = write(tmp_path / "mine.py", """
        from smpsim import Policy
        class Mine(Policy):
            name = "mine"
            def wrap_flush(self, torn, cpu):
                return self.flush("range", range(self.last_pkmap), self.others(cpu), len(torn)) if torn else None
        """)
    write(tmp_path / "exp.toml", CONFIG + '[sweep]\n"policy.name" = ["linux-2.6", "mine.py:Mine"]\n'
          '[report]\nbaseline = {"policy.name" = "linux-2.6"}\n')
    out = tmp_path / "out"
    r = invoke("sweep", tmp_path / "exp.toml", "--out", out, "--jobs", "1")
    assert r.exit_code == 0, r.output
    import pyarrow.parquet as pq
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [(x["policy.name"], x["policy"]) for x in table] == [("linux-2.6", "linux-2.6"), ("mine.py:Mine", "mine")]
    assert table[0]["digest"] == table[1]["digest"]  # the same flushes as linux-2.6
    assert "mine vs linux-2.6" in " ".join(r.stdout.split())
    c = invoke("compare", out)
    assert c.exit_code == 0 and "mine vs linux-2.6" in " ".join(c.stdout.split()), c.output
    def runs() -> int:
        return sum(1 for p in out.iterdir() if (p / "summary.json").exists())

    assert invoke("sweep", tmp_path / "exp.toml", "--out", out, "--jobs", "1").exit_code == 0
    assert runs() == 2  # both points finished: nothing ran again
    pol.write_text(pol.read_text() + "# edited\n")
    assert invoke("sweep", tmp_path / "exp.toml", "--out", out, "--jobs", "1").exit_code == 0
    assert runs() == 3  # the edited policy's point is a new config: it ran


@pytest.mark.timeout(120)
def test_python_sweep_takes_a_class(tmp_path):
    write(tmp_path / "exp.toml", CONFIG + '[sweep]\n"machine.cpus" = [1, 2]\n')
    table = smpsim.sweep(tmp_path / "exp.toml", out=tmp_path / "out", jobs=2, policy=Mine).to_pylist()
    assert [r["status"] for r in table] == ["ok", "ok"]
    assert {json.loads((tmp_path / "out" / r["run"] / "summary.json").read_text())["policy"] for r in table} == {"mine"}


@pytest.mark.timeout(240)
def test_a_cpu_on_another_host_loads_its_own_copy_and_a_different_one_is_refused(tmp_path, smpsim_cmd,
                                                                                  subprocess_env):
    """`smpsim cpu` never runs code from the wire: it loads the file named by the config (relative to its
    own working directory) and is refused before running it when its hash is not the coordinator's."""
    from proc_helpers import free_port, log_has, wait_for

    source = "from smpsim import Policy\nclass P(Policy):\n    name = 'p'\n"
    here, there, other = (tmp_path / d for d in ("here", "there", "other"))
    for d, text in ((here, source), (there, source), (other, source + "# another version\n")):
        d.mkdir()
        (d / "pol.py").write_text(text)
    write(here / "c.toml", CONFIG + "[policy]\nname = 'pol.py:P'\n")

    def launch(cpu_dirs: list[Path]) -> tuple[subprocess.Popen, list[subprocess.Popen], Path]:
        """The coordinator, then CPU 0 and, once CPU 0 has joined, CPU 1: a refused CPU 1 then always finds
        CPU 0 in the run (a CPU 0 still starting would wait out its join timeout)."""
        addr, out = f"tcp://127.0.0.1:{free_port()}", tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
        coord = subprocess.Popen([*smpsim_cmd, "coordinator", "-c", str(here / "c.toml"), "--listen", addr, "--out",
                                  str(out), "--token", "t"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, env=subprocess_env)
        cpus: list[subprocess.Popen] = []
        try:
            for c, d in enumerate(cpu_dirs):
                if c:
                    wait_for(lambda: log_has(out / "logs" / "coordinator.log.jsonl", "joined"), 60, "CPU 0 joined")
                cpus.append(subprocess.Popen([*smpsim_cmd, "cpu", "--coordinator", addr, "--cpu-id", str(c),
                                              "--token", "t"], cwd=d, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, text=True, env=subprocess_env))
        except BaseException:
            stop([coord, *cpus])
            raise
        return coord, cpus, out

    def stop(procs: list[subprocess.Popen]) -> None:
        for p in procs:
            p.kill()
            p.wait()

    def finish(procs: list[subprocess.Popen]) -> list[str]:
        try:
            return [p.communicate(timeout=60)[1] for p in procs]
        finally:
            stop(procs)

    coord, cpus, out = launch([here, there])
    errs = finish([coord, *cpus])
    assert coord.returncode == 0, errs
    want = inline.run(load_config(here / "c.toml")).summary["digest"]
    assert json.loads((out / "summary.json").read_text())["digest"] == want

    coord, cpus, out = launch([here, other])
    coord_err, first_err, cpu_err = finish([coord, *cpus])
    mine = policies.resolve("pol.py:P", str(other)).sha256
    theirs = load_config(here / "c.toml").policy.sha256
    for err in (coord_err, cpu_err):
        assert "CPU 1" in err and mine in err and theirs in err and "Traceback" not in err, err
    assert coord.returncode != 0 and cpus[1].returncode != 0
    assert cpus[0].returncode == 1 and "ended the run with status 'aborted'" in first_err, first_err
    assert json.loads((out / "summary.json").read_text())["status"] == "aborted"
