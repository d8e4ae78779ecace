"""Run configuration: the pydantic schema, TOML loading and ``--set`` overrides.

Pydantic does the validation because it reports every problem at once with its location, which is what a
user fixing a config file needs; hand-written checks would drift from the schema.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from smpsim.inputs import (MAX_NESTING, TOO_DEEP, TOO_LONG_INTEGER, cut, did_you_mean, file_problem,
                           nesting_problem, quote, undecodable)
from smpsim.model.policies import POLICY_NAMES
from smpsim.workload_files import WORKLOAD_FILE_KEYS, source_sha256

# LAST_PKMAP by architecture (reference section 2).
ARCH_LAST_PKMAP = {"i386": 1024, "i386-pae": 512, "arm": 512, "mips": 1024}

WorkloadKind = Literal["uniform", "zipf", "stream", "shared", "pingpong", "script", "trace", "python"]
WORKLOADS: tuple[str, ...] = get_args(WorkloadKind)
TRACE_CLOCK_MHZ = 2500  # the cost model's cycles are at about 2.5 GHz (Cost)
TRACE_PAGE_BYTES = 32   # sizeof(struct page) on i386 without debug options


class _Strict(BaseModel):
    """Every config table: unknown keys are errors, and assignments are validated too."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Machine(_Strict):
    """[machine]: the simulated machine: CPUs, the pkmap ring's size (LAST_PKMAP, by arch), kmap_local slots
    and the cost preset."""
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
    """[tlb]: each CPU's TLB: entries, associativity and the background working set."""
    entries: int = Field(64, ge=1, le=1 << 20, description="TLB entries for kernel translations")
    ways: int = Field(4, ge=1, description="associativity; ways == entries is fully associative")
    background: int = Field(32, ge=0, le=1 << 20,
                            description="background working set dropped by a full flush and refilled after it")

    @model_validator(mode="after")
    def _ways_divide(self) -> "Tlb":
        if self.ways > self.entries or self.entries % self.ways:
            raise ValueError(f"ways ({self.ways}) must divide entries ({self.entries})")
        return self


# The clock the cycle costs assume (about 2.5 GHz): how figures show cycles as microseconds.
CYCLES_PER_US = 2500


class Cost(_Strict):
    """Integer cycles at about 2.5 GHz; each description names its measurement or says it is an assumption
    (docs/validation.md holds them against published figures)."""

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
    """[policy]: which flush policy runs (a built-in, registered or user policy) and its source's hash."""
    name: str = Field("linux-2.4", min_length=1,
                      description="flush policy: a built-in name, a name registered by an installed package, "
                                  "'package.module:Class' or 'path/to/file.py:Class' (relative to the config's "
                                  "folder); docs/policies.md")
    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        """A name that is neither built in, a spec nor registered is wrong whatever else the config says
        (Config._policy_resolves loads the others, once the rest of the config is valid)."""
        from smpsim.model.policies import check_name

        problem = check_name(name)
        if problem:
            raise PydanticCustomError("policy", "{m}", {"m": problem})
        return name

    sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$",
                               description="SHA-256 of the policy's source file (not for built-ins): filled in "
                                           "when the config is resolved; a copy with another hash is refused")
    flush_ceiling: int = Field(33, ge=0, description="tlb_single_page_flush_ceiling: larger ranges flush all [R11]")
    lazy_max: int | None = Field(None, ge=1, description="vmap-lazy: slots awaiting a flush that trigger a purge; "
                                 "default lazy_max_pages() scaled to the ring (docs/policies.md)")
    tick: int = Field(2_500_000, ge=1, description="latr: cycles between scheduler ticks (HZ=1000 at 2.5 GHz)")


class Workload(_Strict):
    """[workload]: what each CPU does: the kind and its parameters, or the file (script, trace, generator)
    it reads, with that file's hash."""
    kind: WorkloadKind = "uniform"
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
    trace: str | None = Field(None, description="trace: tracefs text of kprobes on kmap_high/kunmap_high")
    trace_clock_mhz: int | None = Field(None, ge=1, le=10**6, description="trace: cycles per microsecond the "
                                        f"timestamps' gaps are converted at (default {TRACE_CLOCK_MHZ})")
    trace_page_bytes: int | None = Field(None, ge=1, le=4096, description="trace: page number = page pointer "
                                         f"// this (default {TRACE_PAGE_BYTES}, sizeof(struct page) on i386)")
    generator: str | None = Field(None, description="python: 'file.py:func' or 'module:func' yielding each CPU's ops")
    sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$",
                               description="SHA-256 of the script, trace or generator source (filled in; "
                                           "a different file is refused)")


