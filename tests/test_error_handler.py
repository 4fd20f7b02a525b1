"""Retries: what is retried, how long it waits, what is raised and counted, and ErrorHandler."""

from __future__ import annotations

import logging
from typing import Callable

import pytest
import tenacity
from botocore.exceptions import ClientError

from sqlmesh_osaa import error_handler
from sqlmesh_osaa.error_handler import (
    CircuitBreaker,
    CircuitBreakerState,
    ErrorCategory,
    ErrorHandler,
    RetryAttempt,
    RetryPolicy,
    RetryStatistics,
    categorize_error,
    retryable_operation,
)
from sqlmesh_osaa.exceptions import (
    CircuitBreakerOpenError,
    PermanentError,
    S3OperationError,
    TransientError,
)
from sqlmesh_osaa.settings import CircuitBreakerSettings, OsaaSettings, RetrySettings


@pytest.fixture(autouse=True)
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait a retry would make, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(error_handler, "sleep", recorded.append)
    return recorded


class Flaky:
    """A callable that raises the given errors in turn, then returns its result."""

    def __init__(self, *errors: BaseException, result: object = "done") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def failing_forever(error_factory: Callable[[], Exception]) -> Flaky:
    return Flaky(*(error_factory() for _ in range(100)))


def tripped_breaker(threshold: int = 1) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=threshold, timeout_seconds=3600, clock=lambda: 0.0)
    for _ in range(threshold):
        with pytest.raises(TransientError):
            breaker.call(Flaky(TransientError("down")))
    assert breaker.state is CircuitBreakerState.OPEN
    return breaker


# --------------------------------------------------------------------------- what is retried


@pytest.mark.parametrize("error", [ValueError("bad input"), PermanentError("Invalid configuration")])
def test_permanent_error_is_attempted_exactly_once(error: Exception) -> None:
    func = Flaky(error)

    with pytest.raises(type(error)):
        retryable_operation(max_attempts=5)(func)()

    assert func.calls == 1


def test_transient_error_is_attempted_max_attempts_times_then_reraised_unwrapped() -> None:
    func = failing_forever(lambda: TransientError("service unavailable"))

    with pytest.raises(TransientError) as raised:
        retryable_operation(max_attempts=4)(func)()

    assert func.calls == 4
    assert not isinstance(raised.value, tenacity.RetryError)
    assert categorize_error(raised.value) is ErrorCategory.TRANSIENT


def test_the_exception_raised_is_the_one_from_the_last_attempt() -> None:
    last = ConnectionError("third")
    func = Flaky(ConnectionError("first"), ConnectionError("second"), last)

    with pytest.raises(ConnectionError) as raised:
        retryable_operation(max_attempts=3)(func)()

    assert raised.value is last


def test_unknown_error_is_retried() -> None:
    func = Flaky(RuntimeError("odd"), result=42)

    assert retryable_operation(max_attempts=3)(func)() == 42
    assert func.calls == 2


def test_unknown_error_is_not_retried_when_retry_on_unknown_is_off() -> None:
    func = Flaky(RuntimeError("odd"))

    with pytest.raises(RuntimeError):
        retryable_operation(max_attempts=3, retry_on_unknown=False)(func)()

    assert func.calls == 1


def test_transient_failures_followed_by_success_return_the_result() -> None:
    func = Flaky(TimeoutError("slow"), ConnectionError("reset"), result={"etag": "abc"})

    assert retryable_operation(max_attempts=3)(func)() == {"etag": "abc"}
    assert func.calls == 3


def test_arguments_reach_the_function_on_every_attempt() -> None:
    seen: list[tuple[object, ...]] = []

    @retryable_operation(max_attempts=2)
    def upload(path: str, *, key: str) -> str:
        seen.append((path, key))
        if len(seen) == 1:
            raise ConnectionError("reset")
        return key

    assert upload("a.csv", key="prod/a.parquet") == "prod/a.parquet"
    assert seen == [("a.csv", "prod/a.parquet")] * 2


def test_s3_wrapper_of_a_throttling_error_is_retried_and_of_a_missing_key_is_not() -> None:
    def wrapped(code: str, status: int) -> S3OperationError:
        error = S3OperationError("put failed", key="k")
        response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        error.__cause__ = ClientError(response, "PutObject")
        return error

    throttled = failing_forever(lambda: wrapped("SlowDown", 503))
    missing = failing_forever(lambda: wrapped("NoSuchKey", 404))

    for func in (throttled, missing):
        with pytest.raises(S3OperationError):
            retryable_operation(max_attempts=3)(func)()

    assert (throttled.calls, missing.calls) == (3, 1)


