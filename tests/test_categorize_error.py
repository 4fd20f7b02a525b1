"""categorize_error: real botocore and Python errors map to the category that decides retries."""

from __future__ import annotations

import errno
import http.server
import os
import socket
import threading
from typing import Any

import duckdb
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.exceptions import SSLError as BotoSSLError
from urllib3.exceptions import ProtocolError

from sqlmesh_osaa.duckdb_storage import load_httpfs

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


# --- every error issue 9 names, as the libraries raise it ----------------------------------


class _StatusServer:
    """An HTTP server on 127.0.0.1 answering every request with the status its path names."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self.send_response(int(self.path.strip("/").split(".")[0]))
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_port}"

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def duckdb_error(url: str) -> duckdb.Error:
    """What DuckDB itself raises reading ``url`` (httpfs for http URLs, no retries of its own)."""
    db = duckdb.connect()
    try:
        load_httpfs(db)
        db.execute("SET http_retries = 0")
        db.execute("SELECT * FROM read_csv($url)", {"url": url})
    except duckdb.Error as error:
        return error
    finally:
        db.close()
    raise AssertionError(f"reading {url} did not fail")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def duckdb_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, duckdb.Error]:
    missing = tmp_path_factory.mktemp("duckdb") / "missing.csv"
    with _StatusServer() as url:
        return {
            "http-503": duckdb_error(f"{url}/503.csv"),
            "http-404": duckdb_error(f"{url}/404.csv"),
            "connection-refused": duckdb_error(f"http://127.0.0.1:{free_port()}/x.csv"),
            "missing-local-file": duckdb_error(str(missing)),
        }


TRANSIENT, PERMANENT = ErrorCategory.TRANSIENT, ErrorCategory.PERMANENT

LIBRARY_ERRORS = [
    ("RequestTimeTooSkewed", lambda: client_error("RequestTimeTooSkewed", 403), TRANSIENT),
    ("IncompleteBody", lambda: client_error("IncompleteBody", 400), TRANSIENT),
    ("XAmzContentSHA256Mismatch", lambda: client_error("XAmzContentSHA256Mismatch", 400), TRANSIENT),
    ("KMS.ThrottlingException", lambda: client_error("KMS.ThrottlingException", 400, "GetObject"), TRANSIENT),
    ("ConditionalRequestConflict-409", lambda: client_error("ConditionalRequestConflict", 409), TRANSIENT),
    ("PreconditionFailed-412", lambda: client_error("PreconditionFailed", 412), PERMANENT),
    ("OperationAborted-409", lambda: client_error("OperationAborted", 409), TRANSIENT),
    ("ENOSPC", lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/x.parquet"), PERMANENT),
    ("EDQUOT", lambda: OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), PERMANENT),
    ("EROFS", lambda: OSError(errno.EROFS, os.strerror(errno.EROFS), "/data/x.parquet"), PERMANENT),
    ("EIO", lambda: OSError(errno.EIO, os.strerror(errno.EIO), "/mnt/nfs/x.csv"), TRANSIENT),
    ("EMFILE", lambda: OSError(errno.EMFILE, os.strerror(errno.EMFILE)), TRANSIENT),
    (
        "urllib3-ProtocolError",
        lambda: ProtocolError("Connection broken: IncompleteRead(10 bytes read, 90 more expected)"),
        TRANSIENT,
    ),
    (
        "botocore-SSLError-handshake",
        lambda: BotoSSLError(endpoint_url="https://s3.example.org", error="EOF occurred in violation of protocol"),
        TRANSIENT,
    ),
    (
        "botocore-SSLError-certificate",
        lambda: BotoSSLError(
            endpoint_url="https://s3.example.org",
            error="[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate",
        ),
        PERMANENT,
    ),
    (
        "CredentialRetrievalError",
        lambda: CredentialRetrievalError(provider="container-role", error_msg="Read timeout on endpoint URL"),
        TRANSIENT,
    ),
]


@pytest.mark.parametrize(("make", "expected"), [row[1:] for row in LIBRARY_ERRORS], ids=[row[0] for row in LIBRARY_ERRORS])
def test_each_library_error_has_its_category_raw_and_wrapped(make: Any, expected: ErrorCategory) -> None:
    error = make()

    assert categorize_error(error) is expected
    assert categorize_error(wrapped(error)) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("http-503", TRANSIENT),
        ("http-404", PERMANENT),
        ("connection-refused", TRANSIENT),
        ("missing-local-file", PERMANENT),
    ],
)
def test_duckdb_io_and_http_errors_raised_by_duckdb_have_their_category(
    duckdb_errors: dict[str, duckdb.Error], name: str, expected: ErrorCategory
) -> None:
    error = duckdb_errors[name]

    assert isinstance(error, duckdb.IOException)
    assert categorize_error(error) is expected


def test_a_duckdb_http_exception_without_a_status_attribute_is_classified_by_its_message() -> None:
    error = duckdb.HTTPException("HTTP Error: HTTP GET error on 'https://x/y.parquet' (HTTP 503 Service Unavailable)")

    assert categorize_error(error) is ErrorCategory.TRANSIENT


def test_a_generic_protocol_error_class_of_another_library_is_not_taken_for_urllib3s() -> None:
    class ProtocolError(Exception):
        pass

    assert categorize_error(ProtocolError("bad frame")) is ErrorCategory.UNKNOWN
