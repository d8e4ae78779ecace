"""``smpsim sweep EXPERIMENT.toml [--set k=v ...] [--out DIR] [--jobs N] [--shard I/N]`` and
``smpsim sweep --collect DIR``: run an experiment's points, write and print its results table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from smpsim.cli.analyze import FormatOpt, plot_formats
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
        "--plot", metavar="DIR", help="also draw the headline metrics against a swept key into DIR (a figure "
        "per metric and headline.png with all of them)", show_default=False)] = None,
    x: Annotated[Optional[str], typer.Option(
        "--x", metavar="KEY", help="the swept key on the --plot figures' x axis (default: the first numeric "
        "swept key)", show_default=False)] = None,
    format_: FormatOpt = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="when another sweep (or the same shard) is using --out, wait until it has finished "
        "instead of stopping")] = False,
) -> None:
    """Run every point of an experiment (finished points are skipped) and print its results table."""
    formats = plot_formats(format_, plot)
    if x is not None and plot is None:
        fail(f"--x {x} picks the x axis of the --plot figures: add --plot DIR")
    figures = Figures(plot, x, formats)
    if collect is not None:
        from smpsim.experiments import results

        if experiment is not None or shard is not None or set_:
            fail("--collect DIR merges the results of shards that already ran: give it no EXPERIMENT, "
                 "--shard or --set")
        rows, meta = results.collect(collect)
        written = results.write(rows, meta["params"], meta, collect / "results")
        figures.check(meta["params"], meta["experiment"])
        _finish(written.rows, meta["params"], meta, f"{len(written.rows)} points of {meta['experiment']} collected",
                written.paths, figures, seed_paths=written.seed_paths)
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
    exp = load_experiment(experiment, set_ or ())
    for problem in exp.report_problems():
        warn(f"{experiment}: {problem}: those points get no saving line")
    figures.check(exp.keys, str(experiment))
    try:
        with _Progress(console()) as advance:
            done = api.run_sweep(experiment, set_, out=out, jobs=jobs, shard=part, on_point=advance, wait=wait,
                                 on_wait=say, on_warning=warn)
    except SweepError as e:
        fail(str(e), EXIT_RUN_FAILED)
    which = (f"shard {part[0]}/{part[1]}: {len(done.rows)} of {done.total} points" if part
             else f"{len(done.rows)} points")
    from smpsim.experiments.results import read_meta

    runs = " runs" if done.seed_rows is not None else ""
    _finish(done.rows, done.params, read_meta(done.paths[1]),
            f"{which}: {len(done.ran)}{runs} run, {len(done.skipped)}{runs} already finished", done.paths, figures,
            done.interrupted, done.seed_paths)


class Figures:
    """What --plot, --x and --format ask for: checked before any point runs, drawn once the table is."""

    def __init__(self, out: Path | None, x: str | None, formats: list[str]) -> None:
        self.out, self.x, self.formats = out, x, formats

    def check(self, params: list[str], source: str) -> None:
        if self.out is None:
            return
        from smpsim.analysis.plots import sweep_layout

        try:
            sweep_layout([], params, self.x)
        except ValueError as e:
            fail(f"{source}: {e}")

    def write(self, table: Path, params: list[str], by: list[str]) -> None:
        """Draw from the results table as written (every column it has: the seeds' confidence intervals
        too)."""
        if self.out is None:
            return
        import pyarrow.parquet as pq

        from smpsim.analysis.plots import write_sweep_figures

        rows = pq.read_table(table).to_pylist()
        try:
            paths = write_sweep_figures(rows, params, self.out, self.formats, self.x, by)
        except ValueError as e:
            fail(f"--plot: {e}")
        except OSError as e:
            fail(f"{self.out}: cannot write the figures: {e.strerror or e}")
        typer.echo("\n".join(f"wrote {p}" for p in paths))


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
            paths: tuple[Path, Path], figures: "Figures", interrupted: int | None = None,
            seed_paths: tuple[Path, Path] | None = None) -> None:
    """Print the metrics of the points (metrics as rows, one block per [report] group), each point's
    saving over its baseline, and where the table was written; exit 1 when a point has no successful run,
    128 + the signal when the sweep was stopped by one."""
    from smpsim.analysis.compare import metrics_table, savings_block
    from smpsim.cli.analyze import table_width
    from smpsim.experiments.results import saving_lines
    from smpsim.headline import fmt

    ok = [r for r in rows if r["status"] == "ok"]
    by = [k for k in (meta.get("report") or {}).get("by", []) if k in params]
    header = [(k, [r[k] for r in ok]) for k in params if k not in by] or [("point", [r["point"] for r in ok])]
    if ok and "seeds" in ok[0]:  # points run with several seeds: each value is a mean, ±half its 95% CI
        header.append(("seeds", [r["seeds"] for r in ok]))
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
    per_seed = f" (each seed's run: {seed_paths[0]} and {seed_paths[1]})" if seed_paths else ""
    typer.echo(f"{what}; results in {paths[0]} and {paths[1]}{per_seed}")
    if interrupted is not None:
        e = Interrupted(interrupted)
        done = sum(r["status"] in FINISHED for r in rows)
        fail(f"{e}: {done} of {len(rows)} points have finished runs; the points it stopped kept what they "
             "ran (status \"interrupted\"); the same command runs the rest", e.exit_code)
    if ok:
        figures.write(paths[1], params, by)
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
