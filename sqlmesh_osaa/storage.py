"""Object storage behind one narrow interface: a local directory or an S3 bucket.

Everything above this module (checkpoints, transactions, ingest) talks to an
:class:`ObjectStore`, so the same transaction protocol runs on a laptop (:class:`LocalStore`,
the embedded default) and on any S3-compatible endpoint (:class:`S3Store`). Both stores
guarantee that a reader never sees a partially written object and that every object carries
the MD5 of its content as metadata, so idempotency checks never need to download anything.

boto3 is imported on first use of :class:`S3Store`: the core must import fast and the local
backend never needs it.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import logging
import os
import stat
import uuid
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field, replace
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

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
from sqlmesh_osaa.settings import StorageSettings, get_settings

logger = logging.getLogger(__name__)

MD5_METADATA_KEY = "osaa-md5"

MiB = 1024**2
GiB = 1024**3
_CHUNK = MiB
# Temp files share the object's directory (so the final rename is atomic); this reserved
# name prefix keeps them out of listings and out of the key space.
TEMP_MARKER = ".osaa-tmp-"
_META_DIR = ".osaa-meta"
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


def file_md5(path: str | Path) -> str:
    """Hex MD5 of a file, read in chunks so memory stays flat for files of any size."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def md5_from_etag(etag: str | None) -> str | None:
    """The content MD5 when an ETag is one (single-part uploads); multipart ETags ("<hex>-N") are not."""
    if etag is None:
        return None
    etag = etag.strip('"').lower()
    return etag if _is_hex_md5(etag) else None


