"""The Python API, and the one path by which the command line runs a config.

```python
import smpsim
run = smpsim.run("configs/default.toml", engine="inline", overrides={"machine.cpus": 2})
run.summary["counters"]["ipis"]       # summary.json as a dict
run.events                            # the trace as a pyarrow Table (docs/trace-format.md)
run.sql("SELECT count(*) AS n FROM events WHERE ev = 'ipi'")   # DuckDB SQL -> pyarrow Table
run.analyze()                         # the document of `smpsim analyze --json`
run.path                              # the run directory (temporary unless ``out`` was given)
smpsim.open_run("runs/...")           # a recorded run, the same object
smpsim.sweep("configs/ring-size.toml")  # the results table of an experiment (pyarrow Table)
```

A run without ``out`` records into a temporary directory that is removed when the Run is closed (``with``
or ``run.close()``) or garbage-collected, so its events stay available without filling memory.
Analysis (``sql``, ``analyze``) needs the ``smpsim[analysis]`` extra; running does not.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smpsim.config import Config, ConfigError, apply_override, default_config_path, validate
from smpsim.engines.distributed.limits import ensure_open_files
from smpsim.model.workloads import WorkloadError
from smpsim.trace.errors import TraceError
from smpsim.trace.rundir import CONFIG_NAME, LOCK_NAME

# Mistakes that stop a run before it simulates anything: their run directory is not kept.
_USER_MISTAKES = (ConfigError, WorkloadError, TraceError)

ConfigSource = str | Path | Mapping[str, Any] | Config | None
Overrides = Mapping[str, Any] | Sequence[str] | None


class SweepFileError(ConfigError):
    """A sweep file given where one config is expected (``smpsim run`` without ``--point``)."""

    def __init__(self, source: str, message: str):
        super().__init__(source, [message])
        self.message = message

    def __str__(self) -> str:
        return self.message


def _override_strings(overrides: Overrides) -> list[str]:
    """``{"machine.cpus": 2}`` or ``["machine.cpus=2"]`` as ``--set`` assignments."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return list(overrides)


def load(config: ConfigSource = None, overrides: Overrides = None, *, engine: str | None = None,
         transport: str | None = None, point: int | None = None) -> Config:
    """The resolved config of one run: a TOML file (the default config when None), a dict of the same
    tables (a relative script path is relative to the working directory), or a Config; ``overrides`` as
    ``--set`` takes them. A sweep file needs ``point``: the index of
    one of its points, in the order ``smpsim sweep`` lists them."""
    sets = _override_strings(overrides)
    if engine is not None:
        sets.append(f"run.engine={json.dumps(engine)}")
    if transport is not None:
        sets.append(f"run.transport={json.dumps(transport)}")
    base_dir = None
    if isinstance(config, Config):
        base_dir = config.base_dir  # where its relative script path points
        config = config.model_dump(mode="json", exclude_none=True)
    if isinstance(config, Mapping):
        if point is not None:
            raise ConfigError("config", [f"point {point}: only a sweep file has points"])
        data = json.loads(json.dumps(config))  # a deep copy of plain data
        for a in sets:
            apply_override(data, a)
        data["base_dir"] = base_dir or str(Path.cwd())  # before validation: relative paths start here, files are hashed
        return validate(data, "config")
    path = Path(config) if config is not None else default_config_path()
    from smpsim.experiments.sweep import load_experiment

    exp = load_experiment(config, sets)  # None: the default config, its relative paths from the working directory
    n = len(exp.points)
    if point is None:
        if exp.values:
            raise SweepFileError(str(path), (
                f"{path} is an experiment: its [sweep] table makes {n} points "
                f"({' x '.join(exp.keys)}). Run them all with `smpsim sweep {path}`, or one with --point N "
                f"(0 to {n - 1}, in the order `smpsim sweep` lists them)"))
        return exp.points[0].cfg
    if not exp.values:
        raise ConfigError(str(path), [f"--point {point}: the file has no [sweep] table, so no points"])
    if not 0 <= point < n:
        raise ConfigError(str(path), [f"--point {point}: the sweep has points 0 to {n - 1}"])
    return exp.points[point].cfg


