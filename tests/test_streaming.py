"""Streamed programs and flat memory: a CPU's operations are generated as it consumes them, exactly the
sequence the list-building generator gave, and nothing a run holds grows with its length."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
import tracemalloc

import pytest

import reference_workloads
from registries import GENERATED_WORKLOADS
from smpsim.config import validate
from smpsim.engines import inline
from smpsim.engines.distributed import protocol
from smpsim.model import workloads
from smpsim.model.cpu import DONE, INF, Cpu
from smpsim.model.messages import OP_KINDS

# Configs that reach every branch of the generators: nesting (with redraws and probing), few pages,
# zipf's tables, stream's offsets, shared's hot set, pingpong's pairs (an odd CPU count leaves one alone),
# and more kmaps than one generated block holds.
VARIANTS = [
    {},
    {"nesting": 3, "pages": 40},
    {"nesting": 8, "pages": 5},
    {"nesting": 4, "hot_pages": 2, "hot_fraction": 1.0},
    {"think": 0, "hold": 100_000, "accesses_per_kmap": 1, "write_fraction": 0.9},
    {"kmaps_per_cpu": 0},
]


def cfg_of(kind: str, cpus: int = 3, seed: int = 7, **workload):
    workload.setdefault("kmaps_per_cpu", 700)
    return validate({"seed": seed, "machine": {"cpus": cpus}, "workload": {"kind": kind, **workload}})


@pytest.mark.parametrize("kind", GENERATED_WORKLOADS)
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_streamed_program_is_the_list_built_sequence(kind, variant):
    cfg = cfg_of(kind, **VARIANTS[variant])
    for c in range(cfg.machine.cpus):
        want = reference_workloads.build_cpu(cfg, c)
        prog = workloads.program(cfg, c)
        assert list(prog) == want, f"{kind} {VARIANTS[variant]} cpu {c}"  # the documented form, code first
        assert all(type(op[0]) is int for op in prog.ops)  # the window the Cpu reads: kind first
        assert workloads.build_cpu(cfg, c) == (want, None)


def test_script_program_streams_and_names_lines(tmp_path):
    script = tmp_path / "s.jsonl"
    rows = []
    for i in range(1500):  # more than one block
        rows += [{"cpu": i % 2, "op": "kmap", "page": i}, {"cpu": i % 2, "op": "kunmap", "page": i}]
    script.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = validate({"machine": {"cpus": 2}, "workload": {"kind": "script", "script": str(script)}})
    prog = workloads.program(cfg, 1)
    seen = []
    pc = 0
    while prog.fill(pc):
        seen.append(prog.ops[pc - prog.base])
        assert len(prog.ops) <= 1_100
        pc += 1
    mine = [(n, r) for n, r in enumerate(rows, 1) if r["cpu"] == 1]
    assert seen == [(OP_KINDS[r["op"]], r["page"]) for _, r in mine]  # kind first
    assert workloads.script_lines(cfg)[1] == [n for n, _ in mine]
    assert workloads.script_lines(cfg_of("uniform")) is None


def test_program_holds_a_bounded_window():
    """Consumed as a Cpu does (the next op, and 65 ahead for request_bound), a program of 110,000 ops never
    holds more than a few blocks of them."""
    cfg = cfg_of("uniform", cpus=1, kmaps_per_cpu=10_000, nesting=4)
    prog = workloads.program(cfg, 0)
    largest = pc = 0
    while prog.fill(pc):
        if pc % 7 == 0:
            prog.fill(pc, 65)
        largest = max(largest, len(prog.ops))
        pc += 1
    assert pc == 10_000 * 11
    assert largest <= 2_000, f"the window grew to {largest} operations"


def test_cpu_consumes_a_program_it_never_holds_whole():
    """A kmap-local CPU runs alone (no coordinator): its program's window stays small all along, and it
    does every kmap of a long program."""
    cfg = validate({"machine": {"cpus": 1}, "policy": {"name": "kmap-local"},
                    "workload": {"kmaps_per_cpu": 5_000}})
    cpu = Cpu(cfg, 0, workloads.program(cfg, 0))
    largest = 0
    while cpu.state != DONE:
        cpu.run(INF, max_ops=1000)
        largest = max(largest, len(cpu.program.ops))
        cpu.events = []
    assert cpu.pc == 5_000 * 11  # every operation: think, kmap, 4 x (hold, access), kunmap
    assert largest <= 2_000


def _peak_bytes(kmaps: int, policy: str) -> int:
    cfg = validate({"machine": {"cpus": 2, "last_pkmap": 64}, "policy": {"name": policy},
                    "workload": {"kmaps_per_cpu": kmaps, "pages": 300},
                    "trace": {"enabled": False, "part_events": 1000}})  # the recorder's chunks: <= a part
    tracemalloc.start()
    try:
        inline.run(cfg, None)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _growth(policy: str) -> float:
    _peak_bytes(200, policy)  # first-use allocations (imports, caches) are not the run's
    return _peak_bytes(1200, policy) / _peak_bytes(200, policy)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("policy", ["linux-2.4", "kmap-local"])
def test_memory_does_not_grow_with_run_length(policy):
    """Peak Python memory of a whole run (tracemalloc) with 6x the kmaps stays within 1.25x. kmap-local
    CPUs never wait for each other: only the coordinator's RUN_AHEAD keeps them together."""
    growth = _growth(policy)
    assert growth <= 1.25, f"{policy}: 6x the kmaps took {growth:.2f}x the peak memory"


