"""No import cycles in smpsim, counting imports inside functions too (a late import only hides a cycle).
The cycles still to be untangled (issue 20 item 3) are listed by name: a new cycle fails, and so does a
listed one that is gone, so that the list only shrinks."""

from __future__ import annotations

import ast
from pathlib import Path

import smpsim

PACKAGE = Path(smpsim.__file__).resolve().parent

# Still to be untangled; each is a set of modules that import one another, directly or around a loop.
KNOWN = [
    {"smpsim.config", "smpsim.presets", "smpsim.workload_files"},
    {"smpsim.model.kprobe_trace", "smpsim.model.workloads"},
    {"smpsim", "smpsim.api", "smpsim.check", "smpsim.check.runner", "smpsim.engines.distributed.coordinator_node",
     "smpsim.engines.distributed.launch", "smpsim.engines.inline", "smpsim.trace.recorder",
     "smpsim.experiments.provenance", "smpsim.experiments.results", "smpsim.experiments.runner"},
]


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = ["smpsim", *f.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the smpsim modules it imports anywhere in its source (`from pkg import mod` counts as mod)."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1
                    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        graph[name] = {r for t in targets if t.split(".")[0] == "smpsim" and (r := resolve(t)) and r != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_no_import_cycles_beyond_the_known_ones():
    found = cycles(import_graph(modules()))
    new = [sorted(c) for c in found if c not in KNOWN]
    gone = [sorted(c) for c in KNOWN if c not in found]
    assert not new, f"import cycle(s): {new}"
    assert not gone, f"no longer a cycle (or changed): remove or update it in KNOWN: {gone}"


def test_the_cycle_finder_sees_a_late_import():
    """bench/jobs.py and bench/profile.py were a cycle through imports inside functions."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [{"a", "b", "c"}]
    mods = modules()
    assert "smpsim.bench.configs" in import_graph(mods)["smpsim.bench.profile"]  # a function-level import
