"""All-or-nothing writes to object storage, durable across crashes and safe between writers.

Object stores have no multi-object transactions, so a transaction is a protocol whose
journal lives in the object store itself, beside the data (:mod:`sqlmesh_osaa.commit_log`,
:mod:`sqlmesh_osaa.commit_protocol`; docs/recovery.md):

1. begin — a marker (owner, lease, the log position it starts from) is written; objects are
   uploaded as immutable versions under ``_osaa/versions/<id>.<attempt>/<key>``, never to
   their production key;
2. validate — validators inspect the staged versions; any False or exception rolls back;
3. decide — the decision (full manifest, the snapshot it leaves) takes the next position of
   the commit log with a conditional write **before** the first production write; an
   overlapping commit since begin raises :class:`TransactionConflictError`, nothing applied;
4. apply — server-side copy of each version to its stable key, then the staged deletes;
5. finish — FILE checkpoints completed with the fingerprints taken at discovery, the marker
   deleted. The checkpoint's OPERATION row (``transaction/<id>``) keeps the history.

Recovery (:func:`recover_transactions`, at the start of every transaction and in
``osaa-recover``) needs only the store: a dead owner's undecided transaction is rolled back,
a decided one rolled forward except for keys a later commit superseded.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus, PipelineCheckpoint
from sqlmesh_osaa.commit_log import (
    _ACTIVE,
    DEFAULT_LEASE_SECONDS,
    PROTOCOL_ROOT,
    CommitLog,
    Marker,
    Owner,
    Snapshot,
    new_versions_root,
    resolve_snapshot,
)
from sqlmesh_osaa.commit_protocol import (
    JOURNAL_PREFIX,
    Fingerprint,
    Manifest,
    PutRecords,
    RecoveryReport,
    StagedPut,
    apply_entry,
    await_earlier,
    clean_transaction_area,
    complete_files,
    decide,
    fail_files,
    finish,
    recover_store,
    row_manifest,
    settle_checkpoint,
    sweep_unreferenced,
    journal_key,
)
from sqlmesh_osaa.error_handler import ErrorHandler, record_breaker_transitions
from sqlmesh_osaa.exceptions import (
    ErrorCategory,
    PreconditionFailedError,
    RollbackError,
    TransactionConflictError,
    TransactionError,
    ValidationError,
    categorize_error,
)
from sqlmesh_osaa.fault_points import AFTER_COMMIT_DECISION, AFTER_STAGING, fault_point
from sqlmesh_osaa.settings import OsaaSettings, get_settings
from sqlmesh_osaa.storage import ObjectStore, S3Store, file_md5, key_problem, make_store, map_requests

_log = logging.getLogger(__name__)

DEFAULT_PIPELINE = "transactions"

__all__ = [
    "DEFAULT_PIPELINE",
    "JOURNAL_PREFIX",
    "Fingerprint",
    "Manifest",
    "RecoveryReport",
    "Snapshot",
    "StagedPut",
    "TransactionManager",
    "TransactionPhase",
    "Upload",
    "UploadOutcome",
    "iter_transactions",
    "journal_key",
    "recover_transactions",
    "resolve_snapshot",
]

Validator = Callable[[str], Any]


class TransactionPhase(str, Enum):
    """Where a transaction stands in the protocol; recorded in its checkpoint row."""

    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True, slots=True)
class Upload:
    """A local file to stage for ``key``; its FILE checkpoint tracks ``source_path`` or the file.

    ``fingerprint`` is the source as it was when read (ingest takes it at discovery); the
    FILE checkpoint records it, so it describes the content production holds even when the
    source changes later. ``disposable`` gives the local file up to the store, which may move
    it instead of copying it (``ObjectStore.put_file(move=True)``): for intermediates, such as
    ingest's converted parquet, written under the store's scratch directory.
    """

    local_path: str | Path
    key: str
    metadata: Mapping[str, str] | None = None
    source_path: str | Path | None = None
    fingerprint: Fingerprint | None = None
    disposable: bool = False

    @property
    def tracked_path(self) -> str:
        return str(self.source_path or self.local_path)


@dataclass(frozen=True)
class UploadOutcome:
    """What happened to one :class:`Upload`: staged (or unchanged), or the error."""

    upload: Upload
    put: StagedPut | None = None
    error: BaseException | None = None


def _md5_and_size(path: str | Path) -> tuple[str, int]:
    return file_md5(path), Path(path).stat().st_size


def _store_for(bucket_name: str | None, settings: OsaaSettings) -> ObjectStore:
    """A bare bucket name means S3 through boto3's standard configuration, as in the seed."""
    if bucket_name is None:
        return make_store(settings.storage)
    if settings.storage.backend == "s3":
        return make_store(settings.storage, bucket=bucket_name)
    return S3Store(bucket_name)


