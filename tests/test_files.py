"""Issue 18, findings 1, 2, 3, 5, 6, 9 and part of 12: a run writes over nothing it did not create, a full
disk is named and survives, a finished sweep point is re-checked, one sweep (or run) per directory at a
time, and what an export or a sweep says when a signal stops it."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from smpsim.experiments.sweep import load_experiment
from cli_helpers import invoke, user_error
from proc_helpers import wait_for

# A few thousand events in parts of 500: a run of well under a second with several parts.
SMALL = ["--set", "machine.cpus=2", "--set", "workload.kmaps_per_cpu=150", "--set", "trace.part_events=500"]


def _run(out, *more):
    return invoke("run", "--out", out, *SMALL, *more)


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------ 1: the user's own files in --out

def test_run_never_overwrites_the_users_config_in_out(tmp_path):
    exp = tmp_path / "myexp"
    exp.mkdir()
    mine = "# my experiment\n[machine]\ncpus = 2  # two\n[workload]\nkmaps_per_cpu = 50\n"
    (exp / "config.toml").write_text(mine)
    err = user_error(invoke("run", exp / "config.toml", "--out", exp))
    assert "config.toml" in err and "not this run's" in err and str(exp) in err
    assert (exp / "config.toml").read_text() == mine and sorted(p.name for p in exp.iterdir()) == ["config.toml"]


def test_run_never_appends_to_a_log_it_did_not_create(tmp_path):
    out = tmp_path / "r"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "coordinator.log.jsonl").write_text('{"event": "mine"}\n')
    err = user_error(invoke("launch", "--cpus", "2", "--set", "workload.kmaps_per_cpu=20", "--out", out))
    assert "logs/coordinator.log.jsonl" in err
    assert (out / "logs" / "coordinator.log.jsonl").read_text() == '{"event": "mine"}\n'


def test_out_takes_over_an_unfinished_run_of_the_same_config_and_keeps_a_finished_one(tmp_path):
    out = tmp_path / "r"
    assert _run(out).exit_code == 0
    finished = _tree(out)
    err = user_error(_run(out))
    assert "finished run of this config" in err and _tree(out) == finished
    # The same run, cut short (no provenance.json, a part missing): run again in its place.
    (out / "provenance.json").unlink()
    (out / "summary.json").unlink()
    sorted((out / "trace").glob("part-*.parquet"))[-1].unlink()
    assert _run(out).exit_code == 0 and _tree(out).keys() == finished.keys()
    # Another config's run is not ours to replace.
    err = user_error(_run(out, "--set", "seed=7"))
    assert "config.toml" in err and _tree(out).keys() == finished.keys()


# ------------------------------------------------------------------------------- 2: export --output

def test_export_refuses_an_existing_file_and_any_file_inside_a_run(tmp_path):
    run = tmp_path / "r"
    assert _run(run).exit_code == 0
    before = _tree(run)
    for target in (run / "trace" / "part-00000.parquet", run / "summary.json", run / "new.jsonl"):
        err = user_error(invoke("export", run, "--format", "jsonl", "--output", target, "--force"))
        assert str(target) in err and "run directory" in err
    assert _tree(run) == before and invoke("analyze", run).exit_code == 0
    mine = tmp_path / "notes.jsonl"
    mine.write_text("mine\n")
    err = user_error(invoke("export", run, "--output", mine))
    assert str(mine) in err and "--force" in err and mine.read_text() == "mine\n"
    assert invoke("export", run, "--output", mine, "--force").exit_code == 0
    assert len(mine.read_text().splitlines()) == json.loads((run / "summary.json").read_text())["events"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_export_stopped_by_a_signal_says_so_and_leaves_no_temporary_file(tmp_path, monkeypatch, sig):
    import smpsim.trace.export as export_mod

    run = tmp_path / "r"
    assert _run(run).exit_code == 0
    real = export_mod.iter_events

    def events_then_signal(rd):
        for i, ev in enumerate(real(rd)):
            if i == 100:
                os.kill(os.getpid(), sig)  # a real signal to this process, mid-export
            yield ev

    monkeypatch.setattr(export_mod, "iter_events", events_then_signal)
    out = tmp_path / "out.jsonl"
    err = user_error(invoke("export", run, "--output", out), code=128 + sig)
    assert err == f"error: interrupted by {sig.name}\n"
    assert list(tmp_path.iterdir()) == [run]  # neither out.jsonl nor .out.jsonl.tmp


# ------------------------------------------------------------------- 3: a sweep deletes only its own files

SWEEP = """[machine]\ncpus = 2\n[workload]\nkmaps_per_cpu = 150\n[trace]\npart_events = 500\n
[sweep]\nseed = [1, 2]\n"""


def _sweep_file(tmp_path, text=SWEEP):
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p, load_experiment(p).points


def test_sweep_keeps_dotfiles_in_a_point_directory_and_names_them(tmp_path):
    exp, points = _sweep_file(tmp_path)
    out = tmp_path / "out"
    assert invoke("sweep", exp, "--out", out).exit_code == 0
    point = out / points[0].name
    (point / "provenance.json").unlink()  # an unfinished run, to be run again ...
    (point / ".notes").write_text("mine")  # ... next to the user's own files
    (point / ".git").mkdir()
    (point / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (point / "trace" / "keep.txt").write_text("mine")
    err = user_error(invoke("sweep", exp, "--out", out), code=1)
    assert ".notes" in err and ".git/" in err and "trace/keep.txt" in err
    assert (point / ".notes").read_text() == "mine" and (point / ".git" / "HEAD").exists()
    assert (point / "trace" / "keep.txt").exists() and (point / "summary.json").exists()


# --------------------------------------------------------------- 5: a finished point is checked, not trusted

def _p99(out):
    return [r["kmap_p99_cycles"] for r in pq.read_table(out / "results.parquet").to_pylist()]


@pytest.mark.parametrize("damage", ["missing part", "flipped bits"])
def test_a_damaged_finished_point_is_run_again(tmp_path, damage):
    exp, points = _sweep_file(tmp_path)
    out = tmp_path / "out"
    assert invoke("sweep", exp, "--out", out).exit_code == 0
    clean = _p99(out)
    parts = sorted((out / points[1].name / "trace").glob("part-*.parquet"))
    assert len(parts) >= 3
    if damage == "missing part":
        parts[-1].unlink()
    else:
        data = bytearray(parts[1].read_bytes())
        for i in range(200, 260):
            data[i] ^= 0x5A
        parts[1].write_bytes(bytes(data))
    r = invoke("sweep", exp, "--out", out)
    assert r.exit_code == 0, r.output
    assert "2 points: 1 run, 1 already finished" in r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: point 1 ({out / points[1].name}): ")
    assert lines[0].endswith("; running it again") and "Warning" not in r.stderr
    assert _p99(out) == clean


def test_a_point_damaged_after_its_check_is_an_unfinished_row_not_a_crash(tmp_path):
    """A sweep stopped before it ran a damaged point again still writes its table."""
    from smpsim.experiments import results

    exp, points = _sweep_file(tmp_path)
    out = tmp_path / "out"
    assert invoke("sweep", exp, "--out", out).exit_code == 0
    part = out / points[1].name / "trace" / "part-00001.parquet"
    data = bytearray(part.read_bytes())
    data[200:260] = bytes(b ^ 0x5A for b in data[200:260])
    part.write_bytes(bytes(data))
    row = results.row(points[1], out / points[1].name)
    assert row["status"] == "unfinished" and str(part) in row["error"] and row["kmaps"] is None
    assert results.row(points[0], out / points[0].name)["status"] == "ok"


# -------------------------------------------------------------------------------------- 6: a full disk

class _FullDisk:
    """pyarrow's ParquetWriter, failing with ENOSPC from the trace part named ``fail_at`` on."""

    def __init__(self, fail_at: int):
        self.fail_at = fail_at

    def install(self, monkeypatch):
        import smpsim.trace.writer as writer

        real, fail_at = writer.pq.ParquetWriter, self.fail_at

        class Writer(real):
            def __init__(self, where, *a, **k):
                super().__init__(where, *a, **k)
                self.part = int(Path(where).name.split("-")[1].split(".")[0])

            def write_table(self, table, *a, **k):
                if self.part >= fail_at:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return super().write_table(table, *a, **k)

        monkeypatch.setattr(writer.pq, "ParquetWriter", Writer)


