"""All-or-nothing writes to object storage, durable across crashes.

Object stores have no multi-object transactions, so a transaction is a protocol whose
journal lives in the checkpoint store (OPERATION scope, key ``transaction/<id>``):

1. begin — the journal row is *open*; objects are written under
   ``<staging_prefix>/<id>/<key>``, never under their production key;
2. validate — validators inspect the staged objects; any False or exception rolls back;
3. decide — the journal row turns *committing*, with the full manifest (every staged put
   and delete), durably, **before** the first production write;
4. apply — server-side copy staged -> production (verified), then the staged deletes;
5. finish — FILE checkpoints completed, staging deleted, the journal row *committed*.

Recovery (:func:`recover_transactions`, run at the start of every transaction and by
``osaa-recover``) rolls an *open* transaction of a dead owner back (staging deleted,
production untouched) and a *committing* one forward (apply is idempotent: an object whose
production copy already has the staged MD5 is not copied again). So after any crash plus
recovery, production holds exactly the old or exactly the new set of objects.
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus, PipelineCheckpoint
from sqlmesh_osaa.error_handler import ErrorHandler, record_breaker_transitions
from sqlmesh_osaa.exceptions import (
    ErrorCategory,
    RollbackError,
    TransactionError,
    ValidationError,
    categorize_error,
)
from sqlmesh_osaa.fault_points import (
    AFTER_COMMIT_DECISION,
    AFTER_PRODUCTION_COPY,
    AFTER_STAGING,
    BEFORE_STAGING_CLEANUP,
    fault_point,
)
from sqlmesh_osaa.settings import OsaaSettings, get_settings
from sqlmesh_osaa.storage import ObjectInfo, ObjectStore, S3Store, file_md5, make_store

_log = logging.getLogger(__name__)

JOURNAL_PREFIX = "transaction/"
DEFAULT_PIPELINE = "transactions"

Validator = Callable[[str], Any]


class TransactionPhase(str, Enum):
    """Where a transaction stands in the protocol; recorded in its journal row."""

    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class StagedPut:
    """One object of the manifest: where it is staged, where it goes, what it must hash to."""

    key: str
    staged_key: str | None
    md5: str
    size: int
    source_path: str | None = None

    @property
    def unchanged(self) -> bool:
        """Production already holds this content: nothing was staged, nothing is copied."""
        return self.staged_key is None


@dataclass(frozen=True)
class Upload:
    """A local file to stage for ``key``; its FILE checkpoint tracks ``source_path`` or the file."""

    local_path: str | Path
    key: str
    metadata: Mapping[str, str] | None = None
    source_path: str | Path | None = None

    @property
    def tracked_path(self) -> str:
        return str(self.source_path or self.local_path)


@dataclass(frozen=True)
class UploadOutcome:
    """What happened to one :class:`Upload`: staged (or unchanged), or the error."""

    upload: Upload
    put: StagedPut | None = None
    error: BaseException | None = None


@dataclass
class Manifest:
    """What a transaction will do to production once decided."""

    puts: list[StagedPut] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"puts": [asdict(put) for put in self.puts], "deletes": list(self.deletes)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        return cls([StagedPut(**put) for put in data.get("puts", [])], list(data.get("deletes", [])))


def journal_key(transaction_id: str) -> str:
    return f"{JOURNAL_PREFIX}{transaction_id}"


def staging_root(staging_prefix: str, transaction_id: str) -> str:
    return f"{staging_prefix.strip('/')}/{transaction_id}/"


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
    committed is a no-op.
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
        self._validators: list[Validator] = []
        self._recover = recover
        self._already_committed = False
        self._known_production: dict[str, dict[str, str | None]] = {}
        self._lock = threading.Lock()
        self.max_workers = max_workers

    @property
    def bucket_name(self) -> str:
        return self.store.bucket

    @property
    def staging_root(self) -> str:
        return staging_root(self.staging_prefix, self.transaction_id)

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

    def begin(self) -> None:
        """Open the journal row; recover leftovers of dead transactions first."""
        if self.phase is not None:
            return
        if self._recover:
            recover_transactions(self.checkpoint, self.store, error_handler=self.error_handler, sweep_leftovers=False)
        existing = self.checkpoint.get(CheckpointScope.OPERATION, journal_key(self.transaction_id))
        if existing and existing["status"] == CheckpointStatus.COMPLETED.value:
            _log.info("Transaction %s already committed; nothing to do", self.transaction_id)
            self._already_committed = True
            self.phase = TransactionPhase.COMMITTED
            return
        if existing and existing["status"] == CheckpointStatus.IN_PROGRESS.value:
            raise TransactionError(
                "Transaction is being run by another live process; wait for it or stop it, "
                "then run `osaa-recover reconcile`",
                transaction_id=self.transaction_id,
                owner_pid=existing.get("owner_pid"),
                owner_host=existing.get("owner_host"),
            )
        self.checkpoint.mark_started(
            CheckpointScope.OPERATION,
            journal_key(self.transaction_id),
            metadata={
                "phase": TransactionPhase.OPEN.value,
                "bucket": self.bucket_name,
                "staging": self.staging_root,
            },
        )
        self.phase = TransactionPhase.OPEN

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

        Their FILE checkpoints are started in one batch before any upload begins.
        """
        accepting = self._accepting_work()
        if accepting and uploads:
            self.checkpoint.mark_started_many(
                CheckpointScope.FILE, [(upload.key, upload.tracked_path) for upload in uploads], force=True
            )
        if len(uploads) == 1:
            return [self._stage(uploads[0], accepting)]
        with ThreadPoolExecutor(self.max_workers, thread_name_prefix="osaa-upload") as pool:
            return list(pool.map(lambda upload: self._stage(upload, accepting), uploads))

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

    def _stage(self, upload: Upload, accepting: bool) -> UploadOutcome:
        try:
            md5 = file_md5(upload.local_path)
            size = Path(upload.local_path).stat().st_size
            if not accepting:
                return UploadOutcome(upload, StagedPut(upload.key, None, md5, size, upload.tracked_path))
            if self._production_md5(upload.key) == md5:
                put = StagedPut(upload.key, None, md5, size, upload.tracked_path)
                with self._lock:
                    self.manifest.puts.append(put)
                return UploadOutcome(upload, put)
            staged_key = self.staging_root + upload.key
            info = self._retry(
                self.store.put_file, upload.local_path, staged_key, upload.metadata, md5, operation="PutObject"
            )
            put = StagedPut(upload.key, staged_key, md5, info.size, upload.tracked_path)
        except Exception as exc:
            return UploadOutcome(upload, error=exc)
        with self._lock:
            self.manifest.puts.append(put)
        fault_point(AFTER_STAGING)
        return UploadOutcome(upload, put)

    def stage_copy(self, source_key: str, s3_key: str) -> StagedPut:
        """Stage a server-side copy of an existing object (promotion): no bytes pass through here."""
        accepting = self._accepting_work()
        source = self._retry(self.store.head, source_key, operation="HeadObject")
        if source is None:
            raise TransactionError(
                "Source object does not exist", transaction_id=self.transaction_id, key=source_key
            )
        current = self._retry(self.store.head, s3_key, operation="HeadObject")
        if not accepting or (current is not None and source.md5 is not None and current.md5 == source.md5):
            put = StagedPut(s3_key, None, source.md5 or "", source.size)
        else:
            staged_key = self.staging_root + s3_key
            info = self._retry(self.store.copy, source_key, staged_key, operation="CopyObject")
            put = StagedPut(s3_key, staged_key, info.md5 or "", info.size)
        self.manifest.puts.append(put)
        return put

    def delete(self, s3_key: str) -> None:
        """Delete ``s3_key`` from production when (and only when) the transaction commits."""
        if self._accepting_work():
            self.manifest.deletes.append(s3_key)

    def commit(self) -> None:
        """Validate, durably decide, apply, finish. Raises ValidationError after rolling back."""
        if self.phase is TransactionPhase.COMMITTED or not self._accepting_work():
            return
        self._validate()
        self.checkpoint.update_metadata(
            CheckpointScope.OPERATION,
            journal_key(self.transaction_id),
            {"phase": TransactionPhase.COMMITTING.value, "manifest": self.manifest.to_json()},
        )
        self.phase = TransactionPhase.COMMITTING
        fault_point(AFTER_COMMIT_DECISION)
        try:
            apply_manifest(self.store, self.manifest, self.error_handler, max_workers=self.max_workers)
            finish_transaction(self.checkpoint, self.store, self.transaction_id, self.staging_prefix, self.manifest)
        except Exception as exc:
            raise TransactionError(
                "Commit was decided but could not be finished; production is not yet complete. "
                "The next run (or `osaa-recover reconcile`) rolls it forward",
                category=categorize_error(exc),
                transaction_id=self.transaction_id,
            ) from exc
        self.phase = TransactionPhase.COMMITTED
        _log.info(
            "Transaction %s committed: %d object(s) written, %d unchanged, %d deleted",
            self.transaction_id,
            sum(1 for put in self.manifest.puts if not put.unchanged),
            sum(1 for put in self.manifest.puts if put.unchanged),
            len(self.manifest.deletes),
        )

    def rollback(self, reason: str = "rolled back by caller") -> None:
        """Delete everything staged and record the transaction as rolled back; production is untouched."""
        if self.phase is not TransactionPhase.OPEN:
            if self.phase is TransactionPhase.COMMITTING:
                raise RollbackError(
                    "Cannot roll back a transaction whose commit was decided; it can only be rolled forward",
                    transaction_id=self.transaction_id,
                )
            return
        try:
            roll_back(self.checkpoint, self.store, self.transaction_id, self.staging_prefix, reason, self.manifest)
        finally:
            self.phase = TransactionPhase.ROLLED_BACK

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


