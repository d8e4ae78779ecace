"""A large, valid run directory made quickly: a real simulation tiled in virtual time.

``make_big_run(out, events=10_000_000)`` runs one small simulation with the inline engine (a few seconds),
then writes its trace again and again, each copy shifted by the run's length in virtual time and by its
event count in ``seq``, until the run holds at least ``events`` events. The parts follow the normal layout
(``trace.part_events`` rows each, zstd), so every reader, ``smpsim analyze`` and ``smpsim query`` included,
treats the result as an ordinary finished run.

Each copy is a real trace, so every per-event invariant holds (a kmap is followed by its accesses, each IPI
has a flush that sent it, ...). What tiling cannot keep is state across copies: the ring and the TLBs
restart at every copy, so the ring occupancy derived from the events climbs by the slots the base run left
at ``pkmap_count == 1`` at every seam. summary.json holds the base run's counters multiplied by the number
of copies (every counter is a sum; the ratios are recomputed by ``Counters.summary``), so the analysis of a
synthetic run can be checked against it like any other run; its ``digest`` is null (recomputing it would
cost a pass over every event), and ``synthetic`` records how the run was made.

Command line: ``python -m smpsim.analysis.synth OUT [--events N] [--seed S] [--set key=value ...]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from smpsim.config import apply_override, validate
from smpsim.trace.counters import Counters
from smpsim.trace.reader import read_table
from smpsim.trace.rundir import create_run_dir, write_summary
from smpsim.trace.writer import COMPRESSION, part_name

# The base run: the default machine (8 CPUs, 256-slot ring, linux-2.4) on a zipf workload, ~80k events.
BASE: dict = {
    "machine": {"cpus": 8, "last_pkmap": 256},
    "policy": {"name": "linux-2.4"},
    "workload": {"kind": "zipf", "pages": 8192, "kmaps_per_cpu": 1500},
}

_TIME_COLUMNS = ("t", "t_send", "t_recv", "t_ack")


def make_big_run(out: str | Path, events: int = 10_000_000, seed: int = 1, overrides: tuple[str, ...] = (),
                 part_events: int = 200_000) -> dict:
    """Write a finished run of at least ``events`` events to ``out`` (which must not hold a run);
    returns its summary."""
    data = json.loads(json.dumps(BASE))
    data["seed"] = seed
    for o in overrides:
        apply_override(data, o)
    data.setdefault("trace", {})["part_events"] = part_events
    cfg = validate(data, "synth")

    from smpsim.engines.inline import run

    from smpsim.engines.distributed import sockdir  # a killed process's directory is removed later

    with sockdir.temporary("synth") as tmp:
        base = run(cfg, Path(tmp) / "base")
        table = read_table(Path(tmp) / "base")
    if table.num_rows == 0:
        raise ValueError("the base run recorded no events")
    n = table.num_rows
    copies = -(-events // n)
    shift = base.summary["t_end"] + 1  # each copy starts after the previous one ended

    out = create_run_dir(out, cfg)
    trace_dir = out / "trace"
    trace_dir.mkdir(exist_ok=True)
    parts = 0
    pending: list[pa.Table] = []
    pending_rows = 0

    def write(rows: pa.Table) -> None:
        nonlocal parts
        tmp = trace_dir / f".{part_name(parts)}.tmp"
        pq.write_table(rows, tmp, compression=COMPRESSION)
        tmp.replace(trace_dir / part_name(parts))
        parts += 1

    for k in range(copies):
        tile = table
        if k:
            tile = tile.set_column(0, "seq", pc.add(table.column("seq"), k * n))
            for name in _TIME_COLUMNS:
                i = tile.schema.get_field_index(name)
                tile = tile.set_column(i, name, pc.add(table.column(name), k * shift))
        pending.append(tile)
        pending_rows += n
        while pending_rows >= part_events:
            buf = pa.concat_tables(pending)
            write(buf.slice(0, part_events))
            rest = buf.slice(part_events)
            pending, pending_rows = [rest], rest.num_rows
    if pending_rows:
        write(pa.concat_tables(pending))

    summary = dict(base.summary)
    summary.update(_scaled_counters(base.summary, copies, (copies - 1) * shift + base.summary["t_end"]))
    summary["digest"] = None
    summary["trace"] = {"enabled": True, "events": copies * n, "parts": parts, "part_events": part_events,
                        "digest": None}
    summary["synthetic"] = {"base_events": n, "copies": copies, "time_shift": shift,
                            "base_digest": base.summary["digest"]}
    write_summary(out, summary)
    return summary


def _scaled_counters(summary: dict, k: int, t_end: int) -> dict:
    """The base run's counters times k (every counter is a sum), through Counters.summary for the ratios."""
    c = Counters(summary["cpus"])
    c.c = Counter({key: v * k for key, v in summary["counters"].items() if key != "ipis_per_1000_kmaps"})
    c.scopes = Counter({key: v * k for key, v in summary["flushes_by_scope"].items()})
    for p, row in zip(c.per_cpu, summary["per_cpu"]):
        p.update({key: v * k for key, v in row.items() if key not in ("cpu", "hit_rate")})
    c.events, c.t_end = summary["events"] * k, t_end
    return c.summary()  # tlb_hits / tlb_misses and the ratios derived from the scaled sums


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smpsim.analysis.synth", description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="run directory to create")
    ap.add_argument("--events", type=int, default=10_000_000, help="at least this many events (default 10M)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the base run's config")
    ap.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args(argv)
    if args.force and args.out.exists():
        shutil.rmtree(args.out)
    t0 = time.perf_counter()
    s = make_big_run(args.out, args.events, args.seed, tuple(args.overrides))
    print(f"{args.out}: {s['events']:,} events in {s['trace']['parts']} parts "
          f"({s['synthetic']['copies']} copies of a {s['synthetic']['base_events']:,}-event run) "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
