"""`smpsim calibrate --vmap`, the pure half: parse vmalloc's tracepoints, replay them through the model of
vmalloc's lazy accounting (smpsim/model/vmalloc.py) and set the kernel's purges beside the model's.

Events (print formats of include/trace/events/vmalloc.h, Linux 6.x):
  alloc_vmap_area: va_start: <decimal> size=<bytes> align=... vstart=0x... vend=0x... failed=<0|1>
  free_vmap_area_noflush: va_start=0x<hex> nr_lazy=<pages> nr_lazy_max=<pages>
  purge_vmap_area_lazy: start=0x<hex> end=0x<hex> num_purged=<areas>
and ipi:ipi_send_cpu / ipi_send_cpumask with a callback: the function-call IPIs a purge's
flush_tlb_kernel_range sends from the purging task just before the purge logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from smpsim.calibrate.trace import _LINE, IPI_SEND, _CPUS, _cpulist
from smpsim.model.vmalloc import PAGE_SHIFT, LazyVmap, Purge, lazy_max_pages

_FIELDS = {
    "alloc_vmap_area": re.compile(r"va_start: (?P<addr>\d+) size=(?P<size>\d+) .*failed=(?P<failed>\d+)"),
    "free_vmap_area_noflush": re.compile(r"va_start=0x(?P<addr>[0-9a-f]+) nr_lazy=(?P<nr>\d+) "
                                         r"nr_lazy_max=(?P<max>\d+)"),
    "purge_vmap_area_lazy": re.compile(r"start=0x(?P<addr>[0-9a-f]+) end=0x(?P<end>[0-9a-f]+) "
                                       r"num_purged=(?P<n>\d+)"),
}
HEADER = "# smpsim calibrate --vmap:"
_WRITTEN = re.compile(r"entries-in-buffer/entries-written: (?P<kept>\d+)/(?P<written>\d+)")


class VmapTraceError(ValueError):
    """The trace text is not what the tracepoints print; the message names the line."""


@dataclass(frozen=True)
class VEvent:
    """One vmalloc event of a recording (an area's alloc or free, a purge, an IPI) with the fields its kind
    uses."""
    kind: str                 # alloc, free, purge, ipi
    ns: int
    cpu: int
    pid: int
    addr: int = 0             # alloc/free: area start; purge: flush start
    end: int = 0              # purge: flush end
    pages: int = 0            # alloc: area size in pages (guard page included)
    nr_lazy: int = 0          # free: vmap_lazy_nr after adding this area
    nr_lazy_max: int = 0      # free: lazy_max_pages() as the kernel computed it
    areas: int = 0            # purge: areas purged
    targets: tuple[int, ...] = ()  # ipi


def parse_vmap(text: str, source: str = "trace") -> list[VEvent]:
    """The vmalloc and IPI events of an ftrace `trace` file in file order. Other events are skipped; a
    vmalloc event whose fields do not parse, or a buffer that dropped events, is an error naming the line."""
    out: list[VEvent] = []
    for no, line in enumerate(text.splitlines(), 1):
        w = _WRITTEN.search(line)
        if w and w["kept"] != w["written"]:
            raise VmapTraceError(f"{source}, line {no}: the trace buffer dropped events ({w['kept']} of "
                                 f"{w['written']} kept); record fewer maps or a larger buffer_size_kb")
        if not line or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        name, rest = m["event"], m["rest"]
        secs, _, frac = m["ts"].partition(".")
        base: dict[str, Any] = dict(ns=int(secs) * 1_000_000_000 + int(frac.ljust(9, "0")[:9]), cpu=int(m["cpu"]),
                    pid=int(m["pid"]))
        if name in IPI_SEND:
            if "callback=0x0 " in rest + " ":
                continue  # a reschedule IPI, not a function call (a flush's IPIs call a function)
            c = _CPUS.search(rest)
            out.append(VEvent("ipi", targets=_cpulist(c["cpus"]) if c else (), **base))
            continue
        rx = _FIELDS.get(name)
        if rx is None:
            continue
        f = rx.search(rest)
        if f is None:
            raise VmapTraceError(f"{source}, line {no}: {name} without the fields its tracepoint prints "
                                 f"({rest.strip()[:80]!r}); is the trace truncated or from another kernel?")
        if name == "alloc_vmap_area":
            if f["failed"] == "0":
                out.append(VEvent("alloc", addr=int(f["addr"]), pages=int(f["size"]) >> PAGE_SHIFT, **base))
        elif name == "free_vmap_area_noflush":
            out.append(VEvent("free", addr=int(f["addr"], 16), nr_lazy=int(f["nr"]), nr_lazy_max=int(f["max"]),
                              **base))
        else:
            out.append(VEvent("purge", addr=int(f["addr"], 16), end=int(f["end"], 16), areas=int(f["n"]), **base))
    return out


@dataclass(frozen=True)
class Measured:
    """One purge as the kernel logged it."""
    areas: int
    pages: int | None        # vmap_lazy_nr before it minus after it (None: no later free to read it from)
    start: int
    end: int
    ipis: int                # IPIs its task sent since its previous event (the flush_tlb_kernel_range)
    late: int | None         # frees between the one that crossed lazy_max_pages() and the purge (None: none
                             # crossed: a purge for another reason, vm_unmap_aliases or an allocation retry)

    @property
    def span_pages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT


@dataclass
class Replay:
    """A recording's purges as the kernel made them beside the model's replay of the same frees, with the
    limits and the area counts both started from."""
    measured: list[Measured]
    modelled: list[Purge]
    ncpus: int
    limit: int                       # lazy_max_pages(ncpus), the model's
    kernel_limit: int | None         # nr_lazy_max the kernel logged (None: no free)
    frees: int
    inferred: int                    # frees of areas allocated before the trace: size from vmap_lazy_nr
    pre_pages: int                   # waiting before the trace began
    pre_areas: int
    area_pages: dict[int, int] = field(default_factory=dict)  # area size in pages -> frees of that size

    def first_difference(self) -> str | None:
        """None when both made the same purges; else which purge differs first, and how."""
        for i in range(max(len(self.measured), len(self.modelled))):
            m = self.measured[i] if i < len(self.measured) else None
            p = self.modelled[i] if i < len(self.modelled) else None
            if m is None and p is not None:
                return f"purge {i + 1}: the model purges {p.areas} areas ({p.pages} pages); the kernel did not"
            if p is None and m is not None:
                return f"purge {i + 1}: the kernel purged {m.areas} areas; the model does not purge again"
            if m is not None and p is not None and m.areas != p.areas:
                return f"purge {i + 1}: the kernel purged {m.areas} areas, the model {p.areas}"
        return None


def replay(events: list[VEvent], ncpus: int, pre_pages: int = 0, pre_areas: int = 0) -> Replay:
    """Replay the recorded allocations and frees through the model with ``ncpus`` online CPUs, and read the
    kernel's own purges from the same events. ``pre_pages``/``pre_areas``: what was already waiting for a
    purge when the trace began (/proc/vmallocinfo's "unpurged vm_area" lines)."""
    frees = [e for e in events if e.kind == "free"]
    model = LazyVmap(ncpus, pre_pages, pre_areas)
    modelled: list[Purge] = []
    measured: list[Measured] = []
    inferred = 0
    area_pages: dict[int, int] = {}
    prev_nr: int | None = None  # the kernel's vmap_lazy_nr after the last free, since the last purge
    pending_ipis: dict[int, int] = {}
    crossed: int | None = None   # frees since the one that crossed the kernel's limit
    open_purge: dict | None = None  # a kernel purge whose pages await the next free

    def close(after: int | None) -> None:
        """The open kernel purge, its pages read as vmap_lazy_nr before it minus ``after`` it (None: unknown)."""
        assert open_purge is not None
        before = open_purge.pop("before")
        pages = before - after if before is not None and after is not None else None
        measured.append(Measured(pages=pages, **open_purge))

    for e in events:
        if e.kind == "ipi":
            pending_ipis[e.pid] = pending_ipis.get(e.pid, 0) + len(e.targets)
            continue
        ipis = pending_ipis.pop(e.pid, 0)
        if e.kind == "alloc":
            model.alloc(e.addr, e.pages)
        elif e.kind == "free":
            size = model.size_of(e.addr)
            if size is None:
                inferred += 1
                size = max(1, e.nr_lazy - (prev_nr if prev_nr is not None else model.lazy_nr))
            area_pages[size] = area_pages.get(size, 0) + 1
            if open_purge is not None:
                close(e.nr_lazy - size)
                open_purge = None
            if crossed is not None:
                crossed += 1
            elif e.nr_lazy > e.nr_lazy_max:
                crossed = 0
            prev_nr = e.nr_lazy
            p = model.free(e.addr, size)
            if p is not None:
                modelled.append(p)
        elif e.kind == "purge":
            if open_purge is not None:
                close(None)
            open_purge = dict(areas=e.areas, start=e.addr, end=e.end, ipis=ipis, late=crossed, before=prev_nr)
            crossed, prev_nr = None, None
    if open_purge is not None:
        close(None)
    return Replay(measured, modelled, ncpus, lazy_max_pages(ncpus), frees[0].nr_lazy_max if frees else None,
                  len(frees), inferred, pre_pages, pre_areas, area_pages)


def ratio(measured: int | None, modelled: int | None) -> str:
    if measured is None or modelled is None:
        return "-"
    return f"{measured / modelled:.2f}" if modelled else ("1.00" if measured == 0 else "inf")


def _mean(xs: list[int]) -> float | None:
    return sum(xs) / len(xs) if xs else None


COLUMNS = ("areas", "pages", "span", "ipis")  # per purge, measured vs modelled


def rows(r: Replay) -> list[dict]:
    """One row per purge, each quantity as (measured, modelled); missing sides are None. The first purge's
    modelled span leaves out the areas waiting before the trace (their addresses are not known)."""
    out = []
    for i in range(max(len(r.measured), len(r.modelled))):
        m = r.measured[i] if i < len(r.measured) else None
        p = r.modelled[i] if i < len(r.modelled) else None
        out.append({"purge": i + 1,
                    "areas": (m and m.areas, p and p.areas),
                    "pages": (m.pages if m else None, p and p.pages),
                    "span": (m and m.span_pages, p.span_pages if p else None),
                    "ipis": (m and m.ipis, p and p.ipis),
                    "late": m.late if m else None})
    return out


def summary(r: Replay) -> dict:
    """Purges and the per-purge means, measured vs modelled (means over purges where both sides are known)."""
    rs = rows(r)
    out: dict = {"purges": (len(r.measured), len(r.modelled))}
    for c in COLUMNS:
        both = [row[c] for row in rs if row[c][0] is not None and row[c][1] is not None]
        out[c] = (_mean([a for a, _ in both]), _mean([b for _, b in both]))
    return out


def table(r: Replay) -> list[str]:
    """The side-by-side text: a line per purge and a line of means, measured / model / ratio."""
    def cell(pair) -> str:
        a, b = pair
        fa = "-" if a is None else (f"{a:.1f}" if isinstance(a, float) else str(a))
        fb = "-" if b is None else (f"{b:.1f}" if isinstance(b, float) else str(b))
        return f"{fa:>8} {fb:>8} {ratio(a, b):>5}"

    head = f"{'purge':>6} " + " ".join(f"{name:^23}" for name in ("areas", "pages", "span (pages)", "IPIs"))
    sub = f"{'':>6} " + " ".join(f"{'kernel':>8} {'model':>8} {'ratio':>5}" for _ in COLUMNS) + "  late frees"
    lines = [head, sub]
    for row in rows(r):
        late = "-" if row["late"] is None else str(row["late"])
        lines.append(f"{row['purge']:>6} " + " ".join(cell(row[c]) for c in COLUMNS) + f"  {late:>10}")
    s = summary(r)
    lines.append(f"{'mean':>6} " + " ".join(cell(s[c]) for c in COLUMNS))
    lines.append(f"purges: kernel {s['purges'][0]}, model {s['purges'][1]}, ratio {ratio(*s['purges'])}")
    return lines


def header(ncpus: int, pre_pages: int, pre_areas: int, kernel: str) -> str:
    """The line a saved trace starts with: what the replay needs besides the events."""
    return f"{HEADER} ncpus={ncpus} unpurged_pages={pre_pages} unpurged_areas={pre_areas} kernel={kernel}\n"


def read_header(text: str, source: str) -> dict:
    """The values of a saved trace's first line (see ``header``)."""
    first = text.split("\n", 1)[0]
    if not first.startswith(HEADER):
        raise VmapTraceError(f"{source}, line 1: not a trace saved by smpsim calibrate --vmap (it starts with "
                             f"{HEADER!r}); record one with --keep DIR")
    vals = dict(kv.split("=", 1) for kv in first[len(HEADER):].split() if "=" in kv)
    try:
        return {"ncpus": int(vals["ncpus"]), "pre_pages": int(vals["unpurged_pages"]),
                "pre_areas": int(vals["unpurged_areas"]), "kernel": vals.get("kernel", "?")}
    except (KeyError, ValueError) as e:
        raise VmapTraceError(f"{source}, line 1: the header lacks a whole number for {e}; it needs ncpus=, "
                             "unpurged_pages= and unpurged_areas=") from None
