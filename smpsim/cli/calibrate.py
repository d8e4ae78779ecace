"""`smpsim calibrate`: this host's IPI and shootdown costs from tracefs, as a preset for machine.preset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from smpsim.cli.common import fail


def calibrate(
    munmaps: Annotated[int, typer.Option(min=100, help="munmaps to trace (each one a shootdown)")] = 20_000,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the preset TOML here")] = None,
    ghz: Annotated[float, typer.Option(min=0.1, help="cycles per ns for the preset's costs")] = 2.5,
    tracefs: Annotated[Optional[str], typer.Option(help="tracefs mount (default: /sys/kernel/tracing)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
) -> None:
    """Measure this host's TLB shootdown: IPI latency, handler time, local flush (root and tracefs needed)."""
    from smpsim.calibrate import CalibrationError, figures, measure, preset_toml

    try:
        m = measure(munmaps, tracefs)
    except CalibrationError as e:
        fail(str(e))
    except PermissionError as e:
        fail(f"tracefs refused access ({e.filename}): run smpsim calibrate as root")
    figs = figures(m)
    text = preset_toml(m, ghz)
    if out is not None:
        out.write_text(text)
    if as_json:
        typer.echo(json.dumps({"kernel": m.kernel, "munmaps": m.munmaps, "ipi_sends": m.pairs.ipi_sends,
                               "sends_without_remote_flush": m.pairs.unpaired, "figures": figs}, indent=2))
        return
    typer.echo(f"Linux {m.kernel}, {m.munmaps} munmaps with CPU {m.cpus[1]} busy in the address space: "
               f"{m.pairs.ipi_sends} IPIs sent, {m.pairs.unpaired} sends found every target lazy")
    typer.echo(f"{'figure':<26} {'samples':>8} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8}")
    for name, s in figs.items():
        if s.get("samples"):
            typer.echo(f"{name:<26} {s['samples']:>8} {s['p50_ns'] / 1000:>8.1f} {s['p90_ns'] / 1000:>8.1f} "
                       f"{s['p99_ns'] / 1000:>8.1f}")
        else:
            typer.echo(f"{name:<26} {0:>8} {'-':>8} {'-':>8} {'-':>8}")
    if out is not None:
        typer.echo(f"preset written to {out}: use it with --set machine.preset='{out}'")
