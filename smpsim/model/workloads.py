"""Seeded per-CPU operation streams.

A workload is, for each CPU, a finite sequence of operations in program order (docs/architecture.md,
"Workload operations"):

    ("kmap", page)                 kmap(page), page an int >= 0
    ("access", page, n, write)     n >= 1 accesses through the address held for page; write a bool
    ("kunmap", page)               kunmap(page)
    ("compute", cycles)            local work, cycles an int >= 0

That documented form, its code first, is what ``build_cpu``, ``build``, ``load_script`` and iterating a
Program give, and what ``Program.of`` takes. Inside the model an operation has its kind first instead
(messages.KMAP, ...: ``(KMAP, page)``): ``Program.ops``, the window the Cpu reads, so the Cpu's hot loops
switch on ``op[0]`` with no lookup; messages.op_by_kind / op_by_code convert.

Everything here is pure: a CPU's stream depends only on (cfg, cpu), so a CPU process can rebuild its
own stream alone with ``program``. A Program generates the operations as the CPU consumes them and holds
only a bounded window of them, so memory does not grow with ``kmaps_per_cpu``; ``build_cpu`` lists a
whole stream (for tests and tools). Kinds ``trace`` and ``python`` live in kprobe_trace.py and
generator.py (not compiled: they run at the speed of the file or the user's code). Randomness comes from ``random.Random(f"{seed}:{cpu}:{kind}")``
(string seeds are hashed with SHA-512, not with the salted ``hash()``), so streams are identical across
processes and Python runs. The only I/O is reading the script file of the ``script`` workload.

Generated workloads share one shape. Each CPU does ``kmaps_per_cpu`` kmaps in groups of ``nesting``
(the last group may be smaller); for every page of a group, in order::

    compute(think)  kmap(p)  [compute(hold)  access(p, access_burst, write)] * accesses_per_kmap

and the group's pages are then kunmapped in reverse (stack / LIFO) order, as kmap_local requires. With
``active_cpus`` set, only CPUs below it run such a stream; the others are idle (an empty program). think
and hold are integers uniform in [0, 2*mean]; write is ``rng.random() < write_fraction``. A page is never
held twice at once by a generated stream (a drawn page already held is redrawn), and every stream ends
with nothing held. When fewer distinct pages exist than ``nesting``, the group size is capped at that
number.

Script format (``workload.kind = "script"``): JSON lines, one operation per line, documented with
examples in docs/workloads.md. ``check_script`` reports every bad line (``smpsim config check``).

Shaped for mypyc (smpsim/native.py compiles it): constants are Final; loops count with range() over a
local int (compiled code counts without an iterator); ``_shuffle`` spells out random.shuffle.
"""

from __future__ import annotations

import json
import os
import random
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable, Final, Iterator

from smpsim.config import Config
from smpsim.model.errors import WorkloadError
from smpsim.model.messages import ACCESS, COMPUTE, KMAP, KUNMAP, op_by_code, op_by_kind

Op = tuple
ScriptOps = dict[int, list[tuple[Op, int]]]

# Redraws of an already-held page before falling back to probing the next free page.
_MAX_REDRAWS: Final = 64
# Largest 2*mean+1 for which compute tuples are precomputed in a table.
_COMPUTE_TABLE_MAX: Final = 1 << 16
# Pingpong: pages cycled through per pair (slots get reused quickly).
_PINGPONG_SPAN: Final = 64
# Operations per generated block (about 11 per kmap by default): a Program holds about one block.
_BLOCK: Final = 512
_SCRIPT_BLOCK: Final = 512


# ---------------------------------------------------------------------------------------------------
# Public API


