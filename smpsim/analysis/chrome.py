"""Chrome Trace Event JSON of a run, for the Perfetto UI (ui.perfetto.dev: Open trace file) or chrome://tracing.

Layout (one process, pid 1, named after the run):
- track ``CPU c`` (tid = c): ``X`` spans for each kmap (from the request to the return, ``cycles`` long: it
  includes spinning on kmap_lock and sleeping on pkmap_map_wait) and each flush the CPU initiated (from the
  flush start, ``stall`` long: for a wrap flush it nests inside the kmap that wrapped the ring); ``i``
  instants for kunmap, ring wrap, stale use, sleep (wait) and wake-up.
- track ``CPU c IPI`` (tid = ncpu + c, sorted right under ``CPU c``): an ``X`` span per IPI the CPU handled,
  from its arrival ``t_recv`` to its ack ``t_ack``. The handler interrupts whatever the CPU was doing, and a
  kmap that spun on the lock while an IPI was handled returns before the handler's ack, so the handler has
  its own track: spans on one track always nest properly.
- flow arrows: for each IPI, an ``s`` event on the sender's ``CPU`` track at ``t_send`` (inside the flush
  span that sent it) and an ``f`` event (``bp: "e"``) at ``t_recv`` on the receiver's IPI track, binding
  the arrow to the handler span; both carry the same ``id`` (the IPI event's seq), ``cat`` and ``name``.
- counter ``free pkmap slots`` (``C``; ``free kmap_local slots`` for kmap-local): capacity minus the slots in
  use (smpsim.analysis.trace_metrics.occupancy), at 0 (or at the window start) and at every change.

Time: ``ts`` and ``dur`` are microseconds with 1 virtual cycle shown as 1 ns (``ts = cycles / 1000``).
Order: the metadata (``M``) events come first; every other event follows sorted by ``ts`` (a longer span
first when two start together), so timestamps never decrease along any track, whatever the phase.

A window ``[t_from, t_to]`` (cycles) keeps the spans that overlap it, the instants inside it, the flows whose
``t_send`` and ``t_recv`` are both inside it (so both ends always have their span), and the counter from its
value at ``t_from``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import numpy as np

from smpsim.analysis.load import Trace
from smpsim.analysis.trace_metrics import cpu_count, occupancy

PID = 1
_INSTANTS = ("kunmap", "wrap", "stale", "wait", "wake")


def _us(cycles: int) -> float:
    return round(cycles / 1000, 3)


def chrome_trace(tr: Trace, t_from: int | None = None, t_to: int | None = None) -> dict[str, Any]:
    """The whole document as a dict (``traceEvents``, ``displayTimeUnit``, ``otherData``)."""
    lo = -(1 << 62) if t_from is None else int(t_from)
    hi = (1 << 62) if t_to is None else int(t_to)
    if lo > hi:
        raise ValueError(f"--from {t_from} is after --to {t_to}")
    meta = tr.meta
    ncpu = cpu_count(tr)
    name = f"smpsim {Path(meta.path).name} ({meta.policy}, {meta.workload})"
    head: list[dict[str, Any]] = [{"ph": "M", "pid": PID, "tid": 0, "name": "process_name", "args": {"name": name}}]
    for c in range(ncpu):
        head += [
            {"ph": "M", "pid": PID, "tid": c, "name": "thread_name", "args": {"name": f"CPU {c}"}},
            {"ph": "M", "pid": PID, "tid": c, "name": "thread_sort_index", "args": {"sort_index": 2 * c}},
            {"ph": "M", "pid": PID, "tid": ncpu + c, "name": "thread_name", "args": {"name": f"CPU {c} IPI"}},
            {"ph": "M", "pid": PID, "tid": ncpu + c, "name": "thread_sort_index", "args": {"sort_index": 2 * c + 1}},
        ]
    body: list[dict[str, Any]] = []

    for seq, t, cpu, page, slot, new, slept, cycles, lock_wait in tr.rows(
            "SELECT seq, t, cpu, page, slot, new, slept, cycles, lock_wait FROM events "
            "WHERE ev = 'kmap' AND t - cycles <= ? AND t >= ? ORDER BY seq", [hi, lo]):
        body.append({"ph": "X", "pid": PID, "tid": cpu, "name": "kmap", "cat": "kmap",
                     "ts": _us(t - cycles), "dur": _us(cycles),
                     "args": {"seq": seq, "page": page, "slot": slot, "new": new, "slept": slept,
                              "lock_wait": lock_wait}})
    for seq, t, cpu, scope, slots, targets, pages, stall in tr.rows(
            "SELECT seq, t, cpu, scope, slots, len(targets), pages, stall FROM events "
            "WHERE ev = 'flush' AND t <= ? AND t + stall >= ? ORDER BY seq", [hi, lo]):
        body.append({"ph": "X", "pid": PID, "tid": cpu, "name": f"flush {scope}", "cat": "flush",
                     "ts": _us(t), "dur": _us(stall),
                     "args": {"seq": seq, "scope": scope, "slots": slots, "ipis": targets, "pages": pages}})
    for seq, cpu, src, t_send, t_recv, t_ack, scope, dropped in tr.rows(
            "SELECT seq, cpu, src, t_send, t_recv, t_ack, scope, dropped FROM events "
            "WHERE ev = 'ipi' AND t_recv <= ? AND t_ack >= ? ORDER BY seq", [hi, lo]):
        body.append({"ph": "X", "pid": PID, "tid": ncpu + cpu, "name": f"IPI {scope}", "cat": "ipi",
                     "ts": _us(t_recv), "dur": _us(t_ack - t_recv),
                     "args": {"seq": seq, "from": src, "scope": scope, "dropped": dropped, "t_send": t_send}})
        if lo <= t_send and t_recv <= hi:
            flow = {"name": "IPI", "cat": "ipi", "id": seq, "pid": PID}
            body.append({**flow, "ph": "s", "tid": src, "ts": _us(t_send)})
            body.append({**flow, "ph": "f", "bp": "e", "tid": ncpu + cpu, "ts": _us(t_recv)})
    for seq, t, cpu, ev, page, slot, count, slots, reached, n, woken in tr.rows(
            "SELECT seq, t, cpu, ev, page, slot, count, slots, reached, n, woken FROM events "
            f"WHERE ev IN ({', '.join(repr(e) for e in _INSTANTS)}) AND t BETWEEN ? AND ? ORDER BY seq", [lo, hi]):
        args: dict[str, Any] = {"seq": seq}
        if ev == "kunmap":
            args.update(page=page, slot=slot, count=count)
        elif ev == "wrap":
            args.update(slots=slots)
        elif ev == "stale":
            args.update(page=page, reached=reached, slot=slot, n=n)
        elif ev == "wait":
            args.update(page=page)
        else:
            args.update(woken=woken)
        body.append({"ph": "i", "s": "t", "pid": PID, "tid": cpu, "name": ev, "cat": ev, "ts": _us(t),
                     "args": args})

    cap = meta.slot_capacity
    if cap is not None:
        label = "free pkmap slots" if meta.uses_ring else "free kmap_local slots"
        t, used = occupancy(tr)
        start = max(lo, 0)
        before = int(np.searchsorted(t, start, side="right"))  # changes at or before the window start
        level = int(used[before - 1]) if before else 0
        if start <= hi:
            body.append({"ph": "C", "pid": PID, "tid": 0, "name": label, "ts": _us(start), "args": {"free": cap - level}})
        inside = slice(before, int(np.searchsorted(t, hi, side="right")))
        for ti, u in zip(t[inside].tolist(), used[inside].tolist()):
            body.append({"ph": "C", "pid": PID, "tid": 0, "name": label, "ts": _us(ti), "args": {"free": cap - u}})

    body.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
    return {"traceEvents": head + body, "displayTimeUnit": "ns",
            "otherData": {"run": str(meta.path), "policy": meta.policy, "workload": meta.workload, "cpus": ncpu,
                          "time_unit": "1 virtual cycle is shown as 1 ns (ts = cycles / 1000 us)",
                          "from_cycles": t_from, "to_cycles": t_to}}


def write_chrome(tr: Trace, out: IO[str], t_from: int | None = None, t_to: int | None = None) -> int:
    """Write the document to a text stream; returns the number of trace events."""
    doc = chrome_trace(tr, t_from, t_to)
    json.dump(doc, out, separators=(",", ":"))
    out.write("\n")
    return len(doc["traceEvents"])
