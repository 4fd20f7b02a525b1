"""Prometheus metrics of a checkpoint database: they parse, follow the conventions and equal the monitoring figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus
from support.populated import populate

from sqlmesh_osaa.checkpoint import PipelineCheckpoint
from sqlmesh_osaa.metrics import OPENMETRICS, PROMETHEUS, render, textfile_path, write_textfile
from sqlmesh_osaa.monitoring import database_stats


@pytest.fixture
def report(tmp_path: Path) -> dict:
    populate(tmp_path / "checkpoints.duckdb")
    db = tmp_path / "checkpoints.duckdb"
    with PipelineCheckpoint("ingest", db) as ingest, PipelineCheckpoint("sqlmesh", db) as sqlmesh:
        return database_stats([ingest, sqlmesh])


def samples(text: str, parser=parse_openmetrics) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parser(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_monitoring_counts_the_breaker_opening_its_open_time_and_the_refused_call(report: dict) -> None:
    ingest = report["pipelines"]["ingest"]
    breaker = ingest["circuit_breakers"]["object-storage"]
    assert (breaker["openings"], breaker["open"]) == (1, False)
    assert breaker["open_seconds"] >= 0
    assert ingest["circuit_breaker_openings"] == 1
    assert ingest["circuit_breaker_rejections"] == 1


def test_openmetrics_output_parses_and_equals_the_figures(report: dict) -> None:
    found = samples(render(report, OPENMETRICS))
    ingest, sqlmesh = report["pipelines"]["ingest"], report["pipelines"]["sqlmesh"]
    assert value(found, "osaa_checkpoint_items", pipeline="ingest", scope="file", status="failed") == ingest["by_scope"]["file"]["failed"] == 2
    assert value(found, "osaa_failure_ratio", pipeline="ingest") == pytest.approx(ingest["failure_rate_percent"] / 100)
    assert value(found, "osaa_retries_total", pipeline="ingest", cause="after_failure") == ingest["retries"]["after_failure"]
    assert value(found, "osaa_recoveries_total", pipeline="ingest") == ingest["time_to_recovery"]["recovered"]
    assert value(found, "osaa_time_to_recovery_seconds_count", pipeline="ingest") == ingest["time_to_recovery"]["recovered"]
    assert value(found, "osaa_circuit_breaker_openings_total", pipeline="ingest", breaker="object-storage") == 1
    assert value(found, "osaa_circuit_breaker_rejections_total", pipeline="ingest") == 1
    assert value(found, "osaa_last_success_timestamp_seconds", pipeline="sqlmesh") == sqlmesh["last_success_at"].timestamp()
    key = "prod/landing/wdi/WDI.parquet"
    assert value(found, "osaa_export_size_bytes", pipeline="sqlmesh", environment="prod", key=key) == 1786
    assert value(found, "osaa_published_objects_total", pipeline="sqlmesh", environment="prod") == 1
    assert value(found, "osaa_published_bytes_total", pipeline="sqlmesh", environment="prod") == 1547


def test_metric_names_follow_prometheus_conventions(report: dict) -> None:
    for family in parse_openmetrics(render(report, OPENMETRICS)):
        assert family.name.startswith("osaa_") and family.name == family.name.lower()
        if family.type == "counter":
            assert all(sample.name == f"{family.name}_total" for sample in family.samples)
        if family.unit:
            assert family.name.endswith(f"_{family.unit}")


def test_label_values_with_quotes_and_brackets_survive(report: dict) -> None:
    report["pipelines"]['we"ird[1]'] = report["pipelines"]["ingest"]
    found = samples(render(report, OPENMETRICS))
    assert value(found, "osaa_checkpoint_interrupted_items", pipeline='we"ird[1]') == 0


def test_textfile_is_the_prometheus_text_format_of_the_same_numbers(tmp_path: Path) -> None:
    populate(tmp_path / "checkpoints.duckdb")
    with PipelineCheckpoint("ingest", tmp_path / "checkpoints.duckdb") as ingest:
        path = write_textfile(tmp_path / "textfile", ingest)
        figures = database_stats([ingest])["pipelines"]["ingest"]
    assert path == textfile_path(tmp_path / "textfile", "ingest") and path.name == "osaa_ingest.prom"
    found = samples(path.read_text(encoding="utf-8"), parse_prometheus)
    assert value(found, "osaa_checkpoint_items", pipeline="ingest", scope="file", status="completed") == figures["by_scope"]["file"]["completed"]
    assert value(found, "osaa_retries_total", pipeline="ingest", cause="after_failure") == figures["retries"]["after_failure"]
    assert [p.name for p in path.parent.iterdir()] == ["osaa_ingest.prom"]


def test_no_textfile_directory_writes_nothing(tmp_path: Path) -> None:
    with PipelineCheckpoint("ingest", tmp_path / "checkpoints.duckdb") as ingest:
        assert write_textfile(None, ingest) is None
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoints.duckdb"]


def test_prometheus_flavour_declares_counters_by_their_sample_name(report: dict) -> None:
    text = render(report, PROMETHEUS)
    assert "# TYPE osaa_retries_total counter" in text and "# EOF" not in text
