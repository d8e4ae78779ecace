"""The model's hot modules, compiled by mypyc from this same source when the package is built, and the
pure-Python path beside them.

`pip install` (setup.py) compiles ``MODULES``; when it cannot (no C compiler, mypyc fails) the package is
pure Python and says so. At ``import smpsim`` the package picks one path for all of them, never a mix:

- pure Python when ``SMPSIM_PURE=1`` is set, when no compiled module is there (a plain checkout), or when
  a module's source is not what it was compiled from (an edit not rebuilt, even one made while pip was
  building: the edit must count; quietly, as only the speed differs);
- otherwise the compiled modules.

setup.py records the CRC-32 of each source as mypyc read it in a file beside its compiled module
(``<compiled file>.crc32``); the import compares it with the source's (~0.3 ms for them all; hashlib's SHA-256
would load OpenSSL, ~5 ms more of a bare ``import smpsim``; a checksum is enough to see an edit). Times are
not compared: a source edited during a build can be older than the build's output.

``path()`` says which one runs. Both give the same runs, digests and counters (tests/test_native.py).
Standard library only: setup.py reads ``MODULES`` from this file before anything is installed.
"""

from __future__ import annotations

import binascii
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import spec_from_file_location

# Source files (relative to the project root) that setup.py compiles, as one mypyc group.
MODULES = (
    "smpsim/model/messages.py",
    "smpsim/model/events.py",
    "smpsim/model/tlb.py",
    "smpsim/model/lookahead.py",
    "smpsim/model/cpu.py",
    "smpsim/model/coordinator.py",
    "smpsim/model/workloads.py",
    "smpsim/engines/core.py",
    "smpsim/engines/inline_transport.py",
    "smpsim/trace/merge.py",
)
# mypy's options for them: what mypyc type-checks before it compiles (tests/test_native.py runs the same).
MYPY_ARGS = ("--follow-imports=silent", "--ignore-missing-imports")
GROUP = "smpsim._native"  # the shared library of the group: smpsim/_native__mypyc*.so
PURE_ENV = "SMPSIM_PURE"
HASH_SUFFIX = ".crc32"  # beside each compiled module: the checksum of the source it was compiled from
REBUILD = "rebuild: pip install -e ."

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NAMES = {m[:-3].replace("/", "."): os.path.join(_ROOT, m) for m in MODULES}
_state = {"path": "pure", "why": "not selected yet"}


class _PureFinder:
    """Loads the compiled modules from their .py sources (ahead of the extension modules beside them)."""

    @staticmethod
    def find_spec(name: str, path=None, target=None):
        source = _NAMES.get(name)
        return spec_from_file_location(name, source) if source is not None else None


def _compiled_file(source: str) -> str | None:
    base = source[:-3]
    for suffix in EXTENSION_SUFFIXES:
        if os.path.exists(base + suffix):
            return base + suffix
    return None


def source_hash(source: str) -> str:
    """What setup.py records for a source it compiles, and what the import compares."""
    with open(source, "rb") as f:
        return f"{binascii.crc32(f.read()):08x}"


def stale(source: str) -> str | None:
    """Why the compiled module of ``source`` must not run, or None when it was compiled from this source."""
    built = _compiled_file(source)
    if built is None:
        return "not compiled"
    try:
        with open(built + HASH_SUFFIX) as f:
            recorded = f.read().strip()
    except OSError:
        return f"{built} has no record of the source it was compiled from ({REBUILD})"
    if recorded != source_hash(source):
        return f"{source} changed since it was compiled ({REBUILD})"
    return None


def select() -> None:
    """Choose the path for this process (smpsim/__init__.py calls it before any model import)."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        why: str | None = f"{PURE_ENV} is set"
    else:
        why = next(filter(None, map(stale, _NAMES.values())), None)  # the first module that cannot run
    if why is None:
        _state.update(path="compiled", why="compiled with mypyc")
        return
    _state.update(path="pure", why=why)
    if not any(isinstance(f, _PureFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PureFinder())


def path() -> dict:
    """{"path": "compiled" or "pure", "why": ...}: what this process runs, by the modules it loaded."""
    loaded = [sys.modules[n] for n in _NAMES if n in sys.modules]
    if loaded:
        compiled = all(not (getattr(m, "__file__", "") or "").endswith(".py") for m in loaded)
        return {"path": "compiled" if compiled else "pure", "why": _state["why"]}
    return dict(_state)
