"""What ``osaa-ingest`` does once its options are parsed (``ingest.py`` defines them).

A thin front end of the ingest engine (``sqlmesh_osaa.ingest``): unchanged raw files are
skipped, the others are converted to parquet and land in one transaction, and a bad file is
reported (and recorded as a failed FILE checkpoint) while the good ones still land. The
command exits 1 when any file failed, so a scheduler sees it.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import click
from sqlmesh_osaa import skip_index
from sqlmesh_osaa.cli import output
from sqlmesh_osaa.cli.context import EXIT_OK, EXIT_PROBLEMS, CliError, Run, command_run
from sqlmesh_osaa.exceptions import CheckpointError, IngestError
from sqlmesh_osaa.store_identity import configured_identity

if TYPE_CHECKING:
    from sqlmesh_osaa.checkpoint import PipelineCheckpoint
    from sqlmesh_osaa.ingest import IngestResult
    from sqlmesh_osaa.settings import OsaaSettings
    from sqlmesh_osaa.storage import ObjectStore

_log = logging.getLogger(__name__)

# SQLMesh environment names: letters, digits, '_' and '-' (never a path).
_ENVIRONMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A callback advancing a progress bar on stderr per converted file (silent when disabled)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} converted"),
        console=output.err_console(),
        transient=True,
    ) as progress:
        task = progress.add_task("Ingesting", total=None)

        def advance(relative: str) -> None:
            progress.update(task, advance=1, description=f"Ingesting {relative}")

        yield advance


def report_of(result: IngestResult) -> dict[str, Any]:
    return {
        "transaction_id": result.transaction_id,
        "landed": result.landed,
        "skipped": result.skipped,
        "failures": [
            {
                "item": str(failure.item),
                "error_type": failure.error_type,
                "category": failure.category.value,
                "message": failure.message,
            }
            for failure in result.failures
        ],
    }


def _render(report: Mapping[str, Any]) -> None:
    counts = [("landed", len(report["landed"])), ("skipped (unchanged)", len(report["skipped"])), ("failed", len(report["failures"]))]
    output.show(output.table(f"Ingest of {report['raw_root']} into {report['env_prefix']}/landing/", ["Files", "Count"], counts))
    if report["failures"]:
        rows = [(f["item"], f["category"], f["message"]) for f in report["failures"]]
        output.show(output.table("Failed files", ["File", "Category", "Error"], rows))
        output.note("Fix the files, then run this command again or `osaa-recover retry --scope file`.")


def landing_prefix(prefix_for: Any, environment: str, prefix: str | None) -> str:
    """The object prefix the files land under; a path-like --env or a bad --prefix is a usage error."""
    if prefix is None:
        if not _ENVIRONMENT.match(environment):
            raise CliError(
                f"--env {environment!r} is not a SQLMesh environment name: use letters, digits, '_' and '-' "
                "(e.g. prod or dev_alice), or give the object prefix itself with --prefix"
            )
        return prefix_for(environment).strip("/")
    parts = prefix.split("/")
    if not prefix.strip("/") or prefix.startswith("/") or ".." in parts or "" in parts[:-1]:
        raise CliError(
            f"--prefix {prefix!r} is not a relative object prefix: give one such as dev/alice "
            "(no leading '/', no '..', not empty)"
        )
    return prefix.strip("/")


def run(
    ctx: click.Context,
    raw_dir: Path,
    environment: str,
    prefix: str | None,
    source: str | None,
    pattern: str,
    verify_checksum: bool,
    pipeline: str,
    **target_options: Any,
) -> None:
    with command_run(ctx, create_db=True, writes=True, **target_options) as run:
        settings = run.target.settings
        env_prefix = landing_prefix(settings.environments.prefix_for, environment, prefix)
        scope = _index_scope(settings, pipeline, env_prefix, raw_dir, pattern, source)
        report = {"pipeline": pipeline, "raw_root": str(raw_dir), "env_prefix": env_prefix}
        if scope is not None and not verify_checksum and settings.monitoring.textfile_directory is None:
            skipped = _unchanged_by_index(run.target.db_path, scope)
            if skipped is not None:
                nothing = {"transaction_id": None, "landed": [], "skipped": skipped, "failures": []}
                run.finish({**report, **nothing}, _render, EXIT_OK)
        from sqlmesh_osaa.ingest import IngestRequest, run_ingest
        from sqlmesh_osaa.storage import make_store

        request = IngestRequest(raw_dir, env_prefix, pattern=pattern, source=source, verify_checksum=verify_checksum)
        checkpoint, store = run.session.checkpoint(pipeline), make_store(settings.storage)
        try:
            with _progress(not run.as_json) as progress:
                result = run_ingest(request, checkpoint=checkpoint, store=store, settings=settings, progress=progress)
        except IngestError as error:
            raise CliError(f"Ingest of {raw_dir} did not start: {error}") from error
        if settings.monitoring.textfile_directory is not None:
            from sqlmesh_osaa.metrics import write_textfile

            write_textfile(settings.monitoring.textfile_directory, checkpoint)
        if scope is not None:
            _record_index(run, checkpoint, store, scope)
        run.finish({**report, **report_of(result)}, _render, EXIT_PROBLEMS if result.failures else EXIT_OK)


def _index_scope(
    settings: OsaaSettings, pipeline: str, env_prefix: str, raw_dir: Path, pattern: str, source: str | None
) -> skip_index.Scope | None:
    """The skip index's scope of this run, or None where it does not serve (docs/decisions.md, "The skip index").

    Only a DuckDB file kept on this machine has one: PostgreSQL is not a file, and on an
    ephemeral runner (``checkpoint.sync``) the file is pulled from object storage by each run.
    """
    checkpoint = settings.checkpoint
    if checkpoint.backend != "duckdb" or checkpoint.sync.url is not None:
        return None
    storage = settings.storage
    store = configured_identity(storage.backend, Path(storage.root), storage.bucket, storage.endpoint_url)
    if store is None:
        return None
    raw_root = str(raw_dir.expanduser().resolve())
    return skip_index.Scope(pipeline, store, env_prefix, raw_root, pattern, source)


def _unchanged_by_index(db_path: Path, scope: skip_index.Scope) -> list[str] | None:
    """The landing keys of the raw files, when the skip index says every one is unchanged; else None.

    The same walk and comparison as a run against the database (``raw_files.discover_raw_files``
    with the recorded fingerprints as baseline): any file it cannot set aside as unchanged (new,
    changed, refused, unusual) leaves the decision to the database.
    """
    fingerprints = skip_index.load(db_path, scope)
    if fingerprints is None:
        return None
    from sqlmesh_osaa.raw_files import Baseline, discover_raw_files

    try:
        discovery = discover_raw_files(
            scope.raw_root, pattern=scope.pattern, source=scope.source, baseline=Baseline(scope.env_prefix, fingerprints)
        )
    except IngestError:
        return None
    if discovery.files or discovery.refused:
        return None
    _log.info("Ingest of %s: %d file(s), all unchanged (skip index of %s)", discovery.root, len(discovery.unchanged), db_path)
    return list(discovery.unchanged)


def _record_index(run: Run, checkpoint: PipelineCheckpoint, store: ObjectStore, scope: skip_index.Scope) -> None:
    """Copy the database's answer for this scope into the skip index, then confirm it once the file is closed.

    ``CHECKPOINT`` folds the WAL into the file while this process holds DuckDB's lock, so the
    identity taken then is the one the file keeps when closed; no file, no index.
    """
    from sqlmesh_osaa import raw_files
    from sqlmesh_osaa.checkpoint import CheckpointScope
    from sqlmesh_osaa.storage import store_metadata

    db_path = run.target.db_path
    if store.identity != scope.store:
        return
    # The run's last work: the checkpoint folds every row this run wrote, and what it frees need not be kept.
    with checkpoint.returning_memory():
        fingerprints = checkpoint.completed_fingerprints(
            CheckpointScope.FILE, raw_files.landing_prefix(scope.env_prefix), metadata=store_metadata(store)
        )
        try:
            checkpoint.store.read("CHECKPOINT")
        except CheckpointError as error:
            _log.info("No skip index for %s: %s", db_path, error)
            return
    identity = skip_index.database_identity(db_path)
    if identity[0] is None or identity[1] is not None:
        return
    skip_index.save(db_path, scope, fingerprints, identity)
    run.after_close.append(lambda: skip_index.confirm(db_path, identity))
