"""workload.kind = "trace": replaying tracefs text of kprobes on kmap_high / kunmap_high (docs/workloads.md).

The sample that ships with the docs (docs/samples/kmap.trace) holds a kunmap before any kmap of its page,
a kunmap on another CPU than its kmap (the task migrated, as the sched_migrate_task line shows) and
unrelated lines; these tests replay it as a user would."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

import smpsim
from smpsim import api
from smpsim.model import kprobe_trace, workloads
from smpsim.model.errors import ModelError
from smpsim.model.workloads import WorkloadError

SAMPLES = Path(__file__).resolve().parents[1] / "docs" / "samples"
SAMPLE = SAMPLES / "kmap.trace"


def _config(tmp_path: Path, text: str, name: str = "t.trace", cpus: int = 4, **workload) -> smpsim.config.Config:
    (tmp_path / name).write_text(text)
    tables = {"machine": {"cpus": cpus, "last_pkmap": 16},
              "workload": {"kind": "trace", "trace": str(tmp_path / name), **workload}}
    return api.load(tables)


def _call_lines() -> list[str]:
    return [line for line in SAMPLE.read_text().splitlines() if "map_high+" in line]


def test_the_sample_counts_what_it_replays_and_skips():
    stats = kprobe_trace.scan(api.load(SAMPLES / "trace.toml"))
    calls = _call_lines()
    assert stats.lines == len(SAMPLE.read_text().splitlines())
    assert stats.unused == stats.lines - len(calls)  # the header, sched_switch, sched_migrate_task
    assert stats.early_kunmaps == 1 and stats.first_early == 13  # the kworker's kunmap: its kmap predates the trace
    assert stats.migrated == 1 and stats.first_migrated == 18     # dd's kunmap on CPU 2 of its kmap on CPU 0
    assert stats.kmaps + stats.kunmaps + stats.early_kunmaps == len(calls)
    assert stats.cpus == {0, 1, 2, 3}


def test_the_docs_show_what_the_sample_prints():
    cfg = api.load(SAMPLES / "trace.toml")
    shown = api.check_workload(cfg).replace(str(SAMPLE), "docs/samples/kmap.trace")
    assert f"\n{shown}\n" in (SAMPLES.parent / "workloads.md").read_text()


def test_each_cpu_gets_its_calls_with_the_gaps_as_compute():
    cfg = api.load(SAMPLES / "trace.toml")
    page = 0xc1f4b020 // 32
    cpu0, cpu2 = workloads.build_cpu(cfg, 0)[0], workloads.build_cpu(cfg, 2)[0]
    assert [op for op in cpu0 if op[0] != "compute"][-1] == ("kmap", page)
    assert [op for op in cpu2 if op[0] != "compute"][0] == ("kunmap_migrated", page)  # replayed where it was made
    # 503.118240 - 503.118201 = 39 us from the trace's first call to CPU 0's first, at 2500 cycles per us
    assert cpu0[0] == ("compute", 39 * 2500)
    assert cpu0[2] == ("compute", 12 * 2500)
    half = workloads.build_cpu(api.load(SAMPLES / "trace.toml", {"workload.trace_clock_mhz": 1250}), 0)[0]
    assert half[0] == ("compute", 39 * 1250)


def test_the_sample_replays_the_migrated_kunmap_as_the_kernel_does():
    """kunmap_high is not per-CPU: CPU 2's kunmap drops the count of the slot CPU 0's kmap took."""
    with smpsim.run(SAMPLES / "trace.toml") as run:
        assert run.summary["status"] == "ok"
        ev = run.events
        page = 0xc1f4b020 // 32
        on_page = ev.filter(pc.equal(ev["page"], page))
        kmaps = on_page.filter(pc.equal(on_page["ev"], "kmap"))
        kunmaps = on_page.filter(pc.equal(on_page["ev"], "kunmap"))
        assert kmaps["cpu"].to_pylist() == [0] and kunmaps["cpu"].to_pylist() == [2]
        assert kunmaps["slot"].to_pylist() == kmaps["slot"].to_pylist()
        assert kunmaps["count"].to_pylist() == [1]  # back to "mapped, unused": no BUG
        assert run.summary["counters"]["kmaps"] == 6


def _variants() -> dict[str, str]:
    """The sample as other tracefs settings write it."""
    text = SAMPLE.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#")) + "\n"
    flags = re.compile(r"(\[\d{3}\]) \S{5} ")
    return {
        "trace_pipe": body,                                            # no header
        "no irq-info": flags.sub(r"\1 ", text),                        # options/irq-info off
        "old flags": re.sub(r"(\[\d{3}\]) (\S{4})\S ", r"\1 \2 ", text),  # four flag characters (before 5.x)
        "record-tgid": re.sub(r"-(\d+)(\s+)\[", r"-\1 (  \1)\2[", text),  # options/record-tgid
    }


@pytest.mark.parametrize("variant", list(_variants()))
def test_every_tracefs_format_gives_the_same_operations(tmp_path, variant):
    want = [workloads.build_cpu(api.load(SAMPLES / "trace.toml"), c)[0] for c in range(4)]
    cfg = _config(tmp_path, _variants()[variant])
    assert [workloads.build_cpu(cfg, c)[0] for c in range(4)] == want


def test_a_cpu_the_machine_lacks_is_an_error_naming_the_line(tmp_path):
    cfg = api.load(SAMPLES / "trace.toml", {"machine.cpus": 2})
    with pytest.raises(WorkloadError, match=r"kmap\.trace:18: CPU 2 is out of range.*machine\.cpus to at least 3"):
        api.check_workload(cfg)


def test_a_kmap_high_line_that_cannot_be_read_is_an_error(tmp_path):
    line = "dd-1412 [000] 17: kmap: (kmap_high+0x0/0x170) page=0xc1f4b000\n"  # trace_clock counter
    with pytest.raises(WorkloadError, match=r"t\.trace:2: a kmap_high call that cannot be read"):
        api.check_workload(_config(tmp_path, "# tracer: nop\n" + line))
    no_page = "dd-1412 [000] .... 1.000001: kmap: (kmap_high+0x0/0x170)\n"
    with pytest.raises(WorkloadError, match=r"t\.trace:1: kmap without a hex argument"):
        api.check_workload(_config(tmp_path, no_page))


def test_cli_reports_the_counts_and_refuses_a_bad_trace(tmp_path, subprocess_env):
    shutil.copy(SAMPLE, tmp_path)
    shutil.copy(SAMPLES / "trace.toml", tmp_path)

    def smpsim_(*args):
        return subprocess.run([sys.executable, "-m", "smpsim", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=subprocess_env, timeout=60)

    ok = smpsim_("config", "check", "trace.toml")
    assert (ok.returncode, ok.stdout) == (0, "ok\n")
    assert "skipped: 1 kunmap before any kmap of its page" in ok.stderr
    assert "1 kunmap on another CPU than its kmap, replayed there" in ok.stderr
    bad = smpsim_("run", "trace.toml", "--set", "machine.cpus=3", "--out", "r")
    assert bad.returncode == 2 and not (tmp_path / "r").exists()
    assert bad.stderr.startswith("error: ") and "kmap.trace:22: CPU 3 is out of range" in bad.stderr
    gone = smpsim_("config", "check", "trace.toml", "--set", 'workload.trace="missing.trace"')
    assert gone.returncode == 2 and "workload.trace: file not found" in gone.stderr


def test_the_config_records_the_trace_hash_and_refuses_another_file(tmp_path):
    cfg = _config(tmp_path, SAMPLE.read_text())
    hash_before = smpsim.trace.rundir.config_hash(cfg)
    assert cfg.workload.sha256 and f'sha256 = "{cfg.workload.sha256}"' in smpsim.config.to_toml(cfg)
    with open(tmp_path / "t.trace", "a") as f:
        f.write("dd-1412 [000] ..... 503.118500: kmap: (kmap_high+0x0/0x170) page=0xc1f4b0e0\n")
    edited = api.load({"machine": {"cpus": 4}, "workload": {"kind": "trace", "trace": str(tmp_path / "t.trace")}})
    assert smpsim.trace.rundir.config_hash(edited) != hash_before
    with pytest.raises(smpsim.config.ConfigError, match="the file changed since"):
        api.load({"machine": {"cpus": 4}, "workload": {"kind": "trace", "trace": str(tmp_path / "t.trace"),
                                                        "sha256": cfg.workload.sha256}})


def _long_trace(path: Path, calls: int) -> None:
    """calls kmap/kunmap pairs over 4 CPUs, one in ten kunmapped on the next CPU (a migration)."""
    with open(path, "w") as f:
        f.write("# tracer: nop\n")
        for i in range(calls):
            cpu, page = i % 4, 0xc1000000 + 32 * (i % 5000)
            t = 100 + i * 1e-5
            f.write(f"  dd-1{cpu}  [{cpu:03d}] .....  {t:.6f}: kmap: (kmap_high+0x0/0x170) page={page:#x}\n")
            f.write(f"  dd-1{cpu}  [{(cpu + (i % 10 == 0)) % 4:03d}] .....  {t + 4e-6:.6f}: kunmap: "
                    f"(kunmap_high+0x0/0xa0) page={page:#x}\n")


_RSS = """
import resource, sys
from smpsim import api
from smpsim.model import workloads
cfg = api.load({"machine": {"cpus": 4}, "workload": {"kind": "trace", "trace": sys.argv[1]}})
n = sum(1 for _ in workloads.program(cfg, 1))
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_a_long_trace_is_streamed_in_flat_memory(tmp_path, subprocess_env):
    """A CPU's reader holds a block of its operations, not the file: peak RSS does not grow with the
    trace (10x more calls, same peak within a few MB)."""
    def peak(calls: int) -> tuple[int, int]:
        path = tmp_path / f"{calls}.trace"
        _long_trace(path, calls)
        p = subprocess.run([sys.executable, "-c", _RSS, str(path)], capture_output=True, text=True,
                           env=subprocess_env, timeout=120, check=True)
        n, kb = p.stdout.split()
        return int(n), int(kb)

    n_small, small = peak(10_000)
    n_big, big = peak(100_000)
    assert n_big > 9 * n_small  # CPU 1's own ops: the long run really is 10x longer
    assert big - small < 8 * 1024, f"peak RSS grew from {small} kB to {big} kB"  # the big file is ~16 MB


