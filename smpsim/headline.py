"""Headline metrics: one table (key, label, format) for ``run``, ``sweep``, ``compare`` and ``analyze``, the
ratios derived from the counters (each defined once, here), and the one number formatter.

A metric is computed from a run's *facts*, a dict with
- ``counters``: summary.json's counters (the sums smpsim.trace.counters keeps while a run is recorded),
- ``per_cpu``: summary.json's per-CPU counters,
- ``kmap_latency`` and ``stall``: the distributions (count, mean, p50, p90, p99, max) of the ``cycles`` of
  the kmap events and the ``stall`` of the flush events, from the trace (None without a trace).

Core install only: no numpy, pyarrow or DuckDB here (a CPU process imports the counters that use it).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable

Facts = dict[str, Any]


# ------------------------------------------------------------------------------------------- derived ratios

def ratio(a: float | None, b: float | None, scale: float = 1, digits: int = 3) -> float | None:
    """scale * a / b rounded to ``digits`` decimals; None when a is missing or b is 0 or missing."""
    return round(scale * a / b, digits) if a is not None and b else None


def per_1000(x: float, kmaps: int) -> float:
    """x per 1000 kmaps (0.0 for a run without kmaps)."""
    return round(1000 * x / kmaps, 3) if kmaps else 0.0


def hit_rate(hits: int, misses: int) -> float | None:
    """TLB hits / lookups; None without lookups."""
    return ratio(hits, hits + misses, digits=6)


def _per_cpu_mean(f: Facts, key: str) -> float | None:
    per = f.get("per_cpu") or []
    return ratio(sum(p[key] for p in per), len(per), digits=1)


def _dist(f: Facts, name: str, stat: str) -> Any:
    return (f.get(name) or {}).get(stat)


# ------------------------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Metric:
    """One headline metric: its key, label, kind and unit, how it is computed from a run's facts and how the
    saving line words it."""
    key: str          # results.csv column, --json key
    label: str        # what a reader sees
    kind: str         # how fmt shows it: "count", "number", "fraction" (as a percentage)
    value: Callable[[Facts], Any]
    # The saving line: (noun, word when smaller, word when larger), e.g. ("IPIs", "fewer", "more").
    # ``always`` False: said only when either run has a non-zero value.
    saving: tuple[str, str, str] | None = None
    always: bool = True
    ratio_column: bool = False  # results.csv has KEY_ratio: the value over its baseline's
    unit: str = ""  # of the value, for axes and inline text ("cycles"); a fraction's is "%"

    @property
    def axis_label(self) -> str:
        """The label with its unit, as a figure's axis shows it: "initiator stall per flush (cycles)"."""
        unit = "%" if self.kind == "fraction" else self.unit
        return f"{self.label} ({unit})" if unit and f"({unit})" not in self.label else self.label

    def show(self, v: Any) -> str:
        """The label, the value and its unit: "initiator stall per flush 12,345 cycles"."""
        unit = f" {self.unit}" if self.unit and v is not None and f"({self.unit})" not in self.label else ""
        return f"{self.label} {fmt(v, self.kind)}{unit}"


def _c(key: str) -> Callable[[Facts], Any]:
    return lambda f: f["counters"][key]


