"""The same digest whatever the message timing: deliveries delayed and reordered between CPUs at random.

A link keeps its order (ZeroMQ does, and sequence numbers check it); everything else is shuffled. First a
randomized in-process transport around the same engine core, over many seeds. (Real processes over real
ZeroMQ with a proxy that holds every message back for a random time: tests/test_distributed.py.)
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from smpsim.config import validate
from smpsim.engines import inline
from smpsim.engines.core import Core, CpuPort
from smpsim.trace.recorder import Recorder
from smpsim.model import workloads
from smpsim.model.coordinator import Coordinator


def _cfg(policy="linux-2.4", workload="shared", cpus=4, ring=16, nesting=1, kmaps=40, seed=5):
    return validate({"seed": seed, "machine": {"cpus": cpus, "last_pkmap": ring}, "policy": {"name": policy},
                     "workload": {"kind": workload, "kmaps_per_cpu": kmaps, "pages": 3 * ring, "nesting": nesting,
                                  "hot_pages": 6, "think": 600, "hold": 100},
                     "trace": {"enabled": False}})


def shuffled_run(cfg, seed: int, max_turns: int = 2_000_000) -> dict:
    """The run over a transport that delivers each link's batches in order but at random times."""
    rnd = random.Random(seed)
    cpus = inline.build_cpus(cfg)
    core = Core(Coordinator(cfg), Recorder(cfg, None, "shuffled"), workloads.script_lines(cfg))
    ports = [CpuPort(c) for c in cpus]
    n = len(ports)
    up: list[deque] = [deque() for _ in range(n)]
    down: list[deque] = [deque() for _ in range(n)]
    report = [False] * n
    for c, d in core.start():
        down[c].append(d)
    for _ in range(max_turns):
        if core.complete():
            return core.close()
        r = rnd.random()
        c = rnd.randrange(n)
        if r < 0.35:
            if down[c]:
                report[c] = ports[c].deliver(down[c].popleft()) or report[c]
        elif r < 0.7:
            u = ports[c].work(rnd.choice((1, 3, 50, None)), report[c])
            report[c] = False
            if u is not None:
                up[c].append(u)
        elif r < 0.9:
            if up[c]:
                core.receive(c, up[c].popleft())
        else:
            for dest, d in core.step():
                down[dest].append(d)
            if rnd.random() < 0.3:
                core.release()
    raise AssertionError(f"seed {seed}: no end after {max_turns} turns")


CASES = [
    ("linux-2.4", "shared", 4, 16, 1),
    ("linux-2.4", "uniform", 3, 10, 3),    # sleeps on pkmap_map_wait, compound kunmap chains
    ("linux-2.6", "pingpong", 4, 16, 2),
    ("eager", "zipf", 3, 16, 1),           # an IPI on every teardown: compounds stretched by handlers
    ("no-ipi", "shared", 2, 8, 1),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy,workload,cpus,ring,nesting", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_shuffled_deliveries_give_the_inline_digest(policy, workload, cpus, ring, nesting):
    cfg = _cfg(policy, workload, cpus, ring, nesting)
    want = inline.run(cfg).summary
    assert want["counters"]["kmaps"] == cpus * 40
    for seed in range(12):
        got = shuffled_run(cfg, seed)
        assert got["digest"] == want["digest"], (policy, workload, seed)
        assert got["counters"] == want["counters"]


def test_a_kmap_costs_one_request():
    """A kunmap and the next kmap that only compute separates travel as one request (one round trip), and
    a stalled CPU sends no progress report the coordinator does not need."""
    cfg = _cfg("linux-2.4", "uniform", 4, 64, kmaps=200)
    engine = inline.InlineEngine(cfg, Recorder(cfg, None, "inline"))
    kinds: dict[str, int] = {}

    class Counting:  # the engine's core, counting what it receives (a compiled Core takes no new methods)
        def __init__(self, core):
            self.core = core

        def __getattr__(self, name):
            return getattr(self.core, name)

        def receive(self, cpu, up):
            for msg in up.msgs:
                kinds[type(msg).__name__] = kinds.get(type(msg).__name__, 0) + 1
            self.core.receive(cpu, up)

    engine.core = Counting(engine.core)
    engine.drive()
    summary = engine.core.close()
    assert summary["counters"]["kmaps"] == 800 and summary["counters"]["wraps"] > 0
    # the first kmap of each CPU, then one request per kunmap + next kmap; the last kunmap alone
    assert kinds["Request"] == 800 + 4
    assert kinds.get("Progress", 0) < 40
