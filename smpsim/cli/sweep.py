"""``smpsim sweep EXPERIMENT.toml [--set k=v ...] [--out DIR] [--jobs N] [--shard I/N]`` and
``smpsim sweep --collect DIR``: run an experiment's points, write and print its results table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from smpsim.cli.common import EXIT_RUN_FAILED, console, fail, handle_errors, say, warn
from smpsim.cli.config_cmd import SetOpt
from smpsim.engines.stopping import Interrupted
from smpsim.experiments.provenance import FINISHED


@handle_errors
def sweep(
    experiment: Annotated[Optional[Path], typer.Argument(
        help="experiment: a config with a \\[sweep] table of dotted keys and lists of values",
        show_default=False)] = None,
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="sweep directory: a run directory per point and the results table "
        "(default: runs/<experiment name>)", show_default=False)] = None,
    jobs: Annotated[Optional[int], typer.Option(
        "--jobs", "-j", help="points run at once (default: the usable cores)", show_default=False)] = None,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", metavar="I/N", help="run only points I, I+N, I+2N, ... (0 <= I < N), e.g. one task of a job "
        "array; the table goes to results-shard-I-of-N.*")] = None,
    collect: Annotated[Optional[Path], typer.Option(
        "--collect", metavar="DIR", help="merge the shard tables found under DIR into DIR/results.*")] = None,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", metavar="DIR", help="also write flush_stall.png (initiator stall against the swept key) "
        "into DIR", show_default=False)] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="when another sweep (or the same shard) is using --out, wait until it has finished "
        "instead of stopping")] = False,
) -> None:
    """Run every point of an experiment (finished points are skipped) and print its results table."""
    if collect is not None:
        from smpsim.experiments import results

        if experiment is not None or shard is not None or set_:
            fail("--collect DIR merges the results of shards that already ran: give it no EXPERIMENT, "
                 "--shard or --set")
        rows, meta = results.collect(collect)
        paths = results.write(rows, meta["params"], meta, collect / "results")
        _finish(rows, meta["params"], meta, f"{len(rows)} points of {meta['experiment']} collected", paths, plot)
        return
    if experiment is None:
        fail("give an experiment to run (smpsim sweep configs/lazy-vs-eager.toml), or --collect DIR to merge "
             "the results of its shards")
    from smpsim import api
    from smpsim.experiments.runner import SweepError

    from smpsim.experiments.sweep import load_experiment

    part = _parse_shard(shard) if shard is not None else None
    if jobs is not None and jobs < 1:
        fail(f"--jobs {jobs}: must be at least 1")
    for problem in load_experiment(experiment, set_ or ()).report_problems():
        warn(f"{experiment}: {problem}: those points get no saving line")
    try:
        with _Progress(console()) as advance:
            done = api.run_sweep(experiment, set_, out=out, jobs=jobs, shard=part, on_point=advance, wait=wait,
                                 on_wait=say, on_warning=warn)
    except SweepError as e:
        fail(str(e), EXIT_RUN_FAILED)
    which = (f"shard {part[0]}/{part[1]}: {len(done.rows)} of {done.total} points" if part
             else f"{len(done.rows)} points")
    from smpsim.experiments.results import read_meta

    _finish(done.rows, done.params, read_meta(done.paths[1]),
            f"{which}: {len(done.ran)} run, {len(done.skipped)} already finished", done.paths, plot,
            done.interrupted)


def _parse_shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    try:
        part = (int(i), int(n))
    except ValueError:
        part = None
    if not sep or part is None or not 0 <= part[0] < part[1]:
        fail(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/4 for the first of 4 shards")
    return part


def _finish(rows: list[dict[str, Any]], params: list[str], meta: dict[str, Any], what: str,
            paths: tuple[Path, Path], plot: Path | None = None, interrupted: int | None = None) -> None:
    """Print the metrics of the points (metrics as rows, one block per [report] group), each point's
    saving over its baseline, and where the table was written; exit 1 when a point has no successful run,
    128 + the signal when the sweep was stopped by one."""
    from smpsim.analysis.compare import metrics_table, savings_block
    from smpsim.cli.analyze import table_width
    from smpsim.experiments.results import saving_lines
    from smpsim.metrics import fmt

    ok = [r for r in rows if r["status"] == "ok"]
    by = [k for k in (meta.get("report") or {}).get("by", []) if k in params]
    header = [(k, [r[k] for r in ok]) for k in params if k not in by] or [("point", [r["point"] for r in ok])]
    blocks: dict[tuple, list[int]] = {}
    for i, r in enumerate(ok):
        blocks.setdefault(tuple(r[k] for k in by), []).append(i)
    titled = [(", ".join(f"{k} = {fmt(v)}" for k, v in zip(by, key)), members) for key, members in blocks.items()]
    width = table_width()
    lines = metrics_table(header, ok, titled, width) if ok else []
    savings = saving_lines(rows, params, meta)
    if savings:
        rep = meta["report"]
        against = ", ".join(f"{k}={v}" for k, v in rep["baseline"].items())
        lines += savings_block(against + (f", by {', '.join(rep['by'])}" if rep["by"] else ""), savings, width)
    typer.echo("\n".join(lines))
    typer.echo(f"{what}; results in {paths[0]} and {paths[1]}")
    if interrupted is not None:
        e = Interrupted(interrupted)
        done = sum(r["status"] in FINISHED for r in rows)
        fail(f"{e}: {done} of {len(rows)} points have finished runs; the points it stopped kept what they "
             "ran (status \"interrupted\"); the same command runs the rest", e.exit_code)
    if plot is not None and ok:
        from smpsim.analysis.plots import sweep_stall

        try:
            plot.mkdir(parents=True, exist_ok=True)
            typer.echo(f"wrote {sweep_stall(rows, params, by, plot / 'flush_stall.png')}")
        except OSError as e:
            fail(f"{plot}: cannot write the figure: {e.strerror or e}")
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        why = "; ".join(f"point {r['point']} ({r['status']}: {r['error'] or 'no run'})" for r in bad[:20])
        fail(f"{len(bad)} of {len(rows)} points did not finish with a result: {why}"
             f"{f'; ... (every point in {paths[0]})' if len(bad) > 20 else ''}. Points that failed or were interrupted run again when the "
             "same command is repeated; a point stopped by the model (error) is deterministic: see its "
             "run directory's summary.json", EXIT_RUN_FAILED)


class _Progress:
    """A progress bar over the points on a terminal, nothing otherwise; each call advances one point (the
    total comes with the first). It starts at the first call: run_sweep calls only once its worker processes
    are forked."""

    def __init__(self, con: Any) -> None:
        self.con, self.progress = con, None

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, total: int) -> None:
        if self.con is None:
            return
        if self.progress is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress("sweep: points", BarColumn(), MofNCompleteColumn(), "ETA", TimeRemainingColumn(),
                                     TimeElapsedColumn(), console=self.con, transient=True)
            self.task = self.progress.add_task("points", total=total)
            self.progress.start()
        self.progress.advance(self.task)
