"""``verify``: do completed FILE items still match their source file and their object?

For each completed FILE item three things are compared: the source file's MD5 now, the MD5
its checkpoint recorded, and the object in storage (size and content MD5 from its metadata or
ETag) against what the committed transaction that wrote it recorded in its manifest (its log
entry, which its checkpoint row names). The
recorded source checksum is of the raw file, the object is its converted parquet, so the
object is checked against the transaction's manifest, never against the raw checksum.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus, PipelineCheckpoint
from sqlmesh_osaa.cli.database import CheckpointSession
from sqlmesh_osaa.commit_log import CommitLog
from sqlmesh_osaa.commit_protocol import row_puts
from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.storage import ObjectStore, file_md5
from sqlmesh_osaa.transaction_manager import JOURNAL_PREFIX, iter_transactions

# Findings that make verify exit 1; the others are reported for information.
PROBLEMS = ("source_changed", "object_missing", "object_mismatch", "object_unreadable")
NOTICES = ("source_missing", "object_unrecorded")


def _expected_objects(checkpoint: PipelineCheckpoint, log: CommitLog, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Key -> size, MD5 and transaction of its newest committed write, for the ``wanted`` keys.

    Each committed transaction's puts come from its row (:func:`row_puts`: the decision's log
    entry, one GET each, cached); the newest rows are read first and the reading stops once
    every wanted key is found.
    """
    expected: dict[str, dict[str, Any]] = {}
    for row in iter_transactions(checkpoint, CheckpointStatus.COMPLETED):
        if wanted <= expected.keys():
            break
        for put in row_puts(row.get("metadata") or {}, log):
            if put["key"] in wanted and put["key"] not in expected:
                expected[put["key"]] = {
                    "size": put.get("size"),
                    "md5": put.get("md5") or None,
                    "transaction_id": row["key"][len(JOURNAL_PREFIX) :],
                }
    return expected


def _source_findings(row: Mapping[str, Any], result: dict[str, Any]) -> list[str]:
    path = row["file_path"]
    if path is None:
        return []
    if not os.path.isfile(path):
        return ["source_missing"]
    result["local_checksum"] = file_md5(path)
    recorded = row["checksum"]
    return ["source_changed"] if recorded is not None and result["local_checksum"] != recorded else []


def _object_findings(
    store: ObjectStore, handler: ErrorHandler, key: str, expected: Mapping[str, Any] | None, result: dict[str, Any]
) -> list[str]:
    try:
        info = handler.execute(store.head, key, operation="HeadObject")
    except Exception as error:
        result["object_error"] = str(error)
        return ["object_unreadable"]
    if info is None:
        return ["object_missing"]
    result["object"] = {"exists": True, "size": info.size, "md5": info.md5}
    if expected is None:
        return ["object_unrecorded"]
    if expected["size"] is not None and info.size != expected["size"]:
        return ["object_mismatch"]
    if expected["md5"] and info.md5 and info.md5 != expected["md5"]:
        return ["object_mismatch"]
    return []


def verify_item(
    row: Mapping[str, Any], store: ObjectStore, handler: ErrorHandler, expected: Mapping[str, Any] | None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "pipeline": row["pipeline"],
        "key": row["key"],
        "file_path": row["file_path"],
        "recorded_checksum": row["checksum"],
        "local_checksum": None,
        "object": {"exists": False, "size": None, "md5": None},
        "expected": dict(expected) if expected else {"size": None, "md5": None, "transaction_id": None},
        "object_error": None,
    }
    findings = _source_findings(row, result) + _object_findings(store, handler, row["key"], expected, result)
    result["findings"] = findings
    result["ok"] = not any(finding in PROBLEMS for finding in findings)
    return result


def verify(
    session: CheckpointSession, pipelines: Iterable[str], store: ObjectStore, handler: ErrorHandler, limit: int | None
) -> dict[str, Any]:
    rows = [
        row
        for name in pipelines
        for row in session.checkpoint(name).list(scope=CheckpointScope.FILE, status=CheckpointStatus.COMPLETED, limit=limit)
    ]
    rows.sort(key=lambda row: row["updated_at"], reverse=True)
    rows = rows[:limit] if limit else rows
    log = CommitLog(store, handler)
    expected = {
        name: _expected_objects(session.checkpoint(name), log, {row["key"] for row in rows if row["pipeline"] == name})
        for name in {row["pipeline"] for row in rows}
    }
    items = [verify_item(row, store, handler, expected[row["pipeline"]].get(row["key"])) for row in rows]
    problems = sum(1 for entry in items if not entry["ok"])
    return {"bucket": store.bucket, "checked": len(items), "problems": problems, "items": items}