def test_inline_and_distributed_replay_the_same(tmp_path):
    _long_trace(tmp_path / "t.trace", 400)
    tables = {"machine": {"cpus": 4, "last_pkmap": 16},
              "workload": {"kind": "trace", "trace": str(tmp_path / "t.trace")}}
    with smpsim.run(tables, engine="inline") as a, smpsim.run(tables, engine="distributed") as b:
        assert a.summary["status"] == b.summary["status"] == "ok"
        assert a.summary["counters"]["kmaps"] == 400
        assert a.summary["counters"]["wraps"] > 0  # 16 slots: the replay wraps the ring
        assert a.summary["digest"] == b.summary["digest"]


# ---- a replaced CPU process gets the same operations from its own copy -----------------------------------
def test_cpus_restored_from_snapshots_replay_the_same(tmp_path):
    """A replacement regenerates its program from the file and skips to its pc (Program.seek)."""
    from smpsim.engines import inline
    from smpsim.trace.recorder import Recorder
    from respawn_helpers import RestoringEngine

    _long_trace(tmp_path / "t.trace", 300)
    cfg = api.load({"machine": {"cpus": 4, "last_pkmap": 16},
                    "workload": {"kind": "trace", "trace": str(tmp_path / "t.trace")}})
    want = inline.run(cfg).summary
    engine = RestoringEngine(cfg, Recorder(cfg, None, "inline"))
    engine.drive()
    got = engine.core.close()
    assert engine.restored > 0 and got["digest"] == want["digest"]


