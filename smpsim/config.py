"""Run configuration: the pydantic schema, TOML loading and ``--set`` overrides.

Pydantic does the validation because it reports every problem at once with its location, which is what a
user fixing a config file needs; hand-written checks would drift from the schema.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from smpsim.model.policies import POLICY_NAMES

# LAST_PKMAP by architecture (reference section 2).
ARCH_LAST_PKMAP = {"i386": 1024, "i386-pae": 512, "arm": 512, "mips": 1024}

WORKLOADS = ("uniform", "zipf", "stream", "shared", "pingpong", "script")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Machine(_Strict):
    cpus: int = Field(4, ge=1, le=1024, description="simulated CPUs")
    arch: Literal["i386", "i386-pae", "arm", "mips"] = Field("i386", description="preset for last_pkmap")
    last_pkmap: int | None = Field(None, ge=2, le=65536, description="LAST_PKMAP; default from arch")
    kmap_local_slots: int = Field(16, ge=1, le=1024, description="KM_MAX_IDX: kmap_local slots per CPU")
    preset: str | None = Field(None, description="cost preset: a built-in name (smpsim/presets) or a file "
                                                 "from `smpsim calibrate`; explicit cost.* keys win")

    @property
    def ring_size(self) -> int:
        return self.last_pkmap if self.last_pkmap is not None else ARCH_LAST_PKMAP[self.arch]


class Tlb(_Strict):
    entries: int = Field(64, ge=1, le=1 << 20, description="TLB entries for kernel translations")
    ways: int = Field(4, ge=1, description="associativity; ways == entries is fully associative")
    background: int = Field(32, ge=0, le=1 << 20,
                            description="background working set dropped by a full flush and refilled after it")

    @model_validator(mode="after")
    def _ways_divide(self) -> "Tlb":
        if self.ways > self.entries or self.entries % self.ways:
            raise ValueError(f"ways ({self.ways}) must divide entries ({self.entries})")
        return self


class Cost(_Strict):
    """Integer cycles at about 2.5 GHz; sources are kernel-pkmap.md section 4 keys."""

    access: int = Field(4, ge=1, description="L1D load-to-use, translation overlapped [R45]")
    tlb_hit: int = Field(0, ge=0, description="extra cycles for an L1 DTLB hit [R45]")
    page_walk: int = Field(30, ge=0, description="page walk with paging lines in cache [R44]")
    invlpg: int = Field(250, ge=0, description="local single-page INVLPG, ~100 ns [R11][R33][R34]")
    full_flush: int = Field(500, ge=0, description="CR3 write / CR4.PGE toggle, instruction only (assumption)")
    ipi_latency: int = Field(2500, ge=1, description="IPI one-way, send to handler entry (interpolated [R41][R42])")
    ipi_handler: int = Field(1000, ge=0, description="remote handler entry/exit incl. ack, excl. flush (assumption)")
    ipi_ack: int = Field(0, ge=0, description="ack visible at the initiator after the handler (folded into ipi_handler)")
    ipi_broadcast_step: int = Field(1050, ge=0,
                                    description="extra delay per further target: a*RT1 = 0.3*3500 [R41][R42]")
    lock_acquire: int = Field(50, ge=0, description="uncontended kmap_lock acquire/release (assumption)")
    lock_hold: int = Field(100, ge=1, description="kmap_high/kunmap_high bookkeeping under the lock (assumption)")
    lock_handoff: int = Field(2200, ge=0, description="contended lock cache-line transfer, low end [R51]")
    pkmap_scan: int = Field(2, ge=0, description="per slot probed by map_new_virtual (assumption)")
    pte_write: int = Field(20, ge=0, description="writing one pkmap PTE (assumption)")
    wakeup_latency: int = Field(5000, ge=0, description="wake_up to the sleeper retrying kmap_lock (assumption)")


class Policy(_Strict):
    name: Literal[POLICY_NAMES] = Field("linux-2.4", description="flush policy (smpsim.model.policies)")
    flush_ceiling: int = Field(33, ge=0, description="tlb_single_page_flush_ceiling: larger ranges flush all [R11]")
    lazy_max: int | None = Field(None, ge=1, description="vmap-lazy: slots awaiting a flush that trigger a purge; "
                                 "default lazy_max_pages() scaled to the ring (docs/policies.md)")
    tick: int = Field(2_500_000, ge=1, description="latr: cycles between scheduler ticks (HZ=1000 at 2.5 GHz)")


class Workload(_Strict):
    kind: Literal["uniform", "zipf", "stream", "shared", "pingpong", "script"] = "uniform"
    pages: int = Field(4096, ge=1, description="highmem pages the workload draws from")
    # Programs are streamed, so any length runs in the same memory; the bound only keeps values every
    # process and file format can carry (10**15 kmaps would take centuries).
    kmaps_per_cpu: int = Field(1000, ge=0, le=10**15, description="kmap/kunmap pairs per CPU")
    # Scaled with the machine (None: not; kmaps_per_cpu and think are used as given). A sweep over
    # machine.cpus keeps the total work and the offered load on kmap_lock fixed with them.
    kmaps_total: int | None = Field(None, ge=0, le=10**15, description="kmap/kunmap pairs of the whole "
                                    "machine: sets kmaps_per_cpu = kmaps_total // machine.cpus")
    accesses_per_kmap: int = Field(4, ge=1, description="access operations while a page is held")
    access_burst: int = Field(8, ge=1, description="accesses per access operation")
    hold: int = Field(200, ge=0, description="mean compute cycles between accesses while holding")
    think: int = Field(2000, ge=0, description="mean compute cycles between kmaps")
    think_per_cpu: int | None = Field(None, ge=0, description="sets think = think_per_cpu * machine.cpus, "
                                      "so the offered load on kmap_lock is the same at every CPU count")
    nesting: int = Field(1, ge=1, le=64, description="pages held at once")
    active_cpus: int | None = Field(None, ge=0, description="only CPUs 0..active_cpus-1 kmap; the others "
                                    "are idle (default: all)")
    write_fraction: float = Field(0.3, ge=0.0, le=1.0)
    zipf_s: float = Field(1.1, gt=0.0, description="zipf exponent")
    hot_pages: int = Field(16, ge=1, description="shared: size of the hot set every CPU maps")
    hot_fraction: float = Field(0.8, ge=0.0, le=1.0, description="shared: fraction of kmaps to the hot set")
    script: str | None = Field(None, description="script: JSON-lines file of per-CPU operations")


# workload key -> (the key that sets it from the CPU count, how)
SCALED_WITH_CPUS: dict[str, tuple[str, Any]] = {
    "kmaps_per_cpu": ("kmaps_total", lambda total, cpus: total // cpus),
    "think": ("think_per_cpu", lambda per_cpu, cpus: per_cpu * cpus),
}


class Trace(_Strict):
    enabled: bool = True
    part_events: int = Field(200_000, ge=1, description="events per Parquet part")


class Run(_Strict):
    engine: Literal["inline", "distributed"] = "inline"
    transport: Literal["ipc", "tcp"] = "ipc"


class Config(_Strict):
    seed: int = Field(1, ge=0, lt=2**63)
    machine: Machine = Machine()
    tlb: Tlb = Tlb()
    cost: Cost = Cost()
    policy: Policy = Policy()
    workload: Workload = Workload()
    trace: Trace = Trace()
    run: Run = Run()
    # Filled in by load_config: the directory relative paths (workload.script) are resolved against.
    base_dir: str | None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """Fill the cost keys a config leaves out from machine.preset. A config whose costs are all explicit
        (a resolved config, as shipped to CPU processes on other hosts) needs no preset file."""
        if not isinstance(data, dict) or not isinstance(data.get("machine"), dict):
            return data
        name = data["machine"].get("preset")
        cost = data.get("cost", {})
        if not isinstance(name, str) or not name or not isinstance(cost, dict) or set(Cost.model_fields) <= set(cost):
            return data
        from smpsim import presets
        return {**data, "cost": {**presets.costs(name, data.get("base_dir")), **cost}}

    @model_validator(mode="after")
    def _scaled_with_cpus(self) -> "Config":
        """kmaps_total and think_per_cpu set the per-CPU keys; a per-CPU key given as well must agree (a
        resolved config.toml holds both)."""
        w, n = self.workload, self.machine.cpus
        for key, (scaled, derive) in SCALED_WITH_CPUS.items():
            given = getattr(w, scaled)
            if given is None:
                continue
            value = derive(given, n)
            if key in w.model_fields_set and getattr(w, key) != value:
                raise ValueError(f"workload.{key} = {getattr(w, key)} disagrees with workload.{scaled} "
                                 f"(which makes it {value} at machine.cpus = {n}); give one of the two")
            setattr(w, key, value)
        return self

    @model_validator(mode="after")
    def _script_needs_file(self) -> "Config":
        if self.workload.kind == "script" and not self.workload.script:
            raise ValueError("workload.kind = 'script' needs workload.script = 'FILE.jsonl'")
        return self

    def script_path(self) -> Path | None:
        if not self.workload.script:
            return None
        p = Path(self.workload.script)
        if not p.is_absolute() and self.base_dir:
            p = Path(self.base_dir) / p
        return p


class Report(_Strict):
    """An experiment's ``[report]`` table: which point every other one is compared with (not part of a
    run's config: it changes no run and no config hash)."""

    baseline: dict[str, Any] = Field(default_factory=dict,
                                     description="dotted config key -> its value in the baseline point")
    by: list[str] = Field(default_factory=list, description="dotted config keys: one baseline per value")


