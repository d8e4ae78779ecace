"""The file a workload reads (a script, a kprobe trace, a generator's source): its SHA-256, and the rule
for CPU processes.

No workload travels over the wire. The coordinator ships the resolved config, whose workload path is
absolute and whose ``workload.sha256`` is the coordinator's copy's hash; each CPU process reads its own
copy (the same path on its host) and is refused, before it runs anything, when that copy's hash differs.
A replacement process (engines/distributed/respawn.py) does the same and regenerates its program from the
file, so it gets the same operations.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smpsim.inputs import file_problem

if TYPE_CHECKING:
    from smpsim.config import Config

# The workload kinds read from a file, and the config key naming it.
WORKLOAD_FILE_KEYS = {"script": "script", "trace": "trace", "python": "generator"}
_CHUNK = 1 << 20


@lru_cache(maxsize=32)
def _sha256_cached(path: str, _mtime_ns: int, _size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):  # streamed: a trace of gigabytes hashes in constant memory
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    st = Path(path).stat()
    return _sha256_cached(str(path), st.st_mtime_ns, st.st_size)


def source_sha256(cfg: "Config") -> str | None:
    """SHA-256 of the workload's file; None for a generated kind, or a script that is not there (the
    script checks report that). Raises ValueError naming the key for a trace or generator that cannot be
    read."""
    w = cfg.workload
    if w.kind == "python":
        from smpsim import usercode

        assert w.generator is not None
        try:
            return usercode.source_sha256(w.generator, cfg.base_dir)[1]
        except usercode.UserCodeError as e:
            raise ValueError(f"workload.generator: {e}") from None
    path = cfg.workload_file_path()
    if path is None:
        return None
    key = WORKLOAD_FILE_KEYS[w.kind]
    if (why := file_problem_of(cfg)) is not None and not why.endswith("file not found"):
        raise ValueError(why)  # a FIFO, a device, a directory: never opened (open() blocks on a FIFO)
    try:
        return sha256_file(path)
    except FileNotFoundError:
        if key == "script":
            return None
        raise ValueError(f"workload.trace: file not found ({path})") from None
    except OSError as e:
        raise ValueError(f"workload.{key}: cannot read {path}: {e.strerror or e}") from None


def file_problem_of(cfg: "Config") -> str | None:
    """Why a workload's script or trace file cannot be opened (missing, a directory, a FIFO, a device), or
    None: checked with stat, before anything opens it."""
    path = cfg.workload_file_path() if cfg.workload.kind in ("script", "trace") else None
    why = None if path is None else file_problem(path)
    return None if why is None else f"workload.{WORKLOAD_FILE_KEYS[cfg.workload.kind]}: {path}: {why}"


def shipped(cfg: "Config") -> dict[str, Any]:
    """The config as the coordinator sends it to CPU processes: the workload's file named by its absolute
    path (a CPU process has no config folder to resolve a relative one against)."""
    data = cfg.model_dump(mode="json")
    w = data["workload"]
    if cfg.workload.kind in ("script", "trace"):
        w[WORKLOAD_FILE_KEYS[cfg.workload.kind]] = str(Path(cfg.workload_file_path() or "").resolve())
    elif cfg.workload.kind == "python" and cfg.workload.generator:
        from smpsim import usercode

        target, attr = usercode.split(cfg.workload.generator)
        if usercode.is_file_target(target):
            w["generator"] = f"{usercode.resolve_file(target, cfg.base_dir)}:{attr}"
    return data


class CopyMismatch(Exception):
    """This host's copy of the workload's file is missing or differs from the coordinator's."""


def check_copy(cfg: "Config") -> None:
    """On a CPU process: refuse a missing copy of the workload's file, or one whose SHA-256 differs from
    the coordinator's (``workload.sha256``), before anything of it runs."""
    w = cfg.workload
    if w.kind not in WORKLOAD_FILE_KEYS or w.sha256 is None:
        return
    if w.kind == "python":
        from smpsim import usercode

        assert w.generator is not None
        try:
            _, mine = usercode.source_sha256(w.generator, cfg.base_dir)
        except usercode.UserCodeError as e:
            raise CopyMismatch(f"workload.generator: {e}; give this host the same file at the same "
                               "path (or install the same module)") from None
        where = w.generator
    else:
        path = cfg.workload_file_path()
        key = WORKLOAD_FILE_KEYS[w.kind]
        try:
            mine = sha256_file(path or "")
        except OSError as e:
            raise CopyMismatch(f"workload.{key}: cannot read {path} on this host ({e.strerror or e}); "
                               "copy the coordinator's file to the same path") from None
        where = str(path)
    if mine != w.sha256:
        raise CopyMismatch(f"the workload file {where} on this host has SHA-256 {mine}, but the "
                           f"coordinator's has {w.sha256}: give every host the same file")
