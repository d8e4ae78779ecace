"""Issue 18, findings 10 and 12: what a distributed run leaves behind and what it needs of the host. Socket
directories of a launch or a sweep killed outright are removed by the next smpsim command once their
process is gone; an ipc socket file goes with its run; a run that survived a stopped coordinator prints no
`error:`; an open-files limit too low for the CPUs is named before anything starts. Real processes."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from smpsim.engines.distributed.limits import FDS_BASE, FDS_PER_CPU_PROCESS
from proc_helpers import log_has, wait_for


@pytest.fixture
def private_tmp(subprocess_env):
    """A TMPDIR of the test's own (short: an ipc socket's path is limited to 107 bytes), and the env for it."""
    tmp = Path(tempfile.mkdtemp(prefix="sl", dir="/tmp"))
    yield tmp, dict(subprocess_env, TMPDIR=str(tmp))
    shutil.rmtree(tmp, ignore_errors=True)


def _socket_dirs(tmp: Path) -> list[Path]:
    return sorted(d for d in tmp.iterdir() if d.name.startswith("smpsim-"))


def _gone(pids: list[int]) -> bool:
    """Every process in pids has exited (a zombie, waiting for its parent's wait, counts as gone)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def _kill_outright(proc: subprocess.Popen) -> None:
    """SIGKILL proc (no clean-up of its own runs) and wait until it and every process below it are gone."""
    tree = [proc.pid] + [k.pid for k in psutil.Process(proc.pid).children(recursive=True)]
    proc.kill()
    proc.wait(10)
    wait_for(lambda: _gone(tree), 20, "the killed process's children to exit")


def _next_command(smpsim_cmd, env) -> None:
    r = subprocess.run([*smpsim_cmd, "config", "show"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.timeout(120)
def test_a_launch_killed_outright_leaves_nothing_after_the_next_command(tmp_path, private_tmp, smpsim_cmd):
    tmp, env = private_tmp
    out = tmp_path / "run"
    proc = subprocess.Popen([*smpsim_cmd, "launch", "--cpus", "2", "--out", str(out),
                             "--set", "workload.kmaps_per_cpu=200000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: log_has(out / "logs" / "coordinator.log.jsonl", "all joined"), 60, "all CPUs joined")
        [sockdir] = _socket_dirs(tmp)
        _next_command(smpsim_cmd, env)
        assert sockdir.exists()  # its launch is alive: not an orphan
        _kill_outright(proc)
    finally:
        proc.kill()
        proc.wait()
    assert sockdir.exists()  # what SIGKILL leaves (no clean-up runs) ...
    _next_command(smpsim_cmd, env)
    assert _socket_dirs(tmp) == []  # ... the next command removes


@pytest.mark.timeout(120)
def test_a_sweep_killed_outright_leaves_nothing_after_the_next_command(tmp_path, private_tmp, smpsim_cmd):
    tmp, env = private_tmp
    exp = tmp_path / "exp.toml"
    exp.write_text("[machine]\ncpus = 2\n[run]\nengine = 'distributed'\n[workload]\nkmaps_per_cpu = 200000\n"
                   "[sweep]\n'policy.name' = ['linux-2.4', 'eager']\n")
    proc = subprocess.Popen([*smpsim_cmd, "sweep", str(exp), "--out", str(tmp_path / "sweep"), "--jobs", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: len(_socket_dirs(tmp)) == 2, 60, "both points' socket directories")
        _kill_outright(proc)
    finally:
        proc.kill()
        proc.wait()
    assert len(_socket_dirs(tmp)) == 2
    _next_command(smpsim_cmd, env)
    assert _socket_dirs(tmp) == []


@pytest.mark.timeout(120)
def test_an_ipc_coordinator_removes_its_socket_file(tmp_path, private_tmp, smpsim_cmd):
    tmp, env = private_tmp
    path = tmp / "c.ipc"
    coord = subprocess.Popen([*smpsim_cmd, "coordinator", "--listen", f"ipc://{path}", "--token", "t",
                              "--out", str(tmp_path / "run"), "--set", "machine.cpus=1",
                              "--set", "workload.kmaps_per_cpu=50"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    cpu = subprocess.Popen([*smpsim_cmd, "cpu", "--coordinator", f"ipc://{path}", "--token", "t"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, err = coord.communicate(timeout=90)
        cpu.wait(30)
    finally:
        for x in (coord, cpu):
            x.kill()
            x.wait()
    assert coord.returncode == 0 and cpu.returncode == 0, err
    assert not path.exists()


@pytest.mark.timeout(150)
def test_a_run_that_survived_a_stopped_coordinator_prints_no_error(tmp_path, private_tmp, smpsim_cmd):
    """SIGSTOP of launch long enough for its CPU processes to give it up (5 s), then SIGCONT: every CPU is
    replaced, the run ends ok, and what it survived is its faults line, not `error:` lines."""
    tmp, env = private_tmp
    out = tmp_path / "run"
    proc = subprocess.Popen([*smpsim_cmd, "launch", "--cpus", "2", "--out", str(out),
                             "--set", "workload.kmaps_per_cpu=20000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: log_has(out / "logs" / "coordinator.log.jsonl", "all joined"), 60, "all CPUs joined")
        kids = [k.pid for k in psutil.Process(proc.pid).children()]
        proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: _gone(kids), 30, "the CPU processes to give up their stopped coordinator")
        proc.send_signal(signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr
    assert "error:" not in stderr and "Traceback" not in stderr, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert sorted(f["cpu"] for f in summary["faults"]["first"] if f["kind"] == "cpu respawned") == [0, 1]
    assert "faults" in stdout and "cpu respawned" in stdout


def _with_open_files(soft: int, hard: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(60)
def test_too_few_open_files_is_named_before_anything_starts(tmp_path, private_tmp, smpsim_cmd):
    tmp, env = private_tmp
    need = FDS_BASE + FDS_PER_CPU_PROCESS * 64
    t0 = time.monotonic()
    r = subprocess.run([*smpsim_cmd, "launch", "--cpus", "64", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, env=env, timeout=50, preexec_fn=_with_open_files(128, 128))
    assert r.returncode == 2, r.stderr
    assert time.monotonic() - t0 < 20
    assert r.stderr.startswith("error: ") and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    assert f"needs about {need} open files" in r.stderr and "allows 128" in r.stderr
    assert f"`ulimit -n {need}`" in r.stderr
    assert not (tmp_path / "run").exists() and _socket_dirs(tmp) == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("soft, hard", [(64, 4096), (None, None)], ids=["raised-to-hard", "exactly-enough"])
def test_the_open_files_asked_for_are_enough(soft, hard, tmp_path, private_tmp, smpsim_cmd):
    """A soft limit below the need is raised (the hard one allows it); and the need itself, as the hard
    limit, is enough for the run: the measured figure is not too small."""
    tmp, env = private_tmp
    cpus = 16
    need = FDS_BASE + FDS_PER_CPU_PROCESS * cpus
    soft, hard = soft or need, hard or need
    r = subprocess.run([*smpsim_cmd, "launch", "--cpus", str(cpus), "--out", str(tmp_path / "run"),
                        "--set", "workload.kmaps_per_cpu=200"],
                       capture_output=True, text=True, env=env, timeout=100, preexec_fn=_with_open_files(soft, hard))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "ok"


def test_a_zombie_owner_holds_no_socket_directory(private_tmp):
    """A killed owner not yet reaped still answers kill(pid, 0); its directory is an orphan all the same."""
    from smpsim.engines.distributed import sockdir

    tmp, _ = private_tmp
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        d = tmp / f"smpsim-{child.pid}-abcdefgh"
        d.mkdir()
        assert sockdir._alive(child.pid)
        child.kill()
        wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 10, "the child to be a zombie")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tempfile, "tempdir", str(tmp))
            assert str(d) in sockdir.clean_orphans()
        assert not d.exists()
    finally:
        child.kill()
        child.wait(10)


def test_every_temporary_directory_is_named_after_its_process(private_tmp, tmp_path, monkeypatch):
    """An API run without out, a policy check's workspace and a query's spill directory are removed by the
    next smpsim command once their process is gone (a killed check left smpsim-check-XXXXXXXX behind)."""
    from smpsim.engines.distributed import sockdir

    tmp, _ = private_tmp
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    for use in ("run", "check", "query", "synth"):
        with sockdir.temporary(use) as d:
            assert sockdir._NAME.fullmatch(Path(d).name) and f"-{use}-{os.getpid()}-" in Path(d).name
    import smpsim
    with smpsim.run(overrides={"machine.cpus": 1, "workload.kmaps_per_cpu": 5}) as run:
        assert run.path.parent == tmp and sockdir._NAME.fullmatch(run.path.name)
