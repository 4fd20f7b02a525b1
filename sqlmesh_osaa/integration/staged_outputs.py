"""Where a model evaluation's object-storage outputs wait, keyed by the evaluation itself.

An evaluation of an ``osaa_s3_export`` or ``osaa_file_ingest`` model never writes under an
environment's prefix. It stages its objects in a directory of its own, addressed by the
physical table it filled (model, snapshot version, deployable or dev table), its interval
and the evaluation (the millisecond it started plus a random suffix)::

    <staging_prefix>/exports/<model>/<version>[-dev]/<start_ms>-<end_ms>-<started_ms>-<id>/<key>
    .../_osaa_output.json     the manifest, written last: a directory without one died while staging
    .../_osaa_audited.json    the audit marker: SQLMesh recorded this evaluation's interval

A directory is written once and never re-staged in place: a restatement of the same interval
is a new evaluation with a new directory, so a crash while it runs cannot change what an
earlier, audited evaluation staged. Whether an evaluation counts as audited is decided in
``audit_evidence.py``; which one an environment publishes in ``publication.py``. Keying the
table by version rather than fingerprint lets a metadata-only change (same physical table,
no re-evaluation) reuse what the previous snapshot staged.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from sqlmesh.utils.date import to_timestamp

from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.storage import ObjectStore

_log = logging.getLogger(__name__)

EXPORTS_DIR = "exports"
MANIFEST_NAME = "_osaa_output.json"
AUDITED_NAME = "_osaa_audited.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_EVALUATION_DIR = re.compile(r"^(\d+)-(\d+)-(\d+)-([0-9a-f]+)$")
# Below exports/: model, table, evaluation.
EVALUATION_DEPTH = 3


@dataclass(frozen=True)
class StagedOutput:
    """What one evaluation staged: its objects by relative key, and the table and interval it came from."""

    prefix: str
    model: str
    snapshot_name: str
    identifier: str
    version: str
    # The version naming the physical table filled: ``version``, or the dev version of a dev table.
    table_version: str
    deployable: bool
    start: int
    end: int
    evaluation: str
    started_ms: int
    objects: dict[str, str] = field(default_factory=dict)
    # The osaa kind that staged it (``osaa_s3_export`` or ``osaa_file_ingest``).
    materialization: str = ""

    def staged_key(self, key: str) -> str:
        return self.prefix + key


@dataclass(frozen=True)
class EvaluationDir:
    """One evaluation directory as a listing shows it (no object read)."""

    prefix: str
    start: int
    end: int
    started_ms: int
    evaluation: str
    sealed: bool
    audited: bool

    @property
    def table_prefix(self) -> str:
        return self.prefix.rsplit("/", 2)[0] + "/"

    def overlaps(self, other: EvaluationDir) -> bool:
        return self.start < other.end and other.start < self.end


def table_version(snapshot: Any, deployable: bool) -> str:
    """The version naming the physical table an evaluation filled (a dev table has its own)."""
    return snapshot.version if deployable else (snapshot.dev_version or snapshot.version)


def model_dir(staging_prefix: str, model: str) -> str:
    return f"{exports_root(staging_prefix)}{safe_name(model)}/"


def safe_name(model: str) -> str:
    return _UNSAFE.sub("_", model)


def table_dir(staging_prefix: str, model: str, version: str, deployable: bool) -> str:
    """The directory of every staged evaluation of one physical table."""
    return f"{model_dir(staging_prefix, model)}{version}{'' if deployable else '-dev'}/"


def new_evaluation_id() -> tuple[str, int]:
    """A fresh evaluation id and the millisecond it was taken (before anything is staged)."""
    started_ms = time.time_ns() // 1_000_000
    return f"{started_ms}-{secrets.token_hex(4)}", started_ms


def evaluation_output(
    staging_prefix: str, model: str, evaluation: Mapping[str, Any], materialization: str
) -> StagedOutput:
    """The (still empty) output of a new evaluation, from a materialization's ``insert`` kwargs."""
    snapshot = evaluation["snapshot"]
    deployable = evaluation["deployability_index"].is_deployable(snapshot)
    start, end = to_timestamp(evaluation["start"]), to_timestamp(evaluation["end"])
    evaluation_id, started_ms = new_evaluation_id()
    version = table_version(snapshot, deployable)
    return StagedOutput(
        prefix=f"{table_dir(staging_prefix, model, version, deployable)}{start}-{end}-{evaluation_id}/",
        model=model,
        snapshot_name=snapshot.name,
        identifier=snapshot.identifier,
        version=snapshot.version,
        table_version=version,
        deployable=deployable,
        start=start,
        end=end,
        evaluation=evaluation_id,
        started_ms=started_ms,
        materialization=materialization,
    )


