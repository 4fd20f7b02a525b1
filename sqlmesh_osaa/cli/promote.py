"""``osaa-promote`` (also ``sqlmesh osaa-promote``): the click definition only.

The work is in ``promote_run.py``, imported when the command runs, so that defining the
command at every ``sqlmesh`` start imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

import click

from sqlmesh_osaa.cli import options

TRANSACTIONS_PIPELINE = "transactions"


@click.command("osaa-promote")
@click.option("--from", "source", required=True, help="Prefix to copy from, e.g. dev/landing.")
@click.option("--to", "target", required=True, help="Prefix to make an exact copy of --from, e.g. prod/landing.")
@click.option("--dry-run", is_flag=True, help="Show what would be copied and deleted; change nothing.")
@click.option("--allow-empty", is_flag=True, help="Proceed when --from holds no object (empties --to).")
@options.writing(TRANSACTIONS_PIPELINE, "Pipeline that journals the transaction.")
@click.pass_context
def promote(ctx: click.Context, **params: Any) -> None:
    """Promote objects from one prefix to another in one transaction.

    Every object under --from is copied server-side to the same relative key under --to, and
    objects under --to that --from lacks are deleted: afterwards --to holds exactly what --from
    holds, or, if anything fails, exactly what it held before.
    """
    from sqlmesh_osaa.cli import promote_run

    promote_run.run(ctx, **params)
