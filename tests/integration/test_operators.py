"""What operators see and hear, on the example project driven by the real ``sqlmesh`` CLI.

Story: the project's ``notification_targets`` holds a Slack webhook that points at a local
HTTP server. A first plan succeeds. A new SDG file brings a row without a value: the source
model's own audits pass, and the master table's ``not_null`` audit fails, so the bad row
sits upstream of the failing model. The file is fixed, and one ``osaa-recover retry --apply``
restates the source that holds it. Then the report is opened in headless Chromium.
A second project's publication cannot be written (a file stands where the export's
directory must be) and must be announced once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from support import processes
from support.png import colours
from support.webhook import Webhook

from sqlmesh_project import COMMAND_TIMEOUT, Completed, Project, local_project, s3_project

from sqlmesh_osaa.checkpoint import PipelineCheckpoint
from sqlmesh_osaa.transaction_manager import TransactionManager

pytestmark = pytest.mark.slow

NULL_VALUE_ROW = "INDICATOR_ID,COUNTRY_ID,YEAR,VALUE,MAGNITUDE,QUALIFIER\nXX.NEW,KEN,2022,,,\n"
FIXED_ROW = NULL_VALUE_ROW.replace("2022,,,", "2022,5.0,,")
CHROMIUM_TIMEOUT = 120
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
RED, GREEN = (0xD9, 0x30, 0x25), (0x34, 0xA8, 0x53)
EXPORT_KEY = "prod/indicators/indicators.parquet"


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook().start()
    try:
        yield hook
    finally:
        hook.stop()


def notify_to(project: Project, url: str) -> None:
    """Slack as a team would set it up for SQLMesh: failures of scheduled runs."""
    with (project.path / "config.yaml").open("a", encoding="utf-8") as config:
        config.write(f"\nnotification_targets:\n  - type: slack_webhook\n    url: {url}\n    notify_on: [run_failure]\n")


@dataclass
class Story:
    project: Project
    after_success: list[dict[str, Any]]
    after_bad: list[dict[str, Any]]
    list_failed_bad: Completed
    advice: Completed
    applied: Completed
    list_failed_fixed: Completed
    stats_fixed: Completed
    openmetrics_fixed: Completed
    report: Path


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, webhook: Webhook) -> Story:
    project = local_project(tmp_path_factory.mktemp("operators"))
    notify_to(project, webhook.url)
    project.plan()
    after_success = list(webhook.received)
    project.write("data/raw/sdg/SDG_update.csv", NULL_VALUE_ROW)
    assert project.plan(None, "--restate-model", "osaa_raw.sdg", check=False).returncode != 0
    after_bad = list(webhook.received)
    list_failed_bad = project.sqlmesh("osaa-recover", "list-failed", "--json", check=False)
    advice = project.sqlmesh("osaa-recover", "retry", "--scope", "model", "--json", check=False)
    project.write("data/raw/sdg/SDG_update.csv", FIXED_ROW)
    applied = project.sqlmesh("osaa-recover", "retry", "--scope", "model", "--apply", "--json", check=False)
    report = project.path / "report.html"
    assert project.sqlmesh("osaa-recover", "report", "--html", str(report), check=False).returncode == 0
    return Story(
        project=project,
        after_success=after_success,
        after_bad=after_bad,
        list_failed_bad=list_failed_bad,
        advice=advice,
        applied=applied,
        list_failed_fixed=project.sqlmesh("osaa-recover", "list-failed", "--json", check=False),
        stats_fixed=project.sqlmesh("osaa-recover", "stats", "--json", check=False),
        openmetrics_fixed=project.sqlmesh("osaa-recover", "stats", "--format", "openmetrics", check=False),
        report=report,
    )


def test_a_successful_plan_sends_no_notification(story: Story) -> None:
    assert story.after_success == []


def test_a_failing_audit_sends_exactly_one_notification_with_model_environment_and_reason(story: Story) -> None:
    assert len(story.after_bad) == 1, story.after_bad
    text = json.dumps(story.after_bad[0])
    assert "sqlmesh-osaa: publication held back" in text
    assert "osaa.indicators" in text and "Environment: prod" in text
    assert "blocking audit 'not_null' failed: 1 row(s)" in text and "data error" in text


def test_the_failed_audit_is_a_data_error_in_list_failed(story: Story) -> None:
    assert story.list_failed_bad.returncode == 1
    items = json.loads(story.list_failed_bad.stdout)["items"]
    by_scope = {item["scope"]: item for item in items}
    assert by_scope["model"]["key"].startswith("osaa.indicators|")
    assert by_scope["model"]["error_category"] == "data"
    assert "not_null" in by_scope["pipeline"]["error_message"] and by_scope["pipeline"]["error_category"] == "data"


def test_retry_without_apply_prints_the_plan_that_restates_the_upstream_source(story: Story) -> None:
    assert story.advice.returncode == 1, story.advice.stderr
    (item,) = json.loads(story.advice.stdout)["items"]
    assert item["outcome"] == "planned"
    assert "--restate-model osaa_raw.sdg" in item["action"]
    assert "--restate-model osaa.indicators" not in item["action"]


def test_retry_apply_fixes_the_upstream_bad_row_in_one_command(story: Story) -> None:
    assert story.applied.returncode == 0, story.applied.stdout + story.applied.stderr
    (item,) = json.loads(story.applied.stdout)["items"]
    assert (item["outcome"], item["action"]) == ("recovered", "sqlmesh plan --restate-model osaa_raw.sdg")
    assert ("KEN", "XX.NEW", 2022, 5.0, "sdg") in story.project.parquet_rows("prod/indicators/indicators.parquet")


def test_after_the_fix_list_failed_exits_0(story: Story) -> None:
    assert story.list_failed_fixed.returncode == 0, story.list_failed_fixed.stdout
    assert json.loads(story.list_failed_fixed.stdout)["count"] == 0


def test_after_the_fix_stats_show_the_time_to_recovery(story: Story) -> None:
    assert story.stats_fixed.returncode == 0, story.stats_fixed.stdout
    recovery = json.loads(story.stats_fixed.stdout)["pipelines"]["sqlmesh"]["time_to_recovery"]
    assert recovery["recovered"] >= 2 and recovery["unrecovered"] == 0
    assert recovery["max_seconds"] > 0


def test_superseded_plan_failure_is_completed_and_names_what_resolved_it(story: Story) -> None:
    plans = story.project.checkpoints("pipeline")
    failed_first = [row for row in plans if row["metadata"].get("outcome") == "failed"]
    assert failed_first and all(row["status"] == "completed" for row in failed_first)
    assert all(row["metadata"]["resolved_by"].startswith("plan|prod|") for row in failed_first)


def test_openmetrics_after_the_fix_match_stats_json(story: Story) -> None:
    stats = json.loads(story.stats_fixed.stdout)["pipelines"]["sqlmesh"]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(story.openmetrics_fixed.stdout)
        for s in family.samples
    }
    p = (("pipeline", "sqlmesh"),)
    assert samples[("osaa_recoveries_total", p)] == stats["time_to_recovery"]["recovered"]
    assert samples[("osaa_time_to_recovery_max_seconds", p)] == pytest.approx(stats["time_to_recovery"]["max_seconds"])
    export = (("environment", "prod"), ("key", "prod/indicators/indicators.parquet"), ("pipeline", "sqlmesh"))
    assert samples[("osaa_export_size_bytes", export)] == stats["exports"]["prod/indicators/indicators.parquet"]["bytes"]
    assert samples[("osaa_published_objects_total", (("environment", "prod"), ("pipeline", "sqlmesh")))] == stats["published"]["prod"]["objects"]


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Headless Chromium in its own process group, reaped whatever happens."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    command = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={cwd / 'chromium-profile'}",
               "--enable-logging=stderr", "--v=0", *args]
    return processes.run(command, cwd=cwd, timeout=CHROMIUM_TIMEOUT)


def test_report_renders_in_headless_chromium_with_its_charts_and_no_console_error(story: Story, tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    shot = _chromium("--window-size=1000,1400", f"--screenshot={screenshot}", story.report.as_uri(), cwd=tmp_path)
    assert shot.returncode == 0, shot.stderr
    console = [line for line in shot.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    width, height, pixels = colours(screenshot)
    assert (width, height) == (1000, 1400)
    assert pixels[GREEN] > 200 and pixels[RED] > 50, "the runs chart shows completed (green) and failed (red) runs"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / "report.png")
    dom = _chromium("--dump-dom", story.report.as_uri(), cwd=tmp_path).stdout
    assert dom.count('class="run failed"') >= 1 and dom.count('class="bar"') >= 3


def test_console_errors_of_a_page_are_seen(tmp_path: Path) -> None:
    """The check above can fail: a page with a script error shows up in Chromium's log."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><script>undefinedFunction();</script></body></html>', encoding="utf-8")
    result = _chromium(f"--screenshot={tmp_path / 'broken.png'}", page.as_uri(), cwd=tmp_path)
    assert any(":CONSOLE" in line and "undefinedFunction" in line for line in result.stderr.splitlines())


