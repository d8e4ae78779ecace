"""What every engine does with events: merge them into canonical order, count, digest and store them.

Lives on the coordinator's side in every engine, so the trace and summary of a run cannot depend on how the
CPUs were placed.
"""

from __future__ import annotations

from pathlib import Path

from smpsim import __version__
from smpsim.config import Config
from smpsim.trace.counters import Counters
from smpsim.trace.merge import CanonicalMerger
from smpsim.trace.rundir import config_hash, create_run_dir, write_summary
from smpsim.trace.writer import TraceWriter


class Recorder:
    def __init__(self, cfg: Config, run_dir: Path | None, engine: str):
        self.cfg, self.run_dir, self.engine = cfg, run_dir, engine
        if run_dir is not None:
            create_run_dir(run_dir, cfg)
        self.merger = CanonicalMerger()
        self.writer = TraceWriter(run_dir, cfg.trace.part_events, cfg.trace.enabled)
        self.counters = Counters(cfg.machine.cpus)

    def add(self, source: int, events: list[dict]) -> None:
        if events:
            self.merger.add(source, events)

    def release(self, watermark: int) -> None:
        batch = self.merger.release(watermark)
        if batch:
            self.writer.write(self.counters.feed(batch))

    def close(self, error: Exception | None = None) -> dict:
        """Write out everything still buffered (also after an error) and the summary."""
        rest = self.merger.finish()
        if rest:
            self.writer.write(self.counters.feed(rest))
        digest = self.writer.close()
        summary = {
            "status": "ok" if error is None else "error",
            "error": None if error is None else str(error),
            "digest": digest,
            "engine": self.engine,
            "seed": self.cfg.seed,
            "cpus": self.cfg.machine.cpus,
            "policy": self.cfg.policy.name,
            "workload": self.cfg.workload.kind,
            "last_pkmap": self.cfg.machine.ring_size,
            "config_hash": config_hash(self.cfg),
            "smpsim_version": __version__,
            **self.counters.summary(),
            "trace": self.writer.stats(),
        }
        if self.run_dir is not None:
            write_summary(self.run_dir, summary)
        return summary
