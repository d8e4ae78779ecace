"""Named cost presets for `machine.preset`: a machine's cycle costs, each figure with its source.

A preset is a TOML file: `[preset]` (name, description), one `[cost.KEY]` table per cost it sets, with
`value` (integer cycles) and `source` (where the figure comes from), and optionally `[measured.*]` tables that
are reported but not applied (`smpsim calibrate` writes one). Explicit `cost.*` keys in a config win.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from pathlib import Path

from smpsim.inputs import file_problem, quote

HERE = Path(__file__).resolve().parent


def builtin() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def path_of(name: str, base_dir: str | None = None) -> Path:
    """A built-in preset's file, or a preset file's path (relative to the config's directory)."""
    if "/" not in name and file_problem(HERE / f"{name}.toml") is None:
        return HERE / f"{name}.toml"
    p = Path(name)
    if not p.is_absolute() and base_dir:
        p = Path(base_dir) / p
    if (why := file_problem(p)) is not None:  # stat, not open: a FIFO would block
        raise ValueError(f"machine.preset: no preset {quote(name)} ({why}): use one of {', '.join(builtin())} "
                         "or the path of a preset file written by `smpsim calibrate --out FILE`")
    return p


def read(name: str, base_dir: str | None = None, *, keys: Collection[str]) -> dict:
    """The preset's TOML, checked: every [cost.KEY] is one of ``keys`` (the config's cost keys: passed in,
    as the config imports this module) and has an integer value and a source."""
    p = path_of(name, base_dir)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"machine.preset: {p}: not a readable TOML preset ({e})") from None
    problems = []
    for key, fig in (data.get("cost") or {}).items():
        if key not in keys:
            problems.append(f"cost.{key}: not a cost key")
        elif not isinstance(fig, dict) or not isinstance(fig.get("value"), int) or isinstance(fig.get("value"), bool):
            problems.append(f"cost.{key}: needs an integer `value` (cycles)")
        elif not str(fig.get("source") or "").strip():
            problems.append(f"cost.{key}: needs a `source` for its figure")
    if problems:
        raise ValueError(f"machine.preset: {p}: " + "; ".join(problems))
    return data


def costs(name: str, base_dir: str | None = None, *, keys: Collection[str]) -> dict[str, int]:
    """cost key -> cycles that the preset sets."""
    return {k: v["value"] for k, v in (read(name, base_dir, keys=keys).get("cost") or {}).items()}