def test_keyboard_interrupt_is_never_retried() -> None:
    func = Flaky(KeyboardInterrupt())

    with pytest.raises(KeyboardInterrupt):
        retryable_operation(max_attempts=3)(func)()

    assert func.calls == 1


def test_decorated_function_keeps_its_name_and_docstring() -> None:
    @retryable_operation()
    def upload_file(path: str) -> None:
        """Upload one file."""

    assert (upload_file.__name__, upload_file.__doc__) == ("upload_file", "Upload one file.")


# --------------------------------------------------------------------------- how long it waits


def test_delays_grow_exponentially_from_the_initial_delay(delays: list[float]) -> None:
    func = failing_forever(lambda: TransientError("down"))

    with pytest.raises(TransientError):
        retryable_operation(max_attempts=5, initial_delay=1.0, exponential_base=2.0, jitter=False)(func)()

    assert delays == [1.0, 2.0, 4.0, 8.0]


def test_delays_are_capped_at_max_delay(delays: list[float]) -> None:
    func = failing_forever(lambda: TransientError("down"))

    decorate = retryable_operation(
        max_attempts=5, initial_delay=1.0, max_delay=50.0, exponential_base=10.0, jitter=False
    )

    with pytest.raises(TransientError):
        decorate(func)()

    assert delays == [1.0, 10.0, 50.0, 50.0]


def test_jittered_delays_stay_between_zero_and_the_exponential_bound(delays: list[float]) -> None:
    bounds = [0.5, 1.5, 4.5, 10.0, 10.0]
    decorate = retryable_operation(
        max_attempts=6, initial_delay=0.5, max_delay=10.0, exponential_base=3.0, jitter=True
    )

    for _ in range(30):
        with pytest.raises(TransientError):
            decorate(failing_forever(lambda: TransientError("down")))()

    per_call = [delays[i : i + 5] for i in range(0, len(delays), 5)]
    assert len(per_call) == 30
    assert all(0.0 <= delay <= bound for call in per_call for delay, bound in zip(call, bounds))
    assert len({round(call[4], 6) for call in per_call}) > 1


def test_no_wait_follows_the_last_attempt(delays: list[float]) -> None:
    with pytest.raises(TransientError):
        retryable_operation(max_attempts=3, jitter=False)(failing_forever(lambda: TransientError("down")))()

    assert len(delays) == 2


def test_permanent_error_causes_no_wait(delays: list[float]) -> None:
    with pytest.raises(ValueError):
        retryable_operation(max_attempts=3)(Flaky(ValueError("bad")))()

    assert delays == []


# --------------------------------------------------------------------------- logs, callbacks, statistics


def test_each_retry_is_logged_with_function_attempt_category_delay_and_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @retryable_operation(max_attempts=3, initial_delay=1.0, jitter=False)
    def sync_prefix() -> None:
        raise TransientError("service unavailable")

    with caplog.at_level(logging.WARNING, logger="sqlmesh_osaa.error_handler"):
        with pytest.raises(TransientError):
            sync_prefix()

    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2
    assert "sync_prefix" in retries[0]
    assert "attempt 1/3" in retries[0] and "attempt 2/3" in retries[1]
    assert "transient" in retries[0]
    assert "retrying in 1.00s" in retries[0] and "retrying in 2.00s" in retries[1]
    assert "TransientError: service unavailable" in retries[0]


def test_giving_up_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    @retryable_operation(max_attempts=2)
    def sync_prefix() -> None:
        raise ConnectionError("reset by peer")

    with caplog.at_level(logging.WARNING, logger="sqlmesh_osaa.error_handler"):
        with pytest.raises(ConnectionError):
            sync_prefix()

    messages = [r.getMessage() for r in caplog.records]
    assert any("gave up after 2 attempts" in m and "reset by peer" in m for m in messages)


def test_on_retry_receives_every_retry() -> None:
    events: list[RetryAttempt] = []
    error = TransientError("down")
    func = Flaky(error, error)

    retryable_operation(max_attempts=3, jitter=False, on_retry=events.append)(func)()

    assert [(e.attempt, e.max_attempts, e.delay, e.category) for e in events] == [
        (1, 3, 1.0, ErrorCategory.TRANSIENT),
        (2, 3, 2.0, ErrorCategory.TRANSIENT),
    ]
    assert all(e.error is error for e in events)