# workload key -> (the key that sets it from the CPU count, how)
SCALED_WITH_CPUS: dict[str, tuple[str, Any]] = {
    "kmaps_per_cpu": ("kmaps_total", lambda total, cpus: total // cpus),
    "think": ("think_per_cpu", lambda per_cpu, cpus: per_cpu * cpus),
}


class Trace(_Strict):
    """[trace]: whether the event trace is written, and how many events go in a Parquet part."""
    enabled: bool = True
    part_events: int = Field(200_000, ge=1, description="events per Parquet part")


class Run(_Strict):
    """[run]: the engine and transport; how a run is carried out, not what is simulated."""
    engine: Literal["inline", "distributed"] = "inline"
    transport: Literal["ipc", "tcp"] = "ipc"


# Keys that choose how a run is executed or recorded, not what is simulated: any value gives the same events
# and digest (tests/test_determinism.py), so they never tell two runs' results apart (smpsim compare).
NOT_SIMULATED = ("run.engine", "run.transport", "trace.part_events")


class Config(_Strict):
    """A whole run configuration: the seed and every table, validated together (preset costs, keys scaled
    with the CPUs, the policy's and the workload file's hashes)."""
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
        return {**data, "cost": {**presets.costs(name, data.get("base_dir"), keys=Cost.model_fields), **cost}}

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
    def _policy_resolves(self, info: ValidationInfo) -> "Config":
        """Load a policy from outside the package (once per process and file content), check it is one,
        and record its source's hash: the config hash covers the code that runs."""
        if self.policy.name in POLICY_NAMES:
            if self.policy.sha256 is not None:
                raise PydanticCustomError("policy", "policy.sha256: a built-in policy has no source hash to pin")
            return self
        if info.context and info.context.get("resolve_code") is False:
            return self
        from smpsim.model.policies import resolve
        from smpsim.usercode import UserCodeError, definition, raised_at

        try:
            r = resolve(self.policy.name, self.base_dir, self.policy.sha256)
        except UserCodeError as e:
            raise PydanticCustomError("policy", "policy.name: {m}", {"m": e.describe()}) from None
        try:
            r.cls(self)
        except Exception as e:  # the user's __init__: name where it failed
            file, line = raised_at(e, (r.file,) if r.file else ())
            file, line = (file, line) if file else definition(r.cls)
            raise PydanticCustomError("policy", "policy.name: {m}", {"m": (
                f"{r.spec!r} ({file}:{line}): {r.cls.__qualname__}(cfg) raised {type(e).__name__}: {e}")}) from None
        if self.policy.sha256 != r.sha256:
            self.policy.sha256 = r.sha256
        return self

    @model_validator(mode="after")
    def _workload_file(self) -> "Config":
        """A kind read from a file names it; the file's SHA-256 is recorded (so the config hash changes
        with the file), or checked when the config already records one."""
        w = self.workload
        key = WORKLOAD_FILE_KEYS.get(w.kind)
        if key is None:
            return self
        example = {"script": "FILE.jsonl", "trace": "FILE.trace", "generator": "file.py:func"}[key]
        if not getattr(w, key):
            raise ValueError(f"workload.kind = '{w.kind}' needs workload.{key} = '{example}'")
        if w.kind == "trace":
            if w.trace_clock_mhz is None:
                w.trace_clock_mhz = TRACE_CLOCK_MHZ
            if w.trace_page_bytes is None:
                w.trace_page_bytes = TRACE_PAGE_BYTES
        if self.base_dir is None:  # a config shipped to a CPU process: it checks its own copy against sha256
            return self
        sha = source_sha256(self)
        if sha is not None and w.sha256 is not None and sha != w.sha256:
            raise ValueError(f"workload.{key}: {self.workload_file_path()} has SHA-256 {sha}, but the config "
                             f"records {w.sha256}: the file changed since; restore it, or remove workload.sha256")
        if sha is not None and w.sha256 is None:
            w.sha256 = sha
        return self

    def workload_file_path(self) -> Path | None:
        """The trace or script file (a generator spec's file: smpsim.workload_files)."""
        w = self.workload
        name = w.trace if w.kind == "trace" else w.script
        return self._resolve(name)

    def script_path(self) -> Path | None:
        return self._resolve(self.workload.script)

    def _resolve(self, name: str | None) -> Path | None:
        if not name:
            return None
        p = Path(name)
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
            return f"not a config key{did_you_mean(key, config_keys())} (smpsim config show lists them)"
        model = fields[part].annotation
    if getattr(model, "model_fields", None) is not None:
        return "a table, not a key; name one of its keys"
    return None


def config_keys() -> list[str]:
    """Every dotted key of a run's config, tables included (``machine``, ``machine.cpus``, ...)."""
    keys: list[str] = []
    stack: list[tuple[str, Any]] = [("", Config)]
    while stack:
        prefix, model = stack.pop()
        for name, field in model.model_fields.items():
            if name != "base_dir":
                keys.append(prefix + name)
                if getattr(field.annotation, "model_fields", None) is not None:
                    stack.append((f"{prefix}{name}.", field.annotation))
    return keys


def unknown_key(key: str) -> str:
    """The message for an unknown dotted key, with the closest real one."""
    return f"unknown key{did_you_mean(key, config_keys())}"


def _choices(loc: tuple) -> tuple | None:
    """The values a Literal field at ``loc`` takes (None for any other field)."""
    model: Any = Config
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return None
        model = fields[part].annotation
    return get_args(model) if get_origin(model) is Literal else None


def validate_report(table: Any, source: str) -> Report:
    """The ``[report]`` table, every problem named by its key (``[report] baseline.policy.name: ...``)."""
    if isinstance(table, dict) and isinstance(table.get("baseline"), dict):
        table = {**table, "baseline": dict(dotted(table["baseline"]))}  # {policy.name = ...} is nested
    try:
        report = Report.model_validate(table)
    except ValidationError as e:
        raise ConfigError(source, [f"[report] {describe_error(x)}" for x in e.errors()]) from None
    problems = [f"[report] baseline.{cut(k)}: {why}" for k in report.baseline if (why := config_key_problem(k))]
    problems += [f"[report] by: {quote(k)}: {why}" for k in report.by if (why := config_key_problem(k))]
    problems += [f"[report] by: {quote(k)} is also in baseline; a key either picks the baseline or groups"
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
        return f"{cut(loc)}: {unknown_key(loc)}"
    given = err.get("input")
    where = f"{cut(loc)}: " if loc else ""
    msg = err["msg"].removeprefix("Value error, ")  # our validators' messages say what and where
    if isinstance(given, dict):
        return f"{where}{msg}"
    hint = did_you_mean(given, choices) if (choices := _choices(err["loc"])) else ""
    return f"{where}{msg} (given {quote(given)}){hint}"


def validate(data: dict[str, Any], source: str = "config", resolve_code: bool = True) -> Config:
    """A Config from raw data. ``resolve_code=False`` leaves a policy from outside the package unloaded
    (reading a recorded run's config, which may name a file that is not there)."""
    try:
        return Config.model_validate(data, context={"resolve_code": resolve_code})
    except ValidationError as e:
        raise ConfigError(source, [describe_error(x) for x in e.errors()]) from None


def parse_value(text: str, key: str = "value") -> Any:
    """A --set value: TOML syntax when it parses (numbers, booleans, lists, quoted strings), else a bare string.
    Values nested too deeply or integers too long to convert are a ConfigError naming ``key``."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError("--set", [f"{cut(key)}: {TOO_DEEP}"]) from None
    except ValueError:  # int() past sys.get_int_max_str_digits()
        raise ConfigError("--set", [f"{cut(key)}: {TOO_LONG_INTEGER} (given {quote(text)})"]) from None
    if (deep := nesting_problem(value)) is not None:
        raise ConfigError("--set", [f"{cut(key)}: {deep}"])
    return value


def split_assignment(assignment: str, config: str | Path | None = None) -> tuple[str, str]:
    """(dotted key, value text) of ``KEY=VALUE``. KEY is a TOML key, so parts may be quoted: quotes are
    dropped (``sweep."machine.cpus"`` is ``sweep.machine.cpus``, as in a [sweep] table). Without ``=``, a
    ConfigError naming it (``config``: the positional argument, which the shell may have given as the value:
    ``--set machine.cpus 16``)."""
    in_quote = None
    for i, ch in enumerate(assignment):
        if in_quote:
            in_quote = None if ch == in_quote else in_quote
        elif ch in "\"'":
            in_quote = ch
        elif ch == "=":
            return _dotted_key(assignment[:i].strip()), assignment[i + 1:].strip()
    if "=" in assignment:  # an unbalanced quote in the key: its first '=' then
        key, _, text = assignment.partition("=")
        return key.strip(), text.strip()
    key = cut(assignment.strip())
    fix = f"--set {key}=VALUE"
    if config is not None and not Path(config).exists():
        fix = f"--set {key}={cut(str(config))} (the word after it, {quote(str(config))}, was taken as the config file)"
    raise ConfigError("--set", [f"{quote(key)}: expected key=value, and there is no '='; write {fix}"])


def _dotted_key(key: str) -> str:
    """A TOML key (bare or quoted parts) as the dotted key; unchanged when it is not valid TOML."""
    try:
        node = tomllib.loads(f"{key} = 0")
    except (tomllib.TOMLDecodeError, RecursionError):
        return key
    parts = []
    while isinstance(node, dict) and len(node) == 1:
        (name, node), = node.items()
        parts.append(name)
    return ".".join(parts) if parts and node == 0 else key


def check_assignments(overrides: list[str] | tuple[str, ...], config: str | Path | None = None) -> None:
    """Every --set has its '=' (checked before the config file is read: see split_assignment)."""
    for a in overrides:
        split_assignment(a, config)


# Keys whose value names a file. In a config file a relative path starts at the file's folder; given on a
# command line (--set, overrides), it starts where the user typed it, as any shell argument does.
PATH_KEYS = ("policy.name", "workload.script", "workload.trace", "workload.generator", "machine.preset")


def apply_override(data: dict[str, Any], assignment: str) -> None:
    key, text = split_assignment(assignment)
    value = parse_value(text, key)
    set_key(data, key, cwd_relative(key, value) if key in PATH_KEYS else value)


def cwd_relative(key: str, value: Any) -> Any:
    """A relative file named by a command-line value, made absolute against the working directory; names
    (a built-in policy or preset, a module spec) are left as they are."""
    if not isinstance(value, str) or not value:
        return value
    from smpsim.usercode import absolute, is_file_target, is_spec
    if is_spec(value):
        return absolute(value)
    if key == "machine.preset" and not is_file_target(value) and not value.endswith(".toml"):
        return value  # a built-in preset's name
    if key in ("policy.name", "workload.generator"):
        return value  # a registered name, not a file
    return str(Path(value).expanduser().absolute())


def set_key(data: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set a dotted key (``machine.cpus``) in raw config data, creating tables on the way."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(source, [f"{quote(key)}: not a dotted key"])
    if len(parts) > MAX_NESTING:
        raise ConfigError(source, [f"{quote(key)}: {unknown_key(key)}"])
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(source, [f"{quote(key)}: {p} is not a table"])
        node = child
    node[parts[-1]] = value
    if parts == ["policy", "name"]:
        node.pop("sha256", None)  # the hash belongs to the name it was resolved from


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as data; anything but a regular file of UTF-8 TOML nested at most MAX_NESTING deep is a
    ConfigError naming the file (a FIFO or device is refused before it is opened)."""
    if (why := file_problem(path)) is not None:
        raise ConfigError(str(path), [f"{why}; give a TOML file" if why.startswith("is ") else why])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror or e}"]) from None
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), [f"{undecodable(data, e)}; a config is a UTF-8 TOML file"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), [f"not valid TOML: {e}"]) from None
    except RecursionError:
        raise ConfigError(str(path), [f"tables or lists {TOO_DEEP}"]) from None
    except ValueError:  # int() past sys.get_int_max_str_digits()
        raise ConfigError(str(path), [TOO_LONG_INTEGER]) from None
    if (deep := nesting_problem(table)) is not None:
        raise ConfigError(str(path), [deep])
    return table


def default_config_path() -> Path:
    """configs/default.toml in a checkout; the packaged copy otherwise."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "configs" / "default.toml", here / "default.toml"):
        if cand.exists():
            return cand
    raise ConfigError("default config", ["configs/default.toml not found"])


def base_dir_of(path: str | Path | None) -> str:
    """Where a config's relative paths (workload.script, machine.preset, a policy file) start: its file's
    folder; for the default config (path None), the working directory, as it names no file itself and a
    path given with --set is the user's."""
    return str(Path(path).resolve().parent) if path is not None else os.getcwd()


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                resolve_code: bool = True) -> Config:
    """Read a TOML config (the default one when path is None), apply --set overrides, validate."""
    check_assignments(overrides, path)
    p = Path(path) if path is not None else default_config_path()
    data = read_toml(p)
    data.pop("sweep", None)  # sweeps are expanded by smpsim.experiments, not by a single run
    data.pop("report", None)  # how smpsim sweep compares the points: nothing a run uses
    for a in overrides:
        apply_override(data, a)
    data["base_dir"] = base_dir_of(path)
    return validate(data, str(p), resolve_code)


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
