"""The wire protocol between the coordinator (ROUTER) and CPU processes (DEALER): msgpack arrays.

Every message after the handshake carries a per-link sequence number, checked by the receiver, so a lost
or reordered message is an error rather than a silently different simulation. The fields of every message
kind, per direction, are declared once below (TO_COORDINATOR, TO_CPU) with their types; ``unpack`` checks a
message against them, and the fuzz tests derive their mutations from them.

CPU -> coordinator
  [HELLO, version, run_id, cpu_id, pid, host, token]    cpu_id -1: take the lowest free id
  [BATCH, seq, model_msgs, events, horizon, ipis_seen]   model messages (messages.to_wire arrays), events
  [HB, seq]                                             heartbeat
  [FAIL, seq, cpu, op, position, what, t]               a ModelError raised on the CPU (op JOIN_OP: it
                                                        cannot take the config it was welcomed with)
  [BYE, seq, maxrss_kb]                                 leaving; the process's peak RSS
  [CKPT, seq, delivered, state]                         a checkpoint of the CPU (CpuPort.snapshot) that
                                                        includes the first `delivered` model messages
coordinator -> CPU
  [WELCOME, seq, cpu_id, config, checkpoint_ops, resume]
                                                        CPU id (assigned if asked with -1), resolved
                                                        config (no workload: each CPU reads its own copy
                                                        of a script, trace or generator, checked by hash);
                                                        send a checkpoint every checkpoint_ops (0: never);
                                                        resume: RESUME follows (a replacement)
  [REFUSE, reason]
  [BATCH, seq, model_msgs, safe]                        replies and IPIs (arrays), and the safe-time bound
  [HB, seq]
  [END, seq, status]
  [RESUME, seq, state, downs]                           after WELCOME to a replacement: the last
                                                        checkpoint (None: start afresh) and the batches
                                                        sent since, [[model_msgs, safe], ...]
"""

from __future__ import annotations

import re
import reprlib
from itertools import product

import msgpack
import zmq
import zmq.backend

from smpsim.model import messages as mm

VERSION = 3  # 2: WELCOME no longer carries a script's operations; 3: it says how often to checkpoint and
#               whether RESUME follows

JOIN_OP = "join"  # FAIL.op of a CPU that cannot take the run's config (a policy file that differs)
HELLO, WELCOME, REFUSE, BATCH, HB, FAIL, BYE, END, CKPT, RESUME = (
    "hello", "welcome", "refuse", "batch", "hb", "fail", "bye", "end", "ckpt", "resume")

HEARTBEAT_S = 0.25      # send a heartbeat when a link was quiet this long
PEER_TIMEOUT_S = 5.0    # a peer silent this long is gone (faults are reported within 10 s)
JOIN_TIMEOUT_S = 60.0   # how long joining may take (64 CPU processes on 2 cores start slowly)
SEND_TIMEOUT_MS = 5000  # a send that cannot be queued within this is an error (bounded queues)
HWM = 100_000           # messages queued per peer and direction
MAX_MESSAGE_BYTES = 64 << 20  # ZMQ_MAXMSGSIZE: a peer sending a larger message is disconnected

# Field types (exact: a bool is not an int here).
INT, STR, LIST, DICT, BOOL, TUPLE = (int,), (str,), (list,), (dict,), (bool,), (tuple,)
INT_OR_NONE, DICT_OR_NONE = (int, type(None)), (dict, type(None))

# The declared shapes: kind -> the fields after the kind, (name, allowed types), per direction.
TO_COORDINATOR: dict[str, tuple[tuple[str, tuple[type, ...]], ...]] = {
    HELLO: (("version", INT), ("run_id", STR), ("cpu", INT), ("pid", INT), ("host", STR), ("token", STR)),
    BATCH: (("seq", INT), ("msgs", LIST), ("events", LIST), ("horizon", INT), ("ipis_seen", INT)),
    HB: (("seq", INT),),
    FAIL: (("seq", INT), ("cpu", INT_OR_NONE), ("op", STR), ("position", INT_OR_NONE), ("what", STR),
           ("t", INT_OR_NONE)),
    BYE: (("seq", INT), ("maxrss_kb", INT)),
    CKPT: (("seq", INT), ("delivered", INT), ("state", DICT)),
}
# The model messages a CPU's BATCH carries (messages.from_wire of each array): type -> its fields' types.
MODEL_TO_COORDINATOR: dict[type, tuple[tuple[type, ...], ...]] = {
    mm.Request: (INT, INT, TUPLE, INT),  # cpu, t, ops (Calls: from_wire checks each), after
    mm.Progress: (INT, INT),             # cpu, bound
    mm.Done: (INT, INT),                 # cpu, clock
}
TO_CPU: dict[str, tuple[tuple[str, tuple[type, ...]], ...]] = {
    WELCOME: (("seq", INT), ("cpu", INT), ("config", DICT), ("checkpoint_ops", INT), ("resume", BOOL)),
    REFUSE: (("reason", STR),),
    BATCH: (("seq", INT), ("msgs", LIST), ("safe", INT)),
    HB: (("seq", INT),),
    END: (("seq", INT), ("status", STR)),
    RESUME: (("seq", INT), ("state", DICT_OR_NONE), ("downs", LIST)),
}


