"""How the pipeline survives faults: retries, a circuit breaker, partial-failure collection.

This is the package's one retry layer: code that uses it adds no retries of its own
(storage keeps botocore's retries from multiplying a logical operation's attempts). Whether an error is retried depends on
:func:`categorize_error`: transient and unknown errors are retried with exponential
backoff and full jitter, permanent ones fail at once, and an open circuit stops a retry
loop at once — retrying against a service known to be down only adds load.

Retries are built on tenacity. Their waits go through the module-level hook
:data:`sleep`; tests replace it (``monkeypatch.setattr(error_handler, "sleep",
delays.append)``) to record the delays instead of waiting them out.

The circuit breaker is written by hand rather than on pybreaker 1.4.1, because pybreaker:

- holds its lock for the whole guarded call, so every call through one breaker runs one
  at a time: SQLMesh evaluates models on several threads and they would queue behind a
  single slow S3 request; for the same reason, callers arriving during a half-open trial
  wait for it instead of being rejected at once;
- reads ``datetime.now()`` directly, so the open -> half-open timeout cannot be driven by
  a test clock, only by sleeping or patching the library;
- only moves from open to half-open on a call, so ``state`` keeps reporting OPEN after
  the timeout, and it counts excluded errors as successes that close a half-open circuit.

The state machine below is small, keeps its lock only around bookkeeping (never around
the guarded call), and takes the clock as an argument.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, ParamSpec, TypeVar

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.checkpoint.states import BREAKER_KEY_PREFIX
from sqlmesh_osaa.exceptions import (
    CircuitBreakerOpenError,
    ErrorCategory,
    PartialFailureError,
    categorize_error,
)
from sqlmesh_osaa.settings import CircuitBreakerSettings, OsaaSettings, RetrySettings, get_settings

if TYPE_CHECKING:
    # tenacity is imported when an operation is first retried: a command that retries nothing
    # (an unchanged re-run, a read of the recovery CLI) does not pay for it.
    from tenacity import RetryCallState, Retrying, wait_exponential

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerState",
    "ErrorCategory",
    "ErrorHandler",
    "FailureRecord",
    "PartialFailureCollector",
    "RetryAttempt",
    "RetryPolicy",
    "RetryStatistics",
    "categorize_error",
    "record_breaker_transitions",
    "retryable_operation",
    "sleep",
]

_log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

sleep: Callable[[float], None] = time.sleep
"""How retries wait between attempts; replace it to record delays instead of waiting."""


def _sleep(seconds: float) -> None:
    # Looked up at call time so that replacing the hook also affects functions decorated earlier.
    sleep(seconds)


def _name_of(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or type(func).__name__


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _notify(callback: Callable[..., None], *args: Any) -> None:
    """Run a monitoring callback; a broken alert must never break the pipeline it watches."""
    try:
        callback(*args)
    except Exception:
        _log.exception("Callback %s raised; ignored", _name_of(callback))


# --------------------------------------------------------------------------- statistics

_COUNTERS = ("calls", "attempts", "retries", "successes", "failures", "gave_up", "recovered")


class RetryStatistics:
    """Thread-safe counters per operation, for the seed's retry monitoring.

    ``calls`` logical calls, ``attempts`` tries of the operation, ``retries`` tries after
    the first, ``successes`` / ``failures`` final outcomes, ``gave_up`` failures of a
    retryable error after every attempt, ``recovered`` successes that needed a retry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {}

    def _add(self, operation: str, **increments: int) -> None:
        with self._lock:
            self._counts.setdefault(operation, Counter()).update(increments)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Counters per operation name, every counter present (zero when never hit)."""
        with self._lock:
            return {
                operation: {name: counts[name] for name in _COUNTERS}
                for operation, counts in self._counts.items()
            }


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryAttempt:
    """What an ``on_retry`` callback receives before each wait."""

    operation: str
    attempt: int
    max_attempts: int
    delay: float
    error: BaseException
    category: ErrorCategory


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Retry ``n`` (from 1) waits ``initial_delay * exponential_base ** (n - 1)`` seconds,
    capped at ``max_delay``. With ``jitter`` the wait is drawn uniformly between 0 and
    that bound ("full jitter", as botocore does), so many clients failing together do
    not retry together; the mean wait is then half the bound.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 60.0
    exponential_base: float = 2.0
    jitter: bool = True
    retry_on_unknown: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("initial_delay and max_delay must not be negative")
        if self.exponential_base < 1:
            raise ValueError(f"exponential_base must be at least 1, got {self.exponential_base}")

    @classmethod
    def from_settings(cls, settings: RetrySettings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            initial_delay=settings.initial_delay,
            max_delay=settings.max_delay,
            exponential_base=settings.exponential_base,
            jitter=settings.jitter,
        )

    def should_retry(self, error: BaseException) -> bool:
        """Whether another attempt can help; interrupts and open circuits never retry."""
        if not isinstance(error, Exception) or isinstance(error, CircuitBreakerOpenError):
            return False
        category = categorize_error(error)
        if category is ErrorCategory.UNKNOWN:
            return self.retry_on_unknown
        return category is ErrorCategory.TRANSIENT

    def decorator(
        self,
        *,
        operation: str | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        on_retry: Callable[[RetryAttempt], None] | None = None,
        stats: RetryStatistics | None = None,
    ) -> Callable[[Callable[P, T]], Callable[P, T]]:
        """Wrap a function so that every call runs under this policy."""

        def decorate(func: Callable[P, T]) -> Callable[P, T]:
            name = operation or _name_of(func)
            loop = _RetryLoop(self, name, name, circuit_breaker, on_retry, stats)

            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                return loop.run(func, args, kwargs)

            return wrapper

        return decorate

    def _wait(self) -> wait_exponential:
        from tenacity import wait_exponential, wait_random_exponential

        strategy = wait_random_exponential if self.jitter else wait_exponential
        return strategy(multiplier=self.initial_delay, max=self.max_delay, exp_base=self.exponential_base)


@dataclass(frozen=True)
class _RetryLoop:
    """One retried operation: ``operation`` keys the statistics, ``label`` names it in logs."""

    policy: RetryPolicy
    operation: str
    label: str
    circuit_breaker: CircuitBreaker | None
    on_retry: Callable[[RetryAttempt], None] | None
    stats: RetryStatistics | None

    def run(self, func: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            if self.circuit_breaker is None:
                return func(*args, **kwargs)
            return self.circuit_breaker.call(func, *args, **kwargs)

        try:
            result = self._retrying()(attempt)
        except BaseException as error:
            self._finish_failure(error, attempts)
            raise
        self._finish_success(attempts)
        return result

    def _retrying(self) -> Retrying:
        from tenacity import Retrying, retry_if_exception, stop_after_attempt

        return Retrying(
            stop=stop_after_attempt(self.policy.max_attempts),
            wait=self.policy._wait(),
            retry=retry_if_exception(self._should_retry),
            before_sleep=self._before_sleep,
            sleep=_sleep,
            reraise=True,
        )

    def _should_retry(self, error: BaseException) -> bool:
        breaker_open = (
            self.circuit_breaker is not None
            and self.circuit_breaker.state is CircuitBreakerState.OPEN
        )
        return not breaker_open and self.policy.should_retry(error)

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        assert retry_state.outcome is not None and retry_state.next_action is not None
        error = retry_state.outcome.exception()
        assert error is not None
        event = RetryAttempt(
            operation=self.operation,
            attempt=retry_state.attempt_number,
            max_attempts=self.policy.max_attempts,
            delay=retry_state.next_action.sleep,
            error=error,
            category=categorize_error(error),
        )
        _log.warning(
            "%s failed (attempt %d/%d, %s error); retrying in %.2fs: %s",
            self.label,
            event.attempt,
            event.max_attempts,
            event.category.value,
            event.delay,
            _describe(error),
        )
        if self.on_retry is not None:
            _notify(self.on_retry, event)

    def _count(self, attempts: int, **outcome: int) -> None:
        if self.stats is not None:
            retries = max(attempts - 1, 0)
            self.stats._add(self.operation, calls=1, attempts=attempts, retries=retries, **outcome)

    def _finish_success(self, attempts: int) -> None:
        self._count(attempts, successes=1, recovered=int(attempts > 1))
        if attempts > 1:
            _log.info("%s succeeded on attempt %d/%d", self.label, attempts, self.policy.max_attempts)

    def _finish_failure(self, error: BaseException, attempts: int) -> None:
        exhausted = attempts >= self.policy.max_attempts and self.policy.should_retry(error)
        self._count(attempts, failures=1, gave_up=int(exhausted))
        if exhausted:
            _log.warning("%s gave up after %d attempts: %s", self.label, attempts, _describe(error))
        elif isinstance(error, Exception):
            _log.info(
                "%s failed with a %s error, not retried: %s",
                self.label,
                categorize_error(error).value,
                _describe(error),
            )


def retryable_operation(
    max_attempts: int = 3,
    initial_delay: float = 1.0,
    max_delay: float = 60.0,
    exponential_base: float = 2.0,
    jitter: bool = True,
    *,
    retry_on_unknown: bool = True,
    circuit_breaker: CircuitBreaker | None = None,
    on_retry: Callable[[RetryAttempt], None] | None = None,
    stats: RetryStatistics | None = None,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Retry the decorated function on transient (and unknown) errors.

    After the last attempt the original exception is raised, not a tenacity wrapper, so
    callers handle the same errors with or without retries.
    """
    policy = RetryPolicy(max_attempts, initial_delay, max_delay, exponential_base, jitter, retry_on_unknown)
    return policy.decorator(circuit_breaker=circuit_breaker, on_retry=on_retry, stats=stats)


