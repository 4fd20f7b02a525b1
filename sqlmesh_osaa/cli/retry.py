"""``retry``: run failed and interrupted items again, each the way its scope is done.

- FILE items are ingested again, one file per transaction, to the key they failed on: the
  key ``<prefix>/landing/<source>/<name>.parquet`` and the recorded raw file say how.
- OPERATION items: interrupted transactions are recovered (rolled back or forward); a
  promotion that was rolled back is applied again under its own transaction id; any other
  rolled-back transaction left production untouched and is re-done by re-running its step.
- MODEL items are re-run through SQLMesh in a subprocess, ``sqlmesh run <environment>
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
from sqlmesh_osaa.cli.context import Target
from sqlmesh_osaa.cli.database import CheckpointSession
from sqlmesh_osaa.cli.failures import COMPLETED, failing_rows, is_failing
from sqlmesh_osaa.error_handler import ErrorHandler
from sqlmesh_osaa.ingest import IngestRequest, run_ingest
from sqlmesh_osaa.promotion import OPERATION as PROMOTE
from sqlmesh_osaa.promotion import promote_prefix
from sqlmesh_osaa.storage import ObjectStore
from sqlmesh_osaa.transaction_manager import JOURNAL_PREFIX, recover_transactions

RECOVERED = "recovered"
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


def model_command(target: Target, model: str, environment: str) -> list[str]:
    command = [sqlmesh_executable(), "-p", str(target.project_dir)]
    if target.gateway:
        command += ["--gateway", target.gateway]
    return command + ["run", environment, "--select-model", model, "--ignore-cron"]


def _retry_models(session: CheckpointSession, target: Target, rows: list[Mapping[str, Any]]) -> list[Outcome]:
    if target.project_dir is None:
        message = "Not retried: MODEL items are re-run through SQLMesh; pass --project (or run `sqlmesh osaa-recover` in the project)"
        return [Outcome(r["pipeline"], r["scope"], r["key"], "none", NOT_RETRYABLE, message) for r in rows]
    runs: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        metadata = row.get("metadata") or {}
        model = metadata.get("model") or row["key"].split("|", 1)[0]
        runs.setdefault((model, metadata.get("environment") or "prod"), []).append(row)
    outcomes = []
    for (model, environment), model_rows in runs.items():
        command = model_command(target, model, environment)
        session.close()
        completed = subprocess.run(
            command, cwd=target.project_dir, capture_output=True, text=True, timeout=MODEL_TIMEOUT_SECONDS, check=False
        )
        action = " ".join(command[1:])
        for row in model_rows:
            outcome = _outcome_of(session, row, action)
            if outcome.outcome != RECOVERED:
                tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or [""]
                outcome.message = (
                    f"{outcome.message} (sqlmesh exited {completed.returncode}{': ' + tail[0] if tail[0] else ''}). "
                    f"If it failed in a `sqlmesh plan`, `run` has nothing to re-run: once the data or model is fixed, "
                    f"run `sqlmesh plan {environment} --restate-model {model}` (a changed model: `sqlmesh plan {environment}`)"
                )
            outcomes.append(outcome)
    return outcomes


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
) -> list[Outcome]:
    """Retry scope by scope, selecting each after the previous ran (a rolled-back transaction fails its files)."""
    pipelines = list(pipelines)
    handlers: dict[CheckpointScope, Callable[[list[dict[str, Any]]], list[Outcome]]] = {
        CheckpointScope.OPERATION: lambda rows: _retry_operations(session, target, store, rows),
        CheckpointScope.FILE: lambda rows: [_retry_file(session, target, store, row) for row in rows],
        CheckpointScope.MODEL: lambda rows: _retry_models(session, target, rows),
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
