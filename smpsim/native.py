"""The model's hot modules, compiled by mypyc from this same source when the package is built, and the
pure-Python path beside them.

`pip install` (setup.py) compiles ``MODULES``; when it cannot (no C compiler, mypyc fails) the package is
pure Python and says so. At ``import smpsim`` the package picks one path for all of them, never a mix:

- pure Python when ``SMPSIM_PURE=1`` is set, when no compiled module is there (a plain checkout), or when
  a module's source is newer than its compiled file (an edit not rebuilt: the edit must count; quietly, as
  only the speed differs);
- otherwise the compiled modules.

``path()`` says which one runs. Both give the same runs, digests and counters (tests/test_native.py).
Standard library only: setup.py reads ``MODULES`` from this file before anything is installed.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import spec_from_file_location

# Source files (relative to the project root) that setup.py compiles, as one mypyc group.
MODULES = (
    "smpsim/model/messages.py",
    "smpsim/model/events.py",
    "smpsim/model/tlb.py",
    "smpsim/model/cpu.py",
    "smpsim/model/coordinator.py",
    "smpsim/model/workloads.py",
    "smpsim/engines/core.py",
    "smpsim/trace/merge.py",
)
# mypy's options for them: what mypyc type-checks before it compiles (tests/test_native.py runs the same).
MYPY_ARGS = ("--follow-imports=silent", "--ignore-missing-imports")
GROUP = "smpsim._native"  # the shared library of the group: smpsim/_native__mypyc*.so
PURE_ENV = "SMPSIM_PURE"
STALE_MARGIN_S = 2.0

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


def select() -> None:
    """Choose the path for this process (smpsim/__init__.py calls it before any model import)."""
    why = None
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        why = f"{PURE_ENV} is set"
    else:
        for name, source in _NAMES.items():
            built = _compiled_file(source)
            if built is None:
                why = "not compiled"
                break
            # setup.py stamps what it builds; the margin covers a wheel unpacked source after binary.
            if os.path.getmtime(source) > os.path.getmtime(built) + STALE_MARGIN_S:
                why = f"{source} is newer than its compiled module (rebuild: pip install -e .)"
                break
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
