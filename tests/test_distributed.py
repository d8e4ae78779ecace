"""The distributed engine: real CPU processes, real ZeroMQ, compared with the single-process engine."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

from smpsim.config import load_config, validate
from smpsim.engines import inline
from smpsim.engines.distributed import protocol as p
from smpsim.engines.distributed.launch import run_distributed
from smpsim.trace.reader import iter_events, open_run

from proc_helpers import free_port as _free_port
from proc_helpers import log_has as _log_has
from proc_helpers import dealer
from proc_helpers import hello as _hello
from proc_helpers import wait_for as _wait_for
from proc_helpers import ADDR, NS
from script_helpers import shared_pages_script as _script
from registries import EARLIER_POLICIES as POLICIES  # the later ones: test_policies, with their own keys


def _cfg(tmp_path, policy, workload, cpus, kmaps=30, **extra):
    wl = {"kind": workload, "kmaps_per_cpu": kmaps, "pages": 96, "nesting": 2, "think": 800, "hold": 100}
    if workload == "script":
        wl = {"kind": "script", "script": _script(tmp_path, cpus)}
    data = {"seed": 11, "machine": {"cpus": cpus, "last_pkmap": 16}, "policy": {"name": policy},
            "workload": wl, "trace": {"enabled": False}}
    for k, v in extra.items():
        data[k] = v
    return validate(data)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
@pytest.mark.parametrize("workload", ["uniform", "shared", "pingpong", "script"])
@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_digest_equals_inline(tmp_path, transport, workload, cpus):
    for policy in POLICIES:
        cfg = _cfg(tmp_path, policy, workload, cpus)
        want = inline.run(cfg).summary
        got = run_distributed(cfg, None, transport).summary
        assert got["digest"] == want["digest"], (policy, workload, cpus, transport)
        assert got["counters"] == want["counters"]
        assert got["counters"]["kmaps"] > 0


@pytest.mark.timeout(300)
def test_digest_equals_inline_at_32_cpus(tmp_path):
    cfg = _cfg(tmp_path, "linux-2.4", "shared", 32, kmaps=12)
    want = inline.run(cfg).summary
    got = run_distributed(cfg, tmp_path / "run", "ipc").summary
    assert got["digest"] == want["digest"]
    assert got["counters"]["ipis"] > 0
    # The complete trace is in the coordinator's run directory, logs one file per process.
    logs = sorted(x.name for x in (tmp_path / "run" / "logs").iterdir())
    assert "coordinator.log.jsonl" in logs and len([x for x in logs if x.startswith("cpu-")]) == 32


def test_trace_in_run_dir_matches_inline(tmp_path):
    cfg = _cfg(tmp_path, "eager", "pingpong", 4, trace={"enabled": True, "part_events": 500})
    a = inline.run(cfg, tmp_path / "a").summary
    b = run_distributed(cfg, tmp_path / "b", "tcp").summary
    ea = list(iter_events(open_run(tmp_path / "a")))
    eb = list(iter_events(open_run(tmp_path / "b")))
    assert a["digest"] == b["digest"] and ea == eb and len(ea) == a["events"]






def _alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.timeout(120)
def test_launch_runs_one_process_per_cpu(tmp_path, smpsim_cmd, subprocess_env):
    out = tmp_path / "run"
    proc = subprocess.Popen([*smpsim_cmd, "launch", "--cpus", "8", "--out", str(out),
                             "--set", "workload.kmaps_per_cpu=400"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    try:
        _wait_for(lambda: _log_has(out / "logs" / "coordinator.log.jsonl", "all joined"), 60, "all CPUs joined")
        kids = psutil.Process(proc.pid).children(recursive=True)
        seen = 1 + len(kids)
        pids = [proc.pid] + [k.pid for k in kids]
        stdout, stderr = proc.communicate(timeout=100)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert seen == 9
    assert not _alive(pids)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["counters"]["kmaps"] == 8 * 400
    assert summary["digest"] in stdout
    assert "Traceback" not in stderr


@pytest.mark.timeout(120)
def test_killed_cpu_stops_the_run(tmp_path, smpsim_cmd, subprocess_env):
    out = tmp_path / "run"
    proc = subprocess.Popen([*smpsim_cmd, "launch", "--cpus", "4", "--out", str(out), "--no-respawn",
                             "--set", "workload.kmaps_per_cpu=20000", "--set", "trace.part_events=2000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    try:
        _wait_for(lambda: _log_has(out / "logs" / "coordinator.log.jsonl", "all joined"), 60, "all CPUs joined")
        _wait_for(lambda: list((out / "trace").glob("part-*.parquet")), 60, "a first trace part")
        kids = psutil.Process(proc.pid).children(recursive=True)
        assert len(kids) == 4
        victim = kids[2]
        victim.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        stdout, stderr = proc.communicate(timeout=30)
        elapsed = time.monotonic() - t_kill
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert elapsed < 10
    assert "CPU 2" in stderr and "SIGKILL" in stderr and "virtual time t=" in stderr, stderr
    assert "Traceback" not in stderr
    assert not _alive([k.pid for k in kids])
    run = open_run(out)
    events = list(iter_events(run))
    assert events and [e["seq"] for e in events] == list(range(len(events)))
    # On record: the death in the coordinator's log (an error analyze counts), summary.json, provenance.json.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "aborted" and "CPU 2" in summary["error"]
    assert summary["faults"]["first"][0]["kind"] == "cpu lost" and summary["faults"]["first"][0]["cpu"] == 2
    assert json.loads((out / "provenance.json").read_text())["status"] == "aborted"
    lost = [json.loads(x) for x in (out / "logs" / "coordinator.log.jsonl").read_text().splitlines()]
    assert [x["cpu"] for x in lost if x["event"] == "cpu lost" and x["level"] == "error"] == [2]




@pytest.mark.timeout(120)
def test_cpus_exit_when_the_coordinator_dies(tmp_path, smpsim_cmd, subprocess_env):
    port = _free_port()
    out = tmp_path / "run"
    coord = subprocess.Popen([*smpsim_cmd, "coordinator", "--listen", f"tcp://127.0.0.1:{port}", "--out", str(out),
                              "--set", "machine.cpus=2", "--set", "workload.kmaps_per_cpu=20000", "--token", "t"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    cpus = [subprocess.Popen([*smpsim_cmd, "cpu", "--coordinator", f"tcp://127.0.0.1:{port}", "--cpu-id", str(c),
                              "--token", "t"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env)
            for c in range(2)]
    try:
        _wait_for(lambda: _log_has(out / "logs" / "coordinator.log.jsonl", "all joined"), 60, "all CPUs joined")
        coord.send_signal(signal.SIGKILL)
        coord.wait(5)
        t0 = time.monotonic()
        for c in cpus:
            c.wait(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        for x in [coord, *cpus]:
            x.kill()
            x.wait()
    assert elapsed < 10
    for c in cpus:
        err = c.stderr.read()
        assert c.returncode != 0 and "coordinator" in err and "Traceback" not in err, err


@pytest.mark.timeout(30)
def test_a_cpu_says_its_coordinator_went_silent_whichever_way_it_waits():
    """Both of a CPU's waits (a poll, and recv itself while a request is out) end in the one CpuExit that
    names the silence; a CPU still joining is not judged by it (its join timeout is)."""
    from smpsim.engines.distributed.cpu_node import CpuExit, CpuNode

    ctx = zmq.Context()
    node = CpuNode(f"tcp://127.0.0.1:{_free_port()}", 3, ctx=ctx)  # nobody there: nothing is ever heard
    try:
        node.last_heard = time.monotonic() - p.PEER_TIMEOUT_S - 1
        assert node._recv(10, joining=True) is None
        said = f"CPU 3: the coordinator has been silent for {p.PEER_TIMEOUT_S:.0f} s; exiting"
        with pytest.raises(CpuExit) as polled:
            node._recv(10)
        node.sock.setsockopt(zmq.RCVTIMEO, 10)
        with pytest.raises(CpuExit) as waited:
            node._recv_wait()
        assert str(polled.value) == str(waited.value) == said
    finally:
        node.close()
        ctx.term()


@pytest.mark.timeout(120)
def test_bad_joiners_are_refused_and_the_run_is_undisturbed(tmp_path, smpsim_cmd, subprocess_env):
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "run"
    sets = ["--set", "machine.cpus=2", "--set", "workload.kmaps_per_cpu=60", "--set", "machine.last_pkmap=16"]
    coord = subprocess.Popen([*smpsim_cmd, "coordinator", "--listen", addr, "--token", "sesame", "--out", str(out),
                              *sets], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=subprocess_env)
    ctx = zmq.Context()
    socks = []
    cpus = []
    try:
        def dealer():
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(addr)
            socks.append(s)
            return s

        assert _hello(dealer(), 0, version=99, token="sesame")[0] == p.REFUSE
        reply = _hello(dealer(), 0, token="wrong")
        assert reply[0] == p.REFUSE and "token" in reply[1]
        reply = _hello(dealer(), 7, token="sesame")
        assert reply[0] == p.REFUSE and "out of range" in reply[1]
        g = dealer()
        g.send(b"\x93\xff garbage")
        assert g.poll(5000) and msgpack.unpackb(g.recv(), raw=False)[0] == p.REFUSE
        # CPU 0 joins for real; a second CPU 0 is a duplicate.
        cpus.append(subprocess.Popen([*smpsim_cmd, "cpu", "--coordinator", addr, "--cpu-id", "0", "--token", "sesame"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env))
        _wait_for(lambda: _log_has(out / "logs" / "coordinator.log.jsonl", "joined"), 30, "CPU 0 joined")
        reply = _hello(dealer(), 0, token="sesame")
        assert reply[0] == p.REFUSE and "already joined" in reply[1]
        env = dict(subprocess_env, JOB_COMPLETION_INDEX="1", SMPSIM_TOKEN="sesame")
        cpus.append(subprocess.Popen([*smpsim_cmd, "cpu", "--coordinator", addr], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env))
        stdout, stderr = coord.communicate(timeout=90)
        for c in cpus:
            c.wait(timeout=15)
    finally:
        for s in socks:
            s.close(0)
        ctx.term()
        for x in [coord, *cpus]:
            x.kill()
            x.wait()
    assert coord.returncode == 0, stderr
    assert all(c.returncode == 0 for c in cpus)
    want = inline.run(validate({"machine": {"cpus": 2, "last_pkmap": 16},
                                "workload": {"kmaps_per_cpu": 60}, "policy": {"name": "linux-2.4"}}
                               | _default_overrides())).summary
    got = json.loads((out / "summary.json").read_text())
    assert got["digest"] == want["digest"]
    log = (out / "logs" / "coordinator.log.jsonl").read_text()
    for reason in ("protocol version 99", "token", "out of range", "garbage", "already joined"):
        assert reason in log
    # Each refusal is an error on record, in the log and in summary.json, though the run went on.
    assert got["status"] == "ok" and got["faults"]["count"] == 5
    assert {f["kind"] for f in got["faults"]["first"]} == {"refused"}


def _default_overrides() -> dict:
    """The default config's settings other than the ones the test overrides."""
    from smpsim.config import default_config_path, read_toml
    data = read_toml(default_config_path())
    data.setdefault("machine", {}).update({"cpus": 2, "last_pkmap": 16})
    data.setdefault("workload", {}).update({"kmaps_per_cpu": 60})
    return data


