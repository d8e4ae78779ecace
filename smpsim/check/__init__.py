"""``smpsim policy check``: search for the failure of a flush policy.

```python
import smpsim
v = smpsim.check_policy("no-ipi", seed=1, budget=20)   # a built-in name or a spec, as policy.name takes
v.safe, v.failure.kind, v.failure.explanation         # False, "stale use", ["CPU 1 accessed page 3 ...", ...]
v.write("counterexample/")                            # the script and the config `smpsim run` replays
```

First the fixed cases (smpsim.check.cases), then script workloads generated and shrunk by Hypothesis
(smpsim.check.search). A failure is a stale use (the oracle: an access that reached another page than the
one kmapped), a kernel BUG, a deadlock, or an exception out of the policy. The counterexample is the
shrunk script when the search found one, else the failing case.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smpsim.check.cases import CASES, Case, Op, script_text
from smpsim.check.explain import explain_stale
from smpsim.check.runner import STALE, Outcome, run_distributed, run_inline
from smpsim.config import Config, apply_override, set_key, to_toml, validate

DEFAULT_BUDGET = 60.0   # seconds of search for generated workloads (the cases take about 20 s more)
BASELINES = ("linux-2.4", "eager")  # what the cost line compares with
COST_KEYS = ("ipis_per_1000_kmaps", "stall_per_1000_kmaps", "kmap_mean_cycles")  # smpsim.metrics keys
SCRIPT_NAME, CONFIG_NAME = "counterexample.jsonl", "counterexample.toml"

PolicyArg = str | type


@dataclass
class Failure:
    where: str                  # the case's name, or "a generated workload"
    kind: str                   # smpsim.check.runner's kinds: stale use, kernel BUG, deadlock, ...
    message: str
    keys: dict[str, Any]        # the config keys that replay it (machine, workload; no policy)
    script: list[Op] | None     # the script lines, for a script workload
    explanation: list[str] = field(default_factory=list)


@dataclass
class Verdict:
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
        self._tmp = tempfile.TemporaryDirectory(prefix="smpsim-check-")
        self.dir = Path(self._tmp.name)

    def script(self, ops: Sequence[Op]) -> Path:
        text = script_text(ops)
        path = self.dir / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.jsonl"
        if not path.exists():
            path.write_text(text)
        return path

    def close(self) -> None:
        self._tmp.cleanup()


def _policy_keys(policy: PolicyArg) -> tuple[str, dict[str, Any]]:
    """(the policy's name for the report, the config keys that select it)."""
    if isinstance(policy, str):
        return policy, {"policy.name": policy}
    raise TypeError(f"policy must be a name or spec string, not {type(policy).__name__}")


def _config(policy: PolicyArg, keys: dict[str, Any], script: Sequence[Op] | None, overrides: Sequence[str],
            ws: _Workspace, source: str = "policy check") -> Config:
    data: dict[str, Any] = {}
    for a in overrides:
        apply_override(data, a)
    for k, v in {**keys, **_policy_keys(policy)[1]}.items():
        set_key(data, k, v)
    if script is not None:
        set_key(data, "workload.kind", "script")
        set_key(data, "workload.script", str(ws.script(script)))
    cfg = validate(data, source)
    cfg.base_dir = os.getcwd()  # a relative policy file is relative to where the check was started
    return cfg


def _run(cfg: Config, engine: str = "inline") -> Outcome:
    return run_distributed(cfg) if engine == "distributed" else run_inline(cfg)


def _case_failure(case: Case, out: Outcome, inline: Outcome | None = None) -> Failure | None:
    failure = out.failure
    if failure is None and inline is not None and inline.summary.get("digest") != out.summary.get("digest"):
        failure = ("engines disagree", f"the distributed engine's digest {out.summary.get('digest')} differs "
                   f"from the inline engine's {inline.summary.get('digest')} on the same config")
    if failure is None:
        return None
    script = list(case.script) if case.script else None
    return Failure(case.name, failure[0], failure[1], dict(case.keys), script)


def check_policy(policy: PolicyArg, *, seed: int = 1, budget: float = DEFAULT_BUDGET, workloads: int | None = None,
                 overrides: Sequence[str] = (), cases: Sequence[Case] = CASES,
                 progress: Callable[[str], None] = lambda what: None) -> Verdict:
    """Check a policy (a built-in name or a spec, as ``policy.name`` takes it). ``budget``: seconds for
    the generated workloads, ``workloads``: at most that many of them; ``overrides``: ``--set`` assignments
    applied to every run (a case's own keys win). Raises ConfigError (or the loader's error) for a policy
    or override that cannot run; returns the Verdict otherwise."""
    from smpsim.check.search import search
    from smpsim.model.policies import make_policy

    t0 = time.monotonic()
    name = _policy_keys(policy)[0]
    ws = _Workspace()
    try:
        stack = not make_policy(_config(policy, {}, None, overrides, ws)).uses_ring
        failed: Failure | None = None
        ran: list[tuple[Case, Outcome]] = []
        for i, case in enumerate(cases):
            progress(f"case {i + 1}/{len(cases)}: {case.name}")
            cfg = _config(policy, case.keys, case.script or None, overrides, ws)
            out = _run(cfg, case.engine)
            inline = run_inline(cfg) if case.engine == "distributed" and out.failure is None else None
            failed = _case_failure(case, out, inline)
            if failed is not None:
                if out.events:
                    failed.explanation = explain_stale(out.events)
                break
            if case.engine == "inline":
                ran.append((case, out))

        def fails(cpus: int, ring: int, script: list[Op]) -> bool:
            keys = {"machine.cpus": cpus, "machine.last_pkmap": ring}
            return run_inline(_config(policy, keys, script, overrides, ws)).failure is not None

        found, generated = search(fails, seed, budget, workloads, stack,
                                  on_example=lambda n: progress(f"generated workload {n}") if n % 10 == 0 else None)
        if found is not None:
            cpus, ring, _ = found.example
            keys = {"machine.cpus": cpus, "machine.last_pkmap": ring}
            out = run_inline(_config(policy, keys, found.script, overrides, ws))
            assert out.failure is not None  # deterministic: the search saw it fail
            failed = Failure("a generated workload", out.failure[0], out.failure[1], keys, found.script,
                             explain_stale(out.events) if out.failure[0] == STALE else [])
        cost = None
        if failed is None:
            progress("cost against " + " and ".join(BASELINES))
            cost = cost_line(policy, ran, overrides, ws)
        return Verdict(name, seed, len(cases), generated, failed, cost,
                       time.monotonic() - t0, list(overrides))
    finally:
        ws.close()


def cost_line(policy: PolicyArg, ran: list[tuple[Case, Outcome]], overrides: Sequence[str], ws: _Workspace) -> str:
    """The policy's IPIs, initiator stall and mean kmap latency on the cases it ran, against each baseline
    on the same cases: smpsim.metrics' saving line, over the counters summed across the cases."""
    from smpsim.metrics import facts_from_summary, headline, saving

    def values(outs: list[Outcome]) -> dict[str, Any]:
        total: dict[str, int] = {}
        for o in outs:
            for k, v in o.counters.items():
                if isinstance(v, int):
                    total[k] = total.get(k, 0) + v
        return headline(facts_from_summary({"counters": total}), COST_KEYS)

    mine = values([o for _, o in ran])
    parts = []
    for base in BASELINES:
        theirs = values([run_inline(_config(base, c.keys, c.script or None, overrides, ws)) for c, _ in ran])
        parts.append(f"vs {base}: {saving(mine, theirs)}")
    return f"cost on the same {len(ran)} cases, {'; '.join(parts)}"


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
    for k, val in {**f.keys, "policy.name": v.policy, "seed": data.get("seed", 1)}.items():
        set_key(data, k, val)
    script = None
    if f.script is not None:
        script = out / SCRIPT_NAME
        head = (f"{f.kind} of policy {v.policy} ({f.where}), found by `smpsim policy check --seed {v.seed}`\n"
                f"{f.message}")
        script.write_text(script_text(f.script, head))
        set_key(data, "workload.kind", "script")
        set_key(data, "workload.script", SCRIPT_NAME)
    cfg = validate(json.loads(json.dumps(data)), str(out / CONFIG_NAME))
    config = out / CONFIG_NAME
    config.write_text(to_toml(cfg))
    return config, script
