"""A plan killed with SIGKILL mid-evaluation is reconciled by the next plan.

The kill happens right after the export staged its parquet, before SQLMesh audited it:
nothing is recorded in state, so nothing may reach prod, and the next plan must close the
dead run's checkpoints, discard its staged output and publish what it then audits. The
killed plan's MODEL checkpoints were still in memory (they are made durable in batches): the
next plan rebuilds the completions SQLMesh recorded and evaluates the killed one again.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmesh_project import Project, local_project

from sqlmesh_osaa.commit_log import CommitLog
from sqlmesh_osaa.commit_protocol import decision_history
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy
from sqlmesh_osaa.fault_points import AFTER_COMMIT_DECISION, FAULT_POINT_ENV
from sqlmesh_osaa.integration.export_kind import EXPORT_STAGED
from sqlmesh_osaa.integration.hooks import PUBLICATION_STARTED
from sqlmesh_osaa.integration.reconciliation import NOT_RECORDED

pytestmark = pytest.mark.slow


@dataclass
class Story:
    project: Project
    killed_exit_code: int
    prod_after_kill: dict[str, str]
    staged_after_kill: dict[str, str]
    model_rows_after_kill: list[dict[str, Any]]
    recorded_by_killed_plan: set[str]


# No batch of MODEL checkpoints is due by age before the kill, however slow the machine.
NO_FLUSH_BY_AGE = {"OSAA_CHECKPOINT__MODEL_FLUSH_SECONDS": "3600"}


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    project = local_project(tmp_path_factory.mktemp("crash"))
    killed = project.plan(check=False, extra_env={FAULT_POINT_ENV: EXPORT_STAGED, **NO_FLUSH_BY_AGE})
    observed = dict(
        killed_exit_code=killed.returncode,
        prod_after_kill=project.objects("prod/"),
        staged_after_kill=project.objects("staging/exports/osaa.indicators_export/"),
        model_rows_after_kill=project.checkpoints("model"),
        recorded_by_killed_plan=project.recorded_models(),
    )
    project.plan()
    return Story(project=project, **observed)


def test_plan_was_killed_after_staging_the_export_with_its_model_checkpoints_in_memory(story: Story) -> None:
    assert story.killed_exit_code == -signal.SIGKILL
    assert any(key.endswith("indicators/indicators.parquet") for key in story.staged_after_kill)
    assert story.model_rows_after_kill == []
    assert "osaa.indicators_export" not in story.recorded_by_killed_plan
    assert {"osaa_raw.wdi", "osaa.indicators"} <= story.recorded_by_killed_plan


def test_next_plan_rebuilds_the_completions_the_killed_plan_recorded_in_sqlmesh_state(story: Story) -> None:
    rebuilt = [row for row in story.project.checkpoints("model") if row["metadata"].get("phase") == "rebuilt"]
    assert sorted(row["metadata"]["model"] for row in rebuilt) == sorted(story.recorded_by_killed_plan)
    assert {(row["status"], row["attempt"]) for row in rebuilt} == {("completed", 1)}
    assert all(row["metadata"]["rebuilt_from"] == "SQLMesh interval record" for row in rebuilt)


def test_nothing_reaches_prod_from_a_killed_run(story: Story) -> None:
    assert story.prod_after_kill == {}


def test_next_plan_publishes_the_audited_export(story: Story) -> None:
    assert sorted(story.project.objects("prod/")) == [
        "prod/indicators/indicators.parquet",
        "prod/landing/opri/OPRI_DATA_NATIONAL.parquet",
        "prod/landing/sdg/SDG_DATA_NATIONAL.parquet",
        "prod/landing/wdi/WDI_sample.parquet",
    ]


def test_next_plan_evaluates_the_killed_evaluation_again_and_completes_it(story: Story) -> None:
    (export,) = [row for row in story.project.checkpoints("model") if row["key"].startswith("osaa.indicators_export|")]
    assert (export["status"], export["attempt"], export["metadata"]["phase"]) == ("completed", 1, "recorded")
    history = _history(story.project, export["key"])
    assert [(old, new) for old, new, _ in history] == [("pending", "in_progress"), ("in_progress", "completed")]


def test_every_model_of_the_project_ends_with_one_completed_checkpoint(story: Story) -> None:
    rows = story.project.checkpoints("model")
    assert {row["status"] for row in rows} == {"completed"}
    assert sorted(row["metadata"]["model"] for row in rows) == sorted(story.project.recorded_models())


def test_next_plan_records_the_killed_plan_as_failed_and_its_success_recovers_it(story: Story) -> None:
    plans = story.project.checkpoints("pipeline")
    (killed,) = [row for row in plans if row["metadata"].get("resolved_by")]
    (recovered,) = [row for row in plans if row is not killed]
    events = story.project._query(
        "SELECT to_status, coalesce(error_message, '') FROM checkpoint_events WHERE scope = 'pipeline' AND key = ? ORDER BY seq",
        [killed["key"]],
    )
    assert [status for status, _ in events] == ["in_progress", "failed", "in_progress", "completed"]
    assert "interrupted" in events[1][1]
    assert killed["metadata"]["resolved_by"] == recovered["key"] and recovered["status"] == "completed"


def test_next_plan_keeps_only_the_audited_staged_output(story: Story) -> None:
    staged = story.project.objects("staging/exports/osaa.indicators_export/")
    assert len([key for key in staged if key.endswith("/_osaa_output.json")]) == 1


def _history(project: Project, key: str) -> list[tuple[str, str, str]]:
    rows = project._query(
        "SELECT from_status, to_status, coalesce(error_message, '') FROM checkpoint_events "
        "WHERE scope = 'model' AND key = ? ORDER BY seq",
        [key],
    )
    return [tuple(row) for row in rows]


def test_model_checkpoints_are_durable_before_publication_starts(tmp_path: Path) -> None:
    project = local_project(tmp_path)

    killed = project.plan(check=False, extra_env={FAULT_POINT_ENV: PUBLICATION_STARTED, **NO_FLUSH_BY_AGE})

    assert killed.returncode == -signal.SIGKILL and project.objects("prod/") == {}
    rows = project.checkpoints("model")
    assert {(row["status"], row["metadata"]["phase"]) for row in rows} == {("completed", "recorded")}
    assert sorted(row["metadata"]["model"] for row in rows) == sorted(project.recorded_models())
    assert "osaa.indicators_export" in project.recorded_models()


@dataclass
class PublicationStory:
    project: Project
    killed_exit_code: int
    prod_after_kill: dict[str, str]
    journal_after_kill: list[dict[str, Any]]
    decisions_after_kill: list[str]
    next_plan_output: str
    prod_after_next_plan: dict[str, str]


@pytest.fixture(scope="module")
def publication_story(tmp_path_factory: pytest.TempPathFactory) -> PublicationStory:
    """Killed once the publication's commit is decided, before its first production copy.

    The three ingest transactions of the first plan decide their commits first, so the
    publication's decision is the fourth.
    """
    project = local_project(tmp_path_factory.mktemp("crash-publication"))
    killed = project.plan(check=False, extra_env={FAULT_POINT_ENV: f"{AFTER_COMMIT_DECISION}:4"})
    prod_after_kill = project.objects("prod/")
    journal_after_kill = _publication_journal(project)
    decisions_after_kill = [
        row["transaction_id"] for row in decision_history(CommitLog(project.store, ErrorHandler(RetryPolicy(1))))
        if row["state"] == "applying"
    ]
    next_plan = project.plan()
    return PublicationStory(
        project=project,
        killed_exit_code=killed.returncode,
        prod_after_kill=prod_after_kill,
        journal_after_kill=journal_after_kill,
        decisions_after_kill=decisions_after_kill,
        next_plan_output=next_plan.stdout,
        prod_after_next_plan=project.objects("prod/"),
    )


def test_publication_was_killed_after_deciding_its_commit(publication_story: PublicationStory) -> None:
    assert publication_story.killed_exit_code == -signal.SIGKILL
    assert publication_story.prod_after_kill == {}
    # The decision is in the store's commit log; the local row still says open.
    [row] = publication_story.journal_after_kill
    assert row["metadata"]["phase"] == "open"
    assert publication_story.decisions_after_kill == [row["key"][len("transaction/") :]]


def test_next_plan_with_nothing_to_change_completes_the_killed_publication(publication_story: PublicationStory) -> None:
    assert "No changes to plan" in publication_story.next_plan_output
    assert sorted(publication_story.prod_after_next_plan) == [
        "prod/indicators/indicators.parquet",
        "prod/landing/opri/OPRI_DATA_NATIONAL.parquet",
        "prod/landing/sdg/SDG_DATA_NATIONAL.parquet",
        "prod/landing/wdi/WDI_sample.parquet",
    ]
    assert [row["status"] for row in _publication_journal(publication_story.project)] == ["completed"]


def _publication_journal(project: Project) -> list[dict[str, Any]]:
    return [row for row in project.checkpoints("operation") if row["key"].startswith("transaction/publish-")]


RECONCILE_PROGRAM = """
import json
from sqlmesh_osaa.integration.reconciliation import reconcile
report = reconcile(".")
print(json.dumps({"interrupted": report.interrupted, "rebuilt": report.rebuilt, "discarded": report.discarded,
                  "published": [p.environment for p in report.published], "ok": report.ok}))
