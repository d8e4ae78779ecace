"""Replaying a real kernel's kmap_high / kunmap_high calls (``workload.kind = "trace"``).

The input is the text tracefs writes (``trace`` or ``trace_pipe``, with or without the irq-info flags
column, with or without the tgid column) for kprobes on ``kmap_high`` and ``kunmap_high``::

    bash-1234  [001] d..1.  2291.104551: kmap: (kmap_high+0x0/0x140) page=0xc15a1e40

The probe point, ``(symbol+off/size)``, decides: ``kmap_high`` is a kmap, ``kunmap_high`` a kunmap, on
the CPU of the ``[NNN]`` column; the first hex argument is the ``struct page *``. Every other line (the
header, other events, lost-event markers) is counted as unused. docs/workloads.md has the recording steps.

- **Pages.** page = pointer // ``workload.trace_page_bytes`` (sizeof(struct page), 32 on i386 without
  debug options). Stateless, so a reader needs no table of the pages it has seen (memory stays flat
  however many distinct pages a trace touches), and the number is the page's index in mem_map plus a
  constant: two pages get the same number only if the setting is larger than the traced kernel's
  sizeof(struct page).
- **Time.** Each CPU's gap between its consecutive calls (and from the trace's first call to its own
  first) becomes a compute op, at ``workload.trace_clock_mhz`` cycles per microsecond. Gaps are taken
  between timestamps converted to cycles from the trace's first call, so rounding never accumulates. A
  timestamp earlier than the CPU's last one (an unsynchronised trace clock) gives a gap of 0.
- **Holds.** The reader counts, in file order and across all CPUs, the kmaps not yet kunmapped of each
  page. A kunmap of a page with none (the trace started while it was held) is skipped and counted. A
  kunmap on another CPU than its kmap (the task migrated) is replayed on the CPU that made it: in the
  kernel kunmap_high is not per-CPU (it drops the slot's count under kmap_lock, whichever CPU calls it),
  and so is the model's. It is the op kunmap_migrated (messages.KUNMAP_MIGRATED), which differs from a
  kunmap in one way: the replay keeps each CPU's own timing, so the kmapping CPU may be later in the model
  than in the trace; while the page has no holder, the kunmap waits for the next kmap of it
  (model/coordinator.py), as the migrated task could not have called kunmap before its kmap returned. Such
  kunmaps are counted.

Each CPU process reads the file itself, lazily: ``blocks(cfg, cpu)`` streams the whole file (the hold
counts need every CPU's lines) and keeps only its CPU's operations, a block at a time. Memory is the
block plus the pages held at the moment, never the file. ``scan`` reads it once for the counts reported
to the user and the errors that must stop a run before it starts (a CPU the machine does not have).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from smpsim.model.errors import WorkloadError
from smpsim.model.messages import COMPUTE, KMAP, KUNMAP, KUNMAP_MIGRATED, OP_CODES

if TYPE_CHECKING:
    from smpsim.config import Config

_BLOCK = 512

# TASK-PID [(TGID)] [CPU] [FLAGS] SECONDS.FRACTION: EVENT: (SYMBOL+OFF/SIZE) ARGS, searched for from the
# CPU column on (a task name can hold anything); ptr: the first hex argument.
_LINE = re.compile(
    rb"\[(?P<cpu>\d+)\]\s+(?:\S{4,6}\s+)?"
    rb"(?P<sec>\d+)\.(?P<frac>\d+):\s+\S+:\s+"
    rb"\((?P<sym>[A-Za-z_.$][\w.$]*)\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+\)(?:.*?\b0x(?P<ptr>[0-9a-fA-F]+)\b)?")
_OPS = {b"kmap_high": KMAP, b"kunmap_high": KUNMAP}
_MARK = b"map_high+"  # in every line that can be a call: a cheap test before the regex
_NAMED = re.compile(rb"\((?:kmap_high|kunmap_high)\+")


@dataclass
class TraceStats:
    """What a scan found, for the user: the calls replayed and the lines and calls left out."""

    lines: int = 0
    kmaps: int = 0
    kunmaps: int = 0
    unused: int = 0            # lines that are no call of kmap_high / kunmap_high
    early_kunmaps: int = 0     # kunmaps with no kmap before them: skipped
    migrated: int = 0          # kunmaps on another CPU than their kmap: replayed there
    cpus: set[int] = field(default_factory=set)
    first_early: int | None = None  # the line of the first skipped kunmap
    first_migrated: int | None = None

    def describe(self) -> str:
        return (f"{_n(self.kmaps, 'kmap')} and {_n(self.kunmaps, 'kunmap')} on {_n(len(self.cpus), 'CPU')} "
                f"({_n(self.migrated, 'kunmap')} on another CPU than its kmap, replayed there); skipped: "
                f"{_n(self.early_kunmaps, 'kunmap')} before any kmap of its page, {self.unused:,} of "
                f"{_n(self.lines, 'line')} not a kmap_high or kunmap_high call")


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _settings(cfg: "Config") -> tuple[str, int, int]:
    path = cfg.workload_file_path()
    assert path is not None  # the config requires workload.trace for kind = "trace"
    w = cfg.workload
    assert w.trace_clock_mhz is not None and w.trace_page_bytes is not None  # filled in by the config
    return str(path), w.trace_clock_mhz, w.trace_page_bytes


def _calls(path: str, mhz: int, page_bytes: int, cpus: int, stats: TraceStats | None = None,
           want: int | None = None) -> Iterator[tuple[int, int, int, int, int]]:
    """(line, cpu, kind, page, cycles since the first call) of every call replayed (only CPU ``want``'s,
    if given), in file order (kind: messages.KMAP, KUNMAP or KUNMAP_MIGRATED); skipped kunmaps and unused
    lines only go to ``stats``."""
    holders: dict[int, list[int]] = {}  # page -> CPUs of its kmaps not yet kunmapped (pages held now only)
    origin = -1
    try:
        f = open(path, "rb")
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read the trace: {e.strerror or e}") from None
    with f:
        lineno = 0
        for raw in f:
            lineno += 1
            m = _LINE.search(raw) if _MARK in raw else None
            kind = _OPS.get(m["sym"]) if m is not None else None
            if kind is None:
                if m is None and _NAMED.search(raw):
                    text = raw.decode("utf-8", "replace").strip()
                    raise WorkloadError(
                        f"{path}:{lineno}: a {'kunmap' if b'kunmap' in raw else 'kmap'}_high call that cannot be "
                        f"read: {text[:160]!r}; expected tracefs text such as 'bash-1234 [001] d..1. "
                        "2291.104551: kmap: (kmap_high+0x0/0x140) page=0xc15a1e40' (timestamps in seconds: "
                        "trace_clock local, global or mono)")
                if stats is not None:
                    stats.unused += 1
                continue
            cpu = int(m["cpu"])
            if cpu >= cpus:
                raise WorkloadError(
                    f"{path}:{lineno}: CPU {cpu} is out of range: the machine has {cpus} "
                    f"CPU{'s' if cpus != 1 else ''}; set machine.cpus to at least {cpu + 1} (the traced "
                    "machine's number of CPUs)")
            ptr = m["ptr"]
            if ptr is None:
                raise WorkloadError(f"{path}:{lineno}: {OP_CODES[kind]} without a hex argument: the page pointer "
                                    "is the first one (record the probe with page=$arg1, see docs/workloads.md)")
            page = int(ptr, 16) // page_bytes
            if kind == KMAP:
                holders.setdefault(page, []).append(cpu)
            else:
                mine = holders.get(page)
                if not mine:
                    if stats is not None:
                        stats.early_kunmaps += 1
                        if stats.first_early is None:
                            stats.first_early = lineno
                    if origin < 0:  # the trace's first call, skipped or not, starts its time
                        origin = _ns(m)
                    continue
                if mine[-1] == cpu:  # the latest kmap of this page by this CPU (nearly always the last)
                    mine.pop()
                elif cpu in mine:
                    del mine[len(mine) - 1 - mine[::-1].index(cpu)]
                else:
                    mine.pop(0)  # the oldest hold of another CPU: the task that migrated
                    kind = KUNMAP_MIGRATED
                    if stats is not None:
                        stats.migrated += 1
                        if stats.first_migrated is None:
                            stats.first_migrated = lineno
                if not mine:
                    del holders[page]
            if stats is not None:
                stats.cpus.add(cpu)
                if kind == KMAP:
                    stats.kmaps += 1
                else:
                    stats.kunmaps += 1
            if origin < 0:
                origin = _ns(m)
            if want is None or cpu == want:
                yield lineno, cpu, kind, page, (_ns(m) - origin) * mhz // 1000
    if stats is not None:
        stats.lines = lineno


def _ns(m: re.Match) -> int:
    """The line's timestamp in nanoseconds (tracefs prints seconds with 6 digits: microseconds)."""
    frac = m["frac"][:9]
    return int(m["sec"]) * 1_000_000_000 + int(frac) * 10 ** (9 - len(frac))