@pytest.mark.timeout(180)
def test_a_killed_cpu_process_is_replaced_and_replays_the_same(tmp_path, smpsim_cmd, subprocess_env):
    from respawn_helpers import kill_cpu as _kill
    from respawn_helpers import log_events as _events
    from respawn_helpers import wait as _wait

    _long_trace(tmp_path / "t.trace", 3000)
    (tmp_path / "t.toml").write_text('[machine]\ncpus = 4\nlast_pkmap = 16\n\n'
                                     '[workload]\nkind = "trace"\ntrace = "t.trace"\n')
    want = api.run_config(api.load(tmp_path / "t.toml")).summary
    run = tmp_path / "run"
    proc = subprocess.Popen([*smpsim_cmd, "launch", "--config", str(tmp_path / "t.toml"), "--out", str(run),
                             "--checkpoint-every", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=subprocess_env)
    try:
        _wait(lambda: len(_events(run, "checkpoint")) >= 3, "3 checkpoints")
        _kill(run, 2)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr
    summary = json.loads((run / "summary.json").read_text())
    assert [f["cpu"] for f in summary["faults"]["first"]] == [2]
    assert summary["digest"] == want["digest"]


def test_a_model_error_names_the_trace_line():
    """kmap_local cannot replay a migrated hold: the error says so and names the line of that kunmap."""
    with pytest.raises(ModelError,
                       match=r"CPU 2, operation #1 \(kunmap_migrated\).*migrated.*\(trace line 18\)") as e:
        smpsim.run(SAMPLES / "trace.toml", overrides={"policy.name": "kmap-local"})
    assert e.value.run.summary["status"] == "error"


def test_a_cpu_process_whose_copy_differs_refuses_to_run(tmp_path):
    """Nothing of the workload travels: each CPU process reads its own copy, checked by the hash the
    coordinator's config records."""
    shutil.copy(SAMPLE, tmp_path)
    cfg = api.load({"machine": {"cpus": 4}, "workload": {"kind": "trace", "trace": str(tmp_path / "kmap.trace")}},
                   engine="distributed")
    with open(tmp_path / "kmap.trace", "a") as f:  # edited after the coordinator's config was made
        f.write("# one more line\n")
    with pytest.raises(ModelError, match=r"CPU \d, workload: the workload file .*kmap\.trace on this host has "
                                         rf"SHA-256 \w+, but the coordinator's has {cfg.workload.sha256}"):
        api.run_config(cfg)
