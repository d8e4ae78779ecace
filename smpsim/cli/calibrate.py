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
    vmap: Annotated[bool, typer.Option("--vmap", help="check vmalloc's lazy purge rule against this kernel "
                                       "instead (BPF array maps freed lazily)")] = False,
    sizes: Annotated[str, typer.Option(help="--vmap: map sizes in KiB, comma-separated")] = "64,1024,4096",
    maps: Annotated[Optional[int], typer.Option(min=1, max=20_000, help="--vmap: maps per size (default: "
                                                "3.5 purges' worth)")] = None,
    pace_us: Annotated[int, typer.Option(min=0, max=100_000, help="--vmap: pause after each map's close, "
                                         "so the kernel's drain worker runs at the crossing free")] = 1000,
    keep: Annotated[Optional[Path], typer.Option(help="--vmap: save each size's trace in this new directory")] = None,
    replay: Annotated[Optional[list[Path]], typer.Option(help="--vmap: compare a trace saved with --keep instead "
                                                         "of recording (no root needed); repeatable")] = None,
) -> None:
    """Measure this host's TLB shootdown: IPI latency, handler time, local flush (root and tracefs needed).
    With --vmap: hold vmalloc's lazy purge against the model (exit 1 when the purge counts differ)."""
    if vmap or replay:
        from smpsim.cli.calibrate_vmap import calibrate_vmap
        if out is not None:
            fail("--out writes a cost preset, which --vmap does not make; keep its traces with --keep DIR")
        calibrate_vmap(sizes, maps, pace_us, keep, replay or [], tracefs, as_json)
        return
    from smpsim.calibrate import CalibrationError, figures, measure, preset_toml

    if out is not None and out.exists():  # checked before measuring: never write over a file we did not make
        fail(f"--out {out}: exists; remove it or name a new file for the preset")
    try:
        m = measure(munmaps, tracefs)
    except CalibrationError as e:
        fail(str(e))
    except PermissionError as e:
        fail(f"tracefs refused access ({e.filename}): run smpsim calibrate as root")
    figs = figures(m)
    text = preset_toml(m, ghz)
    if out is not None:
        try:
            with open(out, "x") as f:  # exclusive: a file made meanwhile is not replaced either
                f.write(text)
        except FileExistsError:
            fail(f"--out {out}: exists; remove it or name a new file for the preset")
        except OSError as e:
            fail(f"--out {out}: cannot write it ({e.strerror or e})")
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
