"""``smpsim policy check``: search for the failure of a flush policy.

```python
import smpsim
v = smpsim.check_policy("no-ipi", seed=1, budget=20)   # a built-in name or a spec, as policy.name takes
v.safe, v.failure.kind, v.failure.explanation         # False, "stale use", ["CPU 1 accessed page 3 ...", ...]
v.write("counterexample/")                            # the script and the config `smpsim run` replays
```

First the fixed cases (smpsim.check.cases), then script workloads generated and shrunk by Hypothesis
(smpsim.check.search). A failure is a stale use (the oracle: an access that reached another page than the
one kmapped), a kernel BUG, a deadlock, or a policy error (an exception or a broken contract). A failing fixed case is
shrunk to a short script; the search's failure, shrunk by Hypothesis, replaces it when shorter.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smpsim.check.cases import CASES, Case, Op, script_text
from smpsim.check.explain import explain_stale
from smpsim.check.runner import MISMATCH, Outcome, run_distributed, run_inline
from smpsim.config import Config, apply_override, set_key, to_toml, validate

DEFAULT_BUDGET = 60.0   # seconds of search for generated workloads (the cases take about 10 s more)
BASELINES = ("linux-2.4", "eager")  # what the cost line compares with
COST_KEYS = ("ipis_per_1000_kmaps", "stall_per_1000_kmaps", "kmap_mean_cycles")  # smpsim.headline keys
SCRIPT_NAME, CONFIG_NAME = "counterexample.jsonl", "counterexample.toml"

PolicyArg = str | type


@dataclass
class Failure:
    """A policy's first failure: where (a fixed case or a generated workload), what went wrong, and the config
    keys and script that replay it."""
    where: str                  # the case's name, or "a generated workload"
    kind: str                   # smpsim.check.runner's kinds: stale use, kernel BUG, deadlock, ...
    message: str
    keys: dict[str, Any]        # the config keys that replay it (machine, workload; no policy)
    script: list[Op] | None     # the script lines, for a script workload
    explanation: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    """The outcome of `smpsim policy check` for one policy: what ran, the failure if any, the cost line; it
    writes itself out as the report and the failing config."""
    policy: str
    seed: int
    cases: int                  # fixed cases run
    generated: int              # generated workloads run
    failure: Failure | None
    cost: str | None            # the cost line (safe only)
    seconds: float
    overrides: list[str] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return self.failure is None

    def write(self, out: str | Path) -> tuple[Path, Path | None]:
        """Write the counterexample into directory ``out``: its config (and script); (config, script)."""
        return write_counterexample(self, Path(out))


class _Workspace:
    """Where the check's scripts go (a temporary directory): each under a name made from its content, so a
    file name never stands for two scripts (the script loader caches parsed files by name and mtime)."""

    def __init__(self) -> None:
        from smpsim.engines.distributed import sockdir  # a killed check's directory is removed later

        self._tmp = sockdir.temporary("check")
        self.dir = Path(self._tmp.name)

    def script(self, ops: Sequence[Op]) -> Path:
        return self.file(script_text(ops), ".jsonl")

    def file(self, text: str, suffix: str) -> Path:
        path = self.dir / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}{suffix}"
        if not path.exists():
            path.write_text(text)
        return path

    def close(self) -> None:
        self._tmp.cleanup()


def _policy_keys(policy: PolicyArg) -> tuple[str, dict[str, Any]]:
    """(the policy's name for the report, the config keys that select it)."""
    if isinstance(policy, type):  # as smpsim.run(..., policy=Cls) takes it: named by its spec
        from smpsim.model import policies

        spec_of = getattr(policies, "spec_of", None)
        if spec_of is None:
            raise TypeError("this smpsim takes no policy class (smpsim.Policy): give a policy name")
        policy = spec_of(policy)
    if not isinstance(policy, str):
        raise TypeError(f"policy must be a name, a spec or a policy class, not {type(policy).__name__}")
    return policy, {"policy.name": policy}


def _config(policy: PolicyArg, keys: dict[str, Any], script: Sequence[Op] | None, overrides: Sequence[str],
            ws: _Workspace, source: str = "policy check", trace: str = "") -> Config:
    data: dict[str, Any] = {}
    for a in overrides:
        apply_override(data, a)
    for k, v in {**keys, **_policy_keys(policy)[1]}.items():
        set_key(data, k, v)
    if script is not None:
        set_key(data, "workload.kind", "script")
        set_key(data, "workload.script", str(ws.script(script)))
    if trace:
        set_key(data, "workload.trace", str(ws.file(trace, ".trace")))
    data["base_dir"] = os.getcwd()  # a relative policy file is relative to where the check was started
    return validate(data, source)


def _run(cfg: Config, engine: str = "inline") -> Outcome:
    return run_distributed(cfg) if engine == "distributed" else run_inline(cfg)


def _case_failure(case: Case, out: Outcome, inline: Outcome | None = None) -> Failure | None:
    failure = out.failure
    if failure is None and inline is not None and inline.summary.get("digest") != out.summary.get("digest"):
        failure = (MISMATCH, f"the distributed engine's digest {out.summary.get('digest')} differs from the "
                   f"inline engine's {inline.summary.get('digest')} on the same config")
    if failure is None:
        return None
    script = list(case.script) if case.script else None
    return Failure(case.name, failure[0], failure[1], dict(case.keys), script, explain_stale(out.events))


def _machine(keys: dict[str, Any]) -> dict[str, Any]:
    """A case's keys without its workload's: what a script of the same machine keeps."""
    return {k: v for k, v in keys.items() if not k.startswith("workload.")}


def check_policy(policy: PolicyArg, *, seed: int = 1, budget: float = DEFAULT_BUDGET, workloads: int | None = None,
                 overrides: Sequence[str] = (), cases: Sequence[Case] = CASES,
                 progress: Callable[[str], None] = lambda what: None) -> Verdict:
    """Check a policy: a name or spec as ``policy.name`` takes it, or a policy class as ``smpsim.run(...,
    policy=)`` takes it. ``budget``: seconds for the generated workloads, ``workloads``: at most that many
    of them; ``overrides``: ``--set`` assignments applied to every run (a case's own keys win). Raises
    ConfigError (or the loader's error) for a policy or override that cannot run; returns the Verdict.

    The fixed cases run first (up to the first that fails, which is shrunk to a short script:
    smpsim.check.shrink), then the generated workloads are searched (smpsim.check.search); the shorter
    counterexample is kept."""
    from smpsim.check.search import search
    from smpsim.model.policies import make_policy

    t0 = time.monotonic()
    name, _ = _policy_keys(policy)
    ws = _Workspace()

    def failure_of(keys: dict[str, Any], script: list[Op]) -> Outcome:
        return run_inline(_config(policy, keys, script, overrides, ws))

    try:
        stack = not make_policy(_config(policy, {}, None, overrides, ws)).uses_ring
        cases = [c for c in cases if not (stack and c.ring_only)]
        failed: Failure | None = None
        ran: list[tuple[Case, Outcome]] = []
        for i, case in enumerate(cases):
            progress(f"case {i + 1}/{len(cases)}: {case.name}")
            cfg = _config(policy, case.keys, case.script or None, overrides, ws, trace=case.trace)
            out = _run(cfg, case.engine)
            inline = run_inline(cfg) if case.engine == "distributed" and out.failure is None else None
            failed = _case_failure(case, out, inline)
            if failed is not None:
                progress(f"shrinking the failing case {case.name}")
                failed = _shrunk(failed, cfg, stack, failure_of) or failed
                break
            if case.engine == "inline":
                ran.append((case, out))
        # The search runs either way: after a failing case it looks for a shorter counterexample than the
        # shrunk case (Hypothesis shrinks the ring and the CPUs too), and the shorter one is kept.
        def fails(cpus: int, ring: int, script: list[Op]) -> bool:
            return failure_of({"machine.cpus": cpus, "machine.last_pkmap": ring}, script).failure is not None

        found, generated = search(fails, seed, budget, workloads, stack,
                                  on_example=lambda n: progress(f"generated workload {n}") if n % 10 == 0 else None)
        if found is not None and (failed is None or failed.script is None or len(found.script) < len(failed.script)):
            cpus, ring, _ = found.example
            keys = {"machine.cpus": cpus, "machine.last_pkmap": ring}
            out = failure_of(keys, found.script)
            assert out.failure is not None  # deterministic: the search saw it fail
            failed = Failure("a generated workload", out.failure[0], out.failure[1], keys, found.script,
                             explain_stale(out.events))
        cost = None
        if failed is None:
            progress("cost against " + " and ".join(BASELINES))
            cost = cost_line(policy, ran, overrides, ws)
        return Verdict(name, seed, len(cases), generated, failed, cost, time.monotonic() - t0, list(overrides))
    finally:
        ws.close()


def _shrunk(failed: Failure, cfg: Config, stack: bool,
            failure_of: Callable[[dict[str, Any], list[Op]], Outcome]) -> Failure | None:
    """The failure of a case on the shortest script shrinking finds (None: it does not fail as a script
    on the inline engine, e.g. the engines disagreed, or its workload has no script form)."""
    from smpsim.check.shrink import script_of, shrink_case

    keys = _machine(failed.keys)
    start = failed.script if failed.script is not None else script_of(cfg)
    if start is None:
        return None

    def same(keys: dict[str, Any], script: list[Op]) -> bool:
        f = failure_of(keys, script).failure
        return f is not None and f[0] == failed.kind

    if not same(keys, start):
        return None
    keys, script = shrink_case(keys, start, same, stack)
    out = failure_of(keys, script)
    assert out.failure is not None
    return Failure(f"{failed.where} (shrunk)", out.failure[0], out.failure[1], keys, script,
                   explain_stale(out.events))


def cost_line(policy: PolicyArg, ran: list[tuple[Case, Outcome]], overrides: Sequence[str], ws: _Workspace) -> str:
    """The policy's IPIs, initiator stall and mean kmap latency on the cases it ran, against each baseline
    on the same cases: the saving line of smpsim.headline, over the counters summed across the cases."""
    from smpsim.headline import facts_from_summary, headline, saving

    def values(outs: list[Outcome]) -> dict[str, Any]:
        total: dict[str, int] = {}
        for o in outs:
            for k, v in o.counters.items():
                if isinstance(v, int):
                    total[k] = total.get(k, 0) + v
        return headline(facts_from_summary({"counters": total}), COST_KEYS)

    mine = values([o for _, o in ran])
    parts = []
    for base in (b for b in BASELINES if b != policy):
        theirs = values([run_inline(_config(base, c.keys, c.script or None, overrides, ws, trace=c.trace))
                         for c, _ in ran])
        parts.append(f"vs {base}: {saving(mine, theirs)}")
    return f"cost on the {len(ran)} cases run inline, {'; '.join(parts)}"


def counterexample_problem(out: Path) -> str | None:
    """Why a counterexample cannot be written into directory ``out`` (None: it can). It may be new, empty,
    or hold only the files of an earlier check: nothing else is ever written over."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out}: exists and is not a directory; choose another --out"
    foreign = sorted(p.name for p in out.iterdir() if p.name not in (SCRIPT_NAME, CONFIG_NAME))
    if foreign:
        return (f"{out}: holds files a policy check did not write ({', '.join(foreign[:5])}); choose another "
                "--out")
    return None


def _replayable(spec: str) -> str:
    """A policy file spec made absolute: the counterexample's config lives elsewhere than where the check
    ran, and a relative file in policy.name is relative to the config's folder."""
    try:
        from smpsim import usercode
    except ImportError:  # no user policies: a built-in name
        return spec
    if not usercode.is_spec(spec):
        return spec
    target, attr = usercode.split(spec)
    return f"{usercode.resolve_file(target, os.getcwd())}:{attr}" if usercode.is_file_target(target) else spec


def write_counterexample(v: Verdict, out: Path) -> tuple[Path, Path | None]:
    """The failure's config (and script) in ``out`` (see counterexample_problem); ``smpsim run
    out/counterexample.toml`` replays it."""
    assert v.failure is not None
    f = v.failure
    problem = counterexample_problem(out)
    if problem:
        raise FileExistsError(problem)
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    for a in v.overrides:
        apply_override(data, a)
    for k, val in {**f.keys, "policy.name": _replayable(v.policy), "seed": data.get("seed", 1)}.items():
        set_key(data, k, val)
    script = None
    if f.script is not None:
        script = out / SCRIPT_NAME
        head = (f"{f.kind} of policy {v.policy} ({f.where}), found by `smpsim policy check {v.policy} --seed {v.seed}`\n"
                f"{f.message}")
        script.write_text(script_text(f.script, head))
        set_key(data, "workload.kind", "script")
        set_key(data, "workload.script", SCRIPT_NAME)
    cfg = validate(json.loads(json.dumps(data)), str(out / CONFIG_NAME))
    config = out / CONFIG_NAME
    config.write_text(to_toml(cfg))
    return config, script
