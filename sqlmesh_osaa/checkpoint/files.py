"""File idempotency: fingerprint a file at completion, and tell later whether it changed.

A file is unchanged when its size and mtime_ns equal the record (nothing is read) or,
when they differ or verification is asked for, when its MD5 equals the recorded one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlmesh_osaa.checkpoint.states import Fingerprint

logger = logging.getLogger(__name__)


def calculate_checksum(path: str | Path) -> str:
    """The seed's name for the streamed MD5 of a file (``storage.file_md5``).

    Object storage is imported on the first checksum: a command that only reads the store
    (the recovery CLI's reads) never needs it.
    """
    from sqlmesh_osaa.storage import file_md5

    return file_md5(path)

_MAX_LISTED = 5


def fingerprints(files: Iterable[tuple[str | Path | None, str | Fingerprint | None]]) -> list[Fingerprint]:
    """Fingerprint each ``(file_path, checksum or fingerprint)``; a file that vanished has none.

    A :class:`Fingerprint` given by the caller (taken when it read the file) is kept as is:
    the file is neither stat'ed nor read.
    """
    result, missing = [], []
    for file_path, known in files:
        if isinstance(known, Fingerprint):
            result.append(known)
            continue
        if file_path is None:
            result.append(Fingerprint(known, None, None))
            continue
        try:
            stat = os.stat(file_path)
            result.append(Fingerprint(known or calculate_checksum(file_path), stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            missing.append(str(file_path))
            result.append(Fingerprint(known, None, None))
    if missing:
        logger.warning(
            "Completed %d items without a fingerprint (their files no longer exist; a later run redoes them): %s",
            len(missing),
            ", ".join(missing[:_MAX_LISTED]),
        )
    return result


# From this many files a batch is fingerprinted on a thread of its own (fingerprints_meanwhile).
_BACKGROUND_FROM = 1000


def fingerprints_meanwhile(
    files: Sequence[tuple[str | Path | None, str | Fingerprint | None]],
) -> Callable[[], list[Fingerprint]]:
    """:func:`fingerprints` of many files started on a thread; the returned call waits for them.

    A batch's stat calls (0.5 s for 100k files) then run while its store reads the rows
    (the server works, the connection's thread waits with the GIL released). The call
    returns the same list, or raises the same error, every time it is made.
    """
    if len(files) < _BACKGROUND_FROM:
        result = fingerprints(files)
        return lambda: result
    outcome: list[Any] = []

    def take() -> None:
        try:
            outcome.append(fingerprints(files))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=take, name="osaa-fingerprints", daemon=True)
    thread.start()

    def wait() -> list[Fingerprint]:
        thread.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    return wait


def file_matches(
    record: Mapping[str, Any],
    file_path: str | Path,
    verify_checksum: bool,
    known_stat: tuple[int, int] | None = None,
) -> bool:
    """Whether ``file_path`` still holds what ``record`` fingerprinted; reads it only when needed.

    ``known_stat`` is the file's (size, mtime_ns) when the caller already stat'ed it.
    """
    if known_stat is None:
        try:
            stat = os.stat(file_path)
        except OSError:
            return False
        known_stat = (stat.st_size, stat.st_mtime_ns)
    size, mtime_ns = known_stat
    if record["file_size"] is not None and size != record["file_size"]:
        return False
    if not verify_checksum and record["file_mtime_ns"] is not None and mtime_ns == record["file_mtime_ns"]:
        return True
    if record["checksum"] is None:
        return False
    try:
        return calculate_checksum(file_path) == record["checksum"]
    except OSError:
        return False
