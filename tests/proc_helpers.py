"""Real processes and sockets in tests: waiting for an event with a timeout (never sleep-and-hope), free
ports, raw ZeroMQ peers, and the two network namespaces of the two-host tests."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
import socket
import time
from pathlib import Path


def wait_for(pred, timeout, what):
    """pred()'s first true value, polled every 20 ms; AssertionError naming ``what`` after timeout s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def log_has(path: Path, event: str) -> bool:
    """The JSON-lines log at path has a line with this event (a line being written does not count)."""
    try:
        return any(json.loads(line).get("event") == event for line in path.read_text().splitlines() if line)
    except (OSError, json.JSONDecodeError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dealer(address: str | None = None):
    """A raw DEALER socket in a context of its own, as a stranger or a hand-written CPU would hold one
    (connected to ``address`` when given); closed without lingering on exit."""
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if address is not None:
        s.connect(address)
    try:
        yield s
    finally:
        s.close(0)
        ctx.term()


def hello(sock, cpu, version=None, token="", run_id=""):
    """Send a HELLO as CPU `cpu` (this protocol version unless given); the coordinator's answer, decoded."""
    from smpsim.engines.distributed import protocol as p
    import msgpack
    version = p.VERSION if version is None else version
    sock.send(msgpack.packb([p.HELLO, version, run_id, cpu, os.getpid(), "test-host", token]))
    # The wait ends at the answer; its bound covers a coordinator still starting on a loaded machine (5 s
    # was seen to run out at load average 15).
    assert sock.poll(30_000), "no answer to HELLO within 30 s"
    return msgpack.unpackb(sock.recv(), raw=False)


# Named per test session: two sessions on one machine (say, two checkouts) must not delete each other's.
NS = (f"smpsim-test-{os.getpid()}-a", f"smpsim-test-{os.getpid()}-b")
ADDR = ("169.254.213.1", "169.254.213.2")
