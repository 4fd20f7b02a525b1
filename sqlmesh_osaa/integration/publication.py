"""Publishing: object storage follows SQLMesh state, one environment at a time.

For each snapshot of an environment whose model is an osaa kind, the environment publishes
the staged output of the latest evaluation of its physical table that passed its audits
(an audit marker, or SQLMesh's own interval records: ``audit_evidence.py``) and whose
interval state still records. Both kinds' evaluations hold the table's whole content, so
the latest one is what the environment's view reads: a restatement that ran after a
``sqlmesh run`` interval wins over it, and an evaluation killed before its audits never
counts. Nothing else ever reaches an environment prefix (P1); a model with no audited output
keeps what the prefix held (P2).

What was published is recorded per environment and model in a *publication record*, a copy
of the published output's manifest at::

    <staging_prefix>/publications/<environment>/<model>/<evaluation>.json

so a catch-up costs one listing of the records plus one listing per osaa table, and reads
no object when nothing changed. Records also scope deletions: a removed model, a changed
``key``/``source`` or an environment gone from state removes exactly the objects its record
lists, and only while they still hold the content we published; objects other writers put
under the prefix (``osaa-ingest``, ``osaa-promote``) are never touched. Every change of one
environment (copies, deletions, the record swap) is one ``TransactionManager`` transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from sqlmesh.core import constants as sqlmesh_constants
from sqlmesh.core.snapshot import Snapshot
from sqlmesh.core.state_sync import StateSync

from sqlmesh_osaa.integration import audit_evidence, state
from sqlmesh_osaa.integration.runtime import Runtime
from sqlmesh_osaa.integration.staged_outputs import (
    MANIFEST_NAME,
    EvaluationDir,
    StagedOutput,
    evaluation_dirs,
    get_json,
    latest_first,
    mark_audited,
    read_manifest,
    safe_name,
    table_dir,
    table_version,
)
from sqlmesh_osaa.transaction_manager import TransactionManager, TransactionPhase

_log = logging.getLogger(__name__)

PUBLICATIONS_DIR = "publications"
NO_INTERVAL = "no interval recorded in state"
NO_AUDITED_OUTPUT = "no staged output of this table passed its audits (audit failed, or intervals recorded without evaluation)"


@dataclass
class Publication:
    """What publishing one environment did."""

    environment: str
    prefix: str
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # Models of the environment with nothing audited to publish, and why (the prefix keeps what it held).
    held_back: dict[str, str] = field(default_factory=dict)
    transaction_id: str | None = None
    # Published key -> the staged object it was copied from (names the evaluation that produced it).
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def nothing_recorded(self) -> list[str]:
        return sorted(self.held_back)

    @property
    def changed(self) -> bool:
        return bool(self.written or self.deleted)


@dataclass(frozen=True)
class Record:
    """A publication record: which evaluation of a model an environment holds."""

    environment: str
    model: str
    evaluation: str
    key: str


def publications_root(rt: Runtime) -> str:
    return f"{rt.settings.storage.staging_prefix.strip('/')}/{PUBLICATIONS_DIR}/"


def published_records(rt: Runtime, environment: str | None = None) -> dict[str, dict[str, Record]]:
    """environment -> model (safe name) -> record, from one listing."""
    root = publications_root(rt)
    listed = root + (f"{environment}/" if environment else "")
    records: dict[str, dict[str, Record]] = {}
    for info in rt.error_handler.execute(lambda: list(rt.store.list_prefix(listed)), operation="ListObjectsV2"):
        parts = info.key[len(root) :].split("/")
        if len(parts) != 3 or not parts[2].endswith(".json"):
            continue
        env, model, name = parts
        records.setdefault(env, {})[model] = Record(env, model, name[: -len(".json")], info.key)
    return records


def record_key(rt: Runtime, environment: str, model: str, evaluation: str) -> str:
    return f"{publications_root(rt)}{environment}/{safe_name(model)}/{evaluation}.json"


class Evidence:
    """SQLMesh's interval rows, read at most once per publication and only when a marker is missing."""

    def __init__(self, rt: Runtime, state_sync: StateSync) -> None:
        self._rt = rt
        self._state_sync = state_sync
        self._rows: dict[str, list[audit_evidence.IntervalRow]] = {}

    def audited(self, directory: EvaluationDir, siblings: list[EvaluationDir]) -> StagedOutput | None:
        output = read_manifest(self._rt.store, directory.prefix, self._rt.error_handler)
        if output is None:
            return None
        if output.snapshot_name not in self._rows:
            self._rows[output.snapshot_name] = audit_evidence.interval_rows(self._state_sync, [output.snapshot_name])
        if not audit_evidence.recorded_by_sqlmesh(output, self._rows[output.snapshot_name], siblings):
            return None
        mark_audited(self._rt.store, directory.prefix, "interval row in SQLMesh state", self._rt.error_handler)
        return output


