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


def test_staleness_is_by_content_not_by_time(tmp_path):
    """A source edited while pip built it is older than its compiled module, yet not what was compiled: the
    hash recorded beside the compiled module at build time tells, not the times."""
    source = tmp_path / "mod.py"
    source.write_text("x = 1\n")
    assert native.stale(str(source)) == "not compiled"
    built = tmp_path / f"mod{EXTENSION_SUFFIXES[0]}"
    built.write_bytes(b"")
    assert "has no record of the source" in native.stale(str(source))
    Path(f"{built}{native.HASH_SUFFIX}").write_text(native.source_hash(str(source)) + "\n")
    assert native.stale(str(source)) is None
    source.write_text("x = 2\n")
    os.utime(source, (built.stat().st_mtime - 60,) * 2)  # edited during the build: older than its output
    assert native.stale(str(source)) == f"{source} changed since it was compiled (rebuild: pip install -e .)"


def test_an_installed_build_records_its_sources_and_an_edit_runs_pure(tmp_path):
    """On a copy of this install: as built it runs compiled (setup.py recorded every source's hash); with
    one source edited and its time set back before the build's, it runs pure Python and names the source."""
    if native.path()["path"] != "compiled":
        pytest.skip(f"the model runs pure Python here: {native.path()['why']}")
    shutil.copytree(ROOT / "smpsim", tmp_path / "smpsim", ignore=shutil.ignore_patterns("__pycache__"))
    code = "import json, smpsim.native as n; print(json.dumps(n.path()))"
    env = {k: v for k, v in os.environ.items() if k not in (native.PURE_ENV, "PYTHONPATH")}

    def path_of_copy() -> dict:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    assert path_of_copy() == {"path": "compiled", "why": "compiled with mypyc"}
    tlb = tmp_path / "smpsim" / "model" / "tlb.py"
    built = native._compiled_file(str(tlb))
    mtime = os.stat(built).st_mtime - 60
    tlb.write_text(tlb.read_text() + "# edited\n")
    os.utime(tlb, (mtime, mtime))
    assert path_of_copy() == {"path": "pure", "why": f"{tlb} changed since it was compiled (rebuild: pip install -e .)"}
