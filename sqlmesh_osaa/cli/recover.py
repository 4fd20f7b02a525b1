"""``osaa-recover`` (also ``sqlmesh osaa-recover``): the seed's recovery tool as one click group.

Only the click definitions live here, importing nothing heavy: ``sqlmesh_plugin`` adds them
to every ``sqlmesh`` start. Each verb's work is in ``recover_run.py``, imported when it runs.
Exit codes: 0 all well, 1 problems found, 2 the command could not look (usage,
configuration, database missing or locked).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import click

from sqlmesh_osaa.cli import options


def _recover_run() -> ModuleType:
    from sqlmesh_osaa.cli import recover_run

    return recover_run


@click.group("osaa-recover", context_settings={"help_option_names": ["-h", "--help"]})
def recover() -> None:
    """Recover sqlmesh-osaa pipelines: list, retry, clear, verify and report checkpoints.

    Exit codes: 0 all well; 1 problems found (failures listed, mismatches, items still failing);
    2 the command could not look (usage or configuration error, database missing or locked).
    """


@recover.command("list-failed")
@options.pipeline
@options.scope
@options.limit
@options.target
@options.json_output
@click.pass_context
def list_failed(ctx: click.Context, **params: Any) -> None:
    """List failed and interrupted items with their last error, category and since when."""
    _recover_run().list_failed(ctx, **params)


@recover.command("retry")
@options.pipeline
@options.scope
@click.option("--key", help="Retry only this item (FILE: its landing key; MODEL: <model>|<fingerprint>|<start>|<end>).")
@click.option("--apply", is_flag=True, help="Run the restatement plan that fixes a MODEL data error (without it: print it).")
@options.target
@options.json_output
@click.pass_context
def retry(ctx: click.Context, **params: Any) -> None:
    """Re-run one failed item, or every failed and interrupted item (of a scope).

    FILE items are ingested again, interrupted transactions recovered and rolled-back
    promotions re-applied, MODEL items re-run with `sqlmesh run`. A MODEL item that failed a
    blocking audit (a data error) needs a restatement of the sources upstream of it (found
    in SQLMesh's DAG): the plan is printed (outcome `planned`), and run with --apply.
    Reports each outcome.
    """
    _recover_run().retry(ctx, **params)


@recover.command("clear")
@options.pipeline
@options.scope
@click.option("--key", help="Only the item with this key.")
@click.option("--status", type=click.Choice(options.STATUSES), help="Only items with this status.")
@click.option("--confirm", is_flag=True, help="Delete the listed checkpoints. Without it nothing changes.")
@options.target
@options.json_output
@click.pass_context
def clear(ctx: click.Context, **params: Any) -> None:
    """Show the checkpoints that match; with --confirm, delete exactly those.

    A cleared item is pending again: the next run processes it as new.
    """
    _recover_run().clear(ctx, **params)


@recover.command("stats")
@options.pipeline
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json", "openmetrics"]),
    default="table",
    show_default=True,
    help="openmetrics: the same figures as Prometheus metrics (OpenMetrics text), e.g. for a scrape or a push.",
)
@options.target
@options.json_output
@click.pass_context
def stats(ctx: click.Context, **params: Any) -> None:
    """Counts by status and scope, failure rate, retries, time to recovery, breakers, exports, top failures.

    --json and --format json print the same document; --format openmetrics prints the same
    numbers as OpenMetrics text (names in docs/monitoring.md).
    """
    _recover_run().stats(ctx, **params)


@recover.command("report")
@click.option(
    "--html",
    "html_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the report to this file (one self-contained HTML page).",
)
@options.pipeline
@options.target
@options.json_output
@click.pass_context
def report(ctx: click.Context, **params: Any) -> None:
    """Write one self-contained HTML page: runs over time, time to recovery, slowest models, what is published.

    Everything is inline (CSS, SVG charts; no script, no network at view time), so the file
    can be opened anywhere or kept as a CI artefact. Open failures are listed at the end.
    """
    _recover_run().report(ctx, **params)


@recover.command("verify")
@options.pipeline
@options.limit
@options.target
@options.json_output
@click.pass_context
def verify(ctx: click.Context, **params: Any) -> None:
    """Check completed FILE items: source file vs recorded checksum, object vs what was committed."""
    _recover_run().verify(ctx, **params)


@recover.command("transactions")
@options.pipeline
@click.option("--all", "include_ended", is_flag=True, help="Also list committed and rolled-back transactions.")
@options.target
@options.json_output
@click.pass_context
def transactions(ctx: click.Context, **params: Any) -> None:
    """List transactions in flight (checkpoint rows and the store's markers), the latest commit decisions and staged exports.

    A decision whose keys later commits took is shown as superseded, with those keys.
    """
    _recover_run().transactions(ctx, **params)


@recover.command("reconcile")
@options.pipeline
@click.option("--environment", "environments", multiple=True, help="SQLMesh environment to publish again (repeatable). Default: all.")
@click.option("--no-publish", is_flag=True, help="Only recover leftovers; do not publish environments again.")
@options.target
@options.json_output
@click.pass_context
def reconcile(ctx: click.Context, **params: Any) -> None:
    """Roll dead undecided transactions back and decided ones forward; in a SQLMesh project, publish per state.

    Recovery reads the bucket, so it works on a machine without the checkpoint database of the
    run that died. Keys a later commit superseded are skipped and reported. Inside a SQLMesh project the integration also closes interrupted MODEL/PIPELINE items,
    discards staged exports that SQLMesh state does not record, and publishes every
    environment's audited outputs again (DESIGN sections 7 and 9).
    """
    _recover_run().reconcile(ctx, **params)


@recover.command("history")
@click.option(
    "--key",
    required=True,
    help="A whole key, or a model name (osaa.indicators), a raw file path, or a key prefix: every item it names.",
)
@options.pipeline
@options.scope
@options.target
@options.json_output
@click.pass_context
def history(ctx: click.Context, **params: Any) -> None:
    """Show every state change of the items --key names, oldest first.

    --key is matched as a whole key first, then as a model name, a raw file path, and a key
    prefix (the first rule that matches any item wins).
    """
    _recover_run().history(ctx, **params)


@recover.command("prune")
@click.option("--older-than", type=options.Duration(), help="Age such as 30d, 12h or 2w. Default: checkpoint.retention_days.")
@options.pipeline
@options.target
@options.json_output
@click.pass_context
def prune(ctx: click.Context, **params: Any) -> None:
    """Delete completed checkpoints and their events older than the retention age.

    Items that are not completed keep all their events: they hold the first failure that
    time to recovery is measured from.
    """
    _recover_run().prune(ctx, **params)


@recover.group("lease")
def lease() -> None:
    """Inspect or break the runner lease of ephemeral runners (checkpoint.sync).

    A runner holds the lease while it works on the synced checkpoint file; a runner that was
    killed leaves it until it expires (checkpoint.sync.lease_timeout_seconds).
    """


@lease.command("show")
@options.project
@options.json_output
@click.pass_context
def lease_show(ctx: click.Context, **params: Any) -> None:
    """Show who holds the runner lease, since when, and until when. Exit 1 while a runner holds it."""
    from sqlmesh_osaa.cli import lease_run

    lease_run.show(ctx, **params)


@lease.command("break")
@click.option("--force", is_flag=True, help="Also break a lease that has not expired (its holder may still be running).")
@options.project
@options.json_output
@click.pass_context
def lease_break(ctx: click.Context, **params: Any) -> None:
    """Release an expired runner lease now, so the next runner need not wait; a live one only with --force.

    A holder that is still running finds out at its next heartbeat or push, which then fail
    without overwriting anything.
    """
    from sqlmesh_osaa.cli import lease_run

    lease_run.break_(ctx, **params)
