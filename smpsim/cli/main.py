"""The ``smpsim`` command (console script ``smpsim = smpsim.cli.main:app``).

Each command group lives in its own module under smpsim/cli/ and is registered here; later commands
(launch, sweep, analyze, ...) follow the same pattern.
"""

from __future__ import annotations

from typing import Annotated

import typer

from smpsim import __version__
from smpsim.cli import analyze
from smpsim.cli import bench, calibrate, config_cmd, distributed, export, run, sweep

app = typer.Typer(
    name="smpsim",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Simulate the Linux pkmap ring and per-CPU TLBs: what the lazy flush on ring wrap saves.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"smpsim {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """smpsim: the pkmap ring, kmap_lock, per-CPU TLBs and TLB shootdowns, in virtual cycles."""


app.command("run")(run.run)
app.command("export")(export.export)
app.command("analyze")(analyze.analyze)
app.command("compare")(analyze.compare)
app.command("query")(analyze.query)
app.command("launch")(distributed.launch)
app.command("coordinator")(distributed.coordinator)
app.command("cpu")(distributed.cpu)
app.command("bench")(bench.bench)
app.command("sweep")(sweep.sweep)
app.command("calibrate")(calibrate.calibrate)
app.add_typer(config_cmd.app, name="config")


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="smpsim")
