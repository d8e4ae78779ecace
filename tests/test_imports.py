"""What the processes of a run load: no analysis library. Arrow's first conversion of a Python value imports
pandas when it is installed (the analysis extra): the trace writer builds its columns from buffers instead
(smpsim/trace/writer.py), so a coordinator starts fast and stays small (`smpsim bench`: startup_s,
coordinator_maxrss_mb)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("pandas", "scipy", "duckdb", "matplotlib", "hypothesis")

# Runs one smpsim command in this process and prints, last, the heavy modules the process loaded.
COMMAND = """
import json, sys
from smpsim.cli.main import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def loaded_by(code: str, args, env, cwd) -> dict:
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                       cwd=cwd, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def test_the_probe_sees_pandas_when_it_is_loaded(subprocess_env, tmp_path):  # pandas: the test extra
    assert loaded_by(f"import pandas\n{COMMAND}", ["--version"], subprocess_env, tmp_path)["loaded"] == ["pandas"]


@pytest.mark.parametrize("command", ["run", "launch"])
def test_a_run_writing_its_trace_loads_no_analysis_library(command, subprocess_env, tmp_path):
    """run: the whole simulation in this process; launch: the coordinator, which writes the trace."""
    sets = ["--set", "machine.cpus=2", "--set", "workload.kmaps_per_cpu=200", "--out", tmp_path / "r"]
    out = loaded_by(COMMAND, [command, *sets], subprocess_env, tmp_path)
    assert out == {"code": 0, "loaded": []}
    assert list((tmp_path / "r" / "trace").glob("part-*.parquet"))


def test_coordinator_and_cpu_commands_load_no_analysis_library(subprocess_env, tmp_path):
    """`smpsim coordinator` and `smpsim cpu` (and a replacement CPU process) load these modules; a CPU
    process loads no Arrow either."""
    coordinator = ("smpsim.cli.main", "smpsim.engines.distributed.launch",
                   "smpsim.engines.distributed.coordinator_node", "smpsim.trace.writer")
    cpu = ("smpsim.cli.main", "smpsim.engines.distributed.cpu_node", "smpsim.engines.distributed.respawn")
    for modules, absent in ((coordinator, HEAVY), (cpu, (*HEAVY, "pyarrow"))):
        code = f"import json, sys\nimport {', '.join(modules)}\nprint(json.dumps([m for m in {absent!r} if m in sys.modules]))"
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env,
                           cwd=tmp_path, timeout=120)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == [], modules
