"""The ingest engine: raw CSV files -> parquet landing objects, once each, all or nothing.

One run discovers the raw files, skips those whose FILE checkpoint says they are done and
unchanged (size and mtime from the discovery walk against the record; no file is read),
fingerprints the rest as they are read (discovery's size and mtime, the MD5 of the bytes
converted; a file rewritten meanwhile is recorded without it, so the next run lands it
again), converts them to parquet with DuckDB, stages every converted file in one transaction
and commits it. A bad file is a recorded failure (FILE checkpoint *failed* with its
category and message), never an abort: the good files still land. The same engine serves
``osaa-ingest`` and the ``osaa_file_ingest`` model kind.

The converted parquet files are intermediates handed to the store (``Upload(disposable=True)``)
and written under its scratch directory, so a local store moves them in instead of copying.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import duckdb

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.error_handler import ErrorHandler, FailureRecord, PartialFailureCollector
from sqlmesh_osaa.exceptions import categorize_error
from sqlmesh_osaa.raw_files import (
    DEFAULT_PATTERN,
    Baseline,
    Discovery,
    RawFile,
    discover_raw_files,
    landing_keys,
    landing_prefix,
    read_fingerprint,
    still_as_discovered,
)
from sqlmesh_osaa.settings import OsaaSettings, get_settings
from sqlmesh_osaa.storage import ObjectStore, make_store, store_metadata

if TYPE_CHECKING:
    from sqlmesh_osaa.transaction_manager import TransactionManager, Upload

_log = logging.getLogger(__name__)

DEFAULT_PIPELINE = "ingest"
CHUNK_SIZE = 64  # files converted, then uploaded concurrently, at a time: bounds temp disk use
# Raw files smaller than this are converted on one DuckDB thread: for them the other threads
# only add scheduling (a first ingest of 10,000 small files: 8 % less CPU, 2.4 MB less peak
# memory; docs/performance.md, "Ingest"); larger files keep DuckDB's parallel reader and writer.
SINGLE_THREAD_BELOW = 8 * 1024 * 1024
_WORKDIR_PREFIX = "osaa-ingest-"

Progress = Callable[[str], None]


@dataclass
class IngestResult:
    """What one run did: landed (written or already identical), skipped as unchanged, failed."""

    landed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[FailureRecord] = field(default_factory=list)
    transaction_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class IngestRequest:
    """Which raw files go where."""

    raw_root: Path
    env_prefix: str
    pattern: str = DEFAULT_PATTERN
    source: str | None = None
    verify_checksum: bool = False


def _discover(request: IngestRequest, checkpoint: PipelineCheckpoint, store: ObjectStore) -> Discovery:
    """Discover the raw files against what their FILE checkpoints recorded when they landed in ``store``.

    A file whose completed record has its size and mtime is unchanged without further
    question; discovery lists only its landing key. Verifying checksums skips that shortcut.
    A record made for another store does not count: that store is another key space.
    """
    baseline = None
    if not request.verify_checksum:
        fingerprints = checkpoint.completed_fingerprints(
            CheckpointScope.FILE, landing_prefix(request.env_prefix), metadata=store_metadata(store)
        )
        baseline = Baseline(request.env_prefix, fingerprints)
    return discover_raw_files(request.raw_root, pattern=request.pattern, source=request.source, baseline=baseline)


def _split_unchanged(
    checkpoint: PipelineCheckpoint, store: ObjectStore, discovery: Discovery, env_prefix: str, verify: bool
) -> tuple[list[tuple[RawFile, str]], list[str]]:
    """The files to ingest (with their landing keys), and the keys of those unchanged since they landed.

    Discovery has set aside the files that match their records; the others may still be
    unchanged by checksum (a touched file), which :meth:`unchanged_keys` finds out.
    """
    skipped = list(discovery.unchanged)
    files = list(zip(discovery.files, landing_keys(env_prefix, discovery.files)))
    if not files:
        return files, skipped
    items = [(key, raw.real_path, raw.size, raw.mtime_ns) for raw, key in files]
    unchanged = checkpoint.unchanged_keys(CheckpointScope.FILE, items, verify, metadata=store_metadata(store))
    skipped += [key for _, key in files if key in unchanged]
    return [(raw, key) for raw, key in files if key not in unchanged], skipped


def run_ingest(
    request: IngestRequest,
    *,
    checkpoint: PipelineCheckpoint | None = None,
    store: ObjectStore | None = None,
    settings: OsaaSettings | None = None,
    error_handler: ErrorHandler | None = None,
    progress: Progress | None = None,
    transaction_id: str | None = None,
) -> IngestResult:
    """Ingest ``request``'s raw files; never raises for a bad file, only reports it."""
    settings = settings or get_settings()
    owns_checkpoint = checkpoint is None
    checkpoint = checkpoint or PipelineCheckpoint(DEFAULT_PIPELINE)
    store = store or make_store(settings.storage)
    error_handler = error_handler or ErrorHandler.from_settings(settings, name="object-storage")
    try:
        return _ingest(request, checkpoint, store, settings, error_handler, progress, transaction_id)
    finally:
        if owns_checkpoint:
            checkpoint.close()