def test_a_full_disk_is_named_exit_1_and_the_run_up_to_it_is_kept(tmp_path, monkeypatch):
    _FullDisk(2).install(monkeypatch)
    out = tmp_path / "r"
    err = user_error(_run(out), code=1)
    assert "no space left on device while writing the trace part 2" in err and str(out) in err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    summary = json.loads((out / "summary.json").read_text())
    prov = json.loads((out / "provenance.json").read_text())
    assert summary["status"] == prov["status"] == "error" and "no space left" in summary["error"]
    assert summary["trace"]["parts"] == 2 and summary["trace"]["events"] == 1000
    r = invoke("export", out)
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1000  # the two parts kept, readable


def test_when_the_summary_cannot_be_written_either_the_error_says_so(tmp_path, monkeypatch):
    import smpsim.trace.rundir as rundir

    _FullDisk(1).install(monkeypatch)
    real = rundir.tempfile.mkstemp

    def mkstemp(*a, prefix="", **k):
        if prefix.startswith((".summary.json", ".provenance.json")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*a, prefix=prefix, **k)

    monkeypatch.setattr(rundir.tempfile, "mkstemp", mkstemp)
    out = tmp_path / "r"
    err = user_error(_run(out), code=1)
    assert "no space left on device while writing the trace part 1" in err
    assert "summary.json" in err and "provenance.json" in err
    assert sorted(p.name for p in (out / "trace").iterdir()) == ["part-00000.parquet"]