class Program:
    """One CPU's operations in program order, generated as they are consumed.

    ``ops`` holds them in the model's form (kind first); iterating gives the documented form. ``ops[0]``
    is the operation at position ``base``; positions before ``base`` are gone. ``fill(pc, n)``
    slides the window to hold positions pc .. pc+n-1 (as far as the program goes), where pc is the
    consumer's position: nothing from pc on is dropped. So the window never holds more than n + one
    generated block + ``KEEP`` operations.
    """

    __slots__ = ("ops", "base", "_blocks", "_ended")

    KEEP = 4  # positions kept behind the consumer's

    def __init__(self, blocks: Iterator[list[Op]]):
        self.ops: list[Op] = []
        self.base = 0
        self._blocks = blocks
        self._ended = False

    @classmethod
    def of(cls, ops: list[Op]) -> "Program":
        """A program of a list already in memory, in the documented form."""
        return cls(iter([[op_by_kind(op) for op in ops]]))

    def fill(self, pc: int, n: int = 1) -> bool:
        """Hold positions pc .. pc+n-1 (those that exist); whether position pc exists."""
        end = self.base + len(self.ops)
        if end < pc + n and not self._ended:
            drop = pc - self.KEEP - self.base
            if drop > 0:
                self.ops = self.ops[drop:]
                self.base += drop
            while end < pc + n:
                block = next(self._blocks, None)
                if block is None:
                    self._ended = True
                    break
                self.ops += block
                end += len(block)
        return pc < end

    def seek(self, pc: int) -> None:
        """Skip to position pc, generating and dropping what comes before it (a restored Cpu resumes at
        its pc: a stream is regenerated from its seed rather than its generator state saved)."""
        while self.base + len(self.ops) <= pc and not self._ended:
            self.base += len(self.ops)
            block = next(self._blocks, None)
            if block is None:
                self._ended, self.ops = True, []
            else:
                self.ops = block
        drop = min(pc - self.KEEP - self.base, len(self.ops))
        if drop > 0:
            self.ops = self.ops[drop:]
            self.base += drop

    def ended(self, pc: int) -> bool:
        """Whether the program has no operation at position pc."""
        return pc - self.base >= len(self.ops) and not self.fill(pc)

    def __iter__(self) -> Iterator[Op]:
        """The operations from ``base`` on, in the documented form."""
        pc = self.base
        while self.fill(pc):
            yield op_by_code(self.ops[pc - self.base])
            pc += 1


def program(cfg: Config, cpu: int) -> Program:
    """The operations of ``cpu``, streamed (a script file is read and checked here, in full; a trace is
    read as the CPU consumes it)."""
    ncpus = cfg.machine.cpus
    if not (isinstance(cpu, int) and 0 <= cpu < ncpus):
        raise ValueError(f"cpu {cpu!r} out of range [0, {ncpus})")
    kind = cfg.workload.kind
    if kind == "script":
        return Program(_script_blocks(_script_cpu(cfg, cpu)))
    if kind == "trace":  # read lazily from the file (model/kprobe_trace.py)
        from smpsim.model import kprobe_trace
        return Program(kprobe_trace.blocks(cfg, cpu))
    if kind == "python":  # the user's generator, checked op by op (model/generator.py)
        from smpsim.model import generator
        return Program(generator.blocks(cfg, cpu))
    active = cfg.workload.active_cpus
    if active is not None and cpu >= active:  # an idle CPU: it never kmaps, but it still gets IPIs
        return Program(iter(()))
    return Program(_pingpong(cfg, cpu) if kind == "pingpong" else _generated(cfg, cpu, kind))


def build_cpu(cfg: Config, cpu: int) -> tuple[list[Op], list[int] | None]:
    """The whole stream of ``cpu`` as a list (the documented form) and, for ``script``, each op's 1-based
    source line."""
    ops: list[Op] = []
    for block in program(cfg, cpu)._blocks:
        ops += [op_by_code(op) for op in block]
    lines = [line for _, line in _script_cpu(cfg, cpu)] if cfg.workload.kind == "script" else None
    return ops, lines


