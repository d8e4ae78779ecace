"""What every engine does with events: merge them into canonical order, count, digest and store them.

Lives on the coordinator's side in every engine, so the trace and summary of a run cannot depend on how the
CPUs were placed.
"""

from __future__ import annotations

from pathlib import Path

from smpsim.version import __version__
from smpsim.config import Config
from smpsim.engines.stopping import status_of
from smpsim.headline import confounders, facts_from_summary
from smpsim.model.policies import label as policy_label
from smpsim.trace.columns import by_type
from smpsim.trace.counters import Counters
from smpsim.trace.errors import TraceWriteError
from smpsim.trace.merge import CanonicalMerger
from smpsim.trace.rundir import SUMMARY_NAME, config_hash, create_run_dir, write_summary
from smpsim.trace.writer import TraceWriter


MAX_FAULTS = 20


class Recorder:
    """Events are merged, counted, hashed and written in chunks of about ``CHUNK`` events (no more than a
    trace part): every step works on columns, and a round of the engine that releases a handful of events
    costs almost nothing. Each chunk becomes a row group of the open part, encoded on the writer's thread
    while the run goes on (smpsim.trace.writer)."""

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
        self.faults: list[dict] = []  # what went wrong around the simulation (see fault())
        self.fault_count = 0

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
            try:
                self.writer.write(batch, groups)
            finally:  # counted after the hand-off to the trace's writer thread, which then overlaps it
                self._counters.feed(groups)

    def fault(self, kind: str, reason: str, cpu: int | None = None) -> None:
        """Record a fault for summary.json: a lost CPU, a refused peer, an aborted run (the first
        MAX_FAULTS in full, all of them counted)."""
        self.fault_count += 1
        if len(self.faults) < MAX_FAULTS:
            self.faults.append({"kind": kind, "cpu": cpu, "reason": reason})

    def close(self, error: BaseException | None = None, lock_held_cycles: int | None = None) -> dict:
        """Write the trace and the summary. After an error everything simulated is written; after an
        interrupt only the events below the last watermark, so the trace is a prefix of the uninterrupted
        run's and the counters match it.

        A write that fails (a full disk) ends the run with status "error": the parts written before it are
        kept, its temporary part removed, and summary.json says so if there is room for it; the
        TraceWriteError is raised after it (``unsaved`` naming summary.json when it could not be written).
        """
        reached = self.merger.watermark
        failed = None
        try:
            self._store(self.merger.release() if status_of(error) == "interrupted" else self.merger.finish())
            self.writer.close()
        except TraceWriteError as e:
            failed = e
        if self.writer.failed is not None and not isinstance(error, TraceWriteError):
            failed = error = self.writer.failed  # the first write that failed is what stopped the run
        status = status_of(error)
        digest = self.writer.close()
        summary = {
            "status": status,
            "error": None if error is None else str(error),
            "digest": digest,
            "engine": self.engine,
            "seed": self.cfg.seed,
            "cpus": self.cfg.machine.cpus,
            "policy": policy_label(self.cfg),
            **({} if self.cfg.policy.sha256 is None else {"policy_spec": self.cfg.policy.name,
                                                          "policy_sha256": self.cfg.policy.sha256}),
            "workload": self.cfg.workload.kind,
            "last_pkmap": self.cfg.machine.ring_size,
            "config_hash": config_hash(self.cfg),
            "smpsim_version": __version__,
            **self._counters.summary(),
            "trace": self.writer.stats(),
        }
        if lock_held_cycles is not None:  # held / elapsed: above ~0.5 the lock, not the flush, dominates
            held, t_end = lock_held_cycles, summary["t_end"]
            summary["kmap_lock"] = {"held_cycles": held, "utilisation": round(held / t_end, 4) if t_end else 0.0}
        summary["confounders"] = confounders(facts_from_summary(summary))
        if error is not None and not isinstance(error, TraceWriteError):  # up to which the trace is complete
            summary["t_reached"] = reached if reached is not None else 0
        if self.fault_count:
            summary["faults"] = {"count": self.fault_count, "first": self.faults}
        if self.run_dir is not None:
            try:
                write_summary(self.run_dir, summary)
            except TraceWriteError:
                if not isinstance(error, TraceWriteError):
                    raise
                error.unsaved.append(SUMMARY_NAME)
        if failed is not None:
            raise failed
        return summary