@pytest.mark.timeout(300)
def test_the_memory_check_catches_a_program_held_whole(monkeypatch):
    """The check above fails for the list-building generator (every op in memory from the start)."""
    monkeypatch.setattr(workloads, "program",
                        lambda cfg, c: workloads.Program.of(reference_workloads.build_cpu(cfg, c)))
    assert _growth("linux-2.4") > 1.5


def test_run_length_bound_in_config():
    assert validate({"workload": {"kmaps_per_cpu": 10**12}}).workload.kmaps_per_cpu == 10**12
    with pytest.raises(Exception, match="kmaps_per_cpu"):
        validate({"workload": {"kmaps_per_cpu": 10**30}})


def _address_space_limit():
    # A regression (a program built whole) then fails with MemoryError instead of filling the machine.
    limit = 3 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _wait_for(pred, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"launch exited ({proc.returncode}) before {what}: {proc.stderr.read()[-800:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _all_joined(log) -> bool:
    try:
        return any(json.loads(x).get("event") == "all joined" for x in log.read_text().splitlines() if x)
    except (OSError, json.JSONDecodeError):
        return False


@pytest.mark.timeout(120)
def test_launch_with_an_endless_program_joins_at_once_and_keeps_running(tmp_path, smpsim_cmd, subprocess_env):
    """10^12 kmaps per CPU: every CPU joins within seconds, the run goes on past the heartbeat timeout
    (a CPU that did not answer would end it) and writes its trace as it goes, and Ctrl-C ends it."""
    out = tmp_path / "run"
    proc = subprocess.Popen([*smpsim_cmd, "launch", "--cpus", "4", "--out", str(out), "--no-respawn",  # silence: an error
                             "--set", "workload.kmaps_per_cpu=1000000000000", "--set", "trace.part_events=5000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env,
                            start_new_session=True, preexec_fn=_address_space_limit)
    try:
        t0 = time.monotonic()
        _wait_for(lambda: _all_joined(out / "logs" / "coordinator.log.jsonl"), 20, "every CPU joined", proc)
        joined_after = time.monotonic() - t0
        t_joined = time.monotonic()
        _wait_for(lambda: time.monotonic() - t_joined > protocol.PEER_TIMEOUT_S + 1
                  and len(list((out / "trace").glob("part-*.parquet"))) >= 2, 60,
                  "the run to go on past the heartbeat timeout, writing its trace", proc)
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C on a terminal
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert joined_after < 10
    assert "stopped responding" not in stderr and "Traceback" not in stderr, stderr
    assert proc.returncode != 0
