"""One benchmark job per process, so that each peak RSS and timing is its own.

`python -m smpsim.bench.jobs '{"job": "inline", ...}'` prints one JSON object: the job's figures.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from smpsim.bench.configs import bench_config


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> tuple[float, float, float, float]:
    """user and sys seconds of this process and of its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime, me.ru_stime, kids.ru_utime, kids.ru_stime


def _us_per_kmap(before: tuple, after: tuple, kmaps: int) -> list[float]:
    return [(b - a) * 1e6 / kmaps for a, b in zip(before, after)]


def job_inline(cpus: int, kmaps_total: int, trace: bool = True) -> dict:
    """A run of the single-process engine. `overhead_fraction`: the share of the job (from loading the
    engine to the run's end) not spent running the model: imports, start-up and the final trace write."""
    t0 = time.perf_counter()
    from smpsim.engines.inline import run
    tmp = Path(tempfile.mkdtemp(prefix="smpsim-bench-"))
    cfg = bench_config(cpus, kmaps_total, trace)
    c0 = _cpu_s()
    try:
        res = run(cfg, tmp / "run")
        whole = time.perf_counter() - t0
    finally:
        c1 = _cpu_s()
        shutil.rmtree(tmp, ignore_errors=True)
    t = res.timing
    kmaps = res.summary["counters"]["kmaps"]
    user, sys_, _, _ = _us_per_kmap(c0, c1, kmaps)
    from smpsim.native import path
    return {"kmaps": kmaps, "seconds": t["seconds"], "kmaps_per_s": kmaps / t["seconds"],
            "cpu_us_per_kmap": user + sys_, "events": res.summary["events"], "digest": res.summary["digest"],
            "rounds_per_kmap": t["rounds"] / kmaps, "whole_s": whole,
            "overhead_fraction": 1 - (t["seconds"] - t["startup_s"] - t["close_s"]) / whole,
            "maxrss_mb": _maxrss_mb(), "path": path()["path"]}


def job_distributed(cpus: int, kmaps_total: int) -> dict:
    from smpsim.engines.distributed.launch import run_distributed
    tmp = Path(tempfile.mkdtemp(prefix="smpsim-bench-"))
    cfg = bench_config(cpus, kmaps_total, True)
    c0 = _cpu_s()
    try:
        res = run_distributed(cfg, tmp / "run", "ipc")
    finally:
        c1 = _cpu_s()  # the CPU processes have been waited for: their time is in RUSAGE_CHILDREN
        shutil.rmtree(tmp, ignore_errors=True)
    t = res.timing
    kmaps = res.summary["counters"]["kmaps"]
    run_s = t["seconds"] - t["startup_s"]
    user, sys_, cpus_user, cpus_sys = _us_per_kmap(c0, c1, kmaps)
    return {"kmaps": kmaps, "seconds": t["seconds"], "startup_s": t["startup_s"], "run_s": run_s,
            "kmaps_per_s": kmaps / run_s, "messages_per_kmap": (t["messages_in"] + t["messages_out"]) / kmaps,
            "cpu_us_per_kmap": user + sys_ + cpus_user + cpus_sys,
            "coordinator_user_us_per_kmap": user, "coordinator_sys_us_per_kmap": sys_,
            "cpus_user_us_per_kmap": cpus_user, "cpus_sys_us_per_kmap": cpus_sys,
            "coordinator_maxrss_mb": t["coordinator_maxrss_kb"] / 1024,
            "cpu_maxrss_mb": (t["cpu_maxrss_kb"] or 0) / 1024, "digest": res.summary["digest"]}


