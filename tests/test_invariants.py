"""The model's invariants (pkmap_count against the page table, holders and TLBs), checked while it runs.

The test drives the inline engine (the engine core) one step at a time and looks at the Coordinator and
the Cpu objects after every step, before and after delivering its messages:

- pkmap_count[i] == 0  =>  no CPU's TLB holds slot i (vpn i);
- a CPU's TLB holds slot i with pkmap_count[i] > 1  =>  its cached frame is the current PTE;
- pkmap_count only moves 1 -> 0 inside flush_all_zero_pkmaps (a wrap) or an eager teardown, 0 -> 1 only in
  map_new_virtual, and otherwise by +-1 between values >= 1.

CPUs are simulated up to different virtual times, so a CPU that has not yet reached the arrival time of
an IPI it has been sent still holds what that IPI will drop; the TLB checks count such pending
invalidations (queued IPIs, and the initiator's own flush carried in its reply or its sleeping request)
as done, and so do the results of a compound request not yet taken. The lock-window invariant (a flush's stall covers every target's ack, and no ring operation
happens inside it) is checked on the recorded trace.
"""

from __future__ import annotations

import pytest

from smpsim.config import validate
from smpsim.engines.inline import run

import reference_highmem as ref
from invariant_helpers import TrackedRing, instrumented_run


