"""No dead code in smpsim: vulture finds every definition that nothing in smpsim, tests/ or setup.py uses.

What it cannot see used (called by a framework, named in a string, read by setup.py) is listed in ALIVE with
the reason; a listed name that vulture no longer reports fails too, so the list only shrinks.
"""

from __future__ import annotations

from pathlib import Path

from vulture import Vulture

ROOT = Path(__file__).resolve().parent.parent

# Decorated methods a framework calls: pydantic's validators.
CALLED_BY_DECORATOR = ["@field_validator", "@model_validator"]

# (file under smpsim/, name) -> why it is used although nothing calls it by name.
ALIVE = {
    ("__init__.py", "__getattr__"): "the module's lazy attributes: smpsim.run, smpsim.Policy, ...",
    ("__init__.py", "__dir__"): "dir(smpsim) lists the lazy attributes",
    ("check/generators.py", "neighbours"): "a generator named by its spec string in check/cases.py",
    ("cli/main.py", "standalone_mode"): "a parameter of click's Group.main, which the override keeps",
    ("cli/main.py", "showwarning"): "warnings.showwarning, replaced",
    ("cli/run.py", "ipc"): "an Enum member: a --transport choice",
    ("cli/run.py", "tcp"): "an Enum member: a --transport choice",
    ("config.py", "model_config"): "pydantic's model settings",
    ("engines/distributed/respawn.py", "child_main"): "run by a new interpreter through `python -c`",
    ("engines/distributed/security.py", "curve_secretkey"): "a ZeroMQ socket option, set as an attribute",
    ("engines/distributed/security.py", "curve_publickey"): "a ZeroMQ socket option, set as an attribute",
    ("engines/distributed/security.py", "curve_serverkey"): "a ZeroMQ socket option, set as an attribute",
    ("engines/distributed/security.py", "curve_server"): "a ZeroMQ socket option, set as an attribute",
    ("engines/distributed/security.py", "domain"): "a parameter of pyzmq's ZAP callback",
    ("model/errors.py", "WORKLOAD_OPS"): "read by cli/common.py through getattr, only once the model is loaded",
    ("native.py", "GROUP"): "read by setup.py from this file's source",
}


def unused() -> set[tuple[str, str]]:
    v = Vulture(ignore_decorators=CALLED_BY_DECORATOR)
    v.scavenge([str(ROOT / "smpsim"), str(ROOT / "tests"), str(ROOT / "setup.py")])
    package = ROOT / "smpsim"
    return {(Path(i.filename).relative_to(package).as_posix(), i.name) for i in v.get_unused_code()
            if Path(i.filename).is_relative_to(package)}


def test_no_dead_code():
    found = unused()
    dead = sorted(found - ALIVE.keys())
    stale = sorted(ALIVE.keys() - found)
    assert not dead, f"unused in smpsim/ (remove it, or list it in ALIVE with why it is used): {dead}"
    assert not stale, f"no longer reported: remove from ALIVE: {stale}"