# --------------------------------------------------------------------------- circuit breaker


class CircuitBreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


StateListener = Callable[["CircuitBreaker", CircuitBreakerState, CircuitBreakerState], None]
_Transition = tuple[CircuitBreakerState, CircuitBreakerState]


def _is_caller_error(error: BaseException) -> bool:
    """A permanent error (NoSuchKey, bad input) is the caller's fault, not the service's."""
    return categorize_error(error) in (ErrorCategory.PERMANENT, ErrorCategory.DATA)


class _Ticket(NamedTuple):
    """Admission to one call: results from an older generation no longer move the state."""

    generation: int
    trial: bool


class CircuitBreaker:
    """Stops calling a service that keeps failing, and probes it again after a pause.

    CLOSED: calls go through; ``failure_threshold`` consecutive counted failures open it.
    OPEN: calls are rejected with :class:`CircuitBreakerOpenError` without being made,
    until ``timeout_seconds`` have passed on ``clock``; it then reports HALF_OPEN.
    HALF_OPEN: exactly one trial call goes through (others are rejected while it runs);
    its success closes the circuit, its failure opens it again.

    Only transient and unknown errors count as failures: a permanent error (NoSuchKey, a
    validation error) says the caller was wrong, not that the service is down. Errors for
    which ``excluded`` returns True neither count nor reset the count; a trial ending in
    one leaves the circuit half-open for the next call. Listeners are called with
    ``(breaker, old_state, new_state)`` on every transition, outside the lock.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        timeout_seconds: float = 60,
        *,
        name: str = "default",
        listeners: Iterable[StateListener] = (),
        excluded: Callable[[BaseException], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if timeout_seconds < 0:
            raise ValueError(f"timeout_seconds must not be negative, got {timeout_seconds}")
        self.failure_threshold = failure_threshold
        self.timeout_seconds = float(timeout_seconds)
        self.name = name
        self._excluded = excluded or _is_caller_error
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners = list(listeners)
        self._state = CircuitBreakerState.CLOSED
        self._generation = 0
        self._failure_count = 0
        self._opened_count = 0
        self._opened_at = 0.0
        self._trial_running = False
        self._last_failure: BaseException | None = None

    @classmethod
    def from_settings(cls, settings: CircuitBreakerSettings, *, name: str = "default") -> CircuitBreaker:
        return cls(settings.failure_threshold, settings.timeout_seconds, name=name)

    @property
    def state(self) -> CircuitBreakerState:
        with self._lock:
            transition = self._expire_open()
            state = self._state
        self._announce(transition)
        return state

    @property
    def failure_count(self) -> int:
        """Consecutive counted failures since the circuit last closed."""
        with self._lock:
            return self._failure_count

    @property
    def opened_count(self) -> int:
        """How many times the circuit has opened (re-opening after a failed trial included)."""
        with self._lock:
            return self._opened_count

    @property
    def last_failure(self) -> BaseException | None:
        with self._lock:
            return self._last_failure

    def add_listener(self, listener: StateListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def reset(self) -> None:
        """Close the circuit by hand (service known to be back); in-flight results are ignored."""
        with self._lock:
            transition = None
            if self._state is not CircuitBreakerState.CLOSED:
                transition = self._move(CircuitBreakerState.CLOSED)
            self._generation += 1
            self._failure_count = 0
            self._trial_running = False
        _log.info("Circuit breaker %r reset", self.name)
        self._announce(transition)

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func`` unless the circuit is open; its outcome updates the circuit."""
        ticket = self._admit()
        try:
            result = func(*args, **kwargs)
        except Exception as error:
            self._on_failure(ticket, error)
            raise
        except BaseException:
            self._release(ticket)
            raise
        self._on_success(ticket)
        return result

    def _admit(self) -> _Ticket:
        with self._lock:
            transition = self._expire_open()
            rejection = self._rejection()
            ticket = _Ticket(self._generation, trial=self._state is CircuitBreakerState.HALF_OPEN)
            if rejection is None:
                self._trial_running = ticket.trial
        self._announce(transition)
        if rejection is not None:
            raise rejection
        return ticket

    def _rejection(self) -> CircuitBreakerOpenError | None:
        if self._state is CircuitBreakerState.CLOSED:
            return None
        if self._state is CircuitBreakerState.HALF_OPEN:
            if not self._trial_running:
                return None
            reason, retry_in = "Circuit breaker is half-open and its trial call is running", 0.0
        else:
            reason = "Circuit breaker is open"
            retry_in = max(0.0, self._opened_at + self.timeout_seconds - self._clock())
        last = self._last_failure
        return CircuitBreakerOpenError(
            f"{reason}: call rejected without being attempted",
            breaker=self.name,
            failures=self._failure_count,
            retry_in_seconds=round(retry_in, 3),
            last_error=_describe(last) if last is not None else None,
        )

    def _on_success(self, ticket: _Ticket) -> None:
        transition = None
        with self._lock:
            if ticket.generation == self._generation:
                if ticket.trial:
                    transition = self._move(CircuitBreakerState.CLOSED)
                self._failure_count = 0
        self._announce(transition)

    def _on_failure(self, ticket: _Ticket, error: Exception) -> None:
        if self._excluded(error):
            self._release(ticket)
            return
        transition = None
        with self._lock:
            self._last_failure = error
            if ticket.generation == self._generation:
                self._failure_count += 1
                if ticket.trial or self._failure_count >= self.failure_threshold:
                    transition = self._move(CircuitBreakerState.OPEN)
        self._announce(transition)

    def _release(self, ticket: _Ticket) -> None:
        """The call ended without saying anything about the service: free the trial slot."""
        with self._lock:
            if ticket.trial and ticket.generation == self._generation:
                self._trial_running = False

    def _expire_open(self) -> _Transition | None:
        """OPEN becomes HALF_OPEN once the timeout has passed, whether a call or a reader notices."""
        if self._state is not CircuitBreakerState.OPEN:
            return None
        if self._clock() < self._opened_at + self.timeout_seconds:
            return None
        return self._move(CircuitBreakerState.HALF_OPEN)

    def _move(self, new: CircuitBreakerState) -> _Transition:
        """Change state (lock held); the caller announces the returned transition after unlocking."""
        old, self._state = self._state, new
        self._generation += 1
        self._trial_running = False
        if new is CircuitBreakerState.OPEN:
            self._opened_at = self._clock()
            self._opened_count += 1
        elif new is CircuitBreakerState.CLOSED:
            self._failure_count = 0
        return old, new

    def _announce(self, transition: _Transition | None) -> None:
        if transition is None:
            return
        old, new = transition
        self._log_transition(new)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            _notify(listener, self, old, new)

    def _log_transition(self, new: CircuitBreakerState) -> None:
        if new is CircuitBreakerState.OPEN:
            _log.warning(
                "Circuit breaker %r opened after %d consecutive failures; next trial in %.0fs (last: %s)",
                self.name,
                self.failure_count,
                self.timeout_seconds,
                _describe(self.last_failure) if self.last_failure is not None else "none",
            )
        elif new is CircuitBreakerState.HALF_OPEN:
            _log.info("Circuit breaker %r half-open: letting one trial call through", self.name)
        else:
            _log.info("Circuit breaker %r closed", self.name)