def waiting(sock: zmq.Socket) -> list:
    """The argument of ``zmq.zmq_poll(ARG, 0)`` that says whether a message waits on sock: the cheapest
    check pyzmq offers (a Poller adds a Python layer; Socket.get(EVENTS) makes an enum of the option; a
    failed non-blocking recv raises)."""
    return [(sock, zmq.POLLIN)]


poll = zmq.zmq_poll


# Socket.send without pyzmq's Python wrapper (it only adds the DRAFT routing_id/group arguments): the send
# of every message on the round trip's path. send(sock, frame[, flags]); raises like Socket.send.
send = zmq.backend.Socket.send


class ProtocolError(Exception):
    """A wire message that is too large, undecodable or not a smpsim message."""


_packer = msgpack.Packer(use_bin_type=True)  # one per process: packb would build one per message


def pack(msg: list) -> bytes:
    frame = _packer.pack(msg)
    if len(frame) > MAX_MESSAGE_BYTES:  # the receiver would drop the connection: say so here instead
        raise ProtocolError(f"{msg[0]} message of {len(frame):,} bytes exceeds the maximum of "
                            f"{MAX_MESSAGE_BYTES:,} bytes")
    return frame


def _signatures(shapes: dict) -> dict[str, frozenset]:
    """kind -> every type tuple of a well-formed [kind, *fields] of these shapes."""
    return {kind: frozenset((str, *sig) for sig in product(*(types for _, types in shape)))
            for kind, shape in shapes.items()}


# Built once for the two directions' shapes (a message is checked with one lookup of its fields' types).
_SIGS_TO_COORDINATOR = _signatures(TO_COORDINATOR)
_SIGS_TO_CPU = _signatures(TO_CPU)
_unpackb = msgpack.unpackb