class TransactionManager:
    """Stage objects, validate them, then publish them all or none.

    Used as a context manager it commits on normal exit and rolls back when the block
    raises. ``transaction_id`` makes re-runs idempotent: a transaction id that already
    committed is a no-op. ``staging_prefix`` is kept for the seed's signature; staged
    objects live under the protocol's versions root (docs/decisions.md).
    """

    def __init__(
        self,
        bucket_name: str | None = None,
        staging_prefix: str | None = None,
        checkpoint: PipelineCheckpoint | None = None,
        *,
        store: ObjectStore | None = None,
        transaction_id: str | None = None,
        error_handler: ErrorHandler | None = None,
        settings: OsaaSettings | None = None,
        recover: bool = True,
        max_workers: int = 8,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        settings = settings or get_settings()
        self.store = store or _store_for(bucket_name, settings)
        self.staging_prefix = (staging_prefix or settings.storage.staging_prefix).strip("/")
        self._owns_checkpoint = checkpoint is None
        self.checkpoint = checkpoint or PipelineCheckpoint(DEFAULT_PIPELINE)
        self.error_handler = error_handler or ErrorHandler.from_settings(settings, name="object-storage")
        if self.error_handler.circuit_breaker is not None:
            record_breaker_transitions(self.error_handler.circuit_breaker, self.checkpoint)
        self.transaction_id = transaction_id or uuid.uuid4().hex
        self.phase: TransactionPhase | None = None
        self.manifest = Manifest()
        self.log = CommitLog(self.store, self.error_handler)
        self.lease_seconds = lease_seconds
        self.max_workers = max_workers
        self._validators: list[Validator] = []
        self._recover = recover
        self._already_committed = False
        self._known_production: dict[str, dict[str, str | None]] = {}
        self._lock = threading.Lock()
        self._put_positions: dict[str, int] = {}
        self._staged_batches = 0
        self._marker: Marker | None = None
        self._base: dict[str, dict[str, Any]] = {}
        self._heartbeat_stop = threading.Event()
        self._marker_lock = threading.Lock()

    @property
    def bucket_name(self) -> str:
        return self.store.bucket

    @property
    def staging_root(self) -> str:
        """Where this attempt uploads its objects (the versions root in its marker)."""
        if self._marker is None:
            raise TransactionError("Transaction has not begun", transaction_id=self.transaction_id)
        return self._marker.versions

    def __enter__(self) -> TransactionManager:
        self.begin()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None:
                if self.phase is TransactionPhase.OPEN:
                    self.commit()
            elif self.phase is TransactionPhase.OPEN:
                self.rollback(reason=f"{type(exc).__name__}: {exc}")
        finally:
            if self._owns_checkpoint:
                self.checkpoint.close()

    # -- begin ----------------------------------------------------------------------------

    def begin(self) -> None:
        """Write the marker and the checkpoint row; recover leftovers of dead transactions first."""
        if self.phase is not None:
            return
        if self._recover:
            recover_transactions(self.checkpoint, self.store, error_handler=self.error_handler, sweep_leftovers=False)
        row = self.checkpoint.get(CheckpointScope.OPERATION, journal_key(self.transaction_id))
        if row and row["status"] == CheckpointStatus.COMPLETED.value:
            _log.info("Transaction %s already committed; nothing to do", self.transaction_id)
            self._already_committed = True
            self.phase = TransactionPhase.COMMITTED
            return
        if row and row["status"] == CheckpointStatus.IN_PROGRESS.value and not row["interrupted"]:
            raise self._taken(row.get("owner_pid"), row.get("owner_host"), alive=True)
        position = self.log.head()
        self._base = self.log.snapshot(position)
        marker = Marker(
            self.transaction_id, Owner.this_process(), time.time(), self.lease_seconds, position,
            new_versions_root(self.transaction_id), pipeline=self.checkpoint.pipeline_name,
        )
        _ACTIVE.add(self.transaction_id)
        try:
            self._marker = self.log.create_marker(marker)
        except PreconditionFailedError:
            _ACTIVE.discard(self.transaction_id)
            self._check_marker_free()
            raise
        except BaseException:
            _ACTIVE.discard(self.transaction_id)
            raise
        self.checkpoint.mark_started(
            CheckpointScope.OPERATION,
            journal_key(self.transaction_id),
            metadata={
                "phase": TransactionPhase.OPEN.value,
                "bucket": self.bucket_name,
                "staging": marker.versions,
                "begin": position,
            },
            force=row is not None and row["status"] == CheckpointStatus.IN_PROGRESS.value,
        )
        self.phase = TransactionPhase.OPEN
        threading.Thread(target=self._heartbeat, name=f"osaa-lease-{self.transaction_id[:8]}", daemon=True).start()

    def _check_marker_free(self) -> None:
        existing = self.log.marker(self.transaction_id)
        if existing is not None:
            owner = existing.owner
            raise self._taken(owner.pid, owner.host, alive=existing.owner_alive())

    def _taken(self, pid: Any, host: Any, *, alive: bool) -> TransactionError:
        if alive:
            message = (
                "Transaction is being run by another live process; wait for it or stop it, "
                "then run `osaa-recover reconcile`"
            )
        else:
            message = (
                "Transaction was interrupted: its owner is gone and it awaits recovery. Run "
                "`osaa-recover reconcile` (or begin with recover=True) before running it again"
            )
        return TransactionError(message, transaction_id=self.transaction_id, owner_pid=pid, owner_host=host)

    def _heartbeat(self) -> None:
        """Renew the lease while the transaction runs, so other hosts do not take it for dead."""
        while not self._heartbeat_stop.wait(self.lease_seconds / 3):
            with self._marker_lock:
                if self._marker is None or self._heartbeat_stop.is_set():
                    return
                try:
                    self._marker = self.log.update_marker(self._marker, heartbeat_at=time.time())
                except PreconditionFailedError:
                    _log.error("Transaction %s was taken over by recovery; it can no longer commit", self.transaction_id)
                    return
                except Exception as exc:
                    _log.warning("Could not renew the lease of transaction %s: %s", self.transaction_id, exc)

    def _release(self) -> None:
        """This process stops working on the transaction (finished, or left to recovery)."""
        self._heartbeat_stop.set()
        _ACTIVE.discard(self.transaction_id)

    # -- staging --------------------------------------------------------------------------

    def add_validator(self, validator: Validator) -> None:
        """``validator(staged_key)`` runs on every staged object at commit; False rejects it."""
        self._validators.append(validator)

    def upload_file(
        self,
        local_path: str | Path,
        s3_key: str,
        metadata: Mapping[str, str] | None = None,
        *,
        source_path: str | Path | None = None,
    ) -> StagedPut:
        """Stage a local file for ``s3_key``; its FILE checkpoint tracks ``source_path`` (or the file).

        When production already holds the same content (same MD5), or this transaction id
        already committed, nothing is uploaded.
        """
        outcome = self.upload_many([Upload(local_path, s3_key, metadata, source_path)])[0]
        if outcome.error is not None:
            raise outcome.error
        assert outcome.put is not None
        return outcome.put

    def upload_many(self, uploads: Sequence[Upload]) -> list[UploadOutcome]:
        """Stage many files concurrently; a file that fails is reported in its outcome, not raised.

        The batch is named in the attempt's versions root before any upload begins; the FILE
        checkpoints are written once, when the transaction ends (completed, or failed on a
        rollback, by recovery too): a row started per file at staging was the largest part of
        a first ingest's memory (docs/performance.md, "Ingest").
        """
        accepting = self._accepting_work()
        refused = {index: error for index, upload in enumerate(uploads) if (error := self._refused(upload.key))}
        refused.update(self._given_twice(uploads))
        staging = [upload for index, upload in enumerate(uploads) if index not in refused]
        if accepting and staging:
            self.log.record_staged_files(
                self.staging_root, self._staged_batches, [(upload.key, upload.tracked_path) for upload in staging]
            )
            self._staged_batches += 1
        # Staged versions need to survive a power cut only once a decision names them: commit() syncs first.
        with self.store.deferred_durability():
            staged = map_requests(
                self.store, lambda upload: self._stage(upload, accepting), staging, self.max_workers, "osaa-upload"
            )
        outcomes = iter(staged)
        return [
            UploadOutcome(upload, error=refused[index]) if index in refused else next(outcomes)
            for index, upload in enumerate(uploads)
        ]

    def _refused(self, key: str) -> TransactionError | None:
        """Why ``key`` can never be stored, before anything is staged or recorded for it."""
        problem = key_problem(key) or (
            f"keys under {PROTOCOL_ROOT!r} are the commit protocol's" if key.startswith(PROTOCOL_ROOT) else None
        )
        if problem is None:
            return None
        return TransactionError(
            f"Object key {key!r} is refused: {problem}. Nothing was staged or recorded for it; "
            "give a key relative to the bucket, such as 'prod/landing/sdg/indicators.parquet'",
            category=ErrorCategory.PERMANENT,
            transaction_id=self.transaction_id,
        )

    def _given_twice(self, uploads: Sequence[Upload]) -> dict[int, TransactionError]:
        """Refusals of every upload whose key another upload of the batch also names.

        Both would be staged at once under one staged key, so which bytes it ends up holding
        is a race: none of them is staged, and each failure names all the files.
        """
        indexes: dict[str, list[int]] = {}
        for index, upload in enumerate(uploads):
            indexes.setdefault(upload.key, []).append(index)
        refused = {}
        for key, shared in indexes.items():
            if len(shared) < 2:
                continue
            files = ", ".join(repr(str(uploads[index].tracked_path)) for index in shared)
            error = TransactionError(
                f"Object key {key!r} is given for {len(shared)} files of one batch ({files}); none of them "
                "was staged. Give each file its own key, or stage them one after the other (the last one wins)",
                category=ErrorCategory.PERMANENT,
                transaction_id=self.transaction_id,
                key=key,
            )
            refused.update((index, error) for index in shared)
        return refused

    def _check_key(self, key: str) -> None:
        if (error := self._refused(key)) is not None:
            raise error

    def prefetch_production(self, prefix: str) -> None:
        """List ``prefix`` once so staging compares MD5s without one HEAD request per object.

        Only an optimisation: when the listing fails, each upload asks with HEAD instead (and
        fails there, with its own error, if the store refuses it too).
        """
        try:
            listing = self._retry(
                lambda: {info.key: info.md5 for info in self.store.list_prefix(prefix)}, operation="ListObjectsV2"
            )
        except Exception as exc:
            _log.warning("Could not list %s; checking objects one by one: %s", prefix, exc)
            return
        self._known_production[prefix] = listing

    def _production_md5(self, key: str) -> str | None:
        for prefix, listing in self._known_production.items():
            if key.startswith(prefix):
                return listing.get(key)
        current = self._retry(self.store.head, key, operation="HeadObject")
        return current.md5 if current is not None else None

    def _unchanged(self, key: str, md5: str | None, production_md5: str | None) -> str | None:
        """The version the current snapshot holds ``key`` in, when it and production both hold ``md5``."""
        ref = self._base.get(key)
        if md5 is None or ref is None or ref["md5"] != md5 or production_md5 != md5:
            return None
        return str(ref["version"])

    def _stage(self, upload: Upload, accepting: bool) -> UploadOutcome:
        """Upload one file as a version, unless production and the current snapshot already hold its content.

        The file is hashed before the upload only when the snapshot holds its key (the one case
        where it may be unchanged); otherwise the store's own hash of the bytes it stored is the MD5.
        """
        common = {"source_path": upload.tracked_path, "fingerprint": upload.fingerprint}
        try:
            if not accepting:
                return UploadOutcome(upload, StagedPut(upload.key, None, *_md5_and_size(upload.local_path), **common))
            md5 = None
            if upload.key in self._base:
                md5, size = _md5_and_size(upload.local_path)
                version = self._unchanged(upload.key, md5, self._production_md5(upload.key))
                if version is not None:
                    put = StagedPut(upload.key, None, md5, size, version=version, **common)
                    return UploadOutcome(upload, self._add(put))
            staged_key = self.staging_root + upload.key
            info = self._retry(
                lambda: self.store.put_file(
                    upload.local_path, staged_key, upload.metadata, md5, move=upload.disposable
                ),
                operation="PutObject",
            )
            put = StagedPut(upload.key, staged_key, info.md5 or "", info.size, version=staged_key, **common)
        except Exception as exc:
            return UploadOutcome(upload, error=exc)
        self._add(put)
        fault_point(AFTER_STAGING)
        return UploadOutcome(upload, put)

    def _add(self, put: StagedPut) -> StagedPut:
        """Record ``put``; a later staging of a key replaces the earlier one, as a later write would.

        Both were staged under the same staged key, so the earlier record no longer describes
        what that object holds: keeping it would make the apply find the wrong MD5.
        """
        with self._lock:
            position = self._put_positions.get(put.key)
            if position is None:
                self._put_positions[put.key] = len(self.manifest.puts)
                self.manifest.puts.append(put)
            else:
                self.manifest.puts[position] = put
        return put

    def stage_copy(self, source_key: str, s3_key: str) -> StagedPut:
        """Stage a server-side copy of an existing object (promotion): no bytes pass through here."""
        self._check_key(s3_key)
        accepting = self._accepting_work()
        source = self._retry(self.store.head, source_key, operation="HeadObject")
        if source is None:
            raise TransactionError(
                "Source object does not exist", transaction_id=self.transaction_id, key=source_key
            )
        current = self._retry(self.store.head, s3_key, operation="HeadObject")
        version = self._unchanged(s3_key, source.md5, current.md5 if current is not None else None)
        if not accepting or version is not None:
            put = StagedPut(s3_key, None, source.md5 or "", source.size, version=version)
        else:
            staged_key = self.staging_root + s3_key
            info = self._retry(self.store.copy, source_key, staged_key, operation="CopyObject")
            put = StagedPut(s3_key, staged_key, info.md5 or "", info.size, version=staged_key)
        return self._add(put) if accepting else put

    def delete(self, s3_key: str) -> None:
        """Delete ``s3_key`` from production when (and only when) the transaction commits."""
        self._check_key(s3_key)
        if self._accepting_work():
            self.manifest.deletes.append(s3_key)

    # -- commit and rollback --------------------------------------------------------------

    def commit(self) -> None:
        """Validate, decide in the commit log, apply, finish.

        Raises ValidationError or TransactionConflictError after rolling back, and
        TransactionError when a decided commit could not be finished (recovery finishes it).
        """
        if self.phase is TransactionPhase.COMMITTED or not self._accepting_work():
            return
        self._validate()
        assert self._marker is not None
        if all(put.unchanged for put in self.manifest.puts) and not self.manifest.deletes:
            self._end_unchanged()
            return
        try:
            self.store.sync()
            entry = decide(self.log, self.transaction_id, self._marker.begin, self.manifest)
        except TransactionConflictError as conflict:
            self.rollback(reason=str(conflict))
            raise
        except Exception as exc:
            self._release()
            raise self._unfinished(exc, "Commit decision could not be written; its outcome is settled by recovery")
        fault_point(AFTER_COMMIT_DECISION)
        self.phase = TransactionPhase.COMMITTING
        try:
            with self._marker_lock:
                self._marker = self.log.update_marker(self._marker, position=entry.position)
            # The position names the decision, whose entry in the log holds the manifest: the row does
            # not repeat it (one more copy of a manifest of every file cost memory in proportion).
            self.checkpoint.update_metadata(
                CheckpointScope.OPERATION,
                journal_key(self.transaction_id),
                {"phase": TransactionPhase.COMMITTING.value, "position": entry.position},
            )
            await_earlier(self.log, entry)
            apply_entry(self.store, entry, self.error_handler, max_workers=self.max_workers)
            self._release()
            finish(self.log, entry, self.checkpoint, self.staging_root)
        except Exception as exc:
            self._release()
            raise self._unfinished(
                exc,
                "Commit was decided but could not be finished; production is not yet complete. "
                "The next run (or `osaa-recover reconcile`) rolls it forward",
            )
        self.phase = TransactionPhase.COMMITTED
        _log.info(
            "Transaction %s committed at log position %d: %d object(s) written, %d unchanged, %d deleted",
            self.transaction_id,
            entry.position,
            sum(1 for put in self.manifest.puts if not put.unchanged),
            sum(1 for put in self.manifest.puts if put.unchanged),
            len(self.manifest.deletes),
        )

    def _end_unchanged(self) -> None:
        """Nothing to write: no log entry; the FILE checkpoints complete, the marker goes."""
        self._release()
        puts = PutRecords(self.manifest.puts)
        complete_files(self.checkpoint, self.store, puts)
        self.log.forget_staged_files(self.staging_root)
        self.log.delete_marker(self.transaction_id)
        self.checkpoint.mark_completed(
            CheckpointScope.OPERATION, journal_key(self.transaction_id),
            metadata={"phase": TransactionPhase.COMMITTED.value, "manifest": row_manifest(puts, self.manifest.deletes)},
        )
        self.phase = TransactionPhase.COMMITTED
        _log.info("Transaction %s changed nothing: %d object(s) already in production", self.transaction_id,
                  len(self.manifest.puts))

    def _unfinished(self, exc: Exception, message: str) -> TransactionError:
        error = TransactionError(message, category=categorize_error(exc), transaction_id=self.transaction_id)
        error.__cause__ = exc
        return error

    def rollback(self, reason: str = "rolled back by caller") -> None:
        """Delete everything staged and record the transaction as rolled back; production is untouched."""
        if self.phase is not TransactionPhase.OPEN:
            if self.phase is TransactionPhase.COMMITTING:
                raise RollbackError(
                    "Cannot roll back a transaction whose commit was decided; it can only be rolled forward",
                    transaction_id=self.transaction_id,
                )
            return
        self.phase = TransactionPhase.ROLLED_BACK
        self._heartbeat_stop.set()
        leftovers: list[str] = []
        try:
            assert self._marker is not None
            clean_transaction_area(self.log, self._marker.versions)
            self.log.delete_marker(self.transaction_id)
        except Exception as exc:
            _log.warning("Rollback of %s could not clean the store: %s", self.transaction_id, exc)
            leftovers = [self.staging_root]
        finally:
            _ACTIVE.discard(self.transaction_id)
        self._fail_rows(reason)
        _log.info("Transaction %s rolled back: %s", self.transaction_id, reason)
        if leftovers:
            raise RollbackError(
                "Rollback could not delete every staged object; `osaa-recover reconcile` finishes it",
                leftovers=leftovers,
                transaction_id=self.transaction_id,
            )

    def _fail_rows(self, reason: str) -> None:
        """The FILE checkpoints of the staged files fail with the rollback's reason."""
        files = [(put.key, put.source_path) for put in self.manifest.puts if put.source_path is not None]
        fail_files(self.checkpoint, files, f"transaction {self.transaction_id} rolled back: {reason}")
        self.checkpoint.mark_failed(
            CheckpointScope.OPERATION,
            journal_key(self.transaction_id),
            reason,
            metadata={"phase": TransactionPhase.ROLLED_BACK.value},
        )

    def _validate(self) -> None:
        for put in self.manifest.puts:
            if put.unchanged:
                continue
            for validator in self._validators:
                name = getattr(validator, "__qualname__", repr(validator))
                try:
                    accepted = validator(put.staged_key)
                except Exception as exc:
                    raise self._reject(put, name, f"raised {type(exc).__name__}: {exc}") from exc
                if not accepted:
                    raise self._reject(put, name, "rejected the staged object")

    def _reject(self, put: StagedPut, validator: str, what: str) -> ValidationError:
        """Roll back, and the error that says which validator refused which object."""
        self.rollback(reason=f"validator {validator} {what} ({put.key})")
        return ValidationError(
            f"Validator {validator} {what}; the transaction was rolled back",
            validator=validator,
            key=put.key,
            staged_key=put.staged_key,
            transaction_id=self.transaction_id,
        )

    def _accepting_work(self) -> bool:
        """True while open; False for a re-run of a committed id; raises once this run ended."""
        self.begin()
        if self._already_committed:
            return False
        if self.phase is not TransactionPhase.OPEN:
            raise TransactionError(
                f"Transaction is {self.phase.value if self.phase else 'not started'}; start a new one",
                transaction_id=self.transaction_id,
            )
        return True

    def _retry(self, func: Callable[..., Any], *args: Any, operation: str) -> Any:
        return self.error_handler.execute(func, *args, operation=operation)


def recover_transactions(
    checkpoint: PipelineCheckpoint,
    store: ObjectStore,
    *,
    error_handler: ErrorHandler | None = None,
    staging_prefix: str | None = None,
    sweep_leftovers: bool = True,
) -> RecoveryReport:
    """Finish what dead processes left in ``store``, then make ``checkpoint`` agree with it.

    Reads only the store (a fresh machine recovers as well as the one that crashed); owners
    that are alive are left alone. With ``sweep_leftovers`` (``osaa-recover reconcile``),
    versions no retained snapshot names and no transaction in flight owns are deleted too;
    that lists every version, so the recovery at the start of a transaction skips it.
    ``staging_prefix`` is accepted for compatibility and unused.
    """
    log = CommitLog(store, error_handler or ErrorHandler.from_settings(name="object-storage"))
    report = RecoveryReport()
    outcomes: dict[str, Any] = {}
    for step, run in (
        ("store", lambda: outcomes.update(recover_store(log, checkpoint, report))),
        ("checkpoint", lambda: settle_checkpoint(checkpoint, log, outcomes)),
        ("versions", lambda: sweep_unreferenced(log, report) if sweep_leftovers else None),
    ):
        try:
            run()
        except Exception as exc:
            _log.error("Recovery could not finish its %s step: %s", step, exc)
            report.failed[step] = str(exc)
    return report


def iter_transactions(checkpoint: PipelineCheckpoint, status: CheckpointStatus | None = None) -> Iterable[dict[str, Any]]:
    """Journal rows of this checkpoint's pipeline (for `osaa-recover transactions`)."""
    yield from checkpoint.list(scope=CheckpointScope.OPERATION, status=status, key_prefix=JOURNAL_PREFIX)
