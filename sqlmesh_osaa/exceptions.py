"""What can go wrong, and what kind of wrong it is.

Every error of the package derives from :class:`PipelineBaseError`, carries an
:class:`ErrorCategory` (which decides whether a retry can help) and the context a
person needs to act on it: the key, file, operation or setting involved.
:func:`categorize_error` gives the category of any exception, ours or a library's,
without importing the libraries (the core must import fast and never needs botocore
or DuckDB just to classify an error).
"""

from __future__ import annotations

import errno
import re
from enum import Enum
from typing import Any, Iterable, Mapping, Sequence

from sqlmesh_osaa.redaction import redact


class ErrorCategory(str, Enum):
    """Whether retrying an operation that raised an error can succeed."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"
    # The data broke a rule (a SQLMesh audit): permanent until the data changes, never retried.
    DATA = "data"


class PipelineBaseError(Exception):
    """Base of every error raised by sqlmesh_osaa.

    ``context`` names the things involved (key, file_path, operation, ...); they are
    appended to the message so a log line alone says what failed. Message and context are
    redacted (URL passwords, known secret values) when the error is made, so no credential
    reaches a log, a checkpoint row or the CLI's JSON through an error.
    """

    default_category: ErrorCategory = ErrorCategory.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        category: ErrorCategory | None = None,
        **context: Any,
    ) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.category = category or self.default_category
        self.context = {k: redact(v) if isinstance(v, str) else v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        if not self.context:
            return self.message
        details = redact(", ".join(f"{k}={v!r}" for k, v in self.context.items()))
        return f"{self.message} ({details})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.category, self.context, self.__dict__))


def _rebuild(
    cls: type[PipelineBaseError],
    message: str,
    category: ErrorCategory,
    context: dict[str, Any],
    state: dict[str, Any],
) -> PipelineBaseError:
    """Unpickle without calling subclass ``__init__`` signatures (errors cross processes)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    error.message, error.category, error.context = message, category, context
    return error


class ConfigurationError(PipelineBaseError):
    """A setting is unknown, missing or has a bad value."""

    default_category = ErrorCategory.PERMANENT


class S3OperationError(PipelineBaseError):
    """An object-storage operation failed; the category comes from the cause."""


class S3ConfigurationError(S3OperationError):
    """Object storage is misconfigured (bucket, endpoint, credentials)."""

    default_category = ErrorCategory.PERMANENT


class PreconditionFailedError(S3OperationError):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match).

    412 answers are final (permanent): the caller reads what won. A 409
    ConditionalRequestConflict (a concurrent conditional write in flight) is transient.
    """

    default_category = ErrorCategory.PERMANENT


class IngestError(PipelineBaseError):
    """A raw file could not be ingested."""


class FileConversionError(IngestError):
    """A raw file could not be converted to parquet (malformed, empty, bad encoding)."""

    default_category = ErrorCategory.PERMANENT


class TransientError(PipelineBaseError):
    """A failure that is expected to go away when the operation is retried."""

    default_category = ErrorCategory.TRANSIENT


class PermanentError(PipelineBaseError):
    """A failure that a retry cannot fix; retry loops stop at once."""

    default_category = ErrorCategory.PERMANENT


class CircuitBreakerOpenError(PipelineBaseError):
    """The circuit breaker is open: the call was rejected without being attempted.

    Retry loops stop at once on it: retrying against a service known to be down only
    adds load; the breaker itself decides when to try again.
    """

    default_category = ErrorCategory.TRANSIENT


class CheckpointError(PipelineBaseError):
    """The checkpoint store refused an operation (illegal transition, locked database)."""


class RunnerLeaseError(CheckpointError):
    """The runner lease of an ephemeral runner's checkpoint file stopped this runner."""


class LeaseHeldError(RunnerLeaseError):
    """Another runner holds a live lease: this one must not pull, write or push the files."""

    default_category = ErrorCategory.TRANSIENT


class LeaseLostError(RunnerLeaseError):
    """This runner's lease was broken or taken over, or a newer state was pushed: it must not push."""

    default_category = ErrorCategory.PERMANENT


class TransactionError(PipelineBaseError):
    """An object-storage transaction could not be committed."""


class ValidationError(TransactionError):
    """A validator rejected a staged object; the transaction is rolled back."""

    default_category = ErrorCategory.PERMANENT


class TransactionConflictError(TransactionError):
    """Another transaction committed one of this transaction's keys first; nothing was applied.

    ``key`` is a contested key and ``winner`` the transaction that committed it. Re-run the
    step on top of the winner's result (a retry as such cannot succeed).
    """

    default_category = ErrorCategory.PERMANENT