METRICS: tuple[Metric, ...] = (
    Metric("kmaps", "kmaps", "count", _c("kmaps")),
    Metric("new_mappings", "new mappings", "count", _c("new_mappings")),
    Metric("reuse_fraction", "kmaps reusing a mapping", "fraction",
           lambda f: ratio(f["counters"]["reuses"], f["counters"]["kmaps"], digits=6)),
    Metric("wraps", "ring wraps", "count", _c("wraps")),
    Metric("flushes", "flushes", "count", _c("flushes")),
    Metric("flushes_per_1000_kmaps", "flushes per 1000 kmaps", "number",
           lambda f: per_1000(f["counters"]["flushes"], f["counters"]["kmaps"]), ratio_column=True),
    Metric("ipis", "IPIs sent", "count", _c("ipis")),
    Metric("ipis_per_1000_kmaps", "IPIs per 1000 kmaps", "number",
           lambda f: per_1000(f["counters"]["ipis"], f["counters"]["kmaps"]),
           saving=("IPIs", "fewer", "more"), ratio_column=True),
    Metric("useless_ipis", "useless IPIs", "count", _c("useless_ipis")),
    Metric("stall_cycles", "initiator stall (cycles)", "count", _c("stall_cycles")),
    Metric("stall_per_1000_kmaps", "initiator stall per 1000 kmaps", "number",
           lambda f: per_1000(f["counters"]["stall_cycles"], f["counters"]["kmaps"]),
           saving=("initiator stall", "less", "more"), ratio_column=True, unit="cycles"),
    Metric("stall_per_flush", "initiator stall per flush", "number",
           lambda f: ratio(f["counters"]["stall_cycles"], f["counters"]["flushes"], digits=1), ratio_column=True,
           unit="cycles"),
    Metric("stall_p99_cycles", "initiator stall p99", "count", lambda f: _dist(f, "stall", "p99"), unit="cycles"),
    Metric("kmap_mean_cycles", "mean kmap latency (cycles)", "number",
           lambda f: ratio(f["counters"]["kmap_cycles"], f["counters"]["kmaps"], digits=1),
           saving=("mean kmap latency", "lower", "higher"), ratio_column=True, unit="cycles"),
    Metric("kmap_p99_cycles", "kmap latency p99", "count", lambda f: _dist(f, "kmap_latency", "p99"),
           ratio_column=True, unit="cycles"),
    Metric("lock_wait_mean_cycles", "mean kmap_lock wait", "number",
           lambda f: ratio(f["counters"]["lock_wait_cycles"], f["counters"]["kmaps"], digits=1), unit="cycles"),
    Metric("lock_utilisation", "kmap_lock utilisation", "fraction",
           lambda f: (f.get("kmap_lock") or {}).get("utilisation")),
    Metric("tlb_hit_rate", "TLB hit rate", "fraction",
           lambda f: hit_rate(f["counters"]["tlb_hits"], f["counters"]["tlb_misses"])),
    Metric("flush_misses_per_cpu", "flush-induced TLB misses per CPU", "number",
           lambda f: _per_cpu_mean(f, "flush_misses"), saving=("TLB refills after flushes", "fewer", "more"),
           always=False, ratio_column=True),
    Metric("flush_miss_cycles_per_cpu", "flush-induced miss cycles per CPU", "number",
           lambda f: _per_cpu_mean(f, "flush_miss_cycles"), unit="cycles"),
    Metric("sleeps", "sleeps on pkmap_map_wait", "count", _c("sleeps"),
           saving=("sleeps on pkmap_map_wait", "fewer", "more"), always=False),
    Metric("stale", "stale uses", "count", _c("stale"),
           saving=("stale uses", "fewer", "more"), always=False),
)
BY_KEY = {m.key: m for m in METRICS}

# What ``smpsim run`` and ``launch`` print after a run (no trace needed).
RUN_SUMMARY = ("kmaps", "new_mappings", "wraps", "flushes", "ipis", "ipis_per_1000_kmaps", "stall_per_flush",
               "lock_utilisation", "sleeps", "stale")


