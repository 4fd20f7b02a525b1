"""Reading and forgetting checkpoint items: ``list-failed``, ``clear`` and ``history``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

from sqlmesh_osaa.checkpoint import EVENT_COLUMNS, CheckpointScope, CheckpointStatus, PipelineCheckpoint
from sqlmesh_osaa.cli.database import CheckpointSession

FAILED = CheckpointStatus.FAILED.value
COMPLETED = CheckpointStatus.COMPLETED.value
IN_PROGRESS = CheckpointStatus.IN_PROGRESS.value
INTERRUPTED = "interrupted"
# Metadata too large for a listing: a transaction's manifest names every object it wrote.
_BULKY_METADATA = ("manifest",)

ITEM_FIELDS = (
    "pipeline",
    "scope",
    "key",
    "status",
    "interrupted",
    "file_path",
    "attempt",
    "error_message",
    "error_category",
    "started_at",
    "updated_at",
    "completed_at",
)


def item(row: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint row as the commands report it."""
    result = {name: row.get(name) for name in ITEM_FIELDS}
    result["metadata"] = {k: v for k, v in (row.get("metadata") or {}).items() if k not in _BULKY_METADATA}
    return result


def _scopes(scope: str | None) -> list[CheckpointScope]:
    return [CheckpointScope(scope)] if scope else list(CheckpointScope)


def _recent_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: (row["updated_at"], row["pipeline"], row["scope"], row["key"]), reverse=True)


def is_failing(row: Mapping[str, Any]) -> bool:
    return row["status"] == FAILED or (row["status"] == IN_PROGRESS and row["interrupted"])


def failing_rows(checkpoint: PipelineCheckpoint, scope: str | None) -> list[dict[str, Any]]:
    """Failed items and items interrupted by a run that ended."""
    failed = checkpoint.list(scope=scope, status=FAILED)
    interrupted = [row for row in checkpoint.list(scope=scope, status=IN_PROGRESS) if row["interrupted"]]
    return failed + interrupted


def failing_since(checkpoint: PipelineCheckpoint, row: Mapping[str, Any]) -> datetime | None:
    """When the current bad spell began: the first failure after the last completion (or the interrupted start)."""
    if row["status"] != FAILED:
        return row["started_at"]
    since = None
    for event in checkpoint.history(row["scope"], row["key"]):
        if event["to_status"] == COMPLETED:
            since = None
        elif event["to_status"] == FAILED and since is None:
            since = event["at"]
    return since


RECOVERED_SHOWN = 20


def _time_to_recovery(checkpoint: PipelineCheckpoint, row: Mapping[str, Any]) -> tuple[datetime | None, float | None]:
    """When the item's last failure spell began, and the seconds until it completed."""
    spell, last = None, (None, None)
    for event in checkpoint.history(row["scope"], row["key"]):
        if event["to_status"] == FAILED and spell is None:
            spell = event["at"]
        elif event["to_status"] == COMPLETED and spell is not None:
            last, spell = (spell, (event["at"] - spell).total_seconds()), None
    return last


def recovered(session: CheckpointSession, pipelines: Iterable[str], scope: str | None) -> list[dict[str, Any]]:
    """Failures a later success superseded (``resolved_by``), most recent first, with their time to recovery."""
    rows = [
        row
        for name in pipelines
        for row in session.checkpoint(name).list(scope=scope, status=COMPLETED)
        if (row.get("metadata") or {}).get("resolved_by")
    ]
    shown = []
    for row in _recent_first(rows)[:RECOVERED_SHOWN]:
        failed_at, seconds = _time_to_recovery(session.checkpoint(row["pipeline"]), row)
        shown.append(
            {
                "pipeline": row["pipeline"],
                "scope": row["scope"],
                "key": row["key"],
                "resolved_by": row["metadata"]["resolved_by"],
                "failed_at": failed_at,
                "recovered_at": row["completed_at"],
                "time_to_recovery_seconds": seconds,
            }
        )
    return shown


