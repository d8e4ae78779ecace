"""`smpsim calibrate --vmap`: vmalloc's lazy purge on this kernel beside the model (smpsim/model/vmalloc.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from smpsim.cli.common import EXIT_RUN_FAILED, fail
from smpsim.engines.stopping import exit_code_of


def _sizes(text: str) -> list[int]:
    from smpsim.calibrate.vmap_host import MAX_KIB, MIN_KIB

    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"--sizes {text!r}: give whole KiB, comma-separated, e.g. --sizes 64,1024,4096")
    bad = [k for k in out if not (MIN_KIB <= k <= MAX_KIB and k % 4 == 0)]
    if not out or bad:
        fail(f"--sizes {text!r}: each size must be a multiple of 4 KiB from {MIN_KIB} (smaller maps are "
             f"kmalloc'd, not vmalloc'd) to {MAX_KIB}; got {bad or 'none'}")
    return out


def default_maps(kib: int, ncpus: int) -> int:
    """Maps for about three and a half purges of areas of ``kib`` KiB (plus the guard page)."""
    from smpsim.calibrate.vmap_host import MAX_MAPS
    from smpsim.model.vmalloc import PAGE_SIZE, lazy_max_pages

    return min(MAX_MAPS, -(-7 * lazy_max_pages(ncpus) // (2 * (kib * 1024 // PAGE_SIZE + 1))))


def _recordings(sizes: str, maps: int | None, pace_us: int, keep: Path | None, replay: list[Path],
                tracefs: str | None) -> list[tuple[str, str]]:
    """(label, trace text) per size: recorded now, or read from saved files."""
    from smpsim.calibrate.host import CalibrationError
    from smpsim.calibrate.vmap_host import online_cpus, record

    if replay:
        out = []
        for p in replay:
            try:
                out.append((str(p), p.read_text()))
            except OSError as e:
                fail(f"--replay {p}: {e.strerror}; give a trace saved with --keep DIR")
        return out
    kibs = _sizes(sizes)
    if keep is not None and keep.exists():
        fail(f"--keep {keep}: it exists; name a new directory (smpsim writes no file over another)")
    counts = [maps or default_maps(k, online_cpus()) for k in kibs]
    try:
        recs = record(kibs, counts, tracefs, pace_us)
    except CalibrationError as e:
        fail(str(e))
    except PermissionError as e:
        fail(f"tracefs refused access ({e.filename}): run smpsim calibrate --vmap as root")
    except KeyboardInterrupt as e:
        fail(f"{e or 'interrupted'}; the tracefs instance was removed, nothing was recorded", exit_code_of(e))
    out = []
    for r in recs:
        label = f"{r.maps} maps of {r.kib} KiB"
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            path = keep / f"vmap-{r.kib}k.trace"
            path.write_text(r.text)
            label += f" (saved to {path})"
        out.append((label, r.text))
    return out


def calibrate_vmap(sizes: str, maps: int | None, pace_us: int, keep: Path | None, replay: list[Path],
                   tracefs: str | None, as_json: bool) -> None:
    from smpsim.calibrate.vmap import VmapTraceError, parse_vmap, read_header, replay as run_replay
    from smpsim.calibrate.vmap import rows, summary, table

    report, failures = [], []
    for label, text in _recordings(sizes, maps, pace_us, keep, replay, tracefs):
        try:
            h = read_header(text, label)
            r = run_replay(parse_vmap(text, label), h["ncpus"], h["pre_pages"], h["pre_areas"])
        except VmapTraceError as e:
            fail(str(e))
        diff = r.first_difference()
        counts_agree = len(r.measured) == len(r.modelled)
        if r.kernel_limit is not None and r.kernel_limit != r.limit:
            failures.append(f"{label}: the kernel's nr_lazy_max is {r.kernel_limit}, the model's "
                            f"lazy_max_pages({r.ncpus}) {r.limit}")
        if not counts_agree:
            failures.append(f"{label}: the kernel purged {len(r.measured)} times, the model {len(r.modelled)}; "
                            f"first difference: {diff}")
        report.append((label, h, r, diff))
    if as_json:
        typer.echo(json.dumps([{"recording": label, "kernel": h["kernel"], "ncpus": r.ncpus,
                                "lazy_max_pages": r.limit, "kernel_nr_lazy_max": r.kernel_limit,
                                "frees": r.frees, "unpurged_before": {"areas": r.pre_areas, "pages": r.pre_pages},
                                "purges": rows(r), "summary": summary(r), "first_difference": diff}
                               for label, h, r, diff in report], indent=2))
    else:
        for label, h, r, diff in report:
            sizes_seen = ", ".join(f"{n} x {p}" for p, n in sorted(r.area_pages.items(), key=lambda x: -x[1]))
            typer.echo(f"Linux {h['kernel']}, {r.ncpus} CPUs, lazy_max_pages() = {r.limit} (kernel: "
                       f"{r.kernel_limit}); {label}: {r.frees} frees traced (areas in pages: {sizes_seen}; "
                       f"{r.inferred} allocated before the trace, sized from vmap_lazy_nr); "
                       f"{r.pre_areas} areas of {r.pre_pages} pages waiting before it")
            for line in table(r):
                typer.echo(line)
            if diff and len(r.measured) == len(r.modelled):
                typer.echo(f"  (counts agree; {diff})")
            typer.echo("")
    if failures:
        fail("purges differ: " + "; ".join(failures), EXIT_RUN_FAILED)
