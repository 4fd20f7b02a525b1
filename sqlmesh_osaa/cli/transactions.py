"""``transactions`` and ``reconcile``: what is in flight on object storage, and finishing it.

``transactions`` lists journal rows (open and committing by default), the store's
transactions in flight (their markers and uploaded versions), the latest decisions of the
commit log (with the keys later commits superseded) and the staging area's model exports
under ``<staging>/exports/``. ``reconcile`` finishes what dead processes left, per DESIGN sections 7
and 9: open transactions are rolled back, committing ones rolled forward, staging of ended
transactions deleted; inside a SQLMesh project the integration then discards staged exports
SQLMesh state does not vouch for and publishes every environment again.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable, Mapping

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus
from sqlmesh_osaa.cli.context import CliError, Target
from sqlmesh_osaa.cli.database import CheckpointSession
from sqlmesh_osaa.commit_log import CommitLog
from sqlmesh_osaa.commit_protocol import decision_history
from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.storage import ObjectStore
from sqlmesh_osaa.transaction_manager import DEFAULT_PIPELINE, JOURNAL_PREFIX, RecoveryReport, iter_transactions, journal_key, recover_transactions

# The SQLMesh integration's layout of staged exports (sqlmesh_osaa.integration.staged_outputs),
# repeated here so listing them does not import SQLMesh.
EXPORTS_DIR = "exports"
EXPORT_MANIFEST = "_osaa_output.json"
# Ingest area of the osaa_file_ingest kind: persistent landing files, not pending work.
INGEST_DIR = "ingest"
_EXPORT_DEPTH = 3


def _transaction(row: Mapping[str, Any]) -> dict[str, Any]:
    metadata = row.get("metadata") or {}
    manifest = metadata.get("manifest")
    return {
        "pipeline": row["pipeline"],
        "transaction_id": row["key"][len(JOURNAL_PREFIX) :],
        "phase": metadata.get("phase"),
        "status": row["status"],
        "interrupted": row["interrupted"],
        "operation": metadata.get("operation"),
        "owner_pid": row["owner_pid"],
        "owner_host": row["owner_host"],
        "started_at": row["started_at"],
        "updated_at": row["updated_at"],
        "staging": metadata.get("staging"),
        "puts": len(manifest["puts"]) if manifest else metadata.get("puts"),
        "deletes": len(manifest["deletes"]) if manifest else metadata.get("deletes"),
        "error_message": row["error_message"],
    }


def _journal_status(session: CheckpointSession, pipelines: list[str], transaction_ids: list[str]) -> dict[str, str]:
    """Per transaction id with a journal row: awaiting_recovery (in progress) or ended; one query per pipeline."""
    found: dict[str, str] = {}
    keys = [journal_key(transaction_id) for transaction_id in transaction_ids]
    for name in pipelines:
        rows = session.checkpoint(name).store.read_rows(name, CheckpointScope.OPERATION.value, keys)
        for key, row in rows.items():
            state = "awaiting_recovery" if row["status"] == CheckpointStatus.IN_PROGRESS.value else "ended"
            found.setdefault(key[len(JOURNAL_PREFIX) :], state)
    return found


def staging_areas(session: CheckpointSession, pipelines: list[str], store: ObjectStore, staging_prefix: str) -> list[dict[str, Any]]:
    """Transaction staging directories and staged exports, with object count, bytes and state."""
    root = staging_prefix.strip("/") + "/"
    areas: dict[str, dict[str, Any]] = {}
    for info in store.list_prefix(root):
        parts = info.key[len(root) :].split("/")
        if parts[0] == INGEST_DIR:
            continue
        if parts[0] == EXPORTS_DIR:
            if len(parts) <= _EXPORT_DEPTH + 1:
                continue
            prefix = root + "/".join(parts[: _EXPORT_DEPTH + 1]) + "/"
            area = areas.setdefault(prefix, {"prefix": prefix, "kind": "export", "transaction_id": None, "objects": 0, "bytes": 0, "state": "unsealed"})
            if parts[-1] == EXPORT_MANIFEST and len(parts) == _EXPORT_DEPTH + 2:
                area["state"] = "sealed"
        else:
            prefix = root + parts[0] + "/"
            area = areas.setdefault(prefix, {"prefix": prefix, "kind": "transaction", "transaction_id": parts[0], "objects": 0, "bytes": 0, "state": None})
        area["objects"] += 1
        area["bytes"] += info.size
    journal = _journal_status(session, pipelines, [a["transaction_id"] for a in areas.values() if a["kind"] == "transaction"])
    for area in areas.values():
        if area["kind"] == "transaction":
            area["state"] = journal.get(area["transaction_id"], "unknown")
    return sorted(areas.values(), key=lambda area: area["prefix"])


def in_flight_areas(log: CommitLog) -> list[dict[str, Any]]:
    """Each store transaction in flight (its marker) with the versions it uploaded so far."""
    areas = []
    for marker in log.markers():
        listed = log.list(marker.versions)
        areas.append(
            {
                "prefix": marker.versions,
                "kind": "transaction",
                "transaction_id": marker.transaction_id,
                "objects": len(listed),
                "bytes": sum(info.size for info in listed),
                "state": "running" if marker.owner_alive() else "awaiting_recovery",
            }
        )
    for root, _ in log.tombstones():
        listed = log.list(root)
        if listed:
            areas.append({"prefix": root, "kind": "transaction", "transaction_id": None, "objects": len(listed),
                          "bytes": sum(info.size for info in listed), "state": "ended"})
    return areas


def transactions(
    session: CheckpointSession,
    pipelines: Iterable[str],
    store: ObjectStore,
    staging_prefix: str,
    include_ended: bool,
    handler: ErrorHandler | None = None,
) -> dict[str, Any]:
    pipelines = list(pipelines)
    status = None if include_ended else CheckpointStatus.IN_PROGRESS
    rows = [_transaction(row) for name in pipelines for row in iter_transactions(session.checkpoint(name), status)]
    rows.sort(key=lambda row: row["updated_at"], reverse=True)
    log = CommitLog(store, handler or ErrorHandler.from_settings(name="object-storage"))
    staging = in_flight_areas(log) + staging_areas(session, pipelines, store, staging_prefix)
    needs_reconcile = any(row["status"] == CheckpointStatus.IN_PROGRESS.value for row in rows) or any(
        area["state"] in ("awaiting_recovery", "ended", "unsealed") for area in staging
    )
    return {
        "bucket": store.bucket,
        "transactions": rows,
        "staging": staging,
        "decisions": decision_history(log),
        "needs_reconcile": needs_reconcile,
    }


def _merge(into: RecoveryReport, report: RecoveryReport) -> None:
    into.rolled_back += report.rolled_back
    into.rolled_forward += report.rolled_forward
    into.cleaned_staging += [t for t in report.cleaned_staging if t not in into.cleaned_staging]
    into.superseded.update(report.superseded)
    into.failed.update(report.failed)


def integration_reconcile() -> Any:
    """The SQLMesh integration's ``reconcile(project_dir, ...)``, or None when it has none."""
    try:
        module = importlib.import_module("sqlmesh_osaa.integration.reconciliation")
    except ImportError:
        return None
    return getattr(module, "reconcile", None)


