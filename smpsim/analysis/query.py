"""``smpsim query RUN "SQL"``: DuckDB SQL over a run's trace, the events as the table (view) ``events``.

``events`` has the trace schema of docs/trace-format.md: one row per event, ``seq`` the canonical order,
fields an event type does not have are NULL. DuckDB's whole dialect is available (window functions,
``list_*`` functions for ``targets`` / ``woken``, ``GROUP BY ALL``, ...).
"""

from __future__ import annotations

from typing import Any

import duckdb

from smpsim.analysis.load import Trace


class QueryError(Exception):
    """The SQL did not run: a syntax error, an unknown column or table, a type error, ..."""


def query(tr: Trace, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of one SQL statement; QueryError with DuckDB's message if it fails."""
    if not sql.strip():
        raise QueryError("empty query")
    try:
        cur = tr.con.execute(sql)
        if cur.description is None:  # a statement without a result (SET, CREATE VIEW, ...)
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()
    except duckdb.Error as e:
        # A statement DuckDB could not parse or bind is the user's; one that failed while running may
        # have hit a damaged part, which is then named (reading every part: only on this error path).
        user = (duckdb.ParserException, duckdb.CatalogException, duckdb.BinderException)
        damaged = None if isinstance(e, user) else tr.damaged_part()
        if damaged is not None:
            raise damaged from None
        raise QueryError("\n".join(line for line in str(e).strip().splitlines() if line.strip())) from None
