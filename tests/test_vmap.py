"""vmalloc's lazy purge: the model against the kernel's formula, the parser and comparison on a recorded trace
(tests/data/vmap_4096k.trace: `smpsim calibrate --vmap --sizes 4096 --keep DIR` on Linux 6.18, 2 vCPUs,
kept to its vmalloc events and function-call IPIs), and a live check where root, tracefs and bpf are."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cli_helpers import invoke, user_error
from smpsim.calibrate.vmap import parse_vmap, read_header, replay
from smpsim.model import policies, vmalloc
from smpsim.model.vmalloc import LazyVmap, lazy_max_pages

SAMPLE = Path(__file__).parent / "data" / "vmap_4096k.trace"
TRACEFS = Path("/sys/kernel/tracing")
BASE = 0xffffc90000000000


@pytest.mark.parametrize("ncpus, limit", [(1, 8192), (2, 16384), (4, 24576), (64, 57344), (1024, 90112)])
@pytest.mark.parametrize("pages", [17, 257, 1025])
def test_replay_purges_at_the_first_count_above_the_kernel_formula(ncpus, limit, pages):
    """lazy_max_pages() = fls(ncpus) * 8192: a purge comes with the first free that takes vmap_lazy_nr above
    it, takes every waiting area, flushes from the lowest start to the highest end and IPIs the others."""
    assert lazy_max_pages(ncpus) == limit
    per = limit // pages + 1                  # frees per purge: the first count that EXCEEDS the limit
    n = 3 * per + 2
    stride = (pages + 3) << vmalloc.PAGE_SHIFT  # areas with gaps between them, freed in reverse order
    ops = [("alloc", BASE + i * stride, pages) for i in range(n)]
    ops += [("free", BASE + i * stride, None) for i in reversed(range(n))]
    purges = vmalloc.replay(ops, ncpus)
    assert [(p.areas, p.pages, p.ipis) for p in purges] == [(per, per * pages, ncpus - 1)] * 3
    # the first purge took the highest `per` areas: its range runs from the lowest of them to the top's end
    lo, hi = n - per, n - 1
    assert purges[0].span_pages == ((hi - lo) * stride >> vmalloc.PAGE_SHIFT) + pages
    assert purges[0].after == n + per - 1   # the free that crossed, counting the allocations before it


@pytest.mark.parametrize("ncpus", [1, 2, 4])
def test_a_count_exactly_at_the_limit_does_not_purge(ncpus):
    """mm/vmalloc.c drains when vmap_lazy_nr EXCEEDS lazy_max_pages(): frees that bring it to exactly the
    limit wait; the next page purges them all (areas of 1024 pages divide the limit, 8192 per fls unit)."""
    m = LazyVmap(ncpus)
    n = lazy_max_pages(ncpus) // 1024
    for i in range(n):
        m.alloc(BASE + i * (2 << 20), 1024)
        assert m.free(BASE + i * (2 << 20)) is None, f"purged at {(i + 1) * 1024} pages, not above the limit"
    assert m.lazy_nr == lazy_max_pages(ncpus)
    m.alloc(BASE + (1 << 30), 1)
    p = m.free(BASE + (1 << 30))
    assert p is not None and (p.areas, p.pages) == (n + 1, lazy_max_pages(ncpus) + 1)


def test_areas_waiting_before_the_replay_join_the_first_purge_without_a_span():
    m = LazyVmap(2, lazy_pages=16_000, lazy_areas=40)
    m.alloc(BASE, 257)
    assert m.free(BASE) is None          # 16,257 is not above 16,384 ...
    m.alloc(BASE + (1 << 30), 257)
    p = m.free(BASE + (1 << 30))         # ... 16,514 is
    assert p is not None and (p.areas, p.pages, p.start, p.span_pages) == (42, 16_514, None, None)
    with pytest.raises(ValueError, match="not allocated in this replay"):
        m.free(BASE + (2 << 30))


def test_an_address_reused_while_lazy_counts_as_two_areas():
    """A replayed trace can allocate again an address the kernel's (later) drain had purged: two areas."""
    m = LazyVmap(1)
    for _ in range(2):
        m.alloc(BASE, 3)
        assert m.free(BASE) is None
    m.alloc(BASE + (1 << 30), 8192)
    p = m.free(BASE + (1 << 30))
    assert p is not None and (p.areas, p.pages) == (3, 8198)


