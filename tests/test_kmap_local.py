"""kmap_local's rules, as the kernel enforces them (mm/highmem.c kmap_local_idx_push / kunmap_local_indexed):
a per-CPU stack of KM_MAX_IDX slots (machine.kmap_local_slots) that a kmap beyond BUG()s, and unmaps in stack
order only. The model stops the run with a ModelError naming the CPU and operation.
(A mutation audit found the overflow bound unguarded: `idx > slots` for `idx >= slots` passed every test.)"""

from __future__ import annotations

import pytest

from script_helpers import A, C, K, U, run_script
from smpsim.model.errors import ModelError


def _nested(cpu: int, depth: int) -> list:
    pages = range(100 * cpu, 100 * cpu + depth)
    return [K(cpu, p) for p in pages] + [A(cpu, p, n=1) for p in pages] + [U(cpu, p) for p in reversed(pages)]


@pytest.mark.parametrize("slots", [1, 2, 5])
def test_the_stack_holds_exactly_its_slots(tmp_path, slots):
    """Nesting as deep as the stack runs (on every CPU, each with its own stack); one deeper stops the run
    at that kmap, naming the CPU."""
    (tmp_path / "full").mkdir()
    (tmp_path / "over").mkdir()
    _, events = run_script(tmp_path / "full", _nested(0, slots) + _nested(1, slots), cpus=2, policy="kmap-local",
                           kmap_local_slots=slots)
    assert sorted({e["slot"] for e in events if e["ev"] == "kmap"}) == list(range(slots))
    with pytest.raises(ModelError, match=rf"CPU 1.*kmap_local stack overflow: all {slots} slots in use"):
        run_script(tmp_path / "over", _nested(0, slots) + _nested(1, slots + 1), cpus=2, policy="kmap-local",
                   kmap_local_slots=slots)


def test_unmapping_out_of_stack_order_stops_the_run(tmp_path):
    ops = [K(0, 1), K(0, 2), C(0, 10), U(0, 1), U(0, 2)]
    with pytest.raises(ModelError, match="kunmap_local of page 1 out of stack order"):
        run_script(tmp_path, ops, policy="kmap-local")
