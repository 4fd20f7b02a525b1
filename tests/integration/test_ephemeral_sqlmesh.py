"""`sqlmesh plan` on ephemeral runners: two fresh copies of the project share nothing but the bucket."""

from __future__ import annotations

import json

import pytest
from sqlmesh_project import Project, copy_example, s3_project

from sqlmesh_osaa.checkpoint.lease import Holder, RunnerLease

pytestmark = [pytest.mark.slow, pytest.mark.s3]


def test_a_plan_in_a_fresh_directory_continues_from_the_state_and_checkpoints_the_last_plan_pushed(
    tmp_path, s3_server, s3_credentials_for_tests
):
    first = s3_project(tmp_path / "day-1", s3_server)
    sync = {
        "OSAA_CHECKPOINT__SYNC__URL": f"s3://{first.store.bucket}/runners/indicators",
        "OSAA_CHECKPOINT__SYNC__SQLMESH_STATE_FILE": "warehouse.duckdb",
    }
    first.env.update(sync, OSAA_CHECKPOINT__SYNC__RUNNER_NAME="day-1")
    first.plan("prod")
    published = first.objects("prod/")

    second = Project(path=copy_example(tmp_path / "day-2" / "project"), env={**first.env}, store=first.store)
    second.env["OSAA_CHECKPOINT__SYNC__RUNNER_NAME"] = "day-2"
    again = second.plan("prod")

    assert "No changes to plan" in again.stdout
    assert "held back" not in again.stdout
    assert second.objects("prod/") == published
    # The fresh directory's checkpoint file is day 1's, pulled (a "No changes" plan records no PIPELINE item).
    runs = second.checkpoints("pipeline")
    assert [(run["key"].split("|")[:2], run["status"]) for run in runs] == [(["plan", "prod"], "completed")]
    state = json.loads(first.store.get_bytes("runners/indicators/state.json")[0])
    assert state["pushed_by"]["runner"] == "day-2"
    assert set(state["files"]) == {"checkpoints", "sqlmesh-state"}


def test_a_plan_while_another_runner_holds_the_lease_stops_with_one_error_naming_it(
    tmp_path, s3_server, s3_credentials_for_tests
):
    project = s3_project(tmp_path, s3_server)
    project.env["OSAA_CHECKPOINT__SYNC__URL"] = f"s3://{project.store.bucket}/runners/indicators"
    holder = RunnerLease(project.store, "runners/indicators/lease.json", 600, Holder("nightly-ci", "ci-host", 4242), "s3")
    holder.acquire()

    refused = project.plan("prod", check=False)

    assert refused.returncode != 0
    assert "runner 'nightly-ci' (host ci-host, pid 4242)" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    assert not (project.path / ".osaa" / "checkpoints.duckdb").exists()
