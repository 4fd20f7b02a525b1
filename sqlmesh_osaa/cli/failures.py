"""Reading and forgetting checkpoint items: ``list-failed``, ``clear`` and ``history``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from sqlmesh_osaa.checkpoint import EVENT_COLUMNS, CheckpointScope, CheckpointStatus, PipelineCheckpoint, item_history
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


RECOVERED_SHOWN = 20


def recovered(session: CheckpointSession, pipelines: Iterable[str], scope: str | None) -> list[dict[str, Any]]:
    """Failures a later success superseded (``resolved_by``), most recent first, with their time to recovery (one query)."""
    return item_history.superseded_failures(session.store(), list(pipelines), scope, RECOVERED_SHOWN)


def list_failed(session: CheckpointSession, pipelines: Iterable[str], scope: str | None, limit: int | None) -> dict[str, Any]:
    """Failing items, when each began failing, and recent recoveries: a fixed number of queries whatever the count."""
    pipelines = list(pipelines)
    rows = _recent_first([row for name in pipelines for row in failing_rows(session.checkpoint(name), scope)])
    rows = rows[:limit] if limit else rows
    since = item_history.failing_since(session.store(), pipelines, scope)
    items = []
    for row in rows:
        entry = item(row)
        failed = row["status"] == FAILED
        entry["failing_since"] = since.get((row["pipeline"], row["scope"], row["key"])) if failed else row["started_at"]
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


def _file_spellings(wanted: str) -> list[str]:
    """``wanted`` as a recorded file path may be spelled: as given, and resolved."""
    return list(dict.fromkeys([wanted, str(Path(wanted).expanduser().resolve())]))


def history(session: CheckpointSession, pipelines: Iterable[str], scope: str | None, key: str) -> dict[str, Any]:
    """Every event of the items ``key`` names (see :func:`item_history.matching_items`), oldest first: two queries."""
    store = session.store()
    matched = item_history.matching_items(store, list(pipelines), scope, key, _file_spellings(key))
    found = item_history.events_of(store, matched)
    keys = {item_key for (_, _, item_key), events in found.items() if events}
    events = [{field: event.get(field) for field in EVENT_COLUMNS} for item_events in found.values() for event in item_events]
    events.sort(key=lambda event: (event["at"], event["seq"]))
    return {"key": key, "keys": sorted(keys), "count": len(events), "events": events}
