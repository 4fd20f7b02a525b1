"""What ``osaa-ingest`` does once its options are parsed (``ingest.py`` defines them).

A thin front end of the ingest engine (``sqlmesh_osaa.ingest``): unchanged raw files are
skipped, the others are converted to parquet and land in one transaction, and a bad file is
reported (and recorded as a failed FILE checkpoint) while the good ones still land. The
command exits 1 when any file failed, so a scheduler sees it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import click
from sqlmesh_osaa.cli import output
from sqlmesh_osaa.cli.context import EXIT_OK, EXIT_PROBLEMS, CliError, command_run
from sqlmesh_osaa.exceptions import IngestError
from sqlmesh_osaa.ingest import IngestRequest, IngestResult, run_ingest
from sqlmesh_osaa.storage import make_store

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
        request = IngestRequest(raw_dir, env_prefix, pattern=pattern, source=source, verify_checksum=verify_checksum)
        try:
            with _progress(not run.as_json) as progress:
                result = run_ingest(
                    request,
                    checkpoint=run.session.checkpoint(pipeline),
                    store=make_store(settings.storage),
                    settings=settings,
                    progress=progress,
                )
        except IngestError as error:
            raise CliError(f"Ingest of {raw_dir} did not start: {error}") from error
        if settings.monitoring.textfile_directory is not None:
            from sqlmesh_osaa.metrics import write_textfile

            write_textfile(settings.monitoring.textfile_directory, run.session.checkpoint(pipeline))
        report = {"pipeline": pipeline, "raw_root": str(raw_dir), "env_prefix": env_prefix, **report_of(result)}
        run.finish(report, _render, EXIT_PROBLEMS if result.failures else EXIT_OK)