def headline(facts: Facts, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every metric's value (or those of ``keys``), by key; None for one whose counters the facts lack
    (a summary.json written by an older smpsim)."""
    out = {}
    for m in METRICS if keys is None else [BY_KEY[k] for k in keys]:
        try:
            out[m.key] = m.value(facts)
        except (KeyError, TypeError):
            out[m.key] = None
    return out


def facts_from_summary(summary: dict[str, Any], kmap_latency: dict | None = None,
                       stall: dict | None = None) -> Facts:
    return {"counters": summary["counters"], "per_cpu": summary.get("per_cpu") or [],
            "kmap_latency": kmap_latency, "stall": stall, "kmap_lock": summary.get("kmap_lock"),
            "pkmap_map_wait": summary.get("pkmap_map_wait")}


def facts_from_analysis(a: dict[str, Any]) -> Facts:
    """The facts out of ``smpsim analyze``'s dict (smpsim.analysis.trace_metrics.analyze)."""
    return facts_from_summary(a, a["kmaps"]["latency"], a["shootdowns"]["stall"])


# ------------------------------------------------------------------------------------------- confounders

# Above these a run's kmap latency (and every saving computed from it) measures something besides the
# flush: kmap_lock held more than half the time means a kmap mostly queues for it (an M/D/1-like queue's
# wait grows as rho / (1 - rho), past the hold time itself at rho = 0.5+); more than half of the total kmap
# latency spent asleep on pkmap_map_wait means the ring ran out of free slots, not the flush, set it.
LOCK_BOUND = 0.5
SLEEP_BOUND = 0.5


def asleep_share(f: Facts) -> float | None:
    """Time asleep on pkmap_map_wait (summary.json's pkmap_map_wait.asleep_cycles) over the total kmap
    latency; None without them."""
    asleep = (f.get("pkmap_map_wait") or {}).get("asleep_cycles")
    return ratio(asleep, f["counters"].get("kmap_cycles"), digits=4)


@dataclass(frozen=True)
class Confounder:
    """Something other than the flush that can dominate a run's figures (kmap_lock, sleeping): the measure,
    its bound and the mark shown beside such a run."""
    key: str     # summary.json's confounders[].kind
    mark: str    # what every summary, saving line and table row involving such a run says
    what: str    # the measure, for the summary: "kmap_lock utilisation"
    value: Callable[[Facts], float | None]
    bound: float


CONFOUNDERS: tuple[Confounder, ...] = (
    Confounder("lock_bound", "lock-bound: includes queueing for kmap_lock", "kmap_lock utilisation",
               lambda f: (f.get("kmap_lock") or {}).get("utilisation"), LOCK_BOUND),
    Confounder("sleep_bound", "sleep-bound: mostly time asleep on pkmap_map_wait",
               "share of kmap latency asleep", asleep_share, SLEEP_BOUND),
)


def confounders(facts: Facts) -> list[dict[str, Any]]:
    """The confounders of one run: [{kind, mark, value, bound}] for each measure above its bound."""
    out = []
    for c in CONFOUNDERS:
        try:
            v = c.value(facts)
        except (KeyError, TypeError):
            v = None
        if v is not None and v > c.bound:
            out.append({"kind": c.key, "mark": c.mark, "value": v, "bound": c.bound})
    return out


def confounder_note(c: dict[str, Any]) -> str:
    """"kmap_lock utilisation 99.8%, above 50%": the measure behind one confounder."""
    what = {x.key: x.what for x in CONFOUNDERS}[c["kind"]]
    return f"{what} {fmt(c['value'], 'fraction')}, above {fmt(c['bound'], 'fraction')}"


def confounder_text(found: list[dict[str, Any]]) -> str:
    """"lock-bound: includes queueing for kmap_lock (kmap_lock utilisation 99.8%, above 50%)"; "" for none."""
    return "; ".join(f"{c['mark']} ({confounder_note(c)})" for c in found)


def marks(found: list[dict[str, Any]]) -> str:
    """The marks alone, for a table cell: "lock-bound: includes queueing for kmap_lock"; "" for none."""
    return "; ".join(c["mark"] for c in found)


# ------------------------------------------------------------------------------------------- formatting

def fmt(v: Any, kind: str | None = None) -> str:
    """How every command shows a value: 12,345; 6.125; 10,298,069; 96.2% (kind "fraction"); "-" for none."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if kind == "fraction" and isinstance(v, numbers.Real):
        return f"{100 * v:.1f}%"
    if isinstance(v, numbers.Integral):  # numpy's integers too
        return f"{int(v):,}"
    if isinstance(v, numbers.Real):
        v = float(v)
        if v == 0:
            return "0"
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:,.1f}"
        return f"{v:.4g}"
    return str(v)


def fmt_metric(key: str, v: Any) -> str:
    return fmt(v, BY_KEY[key].kind)


def fmt_times(r: float | None) -> str:
    """A ratio as "1,143x", "40x", "2.5x", "0.125x"; "-" for none."""
    return "-" if r is None else _times(r) + "x"


def _times(r: float) -> str:
    return f"{r:,.0f}" if r >= 9.95 else f"{r:.3g}"


def _pct(p: float) -> str:
    return f"{p:.0f}" if abs(p) >= 10 else f"{p:.2g}"


# A summarised per-seed ratio (value / baseline's, paired by seed): (centre, CI low, CI high, seeds); the
# bounds None with one seed. smpsim.experiments.stats makes them.
RatioCI = tuple[float, float | None, float | None, int]


# ------------------------------------------------------------------------------------------- the saving line

def _change(m: Metric, v: Any, base: Any, ci: RatioCI | None = None) -> str | None:
    """One item of a saving line: "1,143x fewer IPIs", "12% more initiator stall", "0 vs 12 stale uses";
    None when equal (said apart) or not comparable. With ``ci`` (several seeds; v and base their means) the
    factor is the summarised per-seed ratio, followed by its interval: "1,143x fewer IPIs (95% CI
    1,101–1,186; 5 seeds)"."""
    if not isinstance(v, (int, float)) or not isinstance(base, (int, float)):
        return None
    noun, less, more = m.saving  # type: ignore[misc]
    if v == base and (ci is None or ci[1] == ci[2]):
        return None
    if v == 0 or base == 0:
        return f"{fmt(v, m.kind)} vs {fmt(base, m.kind)} {m.label}"
    r, lo, hi, n = ci if ci is not None else (v / base, None, None, 1)
    bounds = None if lo is None or hi is None or lo <= 0 else (lo, hi)
    if r < 1:  # shown as the baseline over this run: "40x less"
        word, big = less, (1 / r if ci is not None else base / v)
        bounds = bounds and (1 / bounds[1], 1 / bounds[0])
    else:
        word, big = more, (r if ci is not None else v / base)

    def pct(x: float) -> float:  # x: the factor as shown; one seed: exactly |v - base| / base
        if ci is None:
            return 100 * abs(v - base) / base
        return 100 * (1 - 1 / x) if word == less else 100 * (x - 1)

    if big >= 2:
        text = f"{fmt_times(big)} {word} {noun}"
        ends = bounds and (_times(bounds[0]), _times(bounds[1]), "")
    else:
        text = f"{_pct(pct(big))}% {word} {noun}"
        ends = bounds and (_pct(pct(bounds[0])), _pct(pct(bounds[1])), "%")
    if ci is not None and ends:
        text += (f" (the same in all {n} seeds)" if ends[0] == ends[1]
                 else f" (95% CI {ends[0]}–{ends[1]}{ends[2]}; {n} seeds)")
    return text


