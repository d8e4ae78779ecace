"""The ceiling: a bare pyzmq DEALER/ROUTER synchronous ping-pong with N client processes over ipc.

What the coordinator's transport can do at most on this machine: each client sends a small msgpack
message and waits for the echo, like a CPU asking for kmap_lock and waiting for the grant.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time

import msgpack
import zmq

PAYLOAD = ["req", 3, 123456789, "kmap", 4242, 17]


def _client(address: str, rounds: int) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(address)
    msg = msgpack.packb(PAYLOAD)
    s.send(b"hi")
    s.recv()  # go
    for _ in range(rounds):
        s.send(msg)
        msgpack.unpackb(s.recv())
    s.send(b"bye")
    s.close(0)
    ctx.term()
    os._exit(0)


def pingpong(clients: int, rounds: int = 2000, timeout: float = 120.0) -> dict:
    """Aggregate round trips per second of `clients` processes doing `rounds` synchronous round trips."""
    tmp = tempfile.mkdtemp(prefix="smpsim-bench-")
    address = f"ipc://{tmp}/pp.ipc"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(address)
    mp = multiprocessing.get_context("fork")
    procs = [mp.Process(target=_client, args=(address, rounds)) for _ in range(clients)]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        peers = []
        while len(peers) < clients:
            if not router.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                raise TimeoutError("ping-pong clients did not connect")
            peers.append(router.recv_multipart()[0])
        t0 = time.perf_counter()
        for ident in peers:
            router.send_multipart([ident, b"go"])
        done = 0
        total = 0
        while done < clients:
            if not router.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                raise TimeoutError("ping-pong stalled")
            ident, frame = router.recv_multipart()
            if frame == b"bye":
                done += 1
                continue
            router.send_multipart([ident, msgpack.packb(msgpack.unpackb(frame))])
            total += 1
        dt = time.perf_counter() - t0
        return {"clients": clients, "round_trips": total, "seconds": dt, "rate": total / dt}
    finally:
        for p in procs:
            p.join(5)
            if p.exitcode is None:
                p.kill()
                p.join()
        router.close(0)
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)
