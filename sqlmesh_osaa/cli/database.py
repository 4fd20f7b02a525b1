"""The checkpoint store as one command sees it: one PipelineCheckpoint per pipeline.

A PipelineCheckpoint serves one pipeline, and the store may hold several ("ingest",
"transactions", the SQLMesh project's). The session opens them on demand on one store and
answers, through the store interface, the two questions the checkpoint API has no method
for: which pipelines the store holds, and how many failures an open circuit breaker caused.

The checkpoint package is imported when the first checkpoint opens: a command that does not
need the store (an unchanged re-run the skip index answers) never loads it.

On a DuckDB file, opening the first checkpoint takes DuckDB's file lock, waiting
``lock_timeout`` seconds for another process; on PostgreSQL (``checkpoint.backend:
postgres``) nothing waits, and an in-progress row is interrupted only when its run's lease
is gone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmesh_osaa.settings import get_settings

if TYPE_CHECKING:
    from sqlmesh_osaa.checkpoint import CheckpointStore, PipelineCheckpoint

# A name that never holds rows: only used to open the store before its pipelines are known.
_PROBE_PIPELINE = "osaa-recover"
_BREAKER_MESSAGE_PREFIX = "Circuit breaker is"


class MissingDatabaseError(Exception):
    """The database file does not exist (nothing ran yet, or the path is wrong)."""


class UnknownPipelineError(Exception):
    """A ``--pipeline`` that the database does not hold."""


class CheckpointSession:
    """Checkpoints of one store for one command; close it to release the store."""

    def __init__(self, db_path: Path, lock_timeout: float, *, create: bool = False) -> None:
        self.db_path = db_path
        self.lock_timeout = lock_timeout
        self.create = create
        self._checkpoints: dict[str, PipelineCheckpoint] = {}

    def checkpoint(self, pipeline: str) -> PipelineCheckpoint:
        if pipeline not in self._checkpoints:
            on_file = get_settings().checkpoint.backend == "duckdb"
            if on_file and not self.create and not self.db_path.exists():
                raise MissingDatabaseError(self.db_path)
            from sqlmesh_osaa.checkpoint import PipelineCheckpoint

            self._checkpoints[pipeline] = PipelineCheckpoint(pipeline, self.db_path, lock_timeout=self.lock_timeout)
        return self._checkpoints[pipeline]

    def all_pipelines(self) -> list[str]:
        return [name for name in self._anchor().store.pipelines() if name != _PROBE_PIPELINE]

    def pipelines(self, requested: str | None) -> list[str]:
        """``[requested]`` if the store holds it, else every pipeline it holds."""
        known = self.all_pipelines()
        if requested is None:
            return known
        if requested not in known:
            raise UnknownPipelineError(requested, known)
        return [requested]

    def store(self) -> CheckpointStore:
        """The store every pipeline's checkpoint of this session reads, for queries across pipelines."""
        return self._anchor().store

    def breaker_rejections(self) -> dict[str, int]:
        return self._anchor().store.failures_by_pipeline(error_prefix=_BREAKER_MESSAGE_PREFIX)

    def breaker_openings(self) -> dict[str, int]:
        """Openings as error_handler.record_breaker_transitions keeps them: each one fails its item."""
        from sqlmesh_osaa.checkpoint.states import BREAKER_KEY_PREFIX

        return self._anchor().store.failures_by_pipeline(scope="operation", key_prefix=BREAKER_KEY_PREFIX)

    def reclaim_space(self) -> dict[str, Any]:
        """Close this session's checkpoints and let the store give back deleted rows' space.

        A DuckDB file is compacted only by a store alone on it in this process, so the
        session's own checkpoints are closed first and one store is opened for it.
        """
        self.close()
        from sqlmesh_osaa.checkpoint import open_store

        store = open_store(self.db_path, lock_timeout=self.lock_timeout)
        try:
            return store.reclaim_space()
        finally:
            store.close()

    def close(self) -> None:
        """Release the store so another process (a pipeline, ``sqlmesh run``) can open it."""
        for checkpoint in self._checkpoints.values():
            checkpoint.close()
        self._checkpoints.clear()

    def _anchor(self) -> PipelineCheckpoint:
        return next(iter(self._checkpoints.values()), None) or self.checkpoint(_PROBE_PIPELINE)