def write_manifest(store: ObjectStore, output: StagedOutput, error_handler: ErrorHandler) -> None:
    """Seal the staged output; call after every object of it is in the store."""
    put_json(store, output.prefix + MANIFEST_NAME, asdict(output), error_handler)


def mark_audited(store: ObjectStore, prefix: str, evidence: str, error_handler: ErrorHandler) -> None:
    """Record that SQLMesh recorded this evaluation's interval (``evidence`` says how we know)."""
    put_json(store, prefix + AUDITED_NAME, {"evidence": evidence}, error_handler)


def read_manifest(store: ObjectStore, prefix: str, error_handler: ErrorHandler) -> StagedOutput | None:
    """The sealed output at ``prefix``, or None when it has no manifest (or an older layout's)."""
    document = get_json(store, prefix + MANIFEST_NAME, error_handler)
    if document is None or "evaluation" not in document:
        return None
    return StagedOutput(**document)


def put_json(store: ObjectStore, key: str, document: Any, error_handler: ErrorHandler) -> None:
    with tempfile.TemporaryDirectory(prefix="osaa-json-") as workdir:
        path = Path(workdir) / "document.json"
        path.write_text(json.dumps(document, sort_keys=True), encoding="utf-8")
        error_handler.execute(store.put_file, path, key, operation="PutObject")


def get_json(store: ObjectStore, key: str, error_handler: ErrorHandler) -> Any:
    """The JSON document at ``key``, or None when there is none: one GET, no local file (documents are small)."""
    found = error_handler.execute(store.get_bytes, key, operation="GetObject")
    return None if found is None else json.loads(found[0].decode("utf-8"))


def evaluation_dirs(store: ObjectStore, root: str, depth: int) -> Iterator[EvaluationDir]:
    """Evaluation directories ``depth`` segments below ``root``, from one listing.

    ``depth`` is :data:`EVALUATION_DEPTH` below ``exports/`` and 1 below a :func:`table_dir`.
    Directories of an older layout (no evaluation id in the name) are not listed.
    """
    found: dict[str, set[str]] = {}
    for info in store.list_prefix(root):
        parts = info.key[len(root) :].split("/")
        if len(parts) <= depth:
            continue
        directory = root + "/".join(parts[:depth]) + "/"
        found.setdefault(directory, set()).add("/".join(parts[depth:]))
    for directory, names in sorted(found.items()):
        match = _EVALUATION_DIR.match(directory.rstrip("/").rsplit("/", 1)[-1])
        if match is None:
            continue
        start, end, started_ms, _ = match.groups()
        yield EvaluationDir(
            prefix=directory,
            start=int(start),
            end=int(end),
            started_ms=int(started_ms),
            evaluation=f"{started_ms}-{match.group(4)}",
            sealed=MANIFEST_NAME in names,
            audited=AUDITED_NAME in names,
        )


def exports_root(staging_prefix: str) -> str:
    return f"{staging_prefix.strip('/')}/{EXPORTS_DIR}/"


def discard(store: ObjectStore, prefix: str, error_handler: ErrorHandler) -> int:
    """Delete an evaluation directory (manifest and marker first, so a half-deleted one is unsealed)."""
    keys = [info.key for info in store.list_prefix(prefix)]
    if not keys:
        return 0
    seals = [prefix + name for name in (AUDITED_NAME, MANIFEST_NAME) if prefix + name in keys]
    if seals:
        error_handler.execute(store.delete_many, seals, operation="DeleteObjects")
    rest = [key for key in keys if key not in seals]
    if rest:
        error_handler.execute(store.delete_many, rest, operation="DeleteObjects")
    _log.info("Discarded staged output %s (%d objects)", prefix, len(keys))
    return len(keys)


def latest_first(dirs: Iterable[EvaluationDir]) -> list[EvaluationDir]:
    return sorted(dirs, key=lambda d: (d.started_ms, d.evaluation), reverse=True)
