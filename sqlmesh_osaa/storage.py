"""Object storage behind one narrow interface: a local directory or an S3 bucket.

Everything above this module (checkpoints, transactions, ingest) talks to an
:class:`ObjectStore`, so the same transaction protocol runs on a laptop (:class:`LocalStore`,
the embedded default) and on any S3-compatible endpoint (:class:`S3Store`). Both stores
guarantee that a reader never sees a partially written object and that every object carries
the MD5 of its content as metadata, so idempotency checks never need to download anything,
and a CRC32 the store computed from its bytes, against which every copy is verified.

boto3 is imported on first use of :class:`S3Store`: the core must import fast and the local
backend never needs it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import importlib
import json
import logging
import os
import re
import stat
import threading
import uuid
import zlib
from abc import ABC, abstractmethod
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field, replace
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from sqlmesh_osaa.exceptions import (
    PERMANENT_ERROR_CODES,
    TRANSIENT_ERROR_CODES,
    ErrorCategory,
    PipelineBaseError,
    PreconditionFailedError,
    S3ConfigurationError,
    S3OperationError,
    categorize_error,
)
from sqlmesh_osaa.redaction import install_log_redaction, register_secret, url_userinfo, without_userinfo
from sqlmesh_osaa.settings import StorageSettings, get_settings
from sqlmesh_osaa.store_identity import local_identity, s3_identity

logger = logging.getLogger(__name__)

MD5_METADATA_KEY = "osaa-md5"
# The additional checksum every object we write carries, computed from the bytes written:
# stdlib-computable (zlib), and the one algorithm S3 keeps as a full-object checksum for both
# single-part and multipart uploads (SHA-256 is composite for multipart; CRC32C needs awscrt).
CHECKSUM_ALGORITHM = "CRC32"
_CHECKSUM_ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA256", "SHA1")


def _builtin_hash(name: str, *modules: str) -> Any:
    """CPython's own implementation of the hash ``name`` (hashlib's fallback), else hashlib's.

    Importing hashlib maps OpenSSL's libcrypto, 3-4 MB resident that a local ingest needs for
    nothing else (docs/performance.md, "Ingest"); the built-in MD5 is about 10 % slower on
    large files (9 ms more per 50 MB, against seconds of conversion). A CPython built without
    its own hashes, or one that moved them (``_sha256`` became ``_sha2`` in 3.12), gets hashlib's.
    """
    for module in modules:
        with suppress(ImportError):
            return getattr(importlib.import_module(module), name)
    return getattr(importlib.import_module("hashlib"), name)


_new_md5 = _builtin_hash("md5", "_md5")
_new_sha256 = _builtin_hash("sha256", "_sha2", "_sha256")

MiB = 1024**2
GiB = 1024**3
_CHUNK = MiB
_T = TypeVar("_T")
_R = TypeVar("_R")
# Temp files share the object's directory (so the final rename is atomic); this reserved
# name prefix keeps them out of listings and out of the key space.
TEMP_MARKER = ".osaa-tmp-"
_META_DIR = ".osaa-meta"
_SCRATCH_DIR = ".osaa-scratch"
# What os.link raises where a hard link cannot be made (another filesystem, no link support,
# too many links, a policy against linking): a local copy then writes the bytes instead.
_NO_HARD_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
_S3_DELETE_BATCH = 1000
_S3_MAX_PARTS = 10_000
_S3_MIN_PART_SIZE = 5 * MiB
_COPY_PART_SIZE = 512 * MiB
_COPY_CONCURRENCY = 8
_CREDENTIAL_ERROR_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"})
_CREDENTIAL_ERROR_CLASSES = frozenset({"NoCredentialsError", "PartialCredentialsError"})


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about an object without reading its content."""

    key: str
    size: int
    md5: str | None
    etag: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None
    # "<ALGORITHM>:<base64>", a full-object checksum the store computed from the object's
    # bytes (S3 additional checksums; the local store's own CRC32), or None when unknown.
    checksum: str | None = None


def file_md5(path: str | Path) -> str:
    """Hex MD5 of a file, read in chunks so memory stays flat for files of any size."""
    digest = _new_md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ContentDigest:
    """MD5 and CRC32 of a byte stream, fed chunk by chunk so both cost one read."""

    def __init__(self) -> None:
        self._md5 = _new_md5(usedforsecurity=False)
        self._crc = 0

    def update(self, chunk: bytes) -> None:
        self._md5.update(chunk)
        self._crc = zlib.crc32(chunk, self._crc)

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    @property
    def checksum(self) -> str:
        return crc32_checksum(self._crc)


def crc32_checksum(crc: int) -> str:
    """A CRC32 in the form S3 reports it (base64 of the big-endian value), tagged with the algorithm."""
    return f"{CHECKSUM_ALGORITHM}:{base64.b64encode(crc.to_bytes(4, 'big')).decode('ascii')}"


def file_digest(path: str | Path) -> ContentDigest:
    digest = ContentDigest()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC32 of A+B from CRC32(A), CRC32(B) and len(B), in O(log len(B)) (zlib's algorithm).

    Python's zlib does not expose crc32_combine; this is what turns the per-part CRC32s of a
    multipart object into the full-object CRC32 its source was uploaded with.
    """
    operator = [0xEDB88320] + [1 << bit for bit in range(31)]  # appends one zero bit
    for _ in range(3):
        operator = _gf2_square(operator)  # appends one zero byte
    while length2 > 0:
        if length2 & 1:
            crc1 = _gf2_times(operator, crc1)
        length2 >>= 1
        if length2:
            operator = _gf2_square(operator)  # appends twice as many zero bytes
    return crc1 ^ crc2


def checksum_algorithm(checksum: str | None) -> str | None:
    return checksum.partition(":")[0] if checksum else None


# S3 user metadata travels in HTTP headers: printable ASCII only. Anything else (a raw file
# named "données_2024.csv") is sent as an RFC 2047 encoded word, the form S3 itself uses for
# such values, and decoded on read; so are values that would otherwise read as encoded words.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


def encode_metadata_value(value: str) -> str:
    if value == "" or (_HEADER_SAFE.fullmatch(value) and not value.startswith("=?")):
        return value
    return f"=?UTF-8?B?{base64.b64encode(value.encode('utf-8')).decode('ascii')}?="


def decode_metadata_value(value: str) -> str:
    if not (value.startswith("=?") and value.endswith("?=")):
        return value
    import email.header  # only for an encoded value: a local store's names never are

    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


def md5_from_etag(etag: str | None) -> str | None:
    """The content MD5 when an ETag is one (single-part uploads); multipart ETags ("<hex>-N") are not."""
    if etag is None:
        return None
    etag = etag.strip('"').lower()
    return etag if _is_hex_md5(etag) else None


def _is_hex_md5(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def key_problem(key: object) -> str | None:
    """Why a key cannot be stored portably, or None; a filesystem would alias or escape these."""
    if not isinstance(key, str) or not key:
        return "keys must be non-empty strings"
    if key.startswith("/"):
        return "keys must be relative (no leading '/')"
    if "\x00" in key:
        return "keys must not contain NUL"
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            return "keys must not contain empty, '.' or '..' segments"
        if segment.startswith(TEMP_MARKER):
            return f"segments starting with {TEMP_MARKER!r} are reserved for temp files"
    return None


def _prefix_problem(prefix: object) -> str | None:
    """A prefix is a key whose last segment may be partial or empty."""
    if not isinstance(prefix, str):
        return "prefixes must be strings"
    directory, _, _ = prefix.rpartition("/")
    if not directory:
        return "prefixes must be relative (no leading '/')" if prefix.startswith("/") else None
    return key_problem(directory)


def _metadata_name_problem(name: str) -> str | None:
    if not name or not all("!" <= char <= "~" and char not in "()<>@,;:\\\"/[]?={}" for char in name):
        return f"metadata name {name!r} must be a non-empty HTTP token (ASCII letters, digits, '-', '_', '.')"
    return None


def _user_metadata(metadata: Mapping[str, str] | None, md5: str) -> dict[str, str]:
    """S3 lower-cases metadata names; doing it here keeps both stores identical."""
    result = {str(name).lower(): str(value) for name, value in (metadata or {}).items()}
    result[MD5_METADATA_KEY] = md5
    return result


def _create_temp(directory: Path) -> tuple[int, Path]:
    """Open a new temp file in ``directory``, made when missing (once per directory, not per file);
    retried because a concurrent delete may prune it."""
    for _ in range(5):
        path = directory / f"{TEMP_MARKER}{uuid.uuid4().hex}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileNotFoundError:
            directory.mkdir(parents=True, exist_ok=True)
    raise FileNotFoundError(f"directory {directory} keeps disappearing")


def _link_temp(source: Path, directory: Path) -> Path | None:
    """A hard link to ``source`` under a temp name in ``directory``; None where links are impossible."""
    for _ in range(5):
        temp = directory / f"{TEMP_MARKER}{uuid.uuid4().hex}"
        try:
            os.link(source, temp)
            return temp
        except FileNotFoundError:
            if directory.is_dir():
                raise  # the source is gone, not the directory (a concurrent delete may prune that)
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in _NO_HARD_LINK:
                logger.debug("No hard link from %s into %s (%s); copying the bytes", source, directory, exc)
                return None
            raise
    raise FileNotFoundError(f"directory {directory} keeps disappearing")


def _replace_making_parent(source: Path, target: Path) -> None:
    """``os.replace``, making ``target``'s directory when it is missing (asked only then, not per file)."""
    try:
        os.replace(source, target)
    except FileNotFoundError:
        if target.parent.is_dir():
            raise  # the source is gone
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)