def config_key_problem(key: str) -> str | None:
    """Why ``key`` (dotted) is not a key of a run's config, or None when it is one."""
    model: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return f"{'.'.join(parts[:i])} is not a table"
        if part not in fields or part == "base_dir":
            return "not a config key (smpsim config show lists them)"
        model = fields[part].annotation
    if getattr(model, "model_fields", None) is not None:
        return "a table, not a key; name one of its keys"
    return None


def validate_report(table: Any, source: str) -> Report:
    """The ``[report]`` table, every problem named by its key (``[report] baseline.policy.name: ...``)."""
    if isinstance(table, dict) and isinstance(table.get("baseline"), dict):
        table = {**table, "baseline": dict(dotted(table["baseline"]))}  # {policy.name = ...} is nested
    try:
        report = Report.model_validate(table)
    except ValidationError as e:
        raise ConfigError(source, [f"[report] {describe_error(x)}" for x in e.errors()]) from None
    problems = [f"[report] baseline.{k}: {why}" for k in report.baseline if (why := config_key_problem(k))]
    problems += [f"[report] by: {k!r}: {why}" for k in report.by if (why := config_key_problem(k))]
    problems += [f"[report] by: {k!r} is also in baseline; a key either picks the baseline or groups"
                 for k in report.by if k in report.baseline]
    if report.by and not report.baseline:
        problems.append("[report] by needs a baseline, e.g. baseline = {\"policy.name\" = \"eager\"}")
    if problems:
        raise ConfigError(source, problems)
    return report


