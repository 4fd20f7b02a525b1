"""The skip index: what an unchanged ``osaa-ingest`` re-run needs to know, without the database.

An unchanged re-run compares each raw file's size and mtime_ns with what its completed FILE
checkpoint recorded (``PipelineCheckpoint.completed_fingerprints``). That answer lives in the
checkpoint database, and asking it costs DuckDB's import and the opening of the file: most of
the re-run. The skip index is a derived, disposable copy of that answer, kept beside the
database (``<db>.skip-index``) for one ingest scope (pipeline, store, landing prefix, raw
root, pattern, source), together with the identity of the database it was copied from
(inode, size, mtime_ns and ctime_ns of the file and of its WAL).

It is only ever an answer the database would give:

- it is written while the database is open in this process (so no other process can write
  it), after a ``CHECKPOINT`` has folded the WAL into the file, so the identity it records is
  the one the file keeps once closed; after the close the identity is checked again and the
  index removed if it moved;
- every store that opens the database removes it (:func:`discard`), right after taking
  DuckDB's lock: whatever it writes next cannot be behind a stale index;
- a reader uses it only when it reads cleanly, belongs to the same scope and the database
  still has the identity it recorded; on any doubt the caller asks the database.

docs/decisions.md ("The skip index") says why; the format is private to this module and may
change with any release (its ``FORMAT`` is checked; an index of another format is ignored).
"""

from __future__ import annotations

import logging
import marshal
import os
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Tuple

_log = logging.getLogger(__name__)

SUFFIX = ".skip-index"
FORMAT = 1
_MAGIC = "osaa-skip-index"

Fingerprints = Mapping[str, Tuple[Optional[int], Optional[int]]]
FileIdentity = Optional[Tuple[int, int, int, int]]


class Scope(NamedTuple):
    """What the recorded answer depends on, or might: another value of any is another question."""

    pipeline: str
    store: str
    env_prefix: str
    raw_root: str
    pattern: str
    source: Optional[str]


def path_of(db_path: str | Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + SUFFIX)


def discard(db_path: str | Path) -> None:
    """Remove the index of ``db_path``: its store is about to be written."""
    try:
        os.unlink(path_of(db_path))
    except FileNotFoundError:
        pass


def _file_identity(path: str) -> FileIdentity:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def database_identity(db_path: str | Path) -> tuple[FileIdentity, FileIdentity]:
    """The database file's and its WAL's identity (None for a file that does not exist)."""
    db = str(db_path)
    return (_file_identity(db), _file_identity(db + ".wal"))


def save(db_path: str | Path, scope: Scope, fingerprints: Fingerprints, identity: tuple[FileIdentity, FileIdentity]) -> None:
    """Write the index atomically (a temporary file renamed over it); never fsynced: it is disposable."""
    target = path_of(db_path)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    payload = (_MAGIC, FORMAT, tuple(scope), identity, dict(fingerprints))
    try:
        temporary.write_bytes(marshal.dumps(payload))
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        _log.info("Skip index %s not written (%s): the next re-run asks the database", target, error)


def confirm(db_path: str | Path, identity: tuple[FileIdentity, FileIdentity]) -> None:
    """After the database closed: keep the index only if the file still has the identity it records."""
    if database_identity(db_path) != identity:
        _log.info("Checkpoint database %s changed as it closed: its skip index is removed", db_path)
        discard(db_path)


def load(db_path: str | Path, scope: Scope) -> Fingerprints | None:
    """The recorded fingerprints, or None when there is any doubt (missing, unreadable, another scope, stale)."""
    try:
        data = path_of(db_path).read_bytes()
    except OSError:
        return None
    try:
        magic, version, recorded_scope, identity, fingerprints = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        _log.info("Skip index of %s is unreadable: asking the database", db_path)
        return None
    if magic != _MAGIC or version != FORMAT or recorded_scope != tuple(scope) or not isinstance(fingerprints, dict):
        return None
    if identity != database_identity(db_path):
        _log.info("Skip index of %s is stale (the database changed since): asking the database", db_path)
        return None
    return fingerprints
