"""Nobody let in: listen addresses, run tokens, CurveZMQ keys, read-only queries, hostile peers.

Real processes and real ZeroMQ throughout; the two-host tests use the network namespaces of
test_distributed.py.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import stat
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

from cli_helpers import invoke, user_error
from smpsim.config import load_config
from smpsim.engines import inline
from smpsim.engines.distributed import protocol as p
from smpsim.engines.distributed import security
from smpsim.model import messages as mm
from proc_helpers import dealer
from proc_helpers import ADDR, NS
from proc_helpers import free_port as _free_port
from proc_helpers import hello as _hello
from proc_helpers import log_has as _log_has
from proc_helpers import wait_for as _wait_for


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stderr_line(proc: subprocess.Popen, pattern: str, timeout: float) -> re.Match:
    """The first line of proc's stderr matching pattern (waiting at most timeout seconds)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        if sel.select(timeout=max(0.0, deadline - time.monotonic())):
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            m = re.search(pattern, line)
            if m:
                return m
    raise AssertionError(f"no stderr line matching {pattern!r} within {timeout}s: {''.join(seen)!r}")


def _coordinator(smpsim_cmd, env, out: Path, *args: str, cpus: int = 1, kmaps: int = 40,
                 prefix: tuple[str, ...] = ()):
    return subprocess.Popen([*prefix, *smpsim_cmd, "coordinator", "--out", str(out), "--set", f"machine.cpus={cpus}",
                             "--set", f"workload.kmaps_per_cpu={kmaps}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _cpu(smpsim_cmd, env, *args: str, prefix: tuple[str, ...] = ()):
    return subprocess.Popen([*prefix, *smpsim_cmd, "cpu", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(*procs, timeout: float = 90):
    try:
        return [x.communicate(timeout=timeout) for x in procs]
    finally:
        for x in procs:
            x.kill()
            x.wait()


def _inline_digest(cpus: int, kmaps: int, *sets: str) -> str:
    cfg = load_config(None, [f"machine.cpus={cpus}", f"workload.kmaps_per_cpu={kmaps}", *sets])
    return inline.run(cfg).summary["digest"]


# ---- --listen ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("listen, what", [
    ("tcp://127.0.0.1:99999", "port 99999 is out of range"),
    ("nonsense", "'nonsense' is not a ZeroMQ address"),
    ("tcp://127.0.0.1", "'tcp://127.0.0.1' is not a ZeroMQ address"),
    ("udp://127.0.0.1:5555", "is not a ZeroMQ address"),
    ("tcp://0.0.0.0:5555", "beyond loopback"),
])
def test_a_bad_listen_address_is_named(tmp_path, listen, what):
    err = user_error(invoke("coordinator", "--listen", listen, "--out", tmp_path / "run"))
    assert what in err and listen in err
    assert not (tmp_path / "run").exists()  # refused before anything is created


def test_an_address_that_cannot_be_bound_is_named(tmp_path):
    with socket_bound() as port:
        err = user_error(invoke("coordinator", "--listen", f"tcp://127.0.0.1:{port}", "--token", "x",
                                "--out", tmp_path / "run"))
    assert f"--listen tcp://127.0.0.1:{port}: cannot bind" in err and "in use" in err


class socket_bound:
    """A TCP port on loopback held by another socket."""

    def __enter__(self) -> int:
        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.ROUTER)
        port = self.s.bind_to_random_port("tcp://127.0.0.1")
        return port

    def __exit__(self, *exc):
        self.s.close(0)
        self.ctx.term()


def test_cpu_address_is_validated():
    assert "'nonsense' is not a ZeroMQ address" in user_error(invoke("cpu", "--coordinator", "nonsense"))
    err = user_error(invoke("cpu", "--coordinator", "tcp://10.1.2.3:5555"))
    assert "beyond loopback" in err and "--coordinator-key" in err and "--insecure" in err


# ---- run tokens on loopback ------------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_loopback_coordinator_makes_a_token_and_prints_the_bound_address(tmp_path, smpsim_cmd, subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k != "SMPSIM_TOKEN"}
    coord = _coordinator(smpsim_cmd, env, tmp_path / "run", "--listen", "tcp://127.0.0.1:0")
    try:
        m = _stderr_line(coord, r"listening on (tcp://127\.0\.0\.1:(\d+)) .*run token ([0-9a-f]{32})", 60)
        addr, port, token = m[1], int(m[2]), m[3]
        assert port != 0
        with dealer(addr) as s:  # the printed address is the bound one: a stranger reaches it, and is refused
            reply = _hello(s, 0)
        assert reply[0] == p.REFUSE and "token" in reply[1]
        cpu = _cpu(smpsim_cmd, env, "--coordinator", addr, "--token", token)
        (_, err), (_, cerr) = _finish(coord, cpu)
    finally:
        coord.kill()
    assert coord.returncode == 0 and cpu.returncode == 0, err + cerr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "ok"


@pytest.mark.timeout(120)
def test_token_file_is_private_and_read_by_the_cpu(tmp_path, smpsim_cmd, subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k != "SMPSIM_TOKEN"}
    port = _free_port()
    tf = tmp_path / "token"
    coord = _coordinator(smpsim_cmd, env, tmp_path / "run", "--listen", f"tcp://127.0.0.1:{port}",
                         "--token-file", str(tf))
    m = _stderr_line(coord, r"listening on .*run token in (\S+)", 60)
    assert m[1] == str(tf)
    assert stat.S_IMODE(tf.stat().st_mode) == 0o600 and re.fullmatch(r"[0-9a-f]{32}\n", tf.read_text())
    cpu = _cpu(smpsim_cmd, env, "--coordinator", f"tcp://127.0.0.1:{port}", "--token-file", str(tf))
    (_, err), (_, cerr) = _finish(coord, cpu)
    assert coord.returncode == 0 and cpu.returncode == 0, err + cerr


@pytest.mark.timeout(120)
def test_launch_keeps_its_ipc_socket_private(tmp_path, smpsim_cmd, subprocess_env):
    out = tmp_path / "run"
    proc = subprocess.Popen([*smpsim_cmd, "launch", "--cpus", "2", "--out", str(out),
                             "--set", "workload.kmaps_per_cpu=3000", "--set", "trace.enabled=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    log = out / "logs" / "coordinator.log.jsonl"
    try:
        _wait_for(lambda: _log_has(log, "listening"), 60, "the coordinator listening")
        address = next(e["address"] for e in _log(log) if e.get("event") == "listening")
        assert address.startswith("ipc://")
        sock = Path(address[len("ipc://"):])
        st = sock.parent.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
        _, err = proc.communicate(timeout=100)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert not sock.parent.exists()  # removed with the run


# ---- keys ------------------------------------------------------------------------------------------------

def test_keygen_makes_private_key_pairs_and_never_overwrites(tmp_path):
    r = invoke("keygen", "--cpus", "3", "--dir", tmp_path / "keys")
    assert r.exit_code == 0, r.output
    cdir, kdir = tmp_path / "keys" / "coordinator", tmp_path / "keys" / "cpus"
    assert sorted(x.name for x in cdir.iterdir()) == ["allowed.keys", "coordinator.key_secret"]
    assert sorted(x.name for x in kdir.iterdir()) == sorted(
        ["coordinator.key"] + [f"cpu-{c}.key{s}" for c in range(3) for s in ("", "_secret")])
    for secret in [cdir / "coordinator.key_secret", *kdir.glob("*.key_secret")]:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
        public, key = zmq.auth.load_certificate(secret)
        assert len(public) == len(key) == 40
    allowed = security.load_allowed(cdir / "allowed.keys")
    assert allowed == {zmq.auth.load_certificate(kdir / f"cpu-{c}.key")[0]: c for c in range(3)}
    coord_public = zmq.auth.load_certificate(cdir / "coordinator.key_secret")[0]
    assert zmq.auth.load_certificate(kdir / "coordinator.key") == (coord_public, None)
    before = (cdir / "coordinator.key_secret").read_bytes()
    assert "never overwrites" in user_error(invoke("keygen", "--cpus", "3", "--dir", tmp_path / "keys"))
    assert (cdir / "coordinator.key_secret").read_bytes() == before
    r = invoke("keygen", "solo", "--dir", tmp_path / "one")
    assert r.exit_code == 0 and stat.S_IMODE((tmp_path / "one" / "solo.key_secret").stat().st_mode) == 0o600
    assert "never overwrites" in user_error(invoke("keygen", "solo", "--dir", tmp_path / "one"))


def test_bad_key_options_are_named(tmp_path):
    invoke("keygen", "--cpus", "1", "--dir", tmp_path / "k")
    sec = tmp_path / "k" / "coordinator" / "coordinator.key_secret"
    assert "--key and --allow go together" in user_error(invoke("coordinator", "--key", sec))
    bad = tmp_path / "bad.keys"
    bad.write_text("# keys\nnot-a-key\n")
    err = user_error(invoke("coordinator", "--key", sec, "--allow", bad, "--out", tmp_path / "r"))
    assert f"--allow {bad}, line 2: not a CurveZMQ key" in err
    pub = tmp_path / "k" / "cpus" / "coordinator.key"
    assert "holds only a public key" in user_error(invoke("coordinator", "--key", pub, "--allow", bad))
    err = user_error(invoke("cpu", "--coordinator", "tcp://10.1.2.3:5555", "--key", sec))
    assert "--key and --coordinator-key go together" in err


def test_the_allow_list_binds_each_key_to_one_cpu_id(tmp_path):
    """Issue 18, finding 4: each allowed key is for one CPU id (keygen writes `KEY CPU_ID`). keygen's old
    lines (`KEY  # cpu-N`) still read as CPU N; a key without an id, or listed for two, is an error naming
    the line and the fix."""
    cdir, kdir, other = _keys(tmp_path, 3)
    key = {c: zmq.auth.load_certificate(kdir / f"cpu-{c}.key")[0] for c in range(3)}
    bound = {k: c for c, k in key.items()}
    assert security.load_allowed(cdir / "allowed.keys") == bound
    assert security.load_allowed(kdir, exclude=zmq.auth.load_certificate(kdir / "coordinator.key")[0]) == bound
    old_style = tmp_path / "old.keys"
    old_style.write_text("# CPU public keys the coordinator admits\n"
                         + "".join(f"{key[c].decode()}  # cpu-{c}\n" for c in range(3)))
    assert security.load_allowed(old_style) == bound
    sec = cdir / "coordinator.key_secret"
    bare = tmp_path / "bare.keys"
    bare.write_text(f"# keys\n{key[0].decode()}\n")
    err = user_error(invoke("coordinator", "--key", sec, "--allow", bare, "--out", tmp_path / "r"))
    assert f"--allow {bare}, line 2: key {key[0].decode()} has no CPU id" in err and "KEY CPU_ID" in err
    twice = tmp_path / "twice.keys"
    twice.write_text(f"{key[0].decode()} 0\n{key[0].decode()} 1\n")
    err = user_error(invoke("coordinator", "--key", sec, "--allow", twice, "--out", tmp_path / "r"))
    assert f"line 2: key {key[0].decode()} is listed for CPU 0 and CPU 1" in err
    err = user_error(invoke("coordinator", "--key", sec, "--allow", other, "--out", tmp_path / "r"))
    assert "intruder.key: cannot tell which CPU id this key is for" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.timeout(120)
def test_a_stolen_cpu_key_cannot_take_a_second_slot(tmp_path, smpsim_cmd, subprocess_env):
    """Issue 18, finding 4: two `smpsim cpu` holding cpu-1's key pair, one as --cpu-id 0 and one taking
    any id, while the real CPU 1 runs: both are refused (exit 3, saying why), the refusals are logged, and
    the real CPU 0 joins and the run ends ok with the inline digest. Real processes, CurveZMQ."""
    cdir, kdir, _ = _keys(tmp_path, 2)
    out = tmp_path / "run"
    env = {k: v for k, v in subprocess_env.items() if k != "SMPSIM_TOKEN"}
    addr = f"tcp://127.0.0.1:{_free_port()}"
    coord = _coordinator(smpsim_cmd, env, out, "--listen", addr, "--key", str(cdir / "coordinator.key_secret"),
                         "--allow", str(cdir / "allowed.keys"), cpus=2, kmaps=60)
    keys = lambda c: ("--key", str(kdir / f"cpu-{c}.key_secret"), "--coordinator-key",  # noqa: E731
                      str(kdir / "coordinator.key"))
    log = out / "logs" / "coordinator.log.jsonl"
    procs = [coord]
    try:
        procs.append(_cpu(smpsim_cmd, env, "--coordinator", addr, "--cpu-id", "1", *keys(1)))
        _wait_for(lambda: _log_has(log, "joined"), 60, "CPU 1 joined")
        thief = _cpu(smpsim_cmd, env, "--coordinator", addr, "--cpu-id", "0", *keys(1))
        procs.append(thief)
        _, thief_err = thief.communicate(timeout=60)
        any_id = _cpu(smpsim_cmd, env, "--coordinator", addr, *keys(1))
        procs.append(any_id)
        _, any_err = any_id.communicate(timeout=60)
        procs.append(_cpu(smpsim_cmd, env, "--coordinator", addr, "--cpu-id", "0", *keys(0)))
        (_, err), *_ = _finish(coord, *procs[1:2], procs[-1], timeout=90)
    finally:
        for x in procs:
            x.kill()
            x.wait()
    key1 = zmq.auth.load_certificate(kdir / "cpu-1.key")[0].decode()
    assert thief.returncode == 3 and f"CurveZMQ key {key1} is CPU 1's: refused as CPU 0" in thief_err, thief_err
    assert any_id.returncode == 3 and "CPU 1 has already joined" in any_err, any_err
    assert "Traceback" not in thief_err + any_err
    assert coord.returncode == 0, err
    assert procs[1].returncode == 0 and procs[-1].returncode == 0
    got = json.loads((out / "summary.json").read_text())
    assert got["digest"] == _inline_digest(2, 60)
    entries = _log(log)
    assert sorted(e["cpu"] for e in entries if e.get("event") == "joined") == [0, 1]
    refused = [e for e in entries if e.get("event") == "refused"]
    assert [e["cpu"] for e in refused] == [0, 1] and "is CPU 1's" in refused[0]["reason"]


def _keys(tmp_path: Path, cpus: int) -> tuple[Path, Path, Path]:
    r = invoke("keygen", "--cpus", str(cpus), "--dir", tmp_path / "keys")
    assert r.exit_code == 0, r.output
    r = invoke("keygen", "intruder", "--dir", tmp_path / "other")
    assert r.exit_code == 0, r.output
    return tmp_path / "keys" / "coordinator", tmp_path / "keys" / "cpus", tmp_path / "other"


@pytest.mark.timeout(180)
def test_two_hosts_over_curve_right_keys_run_wrong_keys_are_refused(tmp_path, two_hosts, smpsim_cmd,
                                                                     subprocess_env):
    """Coordinator and CPUs in two network namespaces, CurveZMQ: the run's digest equals the inline
    engine's; a CPU with a key the coordinator does not allow, and one holding another coordinator's
    public key, are refused, say so, and leave the run undisturbed."""
    cdir, kdir, other = _keys(tmp_path, 3)
    out = tmp_path / "run"
    env = {k: v for k, v in subprocess_env.items() if k != "SMPSIM_TOKEN"}
    addr = f"tcp://{ADDR[0]}:5555"
    coord = _coordinator(smpsim_cmd, env, out, "--listen", addr, "--key", str(cdir / "coordinator.key_secret"),
                         "--allow", str(cdir / "allowed.keys"), "--set", "workload.kind=shared",
                         cpus=3, kmaps=80, prefix=("ip", "netns", "exec", NS[0]))
    there = ("ip", "netns", "exec", NS[1])
    intruder = _cpu(smpsim_cmd, env, "--coordinator", addr, "--key", str(other / "intruder.key_secret"),
                    "--coordinator-key", str(kdir / "coordinator.key"), prefix=there)
    impostor = _cpu(smpsim_cmd, env, "--coordinator", addr, "--key", str(kdir / "cpu-0.key_secret"),
                    "--coordinator-key", str(other / "intruder.key"), prefix=there)
    _, ierr = intruder.communicate(timeout=60)
    _, perr = impostor.communicate(timeout=60)
    cpus = [_cpu(smpsim_cmd, env, "--coordinator", addr, "--cpu-id", str(c),
                 "--key", str(kdir / f"cpu-{c}.key_secret"), "--coordinator-key", str(kdir / "coordinator.key"),
                 prefix=there) for c in range(3)]
    (_, err), *_ = _finish(coord, *cpus, timeout=120)
    assert coord.returncode == 0, err
    assert all(c.returncode == 0 for c in cpus)
    assert intruder.returncode != 0 and "refused this CPU's CurveZMQ key" in ierr and "Traceback" not in ierr
    assert impostor.returncode != 0 and "CurveZMQ handshake failed" in perr and "Traceback" not in perr
    got = json.loads((out / "summary.json").read_text())
    assert got["digest"] == _inline_digest(3, 80, "workload.kind=shared")
    log = _log(out / "logs" / "coordinator.log.jsonl")
    intruder_key = zmq.auth.load_certificate(other / "intruder.key")[0].decode()
    refused = [e["reason"] for e in log if e.get("event") == "refused"]
    assert f"CurveZMQ key {intruder_key} is not in the --allow list" in refused
    assert any("CurveZMQ handshake failed" in r for r in refused)
    assert len([e for e in log if e.get("event") == "joined"]) == 3


@pytest.mark.timeout(60)
def test_two_hosts_plain_tcp_needs_insecure(tmp_path, two_hosts, smpsim_cmd, subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k != "SMPSIM_TOKEN"}
    r = subprocess.run(["ip", "netns", "exec", NS[0], *smpsim_cmd, "coordinator", "--listen",
                        f"tcp://{ADDR[0]}:5555", "--token", "x", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, env=env, timeout=50)
    assert r.returncode == 2 and "plain TCP is refused" in r.stderr and "--insecure" in r.stderr
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr


# ---- read-only queries -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def a_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "run"
    inline.run(load_config(None, ["machine.cpus=2", "workload.kmaps_per_cpu=50", "trace.part_events=100"]), out)
    return out


@pytest.mark.parametrize("sql", [
    "COPY (SELECT * FROM events) TO '{tmp}/out.csv'",
    "COPY events TO '{tmp}/out.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{tmp}/db'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT count(*) FROM read_parquet('{run}/trace/*.parquet')",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM 'https://example.invalid/x.parquet'",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "SET allowed_paths = ['/etc/passwd']",
])
def test_query_is_read_only(a_run, tmp_path, sql):
    sql = sql.format(tmp=tmp_path, run=a_run)
    err = user_error(invoke("query", a_run, sql))
    assert err.startswith("error: query failed: ")
    assert "disabled" in err or "locked" in err or "read-only" in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_query_still_reads_the_trace(a_run):
    r = invoke("query", a_run, "SELECT count(*) AS n FROM events", "--format", "csv")
    n = int(r.stdout.splitlines()[1])
    assert r.exit_code == 0 and n == json.loads((a_run / "summary.json").read_text())["events"]
    parts = sorted((a_run / "trace").glob("part-*.parquet"))
    r = invoke("query", a_run, f"SELECT count(*) FROM read_parquet('{parts[0]}')", "--format", "csv")
    assert r.exit_code == 0 and int(r.stdout.splitlines()[1]) > 0  # the run's own trace stays readable
    r = invoke("query", a_run, "CREATE TABLE k AS SELECT * FROM events WHERE ev = 'kmap'")
    assert r.exit_code == 0  # in memory only


# ---- hostile peers ---------------------------------------------------------------------------------------

def _refused_total(log: Path) -> int:
    """Refusals the coordinator has counted, from its last summary line (0 before the first)."""
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        if '"refused (summary)"' in line:
            return json.loads(line)["total"]
    return 0


@pytest.mark.timeout(240)
def test_fuzzed_coordinator_runs_on_with_the_same_digest(tmp_path, smpsim_cmd, subprocess_env):
    """100,000+ mutated messages from sockets that never joined, while CPU 0 waits at the barrier, and
    more while the run runs: the run ends ok with the inline digest, memory stays bounded, refusals are
    logged rate-limited, and no stranger takes a CPU's place."""
    import fuzz_wire

    n_msgs, kmaps = 100_000, 100
    WINDOW = 30_000
    token = os.urandom(16).hex()
    addr = f"tcp://127.0.0.1:{_free_port()}"
    out = tmp_path / "run"
    log = out / "logs" / "coordinator.log.jsonl"
    env = {k: v for k, v in subprocess_env.items() if k != "SMPSIM_TOKEN"}
    coord = _coordinator(smpsim_cmd, env, out, "--listen", addr, "--token", token, "--set", "trace.enabled=false",
                         cpus=2, kmaps=kmaps)
    _stderr_line(coord, "listening on", 60)
    cproc = psutil.Process(coord.pid)
    base_rss = peak_rss = cproc.memory_info().rss
    frames = fuzz_wire.corpus(7, token)
    small = [f for f in frames if len(f) < 10_000]
    big = [f for f in frames if len(f) >= 10_000]
    import random
    rng = random.Random(7)
    order = [rng.choice(small) for _ in range(50_000)]
    ctx = zmq.Context()
    socks = []
    for _ in range(4):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(addr)
        socks.append(s)
    cpus = [_cpu(smpsim_cmd, env, "--coordinator", addr, "--token", token, "--cpu-id", "0")]
    sent = answers = 0
    t0 = time.monotonic()

    def fuzz_until(done, timeout: float) -> None:
        """Send until done(), keeping at most WINDOW messages ahead of what the coordinator has counted
        (so that on two loaded cores the sender does not starve the coordinator it tests)."""
        nonlocal sent, answers, peak_rss
        deadline = time.monotonic() + timeout
        last_check = 0.0
        refused = 0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now - last_check > 0.2 or sent - refused >= WINDOW:
                last_check = now
                peak_rss = max(peak_rss, cproc.memory_info().rss)
                for s in socks:
                    while s.poll(0):
                        answers += 1
                        assert msgpack.unpackb(s.recv(), raw=False)[0] == p.REFUSE
                if done():
                    return
                refused = _refused_total(log)
                if sent - refused >= WINDOW:
                    time.sleep(0.1)
                    continue
            s = socks[sent % len(socks)]
            frame = big[(sent // 20_000) % len(big)] if sent % 20_000 == 0 else order[sent % len(order)]
            try:
                if sent % 9_973 == 0:
                    s.send_multipart([frame, b"second frame"], zmq.NOBLOCK)
                else:
                    s.send(frame, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                s.poll(10, zmq.POLLOUT)
        raise AssertionError(f"fuzzing: timed out after {timeout}s ({sent} sent, "
                             f"{_refused_total(log)} refused so far)")

    oversize = ctx.socket(zmq.DEALER)
    oversize.setsockopt(zmq.LINGER, 0)
    oversize.connect(addr)
    try:
        oversize.send(fuzz_wire.OVERSIZE)  # over MAXMSGSIZE: dropped with its connection, not buffered
        fuzz_until(lambda: _refused_total(log) >= n_msgs and _log_has(log, "joined"), 150)
        at_barrier = _refused_total(log)
        cpus.append(_cpu(smpsim_cmd, env, "--coordinator", addr, "--token", token, "--cpu-id", "1"))
        fuzz_until(lambda: coord.poll() is not None, 150)  # until the run is over
        elapsed = time.monotonic() - t0
        (_, err), *cerrs = _finish(coord, *cpus)
    finally:
        for s in [*socks, oversize]:
            s.close(0)
        ctx.term()
        for x in [coord, *cpus]:
            x.kill()
            x.wait()
    assert coord.returncode == 0 and all(c.returncode == 0 for c in cpus), err + "".join(e for _, e in cerrs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["digest"] == _inline_digest(2, kmaps, "trace.enabled=false")
    entries = _log(log)
    joined = [e for e in entries if e.get("event") == "joined"]
    assert sorted(e["cpu"] for e in joined) == [0, 1] and all(e["host"] != "fuzz" for e in joined)
    total = _refused_total(log)
    assert total >= n_msgs and total - at_barrier > 0, (total, at_barrier)  # also while the run ran
    one_by_one = [e for e in entries if e.get("event") == "refused"]
    summaries = [e for e in entries if e.get("event") == "refused (summary)"]
    assert len(one_by_one) == 20 and len(summaries) <= elapsed / 2 + 3
    assert answers <= 4 * 3  # a flood is not answered message by message
    assert peak_rss - base_rss < 300 << 20, (base_rss >> 20, peak_rss >> 20)
    print(f"fuzz: {sent:,} sent, {total:,} refused ({at_barrier:,} at the barrier), {elapsed:.1f} s, "
          f"coordinator RSS {base_rss >> 20} -> {peak_rss >> 20} MB")


def _malformed_cases() -> list[tuple[str, list]]:
    """Messages a joined CPU 0 might send that are not well-formed, derived from the declared shapes:
    each field of each kind with a value of the wrong type, and contents the shapes cannot express."""
    import fuzz_wire

    cases = []
    for msg in fuzz_wire.wrong_types():
        if msg[0] != p.HELLO:
            if type(msg[1]) is int:
                msg[1] = 0  # the sequence number expected: the wrong type is the only fault
            cases.append((f"{msg[0]} #{len(cases)}", msg))
    batch = lambda **kw: [p.BATCH, 0, kw.get("msgs", []), kw.get("events", []), 0, kw.get("seen", 0)]  # noqa: E731
    ev = [5, 0, "kunmap", 1, 2, 0]
    cases += [
        ("model-kind", batch(msgs=[[99, 0, 5]])),
        ("model-for-a-cpu", batch(msgs=[mm.to_wire(mm.Reply(0, ()))])),
        ("model-other-cpu", batch(msgs=[mm.to_wire(mm.Done(1, 5))])),
        ("model-wrong-type", batch(msgs=[mm.to_wire(mm.Done(0, "5"))])),
        ("model-arity", batch(msgs=[mm.to_wire(mm.Done(0, 5)) + [1]])),
        ("model-bad-op", batch(msgs=[mm.to_wire(mm.Request(0, 5, (), 9))[:3] + [[[0, "kmap", "page", 0]], 9]])),
        ("model-unknown-op", batch(msgs=[mm.to_wire(mm.Request(0, 5, (), 9))[:3] + [[[0, "access", 1, 0]], 9]])),
        ("model-not-a-list", batch(msgs=[7])),
        ("event-not-an-array", batch(events=[{"t": 1}])),
        ("event-other-cpu", batch(events=[[5, 3, *ev[2:]]])),
        ("event-no-time", batch(events=[["5", *ev[1:]]])),
        ("event-unknown-type", batch(events=[[5, 0, "explode"]])),
        ("event-too-short", batch(events=[[5, 0]])),
        ("ipis-seen-unsent", batch(seen=3)),
        ("fail-for-another-cpu", [p.FAIL, 0, 3, "kmap", 1, "BUG", 5]),
        ("second-hello", [p.HELLO, p.VERSION, "", 0, 1, "h", "t"]),
        ("unknown-kind", ["reboot", 0]),
        ("truncated", msgpack.packb(batch())[:-2]),
        ("not-msgpack", b"\xc1\xc1\xc1"),
        ("two-frames", None),
    ]
    return cases


@pytest.mark.timeout(120)
def test_a_malformed_message_from_a_joined_cpu_stops_the_run_naming_it():
    """Each malformed message from CPU 0's own socket stops the run with RunAborted naming CPU 0 (real
    coordinator loop and sockets in this process, one run per case)."""
    from smpsim.engines.distributed.coordinator_node import CoordinatorNode, RunAborted

    cfg = load_config(None, ["machine.cpus=1", "workload.kmaps_per_cpu=10", "trace.enabled=false"])
    cases = _malformed_cases()
    assert len(cases) > 40
    failures = []
    for name, msg in cases:
        ctx = zmq.Context()
        sock, addr = p.make_router(ctx, "tcp://127.0.0.1:0")
        node = CoordinatorNode(cfg, None, sock, "", "t", join_timeout=20)
        outcome: dict = {}

        def serve():
            try:
                node.run()
                outcome["result"] = "ended ok"
            except Exception as e:  # noqa: BLE001 - what it raised is the point
                outcome["result"] = e

        th = threading.Thread(target=serve)
        th.start()
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.connect(addr)
        try:
            assert _hello(d, 0, token="t")[0] == p.WELCOME
            if msg is None:
                d.send_multipart([msgpack.packb([p.HB, 0]), b"x"])
            else:
                d.send(msg if isinstance(msg, bytes) else msgpack.packb(msg, use_bin_type=True))
            deadline = time.monotonic() + 15
            while th.is_alive() and time.monotonic() < deadline:  # on END say BYE, as a CPU does
                if d.poll(100) and msgpack.unpackb(d.recv(), raw=False)[0] == p.END:
                    d.send(msgpack.packb([p.BYE, 1, 0]))
                    break
            th.join(15)
        finally:
            d.close(0)
        assert not th.is_alive(), f"{name}: the coordinator hangs"
        sock.close(0)
        ctx.term()
        r = outcome.get("result")
        if not (isinstance(r, RunAborted) and "CPU 0" in str(r) and "\n" not in str(r)):
            failures.append((name, msg, r))
    assert not failures, failures


@pytest.mark.timeout(60)
def test_a_malformed_message_ends_the_coordinator_with_one_error(tmp_path, smpsim_cmd, subprocess_env):
    addr = f"tcp://127.0.0.1:{_free_port()}"
    coord = _coordinator(smpsim_cmd, subprocess_env, tmp_path / "run", "--listen", addr, "--token", "t")
    _stderr_line(coord, "listening on", 60)
    try:
        with dealer(addr) as s:
            assert _hello(s, 0, token="t")[0] == p.WELCOME
            s.send(msgpack.packb([p.BATCH, 0, [], [[1, 0, "kmup", "nine"]], 0, 0]))
            _, err = coord.communicate(timeout=30)
    finally:
        coord.kill()
        coord.wait()
    assert coord.returncode == 1
    assert err.count("error:") == 1 and "CPU 0" in err and "kmup" in err and "Traceback" not in err, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "aborted"  # the run broke, not the simulated kernel
    assert summary["faults"]["count"] >= 1 and any(f["cpu"] == 0 and f["kind"] == "cpu fault"
                                                   for f in summary["faults"]["first"])


@pytest.mark.timeout(90)
def test_a_cpu_that_comes_after_the_run_ended_in_the_join_is_told_why(tmp_path, smpsim_cmd, subprocess_env):
    """CPU 1 cannot take the config, so the run ends before CPU 0 has joined. CPU 0, asking to join while
    the coordinator waits for CPU 1's goodbye, is refused with the reason rather than left to wait out its
    join timeout (what a CPU started a moment late used to do)."""
    addr = f"tcp://127.0.0.1:{_free_port()}"
    coord = _coordinator(smpsim_cmd, subprocess_env, tmp_path / "run", "--listen", addr, "--token", "t", cpus=2)
    _stderr_line(coord, "listening on", 60)
    try:
        with dealer(addr) as first, dealer(addr) as late:
            assert _hello(first, 1, token="t")[0] == p.WELCOME
            first.send(msgpack.packb([p.FAIL, 0, 1, p.JOIN_OP, None, "CPU 1 cannot take the planted config", None]))
            assert first.poll(30_000), "no END within 30 s"
            assert msgpack.unpackb(first.recv(), raw=False)[0] == p.END
            answer = _hello(late, 0, token="t")  # the coordinator now waits for CPU 1's goodbye
            first.send(msgpack.packb([p.BYE, 1, 0]))
            _, err = coord.communicate(timeout=30)
    finally:
        coord.kill()
        coord.wait()
    assert answer[0] == p.REFUSE and "the run has ended (aborted" in answer[1], answer
    assert "CPU 1 cannot take the planted config" in answer[1], answer
    assert coord.returncode == 1 and "Traceback" not in err, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "aborted"
    assert [(f["cpu"], f["kind"]) for f in summary["faults"]["first"]] == [(1, "config refused"), (0, "refused")]


def test_deploy_manifests_use_the_keys_keygen_makes(tmp_path):
    """The Secrets' file names, the paths the coordinator and CPU arguments name, and the Compose secrets
    are exactly what `smpsim keygen --cpus N` writes; beyond loopback nothing runs plain TCP."""
    import yaml

    deploy = Path(__file__).resolve().parents[1] / "deploy"
    docs = [d for f in (deploy / "kubernetes").glob("*.yaml") for d in yaml.safe_load_all(f.read_text()) if d]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "smpsim-cpus")
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    cpus = job["spec"]["completions"]
    assert invoke("keygen", "--cpus", cpus, "--dir", tmp_path).exit_code == 0
    made = {"coordinator": {x.name for x in (tmp_path / "coordinator").iterdir()},
            "cpus": {x.name for x in (tmp_path / "cpus").iterdir()}}
    for pod, made_set in ((sts, made["coordinator"]), (job, made["cpus"])):
        spec = pod["spec"]["template"]["spec"]
        args = spec["containers"][0]["args"]
        secret = next(v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v)
        assert set(secrets[secret]["stringData"]) <= made_set
        mount = next(m["mountPath"] for m in spec["containers"][0]["volumeMounts"] if m["name"] == "keys")
        for flag in ("--key", "--allow", "--coordinator-key"):
            if flag in args:
                name = args[args.index(flag) + 1].replace("$(JOB_COMPLETION_INDEX)", str(cpus - 1))
                assert name.startswith(mount + "/") and Path(name).name in made_set, (flag, name)
        assert "--insecure" not in args
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    for name, s in compose["secrets"].items():
        rel = Path(s["file"]).relative_to("../keys")
        assert (tmp_path / rel).is_file(), name
    for svc in compose["services"].values():
        assert "--insecure" not in svc["command"] and "--key" in svc["command"]