def _describes(record: Mapping[str, Any], current: os.stat_result) -> bool:
    """Whether a sidecar record was written for this file (same inode, size and mtime)."""
    return (record.get("ino"), record.get("size"), record.get("mtime_ns")) == (
        current.st_ino,
        current.st_size,
        current.st_mtime_ns,
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], *, durable: bool = True) -> os.stat_result:
    """Write ``path`` so readers see the old file or the complete new one, never a torn one.

    The content goes to a temp file beside ``path`` (same filesystem, so the rename is
    atomic), is fsynced, renamed over ``path``, and the directory is fsynced so the rename
    survives a power cut; with ``durable=False`` both fsyncs are left to a later
    :func:`sync_filesystem` (a killed process loses nothing either way: the page cache
    outlives it). On any error the temp file is removed and ``path`` is untouched.
    Returns the stat of the written file (inode and mtime survive the rename).
    """
    fd, temp = _create_temp(path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
            written = os.fstat(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if durable:
        _fsync_dir(path.parent)
    return written


def sync_filesystem(path: Path) -> None:
    """Flush every write of the filesystem holding ``path`` to disk: one syncfs for a batch of writes.

    Falls back to a global sync where syncfs(2) is missing (not Linux).
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "syncfs"):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            import ctypes

            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(path))
    finally:
        os.close(fd)


@lru_cache(maxsize=1)
def _libc() -> Any:
    import ctypes  # on the first sync, not at import: commands that write nothing do not load it

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _copy_hashing(source: IO[bytes], target: IO[bytes], digest: ContentDigest) -> None:
    for chunk in iter(lambda: source.read(_CHUNK), b""):
        digest.update(chunk)
        target.write(chunk)


def map_requests(store: ObjectStore, func: Callable[[_T], _R], items: Sequence[_T], max_workers: int, name: str) -> list[_R]:
    """``[func(item) for item in items]``, on up to ``max_workers`` threads where ``store`` gains from them.

    The first exception (in ``items``' order) propagates once every started call has ended.
    """
    if not store.parallel_requests or max_workers <= 1 or len(items) <= 1:
        return [func(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers, thread_name_prefix=name) as pool:
        return list(pool.map(func, items))


def _normalized_md5(md5: str | None, operation: str, key: str, bucket: str) -> str | None:
    if md5 is None:
        return None
    if _is_hex_md5(md5.lower()):
        return md5.lower()
    raise S3OperationError(
        f"md5 must be 32 hex digits, got {md5!r}",
        category=ErrorCategory.PERMANENT,
        operation=operation,
        key=key,
        bucket=bucket,
    )


def _matches(
    expected: ObjectInfo, size: int | None, md5: str | None, checksum: str | None, *, every_digest: bool = False
) -> bool:
    """Whether content is ``expected``: size, then the strongest digest both sides know (a
    full-object checksum of one algorithm, else the MD5), or ``every_digest`` both know (for
    two records; a server's ETag is not always an MD5, so it only counts without a checksum)."""
    if size is not None and size != expected.size:
        return False
    same_checksum = checksum_algorithm(checksum) == checksum_algorithm(expected.checksum)
    if checksum and expected.checksum and same_checksum:
        if checksum != expected.checksum:
            return False
        if not every_digest:
            return True
    return not (md5 and expected.md5) or md5 == expected.md5


def _comparable(expected: ObjectInfo, computed: ObjectInfo) -> bool:
    same_algorithm = checksum_algorithm(computed.checksum) == checksum_algorithm(expected.checksum)
    return bool((computed.checksum and same_algorithm) or (computed.md5 and expected.md5))


class ObjectStore(ABC):
    """A bucket: put/get files, head, server-side copy, batched delete, sorted listing.

    Keys are validated identically by every store (no absolute keys, no empty, '.' or '..'
    segments) so a pipeline that works on the local backend works on S3 and vice versa.
    Every failure is an :class:`S3OperationError` whose category says whether a retry can
    help; retrying is the caller's job (the error handler), never the store's.
    """

    bucket: str
    # Whether requests gain from running on several threads at once (latency to hide). A local
    # store's are a few filesystem calls each: threads only add GIL hand-offs (docs/performance.md).
    parallel_requests: bool = True

    @abstractmethod
    def put_file(
        self,
        local_path: str | Path,
        key: str,
        metadata: Mapping[str, str] | None = None,
        md5: str | None = None,
        *,
        move: bool = False,
    ) -> ObjectInfo:
        """Upload a file; ``md5`` (hex) spares re-hashing a file whose digest is already known.

        ``move`` gives ``local_path`` up: a store may rename it into place instead of copying
        its bytes (a local store does when the file lies on its filesystem, as files under
        :meth:`scratch_directory` do); otherwise it stays, and deleting it is the caller's.
        """

    def scratch_directory(self) -> Path | None:
        """A local directory for files meant for ``put_file(..., move=True)``; None (any
        temporary directory will do) when the store does not keep its objects on this machine."""
        return None

    @abstractmethod
    def get_file(self, key: str, local_path: str | Path) -> None:
        """Download an object; ``local_path`` is replaced atomically, never left half-written."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size, MD5 and metadata of an object, or None when it does not exist."""

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    @abstractmethod
    def copy(self, src_key: str, dst_key: str, source: ObjectInfo | None = None) -> ObjectInfo:
        """Copy server-side keeping metadata; raises unless the copied bytes match the source.

        The copy is checked against a checksum computed from the bytes copied (the store's
        CRC32, else the MD5), compared with what was recorded when the source was written.
        ``source`` is what the caller expects (size, MD5, checksum, e.g. from a manifest): a
        source that differs is refused, and on S3 it spares the HEAD requests; the result
        then carries ``source``'s metadata and no last-modified time.
        """

    @abstractmethod
    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete objects; keys that do not exist are not an error (deletes are idempotent)."""

    @contextmanager
    def deferred_durability(self) -> Iterator[None]:
        """Within it, :meth:`put_file` and :meth:`copy` may return before their object is on disk.

        Objects are still complete and atomic when they appear; only their survival of a power
        cut waits for :meth:`sync`. A batch pays one flush instead of one per object. An S3
        write is durable when it returns, so by default there is nothing to defer.
        """
        yield

    def sync(self) -> None:
        """Make every object written so far durable (those written under :meth:`deferred_durability`)."""

    @abstractmethod
    def list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order.

        Listings carry size, MD5 (when known without reading) and last-modified time but no
        user metadata: S3 listings do not return it, so neither does any store; use head().
        """

    @abstractmethod
    def remove_incomplete(self, prefix: str) -> int:
        """Remove what killed writes left under ``prefix``; returns how many leftovers went.

        Local: ``.osaa-tmp-*`` temp files (listings hide them, they still take space). S3:
        incomplete multipart uploads (invisible, billed until aborted). Only for prefixes
        no live writer uses: a write in progress there fails.
        """

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where DuckDB and other readers find the object."""

    @property
    @abstractmethod
    def identity(self) -> str:
        """Which key space this store is (backend, endpoint without credentials, bucket): checkpoints record it."""

    @abstractmethod
    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None, durable: bool = True
    ) -> str:
        """Write a small object in one request and return its ETag; the commit protocol's primitive.

        ``if_none_match`` writes only when ``key`` does not exist; ``if_match`` only when its
        current ETag is that value. A lost condition raises :class:`PreconditionFailedError`
        (permanent; a 409 ConditionalRequestConflict is transient) and writes nothing.
        ``durable=False`` lets the object reach the disk at the next :meth:`sync` (for a record
        a power cut may lose; an S3 write is durable anyway).
        """

    @abstractmethod
    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        """A small object's content and ETag (for a later ``if_match``), or None when it does not exist."""

    def _precondition_failed(self, key: str, what: str) -> PreconditionFailedError:
        return PreconditionFailedError(
            f"Conditional write of {key!r} lost: {what}", operation="PutObject", key=key, bucket=self.bucket
        )

    def _metadata(self, metadata: Mapping[str, str] | None, md5: str, key: str) -> dict[str, str]:
        result = _user_metadata(metadata, md5)
        for name in result:
            problem = _metadata_name_problem(name)
            if problem:
                raise self._permanent(f"Invalid metadata for {key!r}: {problem}", "PutObject", key=key)
        return result

    def _check_key(self, key: str, operation: str) -> None:
        problem = key_problem(key)
        if problem:
            raise self._permanent(f"Invalid object key {key!r}: {problem}", operation, key=key)

    def _check_prefix(self, prefix: str) -> None:
        problem = _prefix_problem(prefix)
        if problem:
            raise self._permanent(f"Invalid prefix {prefix!r}: {problem}", "ListObjectsV2", prefix=prefix)

    def _missing(self, key: str, operation: str) -> S3OperationError:
        return self._permanent(f"Object {key!r} does not exist in bucket {self.bucket!r}", operation, key=key)

    def _bad_digest(self, local_path: str | Path, key: str, md5: str, expected: str) -> S3OperationError:
        return self._permanent(
            f"BadDigest: content of {str(local_path)!r} has MD5 {md5}, not {expected}", "PutObject", key=key
        )

    def _permanent(self, message: str, operation: str, **context: Any) -> S3OperationError:
        return S3OperationError(
            message, category=ErrorCategory.PERMANENT, operation=operation, bucket=self.bucket, **context
        )

    def _copy_mismatch(self, expected: ObjectInfo, dst_key: str, found: str) -> S3OperationError:
        """A copy that differs from its source most likely raced a concurrent write: retry it."""
        return S3OperationError(
            f"Copy of {expected.key!r} does not match its source (expected size={expected.size}, "
            f"md5={expected.md5}, checksum={expected.checksum}; found {found})",
            category=ErrorCategory.TRANSIENT,
            operation="CopyObject",
            key=dst_key,
            bucket=self.bucket,
        )


class LocalStore(ObjectStore):
    """A directory that behaves as a bucket: objects live at ``<root>/<bucket>/<key>``.

    Metadata (including the content MD5) lives in a sidecar per object under
    ``<root>/.osaa-meta/<bucket>/``, named by a hash of the key so no key can collide with
    another key's sidecar. A sidecar records the inode, size and mtime of the file it
    describes; one that does not match the object (a crash between the two renames) is
    ignored, so head() then reports the MD5 as unknown rather than a wrong one.
    A key cannot be both an object and a "directory" of other objects, unlike on S3.
    """

    parallel_requests = False

    def __init__(self, root: str | Path, bucket: str) -> None:
        if not bucket or "/" in bucket or bucket.startswith("."):
            raise S3ConfigurationError(
                f"Invalid local bucket name {bucket!r}: use a plain directory name (e.g. 'osaa')",
                bucket=bucket,
            )
        self.root = Path(root).expanduser().resolve()
        self.bucket = bucket
        self._bucket_dir = self.root / bucket
        self._meta_dir = self.root / _META_DIR / bucket
        self._deferring = 0
        self._sync_owed = False
        self._durability_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r}, bucket={self.bucket!r})"

    @property
    def identity(self) -> str:
        return local_identity(self.root, self.bucket)

    def put_file(
        self,
        local_path: str | Path,
        key: str,
        metadata: Mapping[str, str] | None = None,
        md5: str | None = None,
        *,
        move: bool = False,
    ) -> ObjectInfo:
        """Like S3 with Content-MD5, a given ``md5`` is checked against the bytes as they are copied
        (or, with ``move``, read before the file is renamed into place)."""
        self._check_key(key, "PutObject")
        expected = _normalized_md5(md5, "PutObject", key, self.bucket)
        user_metadata = self._metadata(metadata, expected or "", key)
        if move:
            with self._os_errors("PutObject", key):
                moved = self._put_by_rename(Path(local_path), key, user_metadata, expected)
            if moved is not None:
                return moved
        digest = ContentDigest()

        def write(target: IO[bytes]) -> None:
            with open(local_path, "rb") as source:
                _copy_hashing(source, target, digest)
            if expected is not None and digest.md5 != expected:
                raise self._bad_digest(local_path, key, digest.md5, expected)

        durable = self._durable()
        with self._os_errors("PutObject", key):
            written = atomic_write(self._object_path(key), write, durable=durable)
            metadata = {**user_metadata, MD5_METADATA_KEY: digest.md5}
            info = self._write_sidecar(key, written, metadata, digest.checksum, durable=durable)
        logger.debug("Stored %s (%d bytes) in %s", key, info.size, self)
        return info

    def _put_by_rename(
        self, local_path: Path, key: str, user_metadata: dict[str, str], expected: str | None
    ) -> ObjectInfo | None:
        """Rename a file the caller gave up into place, hashed first; None when it lies on another filesystem.

        The sidecar is written first: the rename keeps the inode, size and mtime it records,
        and a failed write leaves the file where it was, so a retry can still move it.
        """
        target = self._object_path(key)
        durable = self._durable()
        digest = ContentDigest()
        with open(local_path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
            if expected is not None and digest.md5 != expected:
                raise self._bad_digest(local_path, key, digest.md5, expected)
            if durable:
                os.fsync(handle.fileno())
            current = os.fstat(handle.fileno())
        info = self._write_sidecar(
            key, current, {**user_metadata, MD5_METADATA_KEY: digest.md5}, digest.checksum, durable=durable
        )
        try:
            _replace_making_parent(local_path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            return None  # the sidecar just written describes no file at the key: it is ignored, then replaced
        if durable:
            _fsync_dir(target.parent)
        logger.debug("Moved %s (%d bytes) into %s", key, info.size, self)
        return info

    def scratch_directory(self) -> Path:
        """``<root>/.osaa-scratch``: beside the bucket, so a file written there moves in by a rename."""
        path = self.root / _SCRATCH_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def deferred_durability(self) -> Iterator[None]:
        """Objects and sidecars written meanwhile skip their fsyncs; :meth:`sync` flushes them at once."""
        with self._durability_lock:
            self._deferring += 1
        try:
            yield
        finally:
            with self._durability_lock:
                self._deferring -= 1

    def sync(self) -> None:
        with self._durability_lock:
            owed, self._sync_owed = self._sync_owed, False
        if not owed:
            return
        try:
            with self._os_errors("Sync", ""):
                sync_filesystem(self._bucket_dir)
        except BaseException:
            with self._durability_lock:
                self._sync_owed = True
            raise

    def _durable(self) -> bool:
        """Whether a write now flushes itself; if not, a :meth:`sync` is owed."""
        with self._durability_lock:
            if self._deferring:
                self._sync_owed = True
                return False
        return True

    def get_file(self, key: str, local_path: str | Path) -> None:
        self._check_key(key, "GetObject")
        path = self._object_path(key)

        def write(target: IO[bytes]) -> None:
            try:
                source = open(path, "rb")
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise self._missing(key, "GetObject") from None
            with source:
                for chunk in iter(lambda: source.read(_CHUNK), b""):
                    target.write(chunk)

        with self._os_errors("GetObject", key):
            atomic_write(Path(local_path), write)

    def head(self, key: str) -> ObjectInfo | None:
        self._check_key(key, "HeadObject")
        with self._os_errors("HeadObject", key):
            return self._info(key)

    def copy(self, src_key: str, dst_key: str, source: ObjectInfo | None = None) -> ObjectInfo:
        """The copy's bytes are hashed and checked against what was recorded when the source was
        written (and against ``source``, what the caller expects).

        Objects are never changed in place (every write renames a new file over the key), so
        the copy is a hard link to the source's file and its sidecar: no bytes are written and
        no file is created, only the directory entries. The bytes are still read and hashed
        through the link before it takes the key. Where no hard link can be made (another
        filesystem, no support) the bytes are copied into a new file.
        """
        self._check_key(src_key, "CopyObject")
        self._check_key(dst_key, "CopyObject")
        with self._os_errors("CopyObject", dst_key):
            recorded = self._info(src_key)
            if recorded is None:
                raise self._missing(src_key, "CopyObject")
            if src_key == dst_key:
                return recorded
            durable = self._durable()
            linked = self._copy_by_link(src_key, dst_key, (recorded, source), durable)
            if linked is not None:
                return linked
            return self._copy_bytes(src_key, dst_key, (recorded, source), durable)

    def _copy_bytes(
        self, src_key: str, dst_key: str, expectations: tuple[ObjectInfo, ObjectInfo | None], durable: bool
    ) -> ObjectInfo:
        digest = ContentDigest()

        def write(target: IO[bytes]) -> None:
            with open(self._object_path(src_key), "rb") as handle:
                _copy_hashing(handle, target, digest)
            self._check_copied(expectations, dst_key, target.tell(), digest)

        written = atomic_write(self._object_path(dst_key), write, durable=durable)
        metadata = {**expectations[0].metadata, MD5_METADATA_KEY: digest.md5}
        return self._write_sidecar(dst_key, written, metadata, digest.checksum, durable=durable)

    def _copy_by_link(
        self, src_key: str, dst_key: str, expectations: tuple[ObjectInfo, ObjectInfo | None], durable: bool
    ) -> ObjectInfo | None:
        """Give ``dst_key`` the source's file by a hard link, its bytes checked; None where links are impossible.

        A source without a valid sidecar (nothing recorded to share) is copied byte by byte,
        which records a sidecar of its own.
        """
        recorded = expectations[0]
        if recorded.md5 is None or recorded.checksum is None:
            return None
        target = self._object_path(dst_key)
        temp = _link_temp(self._object_path(src_key), target.parent)
        if temp is None:
            return None
        sidecar_temp = None
        try:
            digest = ContentDigest()
            with open(temp, "rb") as handle:
                for chunk in iter(lambda: handle.read(_CHUNK), b""):
                    digest.update(chunk)
                linked = os.fstat(handle.fileno())
                if durable:
                    os.fsync(handle.fileno())
            self._check_copied(expectations, dst_key, linked.st_size, digest)
            sidecar_temp, record = self._linked_sidecar(src_key, dst_key, linked)
            os.replace(temp, target)
            if sidecar_temp is not None:
                os.replace(sidecar_temp, self._sidecar_path(dst_key))
        except BaseException:
            for leftover in (temp, sidecar_temp):
                if leftover is not None:
                    with suppress(FileNotFoundError):
                        os.unlink(leftover)
            raise
        if sidecar_temp is None:
            metadata = {**recorded.metadata, MD5_METADATA_KEY: digest.md5}
            return self._write_sidecar(dst_key, linked, metadata, digest.checksum, durable=durable)
        if durable:
            _fsync_dir(target.parent)
            _fsync_dir(self._sidecar_path(dst_key).parent)
        return self._object_info(dst_key, linked, record)

    def _linked_sidecar(self, src_key: str, dst_key: str, linked: os.stat_result) -> tuple[Path | None, dict[str, Any]]:
        """A hard link to the source's sidecar, when that sidecar describes ``linked`` (it may
        have been replaced meanwhile); (None, {}) when a sidecar must be written instead."""
        temp = _link_temp(self._sidecar_path(src_key), self._sidecar_path(dst_key).parent)
        if temp is None:
            return None, {}
        try:
            record = json.loads(temp.read_bytes())
        except ValueError:
            record = {}
        if _describes(record, linked):
            return temp, dict(record)
        os.unlink(temp)
        return None, {}

    def _check_copied(
        self, expectations: tuple[ObjectInfo, ObjectInfo | None], dst_key: str, size: int, digest: ContentDigest
    ) -> None:
        for expected in expectations:
            if expected is not None and not _matches(expected, size, digest.md5, digest.checksum, every_digest=True):
                found = f"size={size}, md5={digest.md5}, checksum={digest.checksum}"
                raise self._copy_mismatch(expected, dst_key, found)

    def delete_many(self, keys: Iterable[str]) -> None:
        unique = list(dict.fromkeys(keys))
        for key in unique:
            self._check_key(key, "DeleteObjects")
        for key in unique:
            with self._os_errors("DeleteObjects", key):
                path = self._object_path(key)
                with suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    path.unlink()
                with suppress(FileNotFoundError):
                    self._sidecar_path(key).unlink()
                self._prune_empty_dirs(path.parent)

    def list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        self._check_prefix(prefix)
        with self._os_errors("ListObjectsV2", prefix):
            keys = sorted(self._walk(prefix))
        for key in keys:
            with self._os_errors("ListObjectsV2", key):
                info = self._info(key)
            if info is not None:
                yield replace(info, metadata={})

    def remove_incomplete(self, prefix: str) -> int:
        self._check_prefix(prefix)
        removed = 0
        with self._os_errors("RemoveIncomplete", prefix):
            for path in self._temp_files(prefix):
                with suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
                    logger.info("Removed %s, left by a killed write, from %s", path, self)
                self._prune_empty_dirs(path.parent)
        return removed

    def uri(self, key: str) -> str:
        self._check_key(key, "GetObject")
        return str(self._object_path(key))

    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None, durable: bool = True
    ) -> str:
        """Conditions are checked and the object renamed into place under an exclusive lock on the key."""
        self._check_key(key, "PutObject")
        digest = ContentDigest()
        digest.update(data)
        etag = digest.md5
        if not durable:
            with self._durability_lock:
                self._sync_owed = True
        with self._os_errors("PutObject", key), self._key_lock(key):
            if if_none_match or if_match is not None:
                current = self._current_etag(key)
                if if_none_match and current is not None:
                    raise self._precondition_failed(key, "the object exists")
                if if_match is not None and current != if_match.strip('"'):
                    raise self._precondition_failed(key, f"its ETag is {current}, not {if_match}")
            written = atomic_write(self._object_path(key), lambda handle: handle.write(data), durable=durable)
            self._write_sidecar(key, written, {MD5_METADATA_KEY: etag}, digest.checksum, durable=durable)
        return etag

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        self._check_key(key, "GetObject")
        with self._os_errors("GetObject", key):
            try:
                data = self._object_path(key).read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        return data, _new_md5(data, usedforsecurity=False).hexdigest()

    def _current_etag(self, key: str) -> str | None:
        found = self.get_bytes(key)
        return None if found is None else found[1]

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        """An flock per key: conditional writes of every process on this host take turns."""
        path = self._meta_dir / "locks" / self._sidecar_path(key).name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _object_path(self, key: str) -> Path:
        return self._bucket_dir / key

    def _sidecar_path(self, key: str) -> Path:
        name = _new_sha256(key.encode("utf-8")).hexdigest()
        return self._meta_dir / name[:2] / f"{name}.json"

    def _write_sidecar(
        self, key: str, written: os.stat_result, metadata: dict[str, str], checksum: str, *, durable: bool = True
    ) -> ObjectInfo:
        record = {
            "key": key,
            "metadata": metadata,
            "checksum": checksum,
            "ino": written.st_ino,
            "size": written.st_size,
            "mtime_ns": written.st_mtime_ns,
        }
        payload = json.dumps(record, ensure_ascii=False).encode("utf-8")
        atomic_write(self._sidecar_path(key), lambda handle: handle.write(payload), durable=durable)
        return self._object_info(key, written, record)

    def _read_sidecar(self, key: str, current: os.stat_result) -> dict[str, Any]:
        """The object's sidecar record, or {} when it is missing, unreadable or describes another file.

        Sidecars written before checksums were recorded have none: the checksum is then unknown.
        """
        try:
            record = json.loads(self._sidecar_path(key).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        if not _describes(record, current):
            logger.debug("Ignoring stale metadata sidecar of %s in %s", key, self)
            return {}
        return dict(record)

    def _info(self, key: str) -> ObjectInfo | None:
        try:
            current = self._object_path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(current.st_mode):
            return None
        return self._object_info(key, current, self._read_sidecar(key, current))

    @staticmethod
    def _object_info(key: str, current: os.stat_result, record: Mapping[str, Any]) -> ObjectInfo:
        metadata = dict(record.get("metadata") or {})
        md5 = metadata.get(MD5_METADATA_KEY)
        return ObjectInfo(
            key=key,
            size=current.st_size,
            md5=md5,
            etag=md5,
            metadata=metadata,
            last_modified=datetime.fromtimestamp(current.st_mtime_ns / 1e9, tz=timezone.utc),
            checksum=record.get("checksum"),
        )

    def _walk(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``: descend only into the directory the prefix names."""
        for key_dir, entry in self._entries(prefix):
            if not entry.name.startswith(TEMP_MARKER) and entry.is_file(follow_symlinks=False):
                yield f"{key_dir}/{entry.name}" if key_dir else entry.name

    def _temp_files(self, prefix: str) -> list[Path]:
        """Temp files of directories under ``prefix`` (a temp file belongs to its directory's keys)."""
        return [
            Path(entry.path)
            for key_dir, entry in self._entries(prefix, with_temp=True)
            if entry.name.startswith(TEMP_MARKER)
            and f"{key_dir}/".startswith(prefix)
            and entry.is_file(follow_symlinks=False)
        ]

    def _entries(self, prefix: str, with_temp: bool = False) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(directory key, entry) of every entry whose key may start with ``prefix``, recursively."""
        directory, _, name_prefix = prefix.rpartition("/")
        pending = [(self._bucket_dir / directory if directory else self._bucket_dir, directory, name_prefix)]
        while pending:
            path, key_dir, start = pending.pop()
            try:
                entries = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith(TEMP_MARKER):
                    if with_temp:
                        yield key_dir, entry
                    continue
                if not entry.name.startswith(start):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), f"{key_dir}/{entry.name}" if key_dir else entry.name, ""))
                else:
                    yield key_dir, entry

    def _prune_empty_dirs(self, directory: Path) -> None:
        """S3 has no directories: drop the ones a delete emptied, up to the bucket itself."""
        while directory != self._bucket_dir and self._bucket_dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    @contextmanager
    def _os_errors(self, operation: str, key: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise S3OperationError(
                f"{operation} failed in {self.root}: {exc}",
                category=categorize_error(exc),
                operation=operation,
                key=key,
                bucket=self.bucket,
            ) from exc


# What a managed multipart copy carries over from its source besides user metadata, like
# CopyObject with MetadataDirective=COPY does.
_SYSTEM_METADATA = ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl", "Expires")


def _checksum_of(response: Mapping[str, Any]) -> str | None:
    """The full-object checksum in an S3 answer as "<ALGORITHM>:<base64>"; composite ("...-N") ones are not."""
    if response.get("ChecksumType") == "COMPOSITE":
        return None
    for algorithm in _CHECKSUM_ALGORITHMS:
        value = response.get(f"Checksum{algorithm}")
        if value and "-" not in value:
            return f"{algorithm}:{value}"
    return None


def _encoded(metadata: Mapping[str, str]) -> dict[str, str]:
    return {name: encode_metadata_value(value) for name, value in metadata.items()}


class _KnownSource:
    """Tells s3transfer the source's size and ETag we already have, sparing its HEAD; the ETag
    pins every part copy to that version of the source (CopySourceIfMatch)."""

    def __init__(self, size: int, etag: str | None) -> None:
        self.size, self.etag = size, etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self.size)
        if self.etag:
            future.meta.provide_object_etag(self.etag)

    def on_progress(self, **kwargs: Any) -> None:
        pass

    def on_done(self, **kwargs: Any) -> None:
        pass


def _boto_error_types() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, OSError)


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        return str(response.get("Error", {}).get("Code") or "") or None
    return None


def _http_status(exc: BaseException | None) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def _conditional_loss(exc: BaseException | None, conditional: bool) -> str | None:
    """Why a conditional PutObject wrote nothing, or None when it failed for another reason."""
    code = _error_code(exc) if exc is not None else None
    if code == "PreconditionFailed" or (exc is not None and _http_status(exc) == 412):
        return "its precondition does not hold"
    if code == "ConditionalRequestConflict":
        return "a concurrent conditional write is in flight (409)"
    if conditional and code == "NoSuchKey":
        return "the object does not exist"
    return None


def _codes_category(codes: Iterable[str]) -> ErrorCategory:
    """A batch is worth retrying when any of its failures is (deletes are idempotent)."""
    codes = set(codes)
    if codes & TRANSIENT_ERROR_CODES:
        return ErrorCategory.TRANSIENT
    if codes & PERMANENT_ERROR_CODES:
        return ErrorCategory.PERMANENT
    return ErrorCategory.UNKNOWN


@lru_cache(maxsize=1)
def _botocore_loader() -> Any:
    """Service models parsed once per process: a fresh loader per client costs ~150 ms of JSON parsing."""
    import botocore.loaders

    return botocore.loaders.create_loader()


def make_s3_client(endpoint_url: str | None = None, region: str | None = None, addressing_style: str = "auto") -> Any:
    """An S3 client that makes exactly one HTTP request per call: retrying is the error handler's job.

    Each client gets its own botocore session (sessions are not thread safe) sharing the
    parsed service models; endpoint, region and credentials not given here come from boto3's
    standard configuration (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, profiles, roles).
    """
    import botocore.session
    from botocore.config import Config

    install_log_redaction()
    if endpoint_url and url_userinfo(endpoint_url):
        raise _endpoint_with_credentials(endpoint_url)
    config = Config(
        region_name=region,
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": addressing_style},
    )
    session = botocore.session.get_session()
    session.register_component("data_loader", _botocore_loader())
    _register_credentials(session)
    client = session.create_client("s3", endpoint_url=endpoint_url, config=config)
    if url_userinfo(client.meta.endpoint_url):  # from AWS_ENDPOINT_URL or a profile
        raise _endpoint_with_credentials(client.meta.endpoint_url)
    return client


def _register_credentials(session: Any) -> None:
    """Credentials from a profile file or a role are in no environment variable: tell the redaction their values."""
    found = session.get_credentials()  # cached on the session: create_client signs with the same object
    if found is not None:
        frozen = found.get_frozen_credentials()
        register_secret(frozen.secret_key, frozen.token)


def _endpoint_with_credentials(endpoint_url: str) -> S3ConfigurationError:
    """Refused rather than stripped: a URL password is a credential in the wrong place, and S3 never uses it."""
    return S3ConfigurationError(
        f"The S3 endpoint URL {without_userinfo(endpoint_url)} carries a user name or password: S3 takes "
        "credentials from boto3's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a role), never "
        "from the URL; remove 'user:password@' from storage.endpoint_url (OSAA_STORAGE__ENDPOINT_URL) or "
        "AWS_ENDPOINT_URL",
        operation="create_client",
    )


class S3Store(ObjectStore):
    """A bucket on any S3-compatible endpoint.

    ``endpoint_url=None`` leaves the endpoint to boto3's standard configuration (including
    ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``); credentials come only from boto3's
    standard chain. A ``client`` passed in is used as is (its retry configuration included).
    Uploads below ``multipart_threshold`` are one PutObject with Content-MD5; larger ones are
    a managed multipart upload (per-part flexible checksums). Copies are always server-side.
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        client: Any = None,
        multipart_threshold: int = 64 * MiB,
        copy_multipart_threshold: int = 5 * GiB,
        list_page_size: int = 1000,
    ) -> None:
        self.bucket = bucket
        self.multipart_threshold = multipart_threshold
        self.copy_multipart_threshold = copy_multipart_threshold
        self.list_page_size = list_page_size
        self._client = client if client is not None else make_s3_client(endpoint_url, region, addressing_style)
        self._failure_types = _boto_error_types()

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def endpoint_url(self) -> str:
        return str(self._client.meta.endpoint_url)

    @property
    def identity(self) -> str:
        return s3_identity(self.endpoint_url, self.bucket)

    def put_file(
        self,
        local_path: str | Path,
        key: str,
        metadata: Mapping[str, str] | None = None,
        md5: str | None = None,
        *,
        move: bool = False,
    ) -> ObjectInfo:
        """Sends the MD5 (Content-MD5) and a CRC32 so the server checks the bytes it stores.

        ``move`` changes nothing here: the file is uploaded and stays.
        """
        self._check_key(key, "PutObject")
        md5 = _normalized_md5(md5, "PutObject", key, self.bucket)
        with self._s3_errors("PutObject", key):
            size = os.path.getsize(local_path)
        if size < self.multipart_threshold:
            with self._s3_errors("PutObject", key):
                md5 = md5 or file_md5(local_path)
            user_metadata = self._metadata(metadata, md5, key)
            etag, checksum = self._put_single(local_path, key, md5, user_metadata)
        else:
            # The full-object CRC32 is what S3 checks the assembled parts against.
            with self._s3_errors("PutObject", key):
                digest = file_digest(local_path)
            if md5 is not None and md5 != digest.md5:
                raise self._bad_digest(local_path, key, digest.md5, md5)
            md5, checksum = digest.md5, digest.checksum
            user_metadata = self._metadata(metadata, md5, key)
            etag = self._put_multipart(local_path, key, user_metadata, checksum)
        logger.debug("Uploaded %s (%d bytes) to %s", key, size, self)
        return ObjectInfo(key=key, size=size, md5=md5, etag=etag, metadata=user_metadata, checksum=checksum)

    def get_file(self, key: str, local_path: str | Path) -> None:
        """Streams to a temp file and checks the MD5 on the way, so a corrupt download never lands."""
        self._check_key(key, "GetObject")
        digest = _new_md5(usedforsecurity=False)
        with self._s3_errors("GetObject", key):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            expected = response.get("Metadata", {}).get(MD5_METADATA_KEY) or md5_from_etag(response.get("ETag"))

            def write(target: IO[bytes]) -> None:
                for chunk in response["Body"].iter_chunks(_CHUNK):
                    digest.update(chunk)
                    target.write(chunk)
                if expected and digest.hexdigest() != expected:
                    raise S3OperationError(
                        f"Downloaded content of {key!r} has MD5 {digest.hexdigest()}, expected {expected}",
                        category=ErrorCategory.TRANSIENT,
                        operation="GetObject",
                        key=key,
                        bucket=self.bucket,
                    )

            with closing(response["Body"]):
                atomic_write(Path(local_path), write)

    def head(self, key: str) -> ObjectInfo | None:
        self._check_key(key, "HeadObject")
        response = self._head_response(key)
        return None if response is None else self._object_info(key, response)

    def _object_info(self, key: str, response: Mapping[str, Any]) -> ObjectInfo:
        metadata = {name: decode_metadata_value(value) for name, value in (response.get("Metadata") or {}).items()}
        etag = response.get("ETag", "").strip('"') or None
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            md5=metadata.get(MD5_METADATA_KEY) or md5_from_etag(etag),
            etag=etag,
            metadata=metadata,
            last_modified=response.get("LastModified"),
            checksum=self._full_object_checksum(key, response),
        )

    def copy(self, src_key: str, dst_key: str, source: ObjectInfo | None = None) -> ObjectInfo:
        """Server-side copy, verified against a checksum computed from the source's bytes.

        The destination's checksum comes from the server, computed while it copied; it is
        compared with the source's full-object checksum (recorded when the source was
        uploaded), else its ETag with the MD5 recorded at upload. Never metadata with itself.
        """
        self._check_key(src_key, "CopyObject")
        self._check_key(dst_key, "CopyObject")
        trusted = source is not None
        if source is None or source.size >= self.copy_multipart_threshold:
            recorded = self._head_response(src_key)
            if recorded is None:
                raise self._missing_source(src_key)
            source, expected = self._object_info(src_key, recorded), source
        else:
            recorded, expected = None, source
        if src_key == dst_key:
            return source
        if source.size >= self.copy_multipart_threshold:
            assert recorded is not None
            if expected is not None and not _matches(
                expected, source.size, source.md5, source.checksum, every_digest=True
            ):
                found = f"size={source.size}, md5={source.md5}, checksum={source.checksum}"
                raise self._copy_mismatch(expected, dst_key, f"a source of {found}")
            copied = self._copy_multipart(source, recorded, dst_key)
            # Its MD5 is metadata copied from the source: only its size and checksum say anything.
            self._check_copied(source, replace(copied, md5=None), "the destination's parts")
            return copied
        algorithm = checksum_algorithm(source.checksum) or CHECKSUM_ALGORITHM
        with self._s3_errors("CopyObject", dst_key):
            response = self._client.copy_object(
                Bucket=self.bucket,
                Key=dst_key,
                CopySource={"Bucket": self.bucket, "Key": src_key},
                MetadataDirective="COPY",
                ChecksumAlgorithm=algorithm,
            )
        result = response.get("CopyObjectResult", {})
        computed = ObjectInfo(dst_key, source.size, md5_from_etag(result.get("ETag")), None, checksum=_checksum_of(result))
        if recorded is None and not _comparable(source, computed):
            # Nothing the caller knows can be compared (an SSE-KMS ETag is not an MD5): ask the
            # server for the checksum it recorded when the source was uploaded.
            recorded = self._head_response(src_key)
            source = self._object_info(src_key, recorded) if recorded is not None else source
        self._check_copied(source, computed, "the copy")
        if trusted and computed.md5 is not None and computed.md5 == source.md5:
            return replace(source, key=dst_key, etag=computed.md5, checksum=computed.checksum, last_modified=None)
        copied = self.head(dst_key)
        if copied is None or copied.size != source.size:
            raise self._copy_mismatch(source, dst_key, "nothing" if copied is None else f"size={copied.size}")
        return copied

    def delete_many(self, keys: Iterable[str]) -> None:
        unique = list(dict.fromkeys(keys))
        for key in unique:
            self._check_key(key, "DeleteObjects")
        for start in range(0, len(unique), _S3_DELETE_BATCH):
            self._delete_batch(unique[start : start + _S3_DELETE_BATCH])

    def list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        """One ListObjectsV2 per page, plus a HEAD for each object whose ETag is not its MD5
        (multipart uploads and copies): its MD5 is only in its metadata, and an object listed
        without one would look changed to every idempotency check."""
        self._check_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(
            paginator.paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size}
            )
        )
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=_COPY_CONCURRENCY, thread_name_prefix="osaa-list-head") as pool:
            while True:
                with self._s3_errors("ListObjectsV2", prefix):
                    page = next(pages, None)
                if page is None:
                    return
                entries = page.get("Contents", [])
                unknown = [entry["Key"] for entry in entries if md5_from_etag(entry.get("ETag")) is None]
                found = dict(zip(unknown, pool.map(self.head, unknown)))
                for entry in entries:
                    yield self._listed(entry, found.get(entry["Key"]))

    def remove_incomplete(self, prefix: str) -> int:
        self._check_prefix(prefix)
        paginator = self._client.get_paginator("list_multipart_uploads")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
        aborted = 0
        while True:
            with self._s3_errors("ListMultipartUploads", prefix):
                page = next(pages, None)
            if page is None:
                return aborted
            for upload in page.get("Uploads", []):
                key, upload_id = upload["Key"], upload["UploadId"]
                try:
                    with self._s3_errors("AbortMultipartUpload", key):
                        self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                except S3OperationError as error:
                    if _error_code(error.__cause__) != "NoSuchUpload":
                        raise
                    continue
                aborted += 1
                logger.info("Aborted incomplete multipart upload %s of %s in %s", upload_id, key, self)

    def uri(self, key: str) -> str:
        self._check_key(key, "GetObject")
        return f"s3://{self.bucket}/{key}"

    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None, durable: bool = True
    ) -> str:
        self._check_key(key, "PutObject")
        md5 = _new_md5(data, usedforsecurity=False)
        conditions: dict[str, str] = {}
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = f'"{if_match.strip(chr(34))}"'
        try:
            with self._s3_errors("PutObject", key):
                response = self._client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentMD5=base64.b64encode(md5.digest()).decode("ascii"),
                    Metadata={MD5_METADATA_KEY: md5.hexdigest()},
                    **conditions,
                )
        except S3OperationError as error:
            lost = _conditional_loss(error.__cause__, bool(conditions))
            if lost is None:
                raise
            failed = self._precondition_failed(key, lost)
            if _error_code(error.__cause__) == "ConditionalRequestConflict":
                failed.category = ErrorCategory.TRANSIENT
            raise failed from error
        return str(response.get("ETag", "")).strip('"')

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        self._check_key(key, "GetObject")
        try:
            with self._s3_errors("GetObject", key):
                response = self._client.get_object(Bucket=self.bucket, Key=key)
                with closing(response["Body"]):
                    data = response["Body"].read()
        except S3OperationError as error:
            if _error_code(error.__cause__) == "NoSuchKey" or _http_status(error.__cause__) == 404:
                return None
            raise
        return data, str(response.get("ETag", "")).strip('"')

    def _head_response(self, key: str) -> dict[str, Any] | None:
        try:
            with self._s3_errors("HeadObject", key):
                return dict(self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"))
        except S3OperationError as error:
            if _http_status(error.__cause__) == 404:
                return None
            raise

    @staticmethod
    def _listed(entry: Mapping[str, Any], found: ObjectInfo | None) -> ObjectInfo:
        """A listing entry, completed by its HEAD when it had one (and it still exists)."""
        if found is not None:
            return replace(found, metadata={})
        etag = entry.get("ETag", "").strip('"') or None
        return ObjectInfo(
            key=entry["Key"],
            size=int(entry["Size"]),
            md5=md5_from_etag(etag),
            etag=etag,
            metadata={},
            last_modified=entry.get("LastModified"),
        )

    def _check_copied(self, expected: ObjectInfo, computed: ObjectInfo, what: str) -> None:
        """A destination that fails the check is deleted: absent is safer than wrong bytes under
        metadata (copied from the source) that vouches for the right ones."""
        if not _matches(expected, computed.size, computed.md5, computed.checksum):
            found = f"size={computed.size}, md5={computed.md5}, checksum={computed.checksum}"
            try:
                self.delete_many([computed.key])
            except S3OperationError as error:
                logger.warning("Could not delete the mismatching copy %s in %s: %s", computed.key, self, error)
                found += "; the mismatching copy could not be deleted"
            else:
                found += "; the mismatching copy was deleted"
            raise self._copy_mismatch(expected, computed.key, found)
        if not _comparable(expected, computed):
            logger.info(
                "Copy of %s to %s in %s verified by size only: %s carry no checksum comparable with the source's",
                expected.key, computed.key, self, what,
            )

    def _put_single(
        self, local_path: str | Path, key: str, md5: str, metadata: dict[str, str]
    ) -> tuple[str | None, str | None]:
        content_md5 = base64.b64encode(binascii.unhexlify(md5)).decode("ascii")
        with self._s3_errors("PutObject", key), open(local_path, "rb") as body:
            response = self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentMD5=content_md5,
                ChecksumAlgorithm=CHECKSUM_ALGORITHM,
                Metadata=_encoded(metadata),
            )
        return response.get("ETag", "").strip('"') or None, _checksum_of(response)

    def _put_multipart(self, local_path: str | Path, key: str, metadata: dict[str, str], checksum: str) -> None:
        """A managed multipart upload given the full-object CRC32, which makes S3 check the whole object."""
        from s3transfer.manager import TransferConfig, TransferManager

        config = TransferConfig(multipart_threshold=self.multipart_threshold)
        extra_args = {"Metadata": _encoded(metadata), f"Checksum{CHECKSUM_ALGORITHM}": checksum.partition(":")[2]}
        with self._s3_errors("PutObject", key), TransferManager(self._client, config) as manager:
            manager.upload(str(local_path), self.bucket, key, extra_args=extra_args).result()

    def _copy_part_size(self, size: int) -> int:
        """Large parts mean few requests; S3 allows at most 10,000 parts of at least 5 MiB."""
        preferred = min(self.copy_multipart_threshold, _COPY_PART_SIZE)
        return max(_S3_MIN_PART_SIZE, preferred, -(-size // _S3_MAX_PARTS))

    def _copy_multipart(self, source: ObjectInfo, recorded: Mapping[str, Any], dst_key: str) -> ObjectInfo:
        """s3transfer's managed multipart copy, carrying user and system metadata; returns the
        destination as the server computed it (size, and the full-object checksum of its parts)."""
        from s3transfer.manager import TransferConfig, TransferManager

        extra_args: dict[str, Any] = {
            name: recorded[name] for name in _SYSTEM_METADATA if recorded.get(name) is not None
        }
        metadata = dict(source.metadata)
        if source.md5:
            metadata.setdefault(MD5_METADATA_KEY, source.md5)
        extra_args.update(
            Metadata=_encoded(metadata),
            MetadataDirective="REPLACE",  # ours, from the HEAD above: s3transfer need not HEAD again
            ChecksumAlgorithm=checksum_algorithm(source.checksum) or CHECKSUM_ALGORITHM,
        )
        config = TransferConfig(
            multipart_threshold=self.copy_multipart_threshold,
            multipart_chunksize=self._copy_part_size(source.size),
            max_request_concurrency=_COPY_CONCURRENCY,
        )
        known = _KnownSource(source.size, recorded.get("ETag"))
        try:
            with self._s3_errors("UploadPartCopy", dst_key), TransferManager(self._client, config) as manager:
                manager.copy(
                    {"Bucket": self.bucket, "Key": source.key}, self.bucket, dst_key, extra_args, subscribers=[known]
                ).result()
        except S3OperationError as error:
            if _error_code(error.__cause__) == "PreconditionFailed":
                raise S3OperationError(
                    f"Source {source.key!r} changed during a multipart copy",
                    category=ErrorCategory.TRANSIENT,
                    operation="UploadPartCopy",
                    key=dst_key,
                    bucket=self.bucket,
                ) from error
            raise
        copied = self.head(dst_key)
        if copied is None:
            raise self._copy_mismatch(source, dst_key, "nothing")
        return copied

    def _full_object_checksum(self, key: str, response: Mapping[str, Any]) -> str | None:
        """The object's full-object checksum, or None.

        A single-part object's checksum is one. A multipart object's is one only when it was
        uploaded as FULL_OBJECT (ours are); a composite one ("checksum of the part checksums")
        is turned into the full-object CRC32 by combining its parts' CRC32s. Endpoints that do
        not say which type they hold are asked with GetObjectAttributes.
        """
        etag = response.get("ETag", "")
        if "-" not in etag or response.get("ChecksumType") == "FULL_OBJECT":
            return _checksum_of(response)
        if not any(response.get(f"Checksum{algorithm}") for algorithm in _CHECKSUM_ALGORITHMS):
            return None
        try:
            with self._s3_errors("GetObjectAttributes", key):
                attributes = self._client.get_object_attributes(
                    Bucket=self.bucket, Key=key, ObjectAttributes=["Checksum", "ObjectParts"], MaxParts=_S3_MAX_PARTS
                )
        except S3OperationError as error:
            logger.debug("No checksum attributes for %s in %s: %s", key, self, error)
            return None
        checksum = attributes.get("Checksum") or {}
        if checksum.get("ChecksumType") == "FULL_OBJECT":
            return _checksum_of(checksum)
        parts = (attributes.get("ObjectParts") or {}).get("Parts") or []
        crc: int | None = None
        for part in sorted(parts, key=lambda item: item["PartNumber"]):
            value = part.get(f"Checksum{CHECKSUM_ALGORITHM}")
            if value is None:
                return None
            part_crc = int.from_bytes(base64.b64decode(value), "big")
            crc = part_crc if crc is None else crc32_combine(crc, part_crc, int(part["Size"]))
        return crc32_checksum(crc) if crc is not None else None

    def _delete_batch(self, keys: list[str]) -> None:
        with self._s3_errors("DeleteObjects", keys[0]):
            response = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
            )
        failures = response.get("Errors") or []
        if failures:
            listed = "; ".join(f"{item.get('Key')}: {item.get('Code')}" for item in failures[:5])
            raise S3OperationError(
                f"DeleteObjects failed for {len(failures)} of {len(keys)} keys: {listed}",
                category=_codes_category(str(item.get("Code")) for item in failures),
                operation="DeleteObjects",
                key=failures[0].get("Key"),
                bucket=self.bucket,
            )

    def _missing_source(self, key: str) -> S3OperationError:
        """HeadObject says only "404": ask the bucket itself to tell a missing bucket from a missing key."""
        try:
            with self._s3_errors("HeadBucket", None):
                self._client.head_bucket(Bucket=self.bucket)
        except S3OperationError as error:
            if _http_status(error.__cause__) == 404:
                return self._no_such_bucket("CopyObject")
            raise
        return self._missing(key, "CopyObject")

    def _no_such_bucket(self, operation: str) -> S3ConfigurationError:
        return S3ConfigurationError(
            f"Bucket {self.bucket!r} does not exist at {self.endpoint_url}: create it, or point "
            "storage.bucket / storage.endpoint_url (OSAA_STORAGE__BUCKET, OSAA_STORAGE__ENDPOINT_URL) "
            "at an existing bucket",
            operation=operation,
            bucket=self.bucket,
            endpoint_url=self.endpoint_url,
        )

    def _wrap(self, exc: BaseException, operation: str, key: str | None) -> S3OperationError:
        code = _error_code(exc)
        if code == "NoSuchBucket":
            return self._no_such_bucket(operation)
        if code in _CREDENTIAL_ERROR_CODES or type(exc).__name__ in _CREDENTIAL_ERROR_CLASSES:
            return S3ConfigurationError(
                f"{operation} on bucket {self.bucket!r} at {self.endpoint_url} was refused for its credentials "
                f"({code or type(exc).__name__}): provide valid ones through boto3's standard chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, or an instance role)",
                operation=operation,
                key=key,
                bucket=self.bucket,
            )
        return S3OperationError(
            f"{operation} failed: {exc}",
            category=categorize_error(exc),
            operation=operation,
            key=key,
            bucket=self.bucket,
        )

    @contextmanager
    def _s3_errors(self, operation: str, key: str | None) -> Iterator[None]:
        try:
            yield
        except PipelineBaseError:
            raise
        except self._failure_types as exc:
            raise self._wrap(exc, operation, key) from exc


def store_metadata(store: ObjectStore) -> dict[str, str]:
    """What a FILE checkpoint records of the store its key lives in: another store is another key space."""
    return {"store": store.identity}


def make_store(settings: StorageSettings | None = None, *, bucket: str | None = None) -> ObjectStore:
    """The store the settings describe; ``bucket`` overrides the configured one."""
    if settings is None:
        settings = get_settings().storage
    name = bucket or settings.bucket
    if settings.backend == "s3":
        return S3Store(
            name,
            endpoint_url=settings.endpoint_url,
            region=settings.region,
            addressing_style=settings.addressing_style,
        )
    return LocalStore(settings.root, name)
