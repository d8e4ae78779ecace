"""Flush policies: what happens to pkmap slots and TLBs when slots are torn down.

``Policy`` (public as ``smpsim.Policy``) is the contract every policy meets, built-in or brought by a user;
docs/policies.md states it in full. The coordinator calls a policy's hooks under kmap_lock:

- ``wrap(ring, cpu)``: the ring cursor wrapped to 0 (map_new_virtual); returns the slots torn down and the
  flush that follows (flush_all_zero_pkmaps plus the flush, in the kernel);
- ``unmap_flush(ring, slot, cpu)``: kunmap_high dropped ``slot`` to count 1; a policy that tears slots
  down here (eager, vmap-lazy's purge) does so on the ring and returns the flush that makes it safe;
- ``rescue(ring, cpu)``: a scan found no free slot; a policy may free some (vmap-lazy purges) instead of
  letting the caller sleep;
- ``kmapped(cpu, page)`` / ``kunmapped(cpu, page)``: bookkeeping of who may cache a pkmap translation.

A Flush names the pages (after the policy's own flush ceiling), the CPUs that get an IPI, and, for LATR,
the tick at which the other CPUs invalidate instead. Timing and delivery are the coordinator's.

Which policy a config names (a built-in name, ``pkg.mod:Class``, ``file.py:Class`` or an entry point of
group ``smpsim.policies``) is resolved by ``resolve``; a policy from outside the package runs behind
``Guard``, which stops the run with a PolicyError naming the policy and hook when it breaks the contract.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from smpsim.model.errors import PolicyError
from smpsim.model.messages import INF
from smpsim.model.vmalloc import LAZY_UNIT_PAGES, fls, lazy_max_pages  # noqa: F401 (re-exported)

# The x86-32 vmalloc area lazy_max_pages() is measured against (__VMALLOC_RESERVE, 128 MB): the ratio
# scales the formula to the pkmap ring.
VMALLOC_AREA_PAGES = (128 << 20) >> 12


@dataclass(frozen=True)
class Flush:
    """What a hook asks the coordinator to do after it tore slots down (make one with ``Policy.flush``)."""
    scope: str                    # as recorded in the trace: "all", "range", "page", "local" or "lazy"
    vpns: tuple[int, ...] | None  # pages each flushed TLB invalidates; None = the whole TLB
    targets: tuple[int, ...]      # CPUs sent an IPI (synchronous, wait=1); the initiator always flushes itself
    slots: int                    # slots this teardown took to count 0
    tick: int | None = None       # LATR: the other CPUs invalidate vpns at their next tick of this period,
    deferred: tuple[int, ...] = ()  # ... and these slots (deferred on the ring) are free only after it


def next_tick(t: int, tick: int) -> int:
    """The first scheduler tick strictly after t (ticks at 0, tick, 2*tick, ... on every CPU)."""
    return (t // tick + 1) * tick


# Hooks that may return a Flush other than the wrap's: a policy overriding none of them flushes only at a wrap.
_FLUSH_HOOKS = ("unmap_flush", "rescue")
_HOLD_HOOKS = ("kmapped", "kunmapped")


class Policy:
    """A flush policy: the base class of every built-in policy and of a user's (``smpsim.Policy``).

    Subclass it, set ``name``, and override the hooks the policy needs; the rest are no-ops. One instance
    lives in the coordinator (the hooks run there, under kmap_lock, in the canonical order, so a policy may
    keep any state it likes); every CPU process makes its own instance only to read ``uses_ring``.

    Traits (class attributes; docs/policies.md says what each promises):

    - ``uses_ring`` (default True): False for a policy whose kmaps never reach the shared ring (kmap_local).
    - ``flushes_only_at_wrap``: derived. True when the class overrides neither ``unmap_flush`` nor
      ``rescue``, so every flush comes from ``wrap``; the coordinator then lets CPUs run ahead to the
      earliest possible next wrap. A class may set it to False (never to True while overriding those hooks).
    - ``first_message(t)``: the lookahead. Override it when the policy's messages take effect later than an
      IPI sent at t would (LATR's ticks) or never (None: it sends none).

    Only ``wrap``, ``unmap_flush`` and ``rescue`` may change the ring, and only by tearing down slots at
    count 1 (``flush_all_zero_pkmaps``, ``teardown``) or deferring torn slots (``defer``).
    """

    name = ""
    uses_ring = True
    flushes_only_at_wrap = True  # replaced by the derived value for every subclass (__init_subclass__)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        flushes_elsewhere = [h for h in _FLUSH_HOOKS if getattr(cls, h) is not getattr(Policy, h)]
        declared = cls.__dict__.get("flushes_only_at_wrap")
        if declared and flushes_elsewhere:
            raise TypeError(f"{cls.__qualname__} sets flushes_only_at_wrap = True but overrides "
                            f"{' and '.join(flushes_elsewhere)}, which may flush outside a wrap")
        cls.flushes_only_at_wrap = (not flushes_elsewhere) if declared is None else bool(declared)

    def __init__(self, cfg):
        self.last_pkmap = cfg.machine.ring_size
        self.ncpu = cfg.machine.cpus
        self.flush_ceiling = cfg.policy.flush_ceiling
        self.ipi_latency = cfg.cost.ipi_latency

    # ---- helpers ----------------------------------------------------------------------------------
    def flush(self, scope: str, vpns, targets, slots: int, tick: int | None = None, deferred=()) -> Flush:
        """A Flush of vpns (None: the whole TLB) by IPIs to targets, for `slots` slots torn down; made a
        full flush when vpns are more than tlb_single_page_flush_ceiling [R11]. LATR-like policies give
        ``tick`` (the period at whose next tick the other CPUs invalidate) and ``deferred`` slots."""
        if vpns is not None and len(vpns) > self.flush_ceiling:
            vpns = None
        return Flush(scope, None if vpns is None else tuple(vpns), tuple(targets), slots, tick, tuple(deferred))

    def others(self, cpu: int) -> list[int]:
        """Every CPU but cpu: the targets of a broadcast flush."""
        return [j for j in range(self.ncpu) if j != cpu]

    # ---- hooks ------------------------------------------------------------------------------------
    def wrap(self, ring, cpu: int) -> tuple[list[int], Flush | None]:
        """The cursor wrapped to 0 on `cpu`'s kmap: tear slots down and return (slots torn, flush or None).
        The default tears down every slot at count 1 and asks ``wrap_flush`` for the flush."""
        torn = ring.flush_all_zero_pkmaps()
        return torn, self.wrap_flush(torn, cpu)

    def wrap_flush(self, torn: list[int], cpu: int) -> Flush | None:
        """The flush after the default ``wrap`` tore down `torn` (may be empty): None = no flush."""
        return None

    def unmap_flush(self, ring, slot: int, cpu: int) -> Flush | None:
        """kunmap_high on `cpu` left `slot` at count 1. A policy may tear slots down (this one or others at
        count 1) and return the flush that makes that safe; None = nothing torn down."""
        return None

    def rescue(self, ring, cpu: int) -> Flush | None:
        """A full scan on `cpu` found no free slot. Return a flush after tearing slots down and the scan is
        made again; None = the caller sleeps on pkmap_map_wait."""
        return None

    def kmapped(self, cpu: int, page: int) -> None:
        """`cpu` kmapped `page` (after the ring call). Bookkeeping only: must not change the ring."""

    def kunmapped(self, cpu: int, page: int) -> None:
        """`cpu` kunmapped `page` (before ``unmap_flush``). Bookkeeping only: must not change the ring."""

    def first_message(self, t: int) -> int | None:
        """The lookahead: the earliest time a message this policy sends because of a ring operation at or
        after t can take effect on a CPU (None: it sends none). Non-decreasing in t, and more than t.
        The default, t + ipi_latency, holds for any policy whose flushes go by IPI. The engine's lookahead
        (model/lookahead.py: safe_time) asks it for the earliest ring operation that can still come."""
        return t + self.ipi_latency


FlushPolicy = Policy  # the name the engine's modules use


class Linux24(FlushPolicy):
    """2.4: flush_tlb_all() at every wrap, even when nothing was torn down [R3][R5]."""
    name = "linux-2.4"

    def wrap_flush(self, torn, cpu):
        return self.flush("all", None, self.others(cpu), len(torn))


class Linux26(FlushPolicy):
    """flush_tlb_kernel_range over the whole pkmap window, skipped when nothing was torn down (2008 on) [R25][R1].

    Each CPU flushes everything when the window exceeds tlb_single_page_flush_ceiling [R11]."""
    name = "linux-2.6"

    def wrap_flush(self, torn, cpu):
        return self.flush("range", range(self.last_pkmap), self.others(cpu), len(torn)) if torn else None


class Eager(FlushPolicy):
    """Tear down at kunmap and shoot the one page down on every CPU; the wrap then finds nothing to flush."""
    name = "eager"

    def unmap_flush(self, ring, slot, cpu):
        ring.teardown(slot)
        return self.flush("page", (slot,), self.others(cpu), 1)


class KmapLocal(FlushPolicy):
    """kmap_local / stack-based kmap_atomic: per-CPU slots, local INVLPG at unmap, no lock, no IPIs [R2][R13]."""
    name = "kmap-local"
    uses_ring = False

    def first_message(self, t):
        return None


class VmapLazy(Linux26):
    """vmalloc's lazy purge (mm/vmalloc.c): slots left at count 1 by kunmap accumulate; when lazy_max of
    them are waiting, one flush_tlb_kernel_range over the span they cover purges them all. The cursor's
    wrap tears nothing down; a scan that finds no free slot purges first (alloc_vmap_area's retry after
    purge_vmap_area_lazy) and sleeps only if nothing was waiting."""
    name = "vmap-lazy"

    def __init__(self, cfg):
        super().__init__(cfg)
        lazy_max = cfg.policy.lazy_max
        if lazy_max is None:  # lazy_max_pages(), scaled to the ring
            lazy_max = -(-self.last_pkmap * lazy_max_pages(self.ncpu) // VMALLOC_AREA_PAGES)
        self.lazy_max = max(1, min(lazy_max, self.last_pkmap))

    def wrap(self, ring, cpu):
        return [], None

    def _purge(self, ring, cpu) -> Flush | None:
        torn = ring.flush_all_zero_pkmaps()
        if not torn:
            return None
        return self.flush("range", range(min(torn), max(torn) + 1), self.others(cpu), len(torn))

    def unmap_flush(self, ring, slot, cpu):
        return self._purge(ring, cpu) if ring.unused() >= self.lazy_max else None

    def rescue(self, ring, cpu):
        return self._purge(ring, cpu)


class TlbGen(Linux26):
    """The wrap flush of linux-2.6, sent only to CPUs that may cache a pkmap translation: those that used
    one since their last flush (x86's per-mm tlb_gen with mm_cpumask, applied to the pkmap window).

    The ring's flush generation counts flushes; each CPU records the generation of its last flush and of
    its last use. A use is a kmap, a kunmap ending one of its holds, or holding a page at all (a page held
    across a flush can be touched again and its translation refilled). The flush after a wrap drops
    every pkmap translation of the CPUs it reaches, so a CPU skipped holds none: it stays correct."""
    name = "tlb-gen"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.gen = 0
        self.flushed_gen = [0] * self.ncpu
        self.used_gen = [-1] * self.ncpu
        self.holds: list[dict[int, int]] = [{} for _ in range(self.ncpu)]  # mirrors each Cpu's held pages

    def kmapped(self, cpu, page):
        h = self.holds[cpu]
        h[page] = h.get(page, 0) + 1
        self.used_gen[cpu] = self.gen

    def kunmapped(self, cpu, page):
        h = self.holds[cpu]
        n = h.get(page)
        if n:  # as in Cpu.run: a kunmap ends this CPU's hold only if it holds the page
            if n == 1:
                del h[page]
            else:
                h[page] = n - 1
            self.used_gen[cpu] = self.gen

    def may_cache(self, cpu: int) -> bool:
        return self.used_gen[cpu] >= self.flushed_gen[cpu] or bool(self.holds[cpu])

    def wrap_flush(self, torn, cpu):
        if not torn:
            return None
        targets = [j for j in self.others(cpu) if self.may_cache(j)]
        self.gen += 1
        for j in (*targets, cpu):
            self.flushed_gen[j] = self.gen
        return self.flush("range", range(self.last_pkmap), targets, len(torn))


class Latr(Linux26):
    """LATR (Kumar et al., ASPLOS 2018): no IPIs. At a wrap the initiator invalidates the torn slots
    locally; every other CPU gets them on its lazy list and invalidates them at its next scheduler tick
    (ticks every policy.tick cycles, at the same times on every CPU). The slots stay out of use until
    the last CPU has done so: map_new_virtual skips them, and a kmap may sleep because of them."""
    name = "latr"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tick = cfg.policy.tick

    def wrap(self, ring, cpu):
        torn = ring.flush_all_zero_pkmaps()
        if not torn:
            return torn, None
        if self.ncpu == 1:  # nobody else can cache them
            return torn, self.flush("lazy", torn, (), len(torn))
        ring.defer(torn)
        return torn, self.flush("lazy", torn, (), len(torn), self.tick, torn)

    def first_message(self, t):
        return next_tick(t, self.tick)


class NoIpi(FlushPolicy):
    """BROKEN on purpose: the wrap flush reaches only the initiator's own TLB."""
    name = "no-ipi"

    def wrap_flush(self, torn, cpu):
        return self.flush("local", None, (), len(torn))

    def first_message(self, t):
        return None


class NoFlush(FlushPolicy):
    """BROKEN on purpose: slots are torn down at wrap but no TLB is ever flushed."""
    name = "no-flush"

    def first_message(self, t):
        return None


POLICIES: dict[str, type[FlushPolicy]] = {
    p.name: p for p in (Linux24, Linux26, Eager, KmapLocal, VmapLazy, TlbGen, Latr, NoIpi, NoFlush)
}
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)  # the built-in policies: every list of them comes from here


# ---- policies from outside the package ------------------------------------------------------------------

ENTRY_POINT_GROUP = "smpsim.policies"  # installed packages register names here: name = "pkg.mod:Class"
_in_process: dict[str, type] = {}      # classes given to smpsim.run(policy=...), by their spec


@dataclass(frozen=True)
class Resolved:
    """What a config's policy.name names."""
    name: str                # as the config gives it
    cls: type                # the Policy subclass
    spec: str | None = None  # "pkg.mod:Class" or "file.py:Class" (None: built-in)
    file: str | None = None  # its source file, and that file's SHA-256
    sha256: str | None = None

    @property
    def builtin(self) -> bool:
        return self.spec is None

    @property
    def label(self) -> str:
        """The policy's own name, as summaries, tables and comparisons show it."""
        return self.name if self.builtin else (getattr(self.cls, "name", "") or self.cls.__name__)


def registered() -> dict[str, str]:
    """Policy names registered by installed packages (entry points of group smpsim.policies) -> spec."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def check_name(name: str) -> str | None:
    """Why name names no policy, without loading anything (None: built-in, registered, or a spec)."""
    from smpsim import usercode

    if name in POLICIES or usercode.is_spec(name):
        return None
    found = registered()
    if name in found:
        return None
    from smpsim.inputs import did_you_mean, quote

    names = [*POLICY_NAMES, *sorted(found)]
    return (f"{quote(name)}: not a policy name{did_you_mean(name, names)} (built-in or registered: "
            f"{', '.join(names)}), nor a spec 'package.module:Class' or 'path/to/file.py:Class'")


def spec_of(cls: type) -> str:
    """The spec that names a class, registered in this process so it resolves without importing it again
    (a class defined in a script or notebook has no importable home)."""
    from smpsim import usercode

    if POLICIES.get(getattr(cls, "name", "")) is cls:
        return cls.name
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    if cls.__module__.startswith(usercode.MODULE_PREFIX) and file:
        spec = f"{file}:{cls.__qualname__}"
    else:
        spec = f"{cls.__module__}:{cls.__qualname__}"
    _in_process[spec] = cls
    return spec


def resolve(name: str, base_dir: str | None = None, sha256: str | None = None) -> Resolved:
    """The policy a config names: a built-in name, a spec or a registered name. ``sha256``: the source's
    hash as the coordinator resolved it; a different local copy is refused before it runs. Raises
    usercode.UserCodeError naming the spec, file (and line) and what is wrong."""
    from smpsim import usercode

    builtin = POLICIES.get(name)
    if builtin is not None:
        return Resolved(name, builtin)
    spec = name
    if not usercode.is_spec(name):
        problem = check_name(name)
        if problem:
            raise usercode.UserCodeError(name, problem)
        spec = registered()[name]
    cls = _in_process.get(spec)
    if cls is not None:
        file, _ = usercode.definition(cls)
        sha = usercode.sha256_file(file) if file and os.path.isfile(file) else None
        return Resolved(name, cls, spec, file, sha)
    loaded = usercode.load(spec, base_dir, expect_sha256=sha256)
    cls = loaded.obj
    if not (isinstance(cls, type) and issubclass(cls, Policy)) or cls is Policy:
        file, line = usercode.definition(cls) if isinstance(cls, type) else (loaded.file, None)
        what = f"class {cls.__qualname__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise usercode.UserCodeError(spec, f"{what} is not a policy: subclass smpsim.Policy "
                                           "(docs/policies.md)", file or loaded.file, line)
    return Resolved(name, cls, spec, loaded.file, loaded.sha256)


def label(cfg) -> str:
    """The policy's own name, as summaries, tables and comparisons show it: a built-in's name, else the
    class's ``name`` (or, when it sets none, the class name)."""
    name = cfg.policy.name
    if name in POLICIES:
        return name
    from smpsim.usercode import UserCodeError

    try:
        return resolve(name, cfg.base_dir, cfg.policy.sha256).label
    except UserCodeError:  # a recorded run's config, its file elsewhere
        return name


def make_policy(cfg, ring=None) -> FlushPolicy:
    """The config's policy for this process. With ``ring`` (the coordinator's), a policy from outside the
    package runs behind a Guard of that ring."""
    cls = POLICIES.get(cfg.policy.name)
    if cls is not None:
        return cls(cfg)
    r = resolve(cfg.policy.name, cfg.base_dir, cfg.policy.sha256)
    policy = r.cls(cfg)
    return policy if ring is None else Guard(policy, ring, r, cfg)


@dataclass(frozen=True)
class Traits:
    """What the engine asks of a policy, in one place (the coordinator and every CPU read it here):
    together with ``first_message`` these make the lookahead of conservative synchronization."""
    uses_ring: bool             # kmaps reach the shared ring (False: kmap_local, no hooks are called)
    flushes_only_at_wrap: bool  # every flush comes from wrap: CPUs may run ahead to the next possible wrap
    tracks_holds: bool          # kmapped / kunmapped are overridden: called at every kmap and kunmap
    flushes_at_unmap: bool      # unmap_flush is overridden: called when a kunmap leaves a slot at count 1


def traits(policy: Policy) -> Traits:
    """A policy's Traits, from its class: hooks a class leaves as Policy's no-ops are not called."""
    kind = type(policy.inner if isinstance(policy, Guard) else policy)
    return Traits(bool(kind.uses_ring), bool(kind.flushes_only_at_wrap),
                  any(getattr(kind, h) is not getattr(Policy, h) for h in _HOLD_HOOKS),
                  kind.unmap_flush is not Policy.unmap_flush)


class Guard(Policy):
    """A policy from outside the package, its contract checked at every hook (built-ins run unguarded):

    - ``kmapped`` / ``kunmapped`` leave the ring as it was (the cursor, the mapped pages, the deferred slots);
    - ``wrap``, ``unmap_flush`` and ``rescue`` only take count-1 slots to 0, return what they promise, and
      their Flush names real CPUs other than the caller and real slots;
    - ``first_message`` returns None or a time after t, and no message takes effect before a safe time it
      gave (``check_flush``, from the coordinator);
    - an exception raised in a hook ends the run with a PolicyError naming the file and line.
    """

    def __init__(self, inner: Policy, ring, resolved: Resolved, cfg):
        self.inner, self.ring, self.resolved = inner, ring, resolved
        self.name = resolved.label
        self.uses_ring = bool(type(inner).uses_ring)
        self.flushes_only_at_wrap = bool(type(inner).flushes_only_at_wrap)
        self.ncpu = cfg.machine.cpus
        self.last_pkmap = cfg.machine.ring_size
        self.ipi_latency = cfg.cost.ipi_latency
        self.promised = -1  # the largest safe time first_message has given
        self.flushed_by = ""  # the hook that returned the latest Flush

    # ---- errors -------------------------------------------------------------------------------------
    def _error(self, hook: str, cpu: int | None, what: str, exc: BaseException | None = None) -> PolicyError:
        from smpsim import usercode

        file, line = None, None
        if exc is not None and self.resolved.file:
            file, line = usercode.raised_at(exc, (self.resolved.file,))
        if file is None:
            file, line = usercode.definition(getattr(type(self.inner), hook, type(self.inner)))
        where = f" ({file}:{line})" if file and line else f" ({file})" if file else ""
        return PolicyError(cpu, hook, f"policy {self.name!r}{where}: {what}", self.name, file, line)

    def _call(self, hook: str, cpu: int | None, *args):
        try:
            return getattr(self.inner, hook)(*args)
        except PolicyError:
            raise
        except Exception as e:
            raise self._error(hook, cpu, f"{hook} raised {type(e).__name__}: {e}", e) from e

    # ---- ring checks --------------------------------------------------------------------------------
    def _mark(self) -> tuple:
        ring = self.ring
        return ring.last_pkmap_nr, len(ring.page_address), len(ring.deferred)

    def _teardowns(self, hook: str, cpu: int, before: list[int], mark: tuple) -> int:
        """Check a hook that may tear slots down did only that; returns the slots it took to 0."""
        ring = self.ring
        after = ring.pkmap_count
        if ring.last_pkmap_nr != mark[0]:
            raise self._error(hook, cpu, f"{hook} moved the ring's cursor (last_pkmap_nr {mark[0]} -> "
                                         f"{ring.last_pkmap_nr}); only map_new_virtual moves it")
        if before == after:
            return 0
        wrong = [(i, a, b) for i, (a, b) in enumerate(zip(before, after)) if a != b and (a, b) != (1, 0)]
        if wrong or len(after) != len(before):
            i, a, b = wrong[0] if wrong else (len(before), None, None)
            raise self._error(hook, cpu, f"{hook} changed pkmap_count[{i}] from {a} to {b}; a policy may only "
                                         "tear down slots at count 1 (flush_all_zero_pkmaps, teardown)")
        torn = sum(1 for a, b in zip(before, after) if a != b)
        if len(ring.page_address) != mark[1] - torn:
            raise self._error(hook, cpu, f"{hook} left page_address out of step with pkmap_count; tear slots "
                                         "down with the ring's flush_all_zero_pkmaps or teardown")
        return torn

    def _check_flush(self, hook: str, cpu: int, flush) -> None:
        if flush is None:
            return
        self.flushed_by = hook
        if not isinstance(flush, Flush):
            raise self._error(hook, cpu, f"{hook} returned {flush!r}, not a Flush or None (make one with "
                                         "self.flush(...))")
        bad = [j for j in flush.targets if not isinstance(j, int) or not 0 <= j < self.ncpu or j == cpu]
        if bad or len(set(flush.targets)) != len(flush.targets):
            raise self._error(hook, cpu, f"{hook} returned a Flush with targets {list(flush.targets)}: each "
                                         f"must be a CPU 0..{self.ncpu - 1} other than the caller ({cpu}), once")
        if flush.vpns is not None and any(not isinstance(v, int) or not 0 <= v < self.last_pkmap
                                          for v in flush.vpns):
            raise self._error(hook, cpu, f"{hook} returned a Flush of pages outside the pkmap window "
                                         f"0..{self.last_pkmap - 1}: {list(flush.vpns)[:8]}")
        if not isinstance(flush.scope, str) or not isinstance(flush.slots, int) or flush.slots < 0:
            raise self._error(hook, cpu, f"{hook} returned a Flush with scope {flush.scope!r} and slots "
                                         f"{flush.slots!r}: a str and an int >= 0")
        if flush.tick is not None and (not isinstance(flush.tick, int) or flush.tick < 1):
            raise self._error(hook, cpu, f"{hook} returned a Flush with tick {flush.tick!r}: an int >= 1 or None")
        if not set(flush.deferred) <= self.ring.deferred:
            raise self._error(hook, cpu, f"{hook} returned deferred slots {list(flush.deferred)} it did not "
                                         "defer on the ring (ring.defer)")

    def check_flush(self, t: int, cpu: int, flush: Flush) -> None:
        """The coordinator is about to send flush's messages, from a hook run at t: none may take effect
        before a safe time first_message gave (the CPUs may have run that far)."""
        first = INF
        if flush.targets:
            first = t + self.ipi_latency
        if flush.tick is not None and self.ncpu > 1:
            first = min(first, next_tick(t, flush.tick))
        if first < self.promised:
            raise self._error("first_message", cpu, f"a flush from {self.flushed_by} at t={t} takes effect on a CPU at "
                                                    f"t={first}, but the lookahead (first_message) let CPUs run "
                                                    f"to t={self.promised}: first_message must not promise more "
                                                    "than the policy's messages keep")

    # ---- the hooks, checked -------------------------------------------------------------------------
    def wrap(self, ring, cpu):
        before, mark = list(ring.pkmap_count), self._mark()
        out = self._call("wrap", cpu, ring, cpu)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise self._error("wrap", cpu, f"wrap returned {out!r}, not (slots torn down, Flush or None)")
        torn, flush = out
        n = self._teardowns("wrap", cpu, before, mark)
        if not isinstance(torn, list | tuple) or len(torn) != n:
            raise self._error("wrap", cpu, f"wrap tore down {n} slots but returned {torn!r} as the slots torn down")
        self._check_flush("wrap", cpu, flush)
        return list(torn), flush

    def unmap_flush(self, ring, slot, cpu):
        before, mark = list(ring.pkmap_count), self._mark()
        flush = self._call("unmap_flush", cpu, ring, slot, cpu)
        self._teardowns("unmap_flush", cpu, before, mark)  # torn down without a flush is unsafe, not a breach
        self._check_flush("unmap_flush", cpu, flush)
        return flush

    def rescue(self, ring, cpu):
        before, mark = list(ring.pkmap_count), self._mark()
        flush = self._call("rescue", cpu, ring, cpu)
        self._teardowns("rescue", cpu, before, mark)
        self._check_flush("rescue", cpu, flush)
        return flush

    def _unchanged(self, hook: str, cpu: int | None, *args):
        """Call a hook that must leave the ring as it is."""
        mark = self._mark()
        out = self._call(hook, cpu, *args)
        if self._mark() != mark:
            raise self._error(hook, cpu, f"{hook} changed the ring (cursor, mapped pages or deferred slots: "
                                         f"{mark} -> {self._mark()}); only wrap, unmap_flush and rescue may")
        return out

    def kmapped(self, cpu, page):
        self._unchanged("kmapped", cpu, cpu, page)

    def kunmapped(self, cpu, page):
        self._unchanged("kunmapped", cpu, cpu, page)

    def first_message(self, t):
        first = self._unchanged("first_message", None, t)
        if first is not None and (not isinstance(first, int) or isinstance(first, bool) or first <= t):
            raise self._error("first_message", None, f"first_message({t}) returned {first!r}: it must be None "
                                                     "(the policy sends no message) or a time after t")
        promised = INF if first is None else first
        if promised > self.promised:
            self.promised = promised
        return first

