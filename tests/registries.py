"""The lists of policies and workload kinds the tests parametrize over, taken from the package's registries
so that a new policy or kind is tested without editing test files."""

from __future__ import annotations

from smpsim.config import WORKLOAD_FILE_KEYS, WORKLOADS
from smpsim.model.policies import POLICIES, POLICY_NAMES

BROKEN_POLICIES = ("no-ipi", "no-flush")  # broken on purpose: they use stale translations
CORRECT_POLICIES = tuple(n for n in POLICY_NAMES if n not in BROKEN_POLICIES)
RING_POLICIES = tuple(n for n, cls in POLICIES.items() if cls.uses_ring)  # kmaps that reach the shared ring
GENERATED_WORKLOADS = tuple(k for k in WORKLOADS if k not in WORKLOAD_FILE_KEYS)  # drawn from the seed
