"""The vocabulary of checkpoints: scopes, states, the columns of a row and of an event."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class CheckpointScope(str, Enum):
    """The granularity of a unit of work."""

    PIPELINE = "pipeline"
    MODEL = "model"
    FILE = "file"
    OPERATION = "operation"


class CheckpointStatus(str, Enum):
    """The state of an item; an item without a row is pending."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


PENDING = CheckpointStatus.PENDING.value
IN_PROGRESS = CheckpointStatus.IN_PROGRESS.value
COMPLETED = CheckpointStatus.COMPLETED.value
FAILED = CheckpointStatus.FAILED.value

# Event kinds: a change of state, or a metadata update that leaves the state as it is.
TRANSITION = "transition"
METADATA = "metadata"


class Fingerprint(NamedTuple):
    """What a completion records of its input file, so a later run can tell it unchanged.

    A caller that fingerprinted the file when it read it (an ingest at discovery) passes
    this to the completion, so the record describes the content that was processed, not
    what the file holds by the time the completion is written.
    """

    checksum: str | None
    size: int | None
    mtime_ns: int | None


NO_FINGERPRINT = Fingerprint(None, None, None)

# A row: the current state of one item, as stored (metadata as JSON text, naive UTC times).
ROW_COLUMNS = (
    "pipeline",
    "scope",
    "key",
    "file_path",
    "status",
    "attempt",
    "error_message",
    "error_category",
    "checksum",
    "file_size",
    "file_mtime_ns",
    "metadata",
    "run_id",
    "owner_pid",
    "owner_host",
    "started_at",
    "updated_at",
    "completed_at",
)
ROW_TIMESTAMPS = ("started_at", "updated_at", "completed_at")

# The public shape of an event, as history() and the CLI show it.
EVENT_COLUMNS = (
    "seq",
    "pipeline",
    "scope",
    "key",
    "file_path",
    "from_status",
    "to_status",
    "at",
    "attempt",
    "run_id",
    "pid",
    "host",
    "error_message",
    "error_category",
)
# What an event stores besides EVENT_COLUMNS: the rest of the row it leaves, so the rows can
# be rebuilt from the log alone (the last event of an item is its row; "pending" deletes it).
EVENT_STATE_COLUMNS = ("kind", "checksum", "file_size", "file_mtime_ns", "metadata", "started_at", "completed_at")
EVENT_LOG_COLUMNS = EVENT_COLUMNS + EVENT_STATE_COLUMNS
EVENT_TIMESTAMPS = ("at", "started_at", "completed_at")
# OPERATION items recording a circuit breaker's openings (error_handler.record_breaker_transitions);
# here so that readers of the store (monitoring, the recovery CLI) need not load the error handler.
BREAKER_KEY_PREFIX = "circuit-breaker/"