def check_workload(cfg: Config) -> str | None:
    """Raise WorkloadError for a workload that cannot run (a script: every line checked; a trace: read
    once; a generator: loaded), before a run directory is made. For a trace, what it replays and leaves
    out, in one line."""
    kind = cfg.workload.kind
    from smpsim.workload_files import file_problem_of

    if (why := file_problem_of(cfg)) is not None:
        raise WorkloadError(why)
    if kind == "script":
        from smpsim.model.workloads import check_script

        check_script(cfg.script_path(), cfg.machine.cpus, raise_=True)
    elif kind == "trace":
        from smpsim.model import kprobe_trace

        return f"trace {cfg.workload_file_path()}: {kprobe_trace.scan(cfg).describe()}"
    elif kind == "python":
        from smpsim import usercode
        from smpsim.model import generator

        try:
            generator.check_callable(cfg)
        except usercode.UserCodeError as e:
            raise WorkloadError(str(e)) from None
    return None


def _with_policy(overrides: Overrides, policy: type | str | None) -> list[str]:
    """overrides plus policy.name for ``policy``: a Policy subclass (registered in this process by its
    spec, so a class from a script or notebook runs too) or a name or spec."""
    sets = _override_strings(overrides)
    if policy is not None:
        from smpsim.model.policies import spec_of

        sets.append(f"policy.name={json.dumps(spec_of(policy) if isinstance(policy, type) else policy)}")
    return sets


def run(config: ConfigSource = None, *, engine: str | None = None, overrides: Overrides = None,
        out: str | Path | None = None, transport: str | None = None, point: int | None = None,
        progress: Callable[[dict], None] | None = None, policy: type | str | None = None) -> "Run":
    """Run a config (see ``load``) and return the Run. ``out``: the run directory (default: a temporary
    one, removed with the Run). ``policy``: a smpsim.Policy subclass (or a policy name or spec) instead of
    the config's policy.name. A run that stops (kernel BUG, deadlock, a process died) raises; its
    exception's ``run`` attribute is the Run up to the failure."""
    return run_config(load(config, _with_policy(overrides, policy), engine=engine, transport=transport,
                           point=point), out, progress=progress)


def run_config(cfg: Config, out: str | Path | None = None, *, runs_root: str | Path | None = None,
               progress: Callable[[dict], None] | None = None, respawn=None, wait: bool = False,
               on_wait: Callable[[str], None] | None = None) -> "Run":
    """Run a resolved config into ``out``, or a new ``runs_root/<UTC time>-<hash>``, or a temporary
    directory. A run that fails before simulating (a bad script, an unusable directory) leaves no run
    directory behind. ``respawn``: the distributed engine's RespawnPolicy (default: replace lost CPU
    processes). ``out`` is taken as smpsim.trace.rundir.claim_run_dir says: empty, or an unfinished run of
    the same config; in use by another process, it is an error, or with ``wait`` waited for."""
    from smpsim.experiments.runner import run_config as run_engine
    from smpsim.trace.rundir import claim_run_dir, default_run_dir

    check_workload(cfg)
    if cfg.run.engine == "distributed":
        ensure_open_files(cfg.machine.cpus, "a distributed run")  # before the run directory: nothing ran
    tmp = None
    if out is not None:
        path = Path(out)
        created = not path.exists()
    elif runs_root is not None:
        path, created = default_run_dir(cfg, runs_root), True
    else:
        from smpsim.engines.distributed import sockdir  # a killed process's directory is removed later

        tmp = sockdir.temporary("run")
        path, created = Path(tmp.name), False
    claimed = False
    try:
        with claim_run_dir(path, cfg, lock=out is not None, wait=wait, on_wait=on_wait):
            claimed = True
            result = run_engine(cfg, path, progress, respawn=respawn)
    except BaseException as e:
        if created and isinstance(e, _USER_MISTAKES) and not _recorded(path):
            shutil.rmtree(path, ignore_errors=True)  # failed before simulating: nothing to keep
        elif claimed:  # (not a directory refused, or waited for: that is another run's)
            e.run = Run(path, _tmp=tmp)  # type: ignore[attr-defined]
        raise
    return Run(path, result.summary, _tmp=tmp)


