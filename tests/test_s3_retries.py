"""One retry layer: one logical S3 operation makes at most max_attempts requests (counted at the proxy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy, retryable_operation
from sqlmesh_osaa.exceptions import ErrorCategory, S3OperationError
from sqlmesh_osaa.storage import S3Store

pytestmark = pytest.mark.s3


@pytest.fixture
def no_sleep(monkeypatch):
    from sqlmesh_osaa import error_handler

    monkeypatch.setattr(error_handler, "sleep", lambda seconds: None)


@pytest.fixture
def proxied_store(fault_proxy, s3_bucket) -> S3Store:
    return S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")


@pytest.fixture
def small_file(tmp_path) -> Path:
    path = tmp_path / "indicators.parquet"
    path.write_bytes(b"PAR1" + b"x" * 100)
    return path


def test_always_503_makes_exactly_max_attempts_requests_and_raises_transient(
    fault_proxy, proxied_store, small_file, no_sleep
):
    @retryable_operation(max_attempts=3, initial_delay=1.0, max_delay=60.0, exponential_base=2.0)
    def upload() -> None:
        proxied_store.put_file(small_file, "prod/indicators.parquet")

    fault_proxy.fail_always(503, "ServiceUnavailable", operations={"PutObject"})
    with pytest.raises(S3OperationError) as info:
        upload()
    assert fault_proxy.count("PutObject") == 3
    assert info.value.category is ErrorCategory.TRANSIENT


def test_access_denied_makes_exactly_one_request(fault_proxy, proxied_store, small_file, no_sleep):
    handler = ErrorHandler(RetryPolicy(max_attempts=5, initial_delay=1.0))
    fault_proxy.fail_always(403, "AccessDenied", operations={"PutObject"})
    with pytest.raises(S3OperationError) as info:
        handler.execute(proxied_store.put_file, small_file, "prod/indicators.parquet")
    assert fault_proxy.count("PutObject") == 1
    assert info.value.category is ErrorCategory.PERMANENT
    assert "prod/indicators.parquet" in str(info.value)


def test_connection_resets_are_retried_within_the_same_budget(fault_proxy, proxied_store, small_file, no_sleep):
    handler = ErrorHandler(RetryPolicy(max_attempts=3, initial_delay=0.1))
    fault_proxy.reset_next(2, operations={"PutObject"})
    handler.execute(proxied_store.put_file, small_file, "prod/indicators.parquet")
    assert fault_proxy.count("PutObject") == 3
    assert proxied_store.head("prod/indicators.parquet").size == small_file.stat().st_size


def test_200_uploads_all_succeed_with_30_percent_transient_faults(fault_proxy, proxied_store, small_file, no_sleep):
    handler = ErrorHandler(RetryPolicy(max_attempts=8, initial_delay=0.01))
    fault_proxy.fail_fraction(0.3, 503, "SlowDown", seed=7, operations={"PutObject"})
    collector = handler.process_batch(
        [f"prod/many/{index:03d}.parquet" for index in range(200)],
        lambda key: proxied_store.put_file(small_file, key),
    )
    assert collector.get_failure_count() == 0
    assert collector.get_success_count() == 200
    assert len(list(proxied_store.list_prefix("prod/many/"))) == 200
    assert fault_proxy.count("PutObject") > 200


def test_a_copy_failing_always_makes_exactly_max_attempts_copy_requests(fault_proxy, proxied_store, small_file, no_sleep):
    proxied_store.put_file(small_file, "staging/indicators.parquet")
    staged = proxied_store.head("staging/indicators.parquet")
    handler = ErrorHandler(RetryPolicy(max_attempts=4, initial_delay=0.1))
    fault_proxy.fail_always(503, "SlowDown", operations={"CopyObject"})

    with pytest.raises(S3OperationError) as info:
        handler.execute(proxied_store.copy, "staging/indicators.parquet", "prod/indicators.parquet", staged)

    assert fault_proxy.count("CopyObject") == 4
    assert info.value.category is ErrorCategory.TRANSIENT


def test_a_multipart_copy_failing_always_starts_one_upload_per_attempt_and_aborts_each(
    fault_proxy, s3_bucket, s3_client, tmp_path, no_sleep
):
    store = S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path", copy_multipart_threshold=5 * 1024**2)
    big = tmp_path / "big.parquet"
    big.write_bytes(b"P" * (5 * 1024**2 + 1))
    store.put_file(big, "staging/big.parquet")
    handler = ErrorHandler(RetryPolicy(max_attempts=3, initial_delay=0.1))
    fault_proxy.fail_always(503, "SlowDown", operations={"UploadPartCopy"})

    with pytest.raises(S3OperationError) as info:
        handler.execute(store.copy, "staging/big.parquet", "prod/big.parquet")

    assert fault_proxy.count("CreateMultipartUpload") == 3
    assert fault_proxy.count("UploadPartCopy") <= 3 * 2
    assert info.value.category is ErrorCategory.TRANSIENT
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
