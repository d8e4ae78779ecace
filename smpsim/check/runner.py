"""Running one check case: in memory on the inline engine (the events kept for the explanation), or through
the run API on the distributed engine (real CPU processes), and what counts as a failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smpsim.config import Config
from smpsim.trace.recorder import Recorder
from smpsim.model.errors import DeadlockError, ModelError, PolicyError

# The kinds of failure, in the words the report uses.
STALE, BUG, DEADLOCK, CRASH, MISMATCH = "stale use", "kernel BUG", "deadlock", "policy error", "engines disagree"


def _kind(e: ModelError) -> str:
    """A model error's kind: a policy that broke its contract or raised is its own kind, not a kernel BUG."""
    return DEADLOCK if isinstance(e, DeadlockError) else CRASH if isinstance(e, PolicyError) else BUG


class _Keeping(Recorder):
    """A Recorder without a run directory that also keeps the canonical stream: check runs are small, and
    explaining a stale use needs the events before it."""

    def __init__(self, cfg: Config):
        super().__init__(cfg, None, "inline")
        self.kept: list[tuple] = []

    def _store(self, batch: list[tuple]) -> None:
        self.kept.extend(batch)
        super()._store(batch)


@dataclass
class Outcome:
    """What one run of a case gave: the summary (counters, digest), the events in canonical order (inline
    engine only), and the failure, if any (kind, message)."""
    summary: dict[str, Any]
    events: list[tuple] = field(default_factory=list)
    failure: tuple[str, str] | None = None

    @property
    def counters(self) -> dict[str, Any]:
        return self.summary.get("counters") or {}


def run_inline(cfg: Config) -> Outcome:
    """Run cfg on the inline engine in this process, writing nothing."""
    from smpsim.engines.inline import InlineEngine

    rec = _Keeping(cfg)
    engine = InlineEngine(cfg, rec)
    failure = None
    try:
        engine.drive()
        summary = engine.core.close()
    except ModelError as e:
        summary = engine.fail(e)
        failure = (_kind(e), str(e))
    except Exception as e:  # noqa: BLE001 - a policy's own exception is a finding, not a crash of the checker
        summary = {}
        failure = (CRASH, f"{type(e).__name__}: {e}")
    out = Outcome(summary, rec.kept, failure)
    return _judge(out)


def run_distributed(cfg: Config) -> Outcome:
    """Run cfg on the distributed engine (a process per CPU over ZeroMQ) into a temporary directory."""
    from smpsim import api

    cfg = cfg.model_copy(update={"trace": cfg.trace.model_copy(update={"enabled": False})})
    try:
        with api.run_config(cfg.model_copy(update={"run": cfg.run.model_copy(update={"engine": "distributed"})})) as run:
            summary = run.summary
    except ModelError as e:
        summary = getattr(getattr(e, "run", None), "summary", None) or {}
        return Outcome(summary, failure=(_kind(e), str(e)))
    return _judge(Outcome(summary))


def _judge(out: Outcome) -> Outcome:
    if out.failure is None and out.counters.get("stale"):
        n = out.counters["stale"]
        out.failure = (STALE, f"{n:,} access{'es' if n != 1 else ''} through stale translations")
    return out
