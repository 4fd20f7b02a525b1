"""PartialFailureCollector: a batch keeps going and says what failed, why and how often."""

from __future__ import annotations

import logging
import pickle
import threading

import pytest
from botocore.exceptions import ClientError

from sqlmesh_osaa.error_handler import ErrorCategory, FailureRecord, PartialFailureCollector
from sqlmesh_osaa.exceptions import PartialFailureError, TransientError


def slow_down() -> ClientError:
    return ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")


@pytest.fixture
def collector() -> PartialFailureCollector:
    collector = PartialFailureCollector()
    collector.add_success("good1.csv", "landing/good1.parquet")
    collector.add_failure("bad.csv", ValueError("malformed header"))
    collector.add_success("good2.csv", "landing/good2.parquet")
    collector.add_failure("big.csv", slow_down())
    collector.add_failure("odd.csv", RuntimeError("odd"))
    return collector


def test_an_empty_collector_has_no_failures() -> None:
    collector = PartialFailureCollector()

    assert not collector.has_failures()
    assert (collector.get_success_count(), collector.get_failure_count(), collector.get_total_count()) == (0, 0, 0)


def test_counts_successes_failures_and_total(collector: PartialFailureCollector) -> None:
    assert collector.has_failures()
    assert (collector.get_success_count(), collector.get_failure_count(), collector.get_total_count()) == (2, 3, 5)


def test_successes_keep_items_and_results_in_order(collector: PartialFailureCollector) -> None:
    assert collector.successes == ["good1.csv", "good2.csv"]
    assert collector.results == ["landing/good1.parquet", "landing/good2.parquet"]


def test_each_failure_records_item_error_category_message_and_type(collector: PartialFailureCollector) -> None:
    first = collector.failures[0]

    assert isinstance(first, FailureRecord)
    assert (first.item, first.category, first.message, first.error_type) == (
        "bad.csv",
        ErrorCategory.PERMANENT,
        "malformed header",
        "ValueError",
    )
    assert isinstance(first.error, ValueError)


def test_failures_by_category_counts_every_category(collector: PartialFailureCollector) -> None:
    assert collector.failures_by_category() == {
        ErrorCategory.TRANSIENT: 1,
        ErrorCategory.PERMANENT: 1,
        ErrorCategory.UNKNOWN: 1,
        ErrorCategory.DATA: 0,
    }


def test_summary_gives_counts_categories_types_and_failed_items(collector: PartialFailureCollector) -> None:
    assert collector.summary() == {
        "total": 5,
        "succeeded": 2,
        "failed": 3,
        "by_category": {"transient": 1, "permanent": 1, "unknown": 1, "data": 0},
        "by_error_type": {"ValueError": 1, "ClientError": 1, "RuntimeError": 1},
        "failed_items": [
            {"item": "bad.csv", "category": "permanent", "error_type": "ValueError", "message": "malformed header"},
            {
                "item": "big.csv",
                "category": "transient",
                "error_type": "ClientError",
                "message": str(collector.failures[1].error),
            },
            {"item": "odd.csv", "category": "unknown", "error_type": "RuntimeError", "message": "odd"},
        ],
    }


def test_log_summary_writes_one_count_line_and_one_warning_per_failure(
    collector: PartialFailureCollector, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="sqlmesh_osaa.error_handler"):
        collector.log_summary()

    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert infos == ["Batch finished: 5 items, 2 succeeded, 3 failed (transient: 1, permanent: 1, unknown: 1, data: 0)"]
    assert len(warnings) == 3
    assert all(item in line for item, line in zip(["bad.csv", "big.csv", "odd.csv"], warnings))
    assert "[permanent]" in warnings[0] and "malformed header" in warnings[0]
    assert "[transient]" in warnings[1] and "SlowDown" in warnings[1]


def test_log_summary_writes_to_the_given_logger(
    collector: PartialFailureCollector, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ingest"):
        collector.log_summary(logging.getLogger("ingest"))

    assert {r.name for r in caplog.records} == {"ingest"}
    assert len(caplog.records) == 4


def test_raise_if_failures_is_silent_when_everything_succeeded() -> None:
    collector = PartialFailureCollector()
    collector.add_success("a.csv")

    collector.raise_if_failures()


def test_raise_if_failures_carries_every_success_and_failure(collector: PartialFailureCollector) -> None:
    with pytest.raises(PartialFailureError) as raised:
        collector.raise_if_failures("File processing had partial failures")

    error = raised.value
    assert error.successes == ["good1.csv", "good2.csv"]
    assert [f.item for f in error.failures] == ["bad.csv", "big.csv", "odd.csv"]
    assert str(error) == "File processing had partial failures: 3 failed, 2 succeeded"


def test_raise_if_failures_has_a_default_message() -> None:
    collector = PartialFailureCollector()
    collector.add_failure("a.csv", TransientError("down"))

    with pytest.raises(PartialFailureError, match="^Batch processing had partial failures"):
        collector.raise_if_failures()


def test_a_batch_with_a_permanent_failure_is_permanent(collector: PartialFailureCollector) -> None:
    with pytest.raises(PartialFailureError) as raised:
        collector.raise_if_failures()

    assert raised.value.category is ErrorCategory.PERMANENT


def test_a_batch_with_only_transient_failures_is_transient() -> None:
    collector = PartialFailureCollector()
    collector.add_failure("a.csv", slow_down())
    collector.add_failure("b.csv", ConnectionError("reset"))

    with pytest.raises(PartialFailureError) as raised:
        collector.raise_if_failures()

    assert raised.value.category is ErrorCategory.TRANSIENT


def test_the_partial_failure_error_survives_pickling(collector: PartialFailureCollector) -> None:
    with pytest.raises(PartialFailureError) as raised:
        collector.raise_if_failures()

    copy = pickle.loads(pickle.dumps(raised.value))

    assert copy.successes == ["good1.csv", "good2.csv"]
    assert [f.item for f in copy.failures] == ["bad.csv", "big.csv", "odd.csv"]


def test_many_threads_can_record_outcomes_at_once() -> None:
    collector = PartialFailureCollector()

    def record(thread: int) -> None:
        for i in range(500):
            if i % 5 == 0:
                collector.add_failure((thread, i), ValueError("bad"))
            else:
                collector.add_success((thread, i), i)

    workers = [threading.Thread(target=record, args=(t,)) for t in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    assert (collector.get_success_count(), collector.get_failure_count()) == (3200, 800)
    assert len(collector.results) == 3200
