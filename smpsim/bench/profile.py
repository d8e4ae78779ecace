"""Where a distributed run's time goes, per process: cProfile of the coordinator's loop and of every CPU
process's, and each process's user/sys CPU time from getrusage.

The CPU processes are forked from the benchmark job, so wrapping `cpu_node.cpu_main` here profiles them
without a hook in the engine. Profiling slows Python code more than system calls: the shares say where
the time goes, the unprofiled figures of `smpsim bench` say how much there is.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import resource
import shutil
import tempfile
import time
from pathlib import Path

TOP = 12  # functions listed per process


def _rusage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _profiled(fn, out: Path, name):
    """fn, profiled: its stats go to out/NAME.prof and the process's user/sys seconds to out/NAME.json."""
    def wrapper(*args, **kw):
        u0, s0 = _rusage()
        main0 = time.thread_time()
        prof = cProfile.Profile(time.thread_time)  # CPU time of this thread: waiting in poll is not cost
        prof.enable()
        try:
            return fn(*args, **kw)
        finally:
            prof.disable()
            u1, s1 = _rusage()
            # the other threads (ZeroMQ's I/O thread): the process's time less this thread's
            others = (u1 + s1 - u0 - s0) - (time.thread_time() - main0)
            label = name(args, kw)
            prof.dump_stats(out / f"{label}.prof")
            (out / f"{label}.json").write_text(json.dumps({"user_s": u1 - u0, "sys_s": s1 - s0,
                                                           "other_threads_s": others}))
    return wrapper


# Where a function's own time counts: the first area whose marker is in its file's path (or, for a
# built-in, its name); the rest is "other" (builtins such as len, the standard library)
# (compiled code without profiling hooks, msgpack's and pyzmq's Cython, counts in the function calling it)
AREAS = (("ZeroMQ (pyzmq)", "/zmq/"), ("msgpack", "/msgpack/"),
         ("wire (nodes, protocol)", "/engines/distributed/"),
         ("engine core", "/engines/core.py"), ("model", "/smpsim/model/"),
         ("trace (recorder, merge, write)", "/smpsim/trace/"))


def _area(path: str, func: str) -> str:
    # a built-in such as "<method 'send' of 'zmq.backend.cython._zmq.Socket' objects>": by its module
    where = "/" + func.replace("'", "").replace(" ", "/").replace(".", "/") + "/" if path == "~" else path
    for name, marker in AREAS:
        if marker in where:
            return name
    return "other"


def _summary(files: list[Path], kmaps: int, top: int) -> dict:
    """Top functions by own time over these profiles (summed), per kmap; and user/sys per kmap."""
    stats = pstats.Stats(*map(str, files))
    total = stats.total_tt or 1e-9
    rows = []
    areas: dict[str, float] = {}
    for (path, line, func), (_cc, ncalls, tt, ct, _callers) in stats.stats.items():
        area = _area(path, func)
        areas[area] = areas.get(area, 0.0) + tt / total
        where = "~" if path == "~" else f"{Path(path).parent.name}/{Path(path).name}:{line}"
        rows.append({"function": f"{func} ({where})" if where != "~" else func, "self_share": tt / total,
                     "self_us_per_kmap": tt * 1e6 / kmaps, "cum_us_per_kmap": ct * 1e6 / kmaps,
                     "calls_per_kmap": ncalls / kmaps})
    rows.sort(key=lambda r: -r["self_share"])
    usage = [json.loads(f.with_suffix(".json").read_text()) for f in files]
    return {"processes": len(files),
            "user_us_per_kmap": sum(u["user_s"] for u in usage) * 1e6 / kmaps,
            "sys_us_per_kmap": sum(u["sys_s"] for u in usage) * 1e6 / kmaps,
            # ZeroMQ's I/O thread (the socket work proper)
            "io_thread_us_per_kmap": sum(u["other_threads_s"] for u in usage) * 1e6 / kmaps,
            "profiled_us_per_kmap": total * 1e6 / kmaps,
            "areas": dict(sorted(areas.items(), key=lambda kv: -kv[1])), "top": rows[:top]}


def job_profile(cpus: int, kmaps_total: int, top: int = TOP) -> dict:
    """A distributed run (as the bench's distributed job runs it) with every process profiled."""
    from smpsim.bench.configs import bench_config
    from smpsim.engines.distributed import coordinator_node, cpu_node
    from smpsim.engines.distributed.launch import run_distributed
    tmp = Path(tempfile.mkdtemp(prefix="smpsim-bench-profile-"))
    out = tmp / "profiles"
    out.mkdir()
    cpu_main, coord_run = cpu_node.cpu_main, coordinator_node.CoordinatorNode.run
    cpu_node.cpu_main = _profiled(cpu_main, out, lambda a, kw: f"cpu-{a[1]}")
    coordinator_node.CoordinatorNode.run = _profiled(coord_run, out, lambda a, kw: "coordinator")
    try:
        res = run_distributed(bench_config(cpus, kmaps_total, True), tmp / "run", "ipc")
        kmaps = res.summary["counters"]["kmaps"]
        cpu_files = sorted(out.glob("cpu-*.prof"))
        t = res.timing
        return {"cpus": cpus, "kmaps": kmaps,
                # how much the coordinator gets to batch: messages per turn that found any, per Core.step
                "messages_in_per_wakeup": t["messages_in"] / max(1, t["wakeups"]),
                "messages_in_per_step": t["messages_in"] / max(1, t["steps"]),
                "coordinator": _summary([out / "coordinator.prof"], kmaps, top),
                "cpu_processes": _summary(cpu_files, kmaps, top)}
    finally:
        cpu_node.cpu_main, coordinator_node.CoordinatorNode.run = cpu_main, coord_run
        shutil.rmtree(tmp, ignore_errors=True)


def render(prof: dict) -> str:
    lines = [f"where the time goes: distributed engine, {prof['cpus']} CPUs, {prof['kmaps']:,} kmaps "
             "(cProfile of the main thread's CPU time; user/sys from getrusage of the profiled run; per kmap)",
             f"  the coordinator took {prof['messages_in_per_wakeup']:.2f} messages per wake-up and "
             f"{prof['messages_in_per_step']:.2f} per Core.step"]
    for key, title in (("coordinator", "coordinator"), ("cpu_processes", "CPU processes, all together")):
        p = prof[key]
        lines.append(f"  {title}: user {p['user_us_per_kmap']:.0f} µs + sys {p['sys_us_per_kmap']:.0f} µs "
                     f"per kmap, of which ZeroMQ's I/O thread {p['io_thread_us_per_kmap']:.0f} µs "
                     f"({p['processes']} process{'es' if p['processes'] != 1 else ''})")
        lines.append("    by area: " + ", ".join(f"{a} {100 * v:.0f}%" for a, v in p["areas"].items()))
        lines.append(f"    {'own time':>8s} {'µs/kmap':>8s} {'calls/kmap':>10s}  function")
        for r in p["top"]:
            lines.append(f"    {100 * r['self_share']:7.1f}% {r['self_us_per_kmap']:8.1f} "
                         f"{r['calls_per_kmap']:10.2f}  {r['function']}")
    return "\n".join(lines)
