"""What the recovery commands ask of many items' histories, each answered by one set-based query.

Walking one item's events per listed item scans the event log once per item: a store of
100k items and 200k events made ``list-failed`` take seconds. Here every question is one
query, in SQL both backends run. Failure spells are the episodes the writes keep
(:mod:`sqlmesh_osaa.checkpoint.episodes`, one row each), so those questions read neither the
log nor anything that grows with an item's history; the others join the log to the rows they
concern (a hash join: one pass over the log whatever the number of items):

- :func:`failing_since`: when each failed item's current failure spell began (its open
  episode: its first failure since its last completion or clear);
- :func:`recovery_spells`: spells that ended in a completion (failure -> completion), the
  longest first; :func:`superseded_failures`: items a later success superseded, with their
  last such spell (the rows are asked first: when none was superseded nothing else is read);
- :func:`events_of`: every event of a set of items, oldest first;
- :func:`matching_items`: the items a ``--key`` names (whole key, model name, file path or
  key prefix), the first rule that matches winning per pipeline;
- :func:`newest_completion` and :func:`failed_at_least`: the few columns ``stats`` shows of
  rows, read narrowly (a top-1 sort over 100k full rows cost DuckDB 30-45 ms, a max 2 ms).

Timestamps come back as aware UTC datetimes, as :class:`PipelineCheckpoint` returns them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlmesh_osaa.checkpoint import episodes
from sqlmesh_osaa.checkpoint.states import COMPLETED, EVENT_COLUMNS, FAILED, TRANSITION, CheckpointScope
from sqlmesh_osaa.checkpoint.store import CheckpointStore

Item = tuple[str, str, str]  # (pipeline, scope, key)
_ITEM = ("pipeline", "scope", "key")
# Items named in one query of events_of (a key prefix may name thousands).
_ITEMS_PER_QUERY = 1000
# Up to this many distinct keys, events_of also filters the log by key (see there).
_KEYS_FILTERED = 8


def aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def _in_pipelines(pipelines: Sequence[str], alias: str = "") -> str:
    return f"{alias}pipeline IN ({_marks(pipelines)})"


def failing_since(store: CheckpointStore, pipelines: Sequence[str], scope: str | None = None) -> dict[Item, datetime | None]:
    """Per failed item of ``pipelines``: when its open episode began (its first failure since its last completion or clear)."""
    if not pipelines:
        return {}
    scope_filter, params = ("AND c.scope = ?", [scope]) if scope else ("", [])
    sql = f"""
        SELECT c.pipeline, c.scope, c.key, e.failed_at FROM checkpoints c
        JOIN {episodes.TABLE} e ON e.pipeline = c.pipeline AND e.scope = c.scope AND e.key = c.key AND e.ended_at IS NULL
        WHERE {_in_pipelines(pipelines, "c.")} AND c.status = '{FAILED}' {scope_filter}
    """
    return {(p, s, k): aware(at) for p, s, k, at in store.read(sql, [*pipelines, *params])}


def _spells(items: str) -> str:
    """CTEs ``items`` and ``recovered`` (failed_at, recovered_at, seconds per recovered episode) of the items ``items`` selects."""
    return f"""
        WITH items AS ({items}), recovered AS (
            SELECT e.pipeline, e.scope, e.key, e.failed_at, e.ended_at AS recovered_at,
                   {episodes.RECOVERY_SECONDS} AS seconds
            FROM {episodes.TABLE} e JOIN items i ON i.pipeline = e.pipeline AND i.scope = e.scope AND i.key = e.key
            WHERE e.recovered
        )"""


def _resolved(store: CheckpointStore, column: str) -> str:
    """The condition "a later success superseded this item": its metadata holds ``resolved_by``.

    The text test comes first: it is cheap and passes only the few documents that can hold the
    field (the package writes metadata with ``json.dumps``, so the name appears as written), and
    only those reach the JSON extraction, which on 100k completed rows took most of the query.
    """
    return f"(strpos({column}, '\"resolved_by\"') > 0 AND {store.metadata_field(column, 'resolved_by')} IS NOT NULL)"


def _completed_items(pipelines: Sequence[str], scope: str | None, extra: str = "") -> tuple[str, list[Any]]:
    condition = f"{_in_pipelines(pipelines, 'c.')} AND c.status = '{COMPLETED}'"
    params: list[Any] = list(pipelines)
    if scope:
        condition += " AND c.scope = ?"
        params.append(scope)
    return condition + (f" AND ({extra})" if extra else ""), params


def recovery_spells(store: CheckpointStore, pipelines: Sequence[str], *, retried_or_resolved: bool, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` longest failure spells (first failure -> next completion) of completed items.

    With ``retried_or_resolved``, only of items run more than once or superseded by a later
    success (``resolved_by``).
    """
    if not pipelines:
        return []
    extra = f"c.attempt >= 2 OR {_resolved(store, 'c.metadata')}" if retried_or_resolved else ""
    condition, params = _completed_items(pipelines, None, extra)
    sql = _spells(f"SELECT c.pipeline, c.scope, c.key FROM checkpoints c WHERE {condition}") + """
        SELECT pipeline, scope, key, failed_at, recovered_at, seconds FROM recovered
        ORDER BY seconds DESC, pipeline, scope, key LIMIT ?"""
    columns = (*_ITEM, "failed_at", "recovered_at", "seconds")
    spells = [dict(zip(columns, values)) for values in store.read(sql, [*params, int(limit)])]
    for spell in spells:
        spell["failed_at"], spell["recovered_at"] = aware(spell["failed_at"]), aware(spell["recovered_at"])
    return spells