def test_a_broken_on_retry_callback_does_not_break_the_operation() -> None:
    def broken(event: RetryAttempt) -> None:
        raise RuntimeError("alerting is down")

    func = Flaky(TransientError("down"), result="ok")

    assert retryable_operation(max_attempts=2, on_retry=broken)(func)() == "ok"


def test_statistics_count_a_call_that_recovered_after_retries() -> None:
    stats = RetryStatistics()
    func = Flaky(TransientError("a"), TransientError("b"))

    retryable_operation(max_attempts=3, stats=stats)(func)()

    assert stats.snapshot() == {
        "Flaky": {
            "calls": 1, "attempts": 3, "retries": 2, "successes": 1, "failures": 0, "gave_up": 0, "recovered": 1,
        }
    }


def test_statistics_separate_giving_up_from_permanent_failures() -> None:
    stats = RetryStatistics()

    @retryable_operation(max_attempts=3, stats=stats)
    def gives_up() -> None:
        raise TransientError("down")

    @retryable_operation(max_attempts=3, stats=stats)
    def rejected() -> None:
        raise PermanentError("Invalid configuration")

    @retryable_operation(max_attempts=3, stats=stats)
    def works() -> int:
        return 1

    for func in (gives_up, rejected):
        with pytest.raises(Exception):
            func()
    works()
    works()

    counts = {name.rsplit(".", 1)[-1]: c for name, c in stats.snapshot().items()}
    assert counts["gives_up"] == {
        "calls": 1, "attempts": 3, "retries": 2, "successes": 0, "failures": 1, "gave_up": 1, "recovered": 0,
    }
    assert counts["rejected"] == {
        "calls": 1, "attempts": 1, "retries": 0, "successes": 0, "failures": 1, "gave_up": 0, "recovered": 0,
    }
    assert counts["works"] == {
        "calls": 2, "attempts": 2, "retries": 0, "successes": 2, "failures": 0, "gave_up": 0, "recovered": 0,
    }


# --------------------------------------------------------------------------- retries and the circuit breaker


def test_open_circuit_stops_the_retry_loop_without_calling(delays: list[float]) -> None:
    breaker = tripped_breaker()
    func = Flaky(result="never")

    with pytest.raises(CircuitBreakerOpenError):
        retryable_operation(max_attempts=5, circuit_breaker=breaker)(func)()

    assert func.calls == 0
    assert delays == []


def test_circuit_opening_during_the_loop_stops_it_with_the_original_error(delays: list[float]) -> None:
    breaker = CircuitBreaker(failure_threshold=2, timeout_seconds=3600, clock=lambda: 0.0)
    func = failing_forever(lambda: TransientError("down"))

    with pytest.raises(TransientError):
        retryable_operation(max_attempts=5, circuit_breaker=breaker)(func)()

    assert func.calls == 2
    assert len(delays) == 1
    assert breaker.state is CircuitBreakerState.OPEN


def test_permanent_errors_neither_retry_nor_open_the_circuit() -> None:
    breaker = CircuitBreaker(failure_threshold=2, timeout_seconds=3600, clock=lambda: 0.0)
    func = failing_forever(lambda: ValueError("bad"))
    decorated = retryable_operation(max_attempts=3, circuit_breaker=breaker)(func)

    for _ in range(5):
        with pytest.raises(ValueError):
            decorated()

    assert breaker.state is CircuitBreakerState.CLOSED


# --------------------------------------------------------------------------- RetryPolicy


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"initial_delay": -1.0}, {"max_delay": -1.0}, {"exponential_base": 0.5}],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_retry_policy_from_settings_takes_every_number() -> None:
    settings = RetrySettings(max_attempts=7, initial_delay=0.25, max_delay=9.0, exponential_base=3.0, jitter=False)

    assert RetryPolicy.from_settings(settings) == RetryPolicy(7, 0.25, 9.0, 3.0, False)


def test_retry_policy_decorator_applies_the_policy(delays: list[float]) -> None:
    func = failing_forever(lambda: TransientError("down"))

    with pytest.raises(TransientError):
        RetryPolicy(max_attempts=4, initial_delay=0.5, jitter=False).decorator()(func)()

    assert (func.calls, delays) == (4, [0.5, 1.0, 2.0])


# --------------------------------------------------------------------------- ErrorHandler


