"""The checkpoint database as one command sees it: one PipelineCheckpoint per pipeline.

A PipelineCheckpoint serves one pipeline, and the database may hold several ("ingest",
"transactions", the SQLMesh project's). The session opens them on demand on one file and
answers the two questions the checkpoint module has no function for: which pipelines the
database holds, and how many failures an open circuit breaker caused. Both are read-only
queries on the connection DuckDB shares within the process.

Opening the first checkpoint takes DuckDB's file lock, waiting ``lock_timeout`` seconds for
another process; while the session is open no other process can write, so every
in-progress row it shows was left by a run that ended (interrupted).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from sqlmesh_osaa.checkpoint import PipelineCheckpoint
from sqlmesh_osaa.error_handler import BREAKER_KEY_PREFIX

# A name that never holds rows: only used to open the database before its pipelines are known.
_PROBE_PIPELINE = "osaa-recover"
_PIPELINES_SQL = "SELECT pipeline FROM checkpoints UNION SELECT pipeline FROM checkpoint_events ORDER BY 1"
_BREAKER_REJECTIONS_SQL = """
    SELECT pipeline, count(*) FROM checkpoint_events
    WHERE to_status = 'failed' AND starts_with(error_message, 'Circuit breaker is')
    GROUP BY pipeline
"""
# Openings as error_handler.record_breaker_transitions keeps them: each one fails its item.
_BREAKER_OPENINGS_SQL = f"""
    SELECT pipeline, count(*) FROM checkpoint_events
    WHERE to_status = 'failed' AND scope = 'operation' AND starts_with(key, '{BREAKER_KEY_PREFIX}')
    GROUP BY pipeline
"""


class MissingDatabaseError(Exception):
    """The database file does not exist (nothing ran yet, or the path is wrong)."""


class UnknownPipelineError(Exception):
    """A ``--pipeline`` that the database does not hold."""


class CheckpointSession:
    """Checkpoints of one database for one command; close it to release the file."""

    def __init__(self, db_path: Path, lock_timeout: float, *, create: bool = False) -> None:
        self.db_path = db_path
        self.lock_timeout = lock_timeout
        self.create = create
        self._checkpoints: dict[str, PipelineCheckpoint] = {}

    def checkpoint(self, pipeline: str) -> PipelineCheckpoint:
        if pipeline not in self._checkpoints:
            if not self.create and not self.db_path.exists():
                raise MissingDatabaseError(self.db_path)
            self._checkpoints[pipeline] = PipelineCheckpoint(pipeline, self.db_path, lock_timeout=self.lock_timeout)
        return self._checkpoints[pipeline]

    def all_pipelines(self) -> list[str]:
        return [name for (name,) in self._read(_PIPELINES_SQL) if name != _PROBE_PIPELINE]

    def pipelines(self, requested: str | None) -> list[str]:
        """``[requested]`` if the database holds it, else every pipeline it holds."""
        known = self.all_pipelines()
        if requested is None:
            return known
        if requested not in known:
            raise UnknownPipelineError(requested, known)
        return [requested]

    def breaker_rejections(self) -> dict[str, int]:
        return dict(self._read(_BREAKER_REJECTIONS_SQL))

    def breaker_openings(self) -> dict[str, int]:
        return dict(self._read(_BREAKER_OPENINGS_SQL))

    def close(self) -> None:
        """Release the database so another process (a pipeline, ``sqlmesh run``) can open it."""
        for checkpoint in self._checkpoints.values():
            checkpoint.close()
        self._checkpoints.clear()

    def _read(self, sql: str) -> list[tuple]:
        anchor = next(iter(self._checkpoints.values()), None) or self.checkpoint(_PROBE_PIPELINE)
        with duckdb.connect(str(anchor.db_path)) as connection:
            return connection.execute(sql).fetchall()