def script_lines(cfg: Config) -> list[list[int]] | None:
    """For a script, each CPU's 1-based source line of each of its operations (to name the line of an
    error; the file is in memory anyway); None for generated workloads."""
    if cfg.workload.kind != "script":
        return None
    return [[line for _, line in _script_cpu(cfg, c)] for c in range(cfg.machine.cpus)]


def build(cfg: Config) -> list[list[Op]]:
    """Every CPU's operation list, index = CPU id."""
    return [build_cpu(cfg, c)[0] for c in range(cfg.machine.cpus)]


def load_script(path: str | os.PathLike[str]) -> ScriptOps:
    """Parse and check a JSON-lines script: ``{cpu: [(op, line), ...]}`` in program order.

    The CPU range is not checked here (it depends on the config); ``build_cpu`` does that.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read the workload script: {e.strerror or e}") from None
    parsed = _load_script_cached(str(path), st.st_mtime_ns, st.st_size)
    return {cpu: [(op_by_code(op), line) for op, line in ops] for cpu, ops in parsed.items()}


# ---------------------------------------------------------------------------------------------------
# Script workloads


def _script_cpu(cfg: Config, cpu: int) -> tuple[tuple[Op, int], ...]:
    """CPU ``cpu``'s (op, line) entries; every CPU of the script is checked against machine.cpus."""
    path = cfg.script_path()
    assert path is not None  # the Config validator requires workload.script for kind = "script"
    try:
        st = path.stat()
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read the workload script: {e.strerror or e}") from None
    script = _load_script_cached(str(path), st.st_mtime_ns, st.st_size)
    bad = _out_of_range(path, script, cfg.machine.cpus)
    if bad:
        raise WorkloadError(bad[0])
    return script.get(cpu, ())


def _script_blocks(entries: tuple[tuple[Op, int], ...]) -> Iterator[list[Op]]:
    for i in range(0, len(entries), _SCRIPT_BLOCK):
        yield [op for op, _ in entries[i:i + _SCRIPT_BLOCK]]