def dotted(table: dict[str, Any], prefix: str = ""):
    """(dotted key, value) of every leaf of nested tables: {"a": {"b": 1}} -> ("a.b", 1)."""
    for k, v in table.items():
        if isinstance(v, dict):
            yield from dotted(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


class ConfigError(Exception):
    """A user mistake in a config file or override; the message lists every problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"invalid configuration ({self.source}):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def describe_error(err: dict[str, Any]) -> str:
    """One pydantic error as ``dotted.key: what is wrong (given value)``."""
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    given = err.get("input")
    where = f"{loc}: " if loc else ""
    if isinstance(given, dict):
        return f"{where}{err['msg']}"
    return f"{where}{err['msg']} (given {given!r})"


def validate(data: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, [describe_error(x) for x in e.errors()]) from None


def parse_value(text: str) -> Any:
    """A --set value: TOML syntax when it parses (numbers, booleans, lists, quoted strings), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError("--set", [f"{assignment!r}: expected key=value, e.g. machine.cpus=8"])
    key, _, text = assignment.partition("=")
    set_key(data, key.strip(), parse_value(text.strip()))


def set_key(data: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set a dotted key (``machine.cpus``) in raw config data, creating tables on the way."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(source, [f"{key!r}: not a dotted key"])
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(source, [f"{key}: {p} is not a table"])
        node = child
    node[parts[-1]] = value


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(str(path), ["is a directory, not a TOML file"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), [f"not valid TOML: {e}"]) from None


def default_config_path() -> Path:
    """configs/default.toml in a checkout; the packaged copy otherwise."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "configs" / "default.toml", here / "default.toml"):
        if cand.exists():
            return cand
    raise ConfigError("default config", ["configs/default.toml not found"])


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML config (the default one when path is None), apply --set overrides, validate."""
    p = Path(path) if path is not None else default_config_path()
    data = read_toml(p)
    data.pop("sweep", None)  # sweeps are expanded by smpsim.experiments, not by a single run
    data.pop("report", None)  # how smpsim sweep compares the points: nothing a run uses
    for a in overrides:
        apply_override(data, a)
    data["base_dir"] = str(p.resolve().parent)  # relative paths (workload.script, machine.preset) start here
    cfg = validate(data, str(p))
    return cfg


def to_toml(cfg: Config, per_point: bool = False) -> str:
    """The resolved config as TOML, every default filled in (written to each run directory).
    ``per_point``: it stands for every point of a sweep, so a key set from the CPU count
    (SCALED_WITH_CPUS) is a comment, the value at this point's count."""
    data = cfg.model_dump(mode="json", exclude_none=True)
    lines: list[str] = []
    for k, v in data.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            for kk, vv in v.items():
                scaled = SCALED_WITH_CPUS.get(kk, ("",))[0] if k == "workload" else ""
                if per_point and scaled in v:
                    lines.append(f"# {kk} = {_toml_value(vv)}    # from {scaled} at this point's machine.cpus")
                else:
                    lines.append(f"{kk} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
