"""``osaa-ingest`` (also ``sqlmesh osaa-ingest``): the click definition only.

The work is in ``ingest_run.py``, imported when the command runs, so that defining the
command at every ``sqlmesh`` start imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
@options.writing(INGEST_PIPELINE, "Pipeline that records the FILE checkpoints.")
@click.pass_context
def ingest(ctx: click.Context, **params: Any) -> None:
    """Convert raw CSV files to parquet and land them as <prefix>/landing/<source>/<name>.parquet.

    Unchanged files are skipped; the others land together in one transaction. A bad file is
    reported and recorded as failed while the good files still land; the command then exits 1.
    """
    from sqlmesh_osaa.cli import ingest_run

    ingest_run.run(ctx, **params)
