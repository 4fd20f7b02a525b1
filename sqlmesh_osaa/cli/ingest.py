"""``osaa-ingest`` (also ``sqlmesh osaa-ingest``): the click definition only.

The work is in ``ingestion.py``, imported when the command runs, so that defining the
command at every ``sqlmesh`` start imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path

import click

from sqlmesh_osaa.cli import options

INGEST_PIPELINE = "ingest"
DEFAULT_PATTERN = "**/*.csv"


@click.command("osaa-ingest")
@click.argument("raw_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--env", "environment", default="prod", show_default=True, help="SQLMesh environment whose landing area receives the files.")
@click.option("--prefix", help="Object prefix of the landing area instead of the environment's (e.g. dev/alice).")
@click.option("--source", help="Source name when RAW_DIR is one source's directory. Default: the first directory below RAW_DIR.")
@click.option("--pattern", default=DEFAULT_PATTERN, show_default=True, help="Glob of the raw files, relative to RAW_DIR.")
@click.option("--verify-checksum", is_flag=True, help="Compare MD5s, not only size and mtime, to skip unchanged files.")
@click.option("--pipeline", default=INGEST_PIPELINE, show_default=True, help="Pipeline that records the FILE checkpoints.")
@options.target
@options.json_output
@click.pass_context
def ingest(
    ctx: click.Context,
    raw_dir: Path,
    environment: str,
    prefix: str | None,
    source: str | None,
    pattern: str,
    verify_checksum: bool,
    pipeline: str,
    db: Path | None,
    project: Path | None,
    as_json: bool,
) -> None:
    """Convert raw CSV files to parquet and land them as <prefix>/landing/<source>/<name>.parquet.

    Unchanged files are skipped; the others land together in one transaction. A bad file is
    reported and recorded as failed while the good files still land; the command then exits 1.
    """
    from sqlmesh_osaa.cli import ingestion

    ingestion.run(ctx, raw_dir, environment, prefix, source, pattern, verify_checksum, pipeline, db, project, as_json)
