"""docs/workloads.md's examples are real: every config checks as shown and runs, and the documented output
of `smpsim config check` is what the command prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import smpsim

DOC = Path(__file__).resolve().parents[1] / "docs" / "workloads.md"
BLOCK = re.compile(r"<!-- (example|output of): (.+?) -->\n```[a-z]*\n(.*?)```", re.S)


def blocks() -> list[tuple[str, str, str]]:
    found = BLOCK.findall(DOC.read_text())
    assert found, "no examples found in docs/workloads.md"
    return found


@pytest.fixture
def examples(tmp_path):
    for kind, name, text in blocks():
        if kind == "example":
            (tmp_path / name).write_text(text)
    return tmp_path


def _check(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "smpsim", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_documented_outputs(examples, subprocess_env):
    outputs = [(name, text) for kind, name, text in blocks() if kind == "output of"]
    assert outputs
    for command, expected in outputs:
        args = command.split()[1:]
        p = _check(args, examples, subprocess_env)
        shown = (p.stdout + p.stderr).replace(f"{examples}/", "")
        assert shown == expected, command


def test_every_example_config_runs(examples, subprocess_env):
    configs = [name for kind, name, _ in blocks() if kind == "example" and name.endswith(".toml")]
    kinds = set()
    for name in configs:
        if name.startswith("broken"):
            continue
        p = _check(["config", "check", name], examples, subprocess_env)
        assert (p.returncode, p.stdout) == (0, "ok\n"), p.stderr
        with smpsim.run(examples / name) as run:
            assert run.summary["status"] == "ok", name
            assert run.summary["counters"]["kmaps"] > 0
            kinds.add(run.summary["workload"])
    assert {"shared", "zipf", "pingpong", "script"} <= kinds


def test_the_script_example_does_what_it_says(examples):
    import pyarrow.compute as pc

    with smpsim.run(examples / "handoff.toml") as run:
        events = run.events
        kmaps = events.filter(pc.equal(events["ev"], "kmap"))
        assert kmaps.column("cpu").to_pylist() == [0, 1]
        assert kmaps.column("page").to_pylist() == [7, 7]
        assert kmaps.column("t").to_pylist()[0] < kmaps.column("t").to_pylist()[1]
