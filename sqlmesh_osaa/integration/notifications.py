"""The package's own failures, announced through the SQLMesh project's ``notification_targets``.

A team that set up Slack, email or a custom target for SQLMesh hears about these too, with
no further configuration:

- *publication held back*: a model evaluation failed (a blocking audit: a data error; or the
  evaluation itself), so the environment keeps publishing what it held before;
- *publication failed* / *transaction conflict*: the environment's publication did not commit;
- *circuit breaker opened*: object storage failed so often that calls to it stopped;
- *recovery needed*: the leftovers of a crashed run could not be reconciled at start.

An alert goes to every configured target that listens to at least one SQLMesh failure event
(``apply_failure``, ``run_failure``, ``audit_failure``, ``migration_failure``): a target that
asked only for start/end notices does not get failures. Each alert is sent once per process
(a reason, model and environment), with status ``failure``; its message names the model (if
any), the environment and the reason, and says what to do. A target that cannot be reached is
logged, never raised: announcing a failure must not cause one. ``monitoring.alerts: false``
turns this off. Targets come from the SQLMesh Context the CLI built; under the Python API
(no CLI) no target is known and nothing is sent.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Iterable

from sqlmesh.core.notification_target import NotificationStatus

from sqlmesh_osaa.checkpoint import CheckpointScope
from sqlmesh_osaa.commit_log import CommitLog
from sqlmesh_osaa.error_handler import CircuitBreaker, CircuitBreakerState
from sqlmesh_osaa.integration import runtime
from sqlmesh_osaa.transaction_manager import JOURNAL_PREFIX

_log = logging.getLogger(__name__)

PREFIX = "sqlmesh-osaa"
FAILURE_EVENTS = frozenset({"apply_failure", "run_failure", "audit_failure", "migration_failure"})
HELD_BACK = "publication held back"
PUBLICATION_FAILED = "publication failed"
CONFLICT = "transaction conflict"
BREAKER_OPENED = "circuit breaker opened"
RECOVERY_NEEDED = "recovery needed"

_sent: set[tuple[str, str | None, str | None]] = set()
_sent_lock = threading.Lock()


@dataclass(frozen=True)
class Alert:
    """One failure of the package, as a person reads it."""

    reason: str
    environment: str | None
    detail: str
    action: str
    model: str | None = None

    @property
    def message(self) -> str:
        noun = "models" if self.model and "," in self.model else "model"
        about = f" for {noun} `{self.model}`" if self.model else ""
        where = f" in environment `{self.environment}`" if self.environment else ""
        return f"{PREFIX}: {self.reason}{about}{where}"

    @property
    def details(self) -> str:
        lines = [f"Reason: {self.detail}", f"What to do: {self.action}"]
        if self.model:
            lines.insert(0, f"Model: {self.model}")
        if self.environment:
            lines.insert(0, f"Environment: {self.environment}")
        return "\n".join(lines)


def _listens_to_failures(target: Any) -> bool:
    events = {getattr(event, "value", event) for event in getattr(target, "notify_on", ())}
    return bool(events & FAILURE_EVENTS) and bool(getattr(target, "is_configured", True))


def failure_targets(context: Any) -> list[Any]:
    """The Context's targets (project and user) that listen to SQLMesh failures."""
    targets = list(getattr(context, "notification_targets", None) or [])
    for user in getattr(context, "users", None) or []:
        targets.extend(getattr(user, "notification_targets", None) or [])
    unique = {id(target): target for target in targets}
    return [target for target in unique.values() if _listens_to_failures(target)]


def send(rt: runtime.Runtime, alert: Alert) -> int:
    """Send ``alert`` once per process to the failure targets; returns how many received it."""
    if not rt.settings.monitoring.alerts:
        return 0
    with _sent_lock:
        identity = (alert.reason, alert.model, alert.environment)
        if identity in _sent:
            return 0
        _sent.add(identity)
    context = runtime.sqlmesh_cli_context_object()
    targets = failure_targets(context) if context is not None else []
    delivered = 0
    for target in targets:
        try:
            target.send(NotificationStatus.FAILURE, alert.message, exc=alert.details)
            delivered += 1
        except Exception as error:
            _log.warning("sqlmesh-osaa could not send %r to notification target %s: %s", alert.message, type(target).__name__, error)
    _log.warning("%s (%s)", alert.message, alert.detail)
    return delivered


