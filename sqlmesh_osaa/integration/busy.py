"""A database another process holds, said as a SQLMesh error instead of a DuckDB traceback.

A second ``sqlmesh plan``/``run`` while one is running finds the warehouse (or the checkpoint
database) locked: DuckDB allows one writer process per file. SQLMesh's CLI prints its own
errors as one ``Error:`` line but lets a DuckDB ``IOException`` escape as a traceback, so the
plan wrapper turns a lock found before the plan into a ``SQLMeshError`` naming the file, the
process holding it and what to do. The runner lease of ephemeral runners (another runner
holds it, or this one lost it) is said the same way.
"""

from __future__ import annotations

import re

from sqlmesh.utils.errors import SQLMeshError

from sqlmesh_osaa.exceptions import CheckpointError, RunnerLeaseError

_DUCKDB_LOCK = re.compile(r'Could not set lock on file "(?P<path>[^"]+)": Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)')


def busy_error(error: BaseException) -> SQLMeshError | None:
    """The clear error for a database locked by another process, or None for any other failure."""
    if isinstance(error, RunnerLeaseError) or (isinstance(error, CheckpointError) and "locked by another process" in str(error)):
        return SQLMeshError(f"sqlmesh-osaa: {error}")
    match = next(filter(None, (_DUCKDB_LOCK.search(str(cause)) for cause in _causes(error))), None)
    if match is None:
        return None
    return SQLMeshError(
        f"The database {match['path']} is locked by another process, PID {match['pid']} ({match['program']}): "
        "DuckDB lets one process at a time use it, so another sqlmesh plan/run (or a tool) holds it. "
        "Wait for that process to finish, then run this command again"
    )


def _causes(error: BaseException) -> list[BaseException]:
    """``error`` and what it was raised from (SQLMesh wraps a failed state migration)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