def list_failed(session: CheckpointSession, pipelines: Iterable[str], scope: str | None, limit: int | None) -> dict[str, Any]:
    pipelines = list(pipelines)
    rows = _recent_first([row for name in pipelines for row in failing_rows(session.checkpoint(name), scope)])
    rows = rows[:limit] if limit else rows
    items = []
    for row in rows:
        entry = item(row)
        entry["failing_since"] = failing_since(session.checkpoint(row["pipeline"]), row)
        items.append(entry)
    return {"pipelines": pipelines, "count": len(items), "items": items, "recovered": recovered(session, pipelines, scope)}


def _matches(row: Mapping[str, Any], status: str | None) -> bool:
    if status is None:
        return True
    if status == INTERRUPTED:
        return row["status"] == IN_PROGRESS and row["interrupted"]
    return row["status"] == status


def select_rows(
    session: CheckpointSession, pipelines: Iterable[str], scope: str | None, status: str | None, key: str | None
) -> list[dict[str, Any]]:
    """Rows of ``pipelines`` matching scope, status (``interrupted`` included) and key."""
    rows: list[dict[str, Any]] = []
    stored_status = IN_PROGRESS if status == INTERRUPTED else status
    for name in pipelines:
        checkpoint = session.checkpoint(name)
        if key is None:
            found = checkpoint.list(scope=scope, status=stored_status)
        else:
            found = [row for s in _scopes(scope) if (row := checkpoint.get(s, key)) is not None]
        rows.extend(row for row in found if _matches(row, status))
    return _recent_first(rows)


def clear(
    session: CheckpointSession,
    pipelines: Iterable[str],
    scope: str | None,
    status: str | None,
    key: str | None,
    confirm: bool,
) -> dict[str, Any]:
    """List what matches; with ``confirm``, delete exactly those rows (the session holds the file, nothing else writes)."""
    rows = select_rows(session, pipelines, scope, status, key)
    cleared = 0
    if confirm:
        for row in rows:
            cleared += session.checkpoint(row["pipeline"]).clear_checkpoint(row["scope"], row["key"])
    return {"confirmed": confirm, "count": len(rows), "cleared": cleared, "items": [item(row) for row in rows]}


def _model_of(row: Mapping[str, Any]) -> str | None:
    return (row.get("metadata") or {}).get("model")


def _is_file(row: Mapping[str, Any], wanted: str) -> bool:
    recorded = row.get("file_path")
    if not recorded:
        return False
    return recorded == wanted or Path(recorded) == Path(wanted).expanduser().resolve()


def matching_keys(checkpoint: PipelineCheckpoint, scope: str | None, wanted: str) -> list[tuple[str, str]]:
    """(scope, key) of the items ``wanted`` names: a whole key, else a model name, a raw file path or a key prefix."""
    rows = checkpoint.list(scope=scope)
    for rule in (
        lambda row: row["key"] == wanted,
        lambda row: _model_of(row) == wanted,
        lambda row: _is_file(row, wanted),
        lambda row: row["key"].startswith(wanted),
    ):
        found = sorted({(row["scope"], row["key"]) for row in rows if rule(row)})
        if found:
            return found
    return [(s.value, wanted) for s in _scopes(scope)]


def history(session: CheckpointSession, pipelines: Iterable[str], scope: str | None, key: str) -> dict[str, Any]:
    """Every event of the items ``key`` names (see :func:`matching_keys`), oldest first."""
    events = []
    keys: set[str] = set()
    for name in pipelines:
        checkpoint = session.checkpoint(name)
        for item_scope, item_key in matching_keys(checkpoint, scope, key):
            found = checkpoint.history(item_scope, item_key)
            if found:
                keys.add(item_key)
            events.extend({field: event.get(field) for field in EVENT_COLUMNS} for event in found)
    events.sort(key=lambda event: (event["at"], event["seq"]))
    return {"key": key, "keys": sorted(keys), "count": len(events), "events": events}
