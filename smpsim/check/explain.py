"""The first stale use of a run, told in kernel terms from its trace events (docs/architecture.md, "Trace
events"): which CPU used which slot's stale translation, what page the slot mapped and since when, when the
slot was torn down and remapped, and which flush did not reach that CPU."""

from __future__ import annotations

from typing import Any

from smpsim.model.events import to_record


def _t(t: int) -> str:
    return f"t={t:,}"


def _cpus(ids: list[int]) -> str:
    return "no CPU" if not ids else ("CPU " if len(ids) == 1 else "CPUs ") + ", ".join(map(str, ids))


def _last(recs: list[dict[str, Any]], before: int, **match: Any) -> dict[str, Any] | None:
    for r in reversed(recs[:before]):
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def explain_stale(events: list[tuple]) -> list[str]:
    """Lines telling the first stale use of the canonical stream ``events``; [] when there is none."""
    recs = [to_record(e) for e in events]
    first = next((i for i, r in enumerate(recs) if r["ev"] == "stale"), None)
    if first is None:
        return []
    s = recs[first]
    cpu, page, old, slot = s["cpu"], s["page"], s["reached"], s["slot"]
    lines = [f"CPU {cpu} accessed page {page} through pkmap slot {slot} at {_t(s['t'])} and reached page {old}: "
             f"its TLB still held the slot's old translation (slot {slot} -> page {old})."]

    mapped = _last(recs, first, ev="kmap", page=old, slot=slot, new=True)
    fill = _last(recs, first, ev="tlb_miss", cpu=cpu, page=old, slot=slot)
    released = _last(recs, first, ev="kunmap", page=old, slot=slot)
    remapped = _last(recs, first, ev="kmap", page=page, slot=slot, new=True)
    own = _last(recs, first, ev="kmap", cpu=cpu, page=page, slot=slot)
    if mapped is not None:
        lines.append(f"Slot {slot} mapped page {old} since {_t(mapped['t'])}, when CPU {mapped['cpu']}'s "
                     f"kmap_high gave it that new mapping.")
    if fill is not None:
        lines.append(f"CPU {cpu} loaded the translation slot {slot} -> page {old} into its TLB at "
                     f"{_t(fill['t'])} (a TLB miss while it held page {old}).")
    if released is not None:
        lines.append(f"CPU {released['cpu']}'s kunmap_high at {_t(released['t'])} left the slot at "
                     f"pkmap_count {released['count']}: still mapped, to be torn down lazily.")
    lo = recs.index(released) if released is not None else 0
    hi = recs.index(remapped) if remapped is not None else first
    wrap = next((r for r in recs[lo:hi + 1] if r["ev"] == "wrap" and r.get("slots")), None)
    teardown = next((r for r in recs[lo:hi + 1] if r["ev"] == "flush" and r.get("slots")), None)
    if wrap is not None:
        lines.append(f"The ring wrapped at {_t(wrap['t'])} in CPU {wrap['cpu']}'s kmap_high: "
                     f"flush_all_zero_pkmaps tore down {wrap['slots']} slot(s) at pkmap_count 1, slot {slot} "
                     "among them (pkmap_count 0, PTE cleared).")
    elif teardown is not None:
        lines.append(f"CPU {teardown['cpu']} tore slot {slot} down at {_t(teardown['t'])} "
                     f"({teardown['scope']} flush of {teardown['slots']} slot(s)).")
    if remapped is not None:
        lines.append(f"CPU {remapped['cpu']}'s kmap_high remapped slot {slot} to page {page} at "
                     f"{_t(remapped['t'])}.")
    if own is not None and own is not remapped:
        lines.append(f"CPU {cpu}'s kmap_high of page {page} at {_t(own['t'])} found it mapped and reused "
                     f"slot {slot}.")

    since = recs.index(fill) if fill is not None else lo
    flushes = [r for r in recs[since:first] if r["ev"] == "flush"]
    missed = [r for r in flushes if r["cpu"] != cpu and cpu not in (r.get("targets") or [])]
    reached = [r for r in flushes if r not in missed]
    if missed:
        f = missed[0]
        lines.append(f"The flush that did not reach CPU {cpu}: the {f['scope']} flush by CPU {f['cpu']} at "
                     f"{_t(f['t'])}, which sent IPIs to {_cpus(f.get('targets') or [])}"
                     + (f" ({len(missed) - 1} more flush(es) missed it too)." if len(missed) > 1 else "."))
    elif reached:
        f = reached[-1]
        lines.append(f"A flush reached CPU {cpu} (the {f['scope']} flush by CPU {f['cpu']} at {_t(f['t'])}) but "
                     f"did not cover slot {slot}.")
    else:
        lines.append(f"No flush followed the teardown: nothing removed slot {slot}'s translation from "
                     f"CPU {cpu}'s TLB.")
    return lines