def apply_manifest(
    store: ObjectStore,
    manifest: Manifest,
    error_handler: ErrorHandler,
    *,
    resuming: bool = False,
    max_workers: int = 8,
) -> None:
    """Copy staged objects to production and apply deletes; safe to repeat after a crash.

    A live commit knows what it staged. ``resuming`` (roll-forward after a crash) first
    checks each object, since production may already hold it and staging may be gone.
    """

    def apply(put: StagedPut) -> None:
        assert put.staged_key is not None
        staged = ObjectInfo(put.staged_key, put.size, put.md5, None)
        if resuming:
            current = error_handler.execute(store.head, put.key, operation="HeadObject")
            if current is not None and current.md5 == put.md5:
                return
            staged = error_handler.execute(store.head, put.staged_key, operation="HeadObject")
            if staged is None:
                raise TransactionError(
                    "Staged object is missing and production does not hold its content; "
                    "the transaction cannot be rolled forward. Re-run the step that produced it",
                    category=ErrorCategory.PERMANENT,
                    key=put.key,
                    staged_key=put.staged_key,
                )
        error_handler.execute(store.copy, put.staged_key, put.key, staged, operation="CopyObject")
        fault_point(AFTER_PRODUCTION_COPY)

    pending = [put for put in manifest.puts if not put.unchanged]
    with ThreadPoolExecutor(max_workers, thread_name_prefix="osaa-apply") as pool:
        for future in [pool.submit(apply, put) for put in pending]:
            future.result()
    if manifest.deletes:
        error_handler.execute(store.delete_many, manifest.deletes, operation="DeleteObjects")