def audited_output(
    rt: Runtime, snapshot: Snapshot, deployable: bool, evidence: Evidence
) -> tuple[EvaluationDir | None, str | None]:
    """The latest audited evaluation of the snapshot's table whose interval state records, or why none."""
    intervals = state.recorded(snapshot, deployable)
    if not intervals:
        return None, NO_INTERVAL
    root = table_dir(rt.settings.storage.staging_prefix, snapshot.model.name, table_version(snapshot, deployable), deployable)
    dirs = list(rt.error_handler.execute(lambda: list(evaluation_dirs(rt.store, root, depth=1)), operation="ListObjectsV2"))
    for directory in latest_first(dirs):
        if not directory.sealed or not state.covered((directory.start, directory.end), intervals):
            continue
        if directory.audited or evidence.audited(directory, dirs) is not None:
            return directory, None
    return None, NO_AUDITED_OUTPUT


@dataclass
class _Change:
    model: str
    new: EvaluationDir | None
    old: Record | None


def publish_environment(
    rt: Runtime,
    state_sync: StateSync,
    environment: str,
    snapshots: Iterable[Snapshot],
    records: dict[str, Record] | None = None,
) -> Publication:
    """Make ``environment``'s prefix hold the latest audited output of each of its osaa snapshots."""
    prefix = rt.env_prefix(environment)
    publication = Publication(environment=environment, prefix=prefix)
    snapshots = list(snapshots)
    if records is None:
        records = published_records(rt, environment).get(environment, {})
    publishing = [s for s in snapshots if state.publishes(s)]
    if not publishing and not records:
        return publication
    env_snapshots, index = state.fresh_publishing(state_sync, environment, snapshots)
    evidence = Evidence(rt, state_sync)
    changes: list[_Change] = []
    current: set[str] = set()
    for snapshot in sorted(env_snapshots, key=lambda s: s.name):
        model = safe_name(snapshot.model.name)
        current.add(model)
        chosen, reason = audited_output(rt, snapshot, index.is_representative(snapshot), evidence)
        old = records.get(model)
        if chosen is None:
            publication.held_back[snapshot.model.name] = str(reason)
        elif old is None or old.evaluation != chosen.evaluation:
            changes.append(_Change(snapshot.model.name, chosen, old))
        else:
            publication.unchanged.append(model)
    changes.extend(_Change(model, None, record) for model, record in sorted(records.items()) if model not in current)
    if changes:
        _commit(rt, publication, changes)
    if publication.changed:
        _log.info(
            "Published %s to %s/: %d written, %d deleted", environment, prefix, len(publication.written), len(publication.deleted)
        )
    return publication


def _commit(rt: Runtime, publication: Publication, changes: list[_Change]) -> None:
    puts: dict[str, tuple[str, str]] = {}
    deletes: list[str] = []
    swaps: list[tuple[str, str]] = []
    for change in changes:
        new_objects: dict[str, str] = {}
        if change.new is not None:
            output = read_manifest(rt.store, change.new.prefix, rt.error_handler)
            if output is None:
                raise RuntimeError(f"Staged output {change.new.prefix} lost its manifest while being published")
            new_objects = {_join(publication.prefix, key): md5 for key, md5 in output.objects.items()}
            for key, md5 in output.objects.items():
                puts[_join(publication.prefix, key)] = (output.staged_key(key), md5)
                publication.sources[_join(publication.prefix, key)] = output.staged_key(key)
            record = record_key(rt, publication.environment, change.model, change.new.evaluation)
            swaps.append((change.new.prefix + MANIFEST_NAME, record))
        if change.old is not None:
            deletes.extend(_ours_to_delete(rt, publication.prefix, change.old, set(new_objects)))
            deletes.append(change.old.key)
    deletes = [key for key in dict.fromkeys(deletes) if key not in puts]
    transaction_id = _transaction_id(publication, changes, deletes)
    transaction = _open_transaction(rt, transaction_id)
    if transaction.phase is TransactionPhase.COMMITTED:
        # This exact change committed before and was undone since (v2 promoted, rolled back, promoted again).
        transaction = _open_transaction(rt, f"{transaction_id}-{uuid.uuid4().hex[:8]}")
    publication.transaction_id = transaction.transaction_id
    with transaction:
        # The staged copies need to survive a power cut only once the decision names them: commit() syncs
        # the store before it writes the decision, one flush for all of them instead of two fsyncs per object.
        with rt.store.deferred_durability():
            for destination, (staged, _) in sorted(puts.items()):
                transaction.stage_copy(staged, destination)
            for staged, destination in swaps:
                transaction.stage_copy(staged, destination)
        for key in deletes:
            transaction.delete(key)
    records = publications_root(rt)
    publication.written.extend(sorted(puts))
    publication.deleted.extend(key for key in deletes if not key.startswith(records))


