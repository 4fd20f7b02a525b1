"""CircuitBreaker: opens on repeated service failures, probes once after a pause, thread safe."""

from __future__ import annotations

import threading
from typing import Callable

import pytest
from botocore.exceptions import ClientError

from sqlmesh_osaa.error_handler import CircuitBreaker, CircuitBreakerState
from sqlmesh_osaa.exceptions import CircuitBreakerOpenError, TransientError
from sqlmesh_osaa.settings import CircuitBreakerSettings

CLOSED, OPEN, HALF_OPEN = CircuitBreakerState.CLOSED, CircuitBreakerState.OPEN, CircuitBreakerState.HALF_OPEN


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, timeout_seconds=60, name="s3", clock=clock)


def fail(error: Exception | None = None) -> Callable[[], None]:
    def func() -> None:
        raise error or TransientError("service unavailable")

    return func


def ok() -> str:
    return "ok"


def fail_times(breaker: CircuitBreaker, n: int, error: Exception | None = None) -> None:
    for _ in range(n):
        with pytest.raises(type(error) if error else TransientError):
            breaker.call(fail(error))


def no_such_key() -> ClientError:
    return ClientError({"Error": {"Code": "NoSuchKey"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetObject")


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return "ok"


# --------------------------------------------------------------------------- closed -> open


def test_a_new_breaker_is_closed_and_passes_calls_through(breaker: CircuitBreaker) -> None:
    assert breaker.state is CLOSED
    assert breaker.call(lambda a, b: a + b, 1, b=2) == 3


def test_opens_after_failure_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    fail_times(breaker, 2)
    assert breaker.state is CLOSED

    fail_times(breaker, 1)

    assert breaker.state is OPEN
    assert (breaker.failure_count, breaker.opened_count) == (3, 1)


def test_the_failure_that_opens_the_circuit_is_raised_as_itself(breaker: CircuitBreaker) -> None:
    fail_times(breaker, 2)
    error = TransientError("third")

    with pytest.raises(TransientError) as raised:
        breaker.call(fail(error))

    assert raised.value is error
    assert breaker.last_failure is error


def test_a_success_resets_the_consecutive_failure_count(breaker: CircuitBreaker) -> None:
    fail_times(breaker, 2)
    breaker.call(ok)
    fail_times(breaker, 2)

    assert breaker.state is CLOSED
    assert breaker.failure_count == 2


def test_unknown_errors_count_as_failures(breaker: CircuitBreaker) -> None:
    fail_times(breaker, 3, RuntimeError("odd"))

    assert breaker.state is OPEN


# --------------------------------------------------------------------------- open


def test_rejects_without_calling_while_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail_times(breaker, 3)
    func = Counting()
    clock.advance(59.9)

    with pytest.raises(CircuitBreakerOpenError):
        breaker.call(func)

    assert func.calls == 0
    assert breaker.state is OPEN


def test_rejection_names_the_breaker_its_failures_and_when_it_retries(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail_times(breaker, 3, ConnectionError("connection refused"))
    clock.advance(20)

    with pytest.raises(CircuitBreakerOpenError) as raised:
        breaker.call(ok)

    context = raised.value.context
    assert (context["breaker"], context["failures"], context["retry_in_seconds"]) == ("s3", 3, 40.0)
    assert "connection refused" in str(raised.value)
    assert "'s3'" in str(raised.value)


# --------------------------------------------------------------------------- half-open


def test_reports_half_open_once_the_timeout_has_elapsed(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail_times(breaker, 3)

    clock.advance(60)

    assert breaker.state is HALF_OPEN


def test_a_successful_trial_closes_the_circuit(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail_times(breaker, 3)
    clock.advance(60)

    assert breaker.call(ok) == "ok"

    assert breaker.state is CLOSED
    assert breaker.failure_count == 0
    assert breaker.call(ok) == "ok"


def test_a_failed_trial_reopens_the_circuit_for_another_timeout(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail_times(breaker, 3)
    clock.advance(60)

    fail_times(breaker, 1)

    assert breaker.state is OPEN
    assert breaker.opened_count == 2
    clock.advance(59)
    with pytest.raises(CircuitBreakerOpenError):
        breaker.call(ok)
    clock.advance(1)
    assert breaker.state is HALF_OPEN


def test_only_one_trial_goes_through_while_it_runs(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail_times(breaker, 3)
    clock.advance(60)
    trial_started, finish_trial = threading.Event(), threading.Event()
    outcome: list[str] = []

    def trial() -> str:
        trial_started.set()
        finish_trial.wait(timeout=10)
        return "recovered"

    thread = threading.Thread(target=lambda: outcome.append(breaker.call(trial)))
    thread.start()
    assert trial_started.wait(timeout=10)
    other = Counting()

    with pytest.raises(CircuitBreakerOpenError) as raised:
        breaker.call(other)
    finish_trial.set()
    thread.join(timeout=10)

    assert other.calls == 0
    assert "trial call is running" in str(raised.value)
    assert outcome == ["recovered"]
    assert breaker.state is CLOSED


def test_a_trial_ending_in_a_caller_error_leaves_the_next_call_as_the_trial(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail_times(breaker, 3)
    clock.advance(60)

    fail_times(breaker, 1, no_such_key())

    assert breaker.state is HALF_OPEN
    assert breaker.call(ok) == "ok"
    assert breaker.state is CLOSED


def test_an_interrupted_trial_frees_the_trial_slot(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail_times(breaker, 3)
    clock.advance(60)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)

    assert breaker.state is HALF_OPEN
    assert breaker.call(ok) == "ok"


def test_a_call_admitted_before_the_circuit_opened_does_not_close_it(breaker: CircuitBreaker) -> None:
    started, finish = threading.Event(), threading.Event()

    def slow_success() -> str:
        started.set()
        finish.wait(timeout=10)
        return "late"

    thread = threading.Thread(target=breaker.call, args=(slow_success,))
    thread.start()
    assert started.wait(timeout=10)
    fail_times(breaker, 3)
    finish.set()
    thread.join(timeout=10)

    assert breaker.state is OPEN
    assert breaker.failure_count == 3


# --------------------------------------------------------------------------- listeners and reset


def test_listeners_see_every_transition_in_order(clock: FakeClock) -> None:
    seen: list[tuple[str, CircuitBreakerState, CircuitBreakerState]] = []
    breaker = CircuitBreaker(
        failure_threshold=1,
        timeout_seconds=10,
        name="s3",
        clock=clock,
        listeners=[lambda cb, old, new: seen.append((cb.name, old, new))],
    )

    fail_times(breaker, 1)
    clock.advance(10)
    fail_times(breaker, 1)
    clock.advance(10)
    breaker.call(ok)

    assert seen == [
        ("s3", CLOSED, OPEN),
        ("s3", OPEN, HALF_OPEN),
        ("s3", HALF_OPEN, OPEN),
        ("s3", OPEN, HALF_OPEN),
        ("s3", HALF_OPEN, CLOSED),
    ]


def test_add_listener_registers_an_alert(breaker: CircuitBreaker) -> None:
    alerts: list[CircuitBreakerState] = []
    breaker.add_listener(lambda cb, old, new: alerts.append(new))

    fail_times(breaker, 3)

    assert alerts == [OPEN]


def test_a_broken_listener_does_not_break_calls(breaker: CircuitBreaker) -> None:
    def broken(cb: CircuitBreaker, old: CircuitBreakerState, new: CircuitBreakerState) -> None:
        raise RuntimeError("pager is down")

    breaker.add_listener(broken)

    fail_times(breaker, 3)
    assert breaker.state is OPEN


def test_reset_closes_an_open_circuit_and_lets_calls_through(breaker: CircuitBreaker) -> None:
    seen: list[tuple[CircuitBreakerState, CircuitBreakerState]] = []
    breaker.add_listener(lambda cb, old, new: seen.append((old, new)))
    fail_times(breaker, 3)

    breaker.reset()

    assert breaker.state is CLOSED
    assert breaker.failure_count == 0
    assert breaker.call(ok) == "ok"
    assert seen == [(CLOSED, OPEN), (OPEN, CLOSED)]


def test_reset_during_a_trial_ignores_the_trial_outcome(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail_times(breaker, 3)
    clock.advance(60)
    started, finish = threading.Event(), threading.Event()

    def failing_trial() -> None:
        started.set()
        finish.wait(timeout=10)
        raise TransientError("still down")

    thread = threading.Thread(target=lambda: pytest.raises(TransientError, breaker.call, failing_trial))
    thread.start()
    assert started.wait(timeout=10)
    breaker.reset()
    finish.set()
    thread.join(timeout=10)

    assert breaker.state is CLOSED
    assert breaker.opened_count == 1


# --------------------------------------------------------------------------- what counts as a failure


def test_permanent_caller_errors_do_not_open_the_circuit(breaker: CircuitBreaker) -> None:
    fail_times(breaker, 10, no_such_key())
    fail_times(breaker, 10, ValueError("bad input"))

    assert breaker.state is CLOSED
    assert breaker.failure_count == 0


def test_permanent_caller_errors_do_not_reset_the_failure_count(breaker: CircuitBreaker) -> None:
    fail_times(breaker, 2)
    fail_times(breaker, 1, no_such_key())
    fail_times(breaker, 1)

    assert breaker.state is OPEN


def test_excluded_predicate_decides_what_does_not_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=clock, excluded=lambda error: isinstance(error, TimeoutError))

    fail_times(breaker, 5, TimeoutError("slow"))
    assert breaker.state is CLOSED

    fail_times(breaker, 2, ValueError("counted now"))
    assert breaker.state is OPEN


# --------------------------------------------------------------------------- concurrency


def hammer(threads: int, calls_per_thread: int, work: Callable[[], None]) -> None:
    barrier = threading.Barrier(threads)

    def run() -> None:
        barrier.wait()
        for _ in range(calls_per_thread):
            work()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)


def test_concurrent_failures_are_all_counted() -> None:
    breaker = CircuitBreaker(failure_threshold=1_000_000)

    def work() -> None:
        with pytest.raises(TransientError):
            breaker.call(fail())

    hammer(threads=8, calls_per_thread=250, work=work)

    assert breaker.failure_count == 2000
    assert breaker.state is CLOSED


def test_concurrent_callers_open_the_circuit_once_and_are_rejected_after(clock: FakeClock) -> None:
    threads, calls_per_thread, threshold = 8, 200, 50
    breaker = CircuitBreaker(failure_threshold=threshold, timeout_seconds=3600, clock=clock)
    lock = threading.Lock()
    outcomes = {"executed": 0, "rejected": 0}

    def service() -> None:
        with lock:
            outcomes["executed"] += 1
        raise ConnectionError("endpoint down")

    def work() -> None:
        try:
            breaker.call(service)
        except CircuitBreakerOpenError:
            with lock:
                outcomes["rejected"] += 1
        except ConnectionError:
            pass

    hammer(threads, calls_per_thread, work)

    assert outcomes["executed"] + outcomes["rejected"] == threads * calls_per_thread
    assert threshold <= outcomes["executed"] < threshold + threads
    assert breaker.opened_count == 1
    assert breaker.state is OPEN


def test_concurrent_callers_let_exactly_one_trial_through(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, timeout_seconds=5, clock=clock)
    fail_times(breaker, 1)
    clock.advance(5)
    trials = Counting()
    release = threading.Event()
    rejected = threading.Semaphore(0)

    def trial() -> str:
        trials()
        release.wait(timeout=10)
        return "ok"

    def work() -> None:
        try:
            breaker.call(trial)
        except CircuitBreakerOpenError:
            rejected.release()

    workers = [threading.Thread(target=work) for _ in range(8)]
    for worker in workers:
        worker.start()
    for _ in range(7):
        assert rejected.acquire(timeout=10)
    release.set()
    for worker in workers:
        worker.join(timeout=10)

    assert trials.calls == 1
    assert breaker.state is CLOSED


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"timeout_seconds": -1}])
def test_rejects_nonsense_thresholds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)


def test_from_settings_takes_threshold_and_timeout() -> None:
    breaker = CircuitBreaker.from_settings(CircuitBreakerSettings(failure_threshold=7, timeout_seconds=30), name="s3")

    assert (breaker.failure_threshold, breaker.timeout_seconds, breaker.name) == (7, 30.0, "s3")


def test_breaker_openings_and_recovery_are_kept_as_checkpoint_events(tmp_path):
    from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
    from sqlmesh_osaa.error_handler import record_breaker_transitions

    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, timeout_seconds=10, name="object-storage", clock=lambda: now[0])
    with PipelineCheckpoint("ingest", tmp_path / "c.duckdb") as checkpoint:
        record_breaker_transitions(breaker, checkpoint)
        record_breaker_transitions(breaker, checkpoint)

        def fail():
            raise ConnectionError("endpoint unreachable")

        for _ in range(2):
            with pytest.raises(ConnectionError):
                breaker.call(fail)
        assert checkpoint.get(CheckpointScope.OPERATION, "circuit-breaker/object-storage")["status"] == "failed"
        now[0] = 11.0
        breaker.call(lambda: "back")
        history = checkpoint.history(CheckpointScope.OPERATION, "circuit-breaker/object-storage")
        stats = checkpoint.get_statistics()
    assert [event["to_status"] for event in history] == ["in_progress", "failed", "in_progress", "completed"]
    assert "endpoint unreachable" in history[1]["error_message"]
    assert stats["time_to_recovery"]["recovered"] == 1
