"""`smpsim calibrate`: measure this host's TLB-shootdown costs and write them as a cost preset."""

from __future__ import annotations

from smpsim.calibrate.host import CalibrationError, Measurement, measure
from smpsim.calibrate.trace import summarize

__all__ = ["CalibrationError", "Measurement", "measure", "preset_toml", "figures"]


def figures(m: Measurement) -> dict[str, dict]:
    """Each measured quantity with its percentiles (ns) and number of samples."""
    floor = summarize(m.bare_munmap_ns).get("p50_ns", 0)
    return {
        "ipi_send_to_remote_flush": summarize(m.pairs.send_to_flush),
        "ipi_send_to_handler": summarize(m.pairs.send_to_entry),
        "ipi_handler": summarize(m.pairs.handler),
        "local_flush": summarize([max(0, x - floor) for x in m.local_munmap_ns]),
    }


# preset cost key -> (figure, what it is)
_MAPPING = {
    "ipi_latency": ("ipi_send_to_handler", "IPI send (ipi:ipi_send_cpu) to handler entry "
                    "(irq_vectors:call_function*_entry) on the target"),
    "ipi_handler": ("ipi_handler", "handler entry to exit on the target (irq_vectors:call_function*_entry/exit)"),
}
# Measured and reported, not applied: tracepoints mark no end of a local flush, and the munmap difference
# also frees the page, so it bounds INVLPG from far above (microseconds against ~100 ns [Documentation/x86/tlb.rst]).
_REPORTED = {
    "local_flush": "munmap of a touched page minus the p50 munmap of an untouched one (no PTE, so no flush), "
                   "no other CPU in the mm: an upper bound on the local flush, as it also frees the page",
    "ipi_send_to_remote_flush": "tlb:tlb_flush 'remote IPI send' to the first 'remote shootdown' on another CPU "
                                "before the initiator's next send",
}


def preset_toml(m: Measurement, ghz: float) -> str:
    """A preset file `machine.preset` can load: each cost with its source, percentiles and samples."""
    f = figures(m)
    lines = [f"# Measured by `smpsim calibrate` on Linux {m.kernel}: {m.munmaps} munmaps with CPU {m.cpus[1]} busy",
             f"# in the same address space; {m.pairs.ipi_sends} IPI sends traced. Cycles at {ghz} GHz (the model's",
             "# costs are cycles of a ~2.5 GHz core). Percentiles are nearest-rank, in nanoseconds.",
             "", "[preset]", 'name = "calibrated"',
             f'description = "this host (Linux {m.kernel}), measured from tracefs"', ""]
    for key, (fig, what) in _MAPPING.items():
        s = f[fig]
        if not s.get("samples"):
            lines.append(f"# cost.{key}: no samples ({what}); the schema default applies")
            lines.append("")
            continue
        lines += [f"[cost.{key}]", f"value = {max(1 if key == 'ipi_latency' else 0, round(s['p50_ns'] * ghz))}",
                  f'source = "smpsim calibrate: p50 of {what}"',
                  f"p50_ns = {s['p50_ns']}", f"p90_ns = {s['p90_ns']}", f"p99_ns = {s['p99_ns']}",
                  f"samples = {s['samples']}", ""]
    lines.append("# Measured too, but not model costs (the preset loader ignores [measured]):")
    for fig, what in _REPORTED.items():
        s = f[fig]
        lines += [f"[measured.{fig}]", f'what = "{what}"']
        lines += [f"{k} = {v}" for k, v in s.items()]
        lines.append("")
    lines += ["[measured.shootdowns]", f"munmaps = {m.munmaps}", f"ipi_sends = {m.pairs.ipi_sends}",
              f"sends_without_remote_flush = {m.pairs.unpaired}  # every target was in lazy-TLB mode"]
    return "\n".join(lines) + "\n"
