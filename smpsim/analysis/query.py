"""``smpsim query RUN "SQL"``: DuckDB SQL over a run's trace, the events as the table (view) ``events``.

``events`` has the trace schema of docs/trace-format.md: one row per event, ``seq`` the canonical order,
fields an event type does not have are NULL. DuckDB's whole dialect is available (window functions,
``list_*`` functions for ``targets`` / ``woken``, ``GROUP BY ALL``, ...).

Queries are read-only and see nothing but the trace: before the first one runs, the connection is locked
down (``lock_down``): no file but the run's trace parts can be read, none written (COPY, EXPORT, ATTACH,
spilling), no extension installed or loaded, no network, and the configuration is locked so that SQL
cannot undo any of it.
"""

from __future__ import annotations

from typing import Any

import duckdb

from smpsim.analysis.load import Trace


class QueryError(Exception):
    """The SQL did not run: a syntax error, an unknown column or table, a type error, ..."""


def lock_down(tr: Trace) -> None:
    """Confine tr's connection to the trace (idempotent). The view ``events`` reads the trace parts at
    query time, so exactly those files stay allowed."""
    con = tr.con
    if con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
        return
    if tr.parts:
        con.execute("SET allowed_paths = ?", [[str(p) for p in tr.parts]])
    for setting in ("SET autoinstall_known_extensions = false", "SET autoload_known_extensions = false",
                    "SET temp_directory = ''",  # no spilling to disk either
                    "SET enable_external_access = false",  # reads, writes, ATTACH, INSTALL, LOAD, http
                    "SET lock_configuration = true"):  # last: SQL can change none of the above
        con.execute(setting)


def query(tr: Trace, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of one SQL statement, on the locked-down connection; QueryError with DuckDB's
    message if it fails (a statement that needs the file system or an extension says so)."""
    if not sql.strip():
        raise QueryError("empty query")
    lock_down(tr)
    try:
        cur = tr.con.execute(sql)
        if cur.description is None:  # a statement without a result (SET, CREATE VIEW, ...)
            return [], []
        return [d[0] for d in cur.description], cur.fetchall()
    except duckdb.PermissionException as e:
        raise QueryError("queries are read-only and see only the run's trace (the table events): "
                         + _message(e)) from None
    except duckdb.Error as e:
        # A statement DuckDB could not parse or bind is the user's; one that failed while running may
        # have hit a damaged part, which is then named (reading every part: only on this error path).
        user = (duckdb.ParserException, duckdb.CatalogException, duckdb.BinderException,
                duckdb.InvalidInputException)
        damaged = None if isinstance(e, user) else tr.damaged_part()
        if damaged is not None:
            raise damaged from None
        raise QueryError(_message(e)) from None


def _message(e: Exception) -> str:
    return "\n".join(line for line in str(e).strip().splitlines() if line.strip())
