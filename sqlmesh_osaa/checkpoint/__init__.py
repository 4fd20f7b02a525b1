"""Checkpoints: what is done, what failed and what was interrupted.

The seed's API (:class:`PipelineCheckpoint`, :class:`CheckpointScope`,
:class:`CheckpointStatus`, :func:`calculate_checksum`) over a small store interface
(:mod:`.store`) with two backends: a DuckDB file, the embedded default
(:mod:`.duckdb_store`), and PostgreSQL for teams running several runners
(:mod:`.postgres_store`). See docs/checkpoints.md.
"""

from sqlmesh_osaa.checkpoint.files import calculate_checksum
from sqlmesh_osaa.checkpoint.pipeline import CompletionItem, ItemChange, PipelineCheckpoint, StartItem, open_store
from sqlmesh_osaa.checkpoint.states import (
    COMPLETED,
    EVENT_COLUMNS,
    FAILED,
    IN_PROGRESS,
    PENDING,
    ROW_COLUMNS,
    CheckpointScope,
    CheckpointStatus,
    Fingerprint,
)
from sqlmesh_osaa.checkpoint.store import CheckpointStore

__all__ = [
    "COMPLETED",
    "EVENT_COLUMNS",
    "FAILED",
    "IN_PROGRESS",
    "PENDING",
    "ROW_COLUMNS",
    "CheckpointScope",
    "CheckpointStatus",
    "CheckpointStore",
    "CompletionItem",
    "Fingerprint",
    "ItemChange",
    "PipelineCheckpoint",
    "StartItem",
    "calculate_checksum",
    "open_store",
]