def model_failed(rt: runtime.Runtime, environment: str, model: str, failure: str) -> None:
    if "blocking audit" in failure:
        detail = f"{failure} (a data error: permanent until the data changes)"
        action = "fix the data, then run `sqlmesh osaa-recover retry --scope model --apply` (it restates the models that hold it)"
    else:
        detail = failure
        action = "see `sqlmesh osaa-recover list-failed`, fix the cause, then `sqlmesh osaa-recover retry --scope model`"
    send(rt, Alert(HELD_BACK, environment, detail + f"; {rt.env_prefix(environment)}/ keeps what it held before", action, model))


def run_failures(rt: runtime.Runtime, environment: str, failures: Iterable[str]) -> None:
    """One alert per failed model of a plan/run (``failures`` as ``PipelineRun`` keeps them: ``<model>: <error>``)."""
    for failure in failures:
        model, _, error = failure.partition(": ")
        model_failed(rt, environment, model, error or failure)


def _destinations(rt: runtime.Runtime, error: BaseException) -> list[str]:
    """The keys the failed publication was writing: the contested key, else its transaction's manifest."""
    context = getattr(error, "context", None) or {}
    if context.get("key"):
        return [str(context["key"])]
    transaction_id = context.get("transaction_id")
    row = rt.checkpoint.get(CheckpointScope.OPERATION, f"{JOURNAL_PREFIX}{transaction_id}") if transaction_id else None
    metadata = (row or {}).get("metadata") or {}
    if "manifest" not in metadata and metadata.get("position"):
        # Decided, not finished: the row names the log entry, which holds the manifest.
        entry = CommitLog(rt.store, rt.error_handler).entry(int(metadata["position"]))
        return sorted(entry.touched) if entry is not None else []
    manifest = metadata.get("manifest") or {}
    return [put["key"] for put in manifest.get("puts", []) if put.get("key")]


def _owned(snapshot: Any, prefix: str) -> str | None:
    """The key (export) or prefix (ingest landing) a publishing model owns under ``prefix``."""
    properties = getattr(snapshot.model.kind, "materialization_properties", None) or {}
    if properties.get("key"):
        return f"{prefix}/{properties['key']}"
    if properties.get("source"):
        return f"{prefix}/landing/{properties['source']}/"
    return None


def publishing_models(rt: runtime.Runtime, error: BaseException, snapshots: Iterable[Any], prefix: str) -> list[str]:
    """The models whose published objects the failed publication carried."""
    destinations = _destinations(rt, error)
    models = set()
    for snapshot in snapshots:
        owned = _owned(snapshot, prefix) if getattr(snapshot, "is_model", False) else None
        if owned and any(key == owned or (owned.endswith("/") and key.startswith(owned)) for key in destinations):
            models.add(snapshot.model.name)
    return sorted(models)


def publication_failed(rt: runtime.Runtime, environment: str, error: BaseException, snapshots: Iterable[Any] = ()) -> None:
    conflict = any(cls.__name__ == "TransactionConflictError" for cls in type(error).__mro__)
    reason = CONFLICT if conflict else PUBLICATION_FAILED
    action = (
        "another writer committed these keys first: run the plan/run again on top of its result"
        if conflict
        else "run `sqlmesh osaa-recover reconcile` (or the next plan/run) to publish again"
    )
    prefix = rt.env_prefix(environment)
    try:
        models = ", ".join(publishing_models(rt, error, snapshots, prefix)) or None
    except Exception:
        _log.exception("sqlmesh-osaa could not tell which models the failed publication carried")
        models = None
    send(rt, Alert(reason, environment, f"publishing to {prefix}/ failed: {type(error).__name__}: {error}", action, models))


def recovery_needed(rt: runtime.Runtime, environment: str, error: BaseException) -> None:
    detail = f"the leftovers of an earlier run could not be reconciled: {type(error).__name__}: {error}"
    send(rt, Alert(RECOVERY_NEEDED, environment, detail, "run `sqlmesh osaa-recover transactions`, then `sqlmesh osaa-recover reconcile`"))


def watch_breaker(rt: runtime.Runtime, environment: str) -> None:
    """Announce the object store's circuit breaker opening (once per process)."""
    breaker = rt.error_handler.circuit_breaker
    if breaker is None or breaker.__dict__.setdefault("_osaa_alerting", False):
        return
    breaker.__dict__["_osaa_alerting"] = True

    def opened(changed: CircuitBreaker, old: CircuitBreakerState, new: CircuitBreakerState) -> None:
        if new is CircuitBreakerState.OPEN and old is CircuitBreakerState.CLOSED:
            detail = f"circuit breaker {changed.name!r} opened after {changed.failure_count} failures: {changed.last_failure!r}"
            action = "check the object store (endpoint, credentials, network); items it refused are retried by `sqlmesh osaa-recover retry`"
            send(rt, Alert(BREAKER_OPENED, environment, detail, action))

    breaker.add_listener(opened)
