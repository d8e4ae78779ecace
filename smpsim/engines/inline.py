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
from smpsim.engines.core import Core, CpuPort
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
    cpus = []
    for c in range(cfg.machine.cpus):
        ops, lines = workloads.build_cpu(cfg, c)
        cpus.append(Cpu(cfg, c, ops, lines))
    return cpus


def run(cfg: Config, out_dir: Path | None = None,
        progress: Callable[[dict], None] | None = None) -> RunResult:
    t0 = time.perf_counter()
    cpus = build_cpus(cfg)
    core = Core(Coordinator(cfg), Recorder(cfg, out_dir, "inline"), [c.lines for c in cpus])
    try:
        drive(core, [CpuPort(c) for c in cpus], progress)
    except ModelError as e:
        for cpu in cpus:  # keep everything simulated up to the error
            core.rec.add(1 + cpu.id, cpu.events)
        core.fail(e)
        raise
    summary = core.close()
    return RunResult(summary, out_dir, {"seconds": time.perf_counter() - t0})


def drive(core: Core, ports: list[CpuPort], progress: Callable[[dict], None] | None = None) -> None:
    """The inline transport: batches as function calls, delivered at once."""
    report = [False] * len(ports)
    for c, down in core.start():
        report[c] = ports[c].deliver(down)
    rounds = 0
    while True:
        for c, port in enumerate(ports):
            up = port.work(None, report[c])
            report[c] = False
            if up is not None:
                core.receive(c, up)
        for c, down in core.step():
            report[c] = ports[c].deliver(down)
        core.release()
        if core.complete():
            return
        rounds += 1
        if progress is not None and rounds % 256 == 0:
            progress(core.progress())
