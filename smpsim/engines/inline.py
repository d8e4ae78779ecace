"""The single-process engine: every Cpu and the Coordinator in one process, messages as function calls.

It runs the same protocol as the distributed engine (requests, replies, IPIs, safe-time bounds), so the two
cannot disagree: only the transport differs.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from smpsim.config import Config
from smpsim.engines import stopping
from smpsim.engines.core import Core, CpuPort, Down
from smpsim.engines.inline_transport import deliver_ports, work_ports
from smpsim.trace.recorder import Recorder
from smpsim.model import workloads
from smpsim.model.coordinator import Coordinator
from smpsim.model.cpu import Cpu
from smpsim.model.errors import ModelError
from smpsim.trace.errors import TraceWriteError

# Young-generation collections while a run goes on: the run allocates millions of short-lived tuples
# (messages, events) that reference counting frees, so collecting at every 700 new container objects (the
# default) only rescans the buffered events: 4-9% of the run's time. A run makes no cycles per event.
GC_YOUNG = 100_000


@contextmanager
def young_collections() -> Iterator[None]:
    """Collect the young generation every GC_YOUNG new objects at most, meanwhile."""
    threshold = gc.get_threshold()
    gc.set_threshold(max(GC_YOUNG, threshold[0]), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


@dataclass
class RunResult:
    """What a single-process run returns: its summary, its run directory (None: kept in memory) and the
    wall-clock figures `smpsim bench` reads."""
    summary: dict
    run_dir: Path | None
    # Wall-clock measurements (seconds, start-up, messages, peak RSS): for benchmarks, never in the trace.
    timing: dict = field(default_factory=dict)


def build_cpus(cfg: Config) -> list[Cpu]:
    return [Cpu(cfg, c, workloads.program(cfg, c)) for c in range(cfg.machine.cpus)]


def run(cfg: Config, out_dir: Path | None = None,
        progress: Callable[[dict], None] | None = None) -> RunResult:
    t0 = time.perf_counter()
    engine = InlineEngine(cfg, Recorder(cfg, out_dir, "inline"))
    t1 = time.perf_counter()
    with young_collections():  # the close too: at the default threshold its last chunk set off a full collection
        try:
            engine.drive(progress)
        except (ModelError, stopping.Interrupted, TraceWriteError) as e:
            engine.fail(e)
            raise
        t2 = time.perf_counter()
        summary = engine.core.close()
    t3 = time.perf_counter()
    # start-up (building the CPUs, the core, the recorder) and the close (the final trace write) apart:
    # what `smpsim bench` weighs against the whole run for its steady-state figure
    return RunResult(summary, out_dir, {"seconds": t3 - t0, "startup_s": t1 - t0, "close_s": t3 - t2,
                                        "rounds": engine.rounds})


class InlineEngine:
    """The inline transport around the core: every batch a function call, delivered at once."""

    def __init__(self, cfg: Config, recorder, coord: Coordinator | None = None):
        self.cpus = build_cpus(cfg)
        self.core = Core(coord or Coordinator(cfg), recorder, workloads.script_lines(cfg))
        self.ports = [CpuPort(c) for c in self.cpus]
        self.report = [False] * len(self.ports)
        # The CPUs that may have something to say: those delivered a batch since they last worked, and those
        # that stopped at RUN_CHUNK operations. Any other CPU's work() returns None: polling it is wasted.
        self.active = set(range(len(self.ports)))
        # Rounds driven: each waits on the one before, so this is the run's critical path in round trips
        # (what no transport can shorten; `smpsim bench` reports it per kmap).
        self.rounds = 0

    def step(self) -> list[tuple[int, Down]]:
        """One round: every CPU that can runs and reports, the core grants; what to deliver."""
        work_ports(self.core, self.ports, self.report, self.active, stopping.RUN_CHUNK)
        return self.core.step()

    def deliver(self, downs: list[tuple[int, Down]]) -> None:
        deliver_ports(downs, self.ports, self.report, self.active)

    def drive(self, progress: Callable[[dict], None] | None = None) -> None:
        with young_collections():
            self._drive(progress)

    def _drive(self, progress: Callable[[dict], None] | None) -> None:
        core = self.core
        self.deliver(core.start())
        while True:
            self.deliver(self.step())
            self.rounds += 1
            core.release()
            if core.complete():
                return
            stopping.check()  # a signal: stop here, where everything below the watermark is written
            if progress is not None and self.rounds % 256 == 0:
                progress(core.progress())

    def fail(self, err: BaseException) -> dict:
        """End the run on a model error (everything simulated is kept) or an interrupt (what is below the
        watermark is)."""
        for cpu in self.cpus:
            self.core.rec.add(1 + cpu.id, cpu.events)
            cpu.events = []
        return self.core.fail(err)
