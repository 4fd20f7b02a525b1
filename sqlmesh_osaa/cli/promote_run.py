"""What ``osaa-promote`` does once its options are parsed (``promote.py`` defines them).

A thin front end of :mod:`sqlmesh_osaa.promotion`: a refused promotion (unsafe prefixes, an
empty source) could not start and exits 2; one that failed inside its transaction left
--to unchanged (or for ``reconcile`` to roll forward) and exits 1.
"""

from __future__ import annotations

from typing import Any, Mapping

import click

from sqlmesh_osaa.cli import output
from sqlmesh_osaa.cli.context import EXIT_OK, EXIT_PROBLEMS, CliError, command_run
from sqlmesh_osaa.exceptions import PipelineBaseError
from sqlmesh_osaa.promotion import EmptySourceError, PromotionRefusedError, promote_prefix
from sqlmesh_osaa.storage import make_store


def _render(report: Mapping[str, Any]) -> None:
    verb = "Would promote" if report["dry_run"] else "Promoted"
    rows = [("copied", len(report["copied"])), ("unchanged", len(report["unchanged"])), ("deleted", len(report["deleted"]))]
    output.show(output.table(f"{verb} {report['from']} -> {report['to']}", ["Objects", "Count"], rows))
    if report["transaction_id"]:
        output.note(f"Transaction {report['transaction_id']} committed.")


def run(
    ctx: click.Context,
    source: str,
    target: str,
    dry_run: bool,
    allow_empty: bool,
    pipeline: str,
    **target_options: Any,
) -> None:
    with command_run(ctx, create_db=True, writes=True, **target_options) as run:
        settings = run.target.settings
        try:
            result = promote_prefix(
                make_store(settings.storage),
                run.session.checkpoint(pipeline),
                settings,
                source,
                target,
                dry_run=dry_run,
                allow_empty=allow_empty,
            )
        except EmptySourceError as error:
            raise CliError(f"{error}. Check --from, or pass --allow-empty to do exactly that") from error
        except PromotionRefusedError as error:
            raise CliError(f"{error} (--from {source!r}, --to {target!r})") from error
        except PipelineBaseError as error:
            raise CliError(f"Promotion of {source} to {target} failed: {error}", EXIT_PROBLEMS) from error
        report = {
            "pipeline": pipeline,
            "from": result.source,
            "to": result.target,
            "dry_run": dry_run,
            "transaction_id": result.transaction_id,
            "copied": result.copied,
            "unchanged": result.unchanged,
            "deleted": result.deleted,
        }
        run.finish(report, _render, EXIT_OK)