def _sqlmesh_part(target: Target, environments: list[str] | None, publish: bool, recovered: RecoveryReport) -> dict[str, Any] | None:
    reconcile = integration_reconcile() if target.project_dir is not None else None
    if reconcile is None:
        return None
    try:
        report = reconcile(target.project_dir, environments=environments or None, publish=publish, gateway=target.gateway)
    except Exception as error:
        raise CliError(
            f"Transactions were recovered, but reconciling SQLMesh project {target.project_dir} with its state failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    _merge(recovered, report.transactions)
    return {
        "project": str(target.project_dir),
        "interrupted_closed": list(report.interrupted),
        "discarded": dict(report.discarded),
        "kept": list(report.kept),
        "published": [
            {
                "environment": publication.environment,
                "prefix": publication.prefix,
                "written": list(publication.written),
                "deleted": list(publication.deleted),
                "unchanged": list(publication.unchanged),
            }
            for publication in report.published
        ],
    }


def _pipelines_in_flight(store: ObjectStore, handler: ErrorHandler) -> list[str]:
    """Pipelines whose transactions are in flight in the store: their rows are settled too (a fresh database knows none)."""
    names = {marker.pipeline or DEFAULT_PIPELINE for marker in CommitLog(store, handler).markers()}
    return sorted(names) or [DEFAULT_PIPELINE]


def reconcile(
    session: CheckpointSession,
    target: Target,
    pipelines: Iterable[str],
    store: ObjectStore,
    environments: list[str] | None,
    publish: bool,
) -> dict[str, Any]:
    """Recover every pipeline's transactions, then (in a project) let the integration reconcile with SQLMesh state."""
    recovered = RecoveryReport()
    handler = ErrorHandler.from_settings(target.settings, name="object-storage")
    pipelines = list(dict.fromkeys([*pipelines, *_pipelines_in_flight(store, handler)]))
    for name in pipelines:
        report = recover_transactions(
            session.checkpoint(name), store, error_handler=handler, staging_prefix=target.settings.storage.staging_prefix
        )
        _merge(recovered, report)
    sqlmesh = _sqlmesh_part(target, environments, publish, recovered)
    return {
        "transactions": {
            "rolled_back": recovered.rolled_back,
            "rolled_forward": recovered.rolled_forward,
            "cleaned_staging": recovered.cleaned_staging,
            "superseded": recovered.superseded,
            "failed": recovered.failed,
        },
        "sqlmesh": sqlmesh,
        "ok": not recovered.failed,
    }
