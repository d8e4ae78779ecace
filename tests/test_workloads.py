"""Tests for smpsim.model.workloads: seeded per-CPU operation streams and the script loader."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smpsim.config import validate
from smpsim.model.cpu import INF, Cpu
from smpsim.model.errors import ModelError
from smpsim.model.messages import KMAP
from smpsim.model.workloads import Program, WorkloadError, build, build_cpu, load_script

from registries import GENERATED_WORKLOADS

GENERATED = GENERATED_WORKLOADS
REPO = Path(__file__).resolve().parent.parent


def make_cfg(kind: str = "uniform", cpus: int = 4, seed: int = 1, **workload):
    workload.setdefault("kmaps_per_cpu", 200)
    return validate({"seed": seed, "machine": {"cpus": cpus}, "workload": {"kind": kind, **workload}})


def check_well_formed(ops: list[tuple], nesting: int, kmaps: int, *, generated: bool = True) -> None:
    """kmap before access/kunmap, LIFO kunmap, at most `nesting` held, nothing held at the end."""
    stack: list[int] = []
    n_kmaps = 0
    for i, op in enumerate(ops):
        kind = op[0]
        if kind == "compute":
            assert len(op) == 2 and type(op[1]) is int and op[1] >= 0, (i, op)
        elif kind == "kmap":
            assert len(op) == 2 and type(op[1]) is int and op[1] >= 0, (i, op)
            if generated:
                assert op[1] not in stack, f"op {i}: page {op[1]} kmapped while already held"
            stack.append(op[1])
            n_kmaps += 1
            assert len(stack) <= nesting, f"op {i}: {len(stack)} pages held, nesting {nesting}"
        elif kind == "access":
            assert len(op) == 4, (i, op)
            _, page, n, write = op
            assert type(page) is int and type(n) is int and n >= 1 and type(write) is bool, (i, op)
            assert page in stack, f"op {i}: access of page {page} not held"
        elif kind == "kunmap":
            assert len(op) == 2 and type(op[1]) is int, (i, op)
            assert stack and stack[-1] == op[1], f"op {i}: kunmap({op[1]}) not LIFO, held {stack}"
            stack.pop()
        else:
            raise AssertionError(f"op {i}: unknown op {op!r}")
    assert stack == [], f"stream ends holding {stack}"
    assert n_kmaps == kmaps


def kmapped(ops: list[tuple]) -> list[int]:
    return [op[1] for op in ops if op[0] == "kmap"]


# --------------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("kind", GENERATED)
def test_deterministic_and_per_cpu(kind):
    cfg = make_cfg(kind, cpus=5, nesting=2)
    a, b = build(cfg), build(make_cfg(kind, cpus=5, nesting=2))
    assert a == b
    assert len(a) == 5
    # A CPU rebuilds its own stream alone, in any order.
    for c in reversed(range(5)):
        ops, lines = build_cpu(cfg, c)
        assert lines is None
        assert ops == a[c]
    other = build(make_cfg(kind, cpus=5, nesting=2, seed=2))
    assert other != a
    for c in range(5):
        assert other[c] != a[c]


@pytest.mark.parametrize("kind", ("uniform", "zipf", "shared"))
def test_cpus_get_different_streams(kind):
    ops = build(make_cfg(kind, cpus=3))
    streams = [tuple(kmapped(o)) for o in ops]
    assert len(set(streams)) == 3, "two CPUs got the same page sequence"


def test_independent_of_hash_seed():
    """String seeds go through SHA-512, not hash(): other PYTHONHASHSEEDs give the same streams."""
    code = (
        "import hashlib, sys\n"
        "from smpsim.config import validate\n"
        "from smpsim.model.workloads import build\n"
        "out = []\n"
        "for kind in ('uniform', 'zipf', 'shared', 'stream', 'pingpong'):\n"
        "    cfg = validate({'seed': 7, 'machine': {'cpus': 3},\n"
        "                    'workload': {'kind': kind, 'kmaps_per_cpu': 50, 'pages': 300}})\n"
        "    out.append(repr(build(cfg)))\n"
        "print(hashlib.sha256(''.join(out).encode()).hexdigest())\n"
    )
    digests = set()
    for hs in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hs)
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                           check=True)
        digests.add(r.stdout.strip())
    assert len(digests) == 1


# --------------------------------------------------------------------------------------------------
# Well-formed generated streams


@pytest.mark.parametrize("kind", GENERATED)
@pytest.mark.parametrize("nesting", (1, 3, 8))
def test_generated_well_formed(kind, nesting):
    cfg = make_cfg(kind, cpus=5, nesting=nesting, kmaps_per_cpu=301, pages=500)
    for ops in build(cfg):
        check_well_formed(ops, nesting, 301)


@pytest.mark.parametrize("kind", GENERATED)
def test_shape_and_ranges(kind):
    w = dict(kmaps_per_cpu=150, accesses_per_kmap=3, access_burst=5, think=100, hold=10, pages=1000)
    cfg = make_cfg(kind, cpus=4, **w)
    for cpu, ops in enumerate(build(cfg)):
        body = ops[1:] if kind == "pingpong" and cpu % 2 else ops
        per_kmap = 1 + 1 + 3 * 2 + 1
        assert len(body) == 150 * per_kmap
        for j in range(0, len(body), per_kmap):
            chunk = body[j:j + per_kmap]
            assert chunk[0][0] == "compute" and 0 <= chunk[0][1] <= 200
            assert chunk[1][0] == "kmap" and 0 <= chunk[1][1] < 1000
            page = chunk[1][1]
            for k in range(3):
                assert chunk[2 + 2 * k][0] == "compute" and 0 <= chunk[2 + 2 * k][1] <= 20
                assert chunk[3 + 2 * k][:3] == ("access", page, 5)
            assert chunk[-1] == ("kunmap", page)


def test_zero_means_give_zero_compute():
    ops = build_cpu(make_cfg("uniform", think=0, hold=0), 0)[0]
    computes = [op[1] for op in ops if op[0] == "compute"]
    assert computes and set(computes) == {0}


def test_think_spread_matches_mean():
    ops = build_cpu(make_cfg("uniform", kmaps_per_cpu=5000, think=1000, hold=0, accesses_per_kmap=1), 0)[0]
    thinks = [ops[i][1] for i in range(0, len(ops), 5)]
    assert max(thinks) <= 2000 and min(thinks) >= 0
    assert 950 < statistics.mean(thinks) < 1050
    assert max(thinks) > 1900 and min(thinks) < 100


@pytest.mark.parametrize("kind", GENERATED)
def test_zero_kmaps_is_empty(kind):
    assert build(make_cfg(kind, cpus=3, kmaps_per_cpu=0)) == [[], [], []]


@pytest.mark.parametrize("kind", ("uniform", "zipf", "stream", "shared"))
def test_nesting_capped_by_distinct_pages(kind):
    cfg = make_cfg(kind, cpus=2, nesting=8, pages=3, hot_pages=2, kmaps_per_cpu=40)
    for ops in build(cfg):
        check_well_formed(ops, 3, 40)
        held = peak = 0
        for op in ops:
            held += {"kmap": 1, "kunmap": -1}.get(op[0], 0)
            peak = max(peak, held)
        assert peak == 3


def test_shared_all_hot_with_deep_nesting_terminates():
    # hot_fraction 1 with fewer hot pages than nesting: redraws cannot succeed, so the picker must probe.
    cfg = make_cfg("shared", cpus=2, nesting=6, pages=100, hot_pages=2, hot_fraction=1.0, kmaps_per_cpu=60)
    for ops in build(cfg):
        check_well_formed(ops, 6, 60)


def test_write_fraction():
    ops = build_cpu(make_cfg("uniform", kmaps_per_cpu=4000, write_fraction=0.25), 0)[0]
    writes = [op[3] for op in ops if op[0] == "access"]
    assert abs(sum(writes) / len(writes) - 0.25) < 0.02
    for wf, expect in ((0.0, {False}), (1.0, {True})):
        ops = build_cpu(make_cfg("uniform", write_fraction=wf), 0)[0]
        assert {op[3] for op in ops if op[0] == "access"} == expect


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(GENERATED),
    cpus=st.integers(1, 6),
    seed=st.integers(0, 2**63 - 1),
    pages=st.integers(1, 200),
    kmaps=st.integers(0, 60),
    nesting=st.integers(1, 10),
    accesses=st.integers(1, 4),
    hot_pages=st.integers(1, 50),
    hot_fraction=st.floats(0.0, 1.0),
)
def test_well_formed_property(kind, cpus, seed, pages, kmaps, nesting, accesses, hot_pages, hot_fraction):
    cfg = make_cfg(kind, cpus=cpus, seed=seed, pages=pages, kmaps_per_cpu=kmaps, nesting=nesting,
                   accesses_per_kmap=accesses, hot_pages=hot_pages, hot_fraction=hot_fraction)
    for ops in build(cfg):
        check_well_formed(ops, nesting, kmaps)
        assert all(0 <= p < pages for p in kmapped(ops))


# --------------------------------------------------------------------------------------------------
# Per-kind behaviour


def test_uniform_covers_range():
    pages = kmapped(build_cpu(make_cfg("uniform", pages=50, kmaps_per_cpu=3000), 0)[0])
    assert set(pages) == set(range(50))


def test_zipf_skew_and_shared_hot_pages():
    cfg = make_cfg("zipf", cpus=2, pages=1024, zipf_s=1.1, kmaps_per_cpu=20000)
    ops = build(cfg)
    counts = Counter(kmapped(ops[0]))
    full = [counts.get(p, 0) for p in range(1024)]
    top_page, top = counts.most_common(1)[0]
    assert top > 20 * max(1, statistics.median(full))
    assert top > 0.05 * 20000
    # The rank -> page permutation is common to all CPUs: they share the hottest page.
    assert Counter(kmapped(ops[1])).most_common(1)[0][0] == top_page
    # ... and it is a permutation (not rank == page).
    assert [p for p, _ in counts.most_common(5)] != [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 100, 8192])
def test_zipf_permutation_is_the_standard_library_shuffle(n):
    """The zipf rank -> page permutation is shuffled by a copy of random.shuffle (so compiled code runs
    it); it must stay the standard library's permutation, which the pinned streams were made with."""
    import random

    from smpsim.model.workloads import _shuffle
    for seed in ("1:zipf-perm", "7:zipf-perm"):
        want, got = list(range(n)), list(range(n))
        random.Random(seed).shuffle(want)
        _shuffle(got, random.Random(seed))
        assert got == want


