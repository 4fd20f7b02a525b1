"""PipelineCheckpoint: the seed's checkpoint API over any checkpoint store.

Every unit of work (pipeline run, model evaluation, file, operation) is an *item* with a
state. Each change of state is an event appended to the log and folded, in the same
transaction, into the item's row (:mod:`.transitions`). Transitions follow a state machine
(pending -> in_progress -> completed | failed; failed -> in_progress to retry; completed ->
in_progress only when the input changed or when forced) so a bug in a caller surfaces as a
:class:`CheckpointError` instead of a silently wrong record.

Each instance is one *run* holding a lease on its store: an ``in_progress`` row is
*interrupted* only when its run's lease is gone (DuckDB: the file lock of a process that
closed or died; PostgreSQL: the run's advisory lock).

An instance belongs to the process that opened it: used in a forked child it raises a
:class:`CheckpointError` at once, so a child never writes through its parent's connection.

Metadata is stored exactly as callers give it: never pass secrets in it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlmesh_osaa.checkpoint import tallies
from sqlmesh_osaa.checkpoint.files import file_matches, fingerprints, fingerprints_meanwhile
from sqlmesh_osaa.checkpoint.states import (
    COMPLETED,
    EVENT_COLUMNS,
    EVENT_TIMESTAMPS,
    FAILED,
    IN_PROGRESS,
    METADATA,
    PENDING,
    ROW_TIMESTAMPS,
    CheckpointScope,
    CheckpointStatus,
    Fingerprint,
)
from sqlmesh_osaa.checkpoint.statistics import statistics
from sqlmesh_osaa.checkpoint.store import CheckpointStore, Keys, RowFilter, refuse_if_forked
from sqlmesh_osaa.checkpoint.transitions import (
    ALWAYS_LEGAL_FROM,
    Change,
    Event,
    Row,
    RunIdentity,
    advance,
    completion_reads,
    concatenated,
    fold,
    refusal,
    row_after,
)
from sqlmesh_osaa.exceptions import CheckpointError, ErrorCategory
from sqlmesh_osaa.redaction import redact
from sqlmesh_osaa.settings import get_settings

logger = logging.getLogger(__name__)

StartItem = str | tuple[str, str | Path | None]
CompletionItem = (
    str
    | tuple[str]
    | tuple[str, str | Path | None]
    | tuple[str, str | Path | None, str | Fingerprint | None]
)

_FINGERPRINT_COLUMNS = ("key", "file_size", "file_mtime_ns", "metadata")
_MAX_LISTED_REFUSALS = 5
# Times a row read is repeated while its run's lease ends under it (_settle_interrupted).
_SETTLE_ROUNDS = 3
_HOST = os.uname().nodename  # socket.gethostname()'s value, without importing socket


def _utcnow() -> datetime:
    # Stored naive (TIMESTAMP) in UTC; returned to callers as aware UTC datetimes.
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _stored_time(value: datetime) -> datetime:
    """A caller's time as the stores keep it: naive UTC (an aware time is converted, a naive one is taken as UTC)."""
    return value if value.tzinfo is None else value.astimezone(timezone.utc).replace(tzinfo=None)


def _category_value(category: ErrorCategory | str | None) -> str | None:
    return None if category is None else ErrorCategory(category).value


def _records(row: Row, metadata: Mapping[str, str] | None) -> bool:
    """Whether ``row``'s metadata holds each of ``metadata``'s values (always, without a filter)."""
    if not metadata:
        return True
    recorded = json.loads(row["metadata"]) if isinstance(row["metadata"], str) else (row["metadata"] or {})
    return all(str(recorded.get(name)) == str(value) for name, value in metadata.items())


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)


def _completion_item(item: CompletionItem) -> tuple[str, str | None, str | Fingerprint | None]:
    if type(item) is tuple and len(item) == 3 and type(item[0]) is str and type(item[1]) is str:
        # The common shape, (key, path, checksum), taken as it is.
        return item  # type: ignore[return-value]
    if isinstance(item, str):
        return item, None, None
    key, file_path, known = (*item, None, None)[:3]
    return str(key), None if file_path is None else str(file_path), known


