"""What operators see from the commands: metrics, history lookups, the report, and errors that say what to do."""

from __future__ import annotations

import json
from pathlib import Path

from cli_workspace import GOOD_CSV, Workspace
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus
from support.populated import populate

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"


def populated(workspace: Workspace) -> Workspace:
    workspace.db.parent.mkdir(parents=True, exist_ok=True)
    populate(workspace.db)
    return workspace


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


def test_stats_openmetrics_equals_stats_json_on_a_populated_database(workspace: Workspace) -> None:
    populated(workspace)
    document = workspace.json("osaa-recover", "stats", expect=1)
    result = workspace.run("osaa-recover", "stats", "--format", "openmetrics")
    assert result.returncode == 1, result.stderr
    assert result.stdout.endswith("# EOF\n")
    for name, stats in document["pipelines"].items():
        p = {"pipeline": name}
        for scope, statuses in stats["by_scope"].items():
            for status, count in statuses.items():
                assert metric(result.stdout, "osaa_checkpoint_items", **p, scope=scope, status=status) == count
        assert metric(result.stdout, "osaa_failure_ratio", **p) == stats["failure_rate_percent"] / 100
        assert metric(result.stdout, "osaa_retries_total", **p, cause="after_failure") == stats["retries"]["after_failure"]
        assert metric(result.stdout, "osaa_recoveries_total", **p) == stats["time_to_recovery"]["recovered"]
        assert metric(result.stdout, "osaa_unrecovered_failures", **p) == stats["time_to_recovery"]["unrecovered"]
        assert metric(result.stdout, "osaa_circuit_breaker_rejections_total", **p) == stats["circuit_breaker_rejections"]
    ingest = document["pipelines"]["ingest"]
    assert metric(result.stdout, "osaa_circuit_breaker_openings_total", pipeline="ingest", breaker="object-storage") == ingest["circuit_breaker_openings"] == 1
    export = document["pipelines"]["sqlmesh"]["exports"]["prod/indicators/indicators.parquet"]
    labels = {"pipeline": "sqlmesh", "environment": "prod", "key": "prod/indicators/indicators.parquet"}
    assert metric(result.stdout, "osaa_export_size_bytes", **labels) == export["bytes"] == 1547


def test_stats_format_json_is_the_json_document(workspace: Workspace) -> None:
    populated(workspace)
    by_flag = workspace.json("osaa-recover", "stats", expect=1)
    by_format = json.loads(workspace.run("osaa-recover", "stats", "--format", "json").stdout)
    assert by_format["totals"] == by_flag["totals"] and by_format["pipelines"].keys() == by_flag["pipelines"].keys()


def test_osaa_ingest_writes_the_textfile_when_a_directory_is_set(workspace: Workspace) -> None:
    workspace.write("raw/wdi/good.csv", GOOD_CSV)
    textfiles = workspace.path / "node-exporter"
    result = workspace.run("osaa-ingest", "raw", extra_env={"OSAA_MONITORING__TEXTFILE_DIRECTORY": str(textfiles)})
    assert result.returncode == 0, result.stderr
    text = (textfiles / "osaa_ingest.prom").read_text(encoding="utf-8")
    families = {family.name: family for family in parse_prometheus(text)}
    items = {tuple(sorted(s.labels.items())): s.value for s in families["osaa_checkpoint_items"].samples}
    assert items[(("pipeline", "ingest"), ("scope", "file"), ("status", "completed"))] == 1


def test_history_accepts_a_key_prefix(workspace: Workspace) -> None:
    populated(workspace)
    document = workspace.json("osaa-recover", "history", "--key", "prod/landing/wdi/", expect=0)
    assert document["keys"] == ["prod/landing/wdi/a.parquet", "prod/landing/wdi/b.parquet"]


def test_history_accepts_a_model_name(workspace: Workspace) -> None:
    from sqlmesh_osaa.checkpoint import PipelineCheckpoint

    workspace.db.parent.mkdir(parents=True)
    with PipelineCheckpoint("sqlmesh", workspace.db) as checkpoint:
        key = "osaa.indicators|123|2024-01-01T00:00:00|2024-01-02T00:00:00"
        checkpoint.mark_started("model", key, metadata={"model": "osaa.indicators", "environment": "prod"})
        checkpoint.mark_completed("model", key)
    document = workspace.json("osaa-recover", "history", "--key", "osaa.indicators", expect=0)
    assert document["keys"] == [key] and [e["to_status"] for e in document["events"]] == ["in_progress", "completed"]


