"""Checkpoint changes kept in memory and written together, for items whose loss a caller can repair.

A durable commit per transition costs a few milliseconds (DuckDB's fsync, a PostgreSQL
round trip). For items that are many, short and reconstructible (the SQLMesh integration's
MODEL checkpoints: what SQLMesh recorded is in its own state), a caller collects the
changes here and makes them durable in one transaction at the points that need them
(:meth:`DeferredChanges.flush`). A change waits at most ``max_delay_seconds``: the first
change added after that flushes everything, so a long command does not hold its work in
memory for hours. A process killed before a flush loses the changes not yet written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from sqlmesh_osaa.checkpoint.pipeline import ItemChange, PipelineCheckpoint
from sqlmesh_osaa.checkpoint.states import CheckpointScope
from sqlmesh_osaa.exceptions import CheckpointError, ErrorCategory

logger = logging.getLogger(__name__)

DEFAULT_MAX_DELAY_SECONDS = 10.0


class DeferredChanges:
    """Changes of one scope of one checkpoint, buffered; thread safe."""

    def __init__(
        self,
        checkpoint: PipelineCheckpoint,
        scope: CheckpointScope | str,
        max_delay_seconds: float = DEFAULT_MAX_DELAY_SECONDS,
    ) -> None:
        self.checkpoint = checkpoint
        self.scope = CheckpointScope(scope)
        self.max_delay_seconds = max_delay_seconds
        self._pending: list[ItemChange] = []
        self._oldest: float | None = None
        self._lock = threading.Lock()
        # Held for a whole flush, so batches reach the store in the order they were taken.
        self._flush_lock = threading.Lock()

    def add(self, *changes: ItemChange) -> None:
        """Buffer ``changes`` (in order); flushes when the oldest buffered change waited too long."""
        with self._lock:
            self._pending.extend(changes)
            if self._oldest is None:
                self._oldest = time.monotonic()
            due = time.monotonic() - self._oldest >= self.max_delay_seconds
        if due:
            self.flush()

    def pending(self) -> list[ItemChange]:
        """The changes not yet written, oldest first."""
        with self._lock:
            return list(self._pending)

    def flush(self) -> int:
        """Write every buffered change in one transaction; returns how many were written.

        If the batch is refused (a change became illegal because another run changed the
        item meanwhile), each change is tried on its own and the refused ones are logged and
        dropped: one stale item must not cost the others their record. A store error
        propagates, and the changes stay buffered for the next flush.
        """
        with self._flush_lock:
            with self._lock:
                batch, self._pending, self._oldest = self._pending, [], None
            if not batch:
                return 0
            try:
                self.checkpoint.record_changes(self.scope, batch)
            except CheckpointError as error:
                if error.category is not ErrorCategory.PERMANENT:
                    self._put_back(batch)
                    raise
                logger.warning(
                    "A batch of %d %s changes was refused (%s); writing them one by one",
                    len(batch),
                    self.scope.value,
                    error,
                )
                self._write_each(batch)
            except BaseException:
                self._put_back(batch)
                raise
            return len(batch)

    def _put_back(self, batch: list[ItemChange]) -> None:
        with self._lock:
            self._pending[:0] = batch
            self._oldest = self._oldest or time.monotonic()

    def _write_each(self, batch: Iterable[ItemChange]) -> None:
        for change in batch:
            try:
                self.checkpoint.record_changes(self.scope, [change])
            except CheckpointError as error:
                logger.warning("Checkpoint change dropped: %s", error)