def test_a_publication_that_cannot_be_written_sends_exactly_one_notification(tmp_path: Path, webhook: Webhook) -> None:
    project = local_project(tmp_path)
    notify_to(project, webhook.url)
    blocker = project.path / ".osaa" / "storage" / "osaa" / "prod" / "indicators"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the export's directory must be", encoding="utf-8")
    before = len(webhook.received)
    assert project.plan(check=False).returncode != 0
    received = webhook.received[before:]
    assert len(received) == 1, received
    text = json.dumps(received[0])
    assert "sqlmesh-osaa: publication failed" in text and "Environment: prod" in text
    assert "osaa.indicators_export" in text and "publishing to prod/ failed" in text


@pytest.mark.s3
def test_object_storage_down_announces_the_breaker_opening_once(
    tmp_path: Path, webhook: Webhook, s3_server: str, fault_proxy: Any, s3_credentials_for_tests: None
) -> None:
    project = s3_project(tmp_path, s3_server)
    project.env.update(
        OSAA_STORAGE__ENDPOINT_URL=fault_proxy.url,
        OSAA_RETRY__MAX_ATTEMPTS="1",
        OSAA_CIRCUIT_BREAKER__FAILURE_THRESHOLD="2",
    )
    notify_to(project, webhook.url)
    fault_proxy.fail_always(503, "ServiceUnavailable")
    before = len(webhook.received)
    assert project.plan(check=False).returncode != 0
    texts = [json.dumps(message) for message in webhook.received[before:]]
    opened = [text for text in texts if "sqlmesh-osaa: circuit breaker opened" in text]
    assert len(opened) == 1, texts
    assert "Environment: prod" in opened[0] and "object-storage" in opened[0]