def _is_hex_md5(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _key_problem(key: object) -> str | None:
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
    return _key_problem(directory)


def _user_metadata(metadata: Mapping[str, str] | None, md5: str) -> dict[str, str]:
    """S3 lower-cases metadata names; doing it here keeps both stores identical."""
    result = {str(name).lower(): str(value) for name, value in (metadata or {}).items()}
    result[MD5_METADATA_KEY] = md5
    return result


def _create_temp(directory: Path) -> tuple[int, Path]:
    """Open a new temp file in ``directory``; retried because a concurrent delete may prune it."""
    for _ in range(5):
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{TEMP_MARKER}{uuid.uuid4().hex}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"directory {directory} keeps disappearing")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> os.stat_result:
    """Write ``path`` so readers see the old file or the complete new one, never a torn one.

    The content goes to a temp file beside ``path`` (same filesystem, so the rename is
    atomic), is fsynced, renamed over ``path``, and the directory is fsynced so the rename
    survives a power cut. On any error the temp file is removed and ``path`` is untouched.
    Returns the stat of the written file (inode and mtime survive the rename).
    """
    fd, temp = _create_temp(path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            written = os.fstat(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)
    return written


def _copy_hashing(source: IO[bytes], target: IO[bytes], digest: Any) -> None:
    for chunk in iter(lambda: source.read(_CHUNK), b""):
        digest.update(chunk)
        target.write(chunk)


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


class ObjectStore(ABC):
    """A bucket: put/get files, head, server-side copy, batched delete, sorted listing.

    Keys are validated identically by every store (no absolute keys, no empty, '.' or '..'
    segments) so a pipeline that works on the local backend works on S3 and vice versa.
    Every failure is an :class:`S3OperationError` whose category says whether a retry can
    help; retrying is the caller's job (the error handler), never the store's.
    """

    bucket: str

    @abstractmethod
    def put_file(
        self,
        local_path: str | Path,
        key: str,
        metadata: Mapping[str, str] | None = None,
        md5: str | None = None,
    ) -> ObjectInfo:
        """Upload a file; ``md5`` (hex) spares re-hashing a file whose digest is already known."""

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
        """Copy server-side keeping metadata; raises unless size and MD5 of the copy match.

        ``source`` is what the caller knows of the source (size, MD5): it spares the HEAD
        requests, the copy is verified against the ETag the copy returns, and the result
        then carries ``source``'s metadata and no last-modified time.
        """

    @abstractmethod
    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete objects; keys that do not exist are not an error (deletes are idempotent)."""

    @abstractmethod
    def list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order.

        Listings carry size, MD5 (when known without reading) and last-modified time but no
        user metadata: S3 listings do not return it, so neither does any store; use head().
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
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """Write a small object in one request and return its ETag; the commit protocol's primitive.

        ``if_none_match`` writes only when ``key`` does not exist; ``if_match`` only when its
        current ETag is that value. A lost condition raises :class:`PreconditionFailedError`
        (permanent; a 409 ConditionalRequestConflict is transient) and writes nothing.
        """

    @abstractmethod
    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        """A small object's content and ETag (for a later ``if_match``), or None when it does not exist."""

    def _precondition_failed(self, key: str, what: str) -> PreconditionFailedError:
        return PreconditionFailedError(
            f"Conditional write of {key!r} lost: {what}", operation="PutObject", key=key, bucket=self.bucket
        )

    def _check_key(self, key: str, operation: str) -> None:
        problem = _key_problem(key)
        if problem:
            raise S3OperationError(
                f"Invalid object key {key!r}: {problem}",
                category=ErrorCategory.PERMANENT,
                operation=operation,
                key=key,
                bucket=self.bucket,
            )

    def _check_prefix(self, prefix: str) -> None:
        problem = _prefix_problem(prefix)
        if problem:
            raise S3OperationError(
                f"Invalid prefix {prefix!r}: {problem}",
                category=ErrorCategory.PERMANENT,
                operation="ListObjectsV2",
                prefix=prefix,
                bucket=self.bucket,
            )

    def _missing(self, key: str, operation: str) -> S3OperationError:
        return S3OperationError(
            f"Object {key!r} does not exist in bucket {self.bucket!r}",
            category=ErrorCategory.PERMANENT,
            operation=operation,
            key=key,
            bucket=self.bucket,
        )

    def _verify_copy(self, source: ObjectInfo, copied: ObjectInfo | None) -> ObjectInfo:
        """A copy that differs from its source most likely raced a concurrent write: retry it."""
        if (
            copied is not None
            and copied.size == source.size
            and (source.md5 is None or copied.md5 == source.md5)
        ):
            return copied
        found = "nothing" if copied is None else f"size={copied.size}, md5={copied.md5}"
        raise S3OperationError(
            f"Copy of {source.key!r} does not match its source (expected size={source.size}, "
            f"md5={source.md5}; found {found})",
            category=ErrorCategory.TRANSIENT,
            operation="CopyObject",
            key=copied.key if copied else None,
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

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r}, bucket={self.bucket!r})"

    @property
    def identity(self) -> str:
        return f"local:{self.root}/{self.bucket}"

    def put_file(
        self,
        local_path: str | Path,
        key: str,
        metadata: Mapping[str, str] | None = None,
        md5: str | None = None,
    ) -> ObjectInfo:
        """Like S3 with Content-MD5, a given ``md5`` is checked against the bytes as they are copied."""
        self._check_key(key, "PutObject")
        expected = _normalized_md5(md5, "PutObject", key, self.bucket)
        digest = hashlib.md5(usedforsecurity=False)

        def write(target: IO[bytes]) -> None:
            with open(local_path, "rb") as source:
                _copy_hashing(source, target, digest)
            if expected is not None and digest.hexdigest() != expected:
                raise S3OperationError(
                    f"BadDigest: content of {str(local_path)!r} has MD5 {digest.hexdigest()}, not {expected}",
                    category=ErrorCategory.PERMANENT,
                    operation="PutObject",
                    key=key,
                    bucket=self.bucket,
                )

        with self._os_errors("PutObject", key):
            written = atomic_write(self._object_path(key), write)
            info = self._write_sidecar(key, written, _user_metadata(metadata, digest.hexdigest()))
        logger.debug("Stored %s (%d bytes) in %s", key, info.size, self)
        return info

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
        self._check_key(src_key, "CopyObject")
        self._check_key(dst_key, "CopyObject")
        digest = hashlib.md5(usedforsecurity=False)
        with self._os_errors("CopyObject", dst_key):
            source = self._info(src_key)
            if source is None:
                raise self._missing(src_key, "CopyObject")
            if src_key == dst_key:
                return source

            def write(target: IO[bytes]) -> None:
                with open(self._object_path(src_key), "rb") as handle:
                    _copy_hashing(handle, target, digest)

            written = atomic_write(self._object_path(dst_key), write)
            self._write_sidecar(dst_key, written, {**source.metadata, MD5_METADATA_KEY: digest.hexdigest()})
            return self._verify_copy(source, self._info(dst_key))

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

    def uri(self, key: str) -> str:
        self._check_key(key, "GetObject")
        return str(self._object_path(key))

    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """Conditions are checked and the object renamed into place under an exclusive lock on the key."""
        self._check_key(key, "PutObject")
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        with self._os_errors("PutObject", key), self._key_lock(key):
            if if_none_match or if_match is not None:
                current = self._current_etag(key)
                if if_none_match and current is not None:
                    raise self._precondition_failed(key, "the object exists")
                if if_match is not None and current != if_match.strip('"'):
                    raise self._precondition_failed(key, f"its ETag is {current}, not {if_match}")
            written = atomic_write(self._object_path(key), lambda handle: handle.write(data))
            self._write_sidecar(key, written, {MD5_METADATA_KEY: etag})
        return etag

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        self._check_key(key, "GetObject")
        with self._os_errors("GetObject", key):
            try:
                data = self._object_path(key).read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        return data, hashlib.md5(data, usedforsecurity=False).hexdigest()

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
        name = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self._meta_dir / name[:2] / f"{name}.json"

    def _write_sidecar(self, key: str, written: os.stat_result, metadata: dict[str, str]) -> ObjectInfo:
        record = {
            "key": key,
            "metadata": metadata,
            "ino": written.st_ino,
            "size": written.st_size,
            "mtime_ns": written.st_mtime_ns,
        }
        payload = json.dumps(record, ensure_ascii=False).encode("utf-8")
        atomic_write(self._sidecar_path(key), lambda handle: handle.write(payload))
        return self._object_info(key, written, metadata)

    def _read_sidecar(self, key: str, current: os.stat_result) -> dict[str, str]:
        """The object's metadata, or {} when the sidecar is missing, unreadable or describes another file."""
        try:
            record = json.loads(self._sidecar_path(key).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        if (record.get("ino"), record.get("size"), record.get("mtime_ns")) != (
            current.st_ino,
            current.st_size,
            current.st_mtime_ns,
        ):
            logger.debug("Ignoring stale metadata sidecar of %s in %s", key, self)
            return {}
        return dict(record.get("metadata") or {})

    def _info(self, key: str) -> ObjectInfo | None:
        try:
            current = self._object_path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(current.st_mode):
            return None
        return self._object_info(key, current, self._read_sidecar(key, current))

    @staticmethod
    def _object_info(key: str, current: os.stat_result, metadata: dict[str, str]) -> ObjectInfo:
        md5 = metadata.get(MD5_METADATA_KEY)
        return ObjectInfo(
            key=key,
            size=current.st_size,
            md5=md5,
            etag=md5,
            metadata=metadata,
            last_modified=datetime.fromtimestamp(current.st_mtime_ns / 1e9, tz=timezone.utc),
        )

    def _walk(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``: descend only into the directory the prefix names."""
        directory, _, name_prefix = prefix.rpartition("/")
        pending = [(self._bucket_dir / directory if directory else self._bucket_dir, directory, name_prefix)]
        while pending:
            path, key_dir, start = pending.pop()
            try:
                entries = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith(TEMP_MARKER) or not entry.name.startswith(start):
                    continue
                key = f"{key_dir}/{entry.name}" if key_dir else entry.name
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), key, ""))
                elif entry.is_file(follow_symlinks=False):
                    yield key

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

    config = Config(
        region_name=region,
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": addressing_style},
    )
    session = botocore.session.get_session()
    session.register_component("data_loader", _botocore_loader())
    return session.create_client("s3", endpoint_url=endpoint_url, config=config)


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
        parts = urlsplit(self.endpoint_url)
        host = parts.netloc.rpartition("@")[2]
        return f"s3:{parts.scheme}://{host}{parts.path.rstrip('/')}/{self.bucket}"

    def put_file(
        self,
        local_path: str | Path,
        key: str,
        metadata: Mapping[str, str] | None = None,
        md5: str | None = None,
    ) -> ObjectInfo:
        self._check_key(key, "PutObject")
        md5 = _normalized_md5(md5, "PutObject", key, self.bucket)
        with self._s3_errors("PutObject", key):
            size = os.path.getsize(local_path)
            md5 = md5 or file_md5(local_path)
        user_metadata = _user_metadata(metadata, md5)
        if size < self.multipart_threshold:
            etag = self._put_single(local_path, key, md5, user_metadata)
        else:
            etag = self._put_multipart(local_path, key, user_metadata)
        logger.debug("Uploaded %s (%d bytes) to %s", key, size, self)
        return ObjectInfo(key=key, size=size, md5=md5, etag=etag, metadata=user_metadata)

    def get_file(self, key: str, local_path: str | Path) -> None:
        """Streams to a temp file and checks the MD5 on the way, so a corrupt download never lands."""
        self._check_key(key, "GetObject")
        digest = hashlib.md5(usedforsecurity=False)
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
        try:
            with self._s3_errors("HeadObject", key):
                response = self._client.head_object(Bucket=self.bucket, Key=key)
        except S3OperationError as error:
            if _http_status(error.__cause__) == 404:
                return None
            raise
        metadata = dict(response.get("Metadata") or {})
        etag = response.get("ETag", "").strip('"') or None
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            md5=metadata.get(MD5_METADATA_KEY) or md5_from_etag(etag),
            etag=etag,
            metadata=metadata,
            last_modified=response.get("LastModified"),
        )

    def copy(self, src_key: str, dst_key: str, source: ObjectInfo | None = None) -> ObjectInfo:
        self._check_key(src_key, "CopyObject")
        self._check_key(dst_key, "CopyObject")
        trusted = source is not None
        source = source or self.head(src_key)
        if source is None:
            raise self._missing_source(src_key)
        if src_key == dst_key:
            return source
        if source.size >= self.copy_multipart_threshold:
            self._copy_multipart(source, dst_key)
            return self._verify_copy(source, self.head(dst_key))
        with self._s3_errors("CopyObject", dst_key):
            response = self._client.copy_object(
                Bucket=self.bucket,
                Key=dst_key,
                CopySource={"Bucket": self.bucket, "Key": src_key},
                MetadataDirective="COPY",
            )
        copied_md5 = md5_from_etag(response.get("CopyObjectResult", {}).get("ETag"))
        if trusted and source.md5 is not None and copied_md5 == source.md5:
            return ObjectInfo(dst_key, source.size, copied_md5, copied_md5, source.metadata)
        return self._verify_copy(source, self.head(dst_key))

    def delete_many(self, keys: Iterable[str]) -> None:
        unique = list(dict.fromkeys(keys))
        for key in unique:
            self._check_key(key, "DeleteObjects")
        for start in range(0, len(unique), _S3_DELETE_BATCH):
            self._delete_batch(unique[start : start + _S3_DELETE_BATCH])

    def list_prefix(self, prefix: str) -> Iterator[ObjectInfo]:
        self._check_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(
            paginator.paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size}
            )
        )
        while True:
            with self._s3_errors("ListObjectsV2", prefix):
                page = next(pages, None)
            if page is None:
                return
            for entry in page.get("Contents", []):
                etag = entry.get("ETag", "").strip('"') or None
                yield ObjectInfo(
                    key=entry["Key"],
                    size=int(entry["Size"]),
                    md5=md5_from_etag(etag),
                    etag=etag,
                    metadata={},
                    last_modified=entry.get("LastModified"),
                )

    def uri(self, key: str) -> str:
        self._check_key(key, "GetObject")
        return f"s3://{self.bucket}/{key}"

    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        self._check_key(key, "PutObject")
        md5 = hashlib.md5(data, usedforsecurity=False)
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

    def _put_single(self, local_path: str | Path, key: str, md5: str, metadata: dict[str, str]) -> str | None:
        content_md5 = base64.b64encode(binascii.unhexlify(md5)).decode("ascii")
        with self._s3_errors("PutObject", key), open(local_path, "rb") as body:
            response = self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentMD5=content_md5, Metadata=metadata
            )
        return response.get("ETag", "").strip('"') or None

    def _put_multipart(self, local_path: str | Path, key: str, metadata: dict[str, str]) -> None:
        from s3transfer.manager import TransferConfig, TransferManager

        config = TransferConfig(multipart_threshold=self.multipart_threshold)
        with self._s3_errors("PutObject", key), TransferManager(self._client, config) as manager:
            manager.upload(str(local_path), self.bucket, key, extra_args={"Metadata": metadata}).result()

    def _copy_part_size(self, size: int) -> int:
        """Large parts mean few requests; S3 allows at most 10,000 parts of at least 5 MiB."""
        preferred = min(self.copy_multipart_threshold, _COPY_PART_SIZE)
        return max(_S3_MIN_PART_SIZE, preferred, -(-size // _S3_MAX_PARTS))

    def _copy_multipart(self, source: ObjectInfo, dst_key: str) -> None:
        """UploadPartCopy for objects too large for CopyObject, carrying the source's metadata."""
        metadata = dict(source.metadata)
        if source.md5:
            metadata.setdefault(MD5_METADATA_KEY, source.md5)
        with self._s3_errors("CreateMultipartUpload", dst_key):
            upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=dst_key, Metadata=metadata)[
                "UploadId"
            ]
        part_size = self._copy_part_size(source.size)
        ranges = [(start, min(start + part_size, source.size) - 1) for start in range(0, source.size, part_size)]

        def copy_part(numbered: tuple[int, tuple[int, int]]) -> dict[str, Any]:
            number, (first, last) = numbered
            with self._s3_errors("UploadPartCopy", dst_key):
                result = self._client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=dst_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": source.key},
                    CopySourceRange=f"bytes={first}-{last}",
                    **({"CopySourceIfMatch": f'"{source.etag}"'} if source.etag else {}),
                )
            return {"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]}

        try:
            with ThreadPoolExecutor(max_workers=min(_COPY_CONCURRENCY, len(ranges))) as pool:
                parts = list(pool.map(copy_part, enumerate(ranges, start=1)))
            with self._s3_errors("CompleteMultipartUpload", dst_key):
                self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=dst_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException as error:
            self._abort_upload(dst_key, upload_id)
            if isinstance(error, S3OperationError) and _error_code(error.__cause__) == "PreconditionFailed":
                raise S3OperationError(
                    f"Source {source.key!r} changed during a multipart copy",
                    category=ErrorCategory.TRANSIENT,
                    operation="UploadPartCopy",
                    key=dst_key,
                    bucket=self.bucket,
                ) from error
            raise

    def _abort_upload(self, key: str, upload_id: str) -> None:
        """Best effort: a leftover upload costs storage until a lifecycle rule removes it, nothing else."""
        try:
            with self._s3_errors("AbortMultipartUpload", key):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except S3OperationError as error:
            logger.warning("Could not abort multipart upload %s of %s: %s", upload_id, key, error)

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
