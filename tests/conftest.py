"""Shared fixtures. Every test must leave no child process running (the distributed engine starts one
process per CPU; a test that leaks one would hang CI or skew the next test)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

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
