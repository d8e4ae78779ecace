"""The configs whose simulated results are pinned (tests/test_pinned_counters.py), and how to re-pin them.

Each case stores its fully resolved config, so a later change of a schema default does not move what a
case simulates. Re-pin only when an issue deliberately changes what is simulated, and say so in the commit:

    python tests/pinned_cases.py > tests/data/pinned_counters.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PER_POLICY_KINDS = ("uniform", "shared", "pingpong")  # pinned with every policy; every other kind with linux-2.4

# A script where CPUs share pages and reuse slots of a small ring (written next to the config at test time).
SCRIPT_NAME = "pinned-script.jsonl"


def script_lines(cpus: int = 4) -> list[dict]:
    lines = []
    for r in range(8):
        for c in range(cpus):
            page = (r * 3 + c) % 9
            lines += [{"cpu": c, "op": "kmap", "page": page},
                      {"cpu": c, "op": "access", "page": page, "n": 3, "write": (r + c) % 2 == 0},
                      {"cpu": c, "op": "compute", "cycles": 300 + 50 * c},
                      {"cpu": c, "op": "kunmap", "page": page},
                      {"cpu": c, "op": "compute", "cycles": 700}]
    return lines


def cases() -> dict[str, dict]:
    """name -> config overrides (dotted keys) on the schema defaults of the day the values were pinned."""
    from registries import GRID_WORKLOADS, POLICY_NAMES  # every built-in policy and kind, from the registries

    out: dict[str, dict] = {}
    small = {"workload.kmaps_per_cpu": 150, "workload.pages": 300, "machine.last_pkmap": 64}
    for pol in POLICY_NAMES:
        for wl in PER_POLICY_KINDS:
            out[f"{pol}-{wl}-4cpu"] = {**small, "machine.cpus": 4, "policy.name": pol, "workload.kind": wl}
    for wl in (k for k in GRID_WORKLOADS if k not in PER_POLICY_KINDS):
        extra = {"workload.script": SCRIPT_NAME} if wl == "script" else {}
        out[f"linux-2.4-{wl}-kind"] = {**small, "machine.cpus": 4, "workload.kind": wl, **extra}
    for n in (1, 2, 8, 32, 64):
        out[f"linux-2.4-uniform-{n}cpu"] = {"machine.cpus": n, "workload.kmaps_per_cpu": max(20, 800 // n),
                                            "machine.last_pkmap": 128, "workload.pages": 1000}
    for n in (8, 64):
        out[f"eager-shared-{n}cpu"] = {"machine.cpus": n, "workload.kmaps_per_cpu": max(10, 400 // n),
                                       "policy.name": "eager", "workload.kind": "shared"}
    out["sleeps-small-ring"] = {"machine.cpus": 8, "machine.last_pkmap": 16, "workload.nesting": 3,
                                "workload.kmaps_per_cpu": 120, "workload.pages": 200}
    out["sleeps-small-ring-2.6"] = {**out["sleeps-small-ring"], "policy.name": "linux-2.6"}
    # Sleeps with slots waiting for a purge (vmap-lazy's rescue) or for the other CPUs' ticks (latr).
    out["sleeps-small-ring-vmap-lazy"] = {**out["sleeps-small-ring"], "policy.name": "vmap-lazy"}
    out["sleeps-small-ring-latr"] = {**out["sleeps-small-ring"], "policy.name": "latr", "policy.tick": 20_000}
    out["nesting-4"] = {"machine.cpus": 4, "workload.nesting": 4, "workload.kmaps_per_cpu": 200,
                        "workload.kind": "zipf", "machine.last_pkmap": 32}
    out["linux-2.6-range"] = {"machine.cpus": 4, "policy.name": "linux-2.6", "machine.last_pkmap": 24,
                              "workload.kmaps_per_cpu": 200, "workload.pages": 100}
    out["no-background"] = {"machine.cpus": 4, "tlb.background": 0, "workload.kmaps_per_cpu": 200,
                            "machine.last_pkmap": 32, "workload.kind": "zipf"}
    out["kmap-local-nesting"] = {"machine.cpus": 2, "policy.name": "kmap-local", "workload.nesting": 3,
                                 "workload.kmaps_per_cpu": 300}
    out["default-8cpu"] = {"machine.cpus": 8, "workload.kmaps_per_cpu": 300}
    return out


def resolved(overrides: dict) -> dict:
    """The full config dict of a case (schema defaults filled in)."""
    from smpsim.config import set_key, validate
    data: dict = {"seed": 7}
    for k, v in overrides.items():
        set_key(data, k, v)
    return validate(data).model_dump(mode="json")


def observe(summary: dict) -> dict:
    """What a case pins: everything simulated, none of the representation (events, digest)."""
    return {"counters": summary["counters"], "flushes_by_scope": summary["flushes_by_scope"],
            "per_cpu": summary["per_cpu"], "t_end": summary["t_end"]}


def config_for(case: dict, tmp: Path):
    from smpsim.config import validate
    data = json.loads(json.dumps(case["config"]))
    if data["workload"]["kind"] == "script":
        (tmp / SCRIPT_NAME).write_text("".join(json.dumps(x) + "\n" for x in script_lines()))
        data["base_dir"] = str(tmp)
    cfg = validate({k: v for k, v in data.items() if k != "base_dir"})
    if "base_dir" in data:
        cfg.base_dir = data["base_dir"]
    return cfg


def main() -> None:
    import tempfile

    from smpsim.engines import inline
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ov in cases().items():
            case = {"config": resolved(ov)}
            case["expect"] = observe(inline.run(config_for(case, Path(tmp))).summary)
            out[name] = case
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