def saving(values: dict[str, Any], base: dict[str, Any], cis: dict[str, RatioCI] | None = None) -> str:
    """The comparison of one run's headline values with its baseline's, in one phrase:
    "1,143x fewer IPIs, 40x less initiator stall, 46x lower mean kmap latency". ``cis``: per metric key,
    the summarised per-seed ratio of a point run with several seeds (values and base then hold means)."""
    items, same = [], []
    for m in METRICS:
        if m.saving is None:
            continue
        v, b = values.get(m.key), base.get(m.key)
        if not m.always and not v and not b:
            continue
        text = _change(m, v, b, (cis or {}).get(m.key))
        if text is not None:
            items.append(text)
        elif v == b and v is not None:
            same.append(m.saving[0])
    if same:
        items.append("the same " + (same[0] if len(same) == 1 else ", ".join(same[:-1]) + " and " + same[-1]))
    return ", ".join(items) or "nothing to compare"


def ratios(values: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    """KEY_ratio: value / the baseline's value (None when the baseline's is 0), for the ratio columns."""
    out = {}
    for m in METRICS:
        if m.ratio_column:
            v, b = values.get(m.key), base.get(m.key)
            out[f"{m.key}_ratio"] = round(v / b, 6) if isinstance(v, (int, float)) and b else None
    return out


RATIO_COLUMNS = tuple(f"{m.key}_ratio" for m in METRICS if m.ratio_column)


# ------------------------------------------------------------------------------------------- run summary

def run_summary_rows(summary: dict[str, Any], run_dir: Any, policy: str | None = None, cpus: int | None = None,
                     workload: str | None = None) -> list[tuple[str, str]]:
    """(label, text) rows printed after ``smpsim run`` and ``launch``: what ran, the headline counters,
    the digest, the run directory and the next command."""
    rows = []
    if policy is not None:
        rows += [("policy", str(policy)), ("CPUs", fmt(cpus)), ("workload", str(workload))]
    values = headline(facts_from_summary(summary), RUN_SUMMARY) if "counters" in summary else {}
    rows += [(BY_KEY[k].label, fmt_metric(k, values.get(k))) for k in RUN_SUMMARY]
    if summary.get("confounders"):  # the headline numbers measure more than the flush: say so next to them
        rows.append(("confounded", confounder_text(summary["confounders"])))
    rows.append(("digest", str(summary.get("digest", "-"))))
    faults = summary.get("faults")
    if faults:  # e.g. a CPU process replaced: the run is ok, but the user should know it happened
        kinds = sorted({f"{f['kind']} (CPU {f['cpu']})" if f.get("cpu") is not None else f["kind"]
                        for f in faults["first"]})
        where = f"; see {run_dir}/logs" if run_dir is not None else ""
        rows.append(("faults", f"{faults['count']}: {', '.join(kinds)}{where}"))
    rows.append(("run dir", str(run_dir) if run_dir is not None else "-"))
    if run_dir is not None:
        rows.append(("next", f"smpsim analyze {run_dir}"))
    return rows


# ------------------------------------------------------------------------------------------- baselines

POLICY_KEY = "policy.name"


def describe(params: dict[str, Any], policy: str | None = None) -> str:
    """A run's label from its parameters: a word as itself ("eager"), anything else as short_key=value
    ("last_pkmap=16", "cpus=8"). ``policy``: the policy's own name (summary.json's), shown for policy.name,
    whose value for a policy from outside the package is a spec with a path."""
    out = []
    for k, v in params.items():
        if k == POLICY_KEY and policy:
            v = policy
        if isinstance(v, str) and v and not _numberlike(v):
            out.append(v)
        else:
            out.append(f"{k.rsplit('.', 1)[-1]}={fmt(v) if isinstance(v, bool) else v}")
    return ", ".join(out)


def _numberlike(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def matches(value: Any, wanted: Any) -> bool:
    """A run's config value equals a baseline's (``8`` and ``"8"`` alike: --baseline gives text)."""
    return value == wanted or str(value) == str(wanted)


@dataclass
class Group:
    """Runs compared together: the values of the ``by`` keys they share, their indices and the baseline's."""
    values: dict[str, Any]   # the ``by`` keys' values
    members: list[int]       # indices of the runs in it, in their order
    base: int | None = None  # the baseline run's index

    @property
    def label(self) -> str:
        return describe(self.values)


def group(params: list[dict[str, Any]], baseline: dict[str, Any], by: list[str],
          noun: str = "run") -> tuple[list[Group], list[str]]:
    """Split runs (params[i]: run i's config value of each baseline and by key) into groups by the ``by``
    keys, each with its baseline run: the one whose values match every ``baseline`` key. Returns the groups
    in the order of their first run, and the problems (a group without or with several baselines)."""
    groups: dict[tuple, Group] = {}
    for i, p in enumerate(params):
        values = {k: p.get(k) for k in by}
        groups.setdefault(tuple(repr(v) for v in values.values()), Group(values, [])).members.append(i)
    wanted = ", ".join(f"{k} = {v!r}" for k, v in baseline.items())
    problems = []
    for g in groups.values():
        bases = [i for i in g.members if all(matches(params[i].get(k), v) for k, v in baseline.items())]
        where = (" among the {}s with {}".format(noun, ", ".join(f"{k} = {v!r}" for k, v in g.values.items()))
                 if by else "")
        if not bases:
            problems.append(f"baseline: no {noun} has {wanted}{where}")
        elif len(bases) > 1:
            problems.append(f"baseline: {len(bases)} {noun}s have {wanted}{where}; add the keys that tell "
                            "them apart to by")
        else:
            g.base = bases[0]
    return list(groups.values()), problems


def saving_lines(labels: list[str], values: list[dict[str, Any]], groups: list[Group],
                 marks: list[str] | None = None, cis: list[dict[str, RatioCI]] | None = None) -> list[dict[str, Any]]:
    """One line per run that is not a baseline, group by group: {run, baseline, group, text}, text being
    "linux-2.4 vs eager (shared): 1,143x fewer IPIs, 40x less initiator stall, 46x lower mean kmap latency".
    marks[i]: run i's confounder marks ("" for none), said after the line with the run they concern;
    cis[i]: run i's summarised per-seed ratios over its baseline (points run with several seeds)."""
    out = []
    for g in groups:
        if g.base is None:
            continue
        for i in g.members:
            if i == g.base:
                continue
            where = f" ({g.label})" if g.values else ""
            text = f"{labels[i]} vs {labels[g.base]}{where}: {saving(values[i], values[g.base], cis and cis[i])}"
            if marks:
                text += confounded_suffix({labels[i]: marks[i], labels[g.base]: marks[g.base]})
            out.append({"run": i, "baseline": g.base, "group": g.label, "text": text})
    return out


def confounded_suffix(marks_by_label: dict[str, str]) -> str:
    """"; lock-bound: includes queueing for kmap_lock (eager)" for the runs of a line that carry a mark
    ("(both)" when every one does); "" when none."""
    by_mark: dict[str, list[str]] = {}
    for label, text in marks_by_label.items():
        for mark in filter(None, text.split("; ")):
            by_mark.setdefault(mark, []).append(label)
    return "".join(f"; {mark} ({'both' if len(who) == len(marks_by_label) > 1 else ', '.join(who)})"
                   for mark, who in by_mark.items())
