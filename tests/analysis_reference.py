"""The figures of ``smpsim analyze``, computed a second time, independently: plain Python over the events of
``smpsim export --format jsonl``, one event at a time, from the definitions in docs/analysis.md. Nothing
here imports smpsim.analysis or smpsim.trace.counters."""

from __future__ import annotations

import math
from collections import Counter, defaultdict


def pct(values: list[int], p: int) -> int | None:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not values:
        return None
    v = sorted(values)
    return v[math.ceil(p * len(v) / 100) - 1]


def dist(values: list[int]) -> dict:
    n = len(values)
    return {"count": n, "total": sum(values), "mean": (sum(values) / n) if n else None,
            "p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99),
            "max": max(values) if values else None}


def reference(events: list[dict], ncpu: int, ring_policy: bool, capacity: int) -> dict:
    c = Counter()
    scopes = Counter()
    per = [Counter() for _ in range(ncpu)]
    by_type = Counter()
    matrix = [[0] * ncpu for _ in range(ncpu)]
    useless_m = [[0] * ncpu for _ in range(ncpu)]
    stall, stall_by_scope = [], defaultdict(list)
    lock_wait, kmap_cycles = [], []
    delivery, round_trip = [], []
    asleep, first_wait = [], {}
    stale_examples = []
    slots_torn = targeted = dropped_total = slept_kmaps = 0
    # ring occupancy, slot by slot: a slot is in use while its pkmap_count >= 1
    count: dict = {}
    level = peak = 0
    t_peak = 0
    area = 0
    t_prev = 0
    t_end = 0
    for e in events:
        ev, cpu, t = e["ev"], e["cpu"], e["t"]
        by_type[ev] += 1
        t_end = max(t_end, t)
        if ev == "kmap":
            c["kmaps"] += 1
            per[cpu]["kmaps"] += 1
            c["new_mappings" if e["new"] else "reuses"] += 1
            c["kmap_cycles"] += e["cycles"]
            c["lock_wait_cycles"] += e["lock_wait"]
            lock_wait.append(e["lock_wait"])
            kmap_cycles.append(e["cycles"])
            slept_kmaps += e["slept"]
            if cpu in first_wait:
                assert e["slept"], e
                asleep.append(t - first_wait.pop(cpu))
            key = e["slot"] if ring_policy else (cpu, e["slot"])
            if e["new"]:
                assert count.get(key, 0) == 0, e
                count[key] = 2 if ring_policy else 1
            else:
                count[key] += 1
        elif ev == "kunmap":
            c["kunmaps"] += 1
            key = e["slot"] if ring_policy else (cpu, e["slot"])
            count[key] = e["count"]
        elif ev == "wrap":
            c["wraps"] += 1
            torn = [s for s, k in count.items() if k == 1]
            assert len(torn) == e["slots"], (e, len(torn))
            for s in torn:
                count[s] = 0
        elif ev == "flush":
            c["flushes"] += 1
            scopes[e["scope"]] += 1
            c["stall_cycles"] += e["stall"]
            stall.append(e["stall"])
            stall_by_scope[e["scope"]].append(e["stall"])
            slots_torn += e.get("slots", 0)
            targeted += len(e.get("targets", []))
        elif ev == "ipi":
            c["ipis"] += 1
            per[cpu]["ipis_received"] += 1
            per[e["src"]]["ipis_sent"] += 1
            matrix[e["src"]][cpu] += 1
            dropped_total += e["dropped"]
            if e["dropped"] == 0:
                c["useless_ipis"] += 1
                useless_m[e["src"]][cpu] += 1
            delivery.append(e["t_recv"] - e["t_send"])
            round_trip.append(e["t_ack"] - e["t_send"])
        elif ev == "access":
            per[cpu]["hits"] += e["hits"]
            per[cpu]["misses"] += e["misses"]
            per[cpu]["accesses"] += e["n"]
        elif ev == "tlb_miss":
            if "page" not in e:
                per[cpu]["misses"] += e["n"]
            if e["flush_caused"]:
                per[cpu]["flush_misses"] += e["n"]
                per[cpu]["flush_miss_cycles"] += e["cycles"]
        elif ev == "stale":
            c["stale"] += e["n"]
            c["stale_events"] += 1
            per[cpu]["stale"] += e["n"]
            if len(stale_examples) < 5:
                stale_examples.append({k: e[k] for k in ("seq", "t", "cpu", "page", "reached", "slot", "n")})
        elif ev == "wait":
            c["sleeps"] += 1
            first_wait.setdefault(cpu, t)
        elif ev == "wake":
            c["wakes"] += 1
        new_level = sum(1 for k in count.values() if k >= 1)
        if new_level != level:
            area += level * (t - t_prev)
            level, t_prev = new_level, t
            if level > peak:
                peak, t_peak = level, t
    area += level * (t_end - t_prev)
    hits = sum(p["hits"] for p in per)
    misses = sum(p["misses"] for p in per)
    kmaps = c["kmaps"]
    per_cpu = []
    for i, p in enumerate(per):
        look = p["hits"] + p["misses"]
        per_cpu.append({"cpu": i, "kmaps": p["kmaps"], "accesses": p["accesses"], "hits": p["hits"],
                        "misses": p["misses"], "hit_rate": (p["hits"] / look) if look else None,
                        "flush_misses": p["flush_misses"], "flush_miss_cycles": p["flush_miss_cycles"],
                        "ipis_received": p["ipis_received"], "ipis_sent": p["ipis_sent"], "stale": p["stale"]})
    return {
        "counters": {**{k: c[k] for k in ("kmaps", "new_mappings", "reuses", "kunmaps", "wraps", "flushes", "ipis",
                                          "useless_ipis", "stale", "stale_events", "sleeps", "wakes",
                                          "kmap_cycles", "lock_wait_cycles", "stall_cycles")},
                     "tlb_hits": hits, "tlb_misses": misses,
                     "ipis_per_1000_kmaps": 1000 * c["ipis"] / kmaps if kmaps else 0.0},
        "flushes_by_scope": dict(scopes), "per_cpu": per_cpu, "events": len(events), "t_end": t_end,
        "events_by_type": dict(by_type),
        "kmap_latency": dist(kmap_cycles), "lock_wait": dist(lock_wait), "slept_kmaps": slept_kmaps,
        "stall": dist(stall), "stall_by_scope": {s: dist(v) for s, v in stall_by_scope.items()},
        "slots_torn_down": slots_torn, "ipis_targeted": targeted, "translations_dropped": dropped_total,
        "matrix": matrix, "useless_matrix": useless_m, "delivery": dist(delivery), "round_trip": dist(round_trip),
        "asleep": dist(asleep), "asleep_at_end": sorted(first_wait),
        "stale_examples": stale_examples,
        "ring": {"capacity": capacity, "peak_in_use": peak, "t_peak": t_peak, "in_use_at_end": level,
                 "mean_in_use": area / t_end if t_end else float(level)},
    }
