"""Run directories: creation, config.toml, summary.json and default names.

```
RUN/
  config.toml      resolved config (every default filled in)
  summary.json     counters, per-CPU TLB stats, digest, status; written atomically at the end of the run
  provenance.json  what produced the run (config hash, version, git revision, command, wall times);
                   written after summary.json, so its presence marks a finished run
  trace/part-00000.parquet ...
  logs/coordinator.log.jsonl, logs/cpu-N.log.jsonl   the distributed engine's operational logs
  .smpsim.lock     while a run (or a sweep, in its directory) is using it: its pid and host
```

A run writes over nothing it did not create: it takes a directory that is empty, or holds an unfinished
run of the same config (whose files it removes by name); anything else there stops it with an error naming
what is there (``claim_run_dir``, ``run_files``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import tomllib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from smpsim.config import Config, to_toml
from smpsim.inputs import TOO_LONG_INTEGER, undecodable
from smpsim.trace.errors import TraceError, TraceWriteError

CONFIG_NAME = "config.toml"
SUMMARY_NAME = "summary.json"
PROVENANCE_NAME = "provenance.json"
LOGS_DIR = "logs"
TRACE_DIR = "trace"
LOCK_NAME = ".smpsim.lock"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
FINISHED = ("ok", "error")  # statuses of a finished run (smpsim.experiments.provenance says why)

# What a run writes, by name: anything else in a run directory is someone else's.
_OWN_FILES = {CONFIG_NAME, SUMMARY_NAME, PROVENANCE_NAME, LOCK_NAME}
_OWN_TEMPORARY = re.compile(r"\.(config\.toml|summary\.json|provenance\.json)\.\w+\.tmp")  # atomic_write_text's
_OWN_IN = {TRACE_DIR: re.compile(r"part-\d{5,}\.parquet|\.part-\d{5,}\.parquet\.tmp"),
           LOGS_DIR: re.compile(r"(coordinator|cpu-\d+|cpu-pid\d+)\.log\.jsonl")}

# Runs of this process, from claim_run_dir on until they end: the engines' own create_run_dir then
# finds the directory as the run made it (its log files included) and leaves it be.
_claimed: set[Path] = set()


def part_name(index: int) -> str:
    return f"{PART_PREFIX}{index:05d}{PART_SUFFIX}"


def config_hash(cfg: Config) -> str:
    """SHA-256 (hex) of the resolved config as written to config.toml."""
    return hashlib.sha256(to_toml(cfg).encode()).hexdigest()


def default_run_dir(cfg: Config, root: str | Path = "runs", now: datetime | None = None) -> Path:
    """``runs/<UTC yyyymmdd-HHMMSS>-<8 hex of the config hash>``, made unique with ``-2``, ``-3``, ...

    The directory is created (empty) here, which reserves the name even against a concurrent run.
    """
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{config_hash(cfg)[:8]}"
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TraceError(f"{root}: cannot create the runs directory: {e.strerror}") from None
    for i in range(1, 10_000):
        cand = root / (base if i == 1 else f"{base}-{i}")
        try:
            cand.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise TraceError(f"{cand}: cannot create the run directory: {e.strerror}") from None
        return cand
    raise TraceError(f"{root / base}: no free run directory name")


def create_run_dir(path: str | Path, cfg: Config) -> Path:
    """Create (or take over an empty) run directory and write its config.toml; the engines call it.

    Refuses a directory that already holds a run (summary.json or trace parts) or anything a run does not
    write, so a run never mixes its parts with another's. Calling it again for the same run is fine.
    """
    path = Path(path)
    if path.resolve() in _claimed:  # claim_run_dir checked it and wrote config.toml
        return path
    _make_dir(path)
    ours, same = _check(path, cfg)
    results = [p for p in ours if p.name not in (CONFIG_NAME, LOCK_NAME) and p.parent.name != LOGS_DIR]
    if results:
        raise TraceError(f"{path}: already holds a run ({_shown([_rel(path, p) for p in results])}); "
                         "choose another --out")
    if not same:
        _write_config(path, cfg)
    return path


@contextmanager
def claim_run_dir(path: str | Path, cfg: Config, *, lock: bool = True, replace: bool = False,
                  wait: bool = False, on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Take ``path`` for a run of cfg while within: hold its lock (``lock``: another process that holds it
    stops this one at once, or makes it ``wait``), check what it holds, remove an unfinished run of the
    same config by name (a finished one too with ``replace``, else it is refused), write config.toml.

    TraceError naming what is there when the directory holds anything else: a config.toml of another
    config (the user's own, say), files a run does not write (dotfiles included), or a finished run.
    """
    path = Path(path)
    _make_dir(path)
    with (dir_lock(path / LOCK_NAME, wait, on_wait) if lock else _nothing()):
        key = path.resolve()
        if key in _claimed:
            raise TraceError(f"{path}: another run of this process is writing it; choose another --out")
        ours, same = _check(path, cfg)
        if same and not replace:
            status = finished_status(path, config_hash(cfg))
            if status is not None:
                raise TraceError(f"{path}: already holds a finished run of this config (status {status!r}); "
                                 "it is kept: choose another --out, or remove it to run again")
        _remove(path, [p for p in ours if p.name != LOCK_NAME])
        _write_config(path, cfg)
        _claimed.add(key)
        try:
            yield path
        finally:
            _claimed.discard(key)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _make_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise TraceError(f"{path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TraceError(f"{path}: cannot create the run directory: {e.strerror}") from None


def _check(path: Path, cfg: Config) -> tuple[list[Path], bool]:
    """(the run files in path, whether its config.toml is cfg's); TraceError naming whatever else is there.

    Run files without a config.toml, or with another config's, are another run's (or the user's)."""
    ours, foreign = run_files(path)
    config = path / CONFIG_NAME
    same = config in ours and _read_bytes(config) == to_toml(cfg).encode()
    if config in ours and not same:
        foreign.insert(0, f"{CONFIG_NAME} (not this run's config)")
    elif not same:  # (a lock, or a temporary file a killed write left, tells nothing of whose it is)
        foreign += [_rel(path, p) for p in ours if p.name != LOCK_NAME and not _OWN_TEMPORARY.fullmatch(p.name)]
    if foreign:
        raise TraceError(f"{path}: holds {_shown(foreign)}, which this run did not write, and a run writes "
                         "over nothing it did not create: choose another --out, or move them")
    return ours, same


def run_files(path: Path) -> tuple[list[Path], list[str]]:
    """What is in run directory ``path``: (the files a run writes, by name; the names of everything else,
    directories with a trailing /)."""
    ours: list[Path] = []
    foreign: list[str] = []
    for p in sorted(path.iterdir()):
        kind = _kind(p)
        if kind == "dir" and p.name in _OWN_IN:
            for q in sorted(p.iterdir()):
                if _kind(q) == "file" and _OWN_IN[p.name].fullmatch(q.name):
                    ours.append(q)
                else:
                    foreign.append(f"{p.name}/{q.name}" + ("/" if _kind(q) == "dir" else ""))
        elif kind == "file" and (p.name in _OWN_FILES or _OWN_TEMPORARY.fullmatch(p.name)):
            ours.append(p)
        else:
            foreign.append(p.name + ("/" if kind == "dir" else ""))
    return ours, foreign


def _remove(path: Path, files: list[Path]) -> None:
    for p in files:
        p.unlink(missing_ok=True)
    for d in _OWN_IN:
        try:
            (path / d).rmdir()
        except OSError:  # absent, or (the trace of a run about to start) kept
            pass


def _kind(p: Path) -> str:
    return "link" if p.is_symlink() else "dir" if p.is_dir() else "file" if p.is_file() else "other"


def _rel(root: Path, p: Path) -> str:
    return str(p.relative_to(root))


def _shown(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write_config(path: Path, cfg: Config) -> None:
    try:
        atomic_write_text(path / CONFIG_NAME, to_toml(cfg))
    except TraceWriteError as e:  # before the run: nothing ran
        raise TraceError(f"{path / CONFIG_NAME}: cannot write: {e.reason}") from None


def finished_status(path: Path, hash_: str) -> str | None:
    """The status of the finished run of the config whose hash is hash_ in path (provenance.json written,
    status ok or error, not a failed write); None when there is none."""
    try:
        prov, summary = read_provenance(path), read_summary(path)
    except TraceError:
        return None
    if prov is None or summary is None or prov.get("config_hash") != hash_ or prov.get("status") not in FINISHED:
        return None
    if write_failed(summary):  # a full disk is no property of the config: run it again
        return None
    return prov["status"]


def write_failed(summary: dict[str, Any]) -> bool:
    """The run stopped because it could not write its trace (TraceWriter.stats() says why)."""
    trace = summary.get("trace")
    return isinstance(trace, dict) and bool(trace.get("error"))


@contextmanager
def dir_lock(lock: Path, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold lock file ``lock`` (its directory must exist) while within, with this process's pid and host in
    it. Held by another process: TraceError naming the holder, or with ``wait`` poll until it is free
    (``on_wait(message)`` once). The lock is the kernel's (lockf), so a process that dies drops it: a lock
    file left by a dead process is taken over."""
    import fcntl

    said = False
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise TraceError(f"{lock}: cannot create the lock file: {e.strerror}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise TraceError(f"{lock}: cannot lock: {e.strerror}") from None
            busy = f"{lock.parent}: in use by {_holder(lock)} (lock file {lock.name})"
            if not wait:
                raise TraceError(f"{busy}; wait until it has finished, or give --wait to wait for it") from None
            if not said and on_wait is not None:
                on_wait(f"{busy}; waiting until it has finished")
            said = True
            time.sleep(0.2)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:  # its holder removed it as we opened it: lock the new one
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n").encode())
    except OSError:
        pass  # the lock holds without its note
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def _holder(lock: Path) -> str:
    try:
        note = json.loads(lock.read_text(encoding="utf-8"))
        return f"pid {int(note['pid'])} on {note['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file written under a temporary name in the same directory, fsynced and renamed over ``path`` at
    the end of the block; removed, leaving ``path`` as it was, when the block fails or is interrupted.
    An OSError comes out as TraceWriteError naming ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise TraceWriteError(str(path), e) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it (mkstemp's is 0600)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise TraceWriteError(str(path), e) from None
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path`` (TraceWriteError
    naming it when that fails)."""
    with atomic_file(path) as f:
        f.write(text)


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write summary.json atomically (a reader sees the old one or the new one, never half of one)."""
    return _write_json(Path(run_dir) / SUMMARY_NAME, summary)


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """summary.json as a dict, None when there is none; TraceError naming the file when it is unreadable."""
    return _read_json(Path(run_dir) / SUMMARY_NAME)


def write_provenance(run_dir: str | Path, provenance: dict[str, Any]) -> Path:
    """Write provenance.json atomically (see smpsim.experiments.provenance for its fields)."""
    return _write_json(Path(run_dir) / PROVENANCE_NAME, provenance)


def read_config_data(run_dir: str | Path) -> dict[str, Any]:
    """RUN/config.toml as raw data; {} when it is missing or unreadable (damaged bytes included): the
    analysis then goes on without it, as for a run that has none."""
    try:
        with open(Path(run_dir) / CONFIG_NAME, "rb") as f:
            return tomllib.load(f)
    except (OSError, ValueError, RecursionError):  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return {}


def read_provenance(run_dir: str | Path) -> dict[str, Any] | None:
    """provenance.json as a dict, None when there is none (the run did not finish)."""
    return _read_json(Path(run_dir) / PROVENANCE_NAME)


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: {undecodable(raw, e)}; the run wrote JSON here, so the file is damaged") from None
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise TraceError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError:  # int() past sys.get_int_max_str_digits()
        raise TraceError(f"{path}: not valid JSON here ({TOO_LONG_INTEGER})") from None
    if not isinstance(data, dict):
        raise TraceError(f"{path}: expected a JSON object")
    return data


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"summary value {obj!r} of type {type(obj).__name__} is not JSON serialisable")
