"""The seed's error-handling snippets (ERROR_HANDLING.md) run as written, ``pipeline`` -> ``sqlmesh_osaa``."""

from __future__ import annotations

import logging
from unittest.mock import Mock

import pytest

from sqlmesh_osaa import error_handler, exceptions
from sqlmesh_osaa.error_handler import (
    CircuitBreaker,
    CircuitBreakerState,
    ErrorHandler,
    PartialFailureCollector,
    retryable_operation,
)
from sqlmesh_osaa.exceptions import PartialFailureError, PermanentError, TransientError

logger = logging.getLogger("osaa.seed")


@pytest.fixture(autouse=True)
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seed's 1 s initial delays are recorded through the documented hook, not slept."""
    recorded: list[float] = []
    monkeypatch.setattr(error_handler, "sleep", recorded.append)
    return recorded


# --------------------------------------------------------------------------- "Retry Logic with Exponential Backoff"

s3_client = Mock()
bucket, key = "osaa", "landing/file.parquet"


@retryable_operation(
    max_attempts=3,
    initial_delay=1.0,
    max_delay=60.0,
    exponential_base=2.0
)
def upload_file(file_path):
    # Upload logic that will be retried on transient failures
    s3_client.upload_file(file_path, bucket, key)


def test_seed_upload_file_is_retried_on_transient_failures(delays: list[float]) -> None:
    s3_client.reset_mock()
    s3_client.upload_file.side_effect = [TimeoutError("read timed out"), None]

    upload_file("local/file.csv")

    assert s3_client.upload_file.call_count == 2
    s3_client.upload_file.assert_called_with("local/file.csv", bucket, key)
    assert len(delays) == 1 and 0.0 <= delays[0] <= 1.0


def test_seed_upload_file_is_not_retried_on_permanent_failures() -> None:
    s3_client.reset_mock()
    s3_client.upload_file.side_effect = FileNotFoundError("local/file.csv")

    with pytest.raises(FileNotFoundError):
        upload_file("local/file.csv")

    assert s3_client.upload_file.call_count == 1


# --------------------------------------------------------------------------- "Partial Failure Handling"


def process_file(file: str) -> None:
    if file.startswith("bad"):
        raise ValueError(f"cannot parse {file}")