class RollbackError(TransactionError):
    """A rollback could not clean everything; ``leftovers`` lists what recovery must finish."""

    def __init__(self, message: str, *, leftovers: Sequence[str] = (), **context: Any) -> None:
        super().__init__(message, **context)
        self.leftovers = list(leftovers)


class PartialFailureError(PipelineBaseError):
    """Some items of a batch failed; carries every success and every failure."""

    def __init__(
        self,
        message: str,
        *,
        successes: Iterable[Any] = (),
        failures: Iterable[Any] = (),
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.successes = list(successes)
        self.failures = list(failures)

    def __str__(self) -> str:
        return f"{super().__str__()}: {len(self.failures)} failed, {len(self.successes)} succeeded"


# S3 / botocore error codes, by what a retry can do about them.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "OperationAborted",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        # The signing clock drifted: botocore re-signs with the corrected offset on the next try.
        "RequestTimeTooSkewed",
        # The body was cut or altered on the wire; sending it again fixes it.
        "IncompleteBody",
        "XAmzContentSHA256Mismatch",
        "KMS.ThrottlingException",
        # 409 from a conditional write racing another request on the same key.
        "ConditionalRequestConflict",
        "503",
        "500",
        "502",
        "504",
    }
)
PERMANENT_ERROR_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "InvalidBucketName",
        "NoSuchBucket",
        "NoSuchKey",
        "NoSuchUpload",
        "NotFound",
        "404",
        "403",
        "400",
        "InvalidArgument",
        "InvalidRequest",
        "InvalidObjectState",
        "InvalidDigest",
        "BadDigest",
        "EntityTooLarge",
        "EntityTooSmall",
        "MethodNotAllowed",
        "MalformedXML",
        "KeyTooLongError",
        "MissingContentLength",
        # 412: a conditional write lost to another writer. A conflict, not a fault: the caller
        # must re-read and decide, repeating the same request cannot succeed.
        "PreconditionFailed",
    }
)
TRANSIENT_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})

# Exception class names (anywhere in the MRO) from libraries we classify without importing.
_TRANSIENT_CLASS_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ProxyConnectionError",
        "IncompleteReadError",
        "ResponseStreamingError",
        "HTTPClientError",
        "ChunkedEncodingError",
        # A credential provider that is configured (else NoCredentialsError) failed to answer:
        # the container/instance metadata endpoint, SSO or STS timed out or throttled.
        "CredentialRetrievalError",
    }
)
# Names too generic to trust alone: they count only when the class comes from that library.
_TRANSIENT_LIBRARY_CLASSES = frozenset({("urllib3", "ProtocolError"), ("urllib3", "IncompleteRead")})
# OS errors whose errno says whether waiting helps. EMFILE/ENFILE: descriptors free up as
# concurrent work finishes; EIO: network and FUSE filesystems report backend faults as EIO
# (a dying local disk keeps failing and exhausts the bounded retries). A full or read-only
# disk is not fixed by a retry seconds later: fail at once so the operator sees it.
_TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EIO, errno.EAGAIN, errno.EBUSY})
_PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# DuckDB raises IOException for local files and for httpfs alike: these messages mean a local
# file or directory problem a retry cannot fix; any other IO error (connection refused or
# reset, timeouts, a file lock held by another process) is worth retrying.
_DUCKDB_PERMANENT_IO_MESSAGES = (
    "No files found",
    "No such file",
    "Permission denied",
    "Read-only file system",
    "No space left",
    "Is a directory",
    "Not a directory",
)
_SSL_CERTIFICATE_PROBLEM = re.compile(r"certificate|hostname .* doesn't match", re.IGNORECASE)
_DUCKDB_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")
_PERMANENT_CLASS_NAMES = frozenset(
    {
        "NoCredentialsError",
        "PartialCredentialsError",
        "ParamValidationError",
        "InvalidRegionError",
        "NoRegionError",
        "UnknownServiceError",
        # DuckDB: the SQL or the data is wrong; running it again gives the same answer.
        "ParserException",
        "BinderException",
        "CatalogException",
        "ConversionException",
        "InvalidInputException",
        "ConstraintException",
        "NotImplementedException",
        "SyntaxException",
        "TypeMismatchException",
    }
)


# SQLMesh's audit failures, by name (the core never imports sqlmesh).
_DATA_CLASS_NAMES = frozenset({"AuditError", "NodeAuditsErrors"})


# SQLSTATE classes and codes (PostgreSQL, via psycopg's ``sqlstate``) that a retry can fix:
# connection exceptions, serialization failures and deadlocks, an unavailable or restarting
# server, lock and statement timeouts, too many connections.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})
_TRANSIENT_SQLSTATES = frozenset({"55P03", "57014"})
# Syntax and access rules, integrity, data and privilege problems: the same answer every time.
_PERMANENT_SQLSTATE_CLASSES = frozenset({"22", "23", "28", "42", "3D", "3F"})


