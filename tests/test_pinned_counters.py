"""What is simulated is fixed: every counter of a spread of configs stays what it was when pinned.

Speed, memory and structure work must not move any of these (kmaps, reuses, wraps, flushes, IPIs, useless
IPIs, stale uses, sleeps, wakes, cycle totals, per-CPU TLB hits and misses), in either engine. The cases
and how to re-pin them deliberately are in tests/pinned_cases.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pinned_cases import cases, config_for, observe
from smpsim.config import dotted
from smpsim.engines import inline
from smpsim.model.policies import POLICY_NAMES

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_counters.json").read_text())

# The distributed engine is slower to start: a subset covering every policy family, sleeps, scripts and
# many processes.
DISTRIBUTED = ["linux-2.4-uniform-2cpu", "linux-2.4-uniform-32cpu", "sleeps-small-ring", "no-ipi-shared-4cpu",
               "linux-2.4-script-kind", "kmap-local-uniform-4cpu", "eager-shared-8cpu", "linux-2.6-range",
               "sleeps-small-ring-latr"]


def _diff(got: dict, want: dict) -> str:
    lines = []
    for k in sorted(set(want["counters"]) | set(got["counters"])):
        if got["counters"].get(k) != want["counters"].get(k):
            lines.append(f"  {k}: pinned {want['counters'].get(k)}, now {got['counters'].get(k)}")
    for a, b in zip(want["per_cpu"], got["per_cpu"]):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                lines.append(f"  cpu {a['cpu']} {k}: pinned {a.get(k)}, now {b.get(k)}")
    for k in ("flushes_by_scope", "t_end"):
        if got[k] != want[k]:
            lines.append(f"  {k}: pinned {want[k]}, now {got[k]}")
    return "\n".join(lines[:40])


def test_cases_match_pinned_file():
    """The file pins the cases of pinned_cases.py: the same names, and each stored config has every
    override of its case (a case edited without re-pinning would otherwise test the old config)."""
    assert sorted(cases()) == sorted(PINNED), "re-pin with: python tests/pinned_cases.py > tests/data/pinned_counters.json"
    for name, overrides in cases().items():
        stored = dict(dotted(PINNED[name]["config"]))
        wrong = {k: (stored.get(k), v) for k, v in overrides.items() if stored.get(k) != v}
        assert not wrong, f"{name}: pinned config differs from its case (pinned, case): {wrong}"


def test_every_built_in_policy_is_pinned():
    pinned = {case["config"]["policy"]["name"] for case in PINNED.values()}
    assert set(POLICY_NAMES) <= pinned, f"not pinned: {sorted(set(POLICY_NAMES) - pinned)}"


@pytest.mark.parametrize("name", sorted(PINNED))
def test_inline_counters_unchanged(name, tmp_path):
    case = PINNED[name]
    got = observe(inline.run(config_for(case, tmp_path)).summary)
    assert got == case["expect"], f"{name} simulates something else now:\n{_diff(got, case['expect'])}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", DISTRIBUTED)
def test_distributed_counters_unchanged(name, tmp_path):
    from smpsim.engines.distributed.launch import run_distributed
    case = PINNED[name]
    got = observe(run_distributed(config_for(case, tmp_path), None).summary)
    assert got == case["expect"], f"{name} (distributed) simulates something else now:\n{_diff(got, case['expect'])}"