_OPTIONAL = ("n", "write")
_FIELDS = {
    "kmap": ("cpu", "op", "page"),
    "kunmap": ("cpu", "op", "page"),
    "access": ("cpu", "op", "page", "n", "write"),  # n (default 1) and write (default false) optional
    "compute": ("cpu", "op", "cycles"),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@lru_cache(maxsize=16)
def _load_script_cached(path: str, _mtime_ns: int, _size: int) -> dict[int, tuple[tuple[Op, int], ...]]:
    out = _parse_script(path, None)
    return {cpu: tuple(ops) for cpu, ops in out.items()}


def check_script(path: str | os.PathLike[str] | None, cpus: int, raise_: bool = False,
                 limit: int = 20) -> list[str]:
    """Every problem of a script (up to ``limit``), each naming the file and line; ``raise_``: raise them
    as one WorkloadError instead of returning them. The CPU range is checked against ``cpus``."""
    problems: list[str] = []
    try:
        out = _parse_script(str(path), problems)
    except WorkloadError as e:  # the file itself cannot be read
        problems, out = [str(e)], {}
    problems += _out_of_range(path, out, cpus)
    if len(problems) > limit:
        problems = problems[:limit] + [f"... and {len(problems) - limit} more problems"]
    if problems and raise_:
        raise WorkloadError("; ".join(problems))
    return problems


def _out_of_range(path: Any, script: Mapping[int, Sequence[tuple[Op, int]]], cpus: int) -> list[str]:
    """A problem for each CPU of the script the machine does not have, in file order."""
    bad = sorted((entries[0][1], c) for c, entries in script.items() if c >= cpus and entries)
    return [f"{path}:{line}: cpu {c} is out of range: the machine has {cpus} CPU{'s' if cpus != 1 else ''} "
            f"(cpu must be in [0, {cpus})); raise machine.cpus or fix the script" for line, c in bad]


def _parse_script(path: str, problems: list[str] | None) -> dict[int, list[tuple[Op, int]]]:
    """Parse a script; a bad line raises WorkloadError, or, given ``problems``, is added to it and skipped."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read the workload script: {e.strerror or e}") from None

    out: dict[int, list[tuple[Op, int]]] = {}
    # Per CPU: page -> hold count, and page -> line of its last kunmap (for messages).
    held: dict[int, dict[int, int]] = {}
    released: dict[int, dict[int, int]] = {}
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            parsed = _parse_line(path, lineno, raw, held, released)
        except WorkloadError as e:
            if problems is None:
                raise
            problems.append(str(e))
            continue
        if parsed is not None:
            out.setdefault(parsed[0], []).append((parsed[1], lineno))
    return out


def _parse_line(path: str, lineno: int, raw: bytes, held: dict[int, dict[int, int]],
                released: dict[int, dict[int, int]]) -> tuple[int, Op] | None:
    """(cpu, op) of one script line (op in the model's form), None for a blank or comment line; tracks the
    pages each CPU holds."""
    where = f"{path}:{lineno}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WorkloadError(f"{where}: not valid UTF-8 text ({e.reason} at byte {e.start})") from None
    s = text.strip()
    if not s or s.startswith("#"):
        return None
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as e:
        raise WorkloadError(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise WorkloadError(f"{where}: not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise WorkloadError(
            f'{where}: expected a JSON object such as {{"cpu": 0, "op": "kmap", "page": 5}}, '
            f"got {type(obj).__name__ if not isinstance(obj, list) else 'an array'}")
    if "op" not in obj:
        raise WorkloadError(f'{where}: missing field "op" (one of kmap, access, kunmap, compute)')
    op = obj["op"]
    if not isinstance(op, str) or op not in _FIELDS:
        raise WorkloadError(f"{where}: unknown op {json.dumps(op)} (expected one of kmap, access, kunmap, compute)")
    allowed = _FIELDS[op]
    for k in allowed:
        if k not in obj and k not in _OPTIONAL:
            raise WorkloadError(
                f'{where}: op "{op}" is missing field "{k}" (it needs {", ".join(allowed)})')
    for k in obj:
        if k not in allowed:
            raise WorkloadError(
                f'{where}: op "{op}" has unexpected field {json.dumps(k)} (allowed: {", ".join(allowed)})')
    cpu = obj["cpu"]
    if not _is_int(cpu) or cpu < 0:
        raise WorkloadError(f'{where}: field "cpu" must be an integer >= 0, got {json.dumps(cpu)}')

    if op == "compute":
        cycles = obj["cycles"]
        if not _is_int(cycles) or cycles < 0:
            raise WorkloadError(
                f'{where}: field "cycles" of op "compute" must be an integer >= 0, got {json.dumps(cycles)}')
        tup: Op = (COMPUTE, cycles)
    else:
        page = obj["page"]
        if not _is_int(page) or page < 0:
            raise WorkloadError(
                f'{where}: field "page" of op "{op}" must be an integer >= 0, got {json.dumps(page)}')
        holds = held.setdefault(cpu, {})
        if op == "kmap":
            holds[page] = holds.get(page, 0) + 1
            tup = (KMAP, page)
        else:
            if op == "access":
                n, write = obj.get("n", 1), obj.get("write", False)
                if not _is_int(n) or n < 1:
                    raise WorkloadError(
                        f'{where}: field "n" of op "access" must be an integer >= 1, got {json.dumps(n)}')
                if not isinstance(write, bool):
                    raise WorkloadError(
                        f'{where}: field "write" of op "access" must be true or false, got {json.dumps(write)}')
                tup = (ACCESS, page, n, write)
            else:
                tup = (KUNMAP, page)
            if op == "access" and not holds.get(page):
                # A kunmap of a page this CPU does not hold is left to the model: the mapping is
                # global, and kunmap_high BUG()s only if the page is unmapped or its count hits 0.
                last = released.get(cpu, {}).get(page)
                why = (f"which CPU {cpu} kunmapped at line {last} and has not kmapped again"
                       if last is not None else f"which CPU {cpu} has not kmapped")
                raise WorkloadError(f'{where}: op "{op}" on page {page}, {why}')
            if op == "kunmap" and holds.get(page):
                if holds[page] == 1:
                    del holds[page]
                    released.setdefault(cpu, {})[page] = lineno
                else:
                    holds[page] -= 1
    return cpu, tup


# ---------------------------------------------------------------------------------------------------
# Generated workloads


class _ComputeOps:
    """Stands in for the compute table when 2*mean+1 is too large to precompute."""

    __slots__ = ()

    def __getitem__(self, c: int) -> Op:
        return (COMPUTE, c)


@lru_cache(maxsize=8)
def _compute_table(mean: int) -> tuple[Any, int]:
    """(table, n): ``table[int(rand() * n)]`` is (COMPUTE, c) with c uniform in [0, 2*mean].

    The table holds shared immutable tuples, which saves building one tuple per compute op; every CPU's
    generator keeps it while it runs, so one table serves them all.
    """
    n = 2 * mean + 1 if mean > 0 else 1
    if n <= _COMPUTE_TABLE_MAX:
        return [(COMPUTE, c) for c in range(n)], n
    return _ComputeOps(), n


@lru_cache(maxsize=8)
def _zipf_tables(seed: int, pages: int, s: float) -> tuple[list[float], list[int]]:
    """Cumulative weights of ranks 1..pages (weight r**-s) and the rank -> page permutation."""
    cdf = list(accumulate(r ** -s for r in range(1, pages + 1)))
    perm = list(range(pages))
    _shuffle(perm, random.Random(f"{seed}:zipf-perm"))
    return cdf, perm


def _shuffle(x: list[int], rng: random.Random) -> None:
    """rng.shuffle(x), spelled out (CPython's algorithm, so the same permutation: tests/test_workloads.py)
    for the compiled module to run it: the standard library's costs ~10 ms of every run at 8192 pages."""
    getrandbits = rng.getrandbits
    for i in range(len(x) - 1, 0, -1):
        n = i + 1  # j uniform in [0, n): _randbelow's rejection sampling over n.bit_length() bits
        k = n.bit_length()
        j = getrandbits(k)
        while j >= n:
            j = getrandbits(k)
        x[i], x[j] = x[j], x[i]


def _page_picker(cfg: Config, cpu: int, rand: Callable[[], float]) -> tuple[Callable[[int], int], int]:
    """(pick(i) -> page of the i-th kmap, number of distinct pages pick can return)."""
    w = cfg.workload
    pages = w.pages
    kind = w.kind
    if kind == "uniform":
        return (lambda i: int(rand() * pages)), pages
    if kind == "zipf":
        cdf, perm = _zipf_tables(cfg.seed, pages, float(w.zipf_s))
        total = cdf[-1]
        last = pages - 1

        def pick_zipf(i: int) -> int:
            r = bisect_right(cdf, rand() * total)
            return perm[r if r <= last else last]
        return pick_zipf, pages
    if kind == "stream":
        start = cpu * (pages // cfg.machine.cpus)
        return (lambda i: (start + i) % pages), pages
    if kind == "shared":
        hot = min(w.hot_pages, pages)
        cold = pages - hot
        frac = w.hot_fraction
        if cold == 0:
            return (lambda i: int(rand() * hot)), pages

        def pick_shared(i: int) -> int:
            if rand() < frac:
                return int(rand() * hot)
            return hot + int(rand() * cold)
        return pick_shared, pages
    raise AssertionError(f"no page picker for workload kind {kind!r}")


def _generated(cfg: Config, cpu: int, kind: str) -> Iterator[list[Op]]:
    """Blocks of the stream (the module doc gives its shape); the blocks' boundaries mean nothing."""
    w = cfg.workload
    if w.kmaps_per_cpu == 0:
        return
    rand = random.Random(f"{cfg.seed}:{cpu}:{kind}").random
    pick, distinct = _page_picker(cfg, cpu, rand)
    # stream: consecutive pages, distinct within a group by construction
    yield from _groups(cfg, [], rand, pick, min(w.nesting, distinct), kind != "stream", None)


def _pingpong(cfg: Config, cpu: int) -> Iterator[list[Op]]:
    """Pairs (0, 1), (2, 3), ...: the even CPU writes page base + r % span in round r, the odd CPU
    then reads it.

    Both CPUs of a pair draw their think/hold times from the even CPU's generator
    (``f"{seed}:{even}:pingpong"``), so the odd CPU runs the same schedule shifted by an initial
    ``compute(think + hold * accesses_per_kmap)`` (means): it kmaps page r after the even CPU has
    kunmapped it. A lone last CPU (odd CPU count) behaves like an even one. Each pair cycles through its
    own ``span`` pages (span = min(64, pages // pairs), at least 1) so pairs do not collide as long as
    ``pages`` allows it. With nesting k, k consecutive rounds' pages are held at once.
    """
    w = cfg.workload
    if w.kmaps_per_cpu == 0:
        return
    pair = cpu // 2
    reader = cpu % 2 == 1
    pairs = (cfg.machine.cpus + 1) // 2
    pages = w.pages
    span = min(max(1, min(_PINGPONG_SPAN, pages // pairs)), pages)
    base = (pair * span) % pages
    ops: list[Op] = [(COMPUTE, w.think + w.hold * w.accesses_per_kmap)] if reader else []
    # consecutive rounds' pages: distinct within a group of at most span
    yield from _groups(cfg, ops, random.Random(f"{cfg.seed}:{2 * pair}:pingpong").random,
                       lambda r: (base + r % span) % pages, min(w.nesting, span), False, not reader)


def _groups(cfg: Config, ops: list[Op], rand: Callable[[], float], pick: Callable[[int], int], nest: int,
            redraw: bool, write: bool | None) -> Iterator[list[Op]]:
    """The generated shape (the module doc) after ``ops``, in blocks: pick(i) is the i-th kmap's page,
    redrawn (redraw) while its group holds it; every access writes if ``write``, or with probability
    write_fraction if None."""
    w = cfg.workload
    total = w.kmaps_per_cpu
    pages = w.pages
    think_t, think_n = _compute_table(w.think)
    hold_t, hold_n = _compute_table(w.hold)
    accesses = w.accesses_per_kmap
    burst = w.access_burst
    wf = w.write_fraction
    draw = write is None
    group: list[int] = []  # the pages the open group holds, in kmap order
    last = total - 1
    for i in range(total):
        ops.append(think_t[int(rand() * think_n)])
        p = pick(i)
        if redraw and p in group:
            tries = 0
            while p in group and tries < _MAX_REDRAWS:
                p = pick(i)
                tries += 1
            while p in group:  # pathological (e.g. hot_fraction = 1 with few hot pages): probe
                p = (p + 1) % pages
        group.append(p)
        ops.append((KMAP, p))
        if draw:
            acc_w, acc_r = (ACCESS, p, burst, True), (ACCESS, p, burst, False)
        else:  # one access, whichever branch
            acc_w = acc_r = (ACCESS, p, burst, write is True)
        for _ in range(accesses):
            ops.append(hold_t[int(rand() * hold_n)])
            ops.append(acc_w if draw and rand() < wf else acc_r)
        if len(group) == nest or i == last:  # the group is complete: kunmapped in reverse order
            for k in range(len(group) - 1, -1, -1):
                ops.append((KUNMAP, group[k]))
            group.clear()
            if len(ops) >= _BLOCK:
                yield ops
                ops = []
    yield ops