def _ingest(
    request: IngestRequest,
    checkpoint: PipelineCheckpoint,
    store: ObjectStore,
    settings: OsaaSettings,
    error_handler: ErrorHandler,
    progress: Progress | None,
    transaction_id: str | None,
) -> IngestResult:
    discovery = _discover(request, checkpoint, store)
    todo, skipped = _split_unchanged(checkpoint, store, discovery, request.env_prefix, request.verify_checksum)
    collector = PartialFailureCollector()
    for refused in discovery.refused:
        collector.add_failure(refused.relative, refused.error)
    result = IngestResult(skipped=skipped)
    _log.info(
        "Ingest of %s: %d file(s), %d unchanged, %d to convert, %d refused",
        discovery.root, len(todo) + len(skipped), len(skipped), len(todo), len(discovery.refused),
    )
    # From here on ``todo`` is the only reference to the files, so each is let go once staged.
    del discovery
    if todo:
        _convert_and_commit(request, todo, checkpoint, store, settings, error_handler, collector, result, progress, transaction_id)
    result.failures = list(collector.failures)
    collector.log_summary(_log)
    return result


def _convert_and_commit(
    request: IngestRequest,
    todo: list[tuple[RawFile, str]],
    checkpoint: PipelineCheckpoint,
    store: ObjectStore,
    settings: OsaaSettings,
    error_handler: ErrorHandler,
    collector: PartialFailureCollector,
    result: IngestResult,
    progress: Progress | None,
    transaction_id: str | None,
) -> None:
    # Imported only when a file is to land: an unchanged re-run never loads the commit machinery.
    from sqlmesh_osaa.transaction_manager import TransactionManager

    scratch = store.scratch_directory()
    if scratch is not None:
        remove_abandoned_workdirs(scratch)
    with tempfile.TemporaryDirectory(prefix=_workdir_prefix(), dir=scratch) as workdir:
        txn = TransactionManager(
            store=store,
            checkpoint=checkpoint,
            staging_prefix=settings.storage.staging_prefix,
            error_handler=error_handler,
            settings=settings,
            transaction_id=transaction_id,
        )
        try:
            txn.begin()
        except Exception as exc:
            _fail_all(todo, checkpoint, collector, exc)
            return
        result.transaction_id = txn.transaction_id
        txn.prefetch_production(landing_prefix(request.env_prefix))
        staged = _stage(todo, txn, Path(workdir), checkpoint, collector, progress)
        if not staged:
            txn.rollback(reason="no file could be staged")
            return
        try:
            txn.commit()
        except Exception as exc:
            for relative, _ in staged:
                collector.add_failure(relative, exc)
            return
        for relative, key in staged:
            collector.add_success(relative, key)
            result.landed.append(key)


def _stage(
    todo: list[tuple[RawFile, str]],
    txn: TransactionManager,
    workdir: Path,
    checkpoint: PipelineCheckpoint,
    collector: PartialFailureCollector,
    progress: Progress | None,
) -> list[tuple[str, str]]:
    """Convert and stage ``todo`` a chunk at a time; the ``(relative name, key)`` of each file staged.

    The conversion's DuckDB is closed before the commit: what it held goes back to the
    allocator that the checkpoint store's completions then draw from (docs/performance.md).
    """
    staged: list[tuple[str, str]] = []
    with duckdb.connect() as connection:
        threads = _ConversionThreads(connection)
        for start, chunk in _taken_in_chunks(todo):
            uploads = _convert_chunk(chunk, start, workdir, connection, threads, checkpoint, collector)
            for outcome in txn.upload_many(uploads):
                relative = str(outcome.upload.metadata["source-file"])
                if outcome.error is not None:
                    _record_failure(checkpoint, outcome.upload.key, outcome.upload.tracked_path, outcome.error)
                    collector.add_failure(relative, outcome.error)
                else:
                    staged.append((relative, outcome.upload.key))
                Path(outcome.upload.local_path).unlink(missing_ok=True)
            if progress is not None:
                for raw, _ in chunk:
                    progress(raw.relative)
    return staged