def _ours_to_delete(rt: Runtime, prefix: str, record: Record, keep: set[str]) -> list[str]:
    """Objects the old record lists, not published again, that still hold what we wrote there."""
    document: Any = get_json(rt.store, record.key, rt.error_handler) or {}
    stale = []
    for key, md5 in sorted((document.get("objects") or {}).items()):
        destination = _join(prefix, key)
        if destination in keep:
            continue
        current = rt.error_handler.execute(rt.store.head, destination, operation="HeadObject")
        if current is not None and current.md5 == md5:
            stale.append(destination)
        elif current is not None:
            _log.warning("Not deleting %s: another writer replaced what sqlmesh-osaa published there", destination)
    return stale


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


def _transaction_id(publication: Publication, changes: list[_Change], deletes: list[str]) -> str:
    """Same change over the same previous publication -> same id (idempotent); anything else -> a new one."""
    document = {
        "prefix": publication.prefix,
        "environment": publication.environment,
        "changes": sorted(
            (c.model, c.old.evaluation if c.old else None, c.new.evaluation if c.new else None) for c in changes
        ),
        "deletes": sorted(deletes),
    }
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode("utf-8")).hexdigest()
    return f"publish-{digest[:32]}"


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


# SQLMesh never janitors prod; its row goes missing when a process is killed between the delete
# and the insert of SQLMesh's environment update, which is no transaction on DuckDB state.
MISSING_PROD = (
    "SQLMesh state holds no prod environment (an interrupted `sqlmesh plan`, or `sqlmesh destroy`): "
    "prod's published outputs are kept; the next `sqlmesh plan` records prod again and publishes from it"
)


def catch_up(rt: Runtime, state_sync: StateSync, skip: Iterable[str] = ()) -> list[Publication]:
    """Bring every environment's prefix to what state holds; remove what environments gone from state published."""
    records = published_records(rt)
    environments = {env.name: env for env in state_sync.get_environments()}
    skipped = set(skip)
    publications = []
    for name in sorted(environments):
        if name in skipped:
            continue
        env = environments[name]
        if name not in records and not any(_publishing_info(info) for info in env.snapshots):
            continue
        snapshots = state_sync.get_snapshots(env.snapshots).values()
        publications.append(publish_environment(rt, state_sync, name, snapshots, records.get(name, {})))
    for name in sorted(set(records) - set(environments)):
        if (publication := remove_gone(rt, state_sync, name, records[name])) is not None:
            publications.append(publication)
    return publications


def remove_gone(
    rt: Runtime, state_sync: StateSync, environment: str, records: dict[str, Record] | None = None
) -> Publication | None:
    """Remove what an environment gone from state (invalidated, then janitored) published; prod's is kept."""
    if environment == sqlmesh_constants.PROD:
        _log.warning(MISSING_PROD)
        return None
    return publish_environment(rt, state_sync, environment, [], records)


def _publishing_info(info: Any) -> bool:
    return getattr(info, "custom_materialization", None) in state.PUBLISHING_MATERIALIZATIONS


def summary(publications: Iterable[Publication]) -> list[str]:
    """Lines for SQLMesh's console: what was published where, what was held back and why."""
    lines = []
    for publication in publications:
        where = f"{publication.prefix}/" if publication.prefix else "the bucket root"
        if publication.written or publication.deleted:
            parts = [f"{len(publication.written)} object(s) published"]
            if publication.deleted:
                parts.append(f"{len(publication.deleted)} removed")
            lines.append(f"{publication.environment} -> {where}: " + ", ".join(parts))
        for model, reason in sorted(publication.held_back.items()):
            lines.append(f"{publication.environment}: {model} held back ({reason}); {where} keeps what it held")
    return lines
