"""Where a model evaluation's object-storage outputs wait until SQLMesh records its interval.

An evaluation of an ``osaa_s3_export`` or ``osaa_file_ingest`` model never writes under an
environment's prefix. It stages its objects under a directory addressed by the physical
table it filled (model, snapshot version, deployable or dev table) and the interval::

    <staging_prefix>/exports/<model>/<version>[-dev]/<start_ms>-<end_ms>/<key>
    <staging_prefix>/exports/<model>/<version>[-dev]/<start_ms>-<end_ms>/_osaa_output.json

The manifest is written last, so a directory without one is an evaluation that died while
staging. Publication (``publication.py``) copies the objects of the newest *recorded*
interval to ``<environment prefix>/<key>``; reconciliation discards the others. Keying by
version rather than fingerprint lets a metadata-only change (same physical table, no
re-evaluation) reuse what the previous snapshot staged.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from sqlmesh.utils.date import to_timestamp

from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.storage import ObjectStore

_log = logging.getLogger(__name__)

EXPORTS_DIR = "exports"
MANIFEST_NAME = "_osaa_output.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class StagedOutput:
    """What one evaluation staged: its objects by relative key, and the snapshot it came from."""

    prefix: str
    model: str
    snapshot_name: str
    identifier: str
    version: str
    deployable: bool
    start: int
    end: int
    objects: dict[str, str] = field(default_factory=dict)
    # Objects under this relative prefix that the output does not list are deleted from the
    # environment at publication (an ingest source owns its landing directory).
    owned_prefix: str | None = None

    def staged_key(self, key: str) -> str:
        return self.prefix + key


def table_version(snapshot: Any, deployable: bool) -> str:
    """The version naming the physical table an evaluation filled (a dev table has its own)."""
    return snapshot.version if deployable else (snapshot.dev_version or snapshot.version)


def model_dir(staging_prefix: str, model: str) -> str:
    return f"{exports_root(staging_prefix)}{_UNSAFE.sub('_', model)}/"


def table_dir(staging_prefix: str, model: str, version: str, deployable: bool) -> str:
    """The directory of every staged interval of one physical table."""
    return f"{model_dir(staging_prefix, model)}{version}{'' if deployable else '-dev'}/"


def output_prefix(staging_prefix: str, model: str, version: str, deployable: bool, start: int, end: int) -> str:
    return f"{table_dir(staging_prefix, model, version, deployable)}{start}-{end}/"


def evaluation_output(staging_prefix: str, model: str, evaluation: Mapping[str, Any]) -> StagedOutput:
    """The (still empty) output of one evaluation, from a materialization's ``insert`` kwargs."""
    snapshot = evaluation["snapshot"]
    deployable = evaluation["deployability_index"].is_deployable(snapshot)
    start, end = to_timestamp(evaluation["start"]), to_timestamp(evaluation["end"])
    return StagedOutput(
        prefix=output_prefix(staging_prefix, model, table_version(snapshot, deployable), deployable, start, end),
        model=model,
        snapshot_name=snapshot.name,
        identifier=snapshot.identifier,
        version=snapshot.version,
        deployable=deployable,
        start=start,
        end=end,
    )


def write_manifest(store: ObjectStore, output: StagedOutput, error_handler: ErrorHandler) -> None:
    """Seal the staged output; call after every object of it is in the store."""
    with tempfile.TemporaryDirectory(prefix="osaa-manifest-") as workdir:
        path = Path(workdir) / MANIFEST_NAME
        path.write_text(json.dumps(asdict(output), sort_keys=True), encoding="utf-8")
        error_handler.execute(store.put_file, path, output.prefix + MANIFEST_NAME, operation="PutObject")


def read_manifest(store: ObjectStore, prefix: str, error_handler: ErrorHandler) -> StagedOutput | None:
    """The sealed output at ``prefix``, or None when it has no manifest."""
    if error_handler.execute(store.head, prefix + MANIFEST_NAME, operation="HeadObject") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="osaa-manifest-") as workdir:
        path = Path(workdir) / MANIFEST_NAME
        error_handler.execute(store.get_file, prefix + MANIFEST_NAME, path, operation="GetObject")
        return StagedOutput(**json.loads(path.read_text(encoding="utf-8")))


def output_prefixes(store: ObjectStore, root: str, depth: int) -> Iterator[tuple[str, bool]]:
    """Evaluation directories ``depth`` segments below ``root``, each with whether a manifest seals it.

    ``depth`` is 3 below ``exports/`` (model, table, interval) and 1 below a :func:`table_dir`.
    """
    directories: dict[str, bool] = {}
    for info in store.list_prefix(root):
        parts = info.key[len(root) :].split("/")
        if len(parts) <= depth:
            continue
        directory = root + "/".join(parts[:depth]) + "/"
        sealed = len(parts) == depth + 1 and parts[-1] == MANIFEST_NAME
        directories[directory] = directories.get(directory, False) or sealed
    yield from sorted(directories.items())


def exports_root(staging_prefix: str) -> str:
    return f"{staging_prefix.strip('/')}/{EXPORTS_DIR}/"


def parse_interval(prefix: str) -> tuple[int, int] | None:
    """The interval an evaluation directory holds, from its name ``<start>-<end>/``."""
    match = re.search(r"/(\d+)-(\d+)/$", prefix)
    return (int(match.group(1)), int(match.group(2))) if match else None


def discard(store: ObjectStore, prefix: str, error_handler: ErrorHandler) -> int:
    """Delete an evaluation directory (manifest first, so a half-deleted one is unsealed)."""
    keys = [info.key for info in store.list_prefix(prefix)]
    if not keys:
        return 0
    manifest = prefix + MANIFEST_NAME
    if manifest in keys:
        error_handler.execute(store.delete_many, [manifest], operation="DeleteObjects")
    error_handler.execute(store.delete_many, [key for key in keys if key != manifest], operation="DeleteObjects")
    _log.info("Discarded staged output %s (%d objects)", prefix, len(keys))
    return len(keys)
