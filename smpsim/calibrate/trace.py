"""Parse ftrace text output and pair a TLB shootdown's events across CPUs. Pure: no tracefs, no I/O.

The kernel's `tlb:tlb_flush` event carries a reason (arch/x86/include/asm/tlbflush.h, `enum tlb_flush_reason`):
the initiator logs "remote IPI send" (TLB_REMOTE_SEND_IPI) when it sends shootdown IPIs, each target logs
"remote shootdown" (TLB_REMOTE_SHOOTDOWN) inside the handler. `irq_vectors:call_function{,_single}_{entry,exit}`
bracket the IPI handler on x86; `ipi:ipi_send_cpu` / `ipi:ipi_send_cpumask` name the targets of each send.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

# "  python-1234  [001] d.h..  441.202023: tlb_flush: pages:1 reason:remote shootdown (1)"
_LINE = re.compile(r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+"
                   r"(?P<event>\w+):\s?(?P<rest>.*)$")
_REASON = re.compile(r"reason:.*\((?P<code>\d+)\)")
_CPUS = re.compile(r"cpu(?:mask)?=(?P<cpus>[0-9,\-]+)")

REMOTE_SHOOTDOWN = 1  # TLB_REMOTE_SHOOTDOWN
REMOTE_SEND_IPI = 4   # TLB_REMOTE_SEND_IPI
HANDLER_ENTRY = ("call_function_entry", "call_function_single_entry")
HANDLER_EXIT = ("call_function_exit", "call_function_single_exit")
IPI_SEND = ("ipi_send_cpu", "ipi_send_cpumask")


@dataclass(frozen=True)
class Event:
    """One ftrace line of interest: its time, CPU, event name and, by event, the flush reason or the IPI
    targets."""
    ns: int        # timestamp (a clock common to all CPUs: tracefs trace_clock "mono" or "global")
    cpu: int
    name: str
    reason: int | None = None          # tlb_flush
    targets: tuple[int, ...] = ()      # ipi_send_*


def _cpulist(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return tuple(out)


def parse(text: str) -> list[Event]:
    """The events of an ftrace `trace` file, in file order; comment and unknown lines are skipped."""
    events = []
    for line in text.splitlines():
        if not line or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        secs, _, frac = m["ts"].partition(".")
        ns = int(secs) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])
        name, rest = m["event"], m["rest"]
        reason, targets = None, ()
        if name == "tlb_flush":
            r = _REASON.search(rest)
            reason = int(r["code"]) if r else None
        elif name in IPI_SEND:
            c = _CPUS.search(rest)
            targets = _cpulist(c["cpus"]) if c else ()
        events.append(Event(ns, int(m["cpu"]), name, reason, targets))
    return events


@dataclass
class Pairs:
    """Durations in nanoseconds; each list one sample per pairing."""
    send_to_flush: list[int] = field(default_factory=list)   # remote IPI send -> that CPU's remote shootdown
    send_to_entry: list[int] = field(default_factory=list)   # ipi_send -> handler entry on the target
    handler: list[int] = field(default_factory=list)         # handler entry -> exit on the target
    ipi_sends: int = 0                                       # IPIs sent (one per target)
    unpaired: int = 0                                        # sends with no later shootdown on another CPU


def pair(events: list[Event]) -> Pairs:
    """Pair each "remote IPI send" with the first "remote shootdown" on another CPU, each IPI send with the
    first handler entry on its target, and each handler entry with the first exit on its CPU.

    A shootdown is synchronous (the initiator waits for every target), so a send's partner must come before
    the initiator's next send; a target in lazy-TLB mode is skipped by the kernel and has none."""
    seq: dict[tuple[int, str], list[int]] = {}
    for e in sorted(events, key=lambda e: (e.ns, e.cpu)):
        if e.name == "tlb_flush" and e.reason in (REMOTE_SHOOTDOWN, REMOTE_SEND_IPI):
            kind = "shootdown" if e.reason == REMOTE_SHOOTDOWN else "send"
        elif e.name in HANDLER_ENTRY:
            kind = "entry"
        elif e.name in HANDLER_EXIT:
            kind = "exit"
        elif e.name in IPI_SEND:
            kind = "ipi"
        else:
            continue
        seq.setdefault((e.cpu, kind), []).append(e.ns)
    cpus = sorted({c for c, _ in seq})

    def first_in(cpu: int, kind: str, lo: int, hi: float) -> int | None:
        ts = seq.get((cpu, kind), [])
        i = bisect.bisect_left(ts, lo)
        return ts[i] if i < len(ts) and ts[i] < hi else None

    def window(cpu: int, kind: str, i: int) -> float:
        ts = seq[(cpu, kind)]
        return ts[i + 1] if i + 1 < len(ts) else float("inf")

    out = Pairs()
    for s in cpus:
        for i, t in enumerate(seq.get((s, "send"), [])):
            hits = [x for c in cpus if c != s
                    if (x := first_in(c, "shootdown", t, window(s, "send", i))) is not None]
            if hits:
                out.send_to_flush.append(min(hits) - t)
            else:
                out.unpaired += 1
    for e in sorted(events, key=lambda e: (e.ns, e.cpu)):
        if e.name in IPI_SEND:
            ts = seq[(e.cpu, "ipi")]
            end = window(e.cpu, "ipi", bisect.bisect_right(ts, e.ns) - 1)
            for c in e.targets:
                out.ipi_sends += 1
                x = first_in(c, "entry", e.ns, end)
                if x is not None:
                    out.send_to_entry.append(x - e.ns)
    for c in cpus:
        for i, t in enumerate(seq.get((c, "entry"), [])):
            x = first_in(c, "exit", t, window(c, "entry", i))
            if x is not None:
                out.handler.append(x - t)
    return out


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def summarize(values: list[int]) -> dict:
    if not values:
        return {"samples": 0}
    return {"samples": len(values), "p50_ns": percentile(values, 50), "p90_ns": percentile(values, 90),
            "p99_ns": percentile(values, 99), "max_ns": max(values)}