def test_vmap_lazy_policy_takes_lazy_max_pages_from_the_model():
    """One definition: the ring-scaled policy and the replay model share lazy_max_pages."""
    assert policies.lazy_max_pages is vmalloc.lazy_max_pages and policies.fls is vmalloc.fls


def _sample() -> tuple[str, dict]:
    text = SAMPLE.read_text()
    return text, read_header(text, str(SAMPLE))


def test_the_recorded_trace_parses_to_the_kernels_own_counts():
    text, h = _sample()
    assert (h["ncpus"], h["pre_pages"], h["pre_areas"]) == (2, 4604, 64)
    ev = parse_vmap(text)
    allocs = [e for e in ev if e.kind == "alloc" and e.pid == 9553]  # the recording process; others vmalloc too
    # each 4 MiB map: its 1,025-page area, and the 3-page area vmalloc's page array needs (8 KiB + guard)
    assert sorted({e.pages for e in allocs}) == [3, 1025] and len(allocs) == 112
    assert {e.nr_lazy_max for e in ev if e.kind == "free"} == {16384}
    purges = [e for e in ev if e.kind == "purge"]
    assert [p.areas for p in purges] == [89, 32, 32]
    assert purges[1].addr == 0xffffc900000f5000 and purges[1].end - purges[1].addr == 42075 << 12


def test_the_replay_sets_the_kernels_purges_beside_the_models():
    text, h = _sample()
    r = replay(parse_vmap(text), h["ncpus"], h["pre_pages"], h["pre_areas"])
    assert (len(r.measured), len(r.modelled)) == (3, 3)
    assert [m.areas for m in r.measured] == [89, 32, 32]
    # The model purges at the crossing free. The kernel's drain worker runs after the vfree that crossed has
    # also freed the area's page array (3 pages, one late free), so that array goes with the kernel's purge
    # and with the model's next one: areas and pages agree after the first purge, the span differs by it.
    assert [p.areas for p in r.modelled] == [87, 32, 32]
    assert [m.late for m in r.measured] == [1, 1, 1]
    assert [m.pages for m in r.measured][1:] == [p.pages for p in r.modelled][1:] == [16448, 16448]
    assert [m.ipis for m in r.measured] == [p.ipis for p in r.modelled] == [1, 1, 1]
    assert r.measured[1].span_pages == r.modelled[1].span_pages == 42075
    assert (r.measured[2].span_pages, r.modelled[2].span_pages) == (41050, 41042)
    assert r.modelled[0].span_pages is None  # 64 areas of unknown address were waiting
    assert r.first_difference() == "purge 1: the kernel purged 89 areas, the model 87"


def test_cli_replay_prints_side_by_side_and_exits_0_when_purge_counts_agree():
    res = invoke("calibrate", "--replay", SAMPLE)
    assert res.exit_code == 0, res.output
    assert "purges: kernel 3, model 3, ratio 1.00" in res.stdout
    row2 = next(line.split() for line in res.stdout.splitlines() if line.split()[:1] == ["2"])
    assert row2 == ["2", "32", "32", "1.00", "16448", "16448", "1.00", "42075", "42075", "1.00", "1", "1", "1.00",
                    "1"]


def test_cli_replay_exits_1_naming_the_first_purge_that_differs(tmp_path):
    text = SAMPLE.read_text().splitlines(keepends=True)
    last = max(i for i, line in enumerate(text) if "purge_vmap_area_lazy" in line)
    edited = tmp_path / "edited.trace"
    edited.write_text("".join(text[:last] + text[last + 1:]))
    msg = user_error(invoke("calibrate", "--replay", edited), code=1)
    assert "the kernel purged 2 times, the model 3" in msg
    assert "first difference: purge 1: the kernel purged 89 areas, the model 87" in msg


def test_cli_replay_names_the_line_of_a_truncated_event(tmp_path):
    text = SAMPLE.read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(text) if "free_vmap_area_noflush" in line)
    text[i] = text[i][: text[i].index("nr_lazy=")] + "\n"
    bad = tmp_path / "cut.trace"
    bad.write_text("".join(text))
    msg = user_error(invoke("calibrate", "--replay", bad))
    assert f"line {i + 1}: free_vmap_area_noflush without the fields" in msg
    bad.write_text(SAMPLE.read_text().split("\n", 1)[1])
    assert "line 1: not a trace saved by smpsim calibrate --vmap" in user_error(invoke("calibrate", "--replay", bad))