@dataclass(frozen=True)
class ItemChange:
    """One transition of an item without a file, for :meth:`PipelineCheckpoint.record_changes`.

    ``at`` is when it happened (default: when the change was made), so a change written
    later, in a batch, keeps its own time.
    """

    key: str
    to_status: CheckpointStatus | str
    metadata: Mapping[str, Any] | None = None
    error_message: str | None = None
    category: ErrorCategory | str | None = None
    force: bool = False
    at: datetime = field(default_factory=_utcnow)


def open_store(db_path: str | Path | None = None, *, lock_timeout: float | None = None, dsn: str | None = None) -> CheckpointStore:
    """The store the settings name (``checkpoint.backend``), or PostgreSQL at ``dsn`` when given.

    ``db_path`` is the DuckDB file (default ``checkpoint.db_path``); with the postgres
    backend it is not used.
    """
    settings = get_settings().checkpoint
    lock_timeout = settings.lock_timeout_seconds if lock_timeout is None else lock_timeout
    if dsn is None and settings.backend == "postgres":
        dsn = settings.dsn
    if dsn is not None:
        from sqlmesh_osaa.checkpoint.postgres_store import PostgresStore

        return PostgresStore(dsn, connect_timeout=lock_timeout, synchronous_commit=settings.synchronous_commit)
    from sqlmesh_osaa.checkpoint.duckdb_store import DuckDBStore

    return DuckDBStore(settings.db_path if db_path is None else db_path, lock_timeout)


def _end_run(store: CheckpointStore, run_id: str, owner_pid: int) -> None:
    """End a run: its lease goes, its in_progress rows become interrupted, the store is released."""
    if os.getpid() != owner_pid:
        # A forked child's copy: the parent still owns the run and its connection.
        return
    store.close_run(run_id)
    store.close()


