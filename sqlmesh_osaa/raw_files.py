"""Discovering the raw files an ingest run converts, safely and cheaply.

Discovery is one ``os.scandir`` walk that keeps the single ``stat`` it needs per file
(size and mtime_ns are what the checkpoint's fast unchanged-file test compares) and, given
a baseline, sets unchanged files aside by landing key as it goes, so a re-run over many
unchanged files costs a small multiple of a bare directory walk (docs/performance.md,
"Ingest"). For the same reason a :class:`RawFile` keeps its location as a string and
builds the ``Path`` on demand.

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
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, NamedTuple

from sqlmesh_osaa.exceptions import ErrorCategory, IngestError

if TYPE_CHECKING:
    from sqlmesh_osaa.checkpoint import Fingerprint

logger = logging.getLogger(__name__)

DEFAULT_PATTERN = "**/*.csv"

# Editors, browsers and office suites leave these beside real files while writing.
_TEMP_SUFFIXES = (".tmp", ".part", ".crdownload", "~")
_TEMP_PREFIXES = ("~$",)
# S3 keys are UTF-8; control characters are unsafe in keys and in XML listings.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_by_relative = attrgetter("relative")
_LANDING_SUFFIX = ".parquet"
_NO_SOURCE = (
    "File lies directly in the raw root, so it has no source; move it into a directory named after its source"
)
_NOT_REGULAR = "Not a regular file (a pipe, socket or device); replace it with a regular file"


class RawFile(NamedTuple):
    """A raw file to ingest, with the stat values the checkpoint's fast path compares.

    A named tuple rather than a frozen dataclass: discovery builds one per new or changed
    file, and a first ingest of 100k files builds 100k of them.
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


def read_fingerprint(raw: RawFile) -> Fingerprint:
    """Discovery's size and mtime with the MD5 of the bytes read now.

    The MD5 is left out (None) when the file no longer has discovery's size and mtime: it was
    rewritten since, and a record without it makes the next run read and land the file again.
    Call :func:`still_as_discovered` after converting to find a rewrite during conversion.
    Checkpoints and object storage are imported here, by the first file read: an unchanged
    re-run answered by the skip index (``sqlmesh_osaa.skip_index``) never needs them.
    """
    from sqlmesh_osaa.checkpoint import Fingerprint
    from sqlmesh_osaa.storage import file_md5

    if not still_as_discovered(raw):
        return Fingerprint(None, raw.size, raw.mtime_ns)
    md5 = file_md5(raw.real_path)
    return Fingerprint(md5 if still_as_discovered(raw) else None, raw.size, raw.mtime_ns)


def still_as_discovered(raw: RawFile) -> bool:
    try:
        current = os.stat(raw.real_path)
    except OSError:
        return False
    return (current.st_size, current.st_mtime_ns) == (raw.size, raw.mtime_ns)


# Named tuples rather than frozen dataclasses, here as for RawFile: defining a dataclass costs
# 1-2 ms at import, and an unchanged re-run imports this module and little else.


class RefusedFile(NamedTuple):
    """A path discovery would not accept, with the error the ingest run records for it."""

    path: Path
    relative: str
    error: IngestError


class Baseline(NamedTuple):
    """The ``(size, mtime_ns)`` each file of an environment had when it last landed, by landing key."""

    env_prefix: str
    fingerprints: Mapping[str, tuple[int | None, int | None]]


class Discovery(NamedTuple):
    """What a walk of the raw root found: files to ingest, files refused with a reason, and
    the landing keys of files that still match the baseline they were discovered against."""

    root: Path
    files: tuple[RawFile, ...] = ()
    refused: tuple[RefusedFile, ...] = ()
    unchanged: tuple[str, ...] = ()


