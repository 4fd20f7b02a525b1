"""Promotion: make one prefix an exact copy of another, in one transaction.

Every source object is staged as a server-side copy (objects whose target already has the
same content are skipped), target objects absent from the source are staged for deletion,
and the transaction commits all of it or none (DESIGN section 7). The journal row records
the operation, so a promotion that was rolled back can be applied again under its own
transaction id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.exceptions import ConfigurationError
from sqlmesh_osaa.settings import OsaaSettings
from sqlmesh_osaa.storage import ObjectInfo, ObjectStore
from sqlmesh_osaa.transaction_manager import TransactionManager, journal_key

OPERATION = "promote"


class PromotionRefusedError(ConfigurationError):
    """The promotion as asked could damage the bucket, so nothing was done."""


class EmptySourceError(PromotionRefusedError):
    """The source holds no object: promoting it would empty the target, so it needs ``allow_empty``."""


@dataclass
class PromotionResult:
    """What a promotion did (or, in a dry run, would do); keys are full target keys."""

    source: str
    target: str
    transaction_id: str | None = None
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def _prefix(value: str, staging_prefix: str, role: str) -> str:
    prefix = value.strip("/")
    if not prefix or ".." in prefix.split("/"):
        raise PromotionRefusedError(f"The {role} must be a non-empty prefix without '..', got {value!r}")
    if (prefix + "/").startswith(staging_prefix.strip("/") + "/"):
        raise PromotionRefusedError(f"The {role} {value!r} lies in the staging area {staging_prefix!r}, which transactions own")
    return prefix + "/"


def check_prefixes(source: str, target: str, staging_prefix: str) -> tuple[str, str]:
    """Normalised ``source/`` and ``target/``; refuses prefixes that overlap each other or staging."""
    source, target = _prefix(source, staging_prefix, "source"), _prefix(target, staging_prefix, "target")
    if source.startswith(target) or target.startswith(source):
        raise PromotionRefusedError(f"Source {source!r} and target {target!r} overlap; promote between disjoint prefixes")
    return source, target


def _plan(sources: dict[str, ObjectInfo], targets: dict[str, ObjectInfo], result: PromotionResult) -> PromotionResult:
    """A dry run: the same lists a commit would give, judged by the listed checksums."""
    for relative, info in sorted(sources.items()):
        same = relative in targets and info.md5 is not None and targets[relative].md5 == info.md5
        (result.unchanged if same else result.copied).append(result.target + relative)
    result.deleted = [result.target + relative for relative in sorted(set(targets) - set(sources))]
    return result


def promote_prefix(
    store: ObjectStore,
    checkpoint: PipelineCheckpoint,
    settings: OsaaSettings,
    source: str,
    target: str,
    *,
    transaction_id: str | None = None,
    dry_run: bool = False,
    allow_empty: bool = False,
) -> PromotionResult:
    """Copy ``source/`` onto ``target/`` and delete what the source lacks, all or nothing.

    Raises :class:`PromotionRefusedError` before touching anything when the prefixes are
    unsafe or (without ``allow_empty``) the source is empty.
    """
    source, target = check_prefixes(source, target, settings.storage.staging_prefix)
    sources = {info.key[len(source) :]: info for info in store.list_prefix(source)}
    if not sources and not allow_empty:
        raise EmptySourceError(
            f"Source prefix {source!r} is empty in bucket {store.bucket!r}: promoting it would delete every object under {target!r}"
        )
    targets = {info.key[len(target) :]: info for info in store.list_prefix(target)}
    result = PromotionResult(source, target, transaction_id)
    if dry_run:
        return _plan(sources, targets, result)
    txn = TransactionManager(
        store=store,
        checkpoint=checkpoint,
        settings=settings,
        transaction_id=transaction_id,
        error_handler=ErrorHandler.from_settings(settings, name="object-storage"),
    )
    txn.begin()
    result.transaction_id = txn.transaction_id
    checkpoint.update_metadata(
        CheckpointScope.OPERATION, journal_key(txn.transaction_id), {"operation": OPERATION, "from": source, "to": target}
    )
    with txn:
        for relative in sorted(sources):
            put = txn.stage_copy(source + relative, target + relative)
            (result.unchanged if put.unchanged else result.copied).append(put.key)
        for relative in sorted(set(targets) - set(sources)):
            txn.delete(target + relative)
            result.deleted.append(target + relative)
    return result