def _recorded(path: Path) -> bool:
    """The run directory holds something besides its config.toml (a summary, trace parts, logs)."""
    return any(p.is_file() and p.name not in (CONFIG_NAME, LOCK_NAME) for p in path.rglob("*"))


def open_run(path: str | Path) -> "Run":
    """A recorded run directory (TraceError when it is not one)."""
    from smpsim.trace.reader import open_run as check

    check(path, warn=False)
    return Run(Path(path))


class Run:
    """A run directory: its summary, its events, SQL over them and the analysis."""

    def __init__(self, path: Path, summary: dict[str, Any] | None = None, *, _tmp: Any = None):
        self._path, self._summary, self._tmp = Path(path), summary, _tmp

    @property
    def path(self) -> Path:
        """The run directory: config.toml, summary.json, provenance.json, trace/ and logs/
        (docs/trace-format.md). For a run made without ``out`` it is a temporary directory, removed by
        ``close()``: copy what you need to keep, or pass ``out``."""
        return self._path

    def __repr__(self) -> str:
        """What ran and its headline in one line (a notebook shows this, not the events):
        ``<smpsim.Run linux-2.4, uniform, 8 CPUs: ok; kmaps 8,000; IPIs per 1000 kmaps 1.024; ...>``."""
        from smpsim.headline import BY_KEY, facts_from_summary, fmt, headline

        s = self.summary
        if not s:
            return f"<smpsim.Run {self.path}: no summary (unfinished)>"
        keys = ("kmaps", "ipis_per_1000_kmaps", "stall_per_flush")
        values = headline(facts_from_summary(s), keys) if "counters" in s else {}
        shown = "; ".join(BY_KEY[k].show(values.get(k)) for k in keys)
        return (f"<smpsim.Run {s.get('policy')}, {s.get('workload')}, {fmt(s.get('cpus'))} CPUs: "
                f"{s.get('status')}; {shown}; digest {str(s.get('digest'))[:12]}; {self.path}>")

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json: status, counters, per-CPU TLB figures, digest ({} when the run did not finish)."""
        if self._summary is None:
            from smpsim.trace.rundir import read_summary

            self._summary = read_summary(self.path) or {}
        return self._summary

    @property
    def config(self) -> Config:
        from smpsim.config import load_config
        from smpsim.trace.rundir import CONFIG_NAME

        return load_config(self.path / CONFIG_NAME, resolve_code=False)  # its policy file may not be here

    @property
    def events(self):
        """Every event as a pyarrow Table in canonical order (the trace schema)."""
        from smpsim.trace.reader import open_run, read_table

        return read_table(open_run(self.path, warn=False))

    def _trace(self):
        from smpsim.extras import need

        need("duckdb")
        from smpsim.analysis.load import open_trace

        return open_trace(self.path)

    def sql(self, query: str):
        """DuckDB SQL over the table ``events``; the result as a pyarrow Table (None for a statement without
        one). QueryError with DuckDB's message when it does not run."""
        with self._trace() as tr:
            import duckdb

            from smpsim.analysis.query import QueryError

            try:
                rel = tr.con.sql(query)
                return rel.to_arrow_table() if rel is not None else None
            except duckdb.Error as e:
                raise QueryError(str(e).strip()) from None

    def analyze(self) -> dict[str, Any]:
        """The analysis document (what ``smpsim analyze --json`` prints)."""
        from smpsim.analysis.logs import summarize_logs
        from smpsim.analysis.trace_metrics import analyze

        with self._trace() as tr:
            return analyze(tr, summarize_logs(self.path))

    def close(self) -> None:
        """Remove the temporary run directory of a run made without ``out`` (nothing otherwise)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SweepResult:
    """A sweep that ran: the results rows (one per point), the swept keys, the table files, what ran."""
    rows: list[dict[str, Any]]
    params: list[str]
    paths: tuple[Path, Path]
    ran: list  # points run now: their indices; (point, seed) pairs when points run with several seeds
    skipped: list  # the same, found finished
    total: int  # points in the experiment (more than rows when a shard ran)
    interrupted: int | None = None  # the signal that stopped the sweep (its points kept what they ran)
    # Points run with several seeds: one row per (point, seed) and its table files (rows: their summary)
    seed_rows: list[dict[str, Any]] | None = None
    seed_paths: tuple[Path, Path] | None = None

    @property
    def table(self):
        import pyarrow.parquet as pq

        return pq.read_table(self.paths[1])


def run_sweep(experiment: str | Path, overrides: Overrides = None, *, out: str | Path | None = None,
              jobs: int | None = None, shard: tuple[int, int] | None = None,
              on_point: Callable[[int], None] = lambda total: None, wait: bool = False,
              on_wait: Callable[[str], None] | None = None,
              on_warning: Callable[[str], None] | None = None) -> SweepResult:
    """Run an experiment's points not yet finished under ``out`` (default ``runs/<experiment name>``),
    ``jobs`` at a time (default: the usable cores), and write its results table. ``on_point(total)`` after
    each point (total: the points to run), first once the worker processes are forked. One sweep (or shard)
    per directory at a time: another holding it is an error, or with ``wait`` waited for (``on_wait(message)``
    once). ``on_warning(message)``: a finished point run again because its trace did not read back whole
    (default: a Python warning)."""
    import os
    import warnings

    from smpsim.experiments.runner import run_sweep as run_points
    from smpsim.experiments.sweep import load_experiment
    from smpsim.extras import need
    from smpsim.trace.rundir import LOCK_NAME, dir_lock

    for module in ("duckdb", "numpy"):  # the results table's figures: known before any point runs
        need(module)
    experiment = Path(experiment)
    exp = load_experiment(experiment, _override_strings(overrides))
    if exp.replicated:
        need("scipy")  # the intervals of points run with several seeds
    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    elif jobs < 1:
        raise ConfigError("--jobs", [f"{jobs}: must be at least 1"])
    out = Path(out) if out is not None else Path("runs") / experiment.stem
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TraceError(f"{out}: cannot create the sweep directory: {e.strerror}") from None
    points = exp.shard(*shard) if shard else list(exp.points)
    runs = exp.runs(points)
    base = out / (f"results-shard-{shard[0]}-of-{shard[1]}" if shard else "results")
    lock = out / (f".smpsim-shard-{shard[0]}-of-{shard[1]}.lock" if shard else LOCK_NAME)  # shards share out
    with dir_lock(lock, wait, on_wait):
        report = run_points(exp, runs, out, jobs, lambda: on_point(len(runs)),
                            on_warning or (lambda message: warnings.warn(message, stacklevel=3)))
        from smpsim.experiments import results  # pyarrow and numpy start threads: not before forking the workers

        rows = [results.row(r, out / r.name, report.errors.get(r.hash), exp.replicated) for r in runs]
        written = results.write(rows, exp.keys, results.metadata(exp, shard), base)
    key = (lambda r: (r.index, r.seed)) if exp.replicated else (lambda r: r.index)
    return SweepResult(written.rows, exp.keys, written.paths, [key(r) for r in report.ran],
                       [key(r) for r in report.skipped], len(exp.points), report.interrupted, written.seed_rows,
                       written.seed_paths)


def sweep(experiment: str | Path, overrides: Overrides = None, *, out: str | Path | None = None,
          jobs: int | None = None, policy: type | str | None = None):
    """Run an experiment (see ``run_sweep``) and return its results table (a pyarrow Table, one row per
    point: parameters, status, metrics, digest). ``policy``: a smpsim.Policy subclass (or a name or spec)
    for every point, as ``run`` takes it; to compare policies, sweep policy.name over names and specs."""
    done = run_sweep(experiment, _with_policy(overrides, policy), out=out, jobs=jobs)
    if done.interrupted is not None:  # the table is written; the caller asked to stop
        from smpsim.engines.stopping import Interrupted

        raise Interrupted(done.interrupted)
    return done.table
