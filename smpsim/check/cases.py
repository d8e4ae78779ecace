"""The fixed cases of ``smpsim policy check``: each chosen to break an unsafe policy in its own way.

Every workload kind; 1, 2, 3, 8 and 32 CPUs; rings of 8, 16 and 64 slots; nesting; sleeps on a full ring
(more pages held than slots); a page held across a wrap (a script); a holder that migrates (a generator);
idle CPUs (``active_cpus``); and two small cases on the distributed engine. The generated workloads are
kept short (tens of kmaps per CPU) and their pages few, so slots are reused and rings wrap many times in
each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Op = dict[str, Any]  # one script line (docs/workloads.md)


@dataclass(frozen=True)
class Case:
    """One fixed case of the policy check: its name, config keys and, for a script or trace workload, the
    workload's text."""
    name: str                    # what the case is, as the report shows it
    keys: dict[str, Any]         # dotted config keys
    script: tuple[Op, ...] = ()  # the lines of a script workload
    engine: str = "inline"
    trace: str = ""              # the text of a trace workload (tracefs, kprobes on kmap_high / kunmap_high)
    ring_only: bool = False      # a kunmap by a migrated task: per-CPU slots (kmap_local) forbid it


TRACE_PAGE_BYTES = 32  # workload.trace_page_bytes: page = pointer / this


def kprobe_trace(cpus: int, rounds: int, pages: int, seed: int = 0) -> str:
    """A trace as tracefs writes it for kprobes on kmap_high and kunmap_high (docs/workloads.md): each
    CPU's task kmaps a page shared with the other CPUs, 2 to 9 microseconds apart, and kunmaps it on the
    same CPU; some lines are other events, as in a real trace."""
    import random

    rng = random.Random(f"{seed}:trace")
    lines = ["# tracer: nop", "#", "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION"]
    t = 100.0
    for r in range(rounds):
        for cpu in range(cpus):
            page = rng.randrange(pages)
            task = f"{'dd' if cpu % 2 else 'tar'}-{1400 + cpu}"
            for event, probe in (("kmap", "kmap_high+0x0/0x170"), ("kunmap", "kunmap_high+0x0/0xa0")):
                t += rng.randrange(2, 10) / 1e6
                lines.append(f"{task:>22} [{cpu:03d}] ..... {t:12.6f}: {event}: ({probe}) "
                             f"page=0x{0xc1000000 + page * TRACE_PAGE_BYTES:08x}")
            if r % 7 == 0:
                lines.append(f"{task:>22} [{cpu:03d}] d..2. {t:12.6f}: sched_switch: prev_comm={task}")
    return "\n".join(lines) + "\n"


def _gen(kind: str, cpus: int, ring: int, kmaps: int = 150, **more: Any) -> dict[str, Any]:
    return {"machine.cpus": cpus, "machine.last_pkmap": ring, "workload.kind": kind,
            "workload.kmaps_per_cpu": kmaps, "workload.pages": 3 * ring, "workload.hot_pages": 4,
            "workload.accesses_per_kmap": 2, "workload.think": 500, "workload.hold": 200, **more}


def held_across_wrap(ring: int = 8) -> tuple[Op, ...]:
    """CPU 1 kmaps page 100, touches it, and holds it while CPU 0 cycles its own pages through the ring
    past a wrap; then touches it again (refilling the translation the wrap's flush dropped) and lets it go.
    A later wrap tears the slot down. CPU 0 then maps ``ring - 1`` new pages and holds them: one takes
    page 100's old slot. CPU 1 kmaps each of them (reusing their mappings, so no wrap of its own flushes
    its TLB) and reads it. A policy that forgets a CPU whose last kmap came before the last wrap leaves
    CPU 1 the stale translation. Further CPUs stay idle (contending for kmap_lock they would upset the
    timing the script relies on)."""
    period = 1600  # about one kmap, access, kunmap and compute(1000) of CPU 0
    churn = 5 * ring  # CPU 0 wraps the ring about 4 times
    ops: list[Op] = [{"cpu": 1, "op": "kmap", "page": 100}, {"cpu": 1, "op": "access", "page": 100, "n": 2}]
    for p in range(200, 200 + churn):
        ops += [{"cpu": 0, "op": "kmap", "page": p}, {"cpu": 0, "op": "access", "page": p, "n": 1},
                {"cpu": 0, "op": "kunmap", "page": p}, {"cpu": 0, "op": "compute", "cycles": 1000}]
    held = [500 + i for i in range(ring - 1)]
    ops += [x for p in held for x in ({"cpu": 0, "op": "kmap", "page": p}, {"cpu": 0, "op": "access", "page": p})]
    ops += [{"cpu": 0, "op": "compute", "cycles": 40 * period * ring}]
    ops += [{"cpu": 0, "op": "kunmap", "page": p} for p in reversed(held)]
    # CPU 1: the second touch after the first wrap, the kunmap before the churn ends
    ops += [{"cpu": 1, "op": "compute", "cycles": 2 * period * ring},
            {"cpu": 1, "op": "access", "page": 100, "n": 2}, {"cpu": 1, "op": "kunmap", "page": 100},
            {"cpu": 1, "op": "compute", "cycles": (churn + 2 * ring) * period}]
    for p in held:
        ops += [{"cpu": 1, "op": "kmap", "page": p}, {"cpu": 1, "op": "access", "page": p},
                {"cpu": 1, "op": "kunmap", "page": p}]
    return tuple(ops)