def _staged_keys(store: ObjectStore, staging: str, manifest: Manifest | None) -> list[str]:
    """What a transaction staged: its manifest when known, else (after a crash) a listing."""
    if manifest is not None:
        return [put.staged_key for put in manifest.puts if put.staged_key is not None]
    return [info.key for info in store.list_prefix(staging)]


def _delete_staging(store: ObjectStore, keys: list[str]) -> list[str]:
    """Delete staged objects; returns the keys that could not be deleted."""
    if not keys:
        return []
    try:
        store.delete_many(keys)
    except Exception:
        _log.warning("Could not delete %d staged object(s)", len(keys), exc_info=True)
        return keys
    return []


def finish_transaction(
    checkpoint: PipelineCheckpoint,
    store: ObjectStore,
    transaction_id: str,
    staging_prefix: str,
    manifest: Manifest,
) -> None:
    """FILE checkpoints completed, staging deleted, journal row committed."""
    tracked = {put.key: put.source_path for put in manifest.puts if put.source_path is not None}
    if tracked:
        done = checkpoint.completed_keys(CheckpointScope.FILE, tracked)
        running = {row["key"] for row in checkpoint.list(CheckpointScope.FILE, CheckpointStatus.IN_PROGRESS)}
        restart = [(key, path) for key, path in tracked.items() if key not in done and key not in running]
        if restart:
            checkpoint.mark_started_many(CheckpointScope.FILE, restart, force=True)
        checkpoint.mark_completed_many(
            CheckpointScope.FILE, [(key, path) for key, path in tracked.items() if key not in done]
        )
    fault_point(BEFORE_STAGING_CLEANUP)
    leftovers = _delete_staging(store, _staged_keys(store, staging_root(staging_prefix, transaction_id), manifest))
    checkpoint.mark_completed(
        CheckpointScope.OPERATION,
        journal_key(transaction_id),
        metadata={"phase": TransactionPhase.COMMITTED.value, "staging_leftovers": leftovers},
    )


