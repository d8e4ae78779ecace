"""The single-process engine: every Cpu and the Coordinator in one process, messages as function calls.

It runs the same protocol as the distributed engine (requests, replies, IPIs, safe-time bounds), so the two
cannot disagree: only the transport differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from smpsim.config import Config
from smpsim.engines.recorder import Recorder
from smpsim.model import workloads
from smpsim.model.coordinator import Coordinator
from smpsim.model.cpu import Cpu
from smpsim.model.errors import ModelError


@dataclass
class RunResult:
    summary: dict
    run_dir: Path | None
    # Wall-clock measurements (seconds, start-up, messages, peak RSS): for benchmarks, never in the trace.
    timing: dict = field(default_factory=dict)


def build_cpus(cfg: Config) -> list[Cpu]:
    return [Cpu(cfg, c, workloads.program(cfg, c)) for c in range(cfg.machine.cpus)]


def locate(err: ModelError, lines: list[list[int]] | None) -> ModelError:
    """Add the script line to a model error raised at a scripted operation (lines: per CPU, or None)."""
    if lines is not None and err.cpu is not None and err.position is not None and 0 <= err.cpu < len(lines):
        mine = lines[err.cpu]
        if 0 <= err.position < len(mine):
            err.args = (f"{err.args[0]} (script line {mine[err.position]})",)
    return err


def run(cfg: Config, out_dir: Path | None = None,
        progress: Callable[[dict], None] | None = None) -> RunResult:
    t0 = time.perf_counter()
    cpus = build_cpus(cfg)
    coord = Coordinator(cfg)
    rec = Recorder(cfg, out_dir, "inline")
    rounds = 0
    try:
        safe = coord.safe_until()
        while True:
            for cpu in cpus:
                if cpu.can_run(safe):
                    for msg in cpu.run(safe):
                        coord.receive(msg)
            coord.step()
            for dest, msg in coord.outbox:
                cpus[dest].deliver(msg)
            coord.outbox.clear()
            rec.add(0, coord.events)
            coord.events = []
            watermark = coord.bound()
            for cpu in cpus:
                rec.add(1 + cpu.id, cpu.events)
                cpu.events = []
                h = cpu.horizon()
                if h < watermark:
                    watermark = h
            rec.release(watermark)
            if coord.finished():
                break
            safe = coord.safe_until()
            rounds += 1
            if progress is not None and rounds % 256 == 0:
                progress({"t": watermark, **rec.counters.c})
    except ModelError as e:
        for cpu in cpus:  # keep everything simulated up to the error
            rec.add(1 + cpu.id, cpu.events)
        rec.add(0, coord.events)
        rec.close(locate(e, workloads.script_lines(cfg)))
        raise
    summary = rec.close()
    return RunResult(summary, out_dir, {"seconds": time.perf_counter() - t0})
