"""Giving DuckDB's freed memory back to the system in a process that owns its start.

DuckDB allocates through the jemalloc it links statically, which keeps freed pages resident
for a while to reuse them. A first ingest makes DuckDB allocate and free a lot in turn (the
checkpoint database's uncheckpointed rows, a COPY per file, the commit's batches): the pages
it keeps add up to about a tenth of the process's peak at 10,000 files (docs/performance.md,
"Ingest"). jemalloc reads its options once, when DuckDB's library loads, from
``DUCKDB_JE_MALLOC_CONF``; only a process that has not imported DuckDB yet (the
``osaa-ingest`` console script) can set them, and an operator's own value is kept.
"""

from __future__ import annotations

import logging
import os
import sys

_log = logging.getLogger(__name__)

JEMALLOC_OPTIONS = "DUCKDB_JE_MALLOC_CONF"
# Purge freed pages at once instead of after jemalloc's decay time.
RETURN_AT_ONCE = "dirty_decay_ms:0,muzzy_decay_ms:0"


def return_freed_memory() -> bool:
    """Ask DuckDB's allocator to return freed pages at once; False when DuckDB is loaded already."""
    if "duckdb" in sys.modules:
        _log.debug("DuckDB is imported already: its allocator keeps its options")
        return False
    os.environ.setdefault(JEMALLOC_OPTIONS, RETURN_AT_ONCE)
    return True
