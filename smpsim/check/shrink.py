"""Shrinking a failing fixed case to a short script: the case's operations as script lines, then delta
debugging (Zeller's ddmin) over the lines, removing whole holds, halving each compute, and a smaller ring
and fewer CPUs, keeping a change only when the same kind of failure remains. No randomness and no clock: the same case gives the same script."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smpsim.check.cases import Op
from smpsim.config import Config

MAX_RUNS = 3000  # runs of the policy one shrink may take (each a few milliseconds on a short script)


def script_of(cfg: Config) -> list[Op] | None:
    """Every CPU's operations of a config's workload as script lines (CPU by CPU: only each CPU's own
    order matters); None if one has no script form (a kunmap by a migrated task)."""
    from smpsim.model.workloads import build

    out: list[Op] = []
    for cpu, ops in enumerate(build(cfg)):
        for op in ops:
            if op[0] == "compute":
                out.append({"cpu": cpu, "op": "compute", "cycles": op[1]})
            elif op[0] == "access":
                out.append({"cpu": cpu, "op": "access", "page": op[1], "n": op[2], "write": op[3]})
            elif op[0] in ("kmap", "kunmap"):
                out.append({"cpu": cpu, "op": op[0], "page": op[1]})
            else:
                return None
    return out


def normalize(ops: list[Op], stack: bool = False) -> list[Op]:
    """A valid script from what is left of one: an access or kunmap of a page its CPU no longer holds is
    dropped (as is, with ``stack``, a kunmap out of stack order), and pages still held at the end are let
    go in reverse order (a CPU that ended holding them would keep their slots forever)."""
    held: dict[int, list[int]] = {}
    out: list[Op] = []
    for op in ops:
        h = held.setdefault(op["cpu"], [])
        kind = op["op"]
        if kind == "kmap":
            h.append(op["page"])
        elif kind in ("access", "kunmap"):
            if op["page"] not in h or (stack and kind == "kunmap" and h[-1] != op["page"]):
                continue
            if kind == "kunmap":
                del h[len(h) - 1 - h[::-1].index(op["page"])]
        out.append(op)
    for cpu, h in held.items():
        out += [{"cpu": cpu, "op": "kunmap", "page": p} for p in reversed(h)]
    return out


def shrink(ops: list[Op], fails: Callable[[list[Op]], bool], stack: bool = False) -> list[Op]:
    """A short script that still ``fails``, from one that does."""
    runs = 0

    def still(cand: list[Op]) -> bool:
        nonlocal runs
        runs += 1
        return fails(cand)

    ops = normalize(ops, stack)
    while True:  # ddmin over lines, then whole holds, until neither removes anything
        before = len(ops)
        ops = _ddmin(ops, still, stack, lambda: runs < MAX_RUNS)
        ops = _holds(ops, still, stack, lambda: runs < MAX_RUNS)
        if len(ops) == before or runs >= MAX_RUNS:
            break
    for i, op in enumerate(ops):  # shorter computes: the timing that matters, not more
        while op["op"] == "compute" and op["cycles"] and runs < MAX_RUNS:
            cand = [*ops[:i], {**op, "cycles": op["cycles"] // 2}, *ops[i + 1:]]
            if not still(cand):
                break
            ops, op = cand, cand[i]
    return ops


def _ddmin(ops: list[Op], still: Callable[[list[Op]], bool], stack: bool, more: Callable[[], bool]) -> list[Op]:
    """Remove chunks of lines, halving the chunk when none can go (ddmin's complement steps)."""
    n = 2
    while len(ops) >= 2 and more():
        size = -(-len(ops) // n)
        for start in range(0, len(ops), size):
            cand = normalize(ops[:start] + ops[start + size:], stack)
            if len(cand) < len(ops) and more() and still(cand):
                ops, n = cand, max(n - 1, 2)
                break
        else:
            if size == 1:
                break
            n = min(2 * n, len(ops))
    return ops


def _holds(ops: list[Op], still: Callable[[list[Op]], bool], stack: bool, more: Callable[[], bool]) -> list[Op]:
    """Remove one hold at a time: a kmap with the accesses and the kunmap of that page that follow it on its
    CPU (lines apart, which ddmin's contiguous chunks rarely take together)."""
    i = 0
    while i < len(ops) and more():
        op = ops[i]
        if op["op"] != "kmap":
            i += 1
            continue
        drop = {i}
        for j in range(i + 1, len(ops)):
            o = ops[j]
            if o["cpu"] == op["cpu"] and o.get("page") == op["page"]:
                if o["op"] == "kmap":
                    break
                drop.add(j)
                if o["op"] == "kunmap":
                    break
        cand = normalize([o for j, o in enumerate(ops) if j not in drop], stack)
        if len(cand) < len(ops) and still(cand):
            ops = cand
        else:
            i += 1
    return ops


def shrink_case(keys: dict[str, Any], ops: list[Op], fails: Callable[[dict[str, Any], list[Op]], bool],
                stack: bool = False) -> tuple[dict[str, Any], list[Op]]:
    """Shrink the script, then the machine: the smallest ring on which the script still fails (the
    script shrunk again there), and only the CPUs the script uses, numbered from 0."""
    ops = shrink(ops, lambda o: fails(keys, o), stack)
    ring = keys.get("machine.last_pkmap")
    for smaller in range(2, ring or 2):
        k = {**keys, "machine.last_pkmap": smaller}
        if fails(k, ops):
            keys, ops = k, shrink(ops, lambda o: fails(k, o), stack)
            break
    used = sorted({op["cpu"] for op in ops})
    if used and len(used) < keys.get("machine.cpus", len(used) + 1):
        dense = {c: i for i, c in enumerate(used)}
        k, o = {**keys, "machine.cpus": len(used)}, [{**op, "cpu": dense[op["cpu"]]} for op in ops]
        if fails(k, o):
            keys, ops = k, o
    return keys, ops
