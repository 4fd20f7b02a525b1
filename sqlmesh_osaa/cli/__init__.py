"""The operator commands: ``osaa-recover``, ``osaa-ingest`` and ``osaa-promote``.

Each is a standalone console script and, through ``sqlmesh_osaa_cli.pth`` (see
``sqlmesh_plugin``), a subcommand of the stock ``sqlmesh`` CLI. This module stays empty of
imports: the .pth file imports the package at every interpreter start, so the commands load
only when one of them runs.
"""

from __future__ import annotations


def recover_main() -> None:
    """Console script ``osaa-recover``."""
    from sqlmesh_osaa.cli.recover import recover

    recover(prog_name="osaa-recover")


def ingest_main() -> None:
    """Console script ``osaa-ingest``: a process of the core alone, so pandas stays out (lean_imports)."""
    from sqlmesh_osaa.lean_imports import keep_pandas_out

    keep_pandas_out()
    from sqlmesh_osaa.cli.ingest import ingest

    ingest(prog_name="osaa-ingest")


def promote_main() -> None:
    """Console script ``osaa-promote``."""
    from sqlmesh_osaa.cli.promote import promote

    promote(prog_name="osaa-promote")
