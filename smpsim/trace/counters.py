"""Headline counters, computed from the canonical event stream: one definition for every engine."""

from __future__ import annotations

from collections import Counter

from smpsim.metrics import hit_rate, per_1000


class Counters:
    def __init__(self, ncpu: int):
        self.ncpu = ncpu
        self.c: Counter = Counter()
        self.scopes: Counter = Counter()
        self.per_cpu = [Counter() for _ in range(ncpu)]
        self.events = 0
        self.t_end = 0

    def feed(self, events: list[dict]) -> list[dict]:
        """Count a batch (in seq order) and return it unchanged."""
        c, per = self.c, self.per_cpu
        for e in events:
            ev = e["ev"]
            p = per[e["cpu"]]
            if e["t"] > self.t_end:
                self.t_end = e["t"]
            if ev == "access":
                p["hits"] += e["hits"]
                p["misses"] += e["misses"]
                p["accesses"] += e["n"]
            elif ev == "kmap":
                c["kmaps"] += 1
                p["kmaps"] += 1
                c["new_mappings" if e["new"] else "reuses"] += 1
                c["kmap_cycles"] += e["cycles"]
                c["lock_wait_cycles"] += e["lock_wait"]
            elif ev == "kunmap":
                c["kunmaps"] += 1
            elif ev == "tlb_miss":
                if e["flush_caused"]:
                    p["flush_misses"] += e["n"]
                    p["flush_miss_cycles"] += e["cycles"]
                if e.get("page") is None:  # background refill: not counted by any access event
                    p["misses"] += e["n"]
            elif ev == "ipi":
                c["ipis"] += 1
                p["ipis_received"] += 1
                per[e["src"]]["ipis_sent"] += 1
                if e["dropped"] == 0:
                    c["useless_ipis"] += 1
            elif ev == "flush":
                c["flushes"] += 1
                self.scopes[e["scope"]] += 1
                c["stall_cycles"] += e["stall"]
            elif ev == "wrap":
                c["wraps"] += 1
            elif ev == "stale":
                c["stale"] += e["n"]
                c["stale_events"] += 1
                p["stale"] += e["n"]
            elif ev == "wait":
                c["sleeps"] += 1
            elif ev == "wake":
                c["wakes"] += 1
        self.events += len(events)
        return events

    def summary(self) -> dict:
        keys = ("kmaps", "new_mappings", "reuses", "kunmaps", "wraps", "flushes", "ipis", "useless_ipis",
                "stale", "stale_events", "sleeps", "wakes", "kmap_cycles", "lock_wait_cycles", "stall_cycles")
        counters = {k: int(self.c[k]) for k in keys}
        hits = sum(p["hits"] for p in self.per_cpu)
        misses = sum(p["misses"] for p in self.per_cpu)
        counters["tlb_hits"], counters["tlb_misses"] = hits, misses
        counters["ipis_per_1000_kmaps"] = per_1000(counters["ipis"], counters["kmaps"])
        per_cpu = []
        for i, p in enumerate(self.per_cpu):
            per_cpu.append({"cpu": i, "kmaps": p["kmaps"], "accesses": p["accesses"], "hits": p["hits"],
                            "misses": p["misses"], "hit_rate": hit_rate(p["hits"], p["misses"]),
                            "flush_misses": p["flush_misses"], "flush_miss_cycles": p["flush_miss_cycles"],
                            "ipis_received": p["ipis_received"], "ipis_sent": p["ipis_sent"],
                            "stale": p["stale"]})
        return {"counters": counters, "flushes_by_scope": dict(sorted(self.scopes.items())),
                "per_cpu": per_cpu, "events": self.events, "t_end": self.t_end}
