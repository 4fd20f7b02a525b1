"""Discovering the raw files an ingest run converts, safely and cheaply.

Discovery is one ``os.scandir`` walk that keeps the single ``stat`` it needs per file
(size and mtime_ns are what the checkpoint's fast unchanged-file test compares), so a
re-run over 100k unchanged files costs about a bare directory walk. For the same
reason a :class:`RawFile` keeps its location as a string and builds the ``Path`` on
demand: most files of a re-run are skipped without ever being opened.

A file discovery cannot accept (a symlink leading out of the raw root, a name that
cannot be an object key, ...) is *refused*, not fatal: :class:`Discovery` lists it with
the reason, and the ingest run records it as that file's failure while the other files
still land. Bad arguments (a missing root, a pattern reaching out of the root) raise
:class:`IngestError` at once: nothing could be discovered.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Iterable, NamedTuple

from sqlmesh_osaa.exceptions import ErrorCategory, IngestError

logger = logging.getLogger(__name__)

DEFAULT_PATTERN = "**/*.csv"

# Editors, browsers and office suites leave these beside real files while writing.
_TEMP_SUFFIXES = (".tmp", ".part", ".crdownload", "~")
_TEMP_PREFIXES = ("~$",)
# S3 keys are UTF-8; control characters are unsafe in keys and in XML listings.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_by_relative = attrgetter("relative")
_NO_SOURCE = (
    "File lies directly in the raw root, so it has no source; move it into a directory named after its source"
)
_NOT_REGULAR = "Not a regular file (a pipe, socket or device); replace it with a regular file"


class RawFile(NamedTuple):
    """A raw file to ingest, with the stat values the checkpoint's fast path compares.

    A named tuple rather than a frozen dataclass: discovery builds one per file, and on a
    re-run over 100k unchanged files that construction is a visible share of the cost.
    """

    real_path: str
    relative: str
    source: str
    name: str
    size: int
    mtime_ns: int

    @property
    def path(self) -> Path:
        """The absolute, resolved path (the symlink's target when the file is a symlink)."""
        return Path(self.real_path)


@dataclass(frozen=True, slots=True)
class RefusedFile:
    """A path discovery would not accept, with the error the ingest run records for it."""

    path: Path
    relative: str
    error: IngestError


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a walk of the raw root found: files to ingest, and files refused with a reason."""

    root: Path
    files: tuple[RawFile, ...] = ()
    refused: tuple[RefusedFile, ...] = ()


def discover_raw_files(
    raw_root: str | Path,
    *,
    pattern: str = DEFAULT_PATTERN,
    source: str | None = None,
) -> Discovery:
    """Find the files under ``raw_root`` that match ``pattern``, sorted by relative path.

    ``pattern`` is a glob on the POSIX path relative to the root (``*`` and ``?`` stay
    within one directory, ``**/`` spans any number of them; case-sensitive; no
    ``[...]`` classes, so brackets in names match themselves). Hidden
    files and directories and temporary files are skipped. Each file's source is the
    first directory under the root, or ``source`` when the root is one source's
    directory; its landing name is the rest of its relative path without the suffix,
    so ``wdi/WDICSV.csv`` lands as ``wdi/WDICSV``.

    Symlinks are followed when they stay inside the root and refused when they lead
    out of it. Raises :class:`IngestError` when the root is missing or the pattern or
    source is unusable.
    """
    root = _resolve_root(raw_root)
    matcher = _compile_pattern(pattern)
    if source is not None:
        _check_source_name(source)
    walk = _Walk(root, matcher, source)
    walk.directory(str(root), "", (str(root),))
    walk.files.sort(key=_by_relative)
    files, collisions = _without_name_collisions(walk.files)
    refused = sorted(walk.refused + collisions, key=_by_relative)
    logger.debug("Discovered %d raw files (%d refused) under %s", len(files), len(refused), root)
    return Discovery(root=root, files=tuple(files), refused=tuple(refused))


def landing_prefix(env_prefix: str) -> str:
    """Where an environment's landing objects live: ``<env>/landing/``."""
    prefix = env_prefix.strip("/")
    return f"{prefix}/landing/" if prefix else "landing/"


def landing_key(env_prefix: str, raw: RawFile) -> str:
    """The object key of ``raw``'s parquet in an environment: ``<env>/landing/<source>/<name>.parquet``."""
    return landing_keys(env_prefix, [raw])[0]


def landing_keys(env_prefix: str, files: Iterable[RawFile]) -> list[str]:
    """:func:`landing_key` of many files, the prefix worked out once."""
    prefix = landing_prefix(env_prefix)
    return [f"{prefix}{raw.source}/{raw.name}.parquet" for raw in files]


def resolve_inside(root: str | Path, candidate: str | Path) -> Path:
    """Resolve ``candidate`` (relative to ``root`` unless absolute) and insist it stays in ``root``.

    Symlinks and ``..`` are resolved first, so neither can smuggle a path outside the
    root. Raises a permanent :class:`IngestError` naming the path and the root.
    """
    resolved_root = Path(root).resolve()
    resolved = (resolved_root / candidate).resolve()
    if not resolved.is_relative_to(resolved_root):
        raise IngestError(
            "Path leads outside the raw root; move the file into the raw root "
            "or point the raw root at a directory that contains it",
            category=ErrorCategory.PERMANENT,
            file_path=str(Path(root) / candidate),
            resolved=str(resolved),
            raw_root=str(resolved_root),
        )
    return resolved


def _resolve_root(raw_root: str | Path) -> Path:
    root = Path(raw_root).expanduser()
    if not root.is_dir():
        problem = "is not a directory" if root.exists() else "does not exist"
        raise IngestError(
            f"Raw data directory {problem}; create it or fix the raw root you passed",
            category=ErrorCategory.PERMANENT,
            raw_root=str(root),
        )
    return root.resolve()


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    """Translate a glob on relative POSIX paths into a regex (``fnmatch`` lets ``*`` cross ``/``)."""
    parts = pattern.split("/")
    if not pattern or pattern.startswith("/") or ".." in parts:
        raise IngestError(
            "Raw file pattern must be a relative glob without '..', such as '**/*.csv'",
            category=ErrorCategory.PERMANENT,
            pattern=pattern,
        )
    regex = ""
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
            continue
        for char in part:
            regex += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        if not last:
            regex += "/"
    return re.compile(regex)


def _check_source_name(source: str) -> None:
    if not source or source in {".", ".."} or "/" in source or _CONTROL_CHARS.search(source):
        raise IngestError(
            "Source name must be one non-empty path segment without '/' or control characters",
            category=ErrorCategory.PERMANENT,
            source=source,
        )


class _Walk:
    """State of one discovery walk; a class only to keep the recursion's arguments short."""

    def __init__(self, root: Path, matcher: re.Pattern[str], source: str | None) -> None:
        self.root = root
        self.matches = matcher.fullmatch
        self.source = source
        self.files: list[RawFile] = []
        self.refused: list[RefusedFile] = []

    def directory(self, real_dir: str, relative_dir: str, chain: tuple[str, ...]) -> None:
        """Walk one directory; ``chain`` holds the real directories above it, to stop symlink loops.

        Kept to cheap checks on the names scandir returns; the per-file work is in :meth:`_file`.
        """
        try:
            with os.scandir(real_dir) as entries:
                listing = list(entries)
        except OSError as exc:
            message = f"Directory cannot be listed ({exc.strerror}); fix its permissions"
            self._refuse(real_dir, relative_dir.rstrip("/") or ".", message)
            return
        for entry in listing:
            name = entry.name
            if name.startswith("."):
                continue
            relative = relative_dir + name
            if entry.is_dir(follow_symlinks=False):
                self.directory(entry.path, relative + "/", chain + (entry.path,))
            elif entry.is_symlink():
                self._symlink(entry, relative, chain)
            elif self._wanted(name, relative):
                self._file(entry, entry.path, relative)

    def _wanted(self, name: str, relative: str) -> bool:
        """Temporary files are half-written copies of real ones; ingesting them would land torn data."""
        if name.startswith(_TEMP_PREFIXES) or name.lower().endswith(_TEMP_SUFFIXES):
            return False
        return self.matches(relative) is not None

    def _symlink(self, entry: os.DirEntry[str], relative: str, chain: tuple[str, ...]) -> None:
        """Follow a link that stays in the root; refuse one that leaves it, unless the pattern skips it anyway."""
        is_dir = entry.is_dir()
        if not is_dir and not self._wanted(entry.name, relative):
            return
        try:
            target = str(resolve_inside(self.root, relative))
        except IngestError as error:
            self.refused.append(RefusedFile(Path(entry.path), relative, error))
            return
        if not is_dir:
            self._file(entry, target, relative)
        elif target in chain:
            logger.debug("Not following %s: it links back to %s", relative, target)
        else:
            self.directory(target, relative + "/", chain + (target,))

    def _file(self, entry: os.DirEntry[str], real_path: str, relative: str) -> None:
        problem = _name_problem(relative)
        if problem is not None:
            self._refuse(real_path, relative, problem)
            return
        if self.source is None and "/" not in relative:
            self._refuse(real_path, relative, _NO_SOURCE)
            return
        try:
            info = entry.stat()
        except OSError as exc:
            message = f"File cannot be read ({exc.strerror}); if it is a symlink, fix its target"
            self._refuse(real_path, relative, message)
            return
        if not stat.S_ISREG(info.st_mode):
            self._refuse(real_path, relative, _NOT_REGULAR)
            return
        if self.source is None:
            source, _, below_source = relative.partition("/")
        else:
            source, below_source = self.source, relative
        stem = entry.name.rsplit(".", 1)[0]
        name = below_source[: len(below_source) - len(entry.name)] + stem
        self.files.append(RawFile(real_path, relative, source, name, info.st_size, info.st_mtime_ns))

    def _refuse(self, real_path: str, relative: str, message: str) -> None:
        error = IngestError(
            message,
            category=ErrorCategory.PERMANENT,
            file_path=real_path,
            raw_root=str(self.root),
        )
        self.refused.append(RefusedFile(Path(real_path), relative, error))


def _name_problem(relative: str) -> str | None:
    """Why ``relative`` cannot become part of an object key, or None."""
    if relative.isascii() and relative.isprintable():
        return None
    if _CONTROL_CHARS.search(relative):
        return "File name contains control characters (such as a newline), which object keys cannot carry; rename it"
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return "File name is not valid UTF-8, which object keys require; rename it"
    return None


def _without_name_collisions(files: list[RawFile]) -> tuple[list[RawFile], list[RefusedFile]]:
    """Refuse every file whose landing name another file also has: picking one would be silent data loss."""
    first: dict[tuple[str, str], RawFile] = {}
    clashes: dict[tuple[str, str], list[RawFile]] = {}
    for raw in files:
        key = (raw.source, raw.name)
        if key in first:
            clashes.setdefault(key, [first[key]]).append(raw)
        else:
            first[key] = raw
    if not clashes:
        return files, []
    refused: list[RefusedFile] = []
    for clash in clashes.values():
        for raw in clash:
            others = ", ".join(other.relative for other in clash if other is not raw)
            error = IngestError(
                f"Files {raw.relative} and {others} would land under the same name; rename one of them",
                category=ErrorCategory.PERMANENT,
                file_path=raw.real_path,
                landing_name=f"{raw.source}/{raw.name}",
            )
            refused.append(RefusedFile(raw.path, raw.relative, error))
    return [raw for raw in files if (raw.source, raw.name) not in clashes], refused
