"""What ``osaa-recover lease show`` and ``lease break`` do (``recover.py`` defines them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import click

from sqlmesh_osaa.checkpoint.lease import break_lease
from sqlmesh_osaa.checkpoint.sync import lease_report, require_location
from sqlmesh_osaa.cli import output
from sqlmesh_osaa.cli.context import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, CliError, resolve_target
from sqlmesh_osaa.exceptions import PipelineBaseError


def _rows(lease: Mapping[str, Any]) -> list[tuple[str, Any]]:
    holder = lease["holder"]
    return [
        ("state", lease["state"]),
        ("runner", holder["runner"]),
        ("host", holder["host"]),
        ("pid", holder["pid"]),
        ("CI job", holder.get("ci_job") or "-"),
        ("command", holder.get("command") or "-"),
        ("acquired at", lease["acquired_at"]),
        ("last heartbeat", lease["heartbeat_at"]),
        ("expires at", lease["expires_at"]),
    ]


def _render_show(report: Mapping[str, Any]) -> None:
    lease = report["lease"]
    if lease is None:
        output.note(f"No runner lease at {report['url']}: no runner has synced there yet.")
        return
    output.show(output.table(f"Runner lease at {report['url']}", ["Field", "Value"], _rows(lease)))


def _render_break(report: Mapping[str, Any]) -> None:
    lease = report["lease"]
    if lease is None:
        output.note(f"No runner lease at {report['url']}: nothing to break.")
    elif report["broken"]:
        output.note(f"Broke the lease of runner {lease['holder']['runner']!r} (acquired {lease['acquired_at']}).")
    elif lease["state"] == "live":
        output.error(
            f"The lease of runner {lease['holder']['runner']!r} (host {lease['holder']['host']}, pid "
            f"{lease['holder']['pid']}) is live until {lease['expires_at']}: it may still be running. Stop it, "
            "wait for the expiry, or add --force"
        )
    else:
        output.note(f"The lease is already {lease['state']}: the next runner takes it.")


def _finish(ctx: click.Context, report: Mapping[str, Any], as_json: bool, render: Any, code: int) -> None:
    if as_json:
        output.emit_json(report)
    else:
        render(report)
    ctx.exit(code)


def _fail(ctx: click.Context, message: str, as_json: bool) -> None:
    if as_json:
        output.emit_json({"error": {"message": message, "exit_code": EXIT_USAGE, "db_path": None}})
    output.error(message)
    ctx.exit(EXIT_USAGE)


def show(ctx: click.Context, project: Path | None, as_json: bool) -> None:
    try:
        location = require_location(resolve_target(ctx, project, None).settings)
        lease = lease_report(location)
    except (CliError, PipelineBaseError) as error:
        _fail(ctx, str(error), as_json)
        return
    live = lease is not None and lease["state"] == "live"
    _finish(ctx, {"url": location.url, "lease": lease}, as_json, _render_show, EXIT_PROBLEMS if live else EXIT_OK)


def break_(ctx: click.Context, force: bool, project: Path | None, as_json: bool) -> None:
    try:
        location = require_location(resolve_target(ctx, project, None).settings)
        found, broken = break_lease(location.store, location.lease_key, force=force)
    except (CliError, PipelineBaseError) as error:
        _fail(ctx, str(error), as_json)
        return
    lease = None if found is None else found.as_report()
    refused = lease is not None and lease["state"] == "live" and not broken
    report = {"url": location.url, "lease": lease, "broken": broken}
    _finish(ctx, report, as_json, _render_break, EXIT_PROBLEMS if refused else EXIT_OK)
