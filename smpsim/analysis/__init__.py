"""Reports over a recorded run (docs/analysis.md). Import the submodules directly:

- ``load``     open_trace: a checked run directory as the DuckDB view ``events``
- ``trace_metrics``  the figures of ``smpsim analyze`` (pure functions over an opened trace -> dicts)
- ``series``   per-time-bin aggregates for the figures
- ``report``   the analysis as report sections (terminal and HTML)
- ``plots``    the figures of analyze, compare and sweep, and the self-contained HTML report
- ``figstyle`` how every figure looks (size, lettering, series styles, log axes, legends, time bins, saving)
- ``logs``     summary of the operational logs (RUN/logs/*.log.jsonl)
- ``compare``  run discovery below sweep directories, headline metrics side by side
- ``query``    SQL over ``events``
- ``chrome``   Chrome Trace Event JSON for Perfetto
- ``synth``    a large valid run made quickly (benchmarks)

The defaults of ``smpsim query`` live here, where the CLI reads them without importing DuckDB.
"""

QUERY_TIMEOUT = 60.0          # seconds a query may run; 0 for no limit
QUERY_MEMORY_LIMIT = "25%"    # DuckDB's syntax: a share of this machine's memory, or 4GB, 512MiB, ...
