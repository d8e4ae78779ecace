"""A recorded run opened for columnar analysis: a DuckDB connection with the trace as a view ``events``.

DuckDB reads the Parquet parts directly (only the columns a query uses, in parallel), so nothing holds the
whole trace in memory. The run directory is checked first by smpsim.trace.reader, the one place that
defines a readable run: ``open_run`` (not a run directory, a missing part in the middle, truncation) and
``iter_tables(columns=["seq"])`` (corrupt footers, seq numbers that do not continue). A part that still
fails inside DuckDB (a damaged data page) is tracked down and reported as a TraceError naming the file.

``events`` has exactly the trace schema (docs/trace-format.md), one row per event; ``seq`` gives the
canonical order (use ORDER BY seq: a scan's row order is not guaranteed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq

from smpsim.model.policies import POLICIES
from smpsim.trace.errors import TraceError
from smpsim.trace.reader import RunDir, iter_tables, open_run, read_part
from smpsim.trace.rundir import read_config_data
from smpsim.trace.schema import FIELD_NAMES, SCHEMA


@dataclass
class RunMeta:
    """What the analysis needs to know about a run besides its events."""
    path: Path
    cpus: int
    policy: str | None
    workload: str | None
    last_pkmap: int | None
    kmap_local_slots: int | None
    status: str | None
    truncated: bool
    reason: str | None
    summary: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def uses_ring(self) -> bool:
        """kmap-local never touches the pkmap ring: its kmaps take CPU-private kmap_local slots."""
        policy = POLICIES.get(self.policy or "")
        return policy.uses_ring if policy is not None else True

    @property
    def slot_capacity(self) -> int | None:
        """Slots the occupancy counts against: the ring, or every CPU's kmap_local slots together."""
        if self.uses_ring:
            return self.last_pkmap
        return None if self.kmap_local_slots is None else self.cpus * self.kmap_local_slots

    def describe(self) -> dict[str, Any]:
        return {"run": str(self.path), "status": self.status, "truncated": self.truncated,
                "truncation": self.reason, "policy": self.policy, "workload": self.workload,
                "cpus": self.cpus, "last_pkmap": self.last_pkmap, "kmap_local_slots": self.kmap_local_slots}


class Trace:
    """An opened run: ``meta``, and ``sql(query)`` over the view ``events``."""

    def __init__(self, run: RunDir, meta: RunMeta, con: duckdb.DuckDBPyConnection, parts: list[Path]):
        self.run, self.meta, self.con, self.parts = run, meta, con, parts

    def sql(self, query: str, params: list | None = None) -> duckdb.DuckDBPyConnection:
        """Execute a query of the analysis (a failure is a damaged trace, reported naming the part)."""
        try:
            return self.con.execute(query, params or [])
        except duckdb.Error as e:
            raise self.diagnose(e) from None

    def rows(self, query: str, params: list | None = None) -> list[tuple]:
        return self.sql(query, params).fetchall()

    def one(self, query: str, params: list | None = None) -> tuple:
        return self.sql(query, params).fetchone()

    def numpy(self, query: str, params: list | None = None) -> dict:
        try:
            return self.con.execute(query, params or []).fetchnumpy()
        except duckdb.Error as e:
            raise self.diagnose(e) from None

    def damaged_part(self) -> TraceError | None:
        """The first part that cannot be read in full, by pyarrow or by DuckDB (their decoders do not
        reject the same damage), as a TraceError naming it; None if every part reads."""
        for path in self.parts:
            try:
                read_part(path)
            except TraceError as e:
                return e
            try:
                self.con.sql(f"SELECT * FROM read_parquet({_literal(path)})").to_arrow_table()
            except duckdb.Error as e:
                return TraceError(f"{path}: corrupt or unreadable trace part ({str(e).strip().splitlines()[0]})")
        return None

    def diagnose(self, err: Exception) -> TraceError:
        """A failed analysis query as a TraceError: the damaged part it ran into, named."""
        return self.damaged_part() or TraceError(f"{self.meta.path}: cannot read the trace: {err}")

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Trace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_trace(path: str | Path, threads: int | None = None) -> Trace:
    """Check the run directory and open its trace as the DuckDB view ``events``.

    Never warns: a truncated run is readable up to where it ends, and ``meta.truncated`` / ``meta.reason``
    say so (the caller decides how to tell the user). Raises TraceError naming the file for a directory
    that is not a run, a run that recorded no trace, a missing, corrupt or foreign part.
    """
    run = open_run(path, warn=False)
    if not run.has_trace:
        raise TraceError(f"{run.path}: the run recorded no trace (trace.enabled = false): nothing to analyse")
    for _ in iter_tables(run, ["seq"]):  # footers readable, seq continuous: errors name the part
        pass
    for part in run.parts:
        _check_schema(part)
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if run.parts:
        files = ", ".join(_literal(p) for p in run.parts)
        cols = ", ".join(f'"{c}"' for c in FIELD_NAMES)
        con.execute(f"CREATE VIEW events AS SELECT {cols} FROM read_parquet([{files}])")
    else:
        con.register("_empty", SCHEMA.empty_table())
        con.execute("CREATE VIEW events AS SELECT * FROM _empty")
    return Trace(run, _meta(run), con, list(run.parts))


def _literal(path: Path) -> str:
    """A path as an SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def _check_schema(part: Path) -> None:
    try:
        schema = pq.read_schema(part)
    except Exception as e:  # noqa: BLE001 - any failure here is a damaged file
        raise TraceError(f"{part}: corrupt or unreadable trace part ({e})") from None
    for f in SCHEMA:
        i = schema.get_field_index(f.name)
        if i < 0:
            raise TraceError(f"{part}: does not match the trace schema (no column {f.name})")
        if schema.field(i).type != f.type:
            raise TraceError(f"{part}: does not match the trace schema (column {f.name} is "
                             f"{schema.field(i).type}, expected {f.type})")


def _meta(run: RunDir) -> RunMeta:
    s = run.summary or {}
    cfg = _config(run.path)
    machine = cfg.get("machine", {}) if isinstance(cfg.get("machine"), dict) else {}
    policy = s.get("policy") or (cfg.get("policy") or {}).get("name")
    workload = s.get("workload") or (cfg.get("workload") or {}).get("kind")
    cpus = s.get("cpus") or machine.get("cpus")
    last_pkmap = s.get("last_pkmap") or machine.get("last_pkmap")
    if last_pkmap is None and machine.get("arch"):
        from smpsim.config import ARCH_LAST_PKMAP
        last_pkmap = ARCH_LAST_PKMAP.get(machine["arch"])
    return RunMeta(path=run.path, cpus=int(cpus) if isinstance(cpus, int) else 0, policy=policy,
                   workload=workload, last_pkmap=last_pkmap, kmap_local_slots=machine.get("kmap_local_slots"),
                   status=run.status, truncated=run.truncated, reason=run.reason, summary=run.summary)


def _config(path: Path) -> dict[str, Any]:
    return read_config_data(path)
