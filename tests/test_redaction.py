"""Credentials never reach a message, a log record or a checkpoint row, and a URL holding one is refused."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Iterator

import pytest

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.exceptions import ConfigurationError, S3ConfigurationError, S3OperationError
from sqlmesh_osaa.redaction import install_log_redaction, redact, register_secret, without_userinfo
from sqlmesh_osaa.settings import load_settings
from sqlmesh_osaa.storage import make_s3_client

PASSWORD = "sentinel-pw-Rk29"
TOKEN = "sentinel-token-Wq81"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """botocore's request logger at DEBUG, writing to a buffer."""
    install_log_redaction()
    logger = logging.getLogger("botocore.endpoint")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_url_password_is_masked_and_the_rest_of_the_url_kept() -> None:
    text = f"could not connect to postgresql://osaa:{PASSWORD}@db.internal:5432/checkpoints"

    assert redact(text) == "could not connect to postgresql://osaa:***@db.internal:5432/checkpoints"


def test_a_url_is_shown_without_its_userinfo() -> None:
    assert without_userinfo(f"http://osaa:{PASSWORD}@127.0.0.1:9000") == "http://127.0.0.1:9000"


def test_values_of_credential_environment_variables_are_masked_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("PGPASSWORD", PASSWORD)

    assert redact(f"token={TOKEN}; password {PASSWORD}") == "token=***; password ***"


def test_a_registered_secret_is_masked_anywhere() -> None:
    register_secret("sentinel-registered-Jd55")

    assert "sentinel-registered-Jd55" not in redact("DuckDB said: bad secret sentinel-registered-Jd55")


def test_errors_redact_their_message_and_context() -> None:
    error = S3OperationError(f"GetObject failed at http://u:{PASSWORD}@host/", endpoint_url=f"http://u:{PASSWORD}@host")

    assert PASSWORD not in str(error) and PASSWORD not in error.message
    assert PASSWORD not in repr(error.context)


def test_botocore_request_headers_are_logged_with_the_token_masked(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = captured
    headers = {"X-Amz-Security-Token": TOKEN.encode(), "Authorization": b"AWS4-HMAC-SHA256 Credential=AKID/x"}

    logger.debug("Sending http request: <AWSPreparedRequest headers=%s>", headers)

    assert TOKEN not in buffer.getvalue() and "X-Amz-Security-Token': b'***'" in buffer.getvalue()


def test_a_logged_traceback_is_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    try:
        raise RuntimeError(f"endpoint http://u:{PASSWORD}@host refused")
    except RuntimeError:
        logger.exception("request failed")

    assert "RuntimeError" in buffer.getvalue() and PASSWORD not in buffer.getvalue()


def test_a_failed_checkpoint_stores_the_error_without_the_password(tmp_path: Path) -> None:
    with PipelineCheckpoint("secrets", tmp_path / "checkpoints.duckdb") as checkpoint:
        checkpoint.mark_started(CheckpointScope.OPERATION, "upload")
        checkpoint.mark_failed(CheckpointScope.OPERATION, "upload", f"failed at https://u:{PASSWORD}@host/bucket")

        assert (
            checkpoint.get(CheckpointScope.OPERATION, "upload")["error_message"]
            == "failed at https://u:***@host/bucket"
        )


def test_an_endpoint_url_with_a_password_is_refused_by_the_settings_without_echoing_it() -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings({"osaa": {"storage": {"endpoint_url": f"http://u:{PASSWORD}@127.0.0.1:9000"}}}, environ={})

    assert "user name or password" in str(refused.value) and PASSWORD not in str(refused.value)
    assert refused.value.context["setting"] == "storage.endpoint_url"


def test_an_endpoint_url_with_a_password_is_refused_by_the_client_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(S3ConfigurationError) as given:
        make_s3_client(f"http://u:{PASSWORD}@127.0.0.1:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://u:{PASSWORD}@127.0.0.1:9000")
    with pytest.raises(S3ConfigurationError) as from_environment:
        make_s3_client()

    for error in (given.value, from_environment.value):
        assert "http://127.0.0.1:9000 carries a user name or password" in str(error) and PASSWORD not in str(error)