def test_non_loopback_listen_needs_a_token(smpsim_cmd, subprocess_env):
    r = subprocess.run([*smpsim_cmd, "coordinator", "--listen", "tcp://0.0.0.0:0", "--insecure"], capture_output=True,
                       text=True, env={k: v for k, v in subprocess_env.items() if k != "SMPSIM_TOKEN"}, timeout=60)
    assert r.returncode == 2 and "token" in r.stderr and "Traceback" not in r.stderr


# ---- two hosts: network namespaces joined by a veth pair ---------------------------------------------

def _coordinator_and_cpus(coord_cmd: list, cpu_cmds: list[list], env: dict, timeout: float = 150) -> tuple:
    """Run `smpsim coordinator` and its `smpsim cpu` processes to the end: (exit code, stderr) of the
    coordinator. None is left running."""
    coord = subprocess.Popen(coord_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    cpus = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            for cmd in cpu_cmds]
    try:
        _, stderr = coord.communicate(timeout=timeout)
        for c in cpus:
            c.wait(timeout=15)
    finally:
        for x in [coord, *cpus]:
            x.kill()
            x.wait()
    return coord.returncode, stderr


@pytest.mark.timeout(180)
def test_two_hosts_same_digest(tmp_path, two_hosts, smpsim_cmd, subprocess_env):
    out = tmp_path / "run"
    sets = ["--set", "machine.cpus=3", "--set", "workload.kmaps_per_cpu=80", "--set", "machine.last_pkmap=32",
            "--set", "workload.kind=shared", "--set", "policy.name=linux-2.4"]
    cfg_data = _default_overrides()
    cfg_data["machine"].update({"cpus": 3, "last_pkmap": 32})
    cfg_data["workload"].update({"kmaps_per_cpu": 80, "kind": "shared"})
    cfg_data["policy"] = {"name": "linux-2.4"}
    want = inline.run(validate(cfg_data)).summary
    env = dict(subprocess_env, SMPSIM_TOKEN="two-hosts")
    code, stderr = _coordinator_and_cpus(
        ["ip", "netns", "exec", NS[0], *smpsim_cmd, "coordinator", "--listen", f"tcp://{ADDR[0]}:5555", "--insecure", "--out",
         str(out), *sets],
        [["ip", "netns", "exec", NS[1], *smpsim_cmd, "cpu", "--coordinator", f"tcp://{ADDR[0]}:5555", "--insecure", "--cpu-id",
          str(c)] for c in range(3)], env)
    assert code == 0, stderr
    got = json.loads((out / "summary.json").read_text())
    assert got["digest"] == want["digest"]
    joined = [json.loads(line) for line in (out / "logs" / "coordinator.log.jsonl").read_text().splitlines()]
    assert len([j for j in joined if j.get("event") == "joined"]) == 3


