"""Operational logs: structlog, JSON lines, one file per process in the run directory.

Kept apart from the trace: logs say what the processes did (joins, refusals, faults), the trace says what
the simulated machine did.
"""

from __future__ import annotations

import sys
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
        for f in sinks:
            f.write(line + "\n")
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