def _sqlstate_category(exc: BaseException) -> ErrorCategory | None:
    """The category of a database error carrying a SQLSTATE; a psycopg error without one lost its connection."""
    if not type(exc).__module__.startswith("psycopg"):
        return None
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None:
        names = _class_names(exc)
        return ErrorCategory.TRANSIENT if names & {"OperationalError", "InterfaceError"} else None
    if sqlstate in _TRANSIENT_SQLSTATES or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
        return ErrorCategory.TRANSIENT
    if sqlstate[:2] in _PERMANENT_SQLSTATE_CLASSES:
        return ErrorCategory.PERMANENT
    return None


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _client_error_category(response: Mapping[str, Any]) -> ErrorCategory | None:
    code = str(response.get("Error", {}).get("Code", ""))
    if code in TRANSIENT_ERROR_CODES:
        return ErrorCategory.TRANSIENT
    if code in PERMANENT_ERROR_CODES:
        return ErrorCategory.PERMANENT
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _status_category(status) if isinstance(status, int) else None


def _status_category(status: int) -> ErrorCategory | None:
    if status in TRANSIENT_HTTP_STATUS:
        return ErrorCategory.TRANSIENT
    if 400 <= status < 500:
        return ErrorCategory.PERMANENT
    return None


def _http_status(exc: BaseException, names: set[str]) -> int | None:
    """The HTTP status an error carries: DuckDB's HTTPException has it as an attribute or in its text."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    if "HTTPException" in names:
        found = _DUCKDB_HTTP_STATUS.search(str(exc))
        return int(found.group(1)) if found else None
    return None


def _library_category(exc: BaseException, names: set[str]) -> ErrorCategory | None:
    """Errors of botocore, urllib3, ssl and DuckDB, recognised by class name (no import needed)."""
    if names & {"SSLError", "SSLCertVerificationError"}:
        # A certificate that does not verify is a setup problem (CA bundle, endpoint name);
        # any other TLS failure (handshake EOF, reset) is the network.
        certificate = "SSLCertVerificationError" in names or _SSL_CERTIFICATE_PROBLEM.search(str(exc))
        return ErrorCategory.PERMANENT if certificate else ErrorCategory.TRANSIENT
    if names & _TRANSIENT_CLASS_NAMES:
        return ErrorCategory.TRANSIENT
    if names & _PERMANENT_CLASS_NAMES:
        return ErrorCategory.PERMANENT
    modules = {cls.__module__.partition(".")[0] for cls in type(exc).__mro__}
    if any(module in modules and name in names for module, name in _TRANSIENT_LIBRARY_CLASSES):
        return ErrorCategory.TRANSIENT
    if "IOException" in names:
        message = str(exc)
        permanent = any(marker in message for marker in _DUCKDB_PERMANENT_IO_MESSAGES)
        return ErrorCategory.PERMANENT if permanent else ErrorCategory.TRANSIENT
    return None


def _builtin_category(exc: BaseException) -> ErrorCategory | None:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return ErrorCategory.TRANSIENT
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return ErrorCategory.TRANSIENT
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS:
        return ErrorCategory.PERMANENT
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return ErrorCategory.PERMANENT
    if isinstance(exc, (ValueError, TypeError, KeyError, UnicodeError)):
        return ErrorCategory.PERMANENT
    return None


def categorize_error(exc: BaseException) -> ErrorCategory:
    """Classify any exception as transient, permanent, data (a failed audit) or unknown.

    Our own errors carry their category; an unknown-category wrapper defers to its
    cause. botocore client errors are classified by S3 error code, then HTTP status (so
    are DuckDB's httpfs errors); PostgreSQL errors by SQLSTATE (connection, serialization
    and deadlock errors are transient); connection, timeout and TLS-transport errors are
    transient; OS errors by errno; a missing local file, denied access, a full disk and
    bad parameters are permanent. Anything else is unknown (and retried).
    See docs/decisions.md ("exceptions") for why each class lands where it does.
    """
    if isinstance(exc, PipelineBaseError):
        if exc.category is not ErrorCategory.UNKNOWN or exc.__cause__ is None:
            return exc.category
        return categorize_error(exc.__cause__)
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        category = _client_error_category(response)
        if category is not None:
            return category
    category = _sqlstate_category(exc)
    if category is not None:
        return category
    names = _class_names(exc)
    if names & _DATA_CLASS_NAMES:
        return ErrorCategory.DATA
    status = _http_status(exc, names)
    category = _status_category(status) if status is not None else None
    category = category or _library_category(exc, names) or _builtin_category(exc)
    return category or ErrorCategory.UNKNOWN
