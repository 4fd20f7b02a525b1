"""What each ``osaa-recover`` verb does once its options are parsed (``recover.py`` defines them).

Each verb resolves its target (settings, project, database), calls the module that does
the work, and prints a table or, with ``--json``, one JSON document whose shape
``docs/cli.md`` documents. Kept apart from the click definitions because these imports
(DuckDB, the core) are what a command costs; defining the commands at ``sqlmesh`` start
must not pay for them.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping

import click

from sqlmesh_osaa.cli import failures, output
from sqlmesh_osaa.cli import report as html_report
from sqlmesh_osaa.cli import retry as retrying
from sqlmesh_osaa.cli import transactions as transactions_module
from sqlmesh_osaa.cli import verify as verification
from sqlmesh_osaa.cli.context import EXIT_OK, EXIT_PROBLEMS, CliError, command_run
from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.metrics import OPENMETRICS, render, write_atomically
from sqlmesh_osaa.monitoring import database_stats
from sqlmesh_osaa.storage import make_store


# -- list-failed -----------------------------------------------------------------------


def _render_failed(report: Mapping[str, Any]) -> None:
    rows = [
        (
            item["pipeline"],
            item["scope"],
            item["key"],
            item["file_path"],
            item["attempt"],
            "interrupted" if item["interrupted"] else item["status"],
            item["error_message"],
            item["error_category"],
            item["failing_since"],
        )
        for item in report["items"]
    ]
    columns = ["Pipeline", "Scope", "Key", "File", "Attempts", "Status", "Last error", "Category", "Since"]
    output.show(output.table(f"Failed and interrupted items in {report['db_path']}", columns, rows))
    output.note(f"{report['count']} item(s)." if report["count"] else "No failed or interrupted items.")
    if report["recovered"]:
        recovered = [
            (r["pipeline"], r["scope"], r["key"], r["failed_at"], r["recovered_at"], r["time_to_recovery_seconds"], r["resolved_by"])
            for r in report["recovered"]
        ]
        header = ["Pipeline", "Scope", "Key", "Failed", "Recovered", "Time to recovery (s)", "Recovered by"]
        output.show(output.table("Recovered by a later success (not counted as failing)", header, recovered))


def list_failed(
    ctx: click.Context, pipeline: str | None, scope: str | None, limit: int | None, db: Path | None, project: Path | None, as_json: bool
) -> None:
    with command_run(ctx, as_json=as_json, db=db, project=project) as run:
        report = failures.list_failed(run.session, run.session.pipelines(pipeline), scope, limit)
        run.finish(report, _render_failed, EXIT_PROBLEMS if report["count"] else EXIT_OK)


# -- retry -----------------------------------------------------------------------------


def _render_retry(report: Mapping[str, Any]) -> None:
    rows = [(i["pipeline"], i["scope"], i["key"], i["action"], i["outcome"], i["message"]) for i in report["items"]]
    output.show(output.table("Retry", ["Pipeline", "Scope", "Key", "Action", "Outcome", "Message"], rows))
    output.note(f"{report['recovered']} recovered, {report['failed']} not recovered.")


def retry(
    ctx: click.Context,
    pipeline: str | None,
    scope: str | None,
    key: str | None,
    apply: bool,
    db: Path | None,
    project: Path | None,
    as_json: bool,
) -> None:
    with command_run(ctx, as_json=as_json, db=db, project=project, writes=True) as run:
        pipelines = run.session.pipelines(pipeline)
        store = make_store(run.target.settings.storage)
        outcomes = retrying.retry(run.session, run.target, store, pipelines, scope, key, apply)
        if key is not None and not outcomes:
            raise CliError(f"No item with key {key!r} in pipeline(s) {', '.join(pipelines) or '(none)'} of {run.target.db_path}")
        items = [vars(outcome) for outcome in outcomes]
        recovered = sum(1 for item in items if item["outcome"] == retrying.RECOVERED)
        failed = sum(1 for item in items if item["outcome"] in (retrying.STILL_FAILED, retrying.NOT_RETRYABLE, retrying.PLANNED))
        report = {"count": len(items), "recovered": recovered, "failed": failed, "items": items}
        run.finish(report, _render_retry, EXIT_PROBLEMS if failed else EXIT_OK)


# -- clear -----------------------------------------------------------------------------


def _render_clear(report: Mapping[str, Any]) -> None:
    rows = [(i["pipeline"], i["scope"], i["key"], i["status"], i["file_path"], i["updated_at"]) for i in report["items"]]
    title = "Cleared" if report["confirmed"] else "Would clear"
    output.show(output.table(f"{title} ({report['db_path']})", ["Pipeline", "Scope", "Key", "Status", "File", "Updated"], rows))
    if report["confirmed"]:
        output.note(f"Cleared {report['cleared']} checkpoint(s); those items are pending again.")
    elif report["count"]:
        output.note(f"Nothing was cleared. Run again with --confirm to delete these {report['count']} checkpoint(s).")
    else:
        output.note("Nothing matches.")


def clear(
    ctx: click.Context,
    pipeline: str | None,
    scope: str | None,
    key: str | None,
    status: str | None,
    confirm: bool,
    db: Path | None,
    project: Path | None,
    as_json: bool,
) -> None:
    with command_run(ctx, as_json=as_json, db=db, project=project, writes=confirm) as run:
        report = failures.clear(run.session, run.session.pipelines(pipeline), scope, status, key, confirm)
        run.finish(report, _render_clear, EXIT_OK)


# -- stats -----------------------------------------------------------------------------


def _render_stats(report: Mapping[str, Any]) -> None:
    rows = []
    for name, entry in report["pipelines"].items():
        ttr = entry["time_to_recovery"]
        rows.append(
            (
                name,
                entry["total"],
                entry["by_status"].get("completed", 0),
                entry["by_status"].get("failed", 0),
                entry["interrupted"],
                f"{entry['failure_rate_percent']:.1f}%",
                f"{entry['retries']['total']} ({entry['retries']['per_item']:.2f}/item)",
                f"{ttr['recovered']} recovered, {ttr['unrecovered']} not"
                + (f"; mean {ttr['mean_seconds']:.1f}s, max {ttr['max_seconds']:.1f}s" if ttr["recovered"] else ""),
                entry["last_success_at"],
                f"{entry['circuit_breaker_openings']} / {entry['circuit_breaker_rejections']}",
            )
        )
    columns = [
        "Pipeline", "Items", "Completed", "Failed", "Interrupted", "Failure rate", "Retries", "Time to recovery",
        "Last success", "Breaker openings / rejections",
    ]
    output.show(output.table(f"Checkpoint statistics ({report['db_path']})", columns, rows))
    errors = [(n, e["count"], e["error_category"], e["error_message"]) for n, s in report["pipelines"].items() for e in s["most_common_errors"]]
    if errors:
        output.show(output.table("Most common failures", ["Pipeline", "Count", "Category", "Error"], errors))
    stuck = [(n, i["scope"], i["key"], i["attempt"], i["error_message"]) for n, s in report["pipelines"].items() for i in s["consistently_failing"]]
    if stuck:
        output.show(output.table("Consistently failing", ["Pipeline", "Scope", "Key", "Attempts", "Last error"], stuck))
    exports = [
        (n, e["environment"], key, e["bytes"], html_report.evaluation_label(e["evaluation"]), e["last_success_at"])
        for n, s in report["pipelines"].items()
        for key, e in s["exports"].items()
    ]
    if exports:
        output.show(output.table("Exports", ["Pipeline", "Environment", "Key", "Bytes", "From evaluation", "Last published"], exports))
    totals = report["totals"]
    output.note(f"{totals['items']} item(s), {totals['failed']} failed, {totals['interrupted']} interrupted.")


def stats(
    ctx: click.Context, pipeline: str | None, output_format: str, db: Path | None, project: Path | None, as_json: bool
) -> None:
    as_json = as_json or output_format == "json"
    with command_run(ctx, as_json=as_json, db=db, project=project) as run:
        names = run.session.pipelines(pipeline)
        report = database_stats([run.session.checkpoint(name) for name in names])
        troubled = report["totals"]["failed"] or report["totals"]["interrupted"]
        exit_code = EXIT_PROBLEMS if troubled else EXIT_OK
        if output_format == OPENMETRICS:
            click.echo(render(report, OPENMETRICS), nl=False)
            ctx.exit(exit_code)
        run.finish(report, _render_stats, exit_code)


# -- report ----------------------------------------------------------------------------


def _render_report(report: Mapping[str, Any]) -> None:
    opened = "" if not report["open_failures"] else f" It lists {report['open_failures']} open failure(s)."
    output.note(f"Wrote the report to {report['html']} (open it in a browser).{opened}")


def report(
    ctx: click.Context, html_path: Path, pipeline: str | None, db: Path | None, project: Path | None, as_json: bool
) -> None:
    with command_run(ctx, as_json=as_json, db=db, project=project) as run:
        names = run.session.pipelines(pipeline)
        checkpoints = [run.session.checkpoint(name) for name in names]
        open_failures = failures.list_failed(run.session, names, None, None)["items"]
        page = html_report.render(database_stats(checkpoints), checkpoints, open_failures, str(run.target.db_path))
        target = html_path.expanduser().resolve()
        try:
            write_atomically(target, page)
        except OSError as error:
            raise CliError(f"Cannot write the report to {target}: {error.strerror or error}; choose a writable path") from error
        summary = {"html": str(target), "pipelines": names, "open_failures": len(open_failures), "bytes": len(page.encode())}
        run.finish(summary, _render_report, EXIT_OK)


# -- verify ----------------------------------------------------------------------------


def _render_verify(report: Mapping[str, Any]) -> None:
    shown = [item for item in report["items"] if item["findings"]]
    rows = [(i["pipeline"], i["key"], i["file_path"], ", ".join(i["findings"]), "problem" if not i["ok"] else "note") for i in shown]
    if rows:
        output.show(output.table(f"Verification of bucket {report['bucket']}", ["Pipeline", "Key", "File", "Findings", "Severity"], rows))
    output.note(f"{report['checked']} completed file(s) checked, {report['problems']} with problems.")


def verify(ctx: click.Context, pipeline: str | None, limit: int | None, db: Path | None, project: Path | None, as_json: bool) -> None:
    with command_run(ctx, as_json=as_json, db=db, project=project) as run:
        settings = run.target.settings
        handler = ErrorHandler.from_settings(settings, name="object-storage")
        report = verification.verify(run.session, run.session.pipelines(pipeline), make_store(settings.storage), handler, limit)
        run.finish(report, _render_verify, EXIT_PROBLEMS if report["problems"] else EXIT_OK)


# -- transactions and reconcile --------------------------------------------------------


def _render_transactions(report: Mapping[str, Any]) -> None:
    rows = [
        (t["pipeline"], t["transaction_id"], t["phase"], "interrupted" if t["interrupted"] else t["status"], t["operation"], t["owner_pid"], t["updated_at"], t["puts"], t["deletes"])
        for t in report["transactions"]
    ]
    if rows:
        output.show(output.table("Transactions", ["Pipeline", "Id", "Phase", "Status", "Operation", "Owner PID", "Updated", "Puts", "Deletes"], rows))
    areas = [(a["prefix"], a["kind"], a["state"], a["objects"], a["bytes"]) for a in report["staging"]]
    if areas:
        output.show(output.table(f"Staging area of bucket {report['bucket']}", ["Prefix", "Kind", "State", "Objects", "Bytes"], areas))
    decisions = [
        (d["position"], d["kind"], d["transaction_id"], d["state"], d["puts"], d["deletes"], ", ".join(d["superseded"]) or "-")
        for d in report["decisions"]
    ]
    if decisions:
        output.show(output.table("Latest commit decisions", ["Position", "Kind", "Id", "State", "Puts", "Deletes", "Superseded keys"], decisions))
    output.note("Run `osaa-recover reconcile` to finish them." if report["needs_reconcile"] else "Nothing awaits recovery.")


def transactions(ctx: click.Context, pipeline: str | None, include_ended: bool, db: Path | None, project: Path | None, as_json: bool) -> None:
    with command_run(ctx, as_json=as_json, db=db, project=project) as run:
        settings = run.target.settings
        report = transactions_module.transactions(
            run.session, run.session.pipelines(pipeline), make_store(settings.storage), settings.storage.staging_prefix, include_ended,
            ErrorHandler.from_settings(settings, name="object-storage"),
        )
        run.finish(report, _render_transactions, EXIT_PROBLEMS if report["needs_reconcile"] else EXIT_OK)


def _render_reconcile(report: Mapping[str, Any]) -> None:
    done = report["transactions"]
    rows = [(what, ", ".join(ids) or "-") for what, ids in (("rolled back", done["rolled_back"]), ("rolled forward", done["rolled_forward"]), ("staging cleaned", done["cleaned_staging"]))]
    rows += [(f"superseded: {tid}", ", ".join(keys)) for tid, keys in done["superseded"].items()]
    rows += [(f"failed: {tid}", message) for tid, message in done["failed"].items()]
    output.show(output.table("Transactions", ["Action", "Transactions"], rows))
    sqlmesh = report["sqlmesh"]
    if sqlmesh is not None:
        lines = [("interrupted items closed", len(sqlmesh["interrupted_closed"])), ("staged outputs discarded", len(sqlmesh["discarded"]))]
        lines += [(f"published to {p['prefix']}/", f"{len(p['written'])} written, {len(p['deleted'])} deleted, {len(p['unchanged'])} unchanged") for p in sqlmesh["published"]]
        output.show(output.table(f"SQLMesh project {sqlmesh['project']}", ["Action", "Result"], lines))
    output.note("Reconciled." if report["ok"] else "Some transactions could not be recovered; see above.")


def reconcile(
    ctx: click.Context,
    pipeline: str | None,
    environments: tuple[str, ...],
    no_publish: bool,
    db: Path | None,
    project: Path | None,
    as_json: bool,
) -> None:
    # The store holds what recovery needs: a machine with no checkpoint database reconciles too.
    with command_run(ctx, as_json=as_json, db=db, project=project, create_db=pipeline is None, writes=True) as run:
        settings = run.target.settings
        report = transactions_module.reconcile(
            run.session, run.target, run.session.pipelines(pipeline), make_store(settings.storage), list(environments), not no_publish
        )
        run.finish(report, _render_reconcile, EXIT_OK if report["ok"] else EXIT_PROBLEMS)


# -- history and prune -----------------------------------------------------------------


def _render_history(report: Mapping[str, Any]) -> None:
    rows = [
        (e["at"], e["pipeline"], e["scope"], e["key"], f"{e['from_status']} -> {e['to_status']}", e["attempt"], e["pid"], e["host"], e["error_message"], e["error_category"])
        for e in report["events"]
    ]
    output.show(output.table(f"History of {report['key']} ({len(report['keys'])} item(s))", ["At", "Pipeline", "Scope", "Key", "Transition", "Attempt", "PID", "Host", "Error", "Category"], rows))


def history(ctx: click.Context, key: str, pipeline: str | None, scope: str | None, db: Path | None, project: Path | None, as_json: bool) -> None:
    with command_run(ctx, as_json=as_json, db=db, project=project) as run:
        pipelines = run.session.pipelines(pipeline)
        report = failures.history(run.session, pipelines, scope, key)
        if not report["events"]:
            raise CliError(
                f"No item matches {key!r} in pipeline(s) {', '.join(pipelines) or '(none)'} of {run.target.db_path}: "
                "give a whole key, a key prefix, a model name (osaa.indicators) or a raw file path; "
                "`osaa-recover list-failed` and `clear` show the keys"
            )
        run.finish(report, _render_history, EXIT_OK)


def _render_prune(report: Mapping[str, Any]) -> None:
    rows = list(report["pruned"].items())
    output.show(output.table(f"Pruned completed checkpoints older than {report['cutoff']:%Y-%m-%d %H:%M:%S} UTC", ["Pipeline", "Rows"], rows))


def prune(ctx: click.Context, older_than: timedelta | None, pipeline: str | None, db: Path | None, project: Path | None, as_json: bool) -> None:
    with command_run(ctx, as_json=as_json, db=db, project=project, writes=True) as run:
        age = older_than if older_than is not None else timedelta(days=run.target.settings.checkpoint.retention_days)
        pruned = {name: run.session.checkpoint(name).prune(age) for name in run.session.pipelines(pipeline)}
        report = {
            "older_than_seconds": age.total_seconds(),
            "cutoff": datetime.now(timezone.utc) - age,
            "pruned": pruned,
            "total": sum(pruned.values()),
        }
        run.finish(report, _render_prune, EXIT_OK)
