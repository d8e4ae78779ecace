"""Running configs: the engine a config names, provenance.json, and sweeps on a local process pool.

A sweep point runs in a worker process of a pool (fork: workers start in milliseconds and inherit the
loaded modules). A point whose run directory already holds a finished run of the same config is not run
again once its trace reads back whole (checked in a worker), so an interrupted sweep resumes where it
stopped. On SIGINT or SIGTERM the sweep process cancels the points not started and asks its workers to stop
theirs (SIGUSR1 for the user's SIGTERM, SIGUSR2 for SIGINT, so each point records the user's signal; a
Ctrl-C on a terminal reaches them anyway): each writes what its point ran, as `smpsim run` would, and runs
no further point. Workers ignore Ctrl-C between points and die with the sweep process, so none outlives it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smpsim.config import Config, ConfigError
from smpsim.engines import stopping
from smpsim.experiments.provenance import recorded
from smpsim.experiments.sweep import Experiment, Point
from smpsim.model.errors import ModelError
from smpsim.trace.errors import TraceError, TraceWriteError
from smpsim.trace.rundir import claim_run_dir, finished_status


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
    return finished_status(run_dir, hash_) is not None


def damage(run_dir: Path) -> str | None:
    """Why a finished run's trace cannot be trusted (a part missing, unreadable or damaged, fewer events
    than summary.json records), None when every part reads back whole. Reads every part, checking Parquet's
    page checksums and the seq numbering."""
    from smpsim.trace.reader import iter_tables, open_run

    try:
        run = open_run(run_dir, warn=False)
        trace = (run.summary or {}).get("trace") or {}
        if not run.has_trace:
            return None
        if isinstance(trace.get("parts"), int) and len(run.parts) != trace["parts"]:
            return f"{len(run.parts)} of the {trace['parts']} trace parts summary.json records are there"
        events = sum(t.num_rows for t in iter_tables(run))
    except TraceError as e:
        return str(e)
    want = trace.get("events")
    if isinstance(want, int) and events != want:
        return f"its trace parts hold {events} events, summary.json records {want}"
    return None


@dataclass
class SweepReport:
    """What a sweep did: the runs it ran and skipped, why some have no finished run, and the signal that
    stopped it."""
    ran: list[Point] = field(default_factory=list)      # runs (point, seed) run now
    skipped: list[Point] = field(default_factory=list)  # runs found finished
    errors: dict[str, str] = field(default_factory=dict)  # a run's config hash -> why it has no finished run
    interrupted: int | None = None  # the signal that stopped the sweep


def run_sweep(exp: Experiment, points: list[Point], out: Path, jobs: int,
              on_point: Callable[[], None] = lambda: None,
              on_warning: Callable[[str], None] = lambda message: None) -> SweepReport:
    """Run the points (each (point, seed) run of Experiment.runs) not yet finished under out/<point name>/,
    jobs at a time; on_point() after each (finished ones included), first called once the worker processes
    are forked, so that the caller may start threads (a progress bar) then. A finished run whose trace does
    not read back whole is run again, with on_warning(why)."""
    report = SweepReport()
    if not points:
        return report
    with stopping.handling_signals():
        # Finished points are checked in the workers too: reading a trace starts pyarrow's threads, which
        # must not be running when the workers are forked.
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(points)),
                                   mp_context=multiprocessing.get_context("fork"),
                                   initializer=_init_worker, initargs=(os.getpid(),))
        try:
            futures = {pool.submit(_run_point, pt.cfg, out / pt.name,
                                   {"experiment": str(exp.path), "point": pt.index, "params": pt.params,
                                    **({"seed": pt.seed} if exp.replicated else {})},
                                   is_finished(out / pt.name, pt.hash)): pt
                       for pt in points}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: (futures[f].index, futures[f].seed)):
                    if fut.cancelled():
                        continue
                    pt = futures[fut]
                    outcome = fut.result()
                    if outcome.damaged is not None:
                        on_warning(f"point {pt.index} ({out / pt.name}): a finished run, but {outcome.damaged}; "
                                   "running it again")
                    (report.skipped if outcome.skipped else report.ran).append(pt)
                    if outcome.error is not None:
                        report.errors[pt.hash] = outcome.error
                    on_point()
                if report.interrupted is None and stopping.received() is not None:
                    report.interrupted = stopping.received()
                    _stop_workers(pool, pending, report.interrupted)
        except BrokenProcessPool:
            raise SweepError("a sweep worker process died (out of memory?); run the same command again to "
                             "run the points that did not finish") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return report


def _stop_workers(pool: ProcessPoolExecutor, pending: set, user_signal: int) -> None:
    """Cancel the points not started; the workers stop theirs, writing what they ran."""
    for fut in pending:
        fut.cancel()
    for proc in list((pool._processes or {}).values()):  # noqa: SLF001 - the executor has no public list
        try:
            os.kill(proc.pid, stopping.soft_stop_for(user_signal))
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


@dataclass
class Outcome:
    """What became of a point in its worker: ``error`` why it has no finished run (None: it has one);
    ``skipped`` it was finished and read back whole; ``damaged`` why a finished run was run again."""
    error: str | None = None
    skipped: bool = False
    damaged: str | None = None


def _run_point(cfg: Config, run_dir: Path, sweep: dict[str, Any], finished: bool) -> Outcome:
    """In a worker: check a finished point (``finished``) and skip it if its trace reads back whole, else
    run it."""
    damaged = damage(run_dir) if finished else None
    if finished and damaged is None:
        return Outcome(skipped=True)
    return Outcome(_run(cfg, run_dir, sweep), damaged=damaged)


def _run(cfg: Config, run_dir: Path, sweep: dict[str, Any]) -> str | None:
    """Run one point; None when its run directory now holds a finished run without error."""
    global _interrupted
    if _interrupted or stopping.received() is not None:
        _interrupted = True
        return "interrupted"
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # The sweep's lock covers its points; a point's own files are replaced by name (a finished run too:
        # the sweep found it damaged), anything else stops the point.
        with claim_run_dir(run_dir, cfg, lock=False, replace=True):
            run_config(cfg, run_dir, sweep=sweep)
        return None
    except KeyboardInterrupt:
        _interrupted = True
        return "interrupted"
    except (ModelError, ConfigError, TraceError, TraceWriteError) as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - reported per point; the other points go on
        return f"{type(e).__name__}: {e}"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
