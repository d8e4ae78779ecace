"""The compiled model (mypyc, smpsim/native.py) and the pure-Python path simulate the same runs: every pinned
case gives the same digest, event count and counters on both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import smpsim.model.cpu
from smpsim import native
from pinned_cases import config_for, observe
from smpsim.engines import inline

ROOT = Path(__file__).resolve().parents[1]
PINNED = json.loads((Path(__file__).parent / "data" / "pinned_counters.json").read_text())

# Runs every pinned case on the path the environment selects; prints {name: [digest, events, observed]}.
CHILD = """
import json, sys, tempfile
from pathlib import Path
from smpsim import native
from pinned_cases import config_for, observe
from smpsim.engines import inline
pinned = json.loads(Path(sys.argv[1], "tests/data/pinned_counters.json").read_text())
out = {}
with tempfile.TemporaryDirectory() as d:
    for name in sorted(pinned):
        (Path(d) / name).mkdir()
        s = inline.run(config_for(pinned[name], Path(d) / name)).summary
        out[name] = [s["digest"], s["events"], observe(s)]
print(json.dumps({"path": native.path(), "runs": out}))
"""


def _child(pure: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])  # smpsim and pinned_cases
    p = subprocess.run([sys.executable, "-c", CHILD, str(ROOT)], capture_output=True, text=True, env=env,
                       timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def test_pure_env_loads_the_sources():
    code = "import smpsim.model.cpu as c, smpsim.native as n; print(c.__file__); print(n.path()['path'])"
    env = {**os.environ, native.PURE_ENV: "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    file, path = p.stdout.split()
    assert file.endswith("cpu.py") and path == "pure"


@pytest.mark.timeout(300)
def test_compiled_and_pure_give_the_same_runs(tmp_path):
    path = native.path()
    if path["path"] != "compiled":
        # Not compiled although a C compiler is here: the install's build failed (pip hid why), which is a
        # broken install, not a missing facility. A stale build or SMPSIM_PURE is the user's choice.
        if path["why"] == "not compiled" and shutil.which(os.environ.get("CC", "cc")):
            pytest.fail("a C compiler is here but the model is not compiled: the install's mypyc build "
                        "failed or did not run (`pip install -v -e .` shows why)")
        pytest.skip(f"the model runs pure Python here: {path['why']}")
    assert smpsim.model.cpu.__file__.endswith(tuple(EXTENSION_SUFFIXES))
    pure = _child(pure=True)
    assert pure["path"]["path"] == "pure"
    for name in sorted(PINNED):
        (tmp_path / name).mkdir()
        s = inline.run(config_for(PINNED[name], tmp_path / name)).summary
        assert pure["runs"][name] == [s["digest"], s["events"], observe(s)], name
        assert observe(s) == PINNED[name]["expect"], name


@pytest.mark.timeout(180)
def test_the_compiled_modules_type_check():
    """mypyc compiles only code that type-checks, notes included; otherwise the install falls back to pure
    Python quietly (pip hides the build's output), so a change that breaks the types fails here."""
    p = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *native.MYPY_ARGS, *native.MODULES],
                       capture_output=True, text=True, cwd=ROOT, timeout=170)
    assert p.returncode == 0 and " note: " not in p.stdout and " error: " not in p.stdout, p.stdout[-3000:]
