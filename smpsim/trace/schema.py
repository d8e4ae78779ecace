"""The trace event fields (docs/architecture.md, "Trace events") and their fixed Arrow types.

In a trace every event is a flat record (the model's tuples, smpsim.model.events, become rows); a field an
event type does not have is absent (null in Parquet). The order of
FIELDS is the column order of every Parquet part and the key order of exported JSON lines.
"""

from __future__ import annotations

import pyarrow as pa

from smpsim.model.events import EVENT_TYPES  # noqa: F401  (re-exported: the event types)

I32, I64 = pa.int32(), pa.int64()

FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("seq", I64),            # position in the canonical order (t, source, n)
    ("t", I64),              # virtual time in cycles
    ("cpu", I32),            # the CPU the event is about
    ("ev", pa.string()),     # event type
    ("page", I64),           # highmem page frame number
    ("slot", I32),           # pkmap slot (or kmap_local slot)
    ("new", pa.bool_()),     # kmap: a new mapping was made (map_new_virtual)
    ("slept", pa.bool_()),   # kmap: slept on pkmap_map_wait at least once
    ("cycles", I64),         # kmap: request to return; tlb_miss: cost of the miss
    ("lock_wait", I64),      # kmap: cycles spent waiting for kmap_lock
    ("count", I32),          # kunmap: pkmap_count of the slot afterwards
    ("slots", I32),          # wrap/flush: slots torn down by flush_all_zero_pkmaps
    ("scope", pa.string()),  # flush/ipi: all | range | page | local
    ("targets", pa.list_(I32)),  # flush: CPUs sent an IPI
    ("pages", I32),          # flush: pages in the flushed range (null for scope all)
    ("stall", I64),          # flush: cycles the initiator stalled
    ("src", I32),            # ipi: sending CPU
    ("t_send", I64),         # ipi: send time
    ("t_recv", I64),         # ipi: arrival (handler entry) time
    ("t_ack", I64),          # ipi: ack time
    ("dropped", I32),        # ipi: pkmap translations the receiver dropped
    ("n", I32),              # access/tlb_miss/stale: number of accesses
    ("writes", I32),         # access: how many of the n accesses wrote
    ("hits", I32),           # access: TLB hits
    ("misses", I32),         # access: TLB misses
    ("reached", I64),        # stale: page frame the stale TLB entry pointed to
    ("flush_caused", pa.bool_()),  # tlb_miss: the entry had been dropped by a flush
    ("woken", pa.list_(I32)),  # wake: CPUs woken
)

FIELD_NAMES: tuple[str, ...] = tuple(name for name, _ in FIELDS)
FIELD_SET = frozenset(FIELD_NAMES)
SCHEMA = pa.schema([pa.field(name, typ, nullable=True) for name, typ in FIELDS])
REQUIRED = ("seq", "t", "ev")
