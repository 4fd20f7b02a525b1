"""Publishing an environment's audited outputs: object storage follows SQLMesh state.

For every snapshot of the environment whose model stages outputs, the newest staged
interval that state records (its blocking audits passed) is copied to
``<environment prefix>/<key>``. Nothing else ever is (P1). All changes of one publication
go through one transaction whose id is derived from what it writes and what it replaces,
so re-running a publication that crashed rolls it forward and re-running one that
finished is a no-op; objects whose published copy already has the staged MD5 are skipped
without a transaction. A snapshot none of whose intervals is recorded publishes nothing,
so the prefix keeps what it held before (P2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from sqlmesh.core.snapshot import Snapshot
from sqlmesh.core.state_sync import StateSync

from sqlmesh_osaa.exceptions import ErrorCategory, TransactionError
from sqlmesh_osaa.integration import state
from sqlmesh_osaa.integration.runtime import Runtime
from sqlmesh_osaa.integration.staged_outputs import (
    StagedOutput,
    output_prefixes,
    parse_interval,
    read_manifest,
    table_dir,
    table_version,
)
from sqlmesh_osaa.transaction_manager import TransactionManager, TransactionPhase

_log = logging.getLogger(__name__)


@dataclass
class Publication:
    """What publishing one environment did."""

    environment: str
    prefix: str
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # Models of the environment with no recorded, staged output to publish.
    nothing_recorded: list[str] = field(default_factory=list)
    transaction_id: str | None = None
    # Published key -> the staged object it holds (names the evaluation that produced it).
    sources: dict[str, str] = field(default_factory=dict)


def newest_recorded_output(rt: Runtime, snapshot: Snapshot, deployable: bool) -> StagedOutput | None:
    """The sealed staged output of the newest interval state records for this snapshot's table."""
    intervals = state.recorded(snapshot, deployable)
    if not intervals:
        return None
    version = table_version(snapshot, deployable)
    root = table_dir(rt.settings.storage.staging_prefix, snapshot.model.name, version, deployable)
    candidates = []
    for prefix, sealed in output_prefixes(rt.store, root, depth=1):
        interval = parse_interval(prefix)
        if sealed and interval is not None and state.covered(interval, intervals):
            candidates.append((interval[1], interval[0], prefix))
    for _, _, prefix in sorted(candidates, reverse=True):
        output = read_manifest(rt.store, prefix, rt.error_handler)
        if output is not None:
            return output
    return None


def publish_environment(
    rt: Runtime, state_sync: StateSync, environment: str, snapshots: Iterable[Snapshot]
) -> Publication:
    """Make ``environment``'s prefix hold the newest audited output of each of its snapshots."""
    prefix = rt.env_prefix(environment)
    publication = Publication(environment=environment, prefix=prefix)
    snapshots = list(snapshots)
    if not any(state.publishes(snapshot) for snapshot in snapshots):
        # Nothing to publish: spare the read of every snapshot's intervals from state.
        return publication
    env_snapshots = state.fresh(state_sync, snapshots)
    index = state.deployability(environment, {s.snapshot_id: s for s in env_snapshots})
    puts: dict[str, tuple[str, str]] = {}
    deletes: list[str] = []
    for snapshot in sorted(env_snapshots, key=lambda s: s.name):
        if not state.publishes(snapshot):
            continue
        output = newest_recorded_output(rt, snapshot, index.is_representative(snapshot))
        if output is None:
            publication.nothing_recorded.append(snapshot.model.name)
            continue
        for key, md5 in sorted(output.objects.items()):
            puts[_join(prefix, key)] = (output.staged_key(key), md5)
            publication.sources[_join(prefix, key)] = output.staged_key(key)
        if output.owned_prefix:
            keep = {_join(prefix, key) for key in output.objects}
            deletes.extend(_stale(rt, _join(prefix, output.owned_prefix), keep))
    changed = {}
    for destination, (staged, md5) in puts.items():
        current = rt.error_handler.execute(rt.store.head, destination, operation="HeadObject")
        if current is not None and current.md5 == md5:
            publication.unchanged.append(destination)
        else:
            _check_staged(rt, staged, md5)
            changed[destination] = (staged, md5, current.md5 if current else None)
    if changed or deletes:
        _commit(rt, publication, changed, deletes)
    _log.info(
        "Published %s to %s/: %d written, %d unchanged, %d deleted",
        environment, prefix, len(publication.written), len(publication.unchanged), len(publication.deleted),
    )
    return publication


def _check_staged(rt: Runtime, staged: str, md5: str) -> None:
    """Publish only the bytes the manifest vouches for (an evaluation killed while re-staging may differ)."""
    info = rt.error_handler.execute(rt.store.head, staged, operation="HeadObject")
    if info is None or info.md5 != md5:
        raise TransactionError(
            "Staged object does not match its manifest; it is not published. "
            "Re-evaluate the model (e.g. sqlmesh plan --restate-model) to stage it again",
            category=ErrorCategory.PERMANENT,
            staged_key=staged,
            expected_md5=md5,
            found_md5=info.md5 if info else None,
        )


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


def _stale(rt: Runtime, owned: str, keep: set[str]) -> list[str]:
    return sorted(info.key for info in rt.store.list_prefix(owned) if info.key not in keep)


def transaction_id_for(prefix: str, changed: Mapping[str, tuple[str, str, str | None]], deletes: list[str]) -> str:
    """Same writes over the same previous content -> same id (idempotent); anything else -> a new one."""
    puts = sorted((key, new_md5, old_md5) for key, (_, new_md5, old_md5) in changed.items())
    document = {"prefix": prefix, "puts": puts, "deletes": sorted(deletes)}
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode("utf-8")).hexdigest()
    return f"publish-{digest[:32]}"


def _commit(
    rt: Runtime, publication: Publication, changed: dict[str, tuple[str, str, str | None]], deletes: list[str]
) -> None:
    transaction_id = transaction_id_for(publication.prefix, changed, deletes)
    transaction = _open_transaction(rt, transaction_id)
    if transaction.phase is TransactionPhase.COMMITTED:
        # This exact change committed before and was undone since (v2 promoted, rolled back, promoted again).
        transaction = _open_transaction(rt, f"{transaction_id}-{uuid.uuid4().hex[:8]}")
    publication.transaction_id = transaction.transaction_id
    with transaction:
        for destination, (staged, _, _) in sorted(changed.items()):
            transaction.stage_copy(staged, destination)
        for key in deletes:
            transaction.delete(key)
    publication.written.extend(sorted(changed))
    publication.deleted.extend(deletes)


def _open_transaction(rt: Runtime, transaction_id: str) -> TransactionManager:
    transaction = TransactionManager(
        store=rt.store,
        checkpoint=rt.checkpoint,
        transaction_id=transaction_id,
        error_handler=rt.error_handler,
        settings=rt.settings,
        recover=False,
    )
    transaction.begin()
    return transaction
