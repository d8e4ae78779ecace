"""``smpsim query RUN "SQL"``: DuckDB SQL over a run's trace, the events as the table (view) ``events``.

``events`` has the trace schema of docs/trace-format.md: one row per event, ``seq`` the canonical order,
fields an event type does not have are NULL. DuckDB's whole dialect is available (window functions,
``list_*`` functions for ``targets`` / ``woken``, ``GROUP BY ALL``, ...).

Queries are read-only and see nothing but the trace: before the first one runs, the connection is locked
down (``lock_down``): no file but the run's trace parts can be read, none written (COPY, EXPORT, ATTACH), no
extension installed or loaded, no network, and the configuration is locked so that SQL cannot undo any of
it. DuckDB itself may spill to a private directory (``spill_directory``) that SQL cannot read.

Queries stop: a query runs on a worker thread while the main thread waits, so SIGINT (Ctrl-C) and SIGTERM
cancel it (``Connection.interrupt``) and raise ``Interrupted``; ``timeout`` cancels it too, and DuckDB keeps
to ``memory_limit`` (a quarter of RAM by default), spilling what does not fit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb

from smpsim.analysis import QUERY_MEMORY_LIMIT, QUERY_TIMEOUT
from smpsim.analysis.load import Trace, _literal
from smpsim.engines.stopping import raising_on_signals
from smpsim.inputs import quote

_POLL = 0.1                    # how often the waiting main thread looks at the clock (signals wake it at once)
_CANCEL_GRACE = 10.0           # seconds DuckDB gets to unwind a cancelled query


class QueryError(Exception):
    """The SQL did not run: a syntax error, an unknown column or table, a type error, ..."""


@contextmanager
def spill_directory() -> Iterator[str]:
    """A private temporary directory for DuckDB to spill into, removed with everything in it at the end
    (close the connection first: DuckDB keeps its spill files open until then)."""
    from smpsim.engines.distributed import sockdir  # named after this process: a SIGKILLed query's is removed later

    with sockdir.temporary("query") as d:
        yield d


def lock_down(tr: Trace, memory_limit: str | None = QUERY_MEMORY_LIMIT, spill_dir: str | None = None) -> None:
    """Confine tr's connection to the trace (idempotent). The view ``events`` reads the trace parts at
    query time, so exactly those files stay allowed. ``memory_limit`` in DuckDB's syntax (None: DuckDB's
    own); ``spill_dir``: where DuckDB may spill (None: nowhere). A bad memory limit is a QueryError."""
    con = tr.con
    if con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
        return
    if tr.parts:
        con.execute("SET allowed_paths = ?", [[str(p) for p in tr.parts]])
    if memory_limit is not None:
        try:
            con.execute(f"SET memory_limit = {_literal(memory_limit)}")
        except duckdb.Error:
            raise QueryError(f"--memory-limit {quote(memory_limit)}: not a size; give one such as 4GB, 512MiB "
                             "or 25% (of this machine's memory)") from None
    for setting in ("SET autoinstall_known_extensions = false", "SET autoload_known_extensions = false",
                    f"SET temp_directory = {_literal(spill_dir or '')}",  # only DuckDB writes there
                    "SET enable_external_access = false",  # reads, writes, ATTACH, INSTALL, LOAD, http
                    "SET lock_configuration = true"):  # last: SQL can change none of the above
        con.execute(setting)


def query(tr: Trace, sql: str, *, timeout: float | None = QUERY_TIMEOUT,
          memory_limit: str | None = QUERY_MEMORY_LIMIT,
          spill_dir: str | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of one SQL statement, on the locked-down connection; QueryError with DuckDB's
    message if it fails (a statement that needs the file system or an extension says so) or runs past
    ``timeout`` seconds (0 or None: no limit); Interrupted on SIGINT or SIGTERM, the query cancelled."""
    if not sql.strip():
        raise QueryError("empty query")
    lock_down(tr, memory_limit, spill_dir)
    try:
        return _cancellable(tr.con, lambda: _fetch(tr.con, sql), timeout)
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
        if isinstance(e, duckdb.OutOfMemoryException):  # DuckDB's advice is SET commands the sandbox locks
            raise QueryError(f"{_message(e).splitlines()[0]}: the memory limit is {memory_limit}, beyond what "
                             "spilling to disk can save; raise it with --memory-limit") from None
        raise QueryError(_message(e)) from None


def _fetch(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    cur = con.execute(sql)
    if cur.description is None:  # a statement without a result (SET, CREATE VIEW, ...)
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()


def _cancellable(con: duckdb.DuckDBPyConnection, work, timeout: float | None):
    """work() on a worker thread; the main thread waits, taking SIGINT / SIGTERM (DuckDB does not return to
    Python until a query ends, so a signal would wait for it), and cancels the query on either or on the
    timeout. It waits on an Event, not Thread.join: a signal raised inside join() can leave the thread
    marked as ended while it still runs (seen on CPython 3.11)."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = e
        finally:
            done.set()

    deadline = time.monotonic() + timeout if timeout else None
    with raising_on_signals():
        threading.Thread(target=run, name="smpsim-query", daemon=True).start()
        try:
            while not done.wait(_POLL if deadline is None else max(0.0, min(_POLL, deadline - time.monotonic()))):
                if deadline is not None and time.monotonic() >= deadline:
                    _cancel(con, done)
                    raise QueryError(f"stopped after {timeout:g} s (--timeout); give a longer --timeout, "
                                     "or --timeout 0 for none")
        except KeyboardInterrupt:
            _cancel(con, done)
            raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _cancel(con: duckdb.DuckDBPyConnection, done: threading.Event) -> None:
    """Interrupt the running query until it has ended (an interrupt that comes before DuckDB has started
    the query is lost, hence the repeats), for at most _CANCEL_GRACE seconds."""
    end = time.monotonic() + _CANCEL_GRACE
    while not done.is_set() and time.monotonic() < end:
        con.interrupt()
        done.wait(_POLL)


def _message(e: Exception) -> str:
    return "\n".join(line for line in str(e).strip().splitlines() if line.strip())