def test_zipf_large_page_count_is_fast_enough():
    cfg = make_cfg("zipf", cpus=1, pages=65536, kmaps_per_cpu=2000)
    ops = build_cpu(cfg, 0)[0]
    assert all(0 <= p < 65536 for p in kmapped(ops))


def test_stream_sequential_from_cpu_offset():
    cfg = make_cfg("stream", cpus=4, pages=100, kmaps_per_cpu=130)
    for c, ops in enumerate(build(cfg)):
        assert kmapped(ops) == [(c * 25 + i) % 100 for i in range(130)]


def test_shared_hot_fraction():
    cfg = make_cfg("shared", cpus=3, pages=4096, hot_pages=16, hot_fraction=0.8, kmaps_per_cpu=10000)
    hot_sets = []
    for ops in build(cfg):
        pages = kmapped(ops)
        hot = [p for p in pages if p < 16]
        assert abs(len(hot) / len(pages) - 0.8) < 0.02
        hot_sets.append(set(hot))
    assert hot_sets[0] == hot_sets[1] == hot_sets[2] == set(range(16))


def test_pingpong_pairs_share_pages():
    cfg = make_cfg("pingpong", cpus=5, pages=4096, kmaps_per_cpu=200, think=300, hold=50, accesses_per_kmap=4)
    ops = build(cfg)
    for even, odd in ((0, 1), (2, 3)):
        assert kmapped(ops[even]) == kmapped(ops[odd])
        assert all(op[3] for op in ops[even] if op[0] == "access")
        assert not any(op[3] for op in ops[odd] if op[0] == "access")
        # The reader starts later: an extra initial compute, then the writer's schedule.
        assert ops[odd][0] == ("compute", 300 + 50 * 4)
        assert [op[1] for op in ops[odd][1:] if op[0] == "compute"] == \
            [op[1] for op in ops[even] if op[0] == "compute"]
    # Slots get reused: a small span of pages per pair.
    assert len(set(kmapped(ops[0]))) <= 64
    # Pairs (and the lone last CPU) use disjoint pages.
    sets = [set(kmapped(ops[c])) for c in (0, 2, 4)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    # The lone last CPU behaves like an even (writer) CPU.
    assert all(op[3] for op in ops[4] if op[0] == "access")
    assert ops[4][0][0] == "compute" and ops[4][1][0] == "kmap"


# --------------------------------------------------------------------------------------------------
# Scripts


def write_script(tmp_path: Path, lines: list[str | dict], name: str = "script.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return p


def script_cfg(path: Path, cpus: int = 2):
    return validate({"machine": {"cpus": cpus}, "workload": {"kind": "script", "script": str(path)}})


def test_script_valid(tmp_path):
    p = write_script(tmp_path, [
        "# a comment",
        {"cpu": 0, "op": "kmap", "page": 5},
        "",
        {"cpu": 1, "op": "compute", "cycles": 100},
        {"cpu": 0, "op": "access", "page": 5, "n": 8, "write": False},
        "   # indented comment",
        {"cpu": 0, "op": "kmap", "page": 5},          # nesting the same page is legal
        {"cpu": 0, "op": "kunmap", "page": 5},
        {"cpu": 0, "op": "access", "page": 5, "n": 1, "write": True},
        {"cpu": 0, "op": "kunmap", "page": 5},
        {"cpu": 1, "op": "kmap", "page": 7},           # ends while holding: allowed
        {"cpu": 0, "op": "compute", "cycles": 0},
    ])
    cfg = script_cfg(p, cpus=3)
    ops0, lines0 = build_cpu(cfg, 0)
    assert ops0 == [("kmap", 5), ("access", 5, 8, False), ("kmap", 5), ("kunmap", 5),
                    ("access", 5, 1, True), ("kunmap", 5), ("compute", 0)]
    assert lines0 == [2, 5, 7, 8, 9, 10, 12]
    ops1, lines1 = build_cpu(cfg, 1)
    assert ops1 == [("compute", 100), ("kmap", 7)] and lines1 == [4, 11]
    assert build_cpu(cfg, 2) == ([], [])   # CPU absent from the script
    assert build(cfg) == [ops0, ops1, []]
    loaded = load_script(p)
    assert loaded[0][0] == (("kmap", 5), 2)
    assert set(loaded) == {0, 1}


def test_script_cpu_holds_are_per_cpu(tmp_path):
    p = write_script(tmp_path, [
        {"cpu": 0, "op": "kmap", "page": 5},
        {"cpu": 1, "op": "access", "page": 5, "n": 1, "write": False},
    ])
    with pytest.raises(WorkloadError) as e:
        load_script(p)
    assert "script.jsonl:2:" in str(e.value) and "CPU 1" in str(e.value)


KMAP5 = {"cpu": 0, "op": "kmap", "page": 5}

SCRIPT_ERRORS = [
    # (lines, bad line, words the message must contain)
    ([KMAP5, "{not json"], 2, ["JSON"]),
    ([KMAP5, "[1, 2]"], 2, ["object"]),
    ([{"cpu": 0, "op": "kmapp", "page": 5}], 1, ["unknown op", "kmapp"]),
    ([{"cpu": 0, "page": 5}], 1, ['"op"']),
    ([{"op": "kmap", "page": 5}], 1, ['"cpu"']),
    ([{"cpu": 0, "op": "kmap"}], 1, ['"page"']),
    ([{"cpu": 0, "op": "compute"}], 1, ['"cycles"']),
    ([{"cpu": 0, "op": "kmap", "page": 5, "n": 3}], 1, ['"n"', "unexpected"]),
    ([{"cpu": 0, "op": "compute", "cycles": 1, "extra": 1}], 1, ['"extra"']),
    ([{"cpu": 0, "op": "kmap", "page": -1}], 1, ['"page"', ">= 0"]),
    ([{"cpu": 0, "op": "kmap", "page": 1.5}], 1, ['"page"']),
    ([{"cpu": 0, "op": "kmap", "page": "5"}], 1, ['"page"']),
    ([{"cpu": 0, "op": "kmap", "page": True}], 1, ['"page"']),
    ([KMAP5, {"cpu": 0, "op": "access", "page": 5, "n": 0, "write": False}], 2, ['"n"', ">= 1"]),
    ([KMAP5, {"cpu": 0, "op": "access", "page": 5, "n": 2.0, "write": False}], 2, ['"n"']),
    ([KMAP5, {"cpu": 0, "op": "access", "page": 5, "n": 1, "write": 1}], 2, ['"write"']),
    ([{"cpu": 0, "op": "compute", "cycles": -5}], 1, ['"cycles"']),
    ([{"cpu": -1, "op": "compute", "cycles": 5}], 1, ['"cpu"']),
    ([{"cpu": "0", "op": "compute", "cycles": 5}], 1, ['"cpu"']),
    ([{"cpu": 0, "op": "access", "page": 5, "n": 1, "write": False}], 1,
     ['"access"', "page 5", "CPU 0", "not kmapped"]),
    ([KMAP5, {"cpu": 0, "op": "kunmap", "page": 5}, {"cpu": 0, "op": "access", "page": 5}], 3,
     ['"access"', "page 5", "line 2"]),
    ([KMAP5, KMAP5, {"cpu": 0, "op": "kunmap", "page": 5}, {"cpu": 0, "op": "kunmap", "page": 5},
      {"cpu": 0, "op": "access", "page": 5, "n": 1, "write": False}], 5, ['"access"', "page 5"]),
    (["# comment", "", KMAP5, {"cpu": 0, "op": "access", "page": 6, "n": 1, "write": False}], 4,
     ["page 6"]),
]


@pytest.mark.parametrize("lines,bad,words", SCRIPT_ERRORS)
def test_script_errors_name_the_line(tmp_path, lines, bad, words):
    p = write_script(tmp_path, lines)
    with pytest.raises(WorkloadError) as e:
        build_cpu(script_cfg(p), 0)
    msg = str(e.value)
    assert f"script.jsonl:{bad}:" in msg
    assert str(p) in msg
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg


def test_script_errors_on_any_cpu(tmp_path):
    """Every CPU process sees the error, not just the CPU with the bad line."""
    p = write_script(tmp_path, [KMAP5, {"cpu": 1, "op": "access", "page": 9}])
    for cpu in (0, 1):
        with pytest.raises(WorkloadError, match=r"script\.jsonl:2:"):
            build_cpu(script_cfg(p), cpu)


def test_script_cpu_out_of_range(tmp_path):
    p = write_script(tmp_path, [KMAP5, {"cpu": 1, "op": "compute", "cycles": 1},
                                {"cpu": 4, "op": "compute", "cycles": 1},
                                {"cpu": 3, "op": "compute", "cycles": 1}])
    for cpu in (0, 1):
        with pytest.raises(WorkloadError) as e:
            build_cpu(script_cfg(p, cpus=2), cpu)
        msg = str(e.value)
        assert "script.jsonl:3:" in msg and "cpu 4" in msg and "2 CPUs" in msg
    assert build_cpu(script_cfg(p, cpus=5), 4)[0] == [("compute", 1)]


def test_script_missing_file(tmp_path):
    p = tmp_path / "nope.jsonl"
    with pytest.raises(WorkloadError) as e:
        build_cpu(script_cfg(p), 0)
    assert "nope.jsonl" in str(e.value)
    with pytest.raises(WorkloadError):
        load_script(p)


def test_script_unreadable(tmp_path):
    d = tmp_path / "adir.jsonl"
    d.mkdir()
    with pytest.raises(WorkloadError, match="adir.jsonl"):
        load_script(d)
    b = tmp_path / "bin.jsonl"
    b.write_bytes(b'{"cpu": 0, "op": "compute", "cycles": 1}\n\xff\xfe\n')
    with pytest.raises(WorkloadError, match=r"bin\.jsonl:2:"):
        load_script(b)


def test_script_relative_to_base_dir(tmp_path):
    write_script(tmp_path, [{"cpu": 0, "op": "compute", "cycles": 3}], name="rel.jsonl")
    cfg = validate({"machine": {"cpus": 1}, "workload": {"kind": "script", "script": "rel.jsonl"}})
    cfg.base_dir = str(tmp_path)
    assert build_cpu(cfg, 0) == ([("compute", 3)], [1])


def test_script_reloaded_after_edit(tmp_path):
    p = write_script(tmp_path, [{"cpu": 0, "op": "compute", "cycles": 3}])
    assert build_cpu(script_cfg(p), 0)[0] == [("compute", 3)]
    write_script(tmp_path, [{"cpu": 0, "op": "compute", "cycles": 4}, {"cpu": 0, "op": "compute", "cycles": 5}])
    assert build_cpu(script_cfg(p), 0)[0] == [("compute", 4), ("compute", 5)]


def test_script_access_defaults_and_foreign_kunmap(tmp_path):
    """n and write default to 1 and false; a kunmap of a page this CPU does not hold is left to the model."""
    p = write_script(tmp_path, [KMAP5, {"cpu": 0, "op": "access", "page": 5},
                                {"cpu": 1, "op": "kunmap", "page": 5}])
    cfg = validate({"machine": {"cpus": 2}, "workload": {"kind": "script", "script": str(p)}})
    assert build_cpu(cfg, 0)[0] == [("kmap", 5), ("access", 5, 1, False)]
    assert build_cpu(cfg, 1)[0] == [("kunmap", 5)]


def _run_local(prog: Program) -> ModelError:
    """The error a kmap-local CPU (it runs without a coordinator) raises running prog."""
    cpu = Cpu(validate({"machine": {"cpus": 1}, "policy": {"name": "kmap-local"}}), 0, prog)
    with pytest.raises(ModelError) as e:
        cpu.run(INF)
    return e.value


def test_cpu_errors_name_an_op_by_its_documented_code():
    """Inside the model an op's kind comes first (an int); what the user reads is its code."""
    e = _run_local(Program(iter([[(KMAP, 3), (9, 3)]])))  # the model's form
    assert str(e).startswith("CPU 0, operation #1 (kind 9)") and "unknown operation ('kind 9', 3)" in str(e)
    e = _run_local(Program.of([("kmap", 3), ("kunmap_migrated", 3)]))  # the documented form
    assert str(e).startswith("CPU 0, operation #1 (kunmap_migrated)") and "by a task that migrated" in str(e)
