"""``smpsim bench``: the engines measured against this machine's limits, in one run."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from smpsim.bench.runner import STEADY_KMAPS
from smpsim.cli.common import EXIT_RUN_FAILED, fail, handle_errors, is_tty


@handle_errors
def bench(
    reps: Annotated[int, typer.Option("--reps", min=1, help="repetitions of each figure (median, min, max)")] = 3,
    kmaps: Annotated[int, typer.Option("--kmaps", min=1, help="kmaps per run, spread over its CPUs")] = 12_000,
    steady_kmaps: Annotated[int, typer.Option(
        "--steady-kmaps", min=0, help="kmaps of the single-process engine's steady-state run, at the first CPU "
                                      "count (0: skip)")] = STEADY_KMAPS,
    cpus: Annotated[str, typer.Option("--cpus", help="CPU counts to measure, comma-separated")] = "8,64",
    events: Annotated[int, typer.Option("--events", min=0, help="events in the synthetic trace for analyze (0: skip)")] = 10_000_000,
    rss_parts: Annotated[int, typer.Option(
        "--rss-parts", min=0, help="the long run of the RSS figures stops after this many trace parts (0: skip)")] = 4,
    profile: Annotated[bool, typer.Option(
        "--profile", help="also profile a distributed run at each CPU count: where each process's time goes")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="one repetition, small runs: a smoke test, not figures")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as one JSON document")] = False,
) -> None:
    """Measure the ceiling (bare ZeroMQ ping-pong), both engines, start-up, the trace and memory."""
    from smpsim.bench.runner import BenchError, measure, render

    try:
        counts = tuple(int(x) for x in cpus.split(",") if x.strip())
    except ValueError:
        fail(f"--cpus {cpus!r}: give CPU counts like 8,64")
    if not counts or min(counts) < 1:
        fail(f"--cpus {cpus!r}: give CPU counts like 8,64")
    if quick:
        # (the RSS runs keep their lengths: a shorter short run would never fill a trace part)
        reps, kmaps, events, rss_parts = 1, min(kmaps, 1500), min(events, 200_000), min(rss_parts, 2)
        steady_kmaps = min(steady_kmaps, 20_000)
    say = (lambda m: print(f"bench: {m}", file=sys.stderr, flush=True)) if is_tty() or not as_json else None
    try:
        result = measure(reps=reps, kmaps_total=kmaps, cpus=counts, trace_events=events, progress=say,
                         rss_parts=rss_parts, profile=profile, steady_kmaps=steady_kmaps)
    except BenchError as e:
        fail(str(e), EXIT_RUN_FAILED)
    print(json.dumps(result, indent=2) if as_json else render(result))
