"""Interrupts lose nothing, faults are on record, exit codes a scheduler can trust.

Real signals to real subprocesses, sent once the run shows progress (a trace part, a log line): the
interrupted trace must be a prefix of the uninterrupted run's, event for event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from smpsim.config import load_config
from smpsim.engines import inline
from smpsim.experiments.sweep import load_experiment
from smpsim.trace.reader import iter_events, open_run
from cli_helpers import invoke, user_error
from proc_helpers import dealer, free_port, log_has, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # truncated-run warnings are the point

# Small parts, so progress shows early and often; long enough that a signal lands mid-run.
SETS = ["--set", "machine.cpus=2", "--set", "workload.kmaps_per_cpu=2500", "--set", "trace.part_events=300"]
CPUS = 2
CODE = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _overrides(sets: list[str]) -> list[str]:
    return [v for k, v in zip(sets, sets[1:]) if k == "--set"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's events (the inline engine; the distributed one gives the same trace)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    inline.run(load_config(None, _overrides(SETS)), out)
    return list(iter_events(open_run(out)))




def _parts(out: Path, n: int):
    return lambda: len(list((out / "trace").glob("part-*.parquet"))) >= n




def _stop(proc, sig, timeout=60):
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()


def _check_interrupted(out: Path, reference: list[dict], sig, code, stderr, smpsim_cmd, subprocess_env):
    """The run directory holds a prefix of the uninterrupted run, on record as interrupted."""
    assert code == CODE[sig], stderr
    assert f"interrupted by {sig.name}" in stderr and str(out) in stderr and "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    prov = json.loads((out / "provenance.json").read_text())
    assert summary["status"] == prov["status"] == "interrupted"
    events = list(iter_events(open_run(out, warn=False)))
    assert 0 < len(events) < len(reference), "the signal should land mid-run"
    assert events == reference[:len(events)]  # the same events in the same order, seq included
    # Everything below the virtual time reached is written, nothing at or beyond it.
    reached = summary["t_reached"]
    assert [e for e in reference if e["t"] < reached] == events
    # The counters are those of the written events: analyze recomputes them from the trace.
    assert summary["events"] == len(events)
    r = invoke("analyze", out, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["counters"] == summary["counters"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig,parts", [(signal.SIGINT, 1), (signal.SIGTERM, 6)])
def test_run_interrupted_keeps_a_prefix(tmp_path, reference, sig, parts, smpsim_cmd, subprocess_env):
    out = tmp_path / "run"
    proc = subprocess.Popen([*smpsim_cmd, "run", "--out", str(out), *SETS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env)
    try:
        wait_for(_parts(out, parts), 120, f"{parts} trace parts")
    finally:
        _, stderr = _stop(proc, sig)
    _check_interrupted(out, reference, sig, proc.returncode, stderr, smpsim_cmd, subprocess_env)


def test_a_process_runs_again_after_an_interrupted_run(tmp_path, reference):
    """Python API: a signal stops the run it arrived in, not the next one in the same process."""
    from smpsim.experiments.runner import run_config

    cfg = load_config(None, _overrides(SETS))
    with pytest.raises(KeyboardInterrupt):
        run_config(cfg, tmp_path / "a", progress=lambda state: os.kill(os.getpid(), signal.SIGINT))
    events = list(iter_events(open_run(tmp_path / "a", warn=False)))
    assert 0 < len(events) < len(reference) and events == reference[:len(events)]
    assert json.loads((tmp_path / "a" / "provenance.json").read_text())["status"] == "interrupted"
    assert run_config(cfg, tmp_path / "b").summary["status"] == "ok"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # pytest's own, given back


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig,parts", [(signal.SIGTERM, 0), (signal.SIGINT, 3)])
def test_launch_interrupted_keeps_a_prefix_and_leaves_nothing(tmp_path, reference, sig, parts, smpsim_cmd,
                                                               subprocess_env):
    out, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([*smpsim_cmd, "launch", "--out", str(out), *SETS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(subprocess_env, TMPDIR=str(tmp)))
    try:
        wait_for(lambda: log_has(out / "logs" / "coordinator.log.jsonl", "all joined"), 90, "all CPUs joined")
        wait_for(_parts(out, parts), 120, f"{parts} trace parts")
        kids = psutil.Process(proc.pid).children(recursive=True)
        assert len(kids) == CPUS and list(tmp.iterdir())  # the CPU processes, the ipc socket directory
    finally:
        _, stderr = _stop(proc, sig)
    if parts == 0:  # interrupted right after the start: nothing may have passed the watermark yet
        assert proc.returncode == CODE[sig], stderr
        events = list(iter_events(open_run(out, warn=False)))
        assert events == reference[:len(events)]
    else:
        _check_interrupted(out, reference, sig, proc.returncode, stderr, smpsim_cmd, subprocess_env)
    assert not list(tmp.iterdir()), "the ipc socket directory is left behind"
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids)
    # The CPUs were stopped by the coordinator (END), not by the signal: each logged the run's end.
    for c in range(CPUS):
        assert log_has(out / "logs" / f"cpu-{c}.log.jsonl", "run ended")




@pytest.mark.timeout(240)
def test_coordinator_interrupted_stops_its_cpus(tmp_path, reference, smpsim_cmd, subprocess_env):
    addr = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "run"
    coord = subprocess.Popen([*smpsim_cmd, "coordinator", "--listen", addr, "--token", "t", "--out", str(out), *SETS],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    cpus = [subprocess.Popen([*smpsim_cmd, "cpu", "--coordinator", addr, "--token", "t", "--cpu-id", str(c)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env)
            for c in range(CPUS)]
    try:
        wait_for(_parts(out, 2), 120, "2 trace parts")
        _, stderr = _stop(coord, signal.SIGTERM)
        cpu_errs = [c.communicate(timeout=30)[1] for c in cpus]
    finally:
        for x in [coord, *cpus]:
            x.kill()
            x.wait()
    _check_interrupted(out, reference, signal.SIGTERM, coord.returncode, stderr, smpsim_cmd, subprocess_env)
    # A CPU whose run did not end ok does not exit 0; it says why.
    for c, err in zip(cpus, cpu_errs):
        assert c.returncode == 1 and "status 'interrupted'" in err and "Traceback" not in err, err


@pytest.mark.timeout(240)
def test_sweep_interrupted_keeps_its_points(tmp_path, smpsim_cmd, subprocess_env):
    exp = tmp_path / "exp.toml"
    exp.write_text("[machine]\ncpus = 2\n[workload]\nkmaps_per_cpu = 2500\n[trace]\npart_events = 300\n"
                   "[sweep]\nseed = [1, 2]\n")
    out = tmp_path / "sweep"
    proc = subprocess.Popen([*smpsim_cmd, "sweep", str(exp), "--out", str(out), "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    try:
        wait_for(lambda: len(list(out.glob("*/trace/part-00001.parquet"))) == 2, 120, "both points running")
        stdout, stderr = _stop(proc, signal.SIGTERM)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    points = load_experiment(exp).points
    assert sorted(d.name for d in out.iterdir() if d.is_dir()) == sorted(pt.name for pt in points)
    for pt in points:
        run = out / pt.name
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["error"] == "interrupted by SIGTERM"  # the user's
        assert json.loads((run / "provenance.json").read_text())["status"] == "interrupted"
        events = list(iter_events(open_run(run, warn=False)))
        want = list(iter_events(open_run(inline.run(pt.cfg, tmp_path / f"ref-{pt.index}").run_dir)))
        assert 0 < len(events) < len(want) and events == want[:len(events)]
    # The results table is written, and says the points did not finish; a rerun would run them again.
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",unfinished," in r for r in rows[1:])


@pytest.mark.timeout(120)
def test_second_signal_exits_at_once(tmp_path, smpsim_cmd, subprocess_env):
    """The first SIGINT waits for the CPUs to say goodbye; a joined CPU that never answers makes that slow,
    so a second SIGINT must cut it short, leaving no socket directory behind."""
    import msgpack

    from smpsim.engines.distributed import protocol as p

    path = tmp_path / "coord.ipc"
    out = tmp_path / "run"
    coord = subprocess.Popen([*smpsim_cmd, "coordinator", "--listen", f"ipc://{path}", "--token", "t", "--out", str(out),
                              "--set", "machine.cpus=2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=subprocess_env)
    try:
        wait_for(path.exists, 60, "the coordinator's socket")
        with dealer(f"ipc://{path}") as s:
            s.send(msgpack.packb([p.HELLO, p.VERSION, "", 0, os.getpid(), "test", "t"]))
            assert s.poll(30000) and msgpack.unpackb(s.recv(), raw=False)[0] == p.WELCOME
            coord.send_signal(signal.SIGINT)
            while True:  # the coordinator took the first signal when it tells its CPUs the run has ended
                assert s.poll(30000), "no END after SIGINT"
                if msgpack.unpackb(s.recv(), raw=False)[0] == p.END:
                    break
            coord.send_signal(signal.SIGINT)
            t0 = time.monotonic()
            coord.communicate(timeout=30)
            elapsed = time.monotonic() - t0
    finally:
        coord.kill()
        coord.wait()
    assert coord.returncode == 130
    assert elapsed < 1.5  # the first signal alone waits 2 s for the silent CPU's goodbye
    assert not path.exists()


# ---- exit codes and join timeouts -------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_cpu_without_coordinator_says_so_then_gives_up(smpsim_cmd, subprocess_env):
    addr = f"tcp://127.0.0.1:{free_port()}"  # nobody listens
    proc = subprocess.Popen([*smpsim_cmd, "cpu", "--coordinator", addr, "--cpu-id", "1", "--join-timeout", "5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    try:
        first = proc.stderr.readline()
        t_said = time.monotonic()
        rest = proc.stderr.read()
        proc.wait(timeout=30)
        t_gave_up = time.monotonic()
    finally:
        proc.kill()
        proc.wait()
    # It says so after 2 s of silence, long before it gives up at 5 s.
    assert f"waiting for the coordinator at {addr}" in first and t_gave_up - t_said > 2, first
    assert proc.returncode == 3
    assert f"error: CPU 1: no answer from the coordinator at {addr} within 5 s" in rest, rest
    assert "Traceback" not in rest


@pytest.mark.timeout(60)
def test_coordinator_join_timeout(tmp_path, smpsim_cmd, subprocess_env):
    out = tmp_path / "run"
    r = subprocess.run([*smpsim_cmd, "coordinator", "--listen", f"tcp://127.0.0.1:{free_port()}", "--out",
                        str(out), "--set", "machine.cpus=2", "--join-timeout", "1.5"],
                       capture_output=True, text=True, env=subprocess_env, timeout=50)
    assert r.returncode == 1 and "only 0 of 2 CPUs joined within 1.5 s" in r.stderr, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "aborted" and summary["faults"]["first"][0]["kind"] == "run aborted"
    assert json.loads((out / "provenance.json").read_text())["status"] == "aborted"
    a = invoke("analyze", out, "--json")
    assert a.exit_code == 0 and json.loads(a.stdout)["logs"]["errors"] == 2  # the abort and the run's end


def test_join_timeout_must_be_positive():
    assert "--join-timeout" in user_error(invoke("cpu", "--coordinator", "tcp://127.0.0.1:1", "--join-timeout", "0"))


@pytest.mark.timeout(120)
def test_cpus_of_an_aborted_run_exit_nonzero(tmp_path, smpsim_cmd, subprocess_env):
    addr = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "run"
    # --no-respawn: otherwise the coordinator would wait for CPU 1's restart (tests/test_pods.py)
    coord = subprocess.Popen([*smpsim_cmd, "coordinator", "--listen", addr, "--token", "t", "--out", str(out), "--set",
                              "machine.cpus=2", "--set", "workload.kmaps_per_cpu=20000", "--no-respawn"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    cpus = [subprocess.Popen([*smpsim_cmd, "cpu", "--coordinator", addr, "--token", "t", "--cpu-id", str(c)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env)
            for c in range(2)]
    try:
        wait_for(lambda: log_has(out / "logs" / "coordinator.log.jsonl", "all joined"), 60, "all CPUs joined")
        cpus[1].kill()
        coord.wait(timeout=30)
        cpus[0].wait(timeout=30)
    finally:
        for x in [coord, *cpus]:
            x.kill()
            x.wait()
    assert coord.returncode == 1
    assert cpus[0].returncode == 1  # not 0: a Job must not count it done
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "aborted" and "CPU 1" in summary["error"]
    assert [(f["kind"], f["cpu"]) for f in summary["faults"]["first"]] == [("cpu lost", 1)]
    assert json.loads((out / "provenance.json").read_text())["status"] == "aborted"
    # The loss and the abort are errors in the coordinator's log, which analyze counts.
    log = [json.loads(x) for x in (out / "logs" / "coordinator.log.jsonl").read_text().splitlines()]
    assert [(x["event"], x.get("cpu")) for x in log if x["level"] == "error"] == [("cpu lost", 1), ("run ended", None)]


@pytest.mark.timeout(60)
def test_cpu_stopped_by_sigterm_exits_143(smpsim_cmd, subprocess_env):
    proc = subprocess.Popen([*smpsim_cmd, "cpu", "--coordinator", f"tcp://127.0.0.1:{free_port()}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    try:
        assert "waiting for the coordinator" in proc.stderr.readline()
        _, err = _stop(proc, signal.SIGTERM, timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143 and "Traceback" not in err, err