def _cfg(policy, workload, cpus, ring, nesting=1, kmaps=120, seed=3):
    return validate({"seed": seed, "machine": {"cpus": cpus, "last_pkmap": ring}, "policy": {"name": policy},
                     "tlb": {"entries": 64, "ways": 4},
                     "workload": {"kind": workload, "kmaps_per_cpu": kmaps, "pages": 3 * ring,
                                  "nesting": nesting, "hot_pages": max(4, ring // 2), "accesses_per_kmap": 3}})


CORRECT = [
    ("linux-2.4", "shared", 4, 16, 1),
    ("linux-2.4", "uniform", 4, 10, 3),     # sleepers on pkmap_map_wait
    ("linux-2.4", "pingpong", 2, 8, 1),
    ("linux-2.6", "pingpong", 4, 16, 2),
    ("linux-2.6", "zipf", 3, 8, 1),
    ("linux-2.6", "stream", 2, 64, 1),      # range above the flush ceiling: full flushes
    ("eager", "shared", 4, 16, 1),
    ("eager", "uniform", 3, 8, 3),
    ("kmap-local", "shared", 4, 16, 3),
]


@pytest.mark.parametrize("policy,workload,cpus,ring,nesting", CORRECT,
                         ids=["-".join(map(str, c)) for c in CORRECT])
def test_section7_invariants_hold(policy, workload, cpus, ring, nesting):
    cfg = _cfg(policy, workload, cpus, ring, nesting)
    violations, tracked, events = instrumented_run(cfg)
    assert not violations, "\n".join(violations[:20])
    kinds = {e["ev"] for e in events}
    assert "kmap" in kinds and "access" in kinds
    if policy != "kmap-local":
        # The run exercised the interesting transition.
        assert tracked.transitions_1_0 > 0
        assert sum(e["ev"] == "kmap" for e in events) == cpus * cfg.workload.kmaps_per_cpu


@pytest.mark.parametrize("policy", ["no-ipi", "no-flush"])
def test_invariant_checker_catches_broken_policies(policy):
    """The same checks flag the deliberately broken policies: a remote TLB keeps a torn-down slot."""
    cfg = _cfg(policy, "shared", 4, 16, 1)
    violations, _, _ = instrumented_run(cfg)
    assert any("at pkmap_count 0" in v or "PTE maps" in v for v in violations), violations[:5]


def test_transition_checker_flags_count_drop_outside_a_wrap():
    ring = TrackedRing(4)
    ring.ctx.append("map_new_virtual")
    ring.pkmap_count[1] = 1
    ring.ctx.pop()
    ring.pkmap_count[1] = 2
    ring.pkmap_count[1] = 1
    assert not ring.bad
    ring.pkmap_count[1] = 0   # what kunmap_high must never do
    assert ring.bad and "1 -> 0" in ring.bad[0]


# ---- the lock window of a shootdown, on the recorded trace ------------------------------------------

def check_flush_windows(events: list[dict]) -> tuple[list[str], int]:
    """For ring policies, whose every flush runs under kmap_lock. Returns (problems, flushes seen)."""
    bad = []
    flushes = [e for e in events if e["ev"] == "flush"]
    ipis: dict[int, list[dict]] = {}
    for e in events:
        if e["ev"] == "ipi":
            ipis.setdefault(e["src"], []).append(e)
    for src in ipis:
        ipis[src].sort(key=lambda e: (e["t_send"], e["cpu"]))
    used = {src: 0 for src in ipis}
    ring_ops = [e for e in events if e["ev"] in ("kmap", "kunmap", "wait", "wrap")]
    for f in sorted(flushes, key=lambda e: (e["t"], e["seq"])):
        t0, stall = f["t"], f["stall"]
        targets = sorted(f.get("targets") or [])
        mine = ipis.get(f["cpu"], [])[used.get(f["cpu"], 0): used.get(f["cpu"], 0) + len(targets)]
        used[f["cpu"]] = used.get(f["cpu"], 0) + len(targets)
        if sorted(e["cpu"] for e in mine) != targets:
            bad.append(f"flush seq {f['seq']} targets {targets}, IPIs received by {[e['cpu'] for e in mine]}")
            continue
        for e in mine:
            if e["t_send"] < t0:
                bad.append(f"flush seq {f['seq']} at t={t0}: IPI to CPU {e['cpu']} sent at {e['t_send']}")
            if e["t_ack"] - t0 > stall:
                bad.append(f"flush seq {f['seq']} at t={t0} stalls {stall} but CPU {e['cpu']} acks at "
                           f"{e['t_ack']} (t + {e['t_ack'] - t0})")
            if not (e["t_send"] <= e["t_recv"] <= e["t_ack"]):
                bad.append(f"IPI seq {e['seq']}: t_send {e['t_send']} t_recv {e['t_recv']} t_ack {e['t_ack']}")
        for e in ring_ops:
            if t0 <= e["t"] < t0 + stall and e["cpu"] != f["cpu"]:
                bad.append(f"CPU {e['cpu']}'s {e['ev']} (seq {e['seq']}) at t={e['t']} inside CPU "
                           f"{f['cpu']}'s flush [{t0}, {t0 + stall}) under kmap_lock")
    leftover = sum(len(v) for v in ipis.values()) - sum(used.values())
    if leftover > 0:
        bad.append(f"{leftover} IPI events belong to no flush")
    return bad, len(flushes)


WINDOW_CASES = [
    ("linux-2.4", "shared", 4, 16, 1),
    ("linux-2.4", "uniform", 8, 12, 2),
    ("linux-2.6", "pingpong", 4, 16, 1),
    ("eager", "zipf", 4, 16, 1),
    ("no-ipi", "shared", 4, 16, 1),
]


@pytest.mark.parametrize("policy,workload,cpus,ring,nesting", WINDOW_CASES,
                         ids=["-".join(map(str, c)) for c in WINDOW_CASES])
def test_flush_stall_covers_acks_and_holds_the_lock(tmp_path, policy, workload, cpus, ring, nesting):
    cfg = _cfg(policy, workload, cpus, ring, nesting, kmaps=80)
    run(cfg, tmp_path / "run")
    events = ref.load_events(tmp_path / "run")
    bad, nflush = check_flush_windows(events)
    assert nflush > 0
    assert not bad, "\n".join(bad[:20])
    if policy != "no-ipi":
        assert any(e["ev"] == "ipi" for e in events)


def test_flush_window_checker_detects_a_short_stall(tmp_path):
    cfg = _cfg("linux-2.4", "shared", 4, 16, 1, kmaps=40)
    run(cfg, tmp_path / "run")
    events = ref.load_events(tmp_path / "run")
    assert not check_flush_windows(events)[0]
    short = [dict(e, stall=1) if e["ev"] == "flush" else e for e in events]
    assert any("acks at" in b for b in check_flush_windows(short)[0])
    f = next(e for e in events if e["ev"] == "flush" and e["stall"] > 0)
    k = next(e for e in events if e["ev"] == "kmap" and e["cpu"] != f["cpu"])
    moved = [dict(e, t=f["t"] + 1) if e is k else e for e in events]
    assert any("inside" in b for b in check_flush_windows(moved)[0])
