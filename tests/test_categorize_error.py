"""categorize_error: real botocore and Python errors map to the category that decides retries."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from sqlmesh_osaa.error_handler import ErrorCategory, categorize_error
from sqlmesh_osaa.exceptions import S3OperationError


def client_error(code: str, status: int, operation: str = "PutObject") -> ClientError:
    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, operation)


def wrapped(cause: BaseException) -> S3OperationError:
    try:
        raise cause
    except BaseException as error:
        try:
            raise S3OperationError("upload failed", key="prod/x.parquet") from error
        except S3OperationError as wrapper:
            return wrapper


@pytest.mark.parametrize(
    ("code", "status"),
    [("SlowDown", 503), ("Throttling", 400), ("RequestTimeout", 400), ("InternalError", 500)],
)
def test_throttling_timeout_and_internal_error_codes_are_transient(code: str, status: int) -> None:
    assert categorize_error(client_error(code, status)) is ErrorCategory.TRANSIENT


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_error_statuses_are_transient_whatever_the_code(status: int) -> None:
    assert categorize_error(client_error("UnrecognisedServerProblem", status)) is ErrorCategory.TRANSIENT
    assert categorize_error(client_error(str(status), status, "HeadObject")) is ErrorCategory.TRANSIENT


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("AccessDenied", 403),
        ("InvalidAccessKeyId", 403),
        ("SignatureDoesNotMatch", 403),
        ("NoSuchBucket", 404),
        ("NoSuchKey", 404),
    ],
)
def test_credential_and_missing_resource_codes_are_permanent(code: str, status: int) -> None:
    assert categorize_error(client_error(code, status, "GetObject")) is ErrorCategory.PERMANENT


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ],
    ids=["endpoint-connection", "read-timeout", "connect-timeout"],
)
def test_botocore_connection_errors_are_transient(error: Exception) -> None:
    assert categorize_error(error) is ErrorCategory.TRANSIENT


@pytest.mark.parametrize(
    "error",
    [FileNotFoundError(2, "No such file", "raw/missing.csv"), ValueError("bad row")],
    ids=["file-not-found", "value-error"],
)
def test_missing_file_and_bad_value_are_permanent(error: Exception) -> None:
    assert categorize_error(error) is ErrorCategory.PERMANENT


def test_plain_runtime_error_is_unknown() -> None:
    assert categorize_error(RuntimeError("something odd")) is ErrorCategory.UNKNOWN


def test_s3_operation_error_carries_the_category_of_a_transient_cause() -> None:
    assert categorize_error(wrapped(client_error("SlowDown", 503))) is ErrorCategory.TRANSIENT


def test_s3_operation_error_carries_the_category_of_a_permanent_cause() -> None:
    assert categorize_error(wrapped(client_error("NoSuchKey", 404, "GetObject"))) is ErrorCategory.PERMANENT


def test_s3_operation_error_carries_the_category_of_a_connection_cause() -> None:
    error = wrapped(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))

    assert categorize_error(error) is ErrorCategory.TRANSIENT


def test_s3_operation_error_without_cause_is_unknown() -> None:
    assert categorize_error(S3OperationError("upload failed")) is ErrorCategory.UNKNOWN


def test_a_failed_sqlmesh_audit_is_a_data_error() -> None:
    from sqlmesh.utils.errors import NodeAuditsErrors

    assert categorize_error(NodeAuditsErrors([])) is ErrorCategory.DATA


def test_a_data_error_is_never_retried() -> None:
    from sqlmesh.utils.errors import NodeAuditsErrors

    from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy

    calls = []

    def audit() -> None:
        calls.append(1)
        raise NodeAuditsErrors([])

    with pytest.raises(NodeAuditsErrors):
        ErrorHandler(RetryPolicy(max_attempts=3, initial_delay=0, jitter=False)).execute(audit)
    assert len(calls) == 1
