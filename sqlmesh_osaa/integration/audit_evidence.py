"""Whether SQLMesh recorded *this* evaluation's interval, i.e. its blocking audits passed.

SQLMesh records an interval (``Scheduler.evaluate``: evaluate, audit, then
``state_sync.add_interval``) only after the evaluation's blocking audits passed. The
``Scheduler.evaluate`` patch writes an audit marker beside the staged output once that call
returned. A process killed between SQLMesh recording the interval and the marker leaves a
sealed output without one; it is decided here from SQLMesh's own records:

an output of table T, interval I, whose evaluation started at millisecond S, was recorded
by SQLMesh if and only if state holds an interval row of T that covers I, was written at or
after S, and before the next evaluation of T overlapping I started. Evaluations of one table
and interval never overlap in time (SQLMesh evaluates an interval once per command and holds
the state lock), so such a row can only come from this evaluation. Rows of a restatement
that is still running carry the old times, so an evaluation killed before its audits never
matches. Compacted rows (``sqlmesh janitor``) carry the compaction time and prove nothing.

The rows are read through SQLMesh's state sync (its ``interval_state``: the engine adapter,
schema and table SQLMesh itself uses), so ``state_schema`` and ``state_connection`` apply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

from sqlglot import exp
from sqlmesh.core.state_sync import StateSync

from sqlmesh_osaa.integration.staged_outputs import EvaluationDir, StagedOutput

_log = logging.getLogger(__name__)

ROW_COLUMNS = (
    "name",
    "version",
    "dev_version",
    "start_ts",
    "end_ts",
    "is_dev",
    "is_removed",
    "is_compacted",
    "is_pending_restatement",
    "created_ts",
)


@dataclass(frozen=True)
class IntervalRow:
    name: str
    version: str
    dev_version: str | None
    start_ts: int
    end_ts: int
    is_dev: bool
    is_removed: bool
    is_compacted: bool
    is_pending_restatement: bool
    created_ts: int

    def records(self, output: StagedOutput) -> bool:
        """Whether this row is an addition of the output's table covering its interval."""
        if self.is_removed or self.is_pending_restatement or self.is_dev == output.deployable:
            return False
        if self.name != output.snapshot_name:
            return False
        table = self.version if output.deployable else self.dev_version
        return table == output.table_version and self.start_ts <= output.start and output.end <= self.end_ts


def base_state_sync(state_sync: StateSync) -> Any:
    """The engine-adapter state sync under SQLMesh's caching/delegating wrappers."""
    while not hasattr(state_sync, "interval_state") and hasattr(state_sync, "state_sync"):
        state_sync = state_sync.state_sync
    if not hasattr(state_sync, "interval_state"):
        raise RuntimeError(f"SQLMesh state sync {type(state_sync).__name__} has no interval_state to read")
    return state_sync


def interval_rows(state_sync: StateSync, names: Iterable[str]) -> list[IntervalRow]:
    """Every interval row SQLMesh's state holds for the snapshots named ``names``."""
    names = sorted(set(names))
    if not names:
        return []
    interval_state = base_state_sync(state_sync).interval_state
    query = (
        exp.select(*ROW_COLUMNS)
        .from_(interval_state.intervals_table)
        .where(exp.column("name").isin(*[exp.Literal.string(name) for name in names]))
    )
    rows = interval_state.engine_adapter.fetchall(query, quote_identifiers=True)
    return [
        IntervalRow(
            name=name,
            version=version,
            dev_version=dev_version,
            start_ts=int(start),
            end_ts=int(end),
            is_dev=bool(is_dev),
            is_removed=bool(is_removed),
            is_compacted=bool(is_compacted),
            is_pending_restatement=bool(pending),
            created_ts=int(created or 0),
        )
        for name, version, dev_version, start, end, is_dev, is_removed, is_compacted, pending, created in rows
    ]


def recorded_by_sqlmesh(output: StagedOutput, rows: Iterable[IntervalRow], siblings: Iterable[EvaluationDir]) -> bool:
    """Whether state proves SQLMesh recorded this evaluation's interval (see the module docstring)."""
    later = [
        d.started_ms
        for d in siblings
        if d.evaluation != output.evaluation and d.started_ms > output.started_ms and d.start < output.end and output.start < d.end
    ]
    bound = min(later, default=None)
    return any(
        row.records(output)
        and not row.is_compacted
        and row.created_ts >= output.started_ms
        and (bound is None or row.created_ts < bound)
        for row in rows
    )


def table_in_state(output: StagedOutput, rows: Iterable[IntervalRow]) -> bool:
    """Whether state still records any interval of the output's physical table (else it was janitored)."""
    for row in rows:
        if row.name != output.snapshot_name or row.is_removed or row.is_dev == output.deployable:
            continue
        if (row.version if output.deployable else row.dev_version) == output.table_version:
            return True
    return False


@dataclass(frozen=True)
class RecordedInterval:
    """An interval SQLMesh recorded for one snapshot (an ``add_interval`` row, not compacted)."""

    name: str
    identifier: str
    start_ts: int
    end_ts: int
    is_dev: bool
    created_ts: int


def recorded_since(state_sync: StateSync, since_ms: int) -> list[RecordedInterval]:
    """The interval additions SQLMesh wrote at or after ``since_ms`` (epoch ms), oldest first.

    Rows without a snapshot identifier (a pending restatement, compacted or janitored rows)
    and removals are left out: they are no evaluation's record.
    """
    interval_state = base_state_sync(state_sync).interval_state
    query = (
        exp.select("name", "identifier", "start_ts", "end_ts", "is_dev", "created_ts")
        .from_(interval_state.intervals_table)
        .where(
            exp.and_(
                exp.column("created_ts") >= exp.Literal.number(int(since_ms)),
                exp.column("identifier").is_(exp.null()).not_(),
                exp.not_(exp.column("is_removed")),
                exp.not_(exp.column("is_compacted")),
                exp.not_(exp.column("is_pending_restatement")),
            )
        )
        .order_by("created_ts")
    )
    rows = interval_state.engine_adapter.fetchall(query, quote_identifiers=True)
    return [
        RecordedInterval(name, identifier, int(start), int(end), bool(is_dev), int(created))
        for name, identifier, start, end, is_dev, created in rows
    ]
