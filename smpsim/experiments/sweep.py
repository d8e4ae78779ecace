"""Experiments: a run config plus a ``[sweep]`` table, expanded into points.

```toml
[sweep]
mode = "product"                          # default; "zip" pairs the lists: point i takes value i of each
"policy.name" = ["linux-2.4", "eager"]    # a dotted key of the config, and the values it takes
machine.last_pkmap = [16, 64, 256]        # unquoted dotted TOML keys work too
seeds = 5                                 # every point with 5 seeds: the config's seed and the 4 after it
```

``seeds`` (a count, or a list of seeds) replicates every point: each (point, seed) is a run of its own, in
the directory its config hash names, so a point already run with some of the seeds runs only the others.

Every point is the rest of the file with one value per swept key. A point's run directory is named by the
hash of its resolved config, so a point is the same directory in every sweep that contains it.

``--set key=value`` changes the config under the sweep; setting a swept key pins it (it is no longer
swept). ``--set sweep.KEY=[...]`` replaces or adds a swept key's list, ``--set sweep.mode=zip`` the mode.
Every problem (in the config, in the sweep table, in any point) is reported at once in one ConfigError.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from smpsim.config import (Config, ConfigError, Report, apply_override, base_dir_of, check_assignments,
                           default_config_path, describe_error, dotted, parse_value, read_toml, set_key,
                           split_assignment, to_toml, unknown_key, validate_report)
from smpsim.inputs import cut, quote
from smpsim.headline import group
from smpsim.trace.rundir import config_hash

MODES = ("product", "zip")
SEEDS = "seeds"   # [sweep] key: replications of every point (not a config key)
MAX_SEEDS = 1000
SWEEP_PREFIX = "sweep."
REPORT_PREFIX = "report."


@dataclass(frozen=True)
class Point:
    """One point of a sweep: its swept values, its resolved config and that config's hash (its run
    directory's name)."""
    index: int
    params: dict[str, Any]  # swept key -> its value in this point's resolved config
    cfg: Config
    hash: str               # config_hash(cfg)

    @property
    def name(self) -> str:
        """The point's run directory name: the start of its config hash."""
        return self.hash[:16]

    @property
    def seed(self) -> int:
        return self.cfg.seed

    def with_seed(self, seed: int) -> "Point":
        """The same point with another seed: a run of its own (its own config hash and directory)."""
        if seed == self.cfg.seed:
            return self
        cfg = self.cfg.model_copy(update={"seed": seed}, deep=True)
        return Point(self.index, self.params, cfg, config_hash(cfg))

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())