def test_bad_sizes_are_refused_before_anything_runs(tmp_path):
    msg = user_error(invoke("calibrate", "--vmap", "--sizes", "16,1024"))
    assert "multiple of 4 KiB from 40" in msg and "[16]" in msg
    assert "--keep DIR" in user_error(invoke("calibrate", "--vmap", "--out", tmp_path / "x.toml"))
    assert not (tmp_path / "x.toml").exists()


def _live() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a tracefs instance and bpf(BPF_MAP_CREATE))"
    if not (TRACEFS / "events" / "vmalloc" / "purge_vmap_area_lazy").is_dir():
        return "needs tracefs at /sys/kernel/tracing with the vmalloc events"
    from smpsim.calibrate.host import CalibrationError
    from smpsim.calibrate.vmap_host import create_array_map
    try:
        create_array_map(1, 4)
    except CalibrationError:
        return "needs the bpf syscall (BPF_MAP_CREATE)"
    return None


@pytest.mark.timeout(60)
@pytest.mark.skipif(_live() is not None, reason=str(_live()))
def test_live_purges_on_this_kernel_agree_with_the_model(smpsim_cmd, subprocess_env, tmp_path):
    keep = tmp_path / "traces"
    p = subprocess.run([*smpsim_cmd, "calibrate", "--vmap", "--sizes", "1024", "--maps", "80", "--keep", str(keep)],
                       capture_output=True, text=True, env=subprocess_env, timeout=50)
    assert p.returncode == 0, p.stdout + p.stderr
    counts = next(line for line in p.stdout.splitlines() if line.startswith("purges: kernel"))
    n = int(counts.split()[2].rstrip(","))
    assert n >= 1 and counts.startswith(f"purges: kernel {n}, model {n},")  # 80 x 257 pages > 16,384
    assert read_header((keep / "vmap-1024k.trace").read_text(), "kept")["ncpus"] >= 1
    assert not list((TRACEFS / "instances").glob("smpsim-vmap-*"))  # the private instance is gone


def test_without_root_it_exits_2_naming_root(monkeypatch):
    monkeypatch.setattr("smpsim.calibrate.vmap_host.os.geteuid", lambda: 1000)
    assert user_error(invoke("calibrate", "--vmap")).startswith("error: smpsim calibrate --vmap needs root")


def test_cli_replay_json_gives_each_purge_measured_and_modelled():
    import json
    res = invoke("calibrate", "--replay", SAMPLE, "--json")
    assert res.exit_code == 0, res.output
    (rec,) = json.loads(res.stdout)
    assert (rec["ncpus"], rec["lazy_max_pages"], rec["kernel_nr_lazy_max"]) == (2, 16384, 16384)
    assert [p["areas"] for p in rec["purges"]] == [[89, 87], [32, 32], [32, 32]]
    assert rec["summary"]["purges"] == [3, 3]


@pytest.mark.timeout(60)
@pytest.mark.skipif(_live() is not None, reason=str(_live()))
def test_sigterm_while_recording_removes_the_tracefs_instance(smpsim_cmd, subprocess_env):
    import signal
    import time
    p = subprocess.Popen([*smpsim_cmd, "calibrate", "--vmap", "--sizes", "64", "--maps", "20000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env)
    try:
        inst = TRACEFS / "instances" / f"smpsim-vmap-{p.pid}"
        deadline = time.monotonic() + 30
        while not inst.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # polling for the instance the command creates, bounded
        assert inst.exists(), "the recording did not start"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    assert p.returncode == 143, err
    assert err.startswith("error: interrupted by SIGTERM") and "instance was removed" in err
    assert not inst.exists()


@pytest.mark.skipif(os.geteuid() != 0 or not (TRACEFS / "events" / "vmalloc").is_dir(),
                    reason="needs root and tracefs with the vmalloc events (to reach the bpf check)")
def test_without_the_bpf_syscall_it_exits_2_naming_it(monkeypatch):
    monkeypatch.setattr("smpsim.calibrate.vmap_host._bpf_nr", lambda: 100_000)  # no such syscall: ENOSYS
    msg = user_error(invoke("calibrate", "--vmap", "--sizes", "1024"))
    assert "bpf(BPF_MAP_CREATE)" in msg and "CONFIG_BPF_SYSCALL" in msg
    assert not list((TRACEFS / "instances").glob("smpsim-vmap-*"))