def roll_back(
    checkpoint: PipelineCheckpoint,
    store: ObjectStore,
    transaction_id: str,
    staging_prefix: str,
    reason: str,
    manifest: Manifest | None = None,
) -> None:
    """Delete staging and record the rollback; FILE checkpoints of the transaction fail with it."""
    leftovers = _delete_staging(store, _staged_keys(store, staging_root(staging_prefix, transaction_id), manifest))
    for put in (manifest.puts if manifest else []):
        row = checkpoint.get(CheckpointScope.FILE, put.key)
        if row is not None and row["status"] == CheckpointStatus.IN_PROGRESS.value:
            checkpoint.mark_failed(
                CheckpointScope.FILE,
                put.key,
                f"transaction {transaction_id} rolled back: {reason}",
                put.source_path,
                category=ErrorCategory.TRANSIENT,
            )
    checkpoint.mark_failed(
        CheckpointScope.OPERATION,
        journal_key(transaction_id),
        reason,
        metadata={"phase": TransactionPhase.ROLLED_BACK.value, "staging_leftovers": leftovers},
    )
    _log.info("Transaction %s rolled back: %s", transaction_id, reason)
    if leftovers:
        raise RollbackError(
            "Rollback could not delete every staged object; `osaa-recover reconcile` finishes it",
            leftovers=leftovers,
            transaction_id=transaction_id,
        )


@dataclass
class RecoveryReport:
    """What recovery did, per transaction id."""

    rolled_back: list[str] = field(default_factory=list)
    rolled_forward: list[str] = field(default_factory=list)
    cleaned_staging: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def anything_done(self) -> bool:
        return bool(self.rolled_back or self.rolled_forward or self.cleaned_staging or self.failed)