def test_execute_retries_through_the_breaker_and_counts_under_the_operation_name() -> None:
    handler = ErrorHandler(RetryPolicy(max_attempts=3), CircuitBreaker(failure_threshold=5))
    func = Flaky(ConnectionError("reset"), result="etag")

    assert handler.execute(func, "a.csv", operation="s3.put_object", key="k") == "etag"
    assert handler.stats.snapshot()["s3.put_object"]["attempts"] == 2
    assert handler.circuit_breaker is not None and handler.circuit_breaker.failure_count == 0


def test_execute_passes_arguments_to_the_function() -> None:
    handler = ErrorHandler()

    assert handler.execute(lambda a, b, *, c: (a, b, c), 1, 2, c=3) == (1, 2, 3)


def test_execute_on_an_open_circuit_fails_fast() -> None:
    handler = ErrorHandler(RetryPolicy(max_attempts=5), tripped_breaker())
    func = Flaky(result="never")

    with pytest.raises(CircuitBreakerOpenError):
        handler.execute(func)

    assert func.calls == 0


def test_process_batch_collects_failures_and_keeps_going() -> None:
    handler = ErrorHandler(RetryPolicy(max_attempts=3))
    attempts: dict[str, int] = {}

    def convert(name: str) -> str:
        attempts[name] = attempts.get(name, 0) + 1
        if name == "bad.csv":
            raise ValueError("malformed header")
        if name == "flaky.csv" and attempts[name] == 1:
            raise ConnectionError("reset")
        return name.replace(".csv", ".parquet")

    collector = handler.process_batch(["good1.csv", "bad.csv", "flaky.csv", "good2.csv"], convert)

    assert collector.successes == ["good1.csv", "flaky.csv", "good2.csv"]
    assert collector.results == ["good1.parquet", "flaky.parquet", "good2.parquet"]
    assert [(f.item, f.category, f.error_type) for f in collector.failures] == [
        ("bad.csv", ErrorCategory.PERMANENT, "ValueError")
    ]
    assert attempts == {"good1.csv": 1, "bad.csv": 1, "flaky.csv": 2, "good2.csv": 1}


def test_process_batch_adds_to_a_given_collector() -> None:
    handler = ErrorHandler()
    collector = error_handler.PartialFailureCollector()
    collector.add_success("earlier.csv")

    assert handler.process_batch(["a.csv"], str.upper, collector=collector) is collector
    assert collector.successes == ["earlier.csv", "a.csv"]


def test_process_batch_names_the_item_in_retry_logs(caplog: pytest.LogCaptureFixture) -> None:
    handler = ErrorHandler(RetryPolicy(max_attempts=2))

    def convert(path: dict[str, str]) -> None:
        raise TransientError("down")

    with caplog.at_level(logging.WARNING, logger="sqlmesh_osaa.error_handler"):
        handler.process_batch([{"path": "raw/a.csv"}], convert, item_name=lambda item: item["path"])

    assert any("convert(raw/a.csv)" in r.getMessage() and "attempt 1/2" in r.getMessage() for r in caplog.records)


def test_process_batch_fails_the_rest_fast_once_the_circuit_opens() -> None:
    breaker = CircuitBreaker(failure_threshold=2, timeout_seconds=3600, clock=lambda: 0.0)
    handler = ErrorHandler(RetryPolicy(max_attempts=1), breaker)
    called: list[int] = []

    def upload(item: int) -> None:
        called.append(item)
        raise ConnectionError("endpoint down")

    collector = handler.process_batch(range(6), upload)

    assert called == [0, 1]
    assert collector.get_failure_count() == 6
    assert [f.error_type for f in collector.failures[2:]] == ["CircuitBreakerOpenError"] * 4


def test_error_handler_from_settings_uses_the_retry_and_breaker_settings() -> None:
    settings = OsaaSettings(
        retry=RetrySettings(max_attempts=4, initial_delay=0.5, jitter=False),
        circuit_breaker=CircuitBreakerSettings(failure_threshold=9, timeout_seconds=12.0),
    )

    handler = ErrorHandler.from_settings(settings, name="s3")

    assert handler.retry == RetryPolicy(max_attempts=4, initial_delay=0.5, jitter=False)
    assert handler.circuit_breaker is not None
    assert (handler.circuit_breaker.failure_threshold, handler.circuit_breaker.timeout_seconds) == (9, 12.0)
    assert handler.circuit_breaker.name == handler.name == "s3"
