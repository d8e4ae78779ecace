"""Shared fixtures. Every test must leave no child process running (the distributed engine starts one
process per CPU; a test that leaks one would hang CI or skew the next test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from proc_helpers import ADDR, NS

ROOT = Path(__file__).resolve().parents[1]
CHILD_GRACE_SECONDS = 5.0


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            pass
    return alive


@pytest.fixture(autouse=True)
def no_leftover_child_processes():
    """After each test, wait a few seconds for the test's child processes to exit; fail (and kill them)
    if any is still running. Children that existed before the test are not this test's doing."""
    before = {p.pid for p in _children()}
    yield
    deadline = time.monotonic() + CHILD_GRACE_SECONDS
    while True:
        new = [p for p in _children() if p.pid not in before]
        # Reap exited children (zombies) so they do not count.
        psutil.wait_procs(new, timeout=0)
        left = _running(new)
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if left:
        desc = []
        for p in left:
            try:
                desc.append(f"pid {p.pid}: {' '.join(p.cmdline()) or p.name()}")
            except psutil.Error:
                desc.append(f"pid {p.pid}")
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=3)
        pytest.fail("test left child processes running after "
                    f"{CHILD_GRACE_SECONDS:.0f}s (killed them): " + "; ".join(desc))


@pytest.fixture
def smpsim_cmd():
    """argv prefix that runs the smpsim CLI in a subprocess, importing smpsim from this checkout."""
    return [sys.executable, "-m", "smpsim"]


@pytest.fixture
def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("SMPSIM_DEBUG", None)
    return env


def _can_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2's `ip`"
    return None


@pytest.fixture
def two_hosts():
    why = _can_netns()
    if why:
        pytest.skip(why)
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True, timeout=20)  # noqa: E731
    for ns in NS:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
    try:
        for ns in NS:
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", "smpsim-va", "netns", NS[0], "type", "veth", "peer", "name", "smpsim-vb",
           "netns", NS[1])
        for ns, dev, addr in ((NS[0], "smpsim-va", ADDR[0]), (NS[1], "smpsim-vb", ADDR[1])):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as e:
        for ns in NS:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        pytest.skip(f"cannot set up network namespaces here: {e.stderr.decode().strip()}")
    yield
    for ns in NS:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
