"""Replacing CPUs in tests: an inline engine that restores every CPU from its snapshot every few rounds, and
reading, killing and waiting on the processes of a launch through their logs."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import msgpack
import psutil

from smpsim.engines import inline
from smpsim.engines.core import CpuPort
from smpsim.model import workloads
from smpsim.model.cpu import Cpu

from proc_helpers import wait_for


class RestoringEngine(inline.InlineEngine):
    """Every few rounds each CPU is replaced by a new one restored from its snapshot sent through msgpack,
    as a replacement process gets it."""

    def __init__(self, cfg, recorder, every: int = 2):
        super().__init__(cfg, recorder)
        self.cfg, self.every, self.rounds, self.restored = cfg, every, 0, 0

    def step(self):
        self.rounds += 1
        if self.rounds % self.every == 1:
            for c, port in enumerate(self.ports):
                state = msgpack.unpackb(msgpack.packb(port.snapshot()), raw=False, strict_map_key=False)
                cpu = Cpu(self.cfg, c, workloads.program(self.cfg, c))
                new = CpuPort(cpu)
                new.restore(state)
                self.cpus[c], self.ports[c] = cpu, new
                self.restored += 1
        return super().step()


def log_lines(path: Path) -> list[dict]:
    """The lines of a JSON-lines log written so far (a line being written is left out)."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def log_events(run: Path, event: str, cpu: int | None = None) -> list[dict]:
    return [x for x in log_lines(run / "logs" / "coordinator.log.jsonl")
            if x.get("event") == event and (cpu is None or x.get("cpu") == cpu)]


def pid_of(run: Path, cpu: int) -> int:
    """The pid of CPU cpu's current process: the last that joined (its replacement says so too)."""
    joined = [x for x in log_lines(run / "logs" / f"cpu-{cpu}.log.jsonl") if x.get("event") == "joining"]
    return joined[-1]["pid"]


def kill_cpu(run: Path, cpu: int) -> None:
    pid = pid_of(run, cpu)
    assert psutil.Process(pid).ppid() > 1  # a CPU process of the launch, still running
    psutil.Process(pid).send_signal(signal.SIGKILL)


def wait(pred, what: str, timeout: float = 90):
    return wait_for(pred, timeout, what)