def test_seed_partial_failure_handling_snippet(caplog: pytest.LogCaptureFixture) -> None:
    files = ["good1.csv", "bad.csv", "good2.csv"]

    with caplog.at_level(logging.INFO), pytest.raises(PartialFailureError) as raised:
        collector = PartialFailureCollector()

        for file in files:
            try:
                process_file(file)
                collector.add_success(file)
            except Exception as e:
                collector.add_failure(file, e)
                continue  # Don't stop on first error

        # Log summary
        collector.log_summary()

        # Raise exception if any failures occurred
        if collector.has_failures():
            collector.raise_if_failures("File processing had partial failures")

    assert raised.value.successes == ["good1.csv", "good2.csv"]
    assert [f.item for f in raised.value.failures] == ["bad.csv"]
    assert any("3 items, 2 succeeded, 1 failed" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- "Circuit Breaker Pattern"


def test_seed_circuit_breaker_snippet() -> None:
    calls: list[tuple[int, int]] = []

    def risky_operation(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    arg1, arg2 = 2, 3

    circuit_breaker = CircuitBreaker(
        failure_threshold=5,  # Open after 5 failures
        timeout_seconds=60    # Wait 60 seconds before retry
    )

    # Execute with circuit breaker protection
    result = circuit_breaker.call(risky_operation, arg1, arg2)

    assert result == 5
    assert calls == [(2, 3)]
    assert circuit_breaker.state == CircuitBreakerState.CLOSED


def test_seed_circuit_breaker_states_exist() -> None:
    assert {state.name for state in CircuitBreakerState} == {"CLOSED", "OPEN", "HALF_OPEN"}


# --------------------------------------------------------------------------- "Retry Pattern"


unreliable_attempts: list[int] = []


@retryable_operation(
    max_attempts=3,
    initial_delay=1.0,
    exponential_base=2.0,
    jitter=True
)
def unreliable_operation():
    # Will retry with delays: 1s, 2s, 4s (with jitter)
    unreliable_attempts.append(1)
    raise TransientError("Service temporarily unavailable")


def test_seed_retry_pattern_waits_within_the_jittered_exponential_bounds(delays: list[float]) -> None:
    unreliable_attempts.clear()

    with pytest.raises(TransientError):
        unreliable_operation()

    assert len(unreliable_attempts) == 3
    assert len(delays) == 2
    assert 0.0 <= delays[0] <= 1.0 and 0.0 <= delays[1] <= 2.0


# --------------------------------------------------------------------------- "Testing Retry Logic"


@retryable_operation(max_attempts=3, initial_delay=1.0)
def upload_with_retry(client, path):
    client.upload_file(path, "osaa", "landing/file.parquet")


def test_retry_on_transient_error():
    mock_client = Mock()
    mock_client.upload_file.side_effect = [
        ConnectionError("Temporary failure"),
        ConnectionError("Temporary failure"),
        None  # Success on third attempt
    ]

    # Should succeed after retries
    upload_with_retry(mock_client, "file.csv")

    # Should have been called 3 times
    assert mock_client.upload_file.call_count == 3


# --------------------------------------------------------------------------- "Testing Partial Failures"


def process_batch(files: list[str]) -> PartialFailureCollector:
    return ErrorHandler().process_batch(files, process_file)


def test_partial_failure_handling():
    files = ["good1.csv", "bad.csv", "good2.csv"]

    collector = process_batch(files)

    # Should have 2 successes and 1 failure
    assert collector.get_success_count() == 2
    assert collector.get_failure_count() == 1

    # Should have processed all files
    assert collector.get_total_count() == 3


# --------------------------------------------------------------------------- Best Practices 2, 4, 6


def process(item: str) -> None:
    process_file(item)


def test_best_practice_2_handle_partial_failures() -> None:
    items = ["good1.csv", "bad.csv", "good2.csv"]

    with pytest.raises(PartialFailureError, match="Batch processing failed"):
        collector = PartialFailureCollector()
        for item in items:
            try:
                process(item)
                collector.add_success(item)
            except Exception as e:
                collector.add_failure(item, e)

        collector.raise_if_failures("Batch processing failed")

    assert collector.get_total_count() == 3


def raise_categorized(is_temporary_issue: bool) -> None:
    from sqlmesh_osaa.exceptions import TransientError

    if is_temporary_issue:
        raise TransientError("Service temporarily unavailable")
    else:
        raise PermanentError("Invalid configuration")


@pytest.mark.parametrize(("is_temporary_issue", "expected_calls"), [(True, 3), (False, 1)])
def test_best_practice_4_categorized_errors_steer_the_retries(is_temporary_issue: bool, expected_calls: int) -> None:
    calls: list[bool] = []

    @retryable_operation(max_attempts=3)
    def operation() -> None:
        calls.append(is_temporary_issue)
        raise_categorized(is_temporary_issue)

    with pytest.raises((TransientError, PermanentError)):
        operation()

    assert len(calls) == expected_calls


def test_best_practice_6_monitor_circuit_breakers(caplog: pytest.LogCaptureFixture) -> None:
    alerts: list[str] = []

    def send_alert() -> None:
        alerts.append("circuit open")

    circuit_breaker = CircuitBreaker(failure_threshold=2, timeout_seconds=60)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            circuit_breaker.call(s3_down)

    with caplog.at_level(logging.CRITICAL, logger="osaa.seed"):
        if circuit_breaker.state == CircuitBreakerState.OPEN:
            logger.critical("Circuit breaker opened - service degraded")
            send_alert()

    assert alerts == ["circuit open"]
    assert [r.getMessage() for r in caplog.records if r.name == "osaa.seed"] == [
        "Circuit breaker opened - service degraded"
    ]


def s3_down() -> None:
    raise ConnectionError("connection refused")


# --------------------------------------------------------------------------- Troubleshooting: stuck open


def test_troubleshooting_circuit_breaker_stuck_open_is_fixed_by_reset() -> None:
    circuit_breaker = CircuitBreaker(failure_threshold=1, timeout_seconds=3600)
    with pytest.raises(ConnectionError):
        circuit_breaker.call(s3_down)
    assert circuit_breaker.state == CircuitBreakerState.OPEN

    circuit_breaker.reset()

    assert circuit_breaker.state == CircuitBreakerState.CLOSED
    assert circuit_breaker.call(lambda: "service back") == "service back"


# --------------------------------------------------------------------------- Exception Hierarchy

SEED_TREE = {
    "PipelineBaseError": "Exception",
    "ConfigurationError": "PipelineBaseError",
    "S3OperationError": "PipelineBaseError",
    "S3ConfigurationError": "S3OperationError",
    "IngestError": "PipelineBaseError",
    "FileConversionError": "IngestError",
    "TransientError": "PipelineBaseError",
    "CheckpointError": "PipelineBaseError",
    "TransactionError": "PipelineBaseError",
    "ValidationError": "TransactionError",
    "RollbackError": "TransactionError",
    "PartialFailureError": "PipelineBaseError",
}


@pytest.mark.parametrize(("name", "parent"), SEED_TREE.items())
def test_exception_hierarchy_matches_the_seed_tree(name: str, parent: str) -> None:
    cls = getattr(exceptions, name)

    assert [base.__name__ for base in cls.__bases__] == [parent]


def test_every_error_used_by_the_seed_is_a_pipeline_error() -> None:
    for name in [*SEED_TREE, "PermanentError", "CircuitBreakerOpenError"]:
        assert issubclass(getattr(exceptions, name), exceptions.PipelineBaseError) or name == "PipelineBaseError"
