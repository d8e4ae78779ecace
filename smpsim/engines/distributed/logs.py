"""Operational logs: structlog, JSON lines, one file per process in the run directory.

Kept apart from the trace: logs say what the processes did (joins, refusals, faults), the trace says what
the simulated machine did.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import structlog


def process_logger(log_dir: str | Path | None, name: str, console: bool = False):
    """A logger writing JSON lines to LOG_DIR/NAME.log.jsonl; warnings and errors also to stderr if console."""
    sinks = []
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        sinks.append(open(Path(log_dir) / f"{name}.log.jsonl", "a", buffering=1))
    renderer = structlog.processors.JSONRenderer()

    def emit(logger, method, event_dict):
        line = renderer(logger, method, event_dict)
        for f in list(sinks):
            try:
                f.write(line + "\n")
            except OSError:  # a full disk: the run goes on, and its trace's error says why
                sinks.remove(f)
        if console and method in ("warning", "error", "critical"):
            print(f"{name}: {event_dict.get('event')}: "
                  + " ".join(f"{k}={v}" for k, v in event_dict.items()
                             if k not in ("event", "timestamp", "level", "process")), file=sys.stderr)
        raise structlog.DropEvent

    return structlog.wrap_logger(
        None,
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    lambda _l, _m, ed: {**ed, "process": name},
                    emit],
    )


class RateLimitedLog:
    """Errors a hostile peer can cause at will (refused messages; analyze counts them): the first ``first`` are logged one by
    one, later ones only counted, and every ``interval`` seconds one summary line gives the counts by
    reason. So a flood cannot fill the disk or slow the run down with logging."""

    MAX_REASONS = 32  # distinct reasons counted; more are counted as "other"

    def __init__(self, log, event: str = "refused", first: int = 20, interval: float = 5.0):
        self.log, self.event, self.first, self.interval = log, event, first, interval
        self.total = 0
        self.suppressed: dict[str, int] = {}
        self.last_summary = time.monotonic()

    def __call__(self, reason: str, **fields) -> None:
        self.total += 1
        if self.total <= self.first:
            if self.log is not None:
                self.log.error(self.event, reason=reason, **fields)
            return
        key = reason.split(":", 1)[0][:80]
        if key not in self.suppressed and len(self.suppressed) >= self.MAX_REASONS:
            key = "other"
        self.suppressed[key] = self.suppressed.get(key, 0) + 1

    def tick(self, now: float | None = None) -> None:
        """Log the summary if an interval has passed since the last one (call it from the main loop)."""
        now = time.monotonic() if now is None else now
        if now - self.last_summary >= self.interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        self.last_summary = time.monotonic() if now is None else now
        if self.suppressed:
            if self.log is not None:
                self.log.error(f"{self.event} (summary)", count=sum(self.suppressed.values()),
                                 by_reason=dict(sorted(self.suppressed.items())), total=self.total,
                                 note=f"only the first {self.first} are logged one by one")
            self.suppressed = {}
