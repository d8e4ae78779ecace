"""Every class in smpsim/ has a docstring that says what it owns (checked on the source, nothing imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "smpsim"


def undocumented() -> set[tuple[str, str]]:
    out = set()
    for f in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ClassDef) and not (ast.get_docstring(node) or "").strip():
                out.add((f.relative_to(PACKAGE).as_posix(), node.name))
    return out


def test_every_class_has_a_docstring():
    found = undocumented()
    assert not found, f"classes without a docstring saying what they own: {sorted(found)}"
