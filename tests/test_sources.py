"""Every source tag the code and docs cite ([R11] in a cost comment) is listed, with its URL or paper, under
"Sources" in docs/validation.md, and the list holds no source nothing cites."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "docs" / "validation.md"
TAG = re.compile(r"\[(R\d+)\]")


def listed() -> dict[str, str]:
    text = SOURCES.read_text()
    section = text[text.index("\n## Sources\n"):]
    return {tag: entry for entry in re.split(r"\n(?=- )", section) for tag in re.findall(r"^- \[(R\d+)\]", entry)}


def cited() -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for path in [*sorted((ROOT / "smpsim").rglob("*.py")), *sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]:
        text = path.read_text()
        if path == SOURCES:
            text = text[:text.index("\n## Sources\n")]
        for lineno, line in enumerate(text.splitlines(), 1):
            for tag in TAG.findall(line):
                where.setdefault(tag, []).append(f"{path.relative_to(ROOT)}:{lineno}")
    return where


def test_every_cited_source_tag_is_listed():
    sources, uses = listed(), cited()
    assert uses, "no [Rnn] tag found: the pattern no longer matches the code's cost comments"
    assert {t: w for t, w in uses.items() if t not in sources} == {}
    assert sorted(set(sources) - set(uses)) == []


def test_each_listed_source_says_where_to_find_it():
    for tag, entry in listed().items():
        assert re.search(r"https?://|DOI |torvalds/linux", entry), (tag, entry)
