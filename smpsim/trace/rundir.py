"""Run directories: creation, config.toml, summary.json and default names.

```
RUN/
  config.toml      resolved config (every default filled in)
  summary.json     counters, per-CPU TLB stats, digest, status; written atomically at the end of the run
  provenance.json  what produced the run (config hash, version, git revision, command, wall times);
                   written after summary.json, so its presence marks a finished run
  trace/part-00000.parquet ...
```
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from smpsim.config import Config, to_toml
from smpsim.inputs import TOO_LONG_INTEGER, undecodable
from smpsim.trace.errors import TraceError

CONFIG_NAME = "config.toml"
SUMMARY_NAME = "summary.json"
PROVENANCE_NAME = "provenance.json"
LOGS_DIR = "logs"
TRACE_DIR = "trace"


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
    """Create (or take over an empty) run directory and write its config.toml.

    Refuses a directory that already holds a run (summary.json or trace parts) or other files, so a run
    never mixes its parts with another's. Calling it twice for the same run is fine.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TraceError(f"{path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TraceError(f"{path}: cannot create the run directory: {e.strerror}") from None
    # config.toml and logs/ (operational logs may start before the trace) belong to the run being made.
    leftovers = sorted(p.name for p in path.iterdir() if p.name not in (CONFIG_NAME, LOGS_DIR))
    if (path / TRACE_DIR).is_dir() and not any((path / TRACE_DIR).iterdir()):
        leftovers.remove(TRACE_DIR)
    if leftovers:
        shown = ", ".join(leftovers[:5]) + (", ..." if len(leftovers) > 5 else "")
        raise TraceError(f"{path}: not an empty directory (has {shown}); choose another --out")
    atomic_write_text(path / CONFIG_NAME, to_toml(cfg))
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:
        raise TraceError(f"{path}: cannot write: {e.strerror or e}") from None


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