@pytest.mark.timeout(60)
def test_a_lost_message_stops_the_run(tmp_path, smpsim_cmd, subprocess_env):
    """A joined CPU whose message skips a sequence number: the run stops, saying so; nothing silent."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    coord = subprocess.Popen([*smpsim_cmd, "coordinator", "--listen", addr, "--out", str(tmp_path / "run"),
                              "--set", "machine.cpus=1", "--token", "t"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=subprocess_env)
    try:
        with dealer(addr) as s:
            welcome = _hello(s, 0, token="t")
            assert welcome[0] == p.WELCOME and welcome[2] == 0
            s.send(msgpack.packb([p.BATCH, 5, [], [], 0, 0]))  # seq 0 expected
            _, stderr = coord.communicate(timeout=30)
    finally:
        coord.kill()
        coord.wait()
    assert coord.returncode == 1
    assert "CPU 0" in stderr and "expected seq 0, got 5" in stderr and "Traceback" not in stderr


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


@pytest.mark.timeout(120)
def test_real_zeromq_with_random_delays_gives_the_inline_digest(tmp_path, smpsim_cmd, subprocess_env):
    sets = {"machine.cpus": 3, "workload.kmaps_per_cpu": 40, "machine.last_pkmap": 16, "workload.kind": "shared",
            "workload.pages": 48, "workload.hot_pages": 6, "policy.name": "eager", "seed": 5}
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in sets.items()])
    want = inline.run(cfg).summary
    back = f"tcp://127.0.0.1:{_free_port()}"
    proxy = DelayProxy(back, seed=7)
    out = tmp_path / "run"
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    try:
        code, stderr = _coordinator_and_cpus([*smpsim_cmd, "coordinator", "--listen", back, "--out", str(out), *args,
                                              "--token", "t"],
                                             [[*smpsim_cmd, "cpu", "--coordinator", proxy.address, "--cpu-id", str(c),
                                               "--token", "t"] for c in range(3)], subprocess_env)
    finally:
        proxy.close()
    assert code == 0, stderr
    got = json.loads((out / "summary.json").read_text())
    assert got["digest"] == want["digest"] and got["counters"] == want["counters"]
    assert got["counters"]["ipis"] > 0 and proxy.delayed > 100
