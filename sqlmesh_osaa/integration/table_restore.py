"""Putting an export's table back to its last audited content when an evaluation did not count.

SQLMesh audits a table after the insert committed, and a failed blocking audit leaves the
rows in the physical table (sqlmesh-internals G5). For ``osaa_s3_export`` that table is the
one the environment's view reads while state still records the interval of an *earlier*
evaluation: after a failed (or killed) prod restatement, ``sqlmesh audit`` on prod would
fail on data no interval vouches for. Every export evaluation stages the table's whole
content, sorted, so the latest audited staged output *is* the content state vouches for;
it is loaded back into the table. With no audited output (the table never passed), the
table is left alone: state records no interval, so SQLMesh evaluates it again.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlglot import exp
from sqlmesh.core.snapshot import Snapshot
from sqlmesh.core.state_sync import StateSync

from sqlmesh_osaa.duckdb_storage import configure_object_storage
from sqlmesh_osaa.integration import state
from sqlmesh_osaa.integration.export_kind import NAME as EXPORT
from sqlmesh_osaa.integration.publication import Evidence, audited_output
from sqlmesh_osaa.integration.runtime import Runtime
from sqlmesh_osaa.integration.staged_outputs import read_manifest

_log = logging.getLogger(__name__)


def restore_export_table(rt: Runtime, state_sync: StateSync, adapter: Any, snapshot: Snapshot, deployable: bool) -> bool:
    """Reload the export's physical table from its latest audited output; False when there is none."""
    if not snapshot.is_model or getattr(snapshot.model.kind, "materialization", None) != EXPORT:
        return False
    fresh = state.fresh(state_sync, [snapshot])[0]
    chosen, _ = audited_output(rt, fresh, deployable, Evidence(rt, state_sync))
    output = read_manifest(rt.store, chosen.prefix, rt.error_handler) if chosen else None
    if output is None or len(output.objects) != 1:
        return False
    (key,) = output.objects
    table = snapshot.table_name(is_deployable=deployable)
    configure_object_storage(adapter.cursor, rt.settings.storage)
    source = exp.Literal.string(rt.store.uri(output.staged_key(key))).sql(dialect="duckdb")
    query = exp.maybe_parse(f"SELECT * FROM read_parquet({source})", dialect="duckdb")
    adapter.replace_query(table, query, snapshot.model.columns_to_types)
    _log.warning("Restored %s from its last audited evaluation %s", table, output.evaluation)
    return True


def restore_safely(rt: Runtime, state_sync: StateSync, adapter: Any, snapshot: Snapshot, deployable: bool) -> None:
    """Restore, logging instead of raising: SQLMesh's own outcome must not change."""
    try:
        restore_export_table(rt, state_sync, adapter, snapshot, deployable)
    except Exception:
        _log.exception("sqlmesh-osaa could not restore the table of %s after a failed evaluation", snapshot.name)