def unpack(frame: bytes, shapes: dict = TO_COORDINATOR) -> list:
    """Decode and check the message against its declared shape (field count and types); raises
    ProtocolError naming what is wrong."""
    try:
        msg = _unpackb(frame, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types for garbage
        raise ProtocolError(f"undecodable message ({len(frame)} bytes): {type(e).__name__}") from None
    # A well-formed message passes with one lookup of its fields' types; the rest says what is wrong.
    if type(msg) is list and msg and type(msg[0]) is str:
        sigs = (_SIGS_TO_COORDINATOR if shapes is TO_COORDINATOR else _SIGS_TO_CPU if shapes is TO_CPU
                else _signatures(shapes))
        allowed = sigs.get(msg[0])
        if allowed is not None and tuple(map(type, msg)) in allowed:
            return msg
    if type(msg) is not list or not msg or type(msg[0]) is not str:
        raise ProtocolError(f"not a smpsim message: {reprlib.repr(msg)[:60]}")
    kind = msg[0]
    shape = shapes.get(kind)
    if shape is None:
        raise ProtocolError(f"unknown message kind {kind[:30]!r}")
    if len(msg) - 1 != len(shape):
        raise ProtocolError(f"malformed {kind} message: {len(msg) - 1} fields, expected {len(shape)}")
    for (name, types), v in zip(shape, msg[1:]):
        if type(v) not in types:
            if name == "seq":
                raise ProtocolError(f"{kind} message without a sequence number")
            raise ProtocolError(f"malformed {kind} message: field {name} is {type(v).__name__}, expected "
                                + " or ".join(t.__name__ for t in types))
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


class AddressError(ValueError):
    """A --listen or --coordinator address that is not one, or cannot be bound; the message names it."""


_TCP = re.compile(r"tcp://(?P<host>\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*):(?P<port>\*|[0-9]{1,5})")
ADDRESS_HELP = "use tcp://HOST:PORT (PORT 1..65535, or 0 for any free port) or ipc://PATH"


def check_address(address: str, option: str = "--listen") -> str:
    """The address, normalised (port 0 is written as ZeroMQ's *); AddressError naming it if it is not a
    tcp:// or ipc:// address ZeroMQ would take as meant."""
    if address.startswith("ipc://") and len(address) > len("ipc://"):
        return address
    m = _TCP.fullmatch(address)
    if m is None:
        raise AddressError(f"{option} {address!r} is not a ZeroMQ address: {ADDRESS_HELP}")
    port = m["port"]
    if port != "*" and int(port) > 65535:
        raise AddressError(f"{option} {address}: port {port} is out of range: {ADDRESS_HELP}")
    if port in ("*", "0") or int(port) == 0:
        if option != "--listen":
            raise AddressError(f"{option} {address}: connect to a real port, not {port}")
        return f"tcp://{m['host']}:*"
    return address


def _socket(ctx: zmq.Context, kind: int, linger_ms: int, curve) -> zmq.Socket:
    """A socket with both sides' limits: bounded queues, a maximum message size, a send timeout."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    if curve is not None:
        curve.apply(sock)
    return sock


def make_router(ctx: zmq.Context, listen: str, curve=None) -> tuple[zmq.Socket, str]:
    """Bind the coordinator's ROUTER; returns it and the address it is bound to (LAST_ENDPOINT: the port
    actually taken). curve: a security.CurveServer to encrypt and authenticate with, or None."""
    listen = check_address(listen)
    sock = _socket(ctx, zmq.ROUTER, 1000, curve)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    try:
        sock.bind(listen)
    except zmq.ZMQError as e:
        sock.close(linger=0)
        raise AddressError(f"--listen {listen}: cannot bind: {e.strerror}") from None
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


def make_dealer(ctx: zmq.Context, address: str, curve=None) -> tuple[zmq.Socket, zmq.Socket]:
    """A CPU's DEALER connected to the coordinator, and a monitor of its failed handshakes (attached
    before connecting, so none is missed); curve: a security.CurveClient, or None."""
    sock = _socket(ctx, zmq.DEALER, 2000, curve)
    monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
    try:
        sock.connect(address)
    except zmq.ZMQError as e:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        raise AddressError(f"--coordinator {address}: cannot connect: {e.strerror}") from None
    return sock, monitor



# The exact field types of each model message to the coordinator (each field has one type), as a tuple.
_MODEL_SIGS = {kind: tuple(t for (t,) in shape) for kind, shape in MODEL_TO_COORDINATOR.items()}
_from_wire = mm.from_wire


def model_messages(wire: list, cpu: int) -> list:
    """The model messages of CPU cpu's batch, decoded (messages.from_wire) and checked against their
    declared shapes; ValueError or TypeError naming the first that is not well-formed or not from cpu."""
    out = []
    sigs = _MODEL_SIGS
    for arr in wire:  # (plain loops: a generator per field costs more than the checks)
        try:
            x = _from_wire(arr)
        except ValueError as e:
            raise ValueError(f"model message {len(out)}: {e}") from None
        if tuple(map(type, x)) != sigs.get(type(x)) or x[0] != cpu:
            _bad_model_message(len(out), x, cpu)
        out.append(x)
    return out


def _bad_model_message(i: int, x: tuple, cpu: int) -> None:
    """Raise the ValueError that says what is wrong with model message i (x) of CPU cpu's batch."""
    shape = MODEL_TO_COORDINATOR.get(type(x))
    if shape is None:
        raise ValueError(f"model message {i}: a {type(x).__name__} does not go to the coordinator")
    for v, t in zip(x, shape):
        if type(v) not in t:
            raise ValueError(f"model message {i} ({type(x).__name__}) has a field of the wrong type")
    raise ValueError(f"model message {i} ({type(x).__name__}) is about CPU {x[0]}")


_EVENT_TYPES = None


def check_events(events: list, cpu: int) -> None:
    """Trace events from CPU cpu as the recorder takes them, (t, cpu, ev, *fields) arrays: an integer time,
    about that CPU, a known event type. ValueError naming the first that is not. (The fields after the
    type are not checked here: a wrong one is caught where the trace is recorded, and stops the run.)"""
    global _EVENT_TYPES
    if _EVENT_TYPES is None:  # imported on first use: the CPU processes never load the trace schema
        from smpsim.trace.schema import EVENT_TYPES
        _EVENT_TYPES = EVENT_TYPES
    known = _EVENT_TYPES
    for ev in events:
        if type(ev) is not list or len(ev) < 3 or type(ev[0]) is not int or ev[1] != cpu \
                or type(ev[2]) is not str or ev[2] not in known:
            raise ValueError(f"event {events.index(ev)} is not (t, cpu {cpu}, known type, ...): "
                             f"{reprlib.repr(ev)}")
