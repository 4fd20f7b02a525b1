"""MODEL completions a killed process had not written yet, rebuilt from SQLMesh's interval records.

MODEL checkpoints are buffered during a command and made durable in batches
(``model_checkpoints.py``). A process killed between two batches loses the completions it
held; SQLMesh's state still has the interval it recorded for each of them (``add_interval``
runs right after the evaluation's audits passed). Reconciliation calls
:func:`rebuild_completions` for the dead runs it closes: every interval addition SQLMesh
wrote since the earliest of those runs started, whose MODEL item is not completed, gets its
completion (at the time SQLMesh recorded it, ``phase: rebuilt``). What is not rebuilt: the
start of an evaluation killed before SQLMesh recorded it (SQLMesh evaluates that interval
again in the next command, which records it then) and its timings.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from sqlmesh.core.snapshot import SnapshotId
from sqlmesh.core.state_sync import StateSync

from sqlmesh_osaa.checkpoint import COMPLETED, IN_PROGRESS, CheckpointScope, ItemChange
from sqlmesh_osaa.integration.audit_evidence import RecordedInterval, recorded_since
from sqlmesh_osaa.integration.model_checkpoints import model_key, model_name
from sqlmesh_osaa.integration.runtime import Runtime

_log = logging.getLogger(__name__)

REBUILT = "rebuilt"


def rebuild_completions(rt: Runtime, state_sync: StateSync, since: datetime) -> list[str]:
    """Complete the MODEL items of intervals SQLMesh recorded since ``since`` (UTC); returns their keys."""
    since_ms = int(since.replace(tzinfo=timezone.utc).timestamp() * 1000)
    recorded = recorded_since(state_sync, since_ms)
    if not recorded:
        return []
    ids = {SnapshotId(name=r.name, identifier=r.identifier) for r in recorded}
    snapshots = state_sync.get_snapshots(ids)
    wanted: dict[str, tuple[RecordedInterval, object]] = {}
    for interval in recorded:
        snapshot = snapshots.get(SnapshotId(name=interval.name, identifier=interval.identifier))
        if snapshot is not None:
            key = model_key(model_name(snapshot), interval.identifier, interval.start_ts, interval.end_ts)
            wanted[key] = (interval, snapshot)
    rows = rt.checkpoint.store.read_rows(rt.pipeline_name, CheckpointScope.MODEL.value, list(wanted))
    # Completed: nothing was lost. In progress: a live run of another process holds it (dead runs' are closed).
    missing = [key for key in wanted if key not in rows or rows[key]["status"] not in (COMPLETED, IN_PROGRESS)]
    changes = []
    for key in missing:
        interval, snapshot = wanted[key]
        at = datetime.fromtimestamp(interval.created_ts / 1000, timezone.utc).replace(tzinfo=None)
        started = {
            "model": model_name(snapshot),
            "snapshot": interval.name,
            "fingerprint": interval.identifier,
            "version": snapshot.version,
            "deployable": not interval.is_dev,
            **dict(zip(("interval_start", "interval_end"), key.rsplit("|", 2)[1:])),
        }
        done = {"phase": REBUILT, "rebuilt_from": "SQLMesh interval record", "failed_audits": None}
        changes += [ItemChange(key, IN_PROGRESS, started, force=True, at=at), ItemChange(key, COMPLETED, done, at=at)]
    rt.checkpoint.record_changes(CheckpointScope.MODEL, changes)
    if missing:
        _log.warning("Rebuilt %d MODEL completion(s) a killed run had not written, from SQLMesh state", len(missing))
    return missing
