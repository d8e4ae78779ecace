"""Optional dependencies: the core install runs simulations (a CPU process, the coordinator, ``smpsim
run``); analysis and plotting (DuckDB, matplotlib) and ``smpsim policy check`` (Hypothesis) come with the
``analysis`` extra. A command that needs a
missing one says which install command brings it (``handle_errors`` maps the ImportError here). Keep this
table in step with pyproject.toml's extras."""

from __future__ import annotations

import importlib.util

# Importable module -> the extra that installs it.
EXTRA_OF = {"duckdb": "analysis", "numpy": "analysis", "matplotlib": "analysis", "hypothesis": "analysis",
            "pandas": "analysis", "scipy": "analysis"}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the install command."""


def missing_message(module: str) -> str | None:
    """What to tell the user when ``module`` does not import; None when it is not an optional one."""
    extra = EXTRA_OF.get(module.split(".")[0])
    if extra is None:
        return None
    return (f"this needs {module.split('.')[0]}, which the core install of smpsim leaves out: install the "
            f"{extra} extra with `pip install 'smpsim[{extra}]'` (in a checkout: `pip install -e '.[{extra}]'`)")


def need(module: str) -> None:
    """Raise MissingExtra naming the install command when ``module`` (one of EXTRA_OF) cannot be found;
    it is not imported (a sweep checks before forking its workers)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    if not found:
        raise MissingExtra(missing_message(module), name=module)