def test_history_accepts_the_raw_file_path(workspace: Workspace) -> None:
    raw = workspace.write("raw/wdi/good.csv", GOOD_CSV)
    assert workspace.run("osaa-ingest", "raw").returncode == 0
    document = workspace.json("osaa-recover", "history", "--key", str(raw), expect=0)
    assert document["keys"] == ["prod/landing/wdi/good.parquet"]


def test_history_of_nothing_says_what_it_accepts(workspace: Workspace) -> None:
    populated(workspace)
    result = workspace.run("osaa-recover", "history", "--key", "no-such")
    assert result.returncode == 2
    assert "model name" in result.stderr and "key prefix" in result.stderr and "Traceback" not in result.stderr


def test_report_writes_one_self_contained_page(workspace: Workspace) -> None:
    populated(workspace)
    target = workspace.path / "out" / "report.html"
    document = workspace.json("osaa-recover", "report", "--html", str(target), expect=0)
    page = target.read_text(encoding="utf-8")
    assert document["html"] == str(target) and document["open_failures"] == 3
    assert page.count("<svg") >= 2 and "prod/indicators/indicators.parquet" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "<script" not in page and "bad[v2].parquet" in page


def test_report_to_an_unwritable_place_is_a_usage_error(workspace: Workspace) -> None:
    populated(workspace)
    (workspace.path / "a-file").write_text("x", encoding="utf-8")
    result = workspace.run("osaa-recover", "report", "--html", str(workspace.path / "a-file" / "report.html"))
    assert result.returncode == 2 and "Cannot write the report" in result.stderr and "Traceback" not in result.stderr


# -- errors name the thing and what to do ----------------------------------------------


def test_square_brackets_in_an_error_are_shown(workspace: Workspace) -> None:
    result = workspace.run("osaa-ingest", "raw[v2]")
    assert result.returncode == 2
    assert "raw[v2]" in result.stderr, result.stderr


def test_truncated_checkpoint_database_is_a_message_not_a_traceback(workspace: Workspace) -> None:
    workspace.write("raw/wdi/good.csv", GOOD_CSV)
    assert workspace.run("osaa-ingest", "raw").returncode == 0
    data = workspace.db.read_bytes()
    workspace.db.write_bytes(data[: len(data) * 3 // 10])
    for command in (("osaa-recover", "stats"), ("osaa-recover", "list-failed"), ("osaa-ingest", "raw")):
        result = workspace.run(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr and str(workspace.db) in result.stderr
        assert "restore it from a backup" in result.stderr


def test_dev_prefix_with_an_unknown_placeholder_is_a_configuration_error(workspace: Workspace) -> None:
    workspace.write("raw/wdi/good.csv", GOOD_CSV)
    result = workspace.run("osaa-ingest", "raw", extra_env={"OSAA_ENVIRONMENTS__DEV_PREFIX": "dev/{env}/{user}"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "environments.dev_prefix" in result.stderr and "{env}" in result.stderr and "'user'" in result.stderr


def test_path_like_environment_is_a_usage_error(workspace: Workspace) -> None:
    workspace.write("raw/wdi/good.csv", GOOD_CSV)
    for environment in ("../../x", ""):
        result = workspace.run("osaa-ingest", "raw", "--env", environment)
        assert result.returncode == 2, result.stderr
        assert "is not a SQLMesh environment name" in result.stderr
    assert not workspace.bucket.exists() or not any(workspace.bucket.rglob("*.parquet"))


def test_absolute_prefix_is_a_usage_error(workspace: Workspace) -> None:
    workspace.write("raw/wdi/good.csv", GOOD_CSV)
    for prefix in ("/abs", "", "a/../b"):
        result = workspace.run("osaa-ingest", "raw", "--prefix", prefix)
        assert result.returncode == 2, (prefix, result.stderr)
        assert "is not a relative object prefix" in result.stderr


def test_png_named_csv_is_named_as_an_image(workspace: Workspace) -> None:
    target = workspace.path / "raw" / "wdi" / "chart.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(PNG)
    document = workspace.json("osaa-ingest", "raw", expect=1)
    assert "a PNG image" in document["failures"][0]["message"], document
    assert "Malformed CSV" not in document["failures"][0]["message"]
