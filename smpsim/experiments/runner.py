"""Running configs: the engine a config names, provenance.json, and sweeps on a local process pool.

A sweep point runs in a worker process of a pool (fork: workers start in milliseconds and inherit the
loaded modules). A point whose run directory already holds a finished run of the same config is not run
again, so an interrupted sweep resumes where it stopped. On SIGINT or SIGTERM the sweep process cancels the
points not started and asks its workers to stop theirs (SIGUSR1; a Ctrl-C on a terminal reaches them
anyway): each writes what its point ran, as `smpsim run` would, and runs no further point. Workers ignore
Ctrl-C between points and die with the sweep process, so none outlives it.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smpsim.config import Config, ConfigError
from smpsim.engines import stopping
from smpsim.experiments.provenance import FINISHED, recorded
from smpsim.experiments.sweep import Experiment, Point
from smpsim.model.errors import ModelError
from smpsim.trace.errors import TraceError
from smpsim.trace.rundir import (CONFIG_NAME, LOGS_DIR, PROVENANCE_NAME, SUMMARY_NAME, TRACE_DIR,
                                 read_provenance)

RUN_ITEMS = {CONFIG_NAME, SUMMARY_NAME, PROVENANCE_NAME, TRACE_DIR, LOGS_DIR}


class SweepError(Exception):
    """The sweep itself broke (a worker process died); the message says what to do."""


def run_config(cfg: Config, run_dir: Path | None, progress: Callable[[dict], None] | None = None,
               transport: str | None = None, sweep: dict[str, Any] | None = None, engine: str | None = None,
               respawn=None):
    """Run cfg with the engine it names (or ``engine``) into run_dir, then write run_dir/provenance.json.
    respawn: the distributed engine's RespawnPolicy (None: its default)."""
    engine = engine or cfg.run.engine
    try:
        if engine == "distributed":
            from smpsim.engines.distributed.launch import run_distributed
            return recorded(cfg, run_dir, lambda: run_distributed(cfg, run_dir, transport or cfg.run.transport,
                                                                  progress=progress, respawn=respawn),
                            engine, processes=cfg.machine.cpus + 1, sweep=sweep)
        from smpsim.engines.inline import run
        return recorded(cfg, run_dir, lambda: run(cfg, run_dir, progress=progress), engine, processes=1,
                        sweep=sweep)
    except ModelError as e:
        if cfg.workload.kind == "trace":  # name the trace line (a script's is named by the engine core)
            from smpsim.model import kprobe_trace
            kprobe_trace.locate(cfg, e)
        raise


def is_finished(run_dir: Path, hash_: str) -> bool:
    """run_dir holds a finished run (provenance.json written) of the config whose hash is hash_."""
    try:
        prov = read_provenance(run_dir)
    except TraceError:
        return False
    return (prov is not None and prov.get("config_hash") == hash_ and prov.get("status") in FINISHED
            and (run_dir / SUMMARY_NAME).is_file())


@dataclass
class SweepReport:
    ran: list[Point] = field(default_factory=list)      # runs (point, seed) run now
    skipped: list[Point] = field(default_factory=list)  # runs found finished
    errors: dict[str, str] = field(default_factory=dict)  # a run's config hash -> why it has no finished run
    interrupted: int | None = None  # the signal that stopped the sweep


def run_sweep(exp: Experiment, points: list[Point], out: Path, jobs: int,
              on_point: Callable[[], None] = lambda: None) -> SweepReport:
    """Run the points (each (point, seed) run of Experiment.runs) not yet finished under out/<point name>/,
    jobs at a time; on_point() after each (finished ones included), first called once the worker processes
    are forked, so that the caller may start threads (a progress bar) then."""
    report = SweepReport()
    todo = []
    for pt in points:
        if is_finished(out / pt.name, pt.hash):
            report.skipped.append(pt)
        else:
            todo.append(pt)
    if not todo:
        for _ in report.skipped:
            on_point()
        return report
    with stopping.handling_signals():
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                                   mp_context=multiprocessing.get_context("fork"),
                                   initializer=_init_worker, initargs=(os.getpid(),))
        try:
            futures = {pool.submit(_run_point, pt.cfg, out / pt.name,
                                   {"experiment": str(exp.path), "point": pt.index, "params": pt.params,
                                    **({"seed": pt.seed} if exp.replicated else {})}): pt
                       for pt in todo}
            for _ in report.skipped:
                on_point()
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut.cancelled():
                        continue
                    pt = futures[fut]
                    error = fut.result()
                    report.ran.append(pt)
                    if error is not None:
                        report.errors[pt.hash] = error
                    on_point()
                if report.interrupted is None and stopping.received() is not None:
                    report.interrupted = stopping.received()
                    _stop_workers(pool, pending)
        except BrokenProcessPool:
            raise SweepError("a sweep worker process died (out of memory?); run the same command again to "
                             "run the points that did not finish") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return report


def _stop_workers(pool: ProcessPoolExecutor, pending: set) -> None:
    """Cancel the points not started; the workers stop theirs, writing what they ran."""
    for fut in pending:
        fut.cancel()
    for proc in list((pool._processes or {}).values()):  # noqa: SLF001 - the executor has no public list
        try:
            os.kill(proc.pid, stopping.SOFT_STOP)
        except (ProcessLookupError, AttributeError):
            pass


def _init_worker(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C between points: the sweep process handles it
    stopping.accept_soft_stop()
    try:  # Linux: die with the sweep process even when it is SIGKILLed
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


_interrupted = False  # this worker was stopped: it runs no further point (some may be queued to it already)


def _run_point(cfg: Config, run_dir: Path, sweep: dict[str, Any]) -> str | None:
    """Run one point in a worker; None when its run directory now holds a finished run without error."""
    global _interrupted
    if _interrupted or stopping.received() is not None:
        _interrupted = True
        return "interrupted"
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _clear(run_dir)
        run_config(cfg, run_dir, sweep=sweep)
        return None
    except KeyboardInterrupt:
        _interrupted = True
        return "interrupted"
    except (ModelError, ConfigError, TraceError) as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - reported per point; the other points go on
        return f"{type(e).__name__}: {e}"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _clear(run_dir: Path) -> None:
    """Remove what an unfinished run left in run_dir (refusing a directory with anything else in it)."""
    if not run_dir.exists():
        return
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_ITEMS and not p.name.startswith("."))
    if foreign:
        raise TraceError(f"{run_dir}: holds files that are not part of a run ({', '.join(foreign[:5])}); "
                         "remove them or choose another --out")
    shutil.rmtree(run_dir)