def recover_transactions(
    checkpoint: PipelineCheckpoint,
    store: ObjectStore,
    *,
    error_handler: ErrorHandler | None = None,
    staging_prefix: str | None = None,
    sweep_leftovers: bool = True,
) -> RecoveryReport:
    """Finish what dead processes left: roll open transactions back, committing ones forward.

    Transactions of live owners are left alone. With ``sweep_leftovers``, staged objects that
    an ended transaction could not delete (recorded in its journal row) are deleted too;
    that reads every ended transaction's row, so the automatic recovery at the start of a
    transaction skips it and ``osaa-recover reconcile`` does it.
    """
    error_handler = error_handler or ErrorHandler.from_settings(name="object-storage")
    report = RecoveryReport()
    for row in checkpoint.list(scope=CheckpointScope.OPERATION, status=CheckpointStatus.IN_PROGRESS):
        if not row["key"].startswith(JOURNAL_PREFIX) or not row["interrupted"]:
            continue
        metadata = row.get("metadata") or {}
        if metadata.get("bucket") not in (None, store.bucket):
            continue
        transaction_id = row["key"][len(JOURNAL_PREFIX) :]
        prefix = _staging_prefix_of(metadata, transaction_id, staging_prefix)
        try:
            _recover_one(checkpoint, store, error_handler, transaction_id, prefix, metadata, report)
        except Exception as exc:
            _log.error("Could not recover transaction %s: %s", transaction_id, exc)
            report.failed[transaction_id] = str(exc)
    if not sweep_leftovers:
        return report
    try:
        _sweep_ended_staging(checkpoint, store, report)
    except Exception as exc:
        _log.error("Could not sweep leftover staging areas: %s", exc)
        report.failed["staging"] = str(exc)
    return report


def _staging_prefix_of(metadata: Mapping[str, Any], transaction_id: str, default: str | None) -> str:
    staging = metadata.get("staging")
    if staging and staging.endswith(f"/{transaction_id}/"):
        return staging[: -len(f"/{transaction_id}/")]
    return default or get_settings().storage.staging_prefix


def _recover_one(
    checkpoint: PipelineCheckpoint,
    store: ObjectStore,
    error_handler: ErrorHandler,
    transaction_id: str,
    staging_prefix: str,
    metadata: Mapping[str, Any],
    report: RecoveryReport,
) -> None:
    key = journal_key(transaction_id)
    checkpoint.mark_started(CheckpointScope.OPERATION, key)
    if metadata.get("phase") == TransactionPhase.COMMITTING.value:
        manifest = Manifest.from_json(metadata.get("manifest") or {})
        checkpoint.update_metadata(CheckpointScope.OPERATION, key, dict(metadata))
        apply_manifest(store, manifest, error_handler, resuming=True)
        finish_transaction(checkpoint, store, transaction_id, staging_prefix, manifest)
        report.rolled_forward.append(transaction_id)
        _log.warning("Recovered transaction %s by rolling it forward", transaction_id)
    else:
        checkpoint.update_metadata(CheckpointScope.OPERATION, key, dict(metadata))
        roll_back(checkpoint, store, transaction_id, staging_prefix, "owner died before the commit decision")
        report.rolled_back.append(transaction_id)
        _log.warning("Recovered transaction %s by rolling it back", transaction_id)


def _sweep_ended_staging(checkpoint: PipelineCheckpoint, store: ObjectStore, report: RecoveryReport) -> None:
    """Delete what an ended transaction's cleanup could not, as its journal row recorded.

    Driven by the journal, not by listing the staging prefix: other parts of the package
    keep outputs under it too, and a listing would grow with them.
    """
    for status in (CheckpointStatus.COMPLETED, CheckpointStatus.FAILED):
        for row in iter_transactions(checkpoint, status):
            leftovers = (row.get("metadata") or {}).get("staging_leftovers") or []
            if leftovers and not _delete_staging(store, list(leftovers)):
                checkpoint.update_metadata(CheckpointScope.OPERATION, row["key"], {"staging_leftovers": []})
                report.cleaned_staging.append(row["key"][len(JOURNAL_PREFIX) :])


def iter_transactions(checkpoint: PipelineCheckpoint, status: CheckpointStatus | None = None) -> Iterable[dict[str, Any]]:
    """Journal rows of this checkpoint's pipeline (for `osaa-recover transactions`)."""
    for row in checkpoint.list(scope=CheckpointScope.OPERATION, status=status):
        if row["key"].startswith(JOURNAL_PREFIX):
            yield row
