"""The plan that fixes a MODEL failure caused by data: which models to restate, from SQLMesh's DAG.

A blocking audit that failed on a model is a data error; the bad rows are in that model's
output or came from upstream. Restating the failed model alone re-reads the same upstream
tables and fails the same audit again. What works is restating where the data enters: the
*sources* of the failed model, i.e. the models upstream of it (itself included) that have no
upstream model in the project. SQLMesh then restates everything downstream of them, the
failed model included, in one plan.

When some of those sources are ``osaa_file_ingest`` models whose raw files changed since they
last landed (the FILE checkpoints tell), only those are restated: that is where the fixed
data is. Otherwise every source is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint

INGEST_MATERIALIZATION = "osaa_file_ingest"


@dataclass(frozen=True)
class Restatement:
    """A restatement plan of one environment."""

    environment: str
    models: tuple[str, ...]
    failed: tuple[str, ...]

    def arguments(self) -> list[str]:
        environment = [] if self.environment == "prod" else [self.environment]
        restate = [arg for model in self.models for arg in ("--restate-model", model)]
        return ["plan", *environment, *restate]


def load_context(project_dir: Path, gateway: str | None) -> Any:
    from sqlmesh import Context

    return Context(paths=[project_dir], gateway=gateway)


def _sources(context: Any, model_name: str) -> list[Any]:
    model = context.get_model(model_name)
    if model is None:
        return []
    dag = context.dag
    upstream = {model.fqn, *dag.upstream(model.fqn)}
    models = {fqn: context.get_model(fqn) for fqn in upstream}
    known = {fqn: m for fqn, m in models.items() if m is not None}
    return [m for fqn, m in sorted(known.items()) if not (set(m.depends_on) & set(known) - {fqn})]


def _raw_files(model: Any, project_dir: Path) -> list[Path]:
    kind = model.kind
    if getattr(kind, "materialization", None) != INGEST_MATERIALIZATION:
        return []
    pattern = (getattr(kind, "materialization_properties", None) or {}).get("path")
    return sorted(path.resolve() for path in project_dir.glob(str(pattern))) if pattern else []


def _inputs_changed(model: Any, project_dir: Path, checkpoint: PipelineCheckpoint, landed: dict[str, str]) -> bool:
    """Whether a raw file of this ingest model is new or differs from what last landed."""
    for path in _raw_files(model, project_dir):
        key = landed.get(str(path))
        if key is None or not checkpoint.file_unchanged(CheckpointScope.FILE, key, path):
            return True
    return False


def restatement(
    context: Any, project_dir: Path, checkpoint: PipelineCheckpoint, environment: str, failed_models: Iterable[str]
) -> Restatement:
    """The plan restating the sources of ``failed_models`` (narrowed to changed ingest sources, if any)."""
    failed = tuple(sorted(set(failed_models)))
    sources = {m.name: m for name in failed for m in _sources(context, name)}
    landed = {row["file_path"]: row["key"] for row in checkpoint.list(scope=CheckpointScope.FILE) if row["file_path"]}
    changed = [name for name, m in sources.items() if _inputs_changed(m, project_dir, checkpoint, landed)]
    chosen = changed or list(sources) or list(failed)
    return Restatement(environment, tuple(sorted(chosen)), failed)
