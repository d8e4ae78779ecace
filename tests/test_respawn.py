"""A lost CPU process is replaced (issue 11 item 7): checkpoints of a CPU's state, and launch restarting a
CPU process that died, which catches up from its last checkpoint and the messages sent to it since.

The first test checks the snapshot itself in one process: CPUs swapped for copies restored from their
msgpack'ed snapshots, again and again, must not change a run. The others kill real CPU processes of real
`smpsim launch` runs with SIGKILL and compare with an undisturbed run.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from pinned_cases import config_for, observe
from respawn_helpers import RestoringEngine
from respawn_helpers import kill_cpu as _kill
from respawn_helpers import log_events as _events
from respawn_helpers import pid_of as _pid_of
from respawn_helpers import wait as _wait
from smpsim.engines import inline

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_counters.json").read_text())


@pytest.mark.parametrize("name", [n for n in sorted(PINNED) if not n.startswith("default")][::5])
def test_restored_cpus_run_on_unchanged(name, tmp_path):
    from smpsim.trace.recorder import Recorder
    cfg = config_for(PINNED[name], tmp_path)
    want = inline.run(cfg).summary
    engine = RestoringEngine(cfg, Recorder(cfg, None, "inline"))
    engine.drive()
    got = engine.core.close()
    assert engine.restored > 0
    assert got["digest"] == want["digest"]
    assert observe(got) == observe(want)


# ---- real processes: `smpsim launch`, SIGKILL, a replacement ------------------------------------------
CPUS = 4
SETS = ["--set", "workload.kmaps_per_cpu=1000", "--set", "trace.part_events=5000"]
CHECKPOINT = "1500"  # operations between checkpoints: several per CPU in these runs


@pytest.fixture(scope="module")
def undisturbed():
    """The summary of the same run with no process killed (the inline engine: the same digest)."""
    from smpsim import api
    cfg = api.load(None, [f"machine.cpus={CPUS}", *SETS[1::2]], engine="distributed")
    return inline.run(cfg).summary


def _launch(run: Path, smpsim_cmd, env, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([*smpsim_cmd, "launch", "--cpus", str(CPUS), "--out", str(run), *SETS, *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()


def _assert_recovered(run: Path, undisturbed: dict, proc, stdout: str, stderr: str, kills: list[int],
                      how: str = "killed by SIGKILL") -> None:
    assert proc.returncode == 0, stderr
    # The printed summary says a process was replaced, not only the logs.
    assert re.search(rf"^faults +{len(kills)}: cpu respawned \(CPU {kills[0]}\)", stdout, re.M), stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["digest"] == undisturbed["digest"]
    for k, v in undisturbed.items():  # every counter as undisturbed; only the record of faults differs
        if k not in ("engine", "trace", "faults"):
            assert summary[k] == v, k
    # On record: each replacement is a fault in summary.json and an error in the log that analyze counts.
    assert [(f["kind"], f["cpu"]) for f in summary["faults"]["first"]] == [("cpu respawned", c) for c in kills]
    assert all(how in f["reason"] for f in summary["faults"]["first"]), summary["faults"]
    assert [x["cpu"] for x in _events(run, "cpu respawned")] == kills
    from smpsim.analysis.logs import summarize_logs
    assert summarize_logs(run)["by_level"]["error"] == len(kills)
    assert json.loads((run / "provenance.json").read_text())["status"] == "ok"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cpu_killed_at_a_random_moment_is_replaced(seed, tmp_path, smpsim_cmd, subprocess_env, undisturbed):
    """SIGKILL one CPU process when the run has taken a seeded number of checkpoints (of any CPU: the
    victim is anywhere between two of its own); the run ends ok with the undisturbed digest."""
    rng = random.Random(seed)
    victim, after = rng.randrange(CPUS), rng.randint(1, 10)
    run = tmp_path / "run"
    proc = _launch(run, smpsim_cmd, subprocess_env, "--checkpoint-every", CHECKPOINT)
    try:
        _wait(lambda: len(_events(run, "checkpoint")) >= after, f"{after} checkpoints")
        _kill(run, victim)
        stdout, stderr = _finish(proc)
    finally:
        proc.kill()
    _assert_recovered(run, undisturbed, proc, stdout, stderr, [victim])
    assert _events(run, "caught up", victim)


@pytest.mark.timeout(180)
def test_cpu_killed_before_its_first_checkpoint_restarts_from_the_start(tmp_path, smpsim_cmd, subprocess_env,
                                                                         undisturbed):
    run = tmp_path / "run"
    proc = _launch(run, smpsim_cmd, subprocess_env, "--checkpoint-every", "100000000")
    try:
        _wait(lambda: _events(run, "all joined"), "all CPUs joined")
        _kill(run, 1)
        stdout, stderr = _finish(proc)
    finally:
        proc.kill()
    assert not _events(run, "checkpoint")
    _assert_recovered(run, undisturbed, proc, stdout, stderr, [1])
    assert "resumes from the start (no checkpoint yet)" in _events(run, "cpu respawned")[0]["reason"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("most", [3, 1])
def test_same_cpu_killed_twice(most, tmp_path, smpsim_cmd, subprocess_env, undisturbed):
    """The replacement is killed too, once it has caught up and checkpointed: replaced again, unless that
    is more than --max-respawns allows (the run then stops and says so)."""
    run = tmp_path / "run"
    proc = _launch(run, smpsim_cmd, subprocess_env, "--checkpoint-every", CHECKPOINT, "--max-respawns", str(most))
    try:
        _wait(lambda: len(_events(run, "checkpoint", 2)) >= 1, "a checkpoint of CPU 2")
        _kill(run, 2)
        _wait(lambda: _events(run, "caught up", 2), "CPU 2's replacement to catch up")
        n = len(_events(run, "checkpoint", 2))
        _wait(lambda: len(_events(run, "checkpoint", 2)) > n, "a checkpoint of CPU 2's replacement")
        _kill(run, 2)
        stdout, stderr = _finish(proc)
    finally:
        proc.kill()
    if most > 1:
        _assert_recovered(run, undisturbed, proc, stdout, stderr, [2, 2])
        return
    assert proc.returncode == 1 and "Traceback" not in stderr
    assert "CPU 2" in stderr and "replaced 1 times already, the most allowed (--max-respawns 1)" in stderr, stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "aborted"
    assert [(f["kind"], f["cpu"]) for f in summary["faults"]["first"]] == [("cpu respawned", 2), ("cpu lost", 2)]


@pytest.mark.timeout(180)
def test_silent_cpu_is_killed_and_replaced(tmp_path, smpsim_cmd, subprocess_env, undisturbed):
    """A CPU process that stops answering (SIGSTOP: alive, silent) is killed after the peer timeout and
    replaced like a dead one."""
    run = tmp_path / "run"
    proc = _launch(run, smpsim_cmd, subprocess_env, "--checkpoint-every", CHECKPOINT)
    try:
        _wait(lambda: len(_events(run, "checkpoint", 3)) >= 1, "a checkpoint of CPU 3")
        stopped = psutil.Process(_pid_of(run, 3))
        stopped.send_signal(signal.SIGSTOP)
        stdout, stderr = _finish(proc)
    finally:
        proc.kill()
    assert not stopped.is_running() or stopped.status() == psutil.STATUS_ZOMBIE
    _assert_recovered(run, undisturbed, proc, stdout, stderr, [3], how="stopped responding")
    assert "its process was killed" in _events(run, "cpu respawned")[0]["reason"]


@pytest.mark.parametrize("command", ["launch", "run"])
@pytest.mark.parametrize("args, what", [(["--max-respawns", "-1"], "--max-respawns -1"),
                                        (["--checkpoint-every", "0"], "--checkpoint-every 0")])
def test_respawn_options_are_checked(command, args, what, tmp_path):
    from cli_helpers import invoke, user_error
    assert what in user_error(invoke(command, "--out", tmp_path / "r", *args))
    assert not (tmp_path / "r").exists()


def test_store_keeps_what_came_after_the_checkpoint_and_catch_up_drops_by_count():
    from smpsim.engines.distributed.respawn import CheckpointStore
    from smpsim.model import messages as mm
    store = CheckpointStore(2)
    store.sent_batch(1, [["r0"], ["i0"]], 10)
    store.sent_batch(1, [], 20)                  # only a safe time: rides on the last batch
    store.sent_batch(1, [["r1"]], 30)
    store.sent_batch(1, [], 40)
    store.received[1].add([mm.Request(1, 5, (), 0), mm.Progress(1, 7)], [[1, 1, "kmap"]] * 3)
    store.checkpoint(1, 2, {"s": 1})             # it had received the first batch's two messages
    store.received[1].add([mm.Request(1, 9, (), 0), mm.Done(1, 12)], [[2, 1, "kmap"]] * 4)
    state, downs, catch = store.resume(1)
    assert state == {"s": 1} and downs == [[[], 20], [[["r1"]], 40]]
    with pytest.raises(ValueError):
        store.checkpoint(1, 5, {})               # more than was sent
    # The replacement sends again in other batches: the request, Done and 4 events after the checkpoint are
    # dropped once; a Progress only counts after the last request came again and with a larger bound.
    kept = catch.filter([mm.Progress(1, 50), mm.Request(1, 9, (), 0), mm.Progress(1, 8)], [[2, 1, "kmap"]] * 3,
                        lb=10)
    assert kept == ([], []) and catch.pending()
    kept = catch.filter([mm.Done(1, 12)], [[2, 1, "kmap"], [3, 1, "kunmap"]], lb=10)
    assert kept == ([], [[3, 1, "kunmap"]]) and not catch.pending()
    assert catch.filter([mm.Progress(1, 11)], [], lb=10) == ([mm.Progress(1, 11)], [])
