"""What every engine does with events: merge them into canonical order, count, digest and store them.

Lives on the coordinator's side in every engine, so the trace and summary of a run cannot depend on how the
CPUs were placed.
"""

from __future__ import annotations

from pathlib import Path

from smpsim import __version__
from smpsim.config import Config
from smpsim.trace.columns import by_type
from smpsim.trace.counters import Counters
from smpsim.trace.merge import CanonicalMerger
from smpsim.trace.rundir import config_hash, create_run_dir, write_summary
from smpsim.trace.writer import TraceWriter


class Recorder:
    """Events are merged, counted, hashed and written in chunks of about ``CHUNK`` events (no more than a
    trace part, so parts reach the disk as promptly as before): every step works on columns, and a round of
    the engine that releases a handful of events costs almost nothing."""

    CHUNK = 16384

    def __init__(self, cfg: Config, run_dir: Path | None, engine: str):
        self.cfg, self.run_dir, self.engine = cfg, run_dir, engine
        if run_dir is not None:
            create_run_dir(run_dir, cfg)
        self.merger = CanonicalMerger()
        self.writer = TraceWriter(run_dir, cfg.trace.part_events, cfg.trace.enabled)
        self._counters = Counters(cfg.machine.cpus)
        self._added = 0  # events added since the last merge
        self._chunk = min(self.CHUNK, cfg.trace.part_events)

    def add(self, source: int, events: list[tuple]) -> None:
        if events:
            self.merger.add(source, events)
            self._added += len(events)

    def release(self, watermark: int) -> None:
        """Everything before ``watermark`` may go out; it does once enough has piled up."""
        self.merger.advance(watermark)
        if self._added >= self._chunk:
            self._added = 0
            self._store(self.merger.release())

    @property
    def counters(self) -> Counters:
        """The counters of everything released so far (asking stores what is pending: for progress
        displays, not for every round)."""
        self._added = 0
        self._store(self.merger.release())
        return self._counters

    def _store(self, batch: list[tuple]) -> None:
        if batch:
            groups = by_type(batch)
            self._counters.feed(groups)
            self.writer.write(batch, groups)

    def close(self, error: Exception | None = None) -> dict:
        """Write out everything still buffered (also after an error) and the summary."""
        self._store(self.merger.finish())
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
            **self._counters.summary(),
            "trace": self.writer.stats(),
        }
        if self.run_dir is not None:
            write_summary(self.run_dir, summary)
        return summary
