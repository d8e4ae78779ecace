"""The wire protocol: shapes are checked, sequence numbers catch a lost or reordered message."""

from __future__ import annotations

import msgpack
import pytest

from smpsim.engines.distributed import protocol as p


def test_round_trip_and_shape_checks():
    msg = [p.BATCH, 0, [["req", 1, 100, "kmap", 5, 0]], [{"t": 1, "cpu": 1, "ev": "access"}], 100, 0]
    assert p.unpack(p.pack(msg)) == msg
    for bad, why in ((b"\xc1", "undecodable"), (msgpack.packb({"a": 1}), "not a smpsim message"),
                     (msgpack.packb(["nope", 1]), "unknown message kind"),
                     (msgpack.packb([p.HB]), "malformed"), (msgpack.packb([p.HB, "x"]), "sequence number"),
                     (msgpack.packb([p.BATCH, 1, []]), "malformed batch")):
        with pytest.raises(p.ProtocolError, match=why):
            p.unpack(bad)


def test_sequence_numbers_catch_a_lost_message():
    out, into = p.Link(), p.Link()
    into.check_in(out.out(), "CPU 3")
    out.out()  # this one is lost
    with pytest.raises(p.ProtocolError, match="CPU 3: expected seq 1, got 2"):
        into.check_in(out.out(), "CPU 3")


def test_loopback_detection():
    from smpsim.engines.distributed.security import is_loopback
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("ipc:///tmp/x") and is_loopback("tcp://localhost:1")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://169.254.1.1:5555")
    assert is_loopback("tcp://[::1]:5555") and is_loopback("tcp://127.0.0.2:1")
    assert not is_loopback("tcp://*:5555") and not is_loopback("tcp://127.example.com:5555")


def test_addresses_are_checked():
    assert p.check_address("tcp://127.0.0.1:0") == "tcp://127.0.0.1:*"
    assert p.check_address("tcp://[::1]:5555") == "tcp://[::1]:5555"
    assert p.check_address("ipc:///tmp/x.ipc") == "ipc:///tmp/x.ipc"
    for bad, why in (("tcp://127.0.0.1:99999", "out of range"), ("nonsense", "not a ZeroMQ address"),
                     ("tcp://:5555", "not a ZeroMQ address"), ("tcp://h:5555/x", "not a ZeroMQ address")):
        with pytest.raises(p.AddressError, match=why):
            p.check_address(bad)
    with pytest.raises(p.AddressError, match="connect to a real port"):
        p.check_address("tcp://127.0.0.1:0", "--coordinator")


def test_every_field_type_is_checked():
    """A bool is not an int, and each declared field rejects the other wire types."""
    for kind, shape in p.TO_COORDINATOR.items():
        for i, (name, types) in enumerate(shape):
            for v in (True, 1.5, None, "s", [], {}):
                if type(v) in types:
                    continue
                msg = [kind] + [{int: 0, str: "", list: [], dict: {}, type(None): None}[t[0]] for _, t in shape]
                msg[1 + i] = v
                with pytest.raises(p.ProtocolError, match=f"field {name} is|without a sequence number"):
                    p.unpack(msgpack.packb(msg))


def test_refusals_are_logged_rate_limited():
    from smpsim.engines.distributed.logs import RateLimitedLog

    lines = []

    class Log:
        def error(self, event, **kw):  # refusals count as errors in analyze
            lines.append((event, kw))

    r = RateLimitedLog(Log(), first=3, interval=5.0)
    for i in range(1000):
        r(f"garbage on the socket: message {i}")
    r("wrong or missing run token")
    assert len(lines) == 3
    r.tick(r.last_summary + 1)
    assert len(lines) == 3
    r.tick(r.last_summary + 5)
    event, kw = lines[-1]
    assert event == "refused (summary)" and kw["count"] == 998 and kw["total"] == 1001
    assert kw["by_reason"] == {"garbage on the socket": 997, "wrong or missing run token": 1}
    r.flush()
    assert len(lines) == 4  # nothing new, no empty summary


def test_messages_over_the_maximum_size_are_not_taken():
    """A peer sending more than MAX_MESSAGE_BYTES is disconnected by ZeroMQ before the message is
    buffered; our own sends over it fail with a clear error instead of a silent drop."""
    import zmq

    ctx = zmq.Context()
    router, addr = p.make_router(ctx, "tcp://127.0.0.1:0")
    big, small = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    try:
        for s in (big, small):
            s.setsockopt(zmq.LINGER, 0)
            s.connect(addr)
        big.send(b"\0" * (p.MAX_MESSAGE_BYTES + 1))
        small.send(b"after")
        assert router.poll(10_000)
        assert router.recv_multipart()[1] == b"after"
        assert not router.poll(500)  # the oversized one never arrives
    finally:
        for s in (big, small, router):
            s.close(0)
        ctx.term()
    with pytest.raises(p.ProtocolError, match="exceeds the maximum"):
        p.pack([p.BATCH, 0, [], ["x" * p.MAX_MESSAGE_BYTES], 0, 0])


def test_model_messages_cross_the_wire_as_arrays_and_come_back_by_name():
    """A compound Request and its Reply go out as plain arrays (their Calls and CallResults too) and come
    back as the same calls and results; a call the coordinator cannot run is refused naming the message."""
    from smpsim.model import messages as mm

    req = mm.Request(0, 5, (mm.Call(0, mm.KMAP, 3, 1), mm.Call(7, mm.KUNMAP_MIGRATED, 3, 4)), 9)
    wire = msgpack.unpackb(msgpack.packb(mm.to_wire(req)))
    assert wire == [mm.KINDS.index(mm.Request), 0, 5, [[0, "kmap", 3, 1], [7, "kunmap_migrated", 3, 4]], 9]
    back = p.model_messages([wire], 0)[0]
    assert [(c.gap, c.kind, c.page, c.pc) for c in back.ops] == [(0, mm.KMAP, 3, 1), (7, mm.KUNMAP_MIGRATED, 3, 4)]
    assert (back.cpu, back.t, back.after) == (0, 5, 9)

    rep = mm.Reply(2, (mm.CallResult(5, 40, 3, ()), mm.CallResult(47, 90, 6, ((80, None), (85, (1, 2))))))
    back = mm.from_wire(msgpack.unpackb(msgpack.packb(mm.to_wire(rep))))
    assert [(r.t, r.t_done, r.slot, r.local_flushes) for r in back.results] == \
        [(5, 40, 3, ()), (47, 90, 6, ((80, None), (85, [1, 2])))]

    for op in ([0, "access", 3, 1], [0, "kmap", 3], [0, "kmap", 3, True], "kmap"):
        with pytest.raises(ValueError, match="model message 0: a malformed operation"):
            p.model_messages([wire[:3] + [[op]] + wire[4:]], 0)
