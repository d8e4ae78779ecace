"""Mutated wire messages for fuzzing the coordinator, derived from the protocol's declared shapes
(protocol.TO_COORDINATOR), so they follow the protocol as it changes."""

from __future__ import annotations

import random

import msgpack

from smpsim.engines.distributed import protocol as p

# A value of each wire type, and values of other types to put in a field instead.
SAMPLE = {int: 3, str: "x", list: [], dict: {}, type(None): None}
OTHERS = [None, True, False, 1.5, "s", b"bytes", [], {}, -1, 2**64 - 1, -(2**63), [1, [2, [3]]], {"k": [1]},
          "é" * 50, list(range(50))]


def valid(kind: str, rng: random.Random) -> list:
    return [kind] + [SAMPLE[types[0]] if types[0] is not int else rng.randrange(-2, 1 << 20)
                     for _, types in p.TO_COORDINATOR[kind]]


def wrong_types() -> list[list]:
    """Each field of each kind holding each value of another type."""
    out = []
    rng = random.Random(1)
    for kind, shape in p.TO_COORDINATOR.items():
        for i, (_, types) in enumerate(shape):
            for v in OTHERS:
                if type(v) not in types:
                    msg = valid(kind, rng)
                    msg[1 + i] = v
                    out.append(msg)
    return out


def corpus(seed: int, token: str = "") -> list[bytes]:
    """Distinct hostile frames: every wrong type, truncations, wrong arity and sequence numbers, unknown
    kinds, huge and deep arrays, HELLOs for every CPU id without the token, random bytes."""
    rng = random.Random(seed)
    pack = lambda m: msgpack.packb(m, use_bin_type=True)  # noqa: E731
    frames = [pack(m) for m in wrong_types()]
    for kind in p.TO_COORDINATOR:
        for _ in range(20):
            msg = valid(kind, rng)
            whole = pack(msg)
            frames.append(whole[:rng.randrange(len(whole))])             # truncated
            frames.append(pack(msg + [rng.randrange(9)]))                  # a field too many
            frames.append(pack(msg[:-1]))                                   # one too few
            if kind != p.HELLO:
                msg[1] = rng.choice([-1, 0, 1, 7, 2**40, rng.randrange(1 << 30)])  # any sequence number
                frames.append(pack(msg))
    for _ in range(200):  # HELLO floods: every CPU id, wrong or no token, other versions and run ids
        frames.append(pack([p.HELLO, rng.choice([p.VERSION, p.VERSION, 0, 99]), rng.choice(["", "run"]),
                            rng.choice([-1, 0, 1, 2, 3, 1000, -7]), rng.randrange(1 << 16), "fuzz",
                            rng.choice(["", "wrong", token + "x", token[:-1]])]))
    for _ in range(100):  # unknown kinds, not a list, random bytes
        frames.append(pack([rng.choice(["nope", "", "HELLO", "batch2", "x" * 300]), 0]))
        frames.append(pack(rng.choice([{}, {"kind": "hello"}, 7, "hello", [], [1, 2], [None]])))
        frames.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
    frames.append(b"\xdd\xff\xff\xff\xff")                 # an array header claiming 4G items
    frames.append(b"\xdf\xff\xff\xff\xff")                 # a map header claiming 4G pairs
    frames.append(b"\x91" * 100_000 + b"\xc0")             # 100,000 nested arrays
    frames.append(b"")
    big = [p.BATCH, 0, list(range(200_000)), [{"t": 1}] * 50_000, 0, 0]
    frames.append(pack(big))                                # huge arrays (about 1.3 MB)
    frames.append(pack([p.HELLO, p.VERSION, "", 0, 1, "h" * 500_000, "x" * 500_000]))
    return frames


OVERSIZE = b"\x00" * (p.MAX_MESSAGE_BYTES + 1)  # over ZMQ_MAXMSGSIZE: the coordinator drops the connection
