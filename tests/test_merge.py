import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smpsim.trace.merge import CanonicalMerger


def ev(t, tag=None):
    return (t, tag)


def tags(events):
    return [e[1] for e in events]


def test_release_orders_by_t_then_source_then_arrival():
    m = CanonicalMerger()
    m.add(2, [ev(5, "c1-a"), ev(3, "c1-b")])
    m.add(0, [ev(5, "co-a"), ev(5, "co-b")])
    m.add(1, [ev(5, "c0-a")])
    m.add(2, [ev(5, "c1-c")])
    out = m.finish()
    assert tags(out) == ["c1-b", "co-a", "co-b", "c0-a", "c1-a", "c1-c"]
    assert m.next_seq == 6


def test_release_watermark_is_exclusive_and_seq_continues():
    m = CanonicalMerger()
    m.add(1, [ev(1), ev(2), ev(10)])
    m.add(0, [ev(2), ev(9)])
    first = m.release(2)
    assert [e[0] for e in first] == [1] and m.next_seq == 1
    assert len(m) == 4
    assert m.release(2) == []
    second = m.release(10)
    assert [e[0] for e in second] == [2, 2, 9] and m.next_seq == 4
    assert second[0] is not second[1]
    rest = m.finish()
    assert [e[0] for e in rest] == [10]
    assert m.next_seq == 5 and len(m) == 0


def test_advance_promises_without_releasing():
    m = CanonicalMerger()
    m.add(1, [ev(3, "a"), ev(8, "b")])
    m.advance(5)
    assert len(m) == 2 and m.watermark == 5
    with pytest.raises(ValueError, match="watermark"):
        m.add(0, [ev(4)])
    m.add(0, [ev(5, "c")])
    assert tags(m.release()) == ["a"]
    assert tags(m.release(9)) == ["c", "b"]


def test_same_t_coordinator_before_cpus():
    m = CanonicalMerger()
    m.add(3, [ev(7, "cpu2")])
    m.add(0, [ev(7, "coord")])
    assert tags(m.release(8)) == ["coord", "cpu2"]


def test_event_below_released_watermark_is_rejected():
    m = CanonicalMerger()
    m.add(1, [ev(5)])
    m.release(6)
    with pytest.raises(ValueError, match="watermark"):
        m.add(2, [ev(4)])
    m.add(2, [ev(6)])  # at the watermark is fine


def test_add_after_finish_and_bad_source_rejected():
    m = CanonicalMerger()
    with pytest.raises(ValueError):
        m.add(-1, [ev(1)])
    m.finish()
    with pytest.raises(ValueError):
        m.add(0, [ev(1)])


def test_negative_and_large_times_order_correctly():
    m = CanonicalMerger()
    m.add(1, [ev(2**70, "a"), ev(-3, "b"), ev(0, "c")])
    m.add(0, [ev(-3, "d")])
    assert tags(m.finish()) == ["d", "b", "c", "a"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.lists(st.integers(0, 50), min_size=0, max_size=20)),
                max_size=30),
       st.randoms(use_true_random=False))
def test_matches_a_plain_sort(batches, rnd):
    """Whatever the batches and release points, the output is the stable sort by (t, source, n)."""
    m = CanonicalMerger()
    expected = []
    counters = {}
    out = []
    released = 0
    for source, times in batches:
        times = [t + released for t in times]
        events = []
        for t in times:
            n = counters.get(source, 0)
            counters[source] = n + 1
            e = [t, source, n]  # lists, as events arrive from the distributed engine
            events.append(e)
            expected.append(((t, source, n), e))
        m.add(source, events)
        if rnd.random() < 0.5:
            released += rnd.randrange(0, 20)
            out += m.release(released)
    out += m.finish()
    expected.sort(key=lambda x: x[0])
    assert [id(e) for e in out] == [id(e) for _, e in expected]
    assert m.next_seq == len(out)


def test_large_stream_is_fast_enough():
    import time

    rng = random.Random(1)
    m = CanonicalMerger()
    clocks = [0] * 9
    n = 0
    start = time.perf_counter()
    for _ in range(2000):
        s = rng.randrange(9)
        batch = []
        for _ in range(100):
            clocks[s] += rng.randrange(50)
            batch.append((clocks[s], s))
        m.add(s, batch)
        n += len(m.release(min(clocks)))
    n += len(m.finish())
    assert n == 200_000
    assert time.perf_counter() - start < 10
