"""Small runs for the analysis tests, one per policy the analysis must get right, and the CLI's views of a
run (`smpsim analyze --json`, `smpsim export --format jsonl`)."""

from __future__ import annotations

import json
from pathlib import Path

from smpsim.config import validate
from smpsim.engines.inline import run as run_inline

from cli_helpers import invoke


# Small runs, one per policy the analysis must get right; several parts each (part_events).
CONFIGS = {
    # low reuse (uniform over many pages): the ring wraps often; 2.4 broadcasts one IPI per CPU per wrap
    "linux-2.4": {"seed": 7, "machine": {"cpus": 4, "last_pkmap": 16}, "policy": {"name": "linux-2.4"},
                  "workload": {"kind": "uniform", "pages": 2000, "kmaps_per_cpu": 120}},
    "eager": {"seed": 7, "machine": {"cpus": 4, "last_pkmap": 16}, "policy": {"name": "eager"},
              "workload": {"kind": "uniform", "pages": 2000, "kmaps_per_cpu": 120}},
    "kmap-local": {"seed": 5, "machine": {"cpus": 3, "last_pkmap": 16}, "policy": {"name": "kmap-local"},
                   "workload": {"kind": "uniform", "pages": 500, "kmaps_per_cpu": 100, "nesting": 2}},
    # broken on purpose: stale translations get used
    "no-ipi": {"seed": 7, "machine": {"cpus": 4, "last_pkmap": 16}, "policy": {"name": "no-ipi"},
               "workload": {"kind": "shared", "pages": 48, "hot_pages": 8, "kmaps_per_cpu": 120,
                            "accesses_per_kmap": 3, "think": 500}},
    # more pages held than slots: CPUs sleep on pkmap_map_wait, some of them several times per kmap
    "sleepy": {"seed": 2, "machine": {"cpus": 8, "last_pkmap": 8}, "policy": {"name": "linux-2.4"},
               "workload": {"kind": "uniform", "pages": 64, "kmaps_per_cpu": 60, "nesting": 2}},
    "linux-2.6": {"seed": 2, "machine": {"cpus": 5, "last_pkmap": 32}, "policy": {"name": "linux-2.6"},
                  "workload": {"kind": "zipf", "pages": 400, "kmaps_per_cpu": 100}},
}


def make(name: str, out: Path, part_events: int = 700) -> Path:
    data = json.loads(json.dumps(CONFIGS[name]))
    data["trace"] = {"part_events": part_events}
    run_inline(validate(data), out)
    return out


def analyze_json(path: Path) -> dict:
    r = invoke("analyze", path, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def exported(path: Path) -> list[dict]:
    r = invoke("export", path, "--format", "jsonl")
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines()]