def test_a_sweep_with_a_full_disk_reports_the_point_and_writes_the_others(tmp_path, monkeypatch):
    import smpsim.trace.writer as writer

    exp, points = _sweep_file(tmp_path)
    real = writer.pq.ParquetWriter
    failing = points[1].name

    class Writer(real):  # the second point's disk is full
        def __init__(self, where, *a, **k):
            super().__init__(where, *a, **k)
            self.full = failing in str(where)

        def write_table(self, table, *a, **k):
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write_table(table, *a, **k)

    monkeypatch.setattr(writer.pq, "ParquetWriter", Writer)  # the sweep's forked workers inherit it
    out = tmp_path / "out"
    err = user_error(invoke("sweep", exp, "--out", out, "--jobs", "1"), code=1)
    assert "point 1 (unfinished: no space left on device while writing the trace part 0" in err
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "unfinished"] and rows[0]["kmaps"] == 300
    assert len((out / "results.csv").read_text().splitlines()) == 3


def test_results_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    import smpsim.experiments.results as results

    exp, _ = _sweep_file(tmp_path)
    out = tmp_path / "out"
    assert invoke("sweep", exp, "--out", out).exit_code == 0
    table = (out / "results.csv").read_text()
    real = results.csv.writer

    class Full:  # the header fits, the rows do not
        def __init__(self, f, *a, **k):
            self.w = real(f, *a, **k)

        def writerow(self, row):
            self.w.writerow(row)

        def writerows(self, rows):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(results.csv, "writer", Full)
    err = user_error(invoke("sweep", exp, "--out", out), code=1)
    assert "no space left on device while writing" in err and "results.csv" in err
    assert (out / "results.csv").read_text() == table
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs refused: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.timeout(120)
def test_run_on_a_full_tmpfs(small_disk, smpsim_cmd, subprocess_env):
    out = small_disk / "r"
    r = subprocess.run([*smpsim_cmd, "run", "--out", str(out), "--set", "workload.kmaps_per_cpu=200000",
                        "--set", "trace.part_events=10000"], capture_output=True, text=True, env=subprocess_env,
                       timeout=100)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: no space left on device while writing the trace part ") and "Traceback" not in r.stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == json.loads((out / "provenance.json").read_text())["status"] == "error"
    assert summary["trace"]["events"] == 10000 * summary["trace"]["parts"] > 0