def scan(cfg: "Config") -> TraceStats:
    """Read the whole trace once (streamed): its counts, or WorkloadError for a line that stops a run."""
    path, mhz, page_bytes = _settings(cfg)
    try:
        st = os.stat(path)
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read the trace: {e.strerror or e}") from None
    return _scan(path, st.st_mtime_ns, st.st_size, mhz, page_bytes, cfg.machine.cpus)


@lru_cache(maxsize=8)
def _scan(path: str, _mtime_ns: int, _size: int, mhz: int, page_bytes: int, cpus: int) -> TraceStats:
    stats = TraceStats()
    for _ in _calls(path, mhz, page_bytes, cpus, stats):
        pass
    return stats


def blocks(cfg: "Config", cpu: int) -> Iterator[list[tuple]]:
    """CPU ``cpu``'s operations, a block at a time, read from the file as they are consumed."""
    path, mhz, page_bytes = _settings(cfg)
    ops: list[tuple] = []
    clock = 0
    for _, _, kind, page, cycles in _calls(path, mhz, page_bytes, cfg.machine.cpus, want=cpu):
        if cycles > clock:
            ops.append((COMPUTE, cycles - clock))
            clock = cycles
        ops.append((kind, page))
        if len(ops) >= _BLOCK:
            yield ops
            ops = []
    yield ops


def line_of(cfg: "Config", cpu: int, position: int) -> int | None:
    """The trace line of CPU ``cpu``'s operation at ``position`` (a compute op: the call after it), to
    name it in an error; None past the end."""
    path, mhz, page_bytes = _settings(cfg)
    index, clock = 0, 0
    for lineno, _, _, _, cycles in _calls(path, mhz, page_bytes, cfg.machine.cpus, want=cpu):
        if cycles > clock:  # the compute op before the call, as blocks() makes it
            index, clock = index + 1, cycles
        if index >= position:
            return lineno
        index += 1
    return None


def locate(cfg: "Config", err: Exception) -> None:
    """Add the trace line to a model error raised at a CPU's operation (read again: nothing per op is kept)."""
    cpu, position = getattr(err, "cpu", None), getattr(err, "position", None)
    if cpu is None or position is None or not err.args:
        return
    line = line_of(cfg, cpu, position)
    if line is not None:
        err.args = (f"{err.args[0]} (trace line {line})", *err.args[1:])
