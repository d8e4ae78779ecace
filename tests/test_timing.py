"""The same digest whatever the message timing: deliveries delayed and reordered between CPUs at random.

A link keeps its order (ZeroMQ does, and sequence numbers check it); everything else is shuffled. First a
randomized in-process transport around the same engine core, over many seeds; then real processes over
real ZeroMQ with a proxy that holds every message back for a random time.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections import deque

import pytest
import zmq

from smpsim.config import validate
from smpsim.engines import inline
from smpsim.engines.core import Core, CpuPort
from smpsim.engines.recorder import Recorder
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
    core = Core(Coordinator(cfg), Recorder(cfg, None, "shuffled"), [c.lines for c in cpus])
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


class DelayProxy:
    """Between CPU processes (DEALERs, on `front`) and the coordinator (ROUTER, at `back`): every message
    waits a random time, each link in its order, so messages of different CPUs overtake each other."""

    def __init__(self, back: str, seed: int, max_delay: float = 0.004):
        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.back, self.rnd, self.max_delay = back, random.Random(seed), max_delay
        self.links: dict[bytes, zmq.Socket] = {}
        self.held: list[tuple[float, int, bytes, bool, bytes]] = []  # (due, n, ident, upward, frame)
        self.last_due: dict[tuple[bytes, bool], float] = {}
        self.delayed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _hold(self, ident: bytes, upward: bool, frame: bytes) -> None:
        key = (ident, upward)
        due = max(self.last_due.get(key, 0.0), time.monotonic() + self.rnd.random() * self.max_delay)
        self.last_due[key] = due
        self.held.append((due, len(self.held) + self.delayed, ident, upward, frame))
        self.held.sort()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        while not self.stop.is_set():
            timeout = 5 if not self.held else max(0, int((self.held[0][0] - time.monotonic()) * 1000))
            for sock, _ in poller.poll(timeout):
                if sock is self.front:
                    ident, frame = sock.recv_multipart()
                    if ident not in self.links:
                        s = self.ctx.socket(zmq.DEALER)
                        s.setsockopt(zmq.LINGER, 0)
                        s.connect(self.back)
                        self.links[ident] = s
                        poller.register(s, zmq.POLLIN)
                    self._hold(ident, True, frame)
                else:
                    ident = next(i for i, s in self.links.items() if s is sock)
                    self._hold(ident, False, sock.recv())
            now = time.monotonic()
            while self.held and self.held[0][0] <= now:
                _, _, ident, upward, frame = self.held.pop(0)
                self.delayed += 1
                if upward:
                    self.links[ident].send(frame)
                else:
                    self.front.send_multipart([ident, frame])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in [self.front, *self.links.values()]:
            s.close(0)
        self.ctx.term()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_real_zeromq_with_random_delays_gives_the_inline_digest(tmp_path, smpsim_cmd, subprocess_env):
    sets = {"machine.cpus": 3, "workload.kmaps_per_cpu": 40, "machine.last_pkmap": 16, "workload.kind": "shared",
            "workload.pages": 48, "workload.hot_pages": 6, "policy.name": "eager", "seed": 5}
    from smpsim.config import load_config
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in sets.items()])
    want = inline.run(cfg).summary
    back = f"tcp://127.0.0.1:{_free_port()}"
    proxy = DelayProxy(back, seed=7)
    out = tmp_path / "run"
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    coord = subprocess.Popen([*smpsim_cmd, "coordinator", "--listen", back, "--out", str(out), *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    cpus = [subprocess.Popen([*smpsim_cmd, "cpu", "--coordinator", proxy.address, "--cpu-id", str(c)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env)
            for c in range(3)]
    try:
        _, stderr = coord.communicate(timeout=100)
        for c in cpus:
            c.wait(timeout=15)
    finally:
        for x in [coord, *cpus]:
            x.kill()
            x.wait()
        proxy.close()
    assert coord.returncode == 0, stderr
    got = json.loads((out / "summary.json").read_text())
    assert got["digest"] == want["digest"] and got["counters"] == want["counters"]
    assert got["counters"]["ipis"] > 0 and proxy.delayed > 100