@pytest.mark.s3
def test_a_second_writer_taking_the_export_key_during_a_plan_sends_exactly_one_conflict_notification(
    tmp_path: Path, webhook: Webhook, s3_server: str, fault_proxy: Any, s3_credentials_for_tests: None
) -> None:
    """The plan's publication is held at its first staged copy; meanwhile another writer commits the export key."""
    project = s3_project(tmp_path, s3_server)
    project.env.update(OSAA_STORAGE__ENDPOINT_URL=fault_proxy.url)
    notify_to(project, webhook.url)
    held = fault_proxy.hold_next(["CopyObject"], path_contains="/_osaa/versions/publish-")
    before = len(webhook.received)
    finished: list[Completed] = []
    plan = threading.Thread(target=lambda: finished.append(project.plan(check=False)))
    plan.start()
    try:
        assert held.reached.wait(COMMAND_TIMEOUT), "the plan never staged its publication"
        other = tmp_path / "other.parquet"
        other.write_bytes(b"what the other writer publishes")
        with PipelineCheckpoint("other-writer", tmp_path / "other.duckdb") as checkpoint:
            with TransactionManager(store=project.store, checkpoint=checkpoint, recover=False) as writer:
                writer.upload_file(other, EXPORT_KEY)
    finally:
        held.release()
        plan.join(COMMAND_TIMEOUT)
    (result,) = finished
    assert result.returncode != 0, result.stdout
    received = webhook.received[before:]
    assert len(received) == 1, received
    text = json.dumps(received[0])
    assert "sqlmesh-osaa: transaction conflict" in text and "Environment: prod" in text
    assert "Model: osaa.indicators_export" in text
    assert f"TransactionConflictError: Transaction {writer.transaction_id} committed '{EXPORT_KEY}' first" in text


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_plan_or_run_while_the_warehouse_is_held_says_so_without_a_traceback(command: str, tmp_path: Path) -> None:
    project = local_project(tmp_path)
    hold = [sys.executable, "-c", "import duckdb, sys, time\nc = duckdb.connect('warehouse.duckdb')\nprint('held', flush=True)\ntime.sleep(120)"]
    arguments = ["plan", "--auto-apply", "--no-prompts"] if command == "plan" else ["run"]
    with processes.spawn(hold, cwd=project.path, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = project.sqlmesh(*arguments, check=False, extra_env={"OSAA_CHECKPOINT__LOCK_TIMEOUT_SECONDS": "0.5"})
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    assert "Initializing new project state" not in output, output
    assert f"{project.path / 'warehouse.duckdb'} is locked by another process, PID {holder.pid}" in output
    assert "run this command again" in output
