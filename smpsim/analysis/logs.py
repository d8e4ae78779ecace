"""The operational logs of a run: RUN/logs/*.log.jsonl (structlog JSON lines, one file per process, written
by the distributed engine; smpsim.engines.distributed.logs). Each line has ``event``, ``level``,
``timestamp`` and ``process`` plus the call's own fields.

``summarize_logs`` counts lines by level and process and keeps the first warnings and errors in full. The
logs are small (a few lines per process), so they are read line by line. A line that is not a JSON object
is counted as unparseable and quoted, not fatal: a killed process can leave half a line behind.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from smpsim.trace.rundir import LOGS_DIR

LOG_SUFFIX = ".log.jsonl"
PROBLEM_LEVELS = ("warning", "error", "critical")
EXAMPLES = 10


def summarize_logs(run_dir: str | Path, examples: int = EXAMPLES) -> dict[str, Any]:
    """{files, lines, by_level, by_process: {process: {level: n}}, warnings, errors, problems: [first
    ``examples`` warning/error/critical lines in file order], unparseable: n, unparseable_examples}."""
    log_dir = Path(run_dir) / LOGS_DIR
    files = sorted(log_dir.glob(f"*{LOG_SUFFIX}")) if log_dir.is_dir() else []
    by_level: Counter = Counter()
    by_process: dict[str, Counter] = {}
    problems: list[dict[str, Any]] = []
    bad: list[str] = []
    n_bad = lines = 0
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            n_bad += 1
            bad.append(f"{f.name}: cannot read: {e.strerror or e}")
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            lines += 1
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict):
                n_bad += 1
                if len(bad) < examples:
                    bad.append(f"{f.name}:{number}: {line[:200]}")
                continue
            level = str(rec.get("level", "unknown")).lower()
            process = str(rec.get("process") or f.name[: -len(LOG_SUFFIX)])
            by_level[level] += 1
            by_process.setdefault(process, Counter())[level] += 1
            if level in PROBLEM_LEVELS and len(problems) < examples:
                extra = {k: v for k, v in rec.items() if k not in ("event", "level", "timestamp", "process")}
                problems.append({"file": f.name, "line": number, "timestamp": rec.get("timestamp"),
                                 "process": process, "level": level, "event": rec.get("event"), **extra})
    return {"dir": str(log_dir) if files else None, "files": [f.name for f in files], "lines": lines,
            "by_level": dict(sorted(by_level.items())),
            "by_process": {p: dict(sorted(c.items())) for p, c in sorted(by_process.items())},
            "warnings": by_level["warning"], "errors": by_level["error"] + by_level["critical"],
            "problems": problems, "unparseable": n_bad, "unparseable_examples": bad}