CASES: tuple[Case, ...] = (
    # scripts first: a failing case is shrunk, and a short script on a small ring shrinks fastest
    Case("a page held across a wrap: script, 2 CPUs, ring 4", {"machine.cpus": 2, "machine.last_pkmap": 4},
         held_across_wrap(4)),
    Case("a page held across a wrap: script, 2 CPUs, ring 8", {"machine.cpus": 2, "machine.last_pkmap": 8},
         held_across_wrap(8)),
    Case("a page held across a wrap: script, 3 CPUs (one idle), ring 16",
         {"machine.cpus": 3, "machine.last_pkmap": 16}, held_across_wrap(16)),
    # a policy that counts only kmaps and kunmaps as uses forgets a holder whose task migrated
    Case("a holder that migrated: python generator, 2 CPUs, ring 8",
         {"machine.cpus": 2, "machine.last_pkmap": 8, "workload.kind": "python",
          "workload.generator": "smpsim.check.generators:migrated"}, ring_only=True),
    Case("uniform, 1 CPU, ring 8", _gen("uniform", 1, 8)),
    Case("uniform, 2 CPUs, ring 8", _gen("uniform", 2, 8)),
    Case("zipf, 3 CPUs, ring 16", _gen("zipf", 3, 16)),
    Case("stream, 8 CPUs, ring 64", _gen("stream", 8, 64, kmaps=100)),
    Case("shared, 2 CPUs, ring 8", _gen("shared", 2, 8)),
    Case("shared, 8 CPUs, ring 16, nesting 2", _gen("shared", 8, 16, **{"workload.nesting": 2})),
    Case("shared, 32 CPUs, ring 64", _gen("shared", 32, 64, kmaps=50)),
    Case("pingpong, 2 CPUs, ring 8", _gen("pingpong", 2, 8)),
    Case("pingpong, 3 CPUs, ring 16, nesting 3", _gen("pingpong", 3, 16, **{"workload.nesting": 3})),
    # 3 CPUs holding up to 3 pages each on 8 slots: kmap sleeps on pkmap_map_wait, yet 3 x (3 - 1) < 8,
    # so a correct policy never deadlocks
    Case("sleeps on a full ring: uniform, 3 CPUs, nesting 3, ring 8",
         _gen("uniform", 3, 8, **{"workload.nesting": 3, "workload.pages": 64, "workload.think": 0,
                                       "workload.hold": 3000})),
    Case("idle CPUs: shared, 8 CPUs, 2 active, ring 16", _gen("shared", 8, 16, **{"workload.active_cpus": 2})),
    Case("python generator: neighbours, 3 CPUs, ring 8",
         _gen("python", 3, 8, **{"workload.generator": "smpsim.check.generators:neighbours"})),
    Case("kprobe trace: 4 CPUs, ring 8", {"machine.cpus": 4, "machine.last_pkmap": 8, "workload.kind": "trace",
                                          "workload.trace_page_bytes": TRACE_PAGE_BYTES},
         trace=kprobe_trace(4, 60, 24)),
    Case("distributed engine: shared, 2 CPUs, ring 8", _gen("shared", 2, 8, kmaps=40), engine="distributed"),
    Case("distributed engine: pingpong, 3 CPUs, ring 8", _gen("pingpong", 3, 8, kmaps=30),
         engine="distributed"),
)


def script_text(ops: tuple[Op, ...] | list[Op], comment: str = "") -> str:
    """A script file (docs/workloads.md): one JSON object per line, after ``# comment`` lines."""
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + "".join(json.dumps(op) + "\n" for op in ops)
