"""User code named by a spec: ``"package.module:Name"`` or ``"path/to/file.py:Name"``.

One loader for everything a user brings (policies, workload generators), so each gets the same errors,
the same provenance and the same cross-host rule:

- a file spec is relative to a base dir (the config file's folder), absolute paths allowed; anything
  before the last ``:`` that ends in ``.py`` or contains a path separator is a file, else a module;
- ``Loaded.sha256`` is the SHA-256 of the source file's bytes, the ones that ran: a file is hashed, then
  compiled from those same bytes. It goes into provenance and the config hash;
- ``expect_sha256`` refuses a source whose hash differs *before* running it: a CPU process on another host
  loads its own copy and never runs code received over the wire;
- a file is executed once per process and content: loading it again returns the same module (and so the
  same class objects), and an edited file loads as a new module. Files are registered in ``sys.modules``
  under a name made from their full path and hash, so two ``policy.py`` in different folders never collide;
- every failure is one ``UserCodeError`` naming the spec, the file (and line) and what is wrong.

A file is run as a module of its own: it can import smpsim and installed packages, not files beside it
(make those a package and use a module spec).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODULE_PREFIX = "smpsim_user_"  # sys.modules names of loaded files
_files: dict[tuple[str, str], types.ModuleType] = {}  # (real path, sha256) -> the module it ran as


class UserCodeError(Exception):
    """A spec that cannot be loaded: names the spec, the file (and line) and the problem."""

    def __init__(self, spec: str, problem: str, file: str | None = None, line: int | None = None):
        self.spec, self.problem, self.file, self.line = spec, problem, file, line
        super().__init__(self.describe())

    @property
    def where(self) -> str | None:
        if self.file is None:
            return None
        return f"{self.file}:{self.line}" if self.line else self.file

    def describe(self) -> str:
        where = f" ({self.where})" if self.where else ""
        return f"{self.spec!r}{where}: {self.problem}"


@dataclass(frozen=True)
class Loaded:
    """User code loaded from a spec: what it names, its source file and that file's hash, and its module."""
    spec: str            # as given
    obj: Any             # what it names
    file: str | None     # absolute path of the source file (None: a module without one, e.g. built in)
    sha256: str | None   # of that file's bytes
    module: str          # the module's name in sys.modules


def is_spec(text: str) -> bool:
    """Whether text is a spec (``target:Name``) rather than a plain registered name."""
    target, sep, attr = text.rpartition(":")
    return bool(sep and target and attr)


def is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def split(spec: str) -> tuple[str, str]:
    """(target, attribute path) of a spec; the last ``:`` splits them (a Windows drive keeps its own)."""
    target, sep, attr = spec.rpartition(":")
    if not (sep and target and attr):
        raise UserCodeError(spec, "not a spec: expected 'package.module:Name' or 'path/to/file.py:Name'")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise UserCodeError(spec, f"{attr!r} is not a Python name (after the ':' comes a class or function)")
    return target, attr


def resolve_file(target: str, base_dir: str | os.PathLike | None) -> Path:
    p = Path(target).expanduser()
    if not p.is_absolute():
        p = Path(base_dir or os.getcwd()) / p
    return p.resolve()


def absolute(spec: str, base_dir: str | os.PathLike | None = None) -> str:
    """The spec with a relative file made absolute (against base_dir, default the working directory):
    for a spec given on a command line, to put where it would be read relative to a config's folder.
    Module specs and plain names come back as they are."""
    if not is_spec(spec):
        return spec
    target, attr = split(spec)
    return f"{resolve_file(target, base_dir)}:{attr}" if is_file_target(target) else spec


def sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_sha256(spec: str, base_dir: str | os.PathLike | None = None) -> tuple[str | None, str | None]:
    """(file, sha256) of the source a spec names, without running it; raises UserCodeError like ``load``."""
    target, _ = split(spec)
    if is_file_target(target):
        path = resolve_file(target, base_dir)
        return str(path), _read(spec, path)[1]
    origin = _module_origin(spec, target)
    return origin, (sha256_file(origin) if origin else None)


def load(spec: str, base_dir: str | os.PathLike | None = None, expect_sha256: str | None = None) -> Loaded:
    """The object a spec names, with its source file and that file's SHA-256."""
    target, attr = split(spec)
    if is_file_target(target):
        module, file, sha = _load_file(spec, resolve_file(target, base_dir), expect_sha256)
    else:
        module, file, sha = _load_module(spec, target, expect_sha256)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            defined = sorted(n for n, v in vars(module).items()
                             if not n.startswith("_") and isinstance(v, type | types.FunctionType)
                             and getattr(v, "__module__", None) == module.__name__)
            hint = f"; it defines {', '.join(defined)}" if defined else ""
            raise UserCodeError(spec, f"no {attr!r} in {file or target}{hint}", file) from None
    return Loaded(spec, obj, file, sha, module.__name__)


