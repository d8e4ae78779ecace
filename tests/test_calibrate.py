"""`smpsim calibrate`: the ftrace parsing and pairing on known text, and a real measurement where tracefs is."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from smpsim.calibrate.trace import pair, parse, percentile, summarize

TRACEFS = Path("/sys/kernel/tracing")


def _line(cpu: int, us: int, event: str, rest: str, task: str = "python-42") -> str:
    return f"          {task}   [{cpu:03d}] d.h..   {us // 1_000_000}.{us % 1_000_000:06d}: {event}: {rest}"


def _shootdown(t: int, latency: int, handler: int, lazy: bool = False) -> list[str]:
    """One munmap on CPU 0 that shoots down CPU 1 (or finds it lazy: no IPI, no remote flush)."""
    out = [_line(0, t, "tlb_flush", "pages:1 reason:remote IPI send (4)")]
    if not lazy:
        out.append(_line(0, t, "ipi_send_cpu", "cpu=1 callsite=on_each_cpu_cond_mask+0x20/0x60 callback=x"))
        out.append(_line(1, t + latency, "call_function_single_entry", "vector=251"))
        out.append(_line(1, t + latency, "tlb_flush", "pages:1 reason:remote shootdown (1)"))
        out.append(_line(1, t + latency + handler, "call_function_single_exit", "vector=251"))
    out.append(_line(0, t + 2, "tlb_flush", "pages:1 reason:local MM shootdown (3)"))
    return out


def test_pairing_follows_each_send_to_its_own_remote_flush():
    lines = ["# tracer: nop", "#"]
    lines += _shootdown(1_000_000, 5, 1)
    lines += _shootdown(1_000_100, 7, 2, lazy=True)   # no partner: must not borrow the next send's flush
    lines += _shootdown(1_000_200, 9, 3)
    lines.append(_line(1, 1_000_300, "tlb_flush", "pages:-1 reason:flush on task switch (0)"))
    lines.append("garbage that is not an ftrace line")
    p = pair(parse("\n".join(lines)))
    assert p.send_to_flush == [5_000, 9_000]
    assert p.unpaired == 1
    assert p.ipi_sends == 2 and p.send_to_entry == [5_000, 9_000]
    assert sorted(p.handler) == [1_000, 3_000]


def test_cpumask_sends_count_every_target():
    text = "\n".join([_line(0, 10, "ipi_send_cpumask", "cpumask=1-3,5 callsite=x callback=y")]
                     + [_line(c, 14, "call_function_entry", "vector=252") for c in (1, 2, 3, 5)])
    p = pair(parse(text))
    assert p.ipi_sends == 4 and p.send_to_entry == [4_000] * 4


def test_percentiles_are_nearest_rank():
    v = list(range(1, 101))
    assert (percentile(v, 50), percentile(v, 90), percentile(v, 99)) == (50, 90, 99)
    assert summarize([]) == {"samples": 0}
    assert summarize([3, 1, 2])["p50_ns"] == 2


def test_missing_tracefs_says_how_to_enable_it(smpsim_cmd, subprocess_env, tmp_path):
    p = subprocess.run([*smpsim_cmd, "calibrate", "--tracefs", str(tmp_path / "none")], capture_output=True,
                       text=True, env=subprocess_env, timeout=60)
    assert p.returncode == 2
    assert p.stderr.startswith("error: tracefs is not mounted at")
    assert "mount -t tracefs nodev /sys/kernel/tracing" in p.stderr and "Traceback" not in p.stderr


def _tracefs_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (tracefs instances)"
    if not (TRACEFS / "events" / "tlb" / "tlb_flush").is_dir():
        return "needs tracefs mounted at /sys/kernel/tracing with the tlb:tlb_flush event"
    if len(os.sched_getaffinity(0)) < 2:
        return "needs two CPUs"
    return None


@pytest.mark.timeout(180)
@pytest.mark.skipif(_tracefs_usable() is not None, reason=str(_tracefs_usable()))
def test_real_calibration_writes_a_loadable_preset(smpsim_cmd, subprocess_env, tmp_path):
    out = tmp_path / "host.toml"
    p = subprocess.run([*smpsim_cmd, "calibrate", "--munmaps", "3000", "--out", str(out)], capture_output=True,
                       text=True, env=subprocess_env, timeout=170)
    assert p.returncode == 0, p.stderr
    preset = tomllib.loads(out.read_text())
    measured = preset["measured"]["shootdowns"]
    assert measured["munmaps"] == 3000
    # Every munmap either shot CPU 1 down or found it lazy; the busy thread makes shootdowns happen.
    assert measured["ipi_sends"] > 0
    lat = preset["cost"]["ipi_latency"]
    assert lat["samples"] > 0 and lat["p50_ns"] <= lat["p90_ns"] <= lat["p99_ns"]
    assert lat["value"] == round(lat["p50_ns"] * 2.5)
    # The preset loads: the resolved config takes its IPI latency, and a run uses it.
    show = subprocess.run([*smpsim_cmd, "config", "show", "--set", f"machine.preset='{out}'"], capture_output=True,
                          text=True, env=subprocess_env, timeout=60)
    assert show.returncode == 0, show.stderr
    assert f"ipi_latency = {lat['value']}" in show.stdout.splitlines()


def test_calibrate_never_writes_over_an_existing_out_file(smpsim_cmd, subprocess_env, tmp_path):
    """Checked before anything is measured, so it holds without root or tracefs too."""
    out = tmp_path / "mine.toml"
    out.write_text("# the user's own notes\n")
    p = subprocess.run([*smpsim_cmd, "calibrate", "--out", str(out)], capture_output=True, text=True,
                       env=subprocess_env, timeout=60)
    assert p.returncode == 2, p.stderr
    assert f"--out {out}: exists" in p.stderr and "Traceback" not in p.stderr
    assert out.read_text() == "# the user's own notes\n"
