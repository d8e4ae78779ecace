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
    from smpsim.engines.distributed.launch import is_loopback
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("ipc:///tmp/x") and is_loopback("tcp://localhost:1")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://169.254.1.1:5555")