"""


def test_reconcile_closes_a_killed_run_rebuilds_what_it_recorded_and_discards_its_unrecorded_output(
    tmp_path: Path,
) -> None:
    project = local_project(tmp_path)
    project.plan(check=False, extra_env={FAULT_POINT_ENV: EXPORT_STAGED, **NO_FLUSH_BY_AGE})

    result = project.python(RECONCILE_PROGRAM)

    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(key.split("|")[0] for key in report["interrupted"]) == ["plan"]
    assert sorted(key.split("|")[0] for key in report["rebuilt"]) == sorted(project.recorded_models())
    assert [reason for prefix, reason in report["discarded"].items() if "osaa.indicators_export" in prefix] == [
        NOT_RECORDED
    ]
    assert report["ok"] and project.objects("prod/") == {}
    assert project.objects("staging/exports/osaa.indicators_export/") == {}


def test_next_run_with_no_interval_to_process_completes_a_killed_publication(tmp_path: Path) -> None:
    project = local_project(tmp_path)
    killed = project.plan(check=False, extra_env={FAULT_POINT_ENV: f"{AFTER_COMMIT_DECISION}:4"})
    assert killed.returncode == -signal.SIGKILL
    assert project.objects("prod/") == {}

    project.sqlmesh("run")

    assert "prod/indicators/indicators.parquet" in project.objects("prod/")
    assert [row["status"] for row in _publication_journal(project)] == ["completed"]
