"""The commit protocol: decide in the commit log, apply to stable keys, finish, recover.

A transaction has uploaded its objects as immutable versions (``_osaa/versions/<id>/``),
each batch of files named there first (``STAGED_FILES``), and holds a marker; then
(docs/recovery.md tells the whole story):

1. **decide** — its entry (full manifest, the snapshot it leaves) is written at the next
   free log position with If-None-Match. A position taken by a commit of an overlapping key
   since the transaction began means :class:`TransactionConflictError`, nothing applied; a
   disjoint winner means trying the next position. Written = committed: snapshot readers see
   the new set from here on;
2. **apply** — server-side copy of each version to its stable key, then the deletes, after
   any live earlier decision of the same keys has finished applying;
3. **finish** — FILE checkpoints started and completed with the fingerprints the manifest
   carries (staging writes none), the names of the staged files deleted, the pointer moved,
   versions no retained snapshot names deleted, the marker deleted.

Recovery reads only the store: a dead owner's decided transaction is rolled forward (each
version verified against the manifest's checksum; keys a later commit took are skipped, so
a stale decision never lands over a newer one); an undecided one is fenced out of the log
by an abort entry, the FILE checkpoints of the files it named fail, and its versions are
deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus, Fingerprint, ItemChange, PipelineCheckpoint
from sqlmesh_osaa.commit_log import (
    _ACTIVE,
    VERSIONS_PREFIX,
    CommitLog,
    Entry,
    Marker,
    Owner,
    new_entry,
)
from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.exceptions import (
    ErrorCategory,
    PreconditionFailedError,
    TransactionConflictError,
    TransactionError,
)
from sqlmesh_osaa.fault_points import AFTER_PRODUCTION_COPY, BEFORE_STAGING_CLEANUP, fault_point
from sqlmesh_osaa.storage import ObjectInfo, ObjectStore, map_requests, store_metadata

_log = logging.getLogger(__name__)

JOURNAL_PREFIX = "transaction/"
_ROW_PUT_FIELDS = ("key", "md5", "size")
# How long a commit waits for a live earlier decision of the same keys to finish applying.
APPLY_WAIT_SECONDS = 600.0
# FILE checkpoints completed per checkpoint transaction after a commit: bounds the batch's memory.
COMPLETION_BATCH = 1000
_POLL_SECONDS = 0.2
# A dead attempt's tombstone outlives any request it could still have in flight.
TOMBSTONE_SECONDS = 3600.0


def journal_key(transaction_id: str) -> str:
    """The OPERATION checkpoint key of a transaction (history and statistics)."""
    return f"{JOURNAL_PREFIX}{transaction_id}"


@dataclass(frozen=True, slots=True)
class StagedPut:
    """One object of the manifest: its stable key, the version that holds it, what it must hash to."""

    key: str
    staged_key: str | None
    md5: str
    size: int
    source_path: str | None = None
    version: str | None = None
    fingerprint: Fingerprint | None = None

    @property
    def unchanged(self) -> bool:
        """Production already holds this content: nothing was staged, nothing is copied."""
        return self.staged_key is None

    def to_json(self) -> dict[str, Any]:
        """Field by field: ``asdict`` deep-copies, and a manifest holds one put per ingested file."""
        fingerprint = self.fingerprint
        return {
            "key": self.key,
            "staged_key": self.staged_key,
            "md5": self.md5,
            "size": self.size,
            "source_path": self.source_path,
            "version": self.version,
            "fingerprint": fingerprint._asdict() if fingerprint else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StagedPut:
        fingerprint = data.get("fingerprint")
        return cls(**{**data, "fingerprint": Fingerprint(**fingerprint) if fingerprint else None})


class PutRecords(Sequence[dict[str, Any]]):
    """A manifest's puts as its log entry holds them, each record built when it is read.

    A decision of every ingested file would otherwise hold a dict per put (and one per
    fingerprint) from the decision to the end of the commit, beside the puts themselves
    (docs/performance.md, "Ingest"). Equal to any sequence of the same records.
    """

    __slots__ = ("_puts",)

    def __init__(self, puts: Sequence[StagedPut]) -> None:
        self._puts = tuple(puts)

    def __len__(self) -> int:
        return len(self._puts)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [put.to_json() for put in self._puts[index]]
        return self._puts[index].to_json()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (put.to_json() for put in self._puts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(mine == theirs for mine, theirs in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PutRecords({len(self)} puts)"


@dataclass
class Manifest:
    """What a transaction will do to production once decided."""

    puts: list[StagedPut] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)

    @property
    def touched(self) -> set[str]:
        return {put.key for put in self.puts} | set(self.deletes)

    def to_json(self) -> dict[str, Any]:
        return {"puts": [put.to_json() for put in self.puts], "deletes": list(self.deletes)}


def decide(log: CommitLog, transaction_id: str, begin: int, manifest: Manifest) -> Entry:
    """Take the next free log position after ``begin``, or raise when an overlapping commit won one."""
    position, base = begin + 1, log.snapshot(begin)
    puts = PutRecords(manifest.puts)
    while True:
        entry = new_entry(position, transaction_id, base, puts, list(manifest.deletes))
        holder = log.try_append(entry)
        if holder is None:
            return entry
        contested = sorted(holder.touched & manifest.touched)
        if contested:
            raise TransactionConflictError(
                f"Transaction {holder.transaction_id} committed {contested[0]!r} first (log position "
                f"{holder.position}); nothing of this transaction was applied. Run the step again on top of it",
                key=contested[0],
                winner=holder.transaction_id,
                transaction_id=transaction_id,
                contested=len(contested),
            )
        _log.info("Log position %d went to disjoint transaction %s; trying %d", position, holder.transaction_id,
                  position + 1)
        base, position = dict(holder.snapshot), position + 1


def await_earlier(log: CommitLog, entry: Entry, *, timeout: float = APPLY_WAIT_SECONDS) -> None:
    """Wait until no live transaction decided before ``entry`` is still applying one of its keys.

    A dead one is left to recovery: its roll-forward skips the keys ``entry`` supersedes.
    """
    deadline = time.monotonic() + timeout
    while True:
        blocking = [m for m in log.markers(besides=entry.transaction_id) if _applies_before(log, m, entry)]
        if not blocking:
            return
        if time.monotonic() > deadline:
            other = blocking[0]
            raise TransactionConflictError(
                f"Transaction {other.transaction_id} (PID {other.owner.pid} on {other.owner.host}) is still applying "
                f"keys of this commit after {timeout:g}s; this commit is decided and is finished by recovery",
                winner=other.transaction_id,
                transaction_id=entry.transaction_id,
            )
        time.sleep(_POLL_SECONDS)


def _applies_before(log: CommitLog, marker: Marker, entry: Entry) -> bool:
    if marker.transaction_id == entry.transaction_id or marker.begin >= entry.position:
        return False
    if not marker.owner_alive():
        return False
    decision = log.entry(marker.position) if marker.position else log.find_decision(marker.transaction_id, marker.begin)
    return (
        decision is not None
        and decision.kind == "commit"
        and decision.position < entry.position
        and bool(decision.touched & entry.touched)
    )


def apply_entry(
    store: ObjectStore,
    entry: Entry,
    handler: ErrorHandler,
    *,
    skip: Iterable[str] = (),
    resuming: bool = False,
    max_workers: int = 8,
) -> None:
    """Copy a decision's versions to their stable keys and apply its deletes; safe to repeat.

    ``resuming`` (roll-forward) first checks production, which may already hold an object,
    and refuses a version whose checksum is not the manifest's.
    """
    skipped = set(skip)
    deletes = [key for key in entry.deletes if key not in skipped]

    def apply(index: int) -> None:
        put = StagedPut.from_json(entry.puts[index])
        assert put.staged_key is not None
        source = ObjectInfo(put.staged_key, put.size, put.md5, None)
        if resuming:
            current = handler.execute(store.head, put.key, operation="HeadObject")
            if current is not None and current.md5 == put.md5:
                return
            source = _verified_version(store, handler, put, entry.transaction_id)
        handler.execute(store.copy, put.staged_key, put.key, source, operation="CopyObject")
        fault_point(AFTER_PRODUCTION_COPY)

    # The entry's puts by position, each read when applied: a manifest of every file is not copied again.
    pending = [
        index for index, put in enumerate(entry.puts) if put.get("staged_key") is not None and put["key"] not in skipped
    ]
    # The copies are flushed together before finish() deletes the versions they came from.
    with store.deferred_durability():
        map_requests(store, apply, pending, max_workers, "osaa-apply")
    handler.execute(store.sync, operation="Sync")
    if deletes:
        handler.execute(store.delete_many, deletes, operation="DeleteObjects")


def _verified_version(store: ObjectStore, handler: ErrorHandler, put: StagedPut, transaction_id: str) -> ObjectInfo:
    assert put.staged_key is not None
    staged = handler.execute(store.head, put.staged_key, operation="HeadObject")
    if staged is None:
        raise TransactionError(
            "Staged version is missing and production does not hold its content; the transaction cannot be "
            "rolled forward. Re-run the step that produced it",
            category=ErrorCategory.PERMANENT, key=put.key, staged_key=put.staged_key, transaction_id=transaction_id,
        )
    if staged.size != put.size or staged.md5 != put.md5:
        raise TransactionError(
            f"Staged version does not match the decision's manifest (size {staged.size}, md5 {staged.md5}; "
            f"manifest: size {put.size}, md5 {put.md5}); refusing to copy it to production. Re-run the step "
            "that produced it",
            category=ErrorCategory.PERMANENT, key=put.key, staged_key=put.staged_key, transaction_id=transaction_id,
        )
    return staged


def complete_files(checkpoint: PipelineCheckpoint, store: ObjectStore, puts: Sequence[Mapping[str, Any]]) -> None:
    """FILE checkpoints completed with the fingerprint of the content production now holds, and its store.

    ``puts`` is the manifest as its log entry holds it; a key put twice completes with its last
    put. The rows are completed a batch at a time, and only a batch's records are held at once:
    production holds every object already, so a crash between batches leaves completed rows that
    are all true, and recovery completes the rest from the same entry.
    """
    last = {put["key"]: index for index, put in enumerate(puts) if put.get("source_path") is not None}
    where = store_metadata(store)
    batch: list[Mapping[str, Any]] = []
    # The work is done by now: what the batches free goes back to the system at once, not on top of the next batch.
    with checkpoint.returning_memory():
        for index in sorted(last.values()):
            batch.append(puts[index])
            if len(batch) == COMPLETION_BATCH:
                _complete_batch(checkpoint, where, batch)
                batch = []
        if batch:
            _complete_batch(checkpoint, where, batch)


def _complete_batch(checkpoint: PipelineCheckpoint, where: Mapping[str, str], puts: Sequence[Mapping[str, Any]]) -> None:
    """Start (staging wrote no row) and complete the batch's files, but those already completed as the manifest says.

    A row completed with the put's fingerprint was written by this commit before a crash, or
    says the same already: it is left. Any other row is started again, so a key an earlier
    transaction completed gets this one's attempt and fingerprint; started and completed in
    one write (a row in progress is only completed).
    """
    recorded = checkpoint.recorded_fingerprints(CheckpointScope.FILE, [put["key"] for put in puts], metadata=where)
    todo = [put for put in puts if not _completed_as_put(recorded.get(put["key"]), put)]
    in_progress = {key for key, (status, _) in recorded.items() if status == CheckpointStatus.IN_PROGRESS.value}
    resumed = [_completion(put) for put in todo if put["key"] in in_progress]
    if resumed:
        checkpoint.mark_completed_many(CheckpointScope.FILE, resumed, metadata=where)
    fresh = [_completion(put) for put in todo if put["key"] not in in_progress]
    if fresh:
        checkpoint.mark_completed_many(CheckpointScope.FILE, fresh, metadata=where, start_first=True)


def _completed_as_put(recorded: tuple[str, Fingerprint] | None, put: Mapping[str, Any]) -> bool:
    if recorded is None or recorded[0] != CheckpointStatus.COMPLETED.value or put.get("fingerprint") is None:
        return False
    return recorded[1] == Fingerprint(**put["fingerprint"])


def _completion(put: Mapping[str, Any]) -> tuple[Any, ...]:
    fingerprint = put.get("fingerprint")
    if fingerprint is None:
        return (put["key"], put["source_path"])
    return (put["key"], put["source_path"], Fingerprint(**fingerprint))


def fail_files(checkpoint: PipelineCheckpoint, files: Iterable[tuple[str, str]], message: str) -> None:
    """FILE checkpoints of files a rolled-back attempt staged, failed with ``message`` (a key named twice: its last path).

    Staging wrote no row for them, so each is started first; a batch at a time, as completions.
    """
    paths = dict(files)
    keys = list(paths)
    for start in range(0, len(keys), COMPLETION_BATCH):
        batch = keys[start : start + COMPLETION_BATCH]
        checkpoint.mark_started_many(CheckpointScope.FILE, [(key, paths[key]) for key in batch], force=True)
        checkpoint.record_changes(
            CheckpointScope.FILE,
            [ItemChange(key, CheckpointStatus.FAILED, error_message=message, category=ErrorCategory.TRANSIENT) for key in batch],
        )


def finish(log: CommitLog, entry: Entry, checkpoint: PipelineCheckpoint | None, versions_root: str) -> None:
    """After apply: checkpoints, pointer, garbage, marker — each failure here only costs a later retry."""
    if checkpoint is not None:
        complete_files(checkpoint, log.store, entry.puts)
    log.forget_staged_files(versions_root)
    fault_point(BEFORE_STAGING_CLEANUP)
    log.move_head(entry.position)
    log.collect_replaced(entry.position)
    log.delete_marker(entry.transaction_id)
    if checkpoint is not None and checkpoint.get(CheckpointScope.OPERATION, journal_key(entry.transaction_id)):
        _end_row(checkpoint, entry.transaction_id, entry)


def clean_transaction_area(log: CommitLog, root: str) -> int:
    """Remove what an uncommitted attempt left under its versions root; returns how many leftovers went.

    The one place that empties a dead or rolled-back transaction's staging: its versions, then
    the store's incomplete writes there (temp files of killed local writes, incomplete S3
    multipart uploads). Called only once no writer of the attempt is alive.
    """
    removed = log.delete_versions(root)
    return removed + log.handler.execute(log.store.remove_incomplete, root, operation="RemoveIncomplete")


def _end_row(checkpoint: PipelineCheckpoint, transaction_id: str, entry: Entry | None, reason: str = "") -> None:
    key = journal_key(transaction_id)
    row = checkpoint.get(CheckpointScope.OPERATION, key)
    if row is not None and row["status"] != CheckpointStatus.IN_PROGRESS.value:
        return
    if row is None or row["interrupted"]:
        checkpoint.mark_started(CheckpointScope.OPERATION, key, force=True)
    if entry is not None:
        checkpoint.mark_completed(CheckpointScope.OPERATION, key, metadata=committed_row(entry))
    else:
        checkpoint.mark_failed(CheckpointScope.OPERATION, key, reason, metadata={"phase": "rolled_back"})


def committed_row(entry: Entry) -> dict[str, Any]:
    """What a decided transaction's checkpoint row keeps: the log position of its decision and its counts.

    The decision's entry at ``position`` holds the manifest (each key with its version, MD5
    and size), and log entries are never deleted, so the row does not repeat it: a manifest
    of every ingested file written into a row and its event was the peak of a first ingest
    (docs/performance.md, "Ingest"). Its readers (``osaa-recover verify`` and
    ``transactions``, failure notifications) read the entry or the counts; a row written
    before this still holds ``manifest`` and is read as before.
    """
    return {"phase": "committed", "position": entry.position, "puts": len(entry.puts), "deletes": len(entry.deletes)}


def row_puts(metadata: Mapping[str, Any], log: CommitLog) -> Iterable[Mapping[str, Any]]:
    """The puts of a committed transaction's row (key, MD5, size): its ``manifest``, else its decision's entry."""
    manifest = metadata.get("manifest")
    if manifest is not None:
        return manifest.get("puts", [])
    position = metadata.get("position")
    entry = log.entry(int(position)) if position else None
    return entry.puts if entry is not None and entry.kind == "commit" else []


def row_manifest(puts: Iterable[Mapping[str, Any]], deletes: Iterable[str]) -> dict[str, Any]:
    """What the row of a transaction that changed nothing keeps of its manifest: each key with its MD5 and size.

    Such a transaction writes no log entry for its row to name (a decided one keeps
    :func:`committed_row`); its readers are those of :func:`row_puts`.
    """
    return {"puts": [{name: put[name] for name in _ROW_PUT_FIELDS} for put in puts], "deletes": list(deletes)}


@dataclass
class RecoveryReport:
    """What recovery did, per transaction id."""

    rolled_back: list[str] = field(default_factory=list)
    rolled_forward: list[str] = field(default_factory=list)
    cleaned_staging: list[str] = field(default_factory=list)
    superseded: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def anything_done(self) -> bool:
        return bool(self.rolled_back or self.rolled_forward or self.cleaned_staging or self.failed)


def recover_store(
    log: CommitLog, checkpoint: PipelineCheckpoint | None, report: RecoveryReport, *, max_workers: int = 8
) -> dict[str, Entry | None]:
    """Finish every dead owner's transaction found in the store; returns each one's decision (or None)."""
    outcomes: dict[str, Entry | None] = {}
    for root, age in log.tombstones():
        _sweep_tombstone(log, root, age, report)
    for marker in log.markers():
        if marker.owner_alive():
            continue
        try:
            claimed = log.update_marker(marker, owner=Owner.this_process(), heartbeat_at=time.time())
        except PreconditionFailedError:
            continue
        _ACTIVE.add(marker.transaction_id)
        try:
            outcomes[marker.transaction_id] = _recover_one(log, claimed, checkpoint, report, max_workers)
        except Exception as exc:
            _log.error("Could not recover transaction %s: %s", marker.transaction_id, exc)
            report.failed[marker.transaction_id] = str(exc)
        finally:
            _ACTIVE.discard(marker.transaction_id)
    return outcomes


def _recover_one(
    log: CommitLog, marker: Marker, checkpoint: PipelineCheckpoint | None, report: RecoveryReport, max_workers: int
) -> Entry | None:
    decision = log.entry(marker.position) if marker.position else _fence(log, marker)
    own = checkpoint if checkpoint is not None and checkpoint.pipeline_name == marker.pipeline else None
    if decision is None:
        reason = "owner died before the commit decision"
        log.bury(marker.versions)
        if own is not None:
            fail_files(own, log.staged_files(marker.versions), f"transaction {marker.transaction_id} rolled back: {reason}")
        clean_transaction_area(log, marker.versions)
        log.delete_marker(marker.transaction_id)
        if own is not None:
            _end_row(own, marker.transaction_id, None, reason)
        report.rolled_back.append(marker.transaction_id)
        _log.warning("Recovered transaction %s by rolling it back", marker.transaction_id)
        return None
    superseded = sorted(log.later_keys(decision.position) & decision.touched)
    apply_entry(log.store, decision, log.handler, skip=superseded, resuming=True, max_workers=max_workers)
    finish(log, decision, own, marker.versions)
    report.rolled_forward.append(marker.transaction_id)
    if superseded:
        report.superseded[marker.transaction_id] = superseded
    _log.warning(
        "Recovered transaction %s by rolling it forward%s", marker.transaction_id,
        f"; {len(superseded)} key(s) superseded by later commits were left as they are" if superseded else "",
    )
    return decision


def _fence(log: CommitLog, marker: Marker) -> Entry | None:
    """The dead transaction's decision, or None after an abort entry made sure it can never land.

    Its owner tried positions one after another, each only once the previous was taken, so
    its decision (if any) is at or before the first free position after it began; taking that
    position with an abort settles it.
    """
    position = marker.begin
    while True:
        entry = log.entry(position + 1)
        if entry is None:
            abort = new_entry(position + 1, marker.transaction_id, log.snapshot(position), [], [], kind="abort")
            entry = log.try_append(abort) or abort
        if entry.transaction_id == marker.transaction_id:
            return entry if entry.kind == "commit" else None
        position += 1


def _sweep_tombstone(log: CommitLog, root: str, age: float, report: RecoveryReport) -> None:
    """A late write of a rolled-back attempt lands in its versions root: delete it; forget old tombstones."""
    try:
        if clean_transaction_area(log, root):
            report.cleaned_staging.append(root)
        if age > TOMBSTONE_SECONDS:
            log.forget_tombstone(root)
    except Exception as exc:
        report.failed[root] = str(exc)


def sweep_unreferenced(log: CommitLog, report: RecoveryReport) -> None:
    """Delete versions no retained snapshot names and no transaction in flight owns.

    Listed before the markers are read: a live attempt writes its marker before its first
    version, so every version listed belongs to a marker read afterwards, or to nobody.
    """
    listed = log.list_versions()
    roots = {marker.versions for marker in log.markers()}
    retained = log.retained_versions()
    orphans = [key for key in listed if key not in retained and not any(key.startswith(root) for root in roots)]
    if orphans:
        log.store_delete(orphans)
        report.cleaned_staging.extend(sorted({key[: key.index("/", len(VERSIONS_PREFIX)) + 1] for key in orphans}))


def settle_checkpoint(
    checkpoint: PipelineCheckpoint, log: CommitLog, outcomes: Mapping[str, Entry | None]
) -> None:
    """Make the checkpoint's interrupted transaction rows agree with what the store holds."""
    for row in checkpoint.list(scope=CheckpointScope.OPERATION, status=CheckpointStatus.IN_PROGRESS):
        if not row["key"].startswith(JOURNAL_PREFIX) or not row["interrupted"]:
            continue
        metadata = row.get("metadata") or {}
        if metadata.get("bucket") not in (None, log.store.bucket):
            continue
        transaction_id = row["key"][len(JOURNAL_PREFIX) :]
        if transaction_id in outcomes:
            decision = outcomes[transaction_id]
        elif log.marker(transaction_id) is not None:
            continue
        else:
            found = log.find_decision(transaction_id, int(metadata.get("begin") or 0))
            decision = found if found is not None and found.kind == "commit" else None
        if decision is not None:
            complete_files(checkpoint, log.store, decision.puts)
        _end_row(checkpoint, transaction_id, decision, "owner died before the commit decision")


def decision_history(log: CommitLog, limit: int = 20) -> list[dict[str, Any]]:
    """The latest log entries, newest first, each with the keys later commits superseded."""
    head = log.head()
    later: set[str] = set()
    rows = []
    in_flight = {m.transaction_id for m in log.markers()}
    for position in range(head, max(0, head - limit), -1):
        entry = log.entry(position)
        if entry is None:
            continue
        superseded = sorted(entry.touched & later)
        rows.append(
            {
                "position": position,
                "kind": entry.kind,
                "transaction_id": entry.transaction_id,
                "at": entry.at,
                "puts": len(entry.puts),
                "deletes": len(entry.deletes),
                "superseded": superseded,
                "state": "superseded" if superseded and superseded == sorted(entry.touched) else
                ("applying" if entry.transaction_id in in_flight else
                 ("aborted" if entry.kind == "abort" else "applied")),
            }
        )
        later |= entry.touched
    return rows
