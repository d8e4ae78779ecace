"""Pods that come back (issue 18, finding 13): under `smpsim coordinator`, a CPU process restarted with the
same id and key after its predecessor died or hung (as an orchestrator restarts a pod) is admitted with
RESUME from the last checkpoint, and the run ends ok with the undisturbed digest. The coordinator starts no
process: the test restarts the CPU itself. Coordinator and CPUs in two network namespaces, CurveZMQ."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from cli_helpers import invoke
from smpsim.config import load_config
from smpsim.engines import inline
from proc_helpers import ADDR, NS
from proc_helpers import log_has as _log_has
from proc_helpers import wait_for as _wait_for

KMAPS = 6000
SETS = (f"workload.kmaps_per_cpu={KMAPS}", "machine.cpus=2", "workload.kind=shared")


def _checkpointed(log, cpu: int) -> bool:
    try:
        return any(e.get("event") == "checkpoint" and e.get("cpu") == cpu
                   for e in map(json.loads, log.read_text().splitlines()))
    except (OSError, ValueError):
        return False


@pytest.mark.timeout(150)
@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_restarted_cpu_resumes_under_smpsim_coordinator(how, tmp_path, two_hosts, smpsim_cmd, subprocess_env):
    assert invoke("keygen", "--cpus", "2", "--dir", tmp_path / "keys").exit_code == 0
    cdir, kdir = tmp_path / "keys" / "coordinator", tmp_path / "keys" / "cpus"
    out = tmp_path / "run"
    log = out / "logs" / "coordinator.log.jsonl"
    env = {k: v for k, v in subprocess_env.items() if k != "SMPSIM_TOKEN"}
    addr = f"tcp://{ADDR[0]}:5555"
    sets = [a for s in SETS for a in ("--set", s)]
    coord = subprocess.Popen(["ip", "netns", "exec", NS[0], *smpsim_cmd, "coordinator", "--listen", addr,
                              "--key", str(cdir / "coordinator.key_secret"), "--allow", str(cdir / "allowed.keys"),
                              "--out", str(out), "--checkpoint-every", "2000", *sets],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def cpu(c: int) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", NS[1], *smpsim_cmd, "cpu", "--coordinator", addr,
                                 "--cpu-id", str(c), "--key", str(kdir / f"cpu-{c}.key_secret"),
                                 "--coordinator-key", str(kdir / "coordinator.key")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    procs = [coord, cpu(0), cpu(1)]
    try:
        _wait_for(lambda: _checkpointed(log, 1), 60, "a checkpoint of CPU 1")
        victim = procs[2]
        if how == "killed":
            victim.kill()  # `ip netns exec` execs the command: this is the CPU process itself
            victim.wait(10)
        else:
            victim.send_signal(signal.SIGSTOP)  # hung: its connection stays open, it answers nothing
        procs.append(cpu(1))  # the pod's restart: same id, same key
        stdout, stderr = coord.communicate(timeout=90)
        for x in (procs[1], procs[3]):
            x.wait(20)
    finally:
        for x in procs:
            x.kill()
            x.wait()
    assert coord.returncode == 0, stderr
    assert procs[1].returncode == 0 and procs[3].returncode == 0, procs[3].stderr.read()
    assert "error:" not in stderr and "Traceback" not in stderr
    want = inline.run(load_config(None, list(SETS))).summary
    got = json.loads((out / "summary.json").read_text())
    assert got["status"] == "ok" and got["digest"] == want["digest"]
    assert got["counters"] == want["counters"]
    assert [f["kind"] for f in got["faults"]["first"]] == ["cpu respawned"]
    assert "faults" in stdout and "cpu respawned" in stdout
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    rejoined = [e for e in entries if e.get("event") == "rejoined"]
    assert len(rejoined) == 1 and rejoined[0]["cpu"] == 1 and rejoined[0]["from_checkpoint"] is True

