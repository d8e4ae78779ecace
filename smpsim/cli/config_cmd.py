"""``smpsim config show|check``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from smpsim.cli.common import handle_errors
from smpsim.config import WORKLOAD_FILE_KEYS, ConfigError
from smpsim.experiments.sweep import load_experiment

app = typer.Typer(no_args_is_help=True, help="Show or check a run configuration.")

ConfigArg = Annotated[Optional[Path], typer.Argument(
    help="TOML config file (default: configs/default.toml)", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", metavar="KEY=VALUE", help="override a key, e.g. --set machine.cpus=8 (repeatable)")]


@app.command("show")
@handle_errors
def show(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Print the resolved config (every default filled in) as TOML, and an experiment's sweep table."""
    typer.echo(load_experiment(config, set_ or ()).to_toml(), nl=False)


@app.command("check")
@handle_errors
def check(config: Annotated[Path, typer.Argument(help="TOML config (or experiment) file to validate")],
          set_: SetOpt = None) -> None:
    """Validate a config file, every point of its sweep table, every line of a workload script or trace
    and a workload generator's spec: print ``ok`` (a trace: what it replays, on stderr), or every problem
    (exit 2)."""
    from smpsim import api
    from smpsim.model.workloads import WorkloadError, check_script
    from smpsim.workload_files import file_problem_of

    exp = load_experiment(config, set_ or ())
    # A script or trace that is missing, a FIFO, a device or a directory: named, never opened.
    odd = {p.cfg.workload_file_path(): why for p in exp.points if (why := file_problem_of(p.cfg))}
    problems: list[str] = list(odd.values())
    for path, cpus in dict.fromkeys((p.cfg.script_path(), p.cfg.machine.cpus) for p in exp.points
                                    if p.cfg.workload.kind == "script"):
        if path not in odd:
            problems += [f"workload.script: {x}" for x in check_script(path, cpus)]
    notes: list[str] = []
    for point in exp.points:  # a trace is read once, a generator loaded (each once: both are cached)
        if point.cfg.workload.kind in ("trace", "python") and point.cfg.workload_file_path() not in odd:
            try:
                note = api.check_workload(point.cfg)
            except WorkloadError as e:
                problems.append(f"workload.{WORKLOAD_FILE_KEYS[point.cfg.workload.kind]}: {e}")
            else:
                notes += [note] if note else []
    problems += exp.report_problems()  # smpsim sweep only warns: a --set may have swept the baseline away
    if problems:
        raise ConfigError(str(config), list(dict.fromkeys(problems)))
    for note in dict.fromkeys(notes):
        typer.echo(note, err=True)
    runs = f" x {len(exp.seeds)} seeds ({len(exp.runs())} runs)" if exp.replicated else ""
    typer.echo("ok" if not exp.values else f"ok: a sweep of {len(exp.points)} points{runs}")
