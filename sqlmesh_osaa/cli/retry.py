"""``retry``: run failed and interrupted items again, each the way its scope is done.

- FILE items are ingested again, one file per transaction, to the key they failed on: the
  key ``<prefix>/landing/<source>/<name>.parquet`` and the recorded raw file say how.
- OPERATION items: interrupted transactions are recovered (rolled back or forward); a
  promotion that was rolled back is applied again under its own transaction id; any other
  rolled-back transaction left production untouched and is re-done by re-running its step.
- MODEL items that failed a blocking audit (a data error) need the data fixed and restated
  where it enters: ``model_fixes`` finds the sources upstream of the model in SQLMesh's DAG,
  and the outcome is the restatement plan (``planned``); with ``--apply`` it runs, ``sqlmesh
  plan <environment> --restate-model <source>... --auto-apply --no-prompts``, and the item's
  checkpoint tells the outcome. Re-running the failed model alone would fail the same audit.
- Other MODEL items are re-run through SQLMesh in a subprocess, ``sqlmesh run <environment>
  --select-model <model> --ignore-cron``, which evaluates every missing interval of the model
  (the failed one included) and its upstream; the item's checkpoint then tells the outcome.
  ``run`` never applies a plan, so an evaluation that failed inside ``sqlmesh plan`` (a new
  snapshot, a restatement) is not re-run by it: the outcome names the plan to run instead,
  which the operator reviews (a plan also applies the project's other local changes).
- PIPELINE items (a whole plan/run) are not re-run: their MODEL items are.

The checkpoint database is released while a subprocess runs, since SQLMesh opens it too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping

from sqlmesh_osaa.checkpoint import CheckpointScope
from sqlmesh_osaa.cli import model_fixes
from sqlmesh_osaa.cli.context import CliError, Target
from sqlmesh_osaa.cli.database import CheckpointSession
from sqlmesh_osaa.cli.failures import COMPLETED, failing_rows, is_failing
from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.exceptions import ErrorCategory
from sqlmesh_osaa.ingest import IngestRequest, run_ingest
from sqlmesh_osaa.promotion import OPERATION as PROMOTE
from sqlmesh_osaa.promotion import promote_prefix
from sqlmesh_osaa.storage import ObjectStore
from sqlmesh_osaa.transaction_manager import JOURNAL_PREFIX, recover_transactions

RECOVERED = "recovered"
# The fix is a plan: printed, run with --apply.
PLANNED = "planned"
STILL_FAILED = "still_failed"
NOT_RETRYABLE = "not_retryable"
SKIPPED = "skipped"
# Scopes in the order they are retried: transactions first, they may hold what files need.
ORDER = (CheckpointScope.OPERATION, CheckpointScope.FILE, CheckpointScope.MODEL, CheckpointScope.PIPELINE)
MODEL_TIMEOUT_SECONDS = 3600
_GLOB_CHARACTERS = set("*?")


@dataclass
class Outcome:
    pipeline: str
    scope: str
    key: str
    action: str
    outcome: str
    message: str | None = None


def _status_after(session: CheckpointSession, row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return session.checkpoint(row["pipeline"]).get(row["scope"], row["key"])


def _outcome_of(session: CheckpointSession, row: Mapping[str, Any], action: str, note: str | None = None) -> Outcome:
    after = _status_after(session, row)
    if after is not None and after["status"] == COMPLETED:
        return Outcome(row["pipeline"], row["scope"], row["key"], action, RECOVERED, note)
    message = (after or {}).get("error_message") or note or "still not completed"
    return Outcome(row["pipeline"], row["scope"], row["key"], action, STILL_FAILED, message)


# -- FILE ------------------------------------------------------------------------------


def ingest_request_for(key: str, file_path: str | None) -> IngestRequest | str:
    """The request that ingests exactly ``file_path`` to ``key``, or why there is none."""
    parts = PurePosixPath(key).parts
    if "landing" not in parts or not key.endswith(".parquet"):
        return "its key is not an ingest landing key (<prefix>/landing/<source>/<name>.parquet); re-run the job that wrote it"
    at = parts.index("landing")
    name_parts = list(parts[at + 2 :])
    if at + 2 >= len(parts):
        return "its key names no source directory; re-run the job that wrote it"
    if file_path is None:
        return "its checkpoint records no source file; re-run the job that wrote it"
    raw = Path(file_path)
    if not raw.is_file():
        return f"its source file {raw} no longer exists; restore it, or clear the item"
    name_parts[-1] = name_parts[-1][: -len(".parquet")]
    relative = PurePosixPath(*name_parts[:-1], raw.name)
    if _GLOB_CHARACTERS & set(str(relative)):
        return f"its file name {relative} holds glob characters; re-run osaa-ingest on its directory"
    root = raw.parents[len(name_parts) - 1] if len(name_parts) > 1 else raw.parent
    return IngestRequest(root, "/".join(parts[:at]), pattern=str(relative), source=parts[at + 1])


def _retry_file(session: CheckpointSession, target: Target, store: ObjectStore, row: Mapping[str, Any]) -> Outcome:
    request = ingest_request_for(row["key"], row["file_path"])
    if isinstance(request, str):
        return Outcome(row["pipeline"], row["scope"], row["key"], "ingest", NOT_RETRYABLE, f"Not retried: {request}")
    result = run_ingest(request, checkpoint=session.checkpoint(row["pipeline"]), store=store, settings=target.settings)
    note = "; ".join(failure.message for failure in result.failures) or None
    return _outcome_of(session, row, f"ingest {row['file_path']}", note)


# -- OPERATION -------------------------------------------------------------------------


def _retry_operations(
    session: CheckpointSession, target: Target, store: ObjectStore, rows: list[Mapping[str, Any]]
) -> list[Outcome]:
    outcomes = []
    interrupted = [row for row in rows if row["interrupted"]]
    for pipeline in sorted({row["pipeline"] for row in interrupted}):
        recover_transactions(
            session.checkpoint(pipeline),
            store,
            error_handler=ErrorHandler.from_settings(target.settings, name="object-storage"),
            staging_prefix=target.settings.storage.staging_prefix,
        )
    for row in rows:
        if row["interrupted"] and row["key"].startswith(JOURNAL_PREFIX):
            outcomes.append(_recovered_transaction(session, row))
        else:
            outcomes.append(_reapplied(session, target, store, row))
    return outcomes


def _recovered_transaction(session: CheckpointSession, row: Mapping[str, Any]) -> Outcome:
    after = _status_after(session, row) or {}
    phase = (after.get("metadata") or {}).get("phase")
    if after.get("status") == COMPLETED:
        return Outcome(row["pipeline"], row["scope"], row["key"], "roll forward", RECOVERED, "committed")
    if phase == "rolled_back":
        message = "rolled back: production untouched; its items are failed and can be retried"
        return Outcome(row["pipeline"], row["scope"], row["key"], "roll back", RECOVERED, message)
    message = after.get("error_message") or "recovery did not finish it; see `osaa-recover transactions`"
    return Outcome(row["pipeline"], row["scope"], row["key"], "recover", STILL_FAILED, message)


def _reapplied(session: CheckpointSession, target: Target, store: ObjectStore, row: Mapping[str, Any]) -> Outcome:
    metadata = row.get("metadata") or {}
    if not row["key"].startswith(JOURNAL_PREFIX):
        message = "Not retried: not a transaction; re-run the job that recorded it"
        return Outcome(row["pipeline"], row["scope"], row["key"], "none", NOT_RETRYABLE, message)
    if metadata.get("operation") != PROMOTE:
        message = (
            "Not retried: this transaction was rolled back, leaving production untouched; "
            "its FILE items are retried with --scope file, or re-run the step that wrote it"
        )
        return Outcome(row["pipeline"], row["scope"], row["key"], "none", NOT_RETRYABLE, message)
    checkpoint = session.checkpoint(row["pipeline"])
    transaction_id = row["key"][len(JOURNAL_PREFIX) :]
    action = f"promote {metadata['from']} -> {metadata['to']}"
    try:
        promote_prefix(store, checkpoint, target.settings, metadata["from"], metadata["to"], transaction_id=transaction_id)
    except Exception as error:
        return Outcome(row["pipeline"], row["scope"], row["key"], action, STILL_FAILED, str(error))
    return _outcome_of(session, row, action)


# -- MODEL -----------------------------------------------------------------------------


def sqlmesh_executable() -> str:
    beside = Path(sys.executable).with_name("sqlmesh")
    return str(beside) if beside.is_file() else (shutil.which("sqlmesh") or "sqlmesh")


def sqlmesh_command(target: Target, *arguments: str) -> list[str]:
    command = [sqlmesh_executable(), "-p", str(target.project_dir)]
    if target.gateway:
        command += ["--gateway", target.gateway]
    return command + list(arguments)


def model_command(target: Target, model: str, environment: str) -> list[str]:
    return sqlmesh_command(target, "run", environment, "--select-model", model, "--ignore-cron")


def _model_and_environment(row: Mapping[str, Any]) -> tuple[str, str]:
    metadata = row.get("metadata") or {}
    return metadata.get("model") or row["key"].split("|", 1)[0], metadata.get("environment") or "prod"


def is_data_error(row: Mapping[str, Any]) -> bool:
    """A failed blocking audit: re-running cannot help until the data changes."""
    return row.get("error_category") == ErrorCategory.DATA.value or bool((row.get("metadata") or {}).get("failed_audits"))


def _run_sqlmesh(session: CheckpointSession, target: Target, command: list[str]) -> subprocess.CompletedProcess[str]:
    session.close()
    return subprocess.run(command, cwd=target.project_dir, capture_output=True, text=True, timeout=MODEL_TIMEOUT_SECONDS, check=False)


def _last_line(completed: subprocess.CompletedProcess[str]) -> str:
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or [""]
    return f"sqlmesh exited {completed.returncode}" + (f": {tail[0]}" if tail[0] else "")


def _rerun_models(session: CheckpointSession, target: Target, rows: list[Mapping[str, Any]]) -> list[Outcome]:
    runs: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        runs.setdefault(_model_and_environment(row), []).append(row)
    outcomes = []
    for (model, environment), model_rows in runs.items():
        command = model_command(target, model, environment)
        completed = _run_sqlmesh(session, target, command)
        action = " ".join(command[1:])
        for row in model_rows:
            outcome = _outcome_of(session, row, action)
            if outcome.outcome != RECOVERED:
                outcome.message = (
                    f"{outcome.message} ({_last_line(completed)}). "
                    f"If it failed in a `sqlmesh plan`, `run` has nothing to re-run: once the data or model is fixed, "
                    f"run `sqlmesh plan {environment} --restate-model {model}` (a changed model: `sqlmesh plan {environment}`)"
                )
            outcomes.append(outcome)
    return outcomes


def _restate_sources(
    session: CheckpointSession, target: Target, rows: list[Mapping[str, Any]], apply: bool
) -> list[Outcome]:
    by_environment: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_environment.setdefault(_model_and_environment(row)[1], []).append(row)
    try:
        context = model_fixes.load_context(target.project_dir, target.gateway)
    except Exception as error:
        raise CliError(f"Cannot load the SQLMesh project {target.project_dir} to find what to restate: {error}") from error
    outcomes = []
    for environment, env_rows in by_environment.items():
        checkpoint = session.checkpoint(env_rows[0]["pipeline"])
        failed = [_model_and_environment(row)[0] for row in env_rows]
        plan = model_fixes.restatement(context, target.project_dir, checkpoint, environment, failed)
        command = sqlmesh_command(target, *plan.arguments(), "--auto-apply", "--no-prompts")
        shown = "sqlmesh " + " ".join(plan.arguments())
        if not apply:
            message = (
                f"A data error: fix the data, then restate where it enters ({', '.join(plan.models)}): "
                f"`{shown}`, or run this command again with --apply"
            )
            outcomes.extend(Outcome(r["pipeline"], r["scope"], r["key"], shown, PLANNED, message) for r in env_rows)
            continue
        completed = _run_sqlmesh(session, target, command)
        for row in env_rows:
            outcome = _outcome_of(session, row, shown)
            if outcome.outcome != RECOVERED:
                outcome.message = f"{outcome.message} ({_last_line(completed)}); is the data fixed?"
            outcomes.append(outcome)
    return outcomes


def _retry_models(session: CheckpointSession, target: Target, rows: list[Mapping[str, Any]], apply: bool) -> list[Outcome]:
    if target.project_dir is None:
        message = "Not retried: MODEL items are re-run through SQLMesh; pass --project (or run `sqlmesh osaa-recover` in the project)"
        return [Outcome(r["pipeline"], r["scope"], r["key"], "none", NOT_RETRYABLE, message) for r in rows]
    data_errors = [row for row in rows if is_data_error(row)]
    others = [row for row in rows if not is_data_error(row)]
    outcomes = _restate_sources(session, target, data_errors, apply) if data_errors else []
    return outcomes + (_rerun_models(session, target, others) if others else [])


# -- all -------------------------------------------------------------------------------


def _not_retried(rows: list[Mapping[str, Any]]) -> list[Outcome]:
    message = "Not retried: a plan/run is not re-run as a whole; retry its MODEL items (--scope model)"
    return [Outcome(r["pipeline"], r["scope"], r["key"], "none", NOT_RETRYABLE, message) for r in rows]


def _select(
    session: CheckpointSession, pipelines: Iterable[str], scope: CheckpointScope, key: str | None
) -> tuple[list[dict[str, Any]], list[Outcome]]:
    """Failing rows of ``scope`` to retry, and outcomes for a ``key`` whose row is not failing."""
    rows, skipped = [], []
    for name in pipelines:
        checkpoint = session.checkpoint(name)
        if key is None:
            rows.extend(failing_rows(checkpoint, scope.value))
        elif (row := checkpoint.get(scope, key)) is not None:
            if is_failing(row):
                rows.append(row)
            else:
                skipped.append(Outcome(name, scope.value, key, "none", SKIPPED, f"Nothing to retry: it is {row['status']}"))
    return rows, skipped


def retry(
    session: CheckpointSession,
    target: Target,
    store: ObjectStore,
    pipelines: Iterable[str],
    scope: str | None,
    key: str | None,
    apply: bool = False,
) -> list[Outcome]:
    """Retry scope by scope, selecting each after the previous ran (a rolled-back transaction fails its files)."""
    pipelines = list(pipelines)
    handlers: dict[CheckpointScope, Callable[[list[dict[str, Any]]], list[Outcome]]] = {
        CheckpointScope.OPERATION: lambda rows: _retry_operations(session, target, store, rows),
        CheckpointScope.FILE: lambda rows: [_retry_file(session, target, store, row) for row in rows],
        CheckpointScope.MODEL: lambda rows: _retry_models(session, target, rows, apply),
        CheckpointScope.PIPELINE: _not_retried,
    }
    outcomes: list[Outcome] = []
    for current in ORDER:
        if scope is not None and current.value != scope:
            continue
        rows, skipped = _select(session, pipelines, current, key)
        outcomes.extend(skipped)
        if rows:
            outcomes.extend(handlers[current](rows))
    return outcomes