# ------------------------------------------------------------------------- 9: one sweep per directory

HOLDER = """import sys
from pathlib import Path
from smpsim.trace.rundir import dir_lock
with dir_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(subprocess_env):
    """Another process holding a directory's lock until its stdin closes."""
    procs = []

    def hold(directory: Path, name: str = ".smpsim.lock"):
        directory.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory / name)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=subprocess_env)
        procs.append(proc)
        assert proc.stdout.readline() == "held\n"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(60)
def test_a_second_sweep_on_a_directory_stops_at_once(tmp_path, holder):
    exp, _ = _sweep_file(tmp_path)
    out = tmp_path / "out"
    proc = holder(out)
    err = user_error(invoke("sweep", exp, "--out", out))
    assert f"pid {proc.pid}" in err and os.uname().nodename in err and "--wait" in err
    assert sorted(p.name for p in out.iterdir()) == [".smpsim.lock"]  # nothing ran


@pytest.mark.timeout(60)
def test_sweep_wait_runs_once_the_other_is_done(tmp_path, holder, smpsim_cmd, subprocess_env):
    exp, _ = _sweep_file(tmp_path)
    out = tmp_path / "out"
    proc = holder(out)
    with open(tmp_path / "stderr", "w+") as err:
        sweep = subprocess.Popen([*smpsim_cmd, "sweep", str(exp), "--out", str(out), "--wait"], stderr=err,
                                 stdout=subprocess.DEVNULL, env=subprocess_env)
        try:
            wait_for(lambda: "waiting" in (tmp_path / "stderr").read_text(), 30, "the sweep to wait")
            assert not (out / "results.csv").exists()
            proc.stdin.close()  # the other one is done
            assert sweep.wait(50) == 0, (tmp_path / "stderr").read_text()
        finally:
            sweep.kill()
            sweep.wait()
    assert len(pq.read_table(out / "results.parquet")) == 2 and not (out / ".smpsim.lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    exp, _ = _sweep_file(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".smpsim.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    r = invoke("sweep", exp, "--out", out)
    assert r.exit_code == 0, r.output
    assert not (out / ".smpsim.lock").exists()


@pytest.mark.timeout(60)
def test_run_out_in_use_by_another_process_is_refused(tmp_path, holder):
    out = tmp_path / "r"
    proc = holder(out)
    err = user_error(_run(out))
    assert f"pid {proc.pid}" in err and str(out) in err
    assert sorted(p.name for p in out.iterdir()) == [".smpsim.lock"]


# ------------------------------------------------------------- 12: an interrupted point names the signal

def test_a_sweep_worker_stopped_for_the_user_names_the_users_signal():
    from smpsim.engines import stopping

    saved = {s: signal.getsignal(s) for s in stopping.SOFT_STOPS}
    try:
        stopping.accept_soft_stop()
        for user, soft in ((signal.SIGTERM, stopping.soft_stop_for(signal.SIGTERM)),
                           (signal.SIGINT, stopping.soft_stop_for(signal.SIGINT))):
            with stopping.handling_signals():
                os.kill(os.getpid(), soft)
                with pytest.raises(stopping.Interrupted) as e:
                    stopping.check()
            assert str(e.value) == f"interrupted by {user.name}" and e.value.exit_code == 128 + user
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
