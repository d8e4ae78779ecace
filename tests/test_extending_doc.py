"""docs/extending.md is true as written: its code blocks are the files in docs/tutorial/, and every `$ smpsim`
command of its console blocks, run in a copy of docs/ through the real CLI, exits as the text says and
prints the lines shown (`...` stands for lines left out; the lines between two `...` are consecutive)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOC = DOCS / "extending.md"
FILE = re.compile(r"<!-- file: (.+?) -->\n```[a-z]*\n(.*?)```", re.S)
SAME_AS = re.compile(r"<!-- same as: (.+?) -->\n```([a-z]*)\n(.*?)```", re.S)
CONSOLE = re.compile(r"```console\n(.*?)```", re.S)
SECONDS = re.compile(r"\d+ s\)")  # the checker's wall time: the one thing shown that varies


def commands() -> list[list[tuple[str, list[str]]]]:
    """Each console block's commands, with the output lines it shows for each."""
    blocks = []
    for body in CONSOLE.findall(DOC.read_text()):
        block: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                block.append((line[2:], []))
            else:
                assert block, f"output before any command in a console block of {DOC.name}: {line!r}"
                block[-1][1].append(line)
        blocks.append(block)
    assert len(blocks) >= 6
    return blocks


def expected_exit(command: str) -> int:
    """What the text says: the checker finds the naive policy unsafe (1); everything else ends ok."""
    return 1 if command.startswith("smpsim policy check") and "since_wrap.py" in command else 0


def assert_shows(shown: list[str], printed: str, command: str) -> None:
    """The shown lines are the printed ones: runs of lines between `...` consecutive, in order, anchored at
    the start and end unless a `...` stands there."""
    lines = [SECONDS.sub("N s)", x.rstrip()) for x in printed.splitlines()]
    chunks: list[list[str]] = [[]]
    for line in shown:
        if line == "...":
            chunks.append([])
        else:
            chunks[-1].append(SECONDS.sub("N s)", line.rstrip()))
    at = 0
    for i, chunk in enumerate(chunks):
        if not chunk:
            continue
        found = next((j for j in range(at, len(lines) - len(chunk) + 1) if lines[j:j + len(chunk)] == chunk), None)
        assert found is not None, f"`{command}` does not print, in this order:\n" + "\n".join(chunk) + \
                                  "\n--- it printed:\n" + printed
        assert i > 0 or found == 0, f"`{command}` prints more before the lines shown:\n{printed}"
        at = found + len(chunk)
    assert not chunks[-1] or at == len(lines), f"`{command}` prints more after the lines shown:\n{printed}"


def run_block(block, cwd: Path, env) -> list[tuple[str, list[str], subprocess.CompletedProcess]]:
    done = []
    for command, shown in block:
        argv = shlex.split(command)
        assert argv[0] == "smpsim", command
        p = subprocess.run([sys.executable, "-m", "smpsim", *argv[1:]], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=300)
        done.append((command, shown, p))
    return done


def test_the_doc_shows_the_shipped_files():
    found = FILE.findall(DOC.read_text())
    assert {name for name, _ in found} == {f"tutorial/{p.name}" for p in (DOCS / "tutorial").iterdir()
                                           if p.suffix in (".py", ".toml")}
    for name, text in found:
        assert text == (DOCS / name).read_text(), name
    for name, lang, text in SAME_AS.findall(DOC.read_text()):  # the recording steps: one place, shown twice
        assert f"```{lang}\n{text}```" in (DOCS / name).read_text(), name


def test_the_links_lead_somewhere():
    text = DOC.read_text()
    for target, anchor in re.findall(r"\]\(([^)#]+\.md)(?:#([^)]+))?\)", text):
        page = DOCS / target
        assert page.is_file(), target
        if anchor:
            slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                     for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}
            assert anchor in slugs, f"{target}#{anchor}"
    for target in re.findall(r"\]\(((?:tutorial|samples)/[^)]*)\)", text):
        assert (DOCS / target).exists(), target


@pytest.mark.timeout(600)
def test_every_command_runs_as_written(tmp_path, subprocess_env):
    """The commands in a copy of docs/: those that read a counterexample after the check that writes it,
    in order; the other blocks at the same time (each is a separate OS process anyway)."""
    shutil.copytree(DOCS / "tutorial", tmp_path / "docs" / "tutorial")
    shutil.copytree(DOCS / "samples", tmp_path / "docs" / "samples")
    blocks = commands()
    in_chain = [any("counterexamples/" in c or c.startswith("smpsim policy check") and "since_wrap.py" in c
                    for c, _ in b) for b in blocks]
    chain = [cmd for b, chained in zip(blocks, in_chain) if chained for cmd in b]
    others = [b for b, chained in zip(blocks, in_chain) if not chained]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [r for f in [pool.submit(run_block, b, tmp_path, subprocess_env) for b in [chain, *others]]
                   for r in f.result()]
    assert len(results) == sum(len(b) for b in blocks)
    for command, shown, p in results:
        printed = (p.stderr + p.stdout).replace(f"{tmp_path}/", "")
        assert p.returncode == expected_exit(command), f"`{command}` exited {p.returncode}:\n{printed}"
        assert "Traceback" not in printed, command
        assert_shows(shown, printed, command)
    by = {command: p.stderr + p.stdout for command, _, p in results}
    naive = next(c for c in by if "policy check" in c and "since_wrap.py" in c)
    fixed = next(c for c in by if "policy check" in c and "since_flush.py" in c)
    assert "UNSAFE: stale use" in by[naive] and "safe on" in by[fixed]
    script = tmp_path / "counterexamples" / "SinceWrap-seed1" / "counterexample.jsonl"
    assert sum(1 for x in script.read_text().splitlines() if x.startswith("{")) == 16
    sweep = next(c for c in by if c.startswith("smpsim sweep"))
    assert "since-flush vs linux-2.4 (active_cpus=2): 7x fewer IPIs" in by[sweep]
    assert (tmp_path / "runs" / "compare" / "results.csv").is_file()
