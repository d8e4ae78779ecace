"""The counter table: the running counters and the SQL made from it agree on every event type."""

import duckdb
import pyarrow as pa

from smpsim.trace.columns import by_type
from smpsim.trace.counters import SUMS, Counters, sql_queries
from smpsim.trace.writer import groups_to_table
from tracegen import as_tuple, make_events


def test_running_counters_equal_the_generated_sql():
    events = [as_tuple(e) for e in make_events(3000, cpus=4)]
    running = Counters(4)
    tables = []
    for i in range(0, len(events), 700):  # batch boundaries do not matter
        groups = by_type(events[i:i + 700])
        running.feed(groups)
        tables.append(groups_to_table(groups, i))
    con = duckdb.connect()
    con.register("events", pa.concat_tables(tables))
    from_sql = Counters.from_sql(lambda q: con.execute(q).fetchall(), 4)
    assert from_sql.summary() == running.summary()
    s = running.summary()
    assert s["events"] == 3000 and s["counters"]["kmaps"] == 300
    # every counter of the table is exercised by this stream, so a wrong rule cannot hide behind zeros
    nonzero = {k for k, v in s["counters"].items() if v} | {k for row in s["per_cpu"] for k, v in row.items() if v}
    assert {x.name for x in SUMS if x.by != "scope"} <= nonzero
    assert s["flushes_by_scope"] == {"all": 300}


def test_sql_has_one_query_per_grouping():
    assert set(sql_queries()) == {None, "cpu", "src", "scope"}