@dataclass(frozen=True)
class Experiment:
    """An experiment file, expanded: the swept keys and values, the points, the [report] baselines and the
    seeds each point runs with."""
    path: Path
    mode: str
    values: dict[str, list]  # swept key -> values, in the order of the sweep table
    points: tuple[Point, ...]
    report: Report | None = None  # the [report] table: each point's baseline
    seeds: tuple[int, ...] | None = None  # [sweep] seeds = N or [..]: offsets (count) or the seeds (list)
    seed_list: bool = False  # seeds lists the seeds themselves (else: N seeds from each point's own)

    def seeds_of(self, point: Point) -> list[int]:
        """The seeds point runs with: its own alone without [sweep] seeds."""
        if self.seeds is None:
            return [point.seed]
        return list(self.seeds) if self.seed_list else [point.seed + i for i in self.seeds]

    @property
    def replicated(self) -> bool:
        """Points run with several seeds: the results table summarises them (mean, 95% CI)."""
        return self.seeds is not None and len(self.seeds) > 1

    def runs(self, points: list[Point] | None = None) -> list[Point]:
        """Every (point, seed) run of the points (default: all), point by point."""
        return [p.with_seed(s) for p in (self.points if points is None else points) for s in self.seeds_of(p)]

    def report_problems(self) -> list[str]:
        """Groups of points without a baseline point, or with several (e.g. --set pinned the baseline's key
        to another value): those points get no saving line."""
        rep = self.report
        if rep is None or not rep.baseline:
            return []
        _, trouble = group(self.params([*rep.baseline, *rep.by]), rep.baseline, rep.by, "point")
        return [f"[report] {t}" for t in dict.fromkeys(trouble)]

    def params(self, keys: list[str]) -> list[dict[str, Any]]:
        """Each point's resolved value of each key."""
        return [{k: _resolved(p.cfg, k) for k in keys} for p in self.points]

    @property
    def keys(self) -> list[str]:
        return list(self.values)

    @property
    def sweep_id(self) -> str:
        """Identifies the expanded sweep: the same runs in the same order give the same id."""
        return hashlib.sha256("\n".join(p.hash for p in self.runs()).encode()).hexdigest()

    def shard(self, i: int, n: int) -> list[Point]:
        """Every n-th point starting at point i."""
        return [p for p in self.points if p.index % n == i]

    def to_toml(self) -> str:
        """A resolved experiment file: the first point's config (every default filled in) and the sweep."""
        text = to_toml(self.points[0].cfg, per_point=True)
        if not self.values:
            return text
        lines = [f"\n# {len(self.points)} points; the swept keys above show the first point's values",
                 "[sweep]", f'mode = "{self.mode}"']
        lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in self.values.items()]
        if self.seeds is not None:
            lines.append(f"{SEEDS} = {json.dumps(list(self.seeds)) if self.seed_list else len(self.seeds)}")
        if self.report is not None:
            base = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in self.report.baseline.items())
            lines += ["", "[report]", f"baseline = {{{base}}}", f"by = {json.dumps(self.report.by)}"]
        return text + "\n".join(lines) + "\n"