def superseded_failures(store: CheckpointStore, pipelines: Sequence[str], scope: str | None, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` items a later success superseded (``resolved_by``), most recently updated first.

    Each with when its last recovered spell began (``failed_at``, None when its episode was
    pruned) and its seconds to recovery.
    """
    if not pipelines:
        return []
    condition, params = _completed_items(pipelines, scope, _resolved(store, "c.metadata"))
    # Usually no item was superseded: a look at the rows alone then spares the scan of the log.
    if not store.read(f"SELECT 1 FROM checkpoints c WHERE {condition} LIMIT 1", params):
        return []
    resolved = store.metadata_field("c.metadata", "resolved_by")
    items = f"""SELECT c.pipeline, c.scope, c.key, c.updated_at, c.completed_at, {resolved} AS resolved_by
                FROM checkpoints c WHERE {condition} ORDER BY c.updated_at DESC, c.pipeline, c.scope, c.key LIMIT ?"""
    sql = _spells(items) + """, last_spell AS (
            SELECT pipeline, scope, key, failed_at, seconds,
                   row_number() OVER (PARTITION BY pipeline, scope, key ORDER BY recovered_at DESC) AS newest
            FROM recovered
        )
        SELECT i.pipeline, i.scope, i.key, i.resolved_by, l.failed_at, i.completed_at, l.seconds
        FROM items i LEFT JOIN last_spell l ON l.pipeline = i.pipeline AND l.scope = i.scope AND l.key = i.key AND l.newest = 1
        ORDER BY i.updated_at DESC, i.pipeline, i.scope, i.key"""
    columns = (*_ITEM, "resolved_by", "failed_at", "recovered_at", "time_to_recovery_seconds")
    found = [dict(zip(columns, values)) for values in store.read(sql, [*params, int(limit)])]
    for entry in found:
        entry["failed_at"], entry["recovered_at"] = aware(entry["failed_at"]), aware(entry["recovered_at"])
    return found


def events_of(store: CheckpointStore, items: Iterable[Item]) -> dict[Item, list[dict[str, Any]]]:
    """Every transition of each item, oldest first, in one query."""
    wanted = sorted(set(items))
    found: dict[Item, list[dict[str, Any]]] = {item: [] for item in wanted}
    columns = ", ".join(f'e."{c}"' for c in EVENT_COLUMNS)
    for start in range(0, len(wanted), _ITEMS_PER_QUERY):
        chunk = wanted[start : start + _ITEMS_PER_QUERY]
        keys = sorted({key for _, _, key in chunk})
        # A few keys (one key's items, the usual history --key) also filter the scan itself:
        # DuckDB compares them as the log is read instead of probing a hash table with every event.
        by_key = f"AND e.key IN ({_marks(keys)})" if len(keys) <= _KEYS_FILTERED else ""
        sql = f"""
            SELECT {columns} FROM checkpoint_events e
            JOIN (VALUES {", ".join("(?, ?, ?)" for _ in chunk)}) AS w(pipeline, scope, key)
              ON w.pipeline = e.pipeline AND w.scope = e.scope AND w.key = e.key
            WHERE e.kind = '{TRANSITION}' {by_key} ORDER BY e.seq
        """
        params = [part for item in chunk for part in item] + (keys if by_key else [])
        for values in store.read(sql, params):
            event = dict(zip(EVENT_COLUMNS, values))
            event["at"] = aware(event["at"])
            found[(event["pipeline"], event["scope"], event["key"])].append(event)
    return found


def matching_items(
    store: CheckpointStore, pipelines: Sequence[str], scope: str | None, wanted: str, file_paths: Sequence[str]
) -> list[Item]:
    """Items ``wanted`` names in each pipeline: a whole key, else a model name, a file path, a key prefix.

    The first rule that matches any row of a pipeline wins there; a pipeline with no match
    names ``wanted`` as a key (the events of an item cleared since). ``file_paths`` are the
    spellings of ``wanted`` as a path (as given, and resolved). A whole key, the usual case,
    is found by one equality first; only pipelines where it names no row are searched by the
    other rules (which read the metadata and paths of every row).
    """
    if not pipelines:
        return []
    scope_filter, scope_params = ("AND scope = ?", [scope]) if scope else ("", [])
    exact_sql = f"SELECT pipeline, scope, key FROM checkpoints WHERE {_in_pipelines(pipelines)} {scope_filter} AND key = ?"
    found = [tuple(values) for values in store.read(exact_sql, [*pipelines, *scope_params, wanted])]
    exact = {pipeline for pipeline, _, _ in found}
    others = [pipeline for pipeline in pipelines if pipeline not in exact]
    if others:
        found += _matching_by_other_rules(store, others, scope, wanted, file_paths)
    found.sort()
    matched = {pipeline for pipeline, _, _ in found}
    scopes = [scope] if scope else [member.value for member in CheckpointScope]
    found.extend((pipeline, s, wanted) for pipeline in pipelines if pipeline not in matched for s in scopes)
    return found


def _matching_by_other_rules(
    store: CheckpointStore, pipelines: Sequence[str], scope: str | None, wanted: str, file_paths: Sequence[str]
) -> list[Item]:
    """:func:`matching_items`' rules in one query, the first that matches winning per pipeline."""
    model = store.metadata_field("metadata", "model")
    rule = f"""CASE WHEN key = ? THEN 1 WHEN {model} = ? THEN 2 WHEN file_path IN ({_marks(file_paths)}) THEN 3
                    WHEN starts_with(key, ?) THEN 4 END"""
    scope_filter, scope_params = ("AND scope = ?", [scope]) if scope else ("", [])
    # Cheap conditions first: only rows that can match reach the JSON extraction.
    candidate = f"(key = ? OR starts_with(key, ?) OR file_path IN ({_marks(file_paths)}) OR strpos(metadata, ?) > 0)"
    sql = f"""
        WITH candidates AS (
            SELECT pipeline, scope, key, {rule} AS rule FROM checkpoints
            WHERE {_in_pipelines(pipelines)} {scope_filter} AND {candidate}
        ), ranked AS (
            SELECT pipeline, scope, key, rule, min(rule) OVER (PARTITION BY pipeline) AS best FROM candidates
        )
        SELECT pipeline, scope, key FROM ranked WHERE rule = best
    """
    params = [
        *(wanted, wanted, *file_paths, wanted),
        *pipelines,
        *scope_params,
        *(wanted, wanted, *file_paths, json.dumps(wanted)),
    ]
    return [tuple(values) for values in store.read(sql, params)]


def newest_completion(store: CheckpointStore, pipeline: str) -> datetime | None:
    """``completed_at`` of the pipeline's most recently updated completed row (ties: the first by scope, key)."""
    completed = f"pipeline = ? AND status = '{COMPLETED}'"
    sql = f"""SELECT completed_at FROM checkpoints WHERE {completed}
              AND updated_at = (SELECT max(updated_at) FROM checkpoints WHERE {completed})
              ORDER BY scope, key LIMIT 1"""
    found = store.read(sql, [pipeline, pipeline])
    return aware(found[0][0]) if found else None


def failed_at_least(store: CheckpointStore, pipeline: str, attempts: int) -> list[dict[str, Any]]:
    """Failed rows after ``attempts`` or more attempts, most recently updated first: what identifies and explains each."""
    columns = ("scope", "key", "file_path", "attempt", "error_message")
    sql = f"""SELECT {", ".join(columns)} FROM checkpoints WHERE pipeline = ? AND status = '{FAILED}' AND attempt >= ?
              ORDER BY updated_at DESC, scope, key"""
    return [dict(zip(columns, values)) for values in store.read(sql, [pipeline, int(attempts)])]