def _taken_in_chunks(todo: list[tuple[RawFile, str]]) -> Iterator[tuple[int, list[tuple[RawFile, str]]]]:
    """``(offset, chunk)`` of ``todo`` in order, each chunk removed from the list as it is taken.

    Staged files need only their key and relative name from then on: a first ingest of
    many files holds the discovery of each only until it is staged, not until the commit.
    """
    todo.reverse()
    start = 0
    while todo:
        chunk = [todo.pop() for _ in range(min(CHUNK_SIZE, len(todo)))]
        yield start, chunk
        start += len(chunk)


def _fail_all(
    todo: list[tuple[RawFile, str]], checkpoint: PipelineCheckpoint, collector: PartialFailureCollector, exc: Exception
) -> None:
    """The transaction could not begin (the store refused its marker): every file fails with that error."""
    _log.error("Could not begin the ingest transaction: %s", exc)
    for raw, key in todo:
        _record_failure(checkpoint, key, str(raw.path), exc)
        collector.add_failure(raw.relative, exc)


class _ConversionThreads:
    """The conversion connection's DuckDB threads for each file: one below ``SINGLE_THREAD_BELOW``, else DuckDB's default.

    The setting changes only when a file's size asks for the other one (files of a directory
    tend to be alike), so a run of small files sets it once.
    """

    def __init__(self, connection: duckdb.DuckDBPyConnection) -> None:
        self._connection = connection
        self._single = False

    def fit(self, size: int) -> None:
        single = size < SINGLE_THREAD_BELOW
        if single != self._single:
            self._connection.execute("SET threads = 1" if single else "RESET threads")
            self._single = single


def _convert_chunk(
    chunk: list[tuple[RawFile, str]],
    offset: int,
    workdir: Path,
    connection: duckdb.DuckDBPyConnection,
    threads: _ConversionThreads,
    checkpoint: PipelineCheckpoint,
    collector: PartialFailureCollector,
) -> list[Upload]:
    """Convert a chunk of raw files; a file that fails is recorded and left out."""
    from sqlmesh_osaa.conversion import convert_csv_to_parquet
    from sqlmesh_osaa.transaction_manager import TransactionManager, Upload

    uploads = []
    for index, (raw, key) in enumerate(chunk, start=offset):
        parquet = workdir / f"{index}.parquet"
        try:
            fingerprint = read_fingerprint(raw)
            threads.fit(raw.size)
            convert_csv_to_parquet(raw.path, parquet, connection=connection, with_columns=False)
        except Exception as exc:
            _record_failure(checkpoint, key, str(raw.path), exc)
            collector.add_failure(raw.relative, exc)
            parquet.unlink(missing_ok=True)
        else:
            if not still_as_discovered(raw):
                _log.warning("%s changed while it was converted; the next run lands it again", raw.relative)
                fingerprint = fingerprint._replace(checksum=None)
            uploads.append(Upload(parquet, key, {"source-file": raw.relative}, raw.path, fingerprint, disposable=True))
    return uploads


def _host_workdir_prefix() -> str:
    """The start of every work directory name of this host's runs."""
    return f"{_WORKDIR_PREFIX}{os.uname().nodename}-"


def _workdir_prefix() -> str:
    """Names the owner (host and PID), so a later run on this host can tell an abandoned work directory."""
    return f"{_host_workdir_prefix()}{os.getpid()}-"


def remove_abandoned_workdirs(scratch: Path) -> int:
    """Remove the work directories that killed ingest runs of this host left in ``scratch``.

    A run's converted files wait there for their upload (a chunk at a time); a SIGKILL leaves
    them. A directory is abandoned when its owner's PID is not running; another host's
    directories (a store root on a shared filesystem) are left to that host.
    """
    from sqlmesh_osaa import commit_log

    own = _host_workdir_prefix()
    removed = 0
    for entry in os.scandir(scratch):
        if not entry.name.startswith(own):
            continue
        pid = entry.name[len(own) :].partition("-")[0]
        if pid.isdigit() and not commit_log.pid_running(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    if removed:
        _log.info("Removed %d work directories of killed ingest runs from %s", removed, scratch)
    return removed


def _record_failure(checkpoint: PipelineCheckpoint, key: str, path: str, exc: BaseException) -> None:
    """The file's FILE checkpoint fails with ``exc``, started first when it is not in progress."""
    row = checkpoint.get(CheckpointScope.FILE, key)
    if row is None or row["status"] != "in_progress":
        checkpoint.mark_started(CheckpointScope.FILE, key, path, force=True)
    checkpoint.mark_failed(CheckpointScope.FILE, key, str(exc), path, category=categorize_error(exc))
