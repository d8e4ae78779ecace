"""The run directory: canonical merge of event streams, Parquet parts, digest, summary, reading and export.

Submodules (import them directly; this package itself stays cheap to import):

- ``merge``   CanonicalMerger: per-source batches of event tuples -> one stream in (t, source, n) order
- ``columns`` a batch of events as columns per event type
- ``counters`` the counter table SUMS: running counters and the SQL of the same sums
- ``writer``  TraceWriter: digest + bounded, atomically written Parquet parts
- ``rundir``  run directory creation, config.toml, summary.json, default run names
- ``reader``  open_run / iter_events / read_table, truncation detection
- ``export``  JSON-lines export
- ``schema``  the event fields and their Arrow types
"""

from smpsim.trace.errors import TraceError

__all__ = ["TraceError"]
