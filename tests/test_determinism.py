"""Determinism: the digest is a function of (config, seed) only, and it is exactly the documented hash of
the recorded trace."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smpsim.config import validate
from smpsim.engines.inline import run
from smpsim.trace.reader import iter_events, open_run
from tracegen import event_bytes

ROOT = Path(__file__).resolve().parent.parent

BASE = {"machine": {"cpus": 4, "last_pkmap": 16},
        "workload": {"kind": "shared", "kmaps_per_cpu": 60, "pages": 48, "hot_pages": 8, "nesting": 2},
        "policy": {"name": "linux-2.4"}}


def _cfg(seed=11, **over):
    data = json.loads(json.dumps(BASE))
    data["seed"] = seed
    for section, values in over.items():
        data.setdefault(section, {}).update(values)
    return validate(data)


def recompute_digest(run_dir: Path) -> tuple[str, int]:
    """SHA-256 over each event's tuple as a msgpack array, events in seq order, written out here from
    docs/trace-format.md (tracegen.event_bytes) rather than taken from smpsim."""
    h = hashlib.sha256()
    n = 0
    last = -1
    for ev in iter_events(open_run(run_dir)):
        assert ev["seq"] == last + 1
        last = ev["seq"]
        h.update(event_bytes(ev))
        n += 1
    return h.hexdigest(), n


@pytest.mark.parametrize("policy", ["linux-2.4", "eager", "kmap-local", "no-ipi"])
def test_same_config_same_digest(tmp_path, policy):
    cfg = _cfg(policy={"name": policy})
    d1 = run(cfg, tmp_path / "a").summary
    d2 = run(cfg, tmp_path / "b").summary
    d3 = run(_cfg(policy={"name": policy}), None).summary
    assert d1["digest"] == d2["digest"] == d3["digest"]
    assert d1["counters"] == d2["counters"] == d3["counters"]
    assert d1["per_cpu"] == d2["per_cpu"]


def test_another_seed_another_digest():
    a = run(_cfg(seed=11), None).summary["digest"]
    b = run(_cfg(seed=12), None).summary["digest"]
    assert a != b


def test_another_policy_another_digest():
    a = run(_cfg(policy={"name": "linux-2.4"}), None).summary["digest"]
    b = run(_cfg(policy={"name": "linux-2.6"}), None).summary["digest"]
    assert a != b


def test_fresh_process_gives_the_same_digest(tmp_path):
    """Nothing depends on per-process state (hash randomization, dict order of a warm cache, ...)."""
    cfg_json = json.dumps({**BASE, "seed": 11})
    code = ("import json, sys; from smpsim.config import validate; from smpsim.engines.inline import run; "
            "print(run(validate(json.loads(sys.argv[1])), None).summary['digest'])")
    here = run(_cfg(seed=11), None).summary["digest"]
    outs = set()
    for hashseed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed,
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = subprocess.run([sys.executable, "-c", code, cfg_json], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        outs.add(p.stdout.strip())
    assert outs == {here}


def test_digest_independent_of_trace_settings(tmp_path):
    full = run(_cfg(), tmp_path / "full").summary
    off = run(_cfg(trace={"enabled": False}), tmp_path / "off").summary
    tiny = run(_cfg(trace={"part_events": 7}), tmp_path / "tiny").summary
    assert full["digest"] == off["digest"] == tiny["digest"]
    assert full["counters"] == off["counters"] == tiny["counters"]
    assert len(list((tmp_path / "tiny" / "trace").glob("part-*.parquet"))) > 1
    assert not list((tmp_path / "off").glob("trace/part-*.parquet"))


@pytest.mark.parametrize("part_events", [200_000, 7])
def test_digest_equals_recomputation_from_parquet(tmp_path, part_events):
    res = run(_cfg(trace={"part_events": part_events}), tmp_path / "run")
    digest, n = recompute_digest(tmp_path / "run")
    assert n == res.summary["events"] > 0
    assert digest == res.summary["digest"]
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["digest"] == digest


@pytest.mark.parametrize("field", ["t", "cpu", "page"])
def test_an_edited_trace_no_longer_matches_its_digest(tmp_path, field):
    """Change one value of one recorded event on disk: the trace read back no longer hashes to the
    summary's digest (so the digest covers that field, and the reader returns what is on disk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    res = run(_cfg(), tmp_path / "run")
    assert recompute_digest(tmp_path / "run")[0] == res.summary["digest"]
    part = sorted((tmp_path / "run" / "trace").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    values = table.column(field).to_pylist()
    i = next(i for i in range(len(values) // 2, len(values)) if values[i] is not None)
    values[i] += 1
    pos = table.schema.get_field_index(field)
    pq.write_table(table.set_column(pos, table.schema.field(pos), pa.array(values, table.schema.field(pos).type)),
                   part)
    assert recompute_digest(tmp_path / "run")[0] != res.summary["digest"]
