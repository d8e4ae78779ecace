"""The analysis as report sections: ``sections(a)`` -> [(title, headers or None, rows)].

One layout for the terminal (plain or rich) and the HTML report. A section without headers is a list of
(label, value, note) rows; one with headers is a table. Values stay numbers here; formatting is the
renderer's.
"""

from __future__ import annotations

from typing import Any

from smpsim.headline import METRICS, confounder_note, fmt, fmt_metric

MATRIX_MAX_CPUS = 32  # wider IPI matrices are left to --json / the heatmap


def _pct(x: float | None) -> str:
    return fmt(x, "fraction")


def sections(a: dict[str, Any]) -> list[tuple[str, list[str] | None, list[list[Any]]]]:
    r, c = a["run"], a["counters"]
    k, sd, ip, sl, ring = a["kmaps"], a["shootdowns"], a["ipis"], a["sleeps"], a["ring"]
    out: list[tuple[str, list[str] | None, list[list[Any]]]] = []

    ring_desc = (f"{r['last_pkmap']} pkmap slots" if r.get("last_pkmap") and ring["slots"] == "pkmap"
                 else f"kmap_local, {r.get('kmap_local_slots')} slots per CPU")
    run_rows: list[list[Any]] = [
        ["run", r["run"], ""],
        ["policy / workload", f"{r.get('policy')} / {r.get('workload')}", ""],
        ["machine", f"{r['cpus']} CPUs, {ring_desc}", ""],
        ["status", r.get("status") or "unfinished", ("TRUNCATED: " + str(r.get("truncation"))) if r.get("truncated") else ""],
        ["events", f"{fmt(a['events'])}", ""],
        ["virtual time", f"{fmt(a['t_end'])} cycles", ""],
    ]
    # Said with the run, before any number it confounds (smpsim.headline.CONFOUNDERS)
    run_rows += [["confounded", c["mark"], confounder_note(c)]
                 for c in a.get("confounders") or []]
    out.append(("Run", None, run_rows))
    out.append(("Headline metrics", None, [[m.label, fmt_metric(m.key, a["headline"][m.key]), ""] for m in METRICS]))

    scope_note = ", ".join(f"{s} {fmt(n)}" for s, n in a["flushes_by_scope"].items()) or "none"
    cap = ring["capacity"]
    out.append(("Counts", None, [
        ["kmaps", k["total"], f"{fmt(k['slept'])} slept on pkmap_map_wait"],
        ["  new mappings", k["new"], _pct(k["new_fraction"])],
        ["  reused mappings", k["reused"], _pct(k["reuse_fraction"])],
        ["ring wraps", c["wraps"], f"{fmt(sd['slots_torn_down'])} slots torn down"],
        ["flushes", c["flushes"], f"by scope: {scope_note}"],
        ["IPIs sent", ip["sent"], f"{fmt(ip['per_1000_kmaps'])} per 1000 kmaps"],
        ["  useless IPIs", ip["useless"], f"{_pct(ip['useless_fraction'])}: the receiver dropped no pkmap translation"],
        ["  pkmap translations dropped", ip["translations_dropped"], ""],
        ["sleeps on pkmap_map_wait", sl["sleeps"], f"{fmt(sl['wakes'])} wake-ups; {fmt(sl['episodes'])} sleep episodes"],
        ["  asleep when the trace ends", len(sl["asleep_at_end"]),
         ("CPUs " + ", ".join(map(str, sl["asleep_at_end"]))) if sl["asleep_at_end"] else ""],
        [f"{ring['slots']} slots in use, peak", ring["peak_in_use"],
         f"of {_n(cap)}; mean {fmt(ring['mean_in_use'])}; {fmt(ring['in_use_at_end'])} at the end"],
        ["stale uses", a["stale"]["uses"], f"{fmt(a['stale']['events'])} events"
         + ("" if a["stale"]["uses"] == 0 else ": the flush policy let CPUs reach freed frames")],
    ]))

    def drow(label: str, d: dict[str, Any]) -> list[Any]:
        return [label, d["count"], d["mean"], d["p50"], d["p90"], d["p99"], d["max"], d["total"]]

    lat = [drow("shootdown: initiator stall", sd["stall"])]
    if len(sd["by_scope"]) > 1:
        lat += [drow(f"  flush {scope}", v["stall"]) for scope, v in sd["by_scope"].items()]
    lat += [drow("IPI: send to handler entry", ip["delivery"]),
            drow("IPI: send to ack", ip["round_trip"]),
            drow("kmap: request to return", k["latency"]),
            drow("kmap_lock wait per kmap", a["kmap_lock"]["wait"]),
            drow("asleep: wait to kmap", sl["asleep"])]
    out.append(("Latencies (cycles)", ["", "count", "mean", "p50", "p90", "p99", "max", "total"], lat))

    out.append(("Per-CPU TLB", ["CPU", "kmaps", "accesses", "hit rate", "misses", "flush misses",
                                "flush-miss cycles", "IPIs in", "IPIs out", "stale uses"],
                [[p["cpu"], p["kmaps"], p["accesses"], _pct(p["hit_rate"]), p["misses"], p["flush_misses"],
                  p["flush_miss_cycles"], p["ipis_received"], p["ipis_sent"], p["stale"]] for p in a["per_cpu"]]))

    st = a["stale"]
    if st["examples"]:
        out.append((f"First {len(st['examples'])} stale uses", ["seq", "t", "CPU", "page (intended)",
                                                                "frame reached", "slot", "accesses"],
                    [[e["seq"], e["t"], e["cpu"], e["page"], e["reached"], e["slot"], e["n"]]
                     for e in st["examples"]]))

    n = len(ip["matrix"])
    if ip["sent"] and n <= MATRIX_MAX_CPUS:
        out.append(("IPI matrix (rows: sender, columns: receiver)", ["from \\ to", *map(str, range(n)), "sent"],
                    [[i, *row, sum(row)] for i, row in enumerate(ip["matrix"])]
                    + [["received", *ip["received_by_cpu"], ip["sent"]]]))
    elif ip["sent"]:
        out.append(("IPI matrix", None, [["matrix", f"{n} x {n}", "see --json or the heatmap (--plot)"]]))

    logs = a.get("logs")
    if logs is not None:
        if not logs["files"]:
            out.append(("Operational logs", None, [["log files", 0, "none (inline engine)"]]))
        else:
            rows: list[list[Any]] = [
                ["log files", len(logs["files"]), logs["dir"]],
                ["lines", logs["lines"], ", ".join(f"{lv} {fmt(k)}" for lv, k in logs["by_level"].items())],
                ["warnings", logs["warnings"], ""],
                ["errors", logs["errors"], ""],
            ]
            if logs["unparseable"]:
                rows.append(["unparseable lines", logs["unparseable"], "; ".join(logs["unparseable_examples"][:3])])
            for p in logs["problems"]:
                extra = " ".join(f"{key}={val}" for key, val in p.items()
                                 if key not in ("file", "line", "timestamp", "process", "level", "event"))
                rows.append([f"{p['level']} ({p['process']})", str(p["event"]), f"{p['timestamp']} {extra}".strip()])
            out.append(("Operational logs", None, rows))
    return out


def _n(v: int | None) -> str:
    return "?" if v is None else fmt(v)
