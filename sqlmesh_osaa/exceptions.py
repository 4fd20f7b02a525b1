"""What can go wrong, and what kind of wrong it is.

Every error of the package derives from :class:`PipelineBaseError`, carries an
:class:`ErrorCategory` (which decides whether a retry can help) and the context a
person needs to act on it: the key, file, operation or setting involved.
:func:`categorize_error` gives the category of any exception, ours or a library's,
without importing the libraries (the core must import fast and never needs botocore
or DuckDB just to classify an error).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Iterable, Mapping, Sequence


class ErrorCategory(str, Enum):
    """Whether retrying an operation that raised an error can succeed."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"


class PipelineBaseError(Exception):
    """Base of every error raised by sqlmesh_osaa.

    ``context`` names the things involved (key, file_path, operation, ...); they are
    appended to the message so a log line alone says what failed.
    """

    default_category: ErrorCategory = ErrorCategory.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        category: ErrorCategory | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.category = category or self.default_category
        self.context = {k: v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        if not self.context:
            return self.message
        details = ", ".join(f"{k}={v!r}" for k, v in self.context.items())
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
    }
)
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


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _client_error_category(response: Mapping[str, Any]) -> ErrorCategory | None:
    code = str(response.get("Error", {}).get("Code", ""))
    if code in TRANSIENT_ERROR_CODES:
        return ErrorCategory.TRANSIENT
    if code in PERMANENT_ERROR_CODES:
        return ErrorCategory.PERMANENT
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status in TRANSIENT_HTTP_STATUS:
        return ErrorCategory.TRANSIENT
    if isinstance(status, int) and 400 <= status < 500:
        return ErrorCategory.PERMANENT
    return None


def categorize_error(exc: BaseException) -> ErrorCategory:
    """Classify any exception as transient, permanent or unknown.

    Our own errors carry their category; an unknown-category wrapper defers to its
    cause. botocore client errors are classified by S3 error code, then HTTP status;
    connection and timeout errors are transient; a missing local file, denied access
    and bad parameters are permanent. Anything else is unknown (and retried).
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
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        if status in TRANSIENT_HTTP_STATUS:
            return ErrorCategory.TRANSIENT
        if 400 <= status < 500:
            return ErrorCategory.PERMANENT
    names = _class_names(exc)
    if names & _TRANSIENT_CLASS_NAMES:
        return ErrorCategory.TRANSIENT
    if names & _PERMANENT_CLASS_NAMES:
        return ErrorCategory.PERMANENT
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return ErrorCategory.TRANSIENT
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return ErrorCategory.PERMANENT
    if isinstance(exc, (ValueError, TypeError, KeyError, UnicodeError)):
        return ErrorCategory.PERMANENT
    return ErrorCategory.UNKNOWN