# --------------------------------------------------------------------------- partial failures


@dataclass(frozen=True)
class FailureRecord:
    """One failed item, with what a summary needs to say what failed and why."""

    item: Any
    error: BaseException
    category: ErrorCategory
    message: str
    error_type: str

    @classmethod
    def of(cls, item: Any, error: BaseException) -> FailureRecord:
        return cls(item, error, categorize_error(error), str(error), type(error).__name__)


def _batch_category(failures: list[FailureRecord]) -> ErrorCategory:
    """Retrying a batch helps only if none of its failures is permanent."""
    categories = {failure.category for failure in failures}
    if categories & {ErrorCategory.PERMANENT, ErrorCategory.DATA}:
        return ErrorCategory.PERMANENT
    if categories == {ErrorCategory.TRANSIENT}:
        return ErrorCategory.TRANSIENT
    return ErrorCategory.UNKNOWN


class PartialFailureCollector:
    """Outcomes of a batch that keeps going after an item fails.

    ``successes`` holds the items that succeeded and ``results`` their results, in the
    same order; ``failures`` holds a :class:`FailureRecord` per failed item. Safe to fill
    from several threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.successes: list[Any] = []
        self.results: list[Any] = []
        self.failures: list[FailureRecord] = []

    def add_success(self, item: Any, result: Any = None) -> None:
        with self._lock:
            self.successes.append(item)
            self.results.append(result)

    def add_failure(self, item: Any, error: BaseException) -> None:
        record = FailureRecord.of(item, error)
        with self._lock:
            self.failures.append(record)

    def has_failures(self) -> bool:
        return bool(self.failures)

    def get_success_count(self) -> int:
        return len(self.successes)

    def get_failure_count(self) -> int:
        return len(self.failures)

    def get_total_count(self) -> int:
        return self.get_success_count() + self.get_failure_count()

    def failures_by_category(self) -> dict[ErrorCategory, int]:
        """Failure count per category, every category present so dashboards see zeros."""
        counts = Counter(failure.category for failure in self.failures)
        return {category: counts[category] for category in ErrorCategory}

    def failures_by_error_type(self) -> dict[str, int]:
        return dict(Counter(failure.error_type for failure in self.failures))

    def summary(self) -> dict[str, Any]:
        """Plain, JSON-ready account of the batch: counts, why things failed, which items."""
        return {
            "total": self.get_total_count(),
            "succeeded": self.get_success_count(),
            "failed": self.get_failure_count(),
            "by_category": {category.value: n for category, n in self.failures_by_category().items()},
            "by_error_type": self.failures_by_error_type(),
            "failed_items": [
                {
                    "item": str(failure.item),
                    "category": failure.category.value,
                    "error_type": failure.error_type,
                    "message": failure.message,
                }
                for failure in self.failures
            ],
        }

    def log_summary(self, logger: logging.Logger | None = None) -> None:
        """One info line with the counts, then one warning line per failed item."""
        target = logger or _log
        by_category = ", ".join(f"{c.value}: {n}" for c, n in self.failures_by_category().items())
        target.info(
            "Batch finished: %d items, %d succeeded, %d failed (%s)",
            self.get_total_count(),
            self.get_success_count(),
            self.get_failure_count(),
            by_category,
        )
        for failure in self.failures:
            target.warning(
                "Failed item %s [%s] %s: %s",
                failure.item,
                failure.category.value,
                failure.error_type,
                failure.message,
            )

    def raise_if_failures(self, message: str = "Batch processing had partial failures") -> None:
        """Raise :class:`PartialFailureError` carrying every success and failure, if any failed."""
        if not self.failures:
            return
        raise PartialFailureError(
            message,
            successes=self.successes,
            failures=self.failures,
            category=_batch_category(self.failures),
        )


# --------------------------------------------------------------------------- facade


class ErrorHandler:
    """A retry policy, an optional circuit breaker and statistics, applied together.

    Share one handler (hence one breaker) among everything that talks to the same
    service, so that all its callers see the circuit open.
    """

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        *,
        name: str = "default",
        stats: RetryStatistics | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.circuit_breaker = circuit_breaker
        self.name = name
        self.stats = stats or RetryStatistics()

    @classmethod
    def from_settings(cls, settings: OsaaSettings | None = None, name: str = "default") -> ErrorHandler:
        settings = settings if settings is not None else get_settings()
        return cls(
            RetryPolicy.from_settings(settings.retry),
            CircuitBreaker.from_settings(settings.circuit_breaker, name=name),
            name=name,
        )

    def execute(self, func: Callable[..., T], *args: Any, operation: str | None = None, **kwargs: Any) -> T:
        """Call ``func`` through the circuit breaker, retried per the policy."""
        name = operation or _name_of(func)
        return self._loop(name, name).run(func, args, kwargs)

    def process_batch(
        self,
        items: Iterable[Any],
        func: Callable[[Any], Any],
        *,
        collector: PartialFailureCollector | None = None,
        item_name: Callable[[Any], str] = str,
    ) -> PartialFailureCollector:
        """Run ``func(item)`` for every item; failures are collected, never raised mid-batch."""
        collector = collector if collector is not None else PartialFailureCollector()
        operation = _name_of(func)
        for item in items:
            try:
                result = self._loop(operation, f"{operation}({item_name(item)})").run(func, (item,), {})
            except Exception as error:
                collector.add_failure(item, error)
            else:
                collector.add_success(item, result)
        return collector

    def _loop(self, operation: str, label: str) -> _RetryLoop:
        return _RetryLoop(self.retry, operation, label, self.circuit_breaker, None, self.stats)



def record_breaker_transitions(breaker: CircuitBreaker, checkpoint: PipelineCheckpoint) -> None:
    """Keep ``breaker``'s openings in ``checkpoint``, where operators and ``stats`` see them.

    The breaker is an OPERATION item ``circuit-breaker/<name>``: each opening fails it (with
    the failure that tripped it), each return to CLOSED completes it, so the event log counts
    openings and its time to recovery is how long the service was cut off. Recording never
    disturbs the breaker: a failure to write is logged. Attaching twice is a no-op.
    """
    attached = breaker.__dict__.setdefault("_recorded_in", set())
    if id(checkpoint) in attached:
        return
    attached.add(id(checkpoint))
    key = f"{BREAKER_KEY_PREFIX}{breaker.name}"

    def record(_: CircuitBreaker, old: CircuitBreakerState, new: CircuitBreakerState) -> None:
        try:
            if new is CircuitBreakerState.OPEN and old is CircuitBreakerState.CLOSED:
                checkpoint.mark_started(CheckpointScope.OPERATION, key, force=True)
                checkpoint.mark_failed(
                    CheckpointScope.OPERATION,
                    key,
                    f"circuit breaker {breaker.name!r} opened after {breaker.failure_count} failures: "
                    f"{breaker.last_failure!r}",
                    category=ErrorCategory.TRANSIENT,
                )
            elif new is CircuitBreakerState.CLOSED:
                row = checkpoint.get(CheckpointScope.OPERATION, key)
                if row is not None and row["status"] == "failed":
                    checkpoint.mark_started(CheckpointScope.OPERATION, key)
                    checkpoint.mark_completed(CheckpointScope.OPERATION, key)
        except Exception:
            _log.warning("Could not record circuit breaker %r going %s", breaker.name, new.value, exc_info=True)

    breaker.add_listener(record)
