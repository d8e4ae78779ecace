"""`smpsim bench`: every figure measured in one run on this machine, each the median of several repetitions
(with min and max), the compared jobs interleaved so that a noisy neighbour hits both alike."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from smpsim import native


class BenchError(Exception):
    """A benchmark job that failed or overran its timeout: the message names the job."""


def run_job(spec: dict, timeout: float, env: dict | None = None) -> dict:
    """Run one job in a fresh process (with ``env`` added to the environment); its JSON result."""
    try:
        r = subprocess.run([sys.executable, "-m", "smpsim.bench.jobs", json.dumps(spec)], capture_output=True,
                           text=True, timeout=timeout, env={**os.environ, **env} if env else None)
    except subprocess.TimeoutExpired:
        raise BenchError(f"benchmark job {spec} took longer than {timeout:.0f} s") from None
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"benchmark job {spec['job']} failed: {tail}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _stat(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# Memory at two run lengths (kmaps per CPU, 8 CPUs): the short run complete, the long one until it has
# written rss_parts trace parts (of 200,000 events; the short run writes about 2).
RSS_CPUS, RSS_SHORT, RSS_LONG = 8, 10_000, 1_000_000
# The steady-state run (kmaps, at the first CPU count): long enough that imports, start-up and the final
# trace write are a small share of it (the bench reports that share), so its rate is the model's.
STEADY_KMAPS = 1_000_000  # about 3% overhead at 100,000 kmaps/s, most of it imports


def measure(reps: int = 3, kmaps_total: int = 12_000, cpus: tuple[int, ...] = (8, 64),
            trace_events: int = 10_000_000, round_trips: int = 16_000,
            progress: Callable[[str], None] | None = None, timeout: float = 1800.0,
            rss_short: int = RSS_SHORT, rss_long: int = RSS_LONG, rss_parts: int = 4,
            profile: bool = False, steady_kmaps: int = STEADY_KMAPS) -> dict:
    say = progress or (lambda _m: None)
    samples: dict[str, list[float]] = {}

    def add(key: str, value: float | None) -> None:
        if value is not None:
            samples.setdefault(key, []).append(value)

    digests: dict[int, set[str]] = {}
    paths: set[str] = set()  # the single-process engine's: compiled or pure (smpsim/native.py)
    for rep in range(reps):
        rate: dict[int, float] = {}
        # One client: a chain of round trips, each waiting for the one before, as the engine's critical path is
        say(f"rep {rep + 1}/{reps}: ping-pong, 1 client")
        chain = run_job({"job": "pingpong", "clients": 1, "round_trips": max(1, round_trips // 4)}, timeout)["rate"]
        add("ceiling_rt_per_s@1", chain)
        for n in cpus:
            say(f"rep {rep + 1}/{reps}: ping-pong ceiling, {n} clients")
            pp = run_job({"job": "pingpong", "clients": n, "round_trips": round_trips}, timeout)
            add(f"ceiling_rt_per_s@{n}", pp["rate"])
            add(f"ceiling_cpu_us_per_round_trip@{n}", pp["cpu_us_per_round_trip"])
            say(f"rep {rep + 1}/{reps}: distributed engine, {n} CPUs")
            d = run_job({"job": "distributed", "cpus": n, "kmaps_total": kmaps_total}, timeout)
            add(f"distributed_kmaps_per_s@{n}", d["kmaps_per_s"])
            add(f"messages_per_kmap@{n}", d["messages_per_kmap"])
            add(f"startup_s@{n}", d["startup_s"])
            add(f"coordinator_maxrss_mb@{n}", d["coordinator_maxrss_mb"])
            add(f"cpu_maxrss_mb@{n}", d["cpu_maxrss_mb"])
            add(f"ratio_distributed_to_ceiling@{n}", d["kmaps_per_s"] / pp["rate"])
            for k in ("cpu_us_per_kmap", "coordinator_user_us_per_kmap", "coordinator_sys_us_per_kmap",
                      "cpus_user_us_per_kmap", "cpus_sys_us_per_kmap"):
                add(f"distributed_{k}@{n}", d[k])
            rate[n] = d["kmaps_per_s"]
            say(f"rep {rep + 1}/{reps}: single-process engine, {n} CPUs")
            i = run_job({"job": "inline", "cpus": n, "kmaps_total": kmaps_total, "trace": True}, timeout)
            add(f"inline_kmaps_per_s@{n}", i["kmaps_per_s"])
            add(f"ratio_inline_to_distributed@{n}", i["kmaps_per_s"] / d["kmaps_per_s"])
            add(f"inline_cpu_us_per_kmap@{n}", i["cpu_us_per_kmap"])
            add(f"ratio_cpu_per_kmap_distributed_to_inline@{n}", d["cpu_us_per_kmap"] / i["cpu_us_per_kmap"])
            # The least that ratio can be with one bare round trip per kmap on top of the model's work
            add(f"ratio_cpu_floor_one_round_trip_to_inline@{n}",
                (pp["cpu_us_per_round_trip"] + i["cpu_us_per_kmap"]) / i["cpu_us_per_kmap"])
            # The run's critical path: rounds of the single-process engine per kmap, each waiting on the one
            # before; with each a bare one-client round trip and the model free, the most the ratio can be.
            add(f"critical_path_round_trips_per_kmap@{n}", i["rounds_per_kmap"])
            add(f"ratio_bound_critical_path_to_ceiling@{n}", chain / i["rounds_per_kmap"] / pp["rate"])
            digests.setdefault(n, set()).update((d["digest"], i["digest"]))
        if len(cpus) > 1:  # how throughput holds up from the fewest to the most CPUs measured
            add(f"ratio_throughput_{max(cpus)}_to_{min(cpus)}", rate[max(cpus)] / rate[min(cpus)])
        say(f"rep {rep + 1}/{reps}: trace on vs off")
        on = run_job({"job": "inline", "cpus": cpus[0], "kmaps_total": kmaps_total, "trace": True}, timeout)
        off = run_job({"job": "inline", "cpus": cpus[0], "kmaps_total": kmaps_total, "trace": False}, timeout)
        add("inline_trace_on_kmaps_per_s", on["kmaps_per_s"])
        add("inline_trace_on_overhead_fraction", on["overhead_fraction"])
        add("inline_trace_off_kmaps_per_s", off["kmaps_per_s"])
        add("trace_cost_fraction", 1 - on["kmaps_per_s"] / off["kmaps_per_s"])
        # the same in CPU time (all threads), which a busy machine disturbs less than wall time
        add("trace_cost_cpu_fraction", 1 - off["cpu_us_per_kmap"] / on["cpu_us_per_kmap"])
        paths.add(on["path"])
        if steady_kmaps:
            say(f"rep {rep + 1}/{reps}: single-process engine in steady state, {cpus[0]} CPUs x "
                f"{steady_kmaps:,} kmaps")
            st = run_job({"job": "inline", "cpus": cpus[0], "kmaps_total": steady_kmaps, "trace": True}, timeout)
            add("inline_steady_kmaps_per_s", st["kmaps_per_s"])
            add("inline_steady_cpu_us_per_kmap", st["cpu_us_per_kmap"])
            add("inline_steady_overhead_fraction", st["overhead_fraction"])
        if on["path"] == "compiled":  # the same runs on the pure-Python path (smpsim/native.py)
            say(f"rep {rep + 1}/{reps}: pure Python, trace on vs off")
            pure = {native.PURE_ENV: "1"}
            p_on = run_job({"job": "inline", "cpus": cpus[0], "kmaps_total": kmaps_total, "trace": True}, timeout, pure)
            p_off = run_job({"job": "inline", "cpus": cpus[0], "kmaps_total": kmaps_total, "trace": False}, timeout, pure)
            add("inline_pure_trace_on_kmaps_per_s", p_on["kmaps_per_s"])
            add("inline_pure_trace_off_kmaps_per_s", p_off["kmaps_per_s"])
            add("ratio_inline_compiled_to_pure", on["kmaps_per_s"] / p_on["kmaps_per_s"])
            digests.setdefault(cpus[0], set()).update((p_on["digest"], p_off["digest"]))
        if rss_parts and rep == 0:  # memory hardly varies between repetitions: measured once
            for engine in ("inline", "distributed"):
                peaks = {}
                for length, k, parts in (("short", rss_short, None), ("long", rss_long, rss_parts)):
                    say(f"rep {rep + 1}/{reps}: peak RSS, {engine} engine, {RSS_CPUS} CPUs x {k:,} kmaps"
                        + (f", interrupted after {parts} trace parts" if parts else ""))
                    r = run_job({"job": "rss", "engine": engine, "cpus": RSS_CPUS, "kmaps_per_cpu": k,
                                 "stop_parts": parts}, timeout)
                    peaks[length] = r["maxrss_mb"]
                    if engine == "inline":
                        add(f"rss_inline_mb@{length}", r["maxrss_mb"])
                    else:
                        add(f"rss_coordinator_mb@{length}", r["maxrss_mb"])
                        add(f"rss_cpu_mb@{length}", r["child_maxrss_mb"])
                if engine == "inline":
                    add("rss_inline_long_to_short", peaks["long"] / peaks["short"])
    if trace_events:
        tmp = Path(tempfile.mkdtemp(prefix="smpsim-bench-trace-"))
        try:
            say(f"writing a synthetic trace of {trace_events:,} events")
            run_job({"job": "synth", "events": trace_events, "out": str(tmp / "run")}, timeout)
            for rep in range(reps):
                say(f"rep {rep + 1}/{reps}: analyze --json on {trace_events:,} events")
                a = run_job({"job": "analyze", "run": str(tmp / "run")}, timeout)
                add("analyze_s", a["seconds"])
                add("analyze_maxrss_mb", a["maxrss_mb"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    profiles = []
    if profile:  # once per CPU count: profiling slows the run, so none of its figures is a sample above
        for n in cpus:
            say(f"profile: distributed engine, {n} CPUs")
            profiles.append(run_job({"job": "profile", "cpus": n, "kmaps_total": kmaps_total}, timeout))
    figures = {k: _stat(v) for k, v in samples.items()}
    lengths = {"events": f"{trace_events:,}", "short": f"{rss_short:,}", "long": f"{rss_long:,}",
               "parts": rss_parts, "cpus": RSS_CPUS, "steady": f"{steady_kmaps:,}", "steady_cpus": cpus[0]}
    return {"figures": figures, "targets": check_targets(figures, lengths), "profiles": profiles,
            "digests_equal": {str(n): len(d) == 1 for n, d in digests.items()},
            "setup": {"inline_path": sorted(paths), "reps": reps, "kmaps_total": kmaps_total, "cpus": list(cpus),
                      "trace_events": trace_events, "rss_cpus": RSS_CPUS, "rss_short_kmaps_per_cpu": rss_short,
                      "rss_long_kmaps_per_cpu": rss_long, "rss_long_parts": rss_parts,
                      "steady_kmaps": steady_kmaps}}


# (figure, comparison, bound, what the issue asks)
TARGETS = [
    ("ratio_distributed_to_ceiling@8", ">=", 0.5, "distributed engine at 8 CPUs >= 0.5x ceiling at N=8"),
    ("ratio_distributed_to_ceiling@64", ">=", 0.3, "distributed engine at 64 CPUs >= 0.3x ceiling at N=64"),
    ("messages_per_kmap@8", "<=", 2.5, "distributed engine at 8 CPUs: <= 2.5 messages per kmap"),
    ("ratio_cpu_per_kmap_distributed_to_inline@8", "<=", 2.5,
     "CPU time per kmap (user+sys, all processes) at 8 CPUs <= 2.5x the single-process engine's"),
    ("ratio_throughput_64_to_8", ">=", 0.8, "distributed throughput at 64 CPUs >= 0.8x that at 8"),
    ("inline_trace_on_kmaps_per_s", ">=", 100_000, "single-process engine >= 100,000 kmaps/s, trace on"),
    ("inline_steady_kmaps_per_s", ">=", 100_000,
     "single-process engine in steady state ({steady_cpus} CPUs x {steady} kmaps) >= 100,000 kmaps/s, trace on"),
    ("inline_steady_overhead_fraction", "<", 0.05,
     "steady-state run: imports, start-up and the final trace write < 5% of it (else a larger --steady-kmaps)"),
    ("trace_cost_fraction", "<=", 0.10, "recording the trace costs <= 10%"),
    ("startup_s@64", "<=", 3.0, "64 CPUs joined within 3 s of launch"),
    ("cpu_maxrss_mb@64", "<", 60.0, "a CPU process's RSS < 60 MB"),
    ("analyze_s", "<", 20.0, "analyze --json on {events} events < 20 s (the target is for 10M)"),
    ("analyze_maxrss_mb", "<", 2048.0, "analyze peak RSS < 2 GB"),
    ("rss_inline_long_to_short", "<=", 1.25,
     "smpsim run, {cpus} CPUs: peak RSS with {long} kmaps/CPU (until {parts} trace parts) <= 1.25x that with {short}"),
    ("rss_inline_mb@long", "<", 300.0, "smpsim run, {cpus} CPUs x {long} kmaps (until {parts} trace parts): peak RSS < 300 MB"),
    ("rss_coordinator_mb@short", "<", 250.0, "launch, {cpus} CPUs x {short} kmaps: coordinator peak RSS < 250 MB"),
    ("rss_coordinator_mb@long", "<", 250.0,
     "launch, {cpus} CPUs x {long} kmaps (until {parts} trace parts): coordinator peak RSS < 250 MB"),
    ("rss_cpu_mb@short", "<", 60.0, "launch, {cpus} CPUs x {short} kmaps: a CPU process's peak RSS < 60 MB"),
    ("rss_cpu_mb@long", "<", 60.0,
     "launch, {cpus} CPUs x {long} kmaps (until {parts} trace parts): a CPU process's peak RSS < 60 MB"),
]


# Target figure -> the figure that says how far this machine lets it go, and how to say so.
LIMITS = {
    **{f"ratio_distributed_to_ceiling@{n}": (f"ratio_bound_critical_path_to_ceiling@{n}",
                                             "at most {:.3f} with this run's critical path of round trips")
       for n in (8, 64)},
    "ratio_cpu_per_kmap_distributed_to_inline@8": ("ratio_cpu_floor_one_round_trip_to_inline@8",
                                                   "at least {:.3f} with one bare round trip per kmap"),
}


def check_targets(figures: dict, lengths: dict) -> list[dict]:
    out = []
    for key, op, bound, what in TARGETS:
        f = figures.get(key)
        if f is None:
            continue
        v = f["median"]
        met = v >= bound if op == ">=" else v <= bound if op == "<=" else v < bound
        row = {"figure": key, "median": v, "target": f"{op} {bound:g}", "met": met, "what": what.format(**lengths)}
        limit_key, say = LIMITS.get(key, (None, ""))
        if limit_key in figures:
            row["limit"] = say.format(figures[limit_key]["median"])
        out.append(row)
    return out


def render(result: dict) -> str:
    """A plain table (the CLI shows it with rich on a terminal)."""
    lines = [f"{'figure':44s} {'median':>12s} {'min':>12s} {'max':>12s}"]
    for k, f in result["figures"].items():
        lines.append(f"{k:44s} {f['median']:12.3f} {f['min']:12.3f} {f['max']:12.3f}")
    lines.append("")
    for t in result["targets"]:
        limit = f"; {t['limit']}" if "limit" in t else ""
        lines.append(f"{'met ' if t['met'] else 'MISS'}  {t['what']}: {t['median']:.3f} (target {t['target']}{limit})")
    f = result["figures"]
    if "inline_steady_kmaps_per_s" in f and "inline_trace_on_kmaps_per_s" in f:
        setup = result["setup"]
        lines.append(f"      single-process engine, trace on, {setup['cpus'][0]} CPUs: "
                     f"{f['inline_trace_on_kmaps_per_s']['median']:,.0f} kmaps/s over {setup['kmaps_total']:,} kmaps "
                     f"({100 * f['inline_trace_on_overhead_fraction']['median']:.1f}% imports, start-up and final write), "
                     f"{f['inline_steady_kmaps_per_s']['median']:,.0f} kmaps/s in steady state over "
                     f"{setup['steady_kmaps']:,} ({100 * f['inline_steady_overhead_fraction']['median']:.1f}%)")
    for n, ok in result["digests_equal"].items():
        lines.append(f"{'ok  ' if ok else 'FAIL'}  digest(distributed) == digest(inline) at {n} CPUs"
                     " (inline: compiled and pure Python, where compiled)")
    lines.append(f"      single-process engine ran: {', '.join(result['setup'].get('inline_path', []))}")
    if result.get("profiles"):
        from smpsim.bench.profile import render as render_profile
        lines += ["", *(render_profile(p) for p in result["profiles"])]
    return "\n".join(lines)
