"""The wire protocol between the coordinator (ROUTER) and CPU processes (DEALER): msgpack arrays.

Every message after the handshake carries a per-link sequence number, checked by the receiver, so a lost
or reordered message is an error rather than a silently different simulation.

CPU -> coordinator
  [HELLO, version, run_id, cpu_id, pid, host, token]    cpu_id -1: take the lowest free id
  [BATCH, seq, model_msgs, events, horizon, ipis_seen]   model messages (messages.to_wire arrays), events
  [HB, seq]                                             heartbeat
  [FAIL, seq, cpu, op, position, what, t]               a ModelError raised on the CPU
  [BYE, seq, maxrss_kb]                                 leaving; the process's peak RSS
coordinator -> CPU
  [WELCOME, seq, cpu_id, config, ops, lines]            CPU id (assigned if asked with -1), resolved
                                                        config; ops only for script workloads
  [REFUSE, reason]
  [BATCH, seq, model_msgs, safe]                        replies and IPIs (arrays), and the safe-time bound
  [HB, seq]
  [END, seq, status]
"""

from __future__ import annotations

import msgpack
import zmq

VERSION = 1

HELLO, WELCOME, REFUSE, BATCH, HB, FAIL, BYE, END = (
    "hello", "welcome", "refuse", "batch", "hb", "fail", "bye", "end")

HEARTBEAT_S = 0.25      # send a heartbeat when a link was quiet this long
PEER_TIMEOUT_S = 5.0    # a peer silent this long is gone (faults are reported within 10 s)
JOIN_TIMEOUT_S = 60.0   # how long joining may take (64 CPU processes on 2 cores start slowly)
SEND_TIMEOUT_MS = 5000  # a send that cannot be queued within this is an error (bounded queues)
HWM = 100_000

# Shapes: message kind -> number of items (after the kind) it must have.
_ARITY = {HELLO: 6, WELCOME: 5, REFUSE: 1, BATCH: None, HB: 1, FAIL: 6, BYE: 2, END: 2}


class ProtocolError(Exception):
    pass


def pack(msg: list) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def unpack(frame: bytes) -> list:
    """Decode and check the outer shape; raises ProtocolError naming what is wrong."""
    try:
        msg = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types for garbage
        raise ProtocolError(f"undecodable message ({len(frame)} bytes): {type(e).__name__}") from None
    if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
        raise ProtocolError(f"not a smpsim message: {str(msg)[:60]!r}")
    kind = msg[0]
    if kind not in _ARITY:
        raise ProtocolError(f"unknown message kind {kind[:30]!r}")
    want = _ARITY[kind]
    if kind == BATCH:
        if len(msg) not in (4, 6):
            raise ProtocolError(f"malformed batch message ({len(msg) - 1} fields)")
    elif len(msg) - 1 != want:
        raise ProtocolError(f"malformed {kind} message: {len(msg) - 1} fields, expected {want}")
    if kind != HELLO and kind != REFUSE and not isinstance(msg[1], int):
        raise ProtocolError(f"{kind} message without a sequence number")
    return msg


class Link:
    """Sequence numbers of one direction of one link."""
    __slots__ = ("next_out", "next_in")

    def __init__(self):
        self.next_out = 0
        self.next_in = 0

    def out(self) -> int:
        s = self.next_out
        self.next_out += 1
        return s

    def check_in(self, seq: int, who: str) -> None:
        if seq != self.next_in:
            raise ProtocolError(f"message lost or reordered on the link with {who}: expected seq "
                                f"{self.next_in}, got {seq}")
        self.next_in += 1


def make_router(ctx: zmq.Context, listen: str) -> tuple[zmq.Socket, str]:
    """Bind the coordinator's ROUTER; returns it and the address CPUs connect to."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    sock.setsockopt(zmq.LINGER, 1000)
    if listen.startswith("tcp://") and listen.endswith(":0"):
        port = sock.bind_to_random_port(listen[:-2])
        return sock, f"{listen[:-2]}:{port}"
    sock.bind(listen)
    return sock, listen