def discover_raw_files(
    raw_root: str | Path,
    *,
    pattern: str = DEFAULT_PATTERN,
    source: str | None = None,
    baseline: Baseline | None = None,
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

    A plain file that still has the size and mtime its ``baseline`` recorded is listed in
    ``unchanged`` by its landing key instead of in ``files``, so a re-run builds nothing
    for it; ``files`` may still hold files the baseline matches (links, unusual names,
    name clashes), which the caller's own unchanged test then accepts.
    """
    root = _resolve_root(raw_root)
    glob = _Glob(pattern)
    if source is not None:
        _check_source_name(source)
    walk = _Walk(root, glob, source, baseline)
    walk.directory(str(root), "", (str(root),))
    walk.files.sort(key=_by_relative)
    walk.refused.sort(key=_by_relative)
    walk.unchanged.sort()
    logger.debug(
        "Discovered %d raw files (%d unchanged, %d refused) under %s",
        len(walk.files) + len(walk.unchanged), len(walk.unchanged), len(walk.refused), root,
    )
    return Discovery(root, tuple(walk.files), tuple(walk.refused), tuple(walk.unchanged))


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
    return [f"{prefix}{raw.source}/{raw.name}{_LANDING_SUFFIX}" for raw in files]


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


class _Glob:
    """A raw-file pattern, split so that most of the matching happens once per directory.

    ``*`` and ``?`` never cross a ``/``, so unless the last segment is ``**`` a file
    matches when its directory matches the leading segments and its name the last one.
    A name segment of ``*`` plus a literal, the usual ``*.csv``, is a suffix test.
    """

    def __init__(self, pattern: str) -> None:
        parts = pattern.split("/")
        if not pattern or pattern.startswith("/") or ".." in parts:
            raise IngestError(
                "Raw file pattern must be a relative glob without '..', such as '**/*.csv'",
                category=ErrorCategory.PERMANENT,
                pattern=pattern,
            )
        *directories, last = parts
        leading = _directories_regex(directories)
        self._directory = re.compile(leading).fullmatch
        self._below = re.compile(leading + ".*").fullmatch
        self._name = None if last == "**" else _name_test(last)

    def names_in(self, relative_dir: str) -> Callable[[str], bool] | None:
        """The test a file name in ``relative_dir`` must pass, or None when no name there can match.

        Temporary files never pass: they are half-written copies, and landing one would land torn data.
        """
        if self._name is None:
            below = self._below
            return lambda name: below(relative_dir + name) is not None and not _is_temporary(name)
        return self._name if self._directory(relative_dir) is not None else None


def _directories_regex(parts: list[str]) -> str:
    """The regex of leading pattern segments, each ending in ``/``; a ``**`` spans any number."""
    return "".join("(?:[^/]+/)*" if part == "**" else _segment_regex(part) + "/" for part in parts)


def _segment_regex(segment: str) -> str:
    return "".join({"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char)) for char in segment)


def _name_test(segment: str) -> Callable[[str], bool]:
    """A test for names that match ``segment`` and are not temporary files."""
    literal = segment[1:] if segment.startswith("*") else None
    if literal is not None and "*" not in literal and "?" not in literal:
        suffix = literal.lower()
        if not any(suffix.endswith(temp) or temp.endswith(suffix) for temp in _TEMP_SUFFIXES):
            # No name ending in this literal can end in a temporary suffix: only the prefix is left to test.
            return lambda name: name.endswith(literal) and not name.startswith(_TEMP_PREFIXES)
    matches = re.compile(_segment_regex(segment)).fullmatch
    return lambda name: matches(name) is not None and not _is_temporary(name)


def _check_source_name(source: str) -> None:
    if not source or source in {".", ".."} or "/" in source or _CONTROL_CHARS.search(source):
        raise IngestError(
            "Source name must be one non-empty path segment without '/' or control characters",
            category=ErrorCategory.PERMANENT,
            source=source,
        )


class _Walk:
    """State of one discovery walk; a class only to keep the recursion's arguments short.

    Whatever depends only on the directory (pattern, source, name prefix) is worked out
    once per directory, so each file costs its name tests and the one ``stat``.
    """

    def __init__(self, root: Path, glob: _Glob, source: str | None, baseline: Baseline | None) -> None:
        self.root = root
        self.glob = glob
        self.source = source
        self.key_prefix = landing_prefix(baseline.env_prefix) if baseline else ""
        self.fingerprints = baseline.fingerprints if baseline else {}
        self.files: list[RawFile] = []
        self.refused: list[RefusedFile] = []
        self.unchanged: list[str] = []

    def directory(self, real_dir: str, relative_dir: str, chain: tuple[str, ...]) -> None:
        """Walk one directory; ``chain`` holds the real directories above it, to stop symlink loops.

        The directory is listed through a descriptor, so each ``stat`` looks the name up in
        the directory instead of resolving the whole path again.
        """
        try:
            descriptor = os.open(real_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            message = f"Directory cannot be listed ({exc.strerror}); fix its permissions"
            self._refuse(real_dir, relative_dir.rstrip("/") or ".", message)
            return
        try:
            with os.scandir(descriptor) as entries:
                self._entries(list(entries), real_dir.rstrip("/") + "/", relative_dir, chain)
        finally:
            os.close(descriptor)

    def _entries(
        self, listing: list[os.DirEntry[str]], dir_prefix: str, relative_dir: str, chain: tuple[str, ...]
    ) -> None:
        """Take the wanted files of one listing and walk its subdirectories.

        A regular file with a plain name is taken in the loop itself, the case a re-run
        over many unchanged files pays for; anything else (a link, an unusual name, a
        file in the root) goes through :meth:`_file`'s checks.
        """
        wanted = self.glob.names_in(relative_dir)
        source, below_source = self._source_of(relative_dir)
        plain_directory = bool(source) and _name_problem(relative_dir) is None
        key_dir, fingerprints = f"{self.key_prefix}{source}/{below_source}", self.fingerprints
        kept: list[RawFile] = []
        unchanged: list[os.DirEntry[str]] = []
        unchanged_keys: list[str] = []
        for entry in listing:
            name = entry.name
            if name.startswith("."):
                continue
            if not entry.is_file(follow_symlinks=False):
                self._not_a_file(entry, dir_prefix, relative_dir, wanted, chain, kept)
                continue
            if wanted is None or not wanted(name):
                continue
            if not (plain_directory and name.isascii() and name.isprintable()):
                self._file(entry, dir_prefix + name, relative_dir, kept)
                continue
            try:
                info = entry.stat()
            except OSError:
                self._file(entry, dir_prefix + name, relative_dir, kept)
                continue
            stem = name.rsplit(".", 1)[0]
            key = key_dir + stem + _LANDING_SUFFIX
            if fingerprints.get(key) == (info.st_size, info.st_mtime_ns):
                unchanged.append(entry)
                unchanged_keys.append(key)
            else:
                path, relative = dir_prefix + name, relative_dir + name
                kept.append(RawFile(path, relative, source, below_source + stem, info.st_size, info.st_mtime_ns))
        self._keep(kept, unchanged, unchanged_keys, dir_prefix, relative_dir)

    def _not_a_file(
        self,
        entry: os.DirEntry[str],
        dir_prefix: str,
        relative_dir: str,
        wanted: Callable[[str], bool] | None,
        chain: tuple[str, ...],
        kept: list[RawFile],
    ) -> None:
        """Walk a subdirectory, follow a link, or refuse a wanted pipe, socket or device."""
        path = dir_prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            self.directory(path, f"{relative_dir}{entry.name}/", chain + (path,))
        elif entry.is_symlink():
            self._symlink(entry, path, relative_dir, wanted, chain, kept)
        elif wanted is not None and wanted(entry.name):
            self._file(entry, path, relative_dir, kept)

    def _keep(
        self,
        kept: list[RawFile],
        unchanged: list[os.DirEntry[str]],
        unchanged_keys: list[str],
        dir_prefix: str,
        relative_dir: str,
    ) -> None:
        """Record one directory's files; when two would land under one name, none counts as unchanged."""
        if unchanged and kept and self._shares_a_key(unchanged_keys, kept):
            for entry in unchanged:
                self._file(entry, dir_prefix + entry.name, relative_dir, kept)
            unchanged_keys = []
        kept, collisions = _without_name_collisions(kept)
        self.files += kept
        self.refused += collisions
        self.unchanged += unchanged_keys

    def _shares_a_key(self, keys: list[str], files: list[RawFile]) -> bool:
        """Whether a file of ``files`` would land under one of ``keys``."""
        return not set(keys).isdisjoint(f"{self.key_prefix}{raw.source}/{raw.name}{_LANDING_SUFFIX}" for raw in files)

    def _source_of(self, relative_dir: str) -> tuple[str, str]:
        """The source of the files in ``relative_dir`` and the part of their landing name above them."""
        if self.source is None:
            source, _, below_source = relative_dir.partition("/")
            return source, below_source
        return self.source, relative_dir

    def _symlink(
        self,
        entry: os.DirEntry[str],
        link_path: str,
        relative_dir: str,
        wanted: Callable[[str], bool] | None,
        chain: tuple[str, ...],
        kept: list[RawFile],
    ) -> None:
        """Follow a link that stays in the root; refuse one that leaves it, unless the pattern skips it anyway."""
        relative = relative_dir + entry.name
        is_dir = entry.is_dir()
        if not is_dir and (wanted is None or not wanted(entry.name)):
            return
        try:
            target = str(resolve_inside(self.root, relative))
        except IngestError as error:
            self.refused.append(RefusedFile(Path(link_path), relative, error))
            return
        if not is_dir:
            self._file(entry, target, relative_dir, kept)
        elif target in chain:
            logger.debug("Not following %s: it links back to %s", relative, target)
        else:
            self.directory(target, relative + "/", chain + (target,))

    def _file(self, entry: os.DirEntry[str], real_path: str, relative_dir: str, kept: list[RawFile]) -> None:
        """Take a wanted file into ``kept``, or refuse it saying why it cannot land."""
        relative = relative_dir + entry.name
        source, below_source = self._source_of(relative_dir)
        problem = _name_problem(relative) or (None if source else _NO_SOURCE)
        if problem is None:
            try:
                info = entry.stat()
            except OSError as exc:
                problem = f"File cannot be read ({exc.strerror}); if it is a symlink, fix its target"
            else:
                if stat.S_ISREG(info.st_mode):
                    landing_name = below_source + entry.name.rsplit(".", 1)[0]
                    kept.append(RawFile(real_path, relative, source, landing_name, info.st_size, info.st_mtime_ns))
                    return
                problem = _NOT_REGULAR
        self._refuse(real_path, relative, problem)

    def _refuse(self, real_path: str, relative: str, message: str) -> None:
        error = IngestError(
            message,
            category=ErrorCategory.PERMANENT,
            file_path=real_path,
            raw_root=str(self.root),
        )
        self.refused.append(RefusedFile(Path(real_path), relative, error))


def _is_temporary(name: str) -> bool:
    return name.startswith(_TEMP_PREFIXES) or name.lower().endswith(_TEMP_SUFFIXES)


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
    """Refuse every file whose landing name another file also has: picking one would be silent data loss.

    A landing name is the relative path without its suffix, so only files of one
    directory can share one (``data.csv`` and ``data.txt``).
    """
    if len({raw.name for raw in files}) == len(files):
        return files, []
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
