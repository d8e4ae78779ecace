"""The lists of policies and workload kinds the tests parametrize over, taken from the package's registries
so that a new policy or kind is tested without editing test files. A list that leaves some out names them,
with the reason."""

from __future__ import annotations

from smpsim.config import WORKLOAD_FILE_KEYS, WORKLOADS
from smpsim.model.policies import POLICIES, POLICY_NAMES

BROKEN_POLICIES = ("no-ipi", "no-flush")  # broken on purpose: they use stale translations
CORRECT_POLICIES = tuple(n for n in POLICY_NAMES if n not in BROKEN_POLICIES)
RING_POLICIES = tuple(n for n, cls in POLICIES.items() if cls.uses_ring)  # kmaps that reach the shared ring
# The designs after 2001 (docs/policies.md) show what they do only with keys of their own (policy.tick,
# policy.lazy_max) or a workload that leaves CPUs idle (active_cpus): tests/test_policies.py runs them so.
# Every other policy, a new one included, goes through the grids that use none of those.
LATER_POLICIES = ("vmap-lazy", "tlb-gen", "latr")
EARLIER_POLICIES = tuple(n for n in POLICY_NAMES if n not in LATER_POLICIES)

GENERATED_WORKLOADS = tuple(k for k in WORKLOADS if k not in WORKLOAD_FILE_KEYS)  # drawn from the seed
# Kinds replayed from an input of their own (a kprobe trace, a generator function) are tested by
# test_trace_workload.py and test_python_workload.py; every other kind, script included (tests write one).
OWN_INPUT_WORKLOADS = ("trace", "python")
GRID_WORKLOADS = tuple(k for k in WORKLOADS if k not in OWN_INPUT_WORKLOADS)

for _names, _registry in ((BROKEN_POLICIES + LATER_POLICIES, POLICY_NAMES), (OWN_INPUT_WORKLOADS, WORKLOADS)):
    # a name dropped from a registry must not leave a list here silently covering nothing
    assert set(_names) <= set(_registry), sorted(set(_names) - set(_registry))