class PipelineCheckpoint:
    """The checkpoints of one pipeline, safe to share between threads of the process that opened it.

    The store is the one ``checkpoint.backend`` of the settings names: a DuckDB file
    (``db_path``, default ``checkpoint.db_path``; missing parent directories are created) or
    PostgreSQL (``dsn``, default ``checkpoint.dsn``). ``lock_timeout`` defaults to
    ``checkpoint.lock_timeout_seconds``. Each instance is one run (``run_id``); close it (or
    use it as a context manager) to end the run and release the store.
    """

    def __init__(
        self,
        pipeline_name: str,
        db_path: str | Path | None = None,
        *,
        lock_timeout: float | None = None,
        dsn: str | None = None,
    ) -> None:
        if not pipeline_name or "\x1f" in pipeline_name:
            raise ValueError(f"pipeline_name must be non-empty and without '\\x1f': {pipeline_name!r}")
        self.pipeline_name = pipeline_name
        self.store = open_store(db_path, lock_timeout=lock_timeout, dsn=dsn)
        self.db_path: Path | None = getattr(self.store, "db_path", None)
        self.lock_timeout = getattr(self.store, "lock_timeout", None) or getattr(self.store, "connect_timeout", None)
        self.location = self.store.location
        self.run_id = uuid.uuid4().hex
        self._pid = os.getpid()
        self._run = RunIdentity(self.run_id, self._pid, _HOST)
        try:
            self.store.open_run(self._run)
        except BaseException:
            self.store.close()
            raise
        self._finalizer = weakref.finalize(self, _end_run, self.store, self.run_id, self._pid)
        logger.info("Checkpoints of pipeline %r in %s (run %s)", pipeline_name, self.location, self.run_id)

    def __enter__(self) -> PipelineCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PipelineCheckpoint({self.pipeline_name!r}, {self.location!r}, run_id={self.run_id!r})"

    def close(self) -> None:
        """End this run and release the store; its in_progress items become interrupted."""
        self._finalizer()

    def returning_memory(self) -> AbstractContextManager[None]:
        """A block of bulk writes whose freed memory the store gives back at once (:meth:`CheckpointStore.returning_memory`)."""
        return self._require_open().returning_memory()

    # -- single items -------------------------------------------------------------------

    def is_completed(
        self,
        scope: CheckpointScope | str,
        key: str,
        file_path: str | Path | None = None,
        verify_checksum: bool = False,
    ) -> bool:
        """Whether the item is completed and, when ``file_path`` is given, that file is unchanged."""
        row = self.get(scope, key)
        if row is None or row["status"] != COMPLETED:
            return False
        return file_path is None or file_matches(row, file_path, verify_checksum)

    def file_unchanged(
        self,
        scope: CheckpointScope | str,
        key: str,
        file_path: str | Path,
        verify_checksum: bool = False,
    ) -> bool:
        """Whether ``file_path`` holds what the item's last completion fingerprinted.

        Equal size and mtime_ns mean unchanged without reading the file; otherwise, or
        with ``verify_checksum``, the MD5 decides. A missing file or record is changed.
        """
        row = self.get(scope, key)
        return row is not None and file_matches(row, file_path, verify_checksum)

    def mark_started(
        self,
        scope: CheckpointScope | str,
        key: str,
        file_path: str | Path | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> None:
        """Move the item to in_progress for this run (first attempt, retry or resume).

        A completed item restarts only when ``file_path`` changed since its completion, or
        with ``force=True``; ``force`` also takes over an item another live run holds.
        """
        path = None if file_path is None else str(file_path)
        self._transition(scope, [key], IN_PROGRESS, [path], metadata=metadata, force=force)

    def mark_completed(
        self,
        scope: CheckpointScope | str,
        key: str,
        file_path: str | Path | None = None,
        metadata: Mapping[str, Any] | None = None,
        checksum: str | None = None,
        *,
        fingerprint: Fingerprint | None = None,
    ) -> None:
        """Complete an in_progress item, recording size, mtime_ns and MD5 of its file.

        The file is ``file_path`` or, when omitted, the one recorded at start; ``checksum``
        (hex MD5) spares reading it when the caller already knows it, and ``fingerprint``
        (taken when the caller read the file) spares the stat too.
        """
        path = None if file_path is None else str(file_path)
        self._transition(scope, [key], COMPLETED, [path], [fingerprint or checksum], metadata=metadata)
        self._after_mark(scope)

    def mark_failed(
        self,
        scope: CheckpointScope | str,
        key: str,
        error_message: str,
        file_path: str | Path | None = None,
        metadata: Mapping[str, Any] | None = None,
        category: ErrorCategory | str | None = None,
    ) -> None:
        """Fail an in_progress item; pass ``category=categorize_error(exc)`` when you hold the exception."""
        path = None if file_path is None else str(file_path)
        self._transition(
            scope,
            [key],
            FAILED,
            [path],
            metadata=metadata,
            # Any exception's text may carry a credential: none is stored.
            error=(redact(error_message), _category_value(category)),
        )
        self._after_mark(scope)

    @staticmethod
    def _after_mark(scope: CheckpointScope | str) -> None:
        """A PIPELINE item ended: an ephemeral runner pushes its checkpoint file now."""
        if CheckpointScope(scope) is CheckpointScope.PIPELINE:
            from sqlmesh_osaa.checkpoint import sync

            sync.pipeline_checkpoint_recorded()

    def update_metadata(self, scope: CheckpointScope | str, key: str, metadata: Mapping[str, Any]) -> None:
        """Merge ``metadata`` into an existing item's row, durably, without changing its state."""
        scope = CheckpointScope(scope)

        def plan(rows: dict[str, Row]) -> list[Event]:
            if key not in rows:
                raise CheckpointError(
                    "Cannot update the metadata of an item that has no checkpoint; mark_started it first",
                    category=ErrorCategory.PERMANENT,
                    pipeline=self.pipeline_name,
                    scope=scope.value,
                    key=key,
                )
            change = Change(rows[key]["status"], _utcnow(), self._run, kind=METADATA, metadata=metadata)
            return [advance(self.pipeline_name, scope.value, key, rows[key], change)]

        self._require_open().apply(self.pipeline_name, Keys(scope.value, [key]), plan)

    def get(self, scope: CheckpointScope | str, key: str) -> dict[str, Any] | None:
        """The item's current row, or None while it is pending."""
        rows = self._require_open().read_rows(self.pipeline_name, CheckpointScope(scope).value, [key])
        return self._public_rows(list(rows.values()))[0] if rows else None

    def get_checksum(self, scope: CheckpointScope | str, key: str) -> str | None:
        """The MD5 recorded by the item's last completion."""
        row = self.get(scope, key)
        return None if row is None else row["checksum"]

    def history(self, scope: CheckpointScope | str, key: str) -> list[dict[str, Any]]:
        """Every transition of the item, oldest first."""
        events = self._require_open().scan_events(self.pipeline_name, CheckpointScope(scope).value, key)
        return [self._public_event(event) for event in events]

    def count_failures(self, error_prefix: str) -> int:
        """How many failures of this pipeline's event log had an error starting with ``error_prefix``.

        Monitoring counts failures by cause this way (calls refused by an open circuit); the
        count is summed from the tallies the writes keep, not from the log.
        """
        (count,) = self._require_open().read(tallies.FAILURES_WITH_PREFIX_SQL, [self.pipeline_name, error_prefix, error_prefix])[0]
        return int(count)

    def clear_checkpoint(
        self, scope: CheckpointScope | str, key: str, file_path: str | Path | None = None
    ) -> int:
        """Forget the item (it becomes pending); with ``file_path``, only if that is its recorded file."""
        scope = CheckpointScope(scope)
        wanted = None if file_path is None else str(file_path)
        return self._clear(Keys(scope.value, [key]), wanted)

    def clear_all_checkpoints(
        self, scope: CheckpointScope | str | None = None, status: CheckpointStatus | str | None = None
    ) -> int:
        """Forget every item of this pipeline, or those of one scope and/or status."""
        scopes = list(CheckpointScope) if scope is None else [CheckpointScope(scope)]
        status_value = None if status is None else CheckpointStatus(status).value
        return sum(self._clear(RowFilter(scope=s.value, status=status_value), None) for s in scopes)

    # -- listing and statistics ---------------------------------------------------------

    def list(
        self,
        scope: CheckpointScope | str | None = None,
        status: CheckpointStatus | str | None = None,
        limit: int | None = None,
        *,
        key_prefix: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of this pipeline (whose key starts with ``key_prefix``, when given), most recently updated first."""
        where = RowFilter(
            scope=None if scope is None else CheckpointScope(scope).value,
            status=None if status is None else CheckpointStatus(status).value,
            key_prefix=key_prefix,
        )
        return self._public_rows(self._require_open().select_rows(self.pipeline_name, where, "newest", limit))

    def get_pending(self, scope: CheckpointScope | str | None = None) -> list[dict[str, Any]]:
        """Items that are not completed (failed, in_progress live or interrupted), oldest first."""
        where = RowFilter(scope=None if scope is None else CheckpointScope(scope).value, exclude_status=COMPLETED)
        return self._public_rows(self._require_open().select_rows(self.pipeline_name, where, "oldest"))

    def get_statistics(self) -> dict[str, Any]:
        """Counts by status and scope, failure rate, retries, time to recovery and top errors."""
        return statistics(self._require_open(), self.pipeline_name)

    def prune(self, older_than: timedelta) -> int:
        """Delete completed rows, and events, older than ``older_than``; returns the rows deleted.

        Events of items that are not completed are kept whatever their age: they hold the
        first failure that time to recovery is measured from.
        """
        rows, events = self._require_open().prune(self.pipeline_name, _utcnow() - older_than)
        logger.info("Pruned %d checkpoints and %d events older than %s", rows, events, older_than)
        return rows

    # -- batches ------------------------------------------------------------------------

    def completed_keys(
        self, scope: CheckpointScope | str, keys: Iterable[str], *, metadata: Mapping[str, str] | None = None
    ) -> set[str]:
        """The subset of ``keys`` whose items are completed (recording ``metadata``'s values), in one query."""
        rows = self._require_open().read_rows(self.pipeline_name, CheckpointScope(scope).value, list(keys))
        return {key for key, row in rows.items() if row["status"] == COMPLETED and _records(row, metadata)}

    def statuses(
        self, scope: CheckpointScope | str, keys: Iterable[str], *, metadata: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The status of each of ``keys`` that has a row, in one query; a completed row that did not
        record ``metadata``'s values is left out (it describes another store's object)."""
        return {key: status for key, (status, _) in self.recorded_fingerprints(scope, keys, metadata=metadata).items()}

    def recorded_fingerprints(
        self, scope: CheckpointScope | str, keys: Iterable[str], *, metadata: Mapping[str, str] | None = None
    ) -> dict[str, tuple[str, Fingerprint]]:
        """Status and recorded fingerprint of each of ``keys`` that has a row, in one query; a
        completed row that did not record ``metadata``'s values is left out (another store's object)."""
        rows = self._require_open().read_rows(self.pipeline_name, CheckpointScope(scope).value, list(keys))
        return {
            key: (row["status"], Fingerprint(row["checksum"], row["file_size"], row["file_mtime_ns"]))
            for key, row in rows.items()
            if row["status"] != COMPLETED or _records(row, metadata)
        }

    def completed_fingerprints(
        self, scope: CheckpointScope | str, key_prefix: str = "", *, metadata: Mapping[str, str] | None = None
    ) -> dict[str, tuple[int | None, int | None]]:
        """``(file_size, file_mtime_ns)`` recorded for each completed item whose key starts with ``key_prefix``.

        One scan serves a whole run's fast unchanged test: a caller that has stat'ed its
        files compares these and asks :meth:`unchanged_keys` only about the files that differ.
        With ``metadata``, only completions that recorded those values count.
        """
        where = RowFilter(scope=CheckpointScope(scope).value, status=COMPLETED, key_prefix=key_prefix)
        rows = self._require_open().select_rows(self.pipeline_name, where, columns=_FINGERPRINT_COLUMNS)
        # Items of one pipeline and store share a few metadata documents: each is parsed once.
        matches: dict[Any, bool] = {}
        fingerprints = {}
        for row in rows:
            recorded = row["metadata"]
            hashable = recorded if isinstance(recorded, str) else json.dumps(recorded, sort_keys=True)
            if hashable not in matches:
                matches[hashable] = _records(row, metadata)
            if matches[hashable]:
                fingerprints[row["key"]] = (row["file_size"], row["file_mtime_ns"])
        return fingerprints

    def unchanged_keys(
        self,
        scope: CheckpointScope | str,
        items: Iterable[tuple[str, str | Path] | tuple[str, str | Path, int, int]],
        verify_checksum: bool = False,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> set[str]:
        """Batch :meth:`is_completed` with files: keys of items completed and unchanged.

        Items are ``(key, file_path)``, or ``(key, file_path, size, mtime_ns)`` when the
        caller has already stat'ed the file (a directory walk has): then no file is touched
        unless its size or mtime changed or ``verify_checksum`` asks for the MD5. With
        ``metadata``, only completions that recorded those values count.
        """
        files = {item[0]: item for item in items}
        rows = self._require_open().read_rows(self.pipeline_name, CheckpointScope(scope).value, list(files))
        unchanged = set()
        for key, row in rows.items():
            if row["status"] != COMPLETED or not _records(row, metadata):
                continue
            item = files[key]
            known = item[2:] or None
            if not verify_checksum and known == (row["file_size"], row["file_mtime_ns"]):
                unchanged.add(key)
            elif file_matches(row, item[1], verify_checksum, known):
                unchanged.add(key)
        return unchanged

    def mark_started_many(
        self,
        scope: CheckpointScope | str,
        items: Iterable[StartItem],
        *,
        force: bool = False,
    ) -> None:
        """:meth:`mark_started` for many items in one transaction: all are started, or none.

        Each item is a key or a ``(key, file_path)`` pair. Metadata is not set.
        """
        keys: list[str] = []
        paths: list[str | None] = []
        for item in items:
            key, path = (item, None) if isinstance(item, str) else item
            keys.append(key)
            paths.append(None if path is None else str(path))
        self._transition(scope, keys, IN_PROGRESS, paths, force=force)

    def mark_completed_many(
        self,
        scope: CheckpointScope | str,
        items: Iterable[CompletionItem],
        *,
        metadata: Mapping[str, Any] | None = None,
        start_first: bool = False,
    ) -> None:
        """:meth:`mark_completed` for many in_progress items in one transaction: all, or none.

        Each item is a key, ``(key, file_path)`` or ``(key, file_path, checksum)``, where the
        third element may instead be a :class:`Fingerprint` taken when the file was read (then
        the file is neither stat'ed nor read now). Otherwise the file (``file_path``, else the
        one recorded at start) is fingerprinted: size and mtime_ns from ``stat``, MD5 from
        ``checksum`` when given, else computed by reading it. ``metadata`` is merged into
        every row's (e.g. the store the key lives in).

        ``start_first``: the items are started (as :meth:`mark_started_many` with ``force``)
        and completed in the same transaction, for work done before any row was written: the
        log gets both events, each row is written once (half the writes of two calls).
        """
        triples = [_completion_item(item) for item in items]
        keys, paths = [key for key, _, _ in triples], [path for _, path, _ in triples]
        known = [known for _, _, known in triples]
        self._transition(scope, keys, COMPLETED, paths, known, metadata=metadata, start_first=start_first)

    def record_changes(self, scope: CheckpointScope | str, changes: Sequence[ItemChange]) -> None:
        """Apply ``changes`` in order, in one transaction: all of them, or none.

        One key may change several times (started, then completed): the event log gets every
        transition and the row the last. Each change follows the state machine of the single
        marks (``force`` as in :meth:`mark_started`); an illegal one refuses the whole batch.
        For items without a file (MODEL, PIPELINE): no fingerprint is taken.
        """
        scope = CheckpointScope(scope)
        if not changes:
            return

        def plan(rows: dict[str, Row]) -> list[Event]:
            current: dict[str, Row] = dict(rows)
            events = []
            for change in changes:
                status = CheckpointStatus(change.to_status).value
                row = current.get(change.key)
                reason = refusal(row, status, None, change.force, self.run_id, lambda run: run in self._is_live({run}))
                if reason is not None:
                    from_status = PENDING if row is None else row["status"]
                    detail = f"{change.key!r} ({from_status} -> {status}): {reason}; nothing of the batch was written"
                    raise self._illegal(scope, detail, change.key, from_status, status)
                failed = status == FAILED
                event = advance(
                    self.pipeline_name,
                    scope.value,
                    change.key,
                    row,
                    Change(
                        status,
                        _stored_time(change.at),
                        self._run,
                        metadata=change.metadata,
                        error_message=redact(change.error_message) if failed and change.error_message else None,
                        error_category=_category_value(change.category) if failed else None,
                    ),
                )
                events.append(event)
                current[change.key] = row_after(event)
            return events

        keys = list(dict.fromkeys(change.key for change in changes))
        self._require_open().apply(self.pipeline_name, Keys(scope.value, keys), plan)
        logger.debug("%d changes of %d %s items recorded", len(changes), len(keys), scope.value)

    # -- internals ----------------------------------------------------------------------

    def _require_open(self) -> CheckpointStore:
        refuse_if_forked(self._pid, f"PipelineCheckpoint {self.pipeline_name!r}")
        if not self._finalizer.alive:
            raise CheckpointError(
                "This PipelineCheckpoint is closed; open a new one", pipeline=self.pipeline_name, location=self.location
            )
        return self.store

    def _is_live(self, run_ids: Iterable[str]) -> set[str]:
        return self.store.live_runs(set(run_ids))

    def _public_rows(self, rows: Sequence[Row]) -> list[dict[str, Any]]:
        """Rows as callers get them: metadata parsed, aware UTC times, and whether they are interrupted."""
        rows, interrupted = self._settle_interrupted(list(rows))
        public = []
        for row in rows:
            result = dict(row)
            result["metadata"] = json.loads(row["metadata"]) if row["metadata"] else {}
            for column in ROW_TIMESTAMPS:
                result[column] = _aware(row[column])
            result["interrupted"] = (row["scope"], row["key"]) in interrupted
            public.append(result)
        return public

    def _settle_interrupted(self, rows: list[Row]) -> tuple[list[Row], set[tuple[str, str]]]:
        """The rows, some read again, and those of them that are interrupted.

        A lease can end between reading a row and asking whether its run is live (the run
        completed the item and closed): a row is interrupted only when it is still in progress
        for a dead run when read *after* that run was found dead. Rows that keep changing stay
        live (the safe side).
        """
        interrupted: set[tuple[str, str]] = set()
        pending = [i for i, row in enumerate(rows) if row["status"] == IN_PROGRESS]
        for _ in range(_SETTLE_ROUNDS):
            live = self._is_live({rows[i]["run_id"] for i in pending}) if pending else set()
            suspects = [i for i in pending if rows[i]["run_id"] not in live]
            if not suspects:
                break
            dead = {rows[i]["run_id"] for i in suspects}
            by_scope: dict[str, list[int]] = {}
            for index in suspects:
                by_scope.setdefault(rows[index]["scope"], []).append(index)
            pending = []
            for scope, indexes in by_scope.items():
                fresh = self.store.read_rows(self.pipeline_name, scope, [rows[i]["key"] for i in indexes])
                for index in indexes:
                    row = fresh.get(rows[index]["key"], rows[index])
                    rows[index] = row
                    if row["status"] != IN_PROGRESS:
                        continue
                    if row["run_id"] in dead:
                        interrupted.add((row["scope"], row["key"]))
                    else:
                        pending.append(index)
        return rows, interrupted

    @staticmethod
    def _public_event(event: Event) -> dict[str, Any]:
        result = {column: event[column] for column in EVENT_COLUMNS}
        for column in EVENT_TIMESTAMPS:
            if column in result:
                result[column] = _aware(result[column])
        return result

    def _clear(self, target: Keys | RowFilter, file_path: str | None) -> int:
        """Delete the target's rows (those recording ``file_path``, when given), logging a transition to pending."""
        scope = target.scope

        def plan(rows: dict[str, Row]) -> Sequence[Event]:
            cleared = {key: row for key, row in rows.items() if file_path is None or row["file_path"] == file_path}
            change = Change(PENDING, _utcnow(), self._run)
            return fold(self.pipeline_name, scope, list(cleared), list(cleared.values()), change)

        events = self._require_open().apply(self.pipeline_name, target, plan)
        if events:
            logger.info("Cleared %d checkpoints of pipeline %r", len(events), self.pipeline_name)
        return len(events)

    def _transition(
        self,
        scope: CheckpointScope | str,
        keys: list[str],
        to_status: str,
        paths: list[str | None],
        known: list[str | Fingerprint | None] | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        error: tuple[str | None, str | None] = (None, None),
        force: bool = False,
        start_first: bool = False,
    ) -> None:
        """Transitions of ``keys`` to ``to_status`` in one transaction: all of them, or none.

        ``start_first``: each item is started (forced) before, in the same transaction.
        """
        scope = CheckpointScope(scope)
        if len(set(keys)) != len(keys):
            duplicates = sorted(key for key, count in Counter(keys).items() if count > 1)[:_MAX_LISTED_REFUSALS]
            raise CheckpointError(
                f"A batch names the same key more than once: {duplicates}",
                category=ErrorCategory.PERMANENT,
                scope=scope.value,
            )
        if not keys:
            return
        store = self._require_open()
        # Files named by the caller are fingerprinted while the store reads the rows (the stat
        # and MD5 are the slow part); files recorded at start once the rows are read.
        if to_status == COMPLETED:
            known = known or [None] * len(keys)
            named = [i for i, path in enumerate(paths) if path is not None or isinstance(known[i], Fingerprint)]
            taken = fingerprints_meanwhile([(paths[i], known[i]) for i in named])

        def plan(rows: dict[str, Row]) -> Sequence[Event]:
            olds = [rows.get(key) for key in keys]
            starts = None
            if start_first:
                starts = fold(self.pipeline_name, scope.value, keys, olds, Change(IN_PROGRESS, _utcnow(), self._run), paths)
                olds = [row_after(event) for event in starts]
                rows = dict(zip(keys, olds))
            else:
                self._check(scope, rows, keys, paths, to_status, force)
            prints = None
            if to_status == COMPLETED:
                given: list[Fingerprint | None] = [None] * len(keys)
                for index, fingerprint in zip(named, taken()):
                    given[index] = fingerprint
                prints = self._fingerprint_recorded(rows, keys, known, given)
            change = Change(to_status, _utcnow(), self._run, metadata=metadata, error_message=error[0], error_category=error[1])
            events = fold(self.pipeline_name, scope.value, keys, olds, change, paths, prints)
            return events if starts is None else concatenated(starts, events)

        reads = completion_reads(paths, metadata) if to_status == COMPLETED and not start_first else None
        store.apply(self.pipeline_name, Keys(scope.value, keys, reads), plan)
        if len(keys) == 1:
            logger.debug("%s %r -> %s", scope.value, keys[0], to_status)
        else:
            logger.debug("%d %s items -> %s", len(keys), scope.value, to_status)

    @staticmethod
    def _fingerprint_recorded(
        rows: dict[str, Row],
        keys: list[str],
        known: list[str | Fingerprint | None],
        given: list[Fingerprint | None],
    ) -> list[Fingerprint | None]:
        """``given``, with the items completed without a path fingerprinted from the file recorded at start."""
        result = list(given)
        unnamed = [i for i, fingerprint in enumerate(given) if fingerprint is None]
        recorded = fingerprints((rows[keys[i]]["file_path"] if keys[i] in rows else None, known[i]) for i in unnamed)
        for index, fingerprint in zip(unnamed, recorded):
            result[index] = fingerprint
        return result

    def _check(
        self,
        scope: CheckpointScope,
        rows: dict[str, Row],
        keys: list[str],
        paths: list[str | None],
        to_status: str,
        force: bool,
    ) -> None:
        """Refuse the whole batch if any item's transition is illegal; only doubtful rows are examined."""
        legal = ALWAYS_LEGAL_FROM[to_status]
        doubtful = [i for i, key in enumerate(keys) if (rows[key]["status"] if key in rows else PENDING) not in legal]
        if not doubtful:
            return
        running = {rows[keys[i]]["run_id"] for i in doubtful if keys[i] in rows and rows[keys[i]]["status"] == IN_PROGRESS}
        live = self._is_live(running) if running and not force else set()
        refusals = []
        for index in doubtful:
            row = rows.get(keys[index])
            reason = refusal(row, to_status, paths[index], force, self.run_id, live.__contains__)
            if reason is not None:
                refusals.append((keys[index], PENDING if row is None else row["status"], reason))
        if not refusals:
            return
        listed = "; ".join(f"{k!r} ({f} -> {to_status}): {r}" for k, f, r in refusals[:_MAX_LISTED_REFUSALS])
        prefix = "" if len(keys) == 1 else f"{len(refusals)} of {len(keys)} items refused, nothing written: "
        key, from_status, _ = refusals[0]
        raise self._illegal(scope, prefix + listed, key, from_status, to_status)

    def _illegal(
        self, scope: CheckpointScope, detail: str, key: str, from_status: str, to_status: str
    ) -> CheckpointError:
        return CheckpointError(
            f"Illegal checkpoint transition in pipeline {self.pipeline_name!r}, scope {scope.value!r}: {detail}",
            category=ErrorCategory.PERMANENT,
            pipeline=self.pipeline_name,
            scope=scope.value,
            key=key,
            from_status=from_status,
            to_status=to_status,
        )