def definition(obj: Any) -> tuple[str | None, int | None]:
    """(file, first line) where a class or function is defined, as far as Python knows."""
    try:
        file = inspect.getsourcefile(obj) or inspect.getfile(obj)
    except TypeError:
        return None, None
    try:
        line = inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        line = None
    return file, line


def raised_at(exc: BaseException, files: tuple[str, ...] = ()) -> tuple[str | None, int | None]:
    """(file, line) where exc was raised: the innermost frame in one of ``files`` (real paths) when any
    is given and on the traceback, else the innermost frame outside the import machinery."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    if files:
        wanted = {os.path.realpath(f) for f in files}
        mine = [f for f in frames if os.path.realpath(f.filename) in wanted]
        frames = mine or frames
    if not frames:
        return None, None
    return frames[-1].filename, frames[-1].lineno


# ---------------------------------------------------------------------------------------------------


def _read(spec: str, path: Path) -> tuple[bytes, str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserCodeError(spec, "file not found", str(path)) from None
    except IsADirectoryError:
        raise UserCodeError(spec, "is a directory, not a Python file", str(path)) from None
    except OSError as e:
        raise UserCodeError(spec, f"cannot read it: {e.strerror or e}", str(path)) from None
    return data, hashlib.sha256(data).hexdigest()


def _check_hash(spec: str, file: str | None, sha: str | None, expect: str | None) -> None:
    if expect is not None and sha != expect:
        raise UserCodeError(spec, f"this copy has SHA-256 {sha}, but the run was resolved with {expect} "
                                  "(the coordinator's copy, or policy.sha256 in the config): give every host "
                                  "the same file", file)


def _load_file(spec: str, path: Path, expect: str | None) -> tuple[types.ModuleType, str, str]:
    data, sha = _read(spec, path)
    file = str(path)
    _check_hash(spec, file, sha, expect)
    key = (file, sha)
    module = _files.get(key)
    if module is not None:
        return module, file, sha
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    tag = hashlib.sha256(f"{file}:{sha}".encode()).hexdigest()[:16]
    name = f"{MODULE_PREFIX}{stem}_{tag}"
    module = types.ModuleType(name)
    module.__file__ = file
    sys.modules[name] = module  # before running it: dataclasses and pickling look the module up by name
    try:
        exec(compile(data, file, "exec", dont_inherit=True), module.__dict__)
    except SyntaxError as e:
        del sys.modules[name]
        raise UserCodeError(spec, f"syntax error: {e.msg}", e.filename or file, e.lineno) from None
    except BaseException as e:
        del sys.modules[name]
        if not isinstance(e, Exception):
            raise
        at_file, at_line = raised_at(e, (file,))
        raise UserCodeError(spec, f"import failed: {type(e).__name__}: {e}", at_file or file, at_line) from None
    _files[key] = module
    return module, file, sha


def _module_origin(spec: str, target: str) -> str | None:
    loaded = sys.modules.get(target)
    if loaded is not None:
        return getattr(loaded, "__file__", None)
    try:
        found = importlib.util.find_spec(target)
    except ModuleNotFoundError as e:  # a parent package is missing
        raise UserCodeError(spec, f"no module named {e.name!r} (is it installed, or on PYTHONPATH?)") from None
    except Exception as e:  # a parent package failed to import
        at_file, at_line = raised_at(e)
        raise UserCodeError(spec, f"import failed: {type(e).__name__}: {e}", at_file, at_line) from None
    if found is None:
        raise UserCodeError(spec, f"no module named {target!r} (is it installed, or on PYTHONPATH?)")
    return found.origin if found.has_location else None


def _load_module(spec: str, target: str, expect: str | None) -> tuple[types.ModuleType, str | None, str | None]:
    file = _module_origin(spec, target)
    sha = sha256_file(file) if file and os.path.isfile(file) else None
    _check_hash(spec, file, sha, expect)
    try:
        module = importlib.import_module(target)
    except SyntaxError as e:
        raise UserCodeError(spec, f"syntax error: {e.msg}", e.filename or file, e.lineno) from None
    except Exception as e:
        at_file, at_line = raised_at(e, (file,) if file else ())
        raise UserCodeError(spec, f"import failed: {type(e).__name__}: {e}", at_file or file, at_line) from None
    return module, file, sha
