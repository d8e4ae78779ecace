"""`smpsim bench --profile`: the profile job covers the coordinator and every forked CPU process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from smpsim.bench.profile import render


@pytest.mark.timeout(180)
def test_profile_job_covers_every_process(subprocess_env):
    spec = {"job": "profile", "cpus": 2, "kmaps_total": 300, "top": 400}
    r = subprocess.run([sys.executable, "-m", "smpsim.bench.jobs", json.dumps(spec)], capture_output=True,
                       text=True, env=subprocess_env, timeout=150)
    assert r.returncode == 0, r.stderr[-2000:]
    prof = json.loads(r.stdout.strip().splitlines()[-1])
    assert prof["kmaps"] == 300
    assert prof["coordinator"]["processes"] == 1 and prof["cpu_processes"]["processes"] == 2
    for key, loop in (("coordinator", "_receive_ready (distributed/coordinator_node.py"),
                      ("cpu_processes", "serve (distributed/cpu_node.py")):
        p = prof[key]
        assert p["user_us_per_kmap"] + p["sys_us_per_kmap"] > 0
        assert p["top"] and all(0 <= row["self_share"] <= 1 for row in p["top"])
        # each process's own loop is in its profile (the CPU processes are forked: profiled there)
        assert any(row["function"].startswith(loop) for row in p["top"]), [r["function"] for r in p["top"]]
    assert prof["messages_in_per_wakeup"] >= 1 and prof["messages_in_per_step"] >= 1
    text = render(prof)
    assert "coordinator: user" in text and "CPU processes, all together" in text
