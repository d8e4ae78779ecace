"""Hand-written operation scripts for tests: the op builders, a config around a script, a run of one, and a
Hypothesis strategy of random small scripts (shared by the fidelity, policy and safe-time tests)."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import strategies as st

from smpsim.config import validate
from smpsim.engines.inline import run

import reference_highmem as ref


def write_script(path: Path, ops: list) -> Path:
    """ops: dicts (one JSON line each) or strings (written verbatim, e.g. comments)."""
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in ops))
    return path


def K(cpu, page):
    return {"cpu": cpu, "op": "kmap", "page": page}


def U(cpu, page):
    return {"cpu": cpu, "op": "kunmap", "page": page}


def A(cpu, page, n=4, write=False):
    return {"cpu": cpu, "op": "access", "page": page, "n": n, "write": write}


def C(cpu, cycles):
    return {"cpu": cpu, "op": "compute", "cycles": cycles}


def script_cfg(script: Path, cpus=1, ring=8, policy="linux-2.4", cost=None, policy_keys=None, **machine):
    return validate({"machine": {"cpus": cpus, "last_pkmap": ring, **machine},
                     "policy": {"name": policy, **(policy_keys or {})}, "cost": cost or {},
                     "workload": {"kind": "script", "script": str(script)}})


def shared_pages_script(tmp_path: Path, cpus: int) -> str:
    """A script where CPUs share pages and reuse slots of a small ring; its path."""
    ops = []
    for r in range(6):
        for c in range(cpus):
            page = (r * 3 + c) % 7
            ops += [K(c, page), A(c, page, n=2, write=c % 2 == 0), C(c, 300 + 50 * c), U(c, page), C(c, 700)]
    return str(write_script(tmp_path / "script.jsonl", ops))


def run_script(tmp_path: Path, ops: list, **kw):
    cfg = script_cfg(write_script(tmp_path / "ops.jsonl", ops), **kw)
    out = tmp_path / "run"
    res = run(cfg, out)
    assert res.summary["status"] == "ok"
    return cfg, ref.load_events(out)


@st.composite
def scripts(draw, policies=ref.RING_POLICIES, max_ops=30):
    """(ncpu, ring, policy, ops): per-CPU kmap/kunmap/access/compute scripts on small rings that wrap and
    fill up; each CPU holds at most a few pages at once."""
    ncpu = draw(st.integers(1, 4))
    ring = draw(st.one_of(st.integers(4, 6), st.integers(4, 16)))
    policy = draw(st.sampled_from(policies))
    npages = draw(st.integers(2, 2 * ring + 4))
    max_hold = draw(st.integers(1, 4))
    ops = []
    for cpu in range(ncpu):
        held: list[int] = []
        for _ in range(draw(st.integers(0, max_ops))):
            choice = draw(st.sampled_from(["kmap", "kmap", "kmap", "kunmap", "kunmap", "access", "compute"]))
            if choice == "kmap" and len(held) < max_hold:
                p = draw(st.integers(0, npages - 1))
                held.append(p)
                ops.append(K(cpu, p))
            elif choice in ("kmap", "kunmap") and held:
                p = held.pop(draw(st.integers(0, len(held) - 1)))
                ops.append(U(cpu, p))
            elif choice == "access" and held:
                ops.append(A(cpu, draw(st.sampled_from(held)), n=draw(st.integers(1, 4)),
                             write=draw(st.booleans())))
            else:
                ops.append(C(cpu, draw(st.integers(0, 3000))))
        if draw(st.booleans()):
            ops += [U(cpu, p) for p in reversed(held)]
    return ncpu, ring, policy, ops
