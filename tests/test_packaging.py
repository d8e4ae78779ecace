"""Packaging: the core install runs simulations without the analysis extra, and a command that needs the
extra names the install command. (Import cycles: tests/test_import_cycles.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRA = ("duckdb", "numpy", "matplotlib", "pandas", "scipy")

BLOCKER = '''
import os, sys
_BLOCKED = set(os.environ["SMPSIM_TEST_BLOCK"].split(","))
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, _Blocker())
'''


@pytest.fixture
def core_only(tmp_path, subprocess_env):
    """An environment in which the analysis extra's modules do not import, as after `pip install smpsim`."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(subprocess_env, SMPSIM_TEST_BLOCK=",".join(EXTRA))
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    return env


def sh(args, env, cwd, code=None):
    p = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=180)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_the_blocker_blocks(core_only, tmp_path):
    for module in EXTRA:
        p = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                           env=core_only, timeout=60)
        assert p.returncode != 0 and "blocked by the test" in p.stderr


def test_core_install_runs_both_engines(core_only, tmp_path):
    sets = ["--set", "machine.cpus=2", "--set", "workload.kmaps_per_cpu=30"]
    for command in (["run", *sets, "--out", tmp_path / "inline"], ["launch", *sets, "--out", tmp_path / "dist"]):
        p = sh(["-m", "smpsim", *command], core_only, tmp_path)
        assert p.returncode == 0, p.stderr
    digests = [json.loads((tmp_path / d / "summary.json").read_text())["digest"] for d in ("inline", "dist")]
    assert digests[0] == digests[1]
    p = sh(["-m", "smpsim", "export", tmp_path / "inline"], core_only, tmp_path)
    assert p.returncode == 0 and len(p.stdout.splitlines()) > 60


MISSING = ("error: this needs duckdb, which the core install of smpsim leaves out: install the analysis extra "
           "with `pip install 'smpsim[analysis]'` (in a checkout: `pip install -e '.[analysis]'`)\n")


def test_analysis_commands_name_the_install_command(core_only, tmp_path):
    p = sh(["-m", "smpsim", "run", "--set", "machine.cpus=2", "--set", "workload.kmaps_per_cpu=10", "--out",
            tmp_path / "r"], core_only, tmp_path)
    assert p.returncode == 0, p.stderr
    for command in (["analyze", tmp_path / "r"], ["query", tmp_path / "r", "SELECT 1"],
                    ["sweep", ROOT / "configs" / "ring-size.toml", "--out", tmp_path / "sw"]):
        p = sh(["-m", "smpsim", *command], core_only, tmp_path)
        assert (p.returncode, p.stderr) == (2, MISSING), command
    assert not (tmp_path / "sw").exists()  # the sweep said so before running any point
    code = ("import smpsim\nfrom smpsim.extras import MissingExtra\nrun = smpsim.run({'machine': {'cpus': 2}})\n"
            "try:\n    run.sql('SELECT 1')\nexcept MissingExtra as e:\n    print(e)\n")
    p = sh(["-c", code], core_only, tmp_path)
    assert p.returncode == 0 and "pip install 'smpsim[analysis]'" in p.stdout, p.stderr


def test_extras_in_pyproject_match_the_messages():
    from smpsim.extras import EXTRA_OF

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0] for d in project["dependencies"]}
    assert not core & set(EXTRA_OF)
    for module, extra in EXTRA_OF.items():
        assert module in project["optional-dependencies"][extra]
    assert "smpsim[analysis]" in project["optional-dependencies"]["test"]

