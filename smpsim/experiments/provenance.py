"""RUN/provenance.json: what produced a run, written once the run has ended.

Wall-clock times and host details live here and only here: summary.json and the digest depend on the
resolved config alone, so two runs of one config have the same summary and digest wherever and whenever
they ran. provenance.json is written after summary.json, for every run that started, whatever its end; its
``status`` is summary.json's (ok, error, aborted, interrupted), or "failed" when the run broke before it
could write a summary. A run with status ok is finished, and so is one that stopped on a kernel BUG or a
deadlock (error: the model is deterministic, running it again gives the same error); smpsim sweep skips
such points. One that lost a CPU process, was interrupted, failed or could not write its trace (a full
disk: status error, summary.json's trace.error says so) is not finished.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from smpsim import native
from smpsim.version import __version__
from smpsim.config import Config
from smpsim.engines import stopping
from smpsim.trace.errors import TraceWriteError
from smpsim.trace.rundir import FINISHED, PROVENANCE_NAME, config_hash, read_summary, write_provenance

REPO_ROOT = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=1)
def git_revision() -> str | None:
    """HEAD of the checkout smpsim runs from (``-dirty`` when tracked files changed); None when smpsim is
    not running from a git checkout or git is missing."""
    if not (REPO_ROOT / ".git").exists():
        return None
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


def command_line() -> str:
    """The smpsim command line of this process, as a shell would take it."""
    return shlex.join(["smpsim", *sys.argv[1:]])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def recorded(cfg: Config, run_dir: Path | None, body: Callable[[], Any], engine: str, processes: int,
             hosts: int | None = 1, sweep: dict[str, Any] | None = None):
    """Run ``body()`` (an engine run returning a RunResult) and write run_dir/provenance.json after it.

    processes and hosts are what the run used unless its summary says otherwise (the distributed engine
    counts the hosts its CPUs joined from); ``sweep`` says which point of which experiment the run is.
    """
    started, t0 = _now(), time.monotonic()

    def write(summary: dict[str, Any]) -> None:
        if run_dir is None:
            return
        write_provenance(run_dir, {
            "config_hash": config_hash(cfg),
            **({"policy": policy_source(cfg)} if cfg.policy.sha256 is not None else {}),
            "seed": cfg.seed,
            "smpsim_version": __version__,
            "model_path": native.path()["path"],  # compiled or pure Python (smpsim/native.py): speed only
            "git_revision": git_revision(),
            "engine": engine,
            "processes": summary.get("processes", processes),
            "hosts": summary.get("hosts", hosts),
            "hostname": socket.gethostname(),
            "command": command_line(),
            "cwd": os.getcwd(),
            "started": started,
            "ended": _now(),
            "wall_seconds": round(time.monotonic() - t0, 3),
            "status": summary.get("status"),
            "digest": summary.get("digest"),
            **({"error": summary["error"]} if summary.get("error") else {}),
            **({"sweep": sweep} if sweep is not None else {}),
        })

    try:
        with stopping.handling_signals():
            result = body()
    except BaseException as e:  # on record whatever the end: summary.json says where it stopped
        summary = (_summary_or_none(run_dir) if run_dir is not None else None) or {
            "status": "interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
            "error": str(e) or type(e).__name__}
        try:
            write(summary)
        except TraceWriteError:  # the run's own error stays the one shown
            if isinstance(e, TraceWriteError):
                e.unsaved.append(PROVENANCE_NAME)
        raise
    write(result.summary)
    return result


def policy_source(cfg: Config) -> dict[str, Any]:
    """A policy from outside the package: its spec, the file this host loaded and that file's SHA-256."""
    from smpsim.model.policies import resolve
    from smpsim.usercode import UserCodeError

    try:
        file = resolve(cfg.policy.name, cfg.base_dir, cfg.policy.sha256).file
    except UserCodeError:
        file = None
    return {"spec": cfg.policy.name, "file": file, "sha256": cfg.policy.sha256}


def _summary_or_none(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_summary(run_dir)
    except Exception:  # noqa: BLE001 - a damaged summary must not hide the run's own error
        return None