def _peak_rss_kb(pid: int) -> int:
    """The peak RSS (VmHWM) of a live process so far, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def job_rss(engine: str, cpus: int, kmaps_per_cpu: int, stop_parts: int | None = None,
            timeout: float = 1200.0) -> dict:
    """Peak RSS of the command a user runs: `smpsim run` (inline) or `smpsim launch` (distributed: the
    coordinator and the largest CPU process), with trace recording on. With `stop_parts`, the run is
    interrupted (SIGINT to its process group, as Ctrl-C does) once it has written that many trace parts:
    the memory of a long run so far, measured by how far it got rather than by wall time.
    Peaks are the kernel's high-water marks (VmHWM), read every 50 ms while the processes live."""
    import os
    import signal
    import subprocess

    import psutil
    tmp = Path(tempfile.mkdtemp(prefix="smpsim-bench-"))
    sets = ["--set", f"workload.kmaps_per_cpu={kmaps_per_cpu}", "--out", str(tmp / "run")]
    cmd = ([sys.executable, "-m", "smpsim", "run", "--set", f"machine.cpus={cpus}"] if engine == "inline"
           else [sys.executable, "-m", "smpsim", "launch", "--cpus", str(cpus)]) + sets
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    root = psutil.Process(proc.pid)
    peak_root = peak_child = 0
    t0 = time.monotonic()
    interrupted = False
    try:
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            if stop_parts and not interrupted and _parts(tmp / "run") >= stop_parts:
                os.killpg(proc.pid, signal.SIGINT)
                interrupted = True
            if elapsed > timeout:
                raise RuntimeError(f"{' '.join(cmd[2:])} took longer than {timeout:.0f} s")
            peak_root = max(peak_root, _peak_rss_kb(proc.pid))
            try:
                kids = root.children(recursive=True)
            except psutil.Error:
                kids = []
            for k in kids:
                peak_child = max(peak_child, _peak_rss_kb(k.pid))
            time.sleep(0.05)
        err = proc.stderr.read().decode(errors="replace").strip()
        parts = _parts(tmp / "run")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode not in ((0, 130) if interrupted else (0,)):
        raise RuntimeError(f"{' '.join(cmd[2:])} exited with {proc.returncode}: {err[-300:]}")
    return {"maxrss_mb": peak_root / 1024, "child_maxrss_mb": peak_child / 1024,
            "seconds": time.monotonic() - t0, "interrupted": interrupted, "parts": parts}


def _parts(run: Path) -> int:
    from smpsim.trace.writer import PART_PREFIX
    try:
        return sum(1 for p in (run / "trace").iterdir() if p.name.startswith(PART_PREFIX))
    except OSError:
        return 0


def job_pingpong(clients: int, round_trips: int) -> dict:
    from smpsim.bench.ceiling import pingpong
    c0 = _cpu_s()
    out = pingpong(clients, max(1, round_trips // clients))
    c1 = _cpu_s()  # the clients have been waited for: their time is in RUSAGE_CHILDREN
    out["cpu_us_per_round_trip"] = sum(_us_per_kmap(c0, c1, out["round_trips"]))
    return out


def job_synth(events: int, out: str) -> dict:
    from smpsim.analysis.synth import make_big_run
    t0 = time.perf_counter()
    make_big_run(Path(out), events)
    return {"seconds": time.perf_counter() - t0, "events": events}


def job_analyze(run: str) -> dict:
    """`smpsim analyze RUN --json` as a user runs it: wall time and the analyzing process's peak RSS."""
    import subprocess
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "smpsim", "analyze", run, "--json"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"smpsim analyze failed: {r.stderr.strip()[-300:]}")
    return {"seconds": seconds, "maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def job_profile(cpus: int, kmaps_total: int, top: int | None = None) -> dict:
    from smpsim.bench.profile import TOP, job_profile as profile
    return profile(cpus, kmaps_total, top or TOP)


JOBS = {"inline": job_inline, "profile": job_profile, "distributed": job_distributed, "pingpong": job_pingpong,
        "synth": job_synth, "analyze": job_analyze, "rss": job_rss}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    name = spec.pop("job")
    t0 = time.perf_counter()
    out = JOBS[name](**spec)
    out["wall_s"] = time.perf_counter() - t0
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
