"""Workloads written in Python (``workload.kind = "python"``, ``workload.generator = "file.py:func"``).

``func(cpu, rng, cfg)`` returns an iterable (typically a generator) of the op tuples of
docs/architecture.md for CPU ``cpu``; ``rng`` is that CPU's ``random.Random(f"{seed}:{cpu}:python")``,
seeded like the built-in kinds, and ``cfg`` the run's Config. It is consumed lazily, a block at a time,
so memory stays flat however many operations it yields, and it is started afresh (and skipped forward)
when a replacement CPU process resumes from a checkpoint: it must depend on nothing but its arguments.

Every op is checked as it comes; a bad op, or an exception in the generator, ends the run with an error
naming the generator's file and line, the CPU and the op's index. The function is loaded by
smpsim.usercode, from the copy whose SHA-256 the config records (``workload.sha256``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from smpsim.model.errors import ModelError
from smpsim.model.messages import MIGRATED_KUNMAP, op_by_kind

if TYPE_CHECKING:
    from smpsim.config import Config

_BLOCK = 512
_SHAPES = {
    "kmap": '("kmap", page)',
    "kunmap": '("kunmap", page)',
    MIGRATED_KUNMAP: f'("{MIGRATED_KUNMAP}", page)',
    "access": '("access", page, n, write)',
    "compute": '("compute", cycles)',
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_op(op: Any) -> tuple | str:
    """The op in the model's form (messages.op_by_kind: its kind first), or what is wrong with it."""
    if not isinstance(op, (tuple, list)) or not op:
        return f"expected an op tuple such as {_SHAPES['kmap']}, got {op!r}"
    code = op[0]
    if code not in _SHAPES:
        return f"unknown op {code!r} in {tuple(op)!r} (expected one of {', '.join(_SHAPES)})"
    n_fields = 4 if code == "access" else 2
    if len(op) != n_fields:
        return f"{tuple(op)!r} has {len(op)} items; {code} is {_SHAPES[code]}"
    if code == "compute":
        if not _is_int(op[1]) or op[1] < 0:
            return f"{tuple(op)!r}: cycles must be an integer >= 0"
    elif not _is_int(op[1]) or op[1] < 0:
        return f"{tuple(op)!r}: page must be an integer >= 0"
    elif code == "access":
        if not _is_int(op[2]) or op[2] < 1:
            return f"{tuple(op)!r}: n must be an integer >= 1"
        if not isinstance(op[3], bool):
            return f"{tuple(op)!r}: write must be True or False"
    return op_by_kind(op)


def load(cfg: "Config") -> Any:
    """The generator's Loaded (smpsim.usercode), its file checked against workload.sha256."""
    from smpsim import usercode

    spec = cfg.workload.generator
    assert spec is not None  # the config requires it for kind = "python"
    return usercode.load(spec, cfg.base_dir, expect_sha256=cfg.workload.sha256)


def check_callable(cfg: "Config") -> None:
    """Raise UserCodeError unless the spec names something callable (config check, before a run)."""
    from smpsim import usercode

    loaded = load(cfg)
    if not callable(loaded.obj):
        raise usercode.UserCodeError(loaded.spec, f"{loaded.obj!r} is not a function: expected "
                                                  "func(cpu, rng, cfg) yielding op tuples", loaded.file)


def _where(loaded: Any, it: Any, exc: BaseException | None = None) -> str:
    """file:line of the generator: where it raised, or the yield it stopped at."""
    from smpsim import usercode

    if exc is not None:
        file, line = usercode.raised_at(exc, (loaded.file,) if loaded.file else ())
    else:
        frame = getattr(it, "gi_frame", None)
        file, line = (frame.f_code.co_filename, frame.f_lineno) if frame is not None else (loaded.file, None)
    if file is None:
        return loaded.spec
    return f"{file}:{line}" if line else file


def blocks(cfg: "Config", cpu: int) -> Iterator[list[tuple]]:
    """CPU ``cpu``'s operations, a block at a time, each checked."""
    from smpsim import usercode

    try:  # checked before the run (api.check_workload, a CPU process's check of its copy): an edit since
        loaded = load(cfg)
    except usercode.UserCodeError as e:
        raise ModelError(cpu, "generator", 0, str(e)) from None
    rng = random.Random(f"{cfg.seed}:{cpu}:python")
    spec = loaded.spec
    try:
        it = iter(loaded.obj(cpu, rng, cfg))
    except Exception as e:
        raise ModelError(cpu, "generator", 0, f"workload generator {spec} raised {type(e).__name__}: {e} "
                                              f"({_where(loaded, None, e)})") from None
    ops: list[tuple] = []
    index = 0
    while True:
        try:
            op = next(it)
        except StopIteration:
            break
        except Exception as e:
            raise ModelError(cpu, "generator", index, f"workload generator {spec} raised "
                                                      f"{type(e).__name__}: {e} ({_where(loaded, it, e)})") from None
        checked = check_op(op)
        if isinstance(checked, str):
            raise ModelError(cpu, "generator", index, f"workload generator {spec} yielded a bad op: {checked} "
                                                      f"({_where(loaded, it)})")
        ops.append(checked)
        index += 1
        if len(ops) >= _BLOCK:
            yield ops
            ops = []
    yield ops