def load_experiment(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Read an experiment (the default config when path is None), apply --set overrides, expand and
    validate every point."""
    check_assignments(overrides, path)
    p = Path(path) if path is not None else default_config_path()
    data = read_toml(p)
    table = data.pop("sweep", {})
    report_table = data.pop("report", None)
    problems: list[str] = []
    pinned, sweep_sets = set(), []
    for a in overrides:
        key, text = split_assignment(a)
        if key.startswith(SWEEP_PREFIX):
            sweep_sets.append((key[len(SWEEP_PREFIX):], parse_value(text, key)))
        elif key.startswith(REPORT_PREFIX):
            report_table = dict(report_table or {})
            set_key(report_table, key[len(REPORT_PREFIX):], parse_value(text, key))
        else:
            apply_override(data, a)
            pinned.add(key)
    seeds_given = table.pop(SEEDS, None) if isinstance(table, dict) else None
    for key, value in [x for x in sweep_sets if x[0] == SEEDS]:
        seeds_given = value
    sweep_sets = [x for x in sweep_sets if x[0] != SEEDS]
    mode, values = _parse_sweep(table, sweep_sets, problems)
    seeds, seed_list = _parse_seeds(seeds_given, "seed" in values, problems)
    for key in [k for k in values if k in pinned]:
        del values[key]
    for key in list(values):  # a key that cannot be set at all (seed.x: seed is not a table)
        try:
            set_key(copy.deepcopy(data), key, None, "[sweep]")
        except ConfigError as e:
            problems += [f"[sweep] {x}" for x in e.problems]
            del values[key]
    points = _expand(data, mode, values, base_dir_of(path), problems)
    report = None
    if report_table is not None:
        try:
            report = validate_report(report_table, str(p))
        except ConfigError as e:
            problems += e.problems
    if problems:
        raise ConfigError(str(p), list(dict.fromkeys(problems)))
    return Experiment(p, mode, values, tuple(points), report, seeds, seed_list)


def _parse_seeds(given: Any, seed_swept: bool, problems: list[str]) -> tuple[tuple[int, ...] | None, bool]:
    """[sweep] seeds: N (each point's seed and the N - 1 after it, as offsets) or a list of distinct seeds."""
    if given is None:
        return None, False
    fix = f"give a count (seeds = 5) or a list of distinct seeds (seeds = [1, 2, 3]), at most {MAX_SEEDS}"
    if seed_swept:
        problems.append("[sweep] seeds: seed is swept as well; replicate with seeds or sweep seed, not both")
    elif isinstance(given, int) and not isinstance(given, bool) and 1 <= given <= MAX_SEEDS:
        return tuple(range(given)), False
    elif (isinstance(given, list) and 1 <= len(given) <= MAX_SEEDS and len(set(given)) == len(given)
          and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63 for x in given)):
        return tuple(given), True
    else:
        problems.append(f"[sweep] seeds: {given!r} is not a number of seeds or a list of seeds; {fix}")
    return None, False


def _parse_sweep(table: Any, sweep_sets: list[tuple[str, Any]], problems: list[str]) -> tuple[str, dict[str, list]]:
    if not isinstance(table, dict):
        problems.append(f"sweep: expected a table of dotted keys and lists of values (given {quote(table)})")
        table = {}
    mode = table.get("mode", "product")
    entries: dict[str, Any] = {}
    for key, value in dotted({k: v for k, v in table.items() if k != "mode"}):
        if key in entries:
            problems.append(f"[sweep] {cut(key)}: given twice")
        entries[key] = value
    for key, value in sweep_sets:
        if key == "mode":
            mode = value
        else:
            entries[key] = value
    if mode not in MODES:
        problems.append(f"[sweep] mode: expected 'product' or 'zip' (given {quote(mode)})")
        mode = "product"
    values: dict[str, list] = {}
    for key, value in entries.items():
        if not isinstance(value, list):
            problems.append(f"[sweep] {cut(key)}: expected a list of values, e.g. [1, 2] (given {quote(value)})")
        elif not value:
            problems.append(f"[sweep] {cut(key)}: empty list; give at least one value")
        else:
            values[key] = value
    if mode == "zip" and len({len(v) for v in values.values()}) > 1:
        lengths = ", ".join(f"{k} has {len(v)}" for k, v in values.items())
        problems.append(f"[sweep] mode = 'zip' pairs the lists, so they must be equally long ({lengths})")
    return mode, values


def _expand(data: dict[str, Any], mode: str, values: dict[str, list], base_dir: str,
            problems: list[str]) -> list[Point]:
    keys = list(values)
    combos = zip(*values.values()) if mode == "zip" else itertools.product(*values.values())
    points: list[Point] = []
    seen: dict[str, Point] = {}
    for index, combo in enumerate(combos):
        d = copy.deepcopy(data)
        try:
            for key, value in zip(keys, combo):
                set_key(d, key, value, "[sweep]")
            d["base_dir"] = base_dir
            cfg = Config.model_validate(d)
        except ConfigError as e:  # e.g. both machine and machine.cpus swept
            problems += [f"[sweep] {x}" for x in e.problems]
            continue
        except ValidationError as e:
            problems += [_problem(err, keys) for err in e.errors()]
            continue
        cfg.base_dir = base_dir
        point = Point(index, {k: _resolved(cfg, k) for k in keys}, cfg, config_hash(cfg))
        if point.hash in seen:
            problems.append(f"[sweep] points {seen[point.hash].index} and {index} are the same config "
                            f"({point.describe()}); list each value once")
        seen.setdefault(point.hash, point)
        points.append(point)
    return points


def _problem(err: dict[str, Any], keys: list[str]) -> str:
    """A validation error, marked [sweep] when a swept key caused it."""
    loc = ".".join(str(x) for x in err["loc"])
    for key in keys:
        if err["type"] == "extra_forbidden" and (key == loc or key.startswith(loc + ".")):
            return f"[sweep] {cut(key)}: {unknown_key(key)}"
        if key.startswith(loc + "."):
            return f"[sweep] {cut(key)}: {cut(loc)} is not a table"
        if loc == key or loc.startswith(key + "."):
            return f"[sweep] {describe_error(err)}"
    return describe_error(err)


def _resolved(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value
