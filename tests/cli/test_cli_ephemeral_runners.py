"""Ephemeral runners: nothing survives between runs but the bucket (checkpoint.sync, docs/checkpoints.md).

Every runner is a real ``osaa-ingest`` / ``osaa-recover`` process started in a fresh
directory against the moto S3 server; the checkpoint file lives in the bucket under the
runner lease between runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from shape_check import assert_documented
from support import jobs
from support.jobs import NOTHING_UNFINISHED, unfinished_work

from sqlmesh_osaa.checkpoint.lease import read_lease
from sqlmesh_osaa.fault_points import AFTER_PRODUCTION_COPY
from sqlmesh_osaa.storage import S3Store

pytestmark = pytest.mark.s3

BIN = Path(sys.executable).parent
GOOD_CSV = "country,value\nBEN,1\nTGO,2\n"
BAD_CSV = "a,b\n1,2,3,4\n5\n"
LEASE_KEY = "runners/osaa/lease.json"


@pytest.fixture
def bucket(s3_server: str, s3_bucket: str) -> S3Store:
    return S3Store(s3_bucket, endpoint_url=s3_server, addressing_style="path")


def _container(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    return directory


def _env(bucket: S3Store, runner: str, lease_timeout: float = 60, endpoint: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSAA_", "SQLMESH_"))}
    env.update(
        OSAA_STORAGE__BACKEND="s3",
        OSAA_STORAGE__BUCKET=bucket.bucket,
        OSAA_STORAGE__ENDPOINT_URL=endpoint or bucket.endpoint_url,
        OSAA_STORAGE__ADDRESSING_STYLE="path",
        OSAA_RETRY__MAX_ATTEMPTS="1",
        OSAA_CHECKPOINT__SYNC__URL=f"s3://{bucket.bucket}/runners/osaa",
        OSAA_CHECKPOINT__SYNC__LEASE_TIMEOUT_SECONDS=str(lease_timeout),
        OSAA_CHECKPOINT__SYNC__RUNNER_NAME=runner,
    )
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str], fault: str | None = None):
    return jobs.finish(jobs.start([str(BIN / command[0]), *command[1:]], fault=fault, env=env, cwd=cwd))


def _raw(tmp_path: Path, files: dict[str, str]) -> Path:
    raw = tmp_path / "raw"
    for name, content in files.items():
        (raw / "wdi").mkdir(parents=True, exist_ok=True)
        (raw / "wdi" / name).write_text(content)
    return raw


def test_a_second_run_in_a_fresh_directory_skips_unchanged_files_and_lists_the_first_runs_failure(bucket, tmp_path):
    raw = _raw(tmp_path, {"good.csv": GOOD_CSV, "bad.csv": BAD_CSV})
    first = _container(tmp_path, "container-1")
    ran = _run(["osaa-ingest", str(raw), "--json"], first, _env(bucket, "ci-run-1"))
    assert ran.returncode == 1, ran.stderr
    assert json.loads(ran.stdout)["landed"] == ["prod/landing/wdi/good.parquet"]
    shutil.rmtree(first)

    second = _container(tmp_path, "container-2")
    listed = _run(["osaa-recover", "list-failed", "--json"], second, _env(bucket, "ci-run-2"))
    again = _run(["osaa-ingest", str(raw), "--json"], second, _env(bucket, "ci-run-2"))

    assert listed.returncode == 1, listed.stderr
    assert "bad.csv" in listed.stdout
    assert again.returncode == 1, again.stderr
    report = json.loads(again.stdout)
    assert report["skipped"] == ["prod/landing/wdi/good.parquet"]
    assert report["landed"] == []


def test_a_second_runner_started_while_the_first_holds_the_lease_stops_naming_the_holder(
    bucket, fault_proxy, tmp_path
):
    raw = _raw(tmp_path, {"good.csv": GOOD_CSV})
    fault_proxy.delay_next(1, 8.0, operations=["CopyObject"])
    holder = jobs.start(
        [str(BIN / "osaa-ingest"), str(raw), "--json"],
        env=_env(bucket, "nightly-ci", endpoint=fault_proxy.url),
        cwd=_container(tmp_path, "container-1"),
    )
    try:
        deadline = time.monotonic() + 60
        while read_lease(bucket, LEASE_KEY)[0] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        second = _run(["osaa-ingest", str(raw), "--json"], _container(tmp_path, "container-2"), _env(bucket, "other"))
    finally:
        first = jobs.finish(holder)

    assert second.returncode == 2
    assert "nightly-ci" in second.stdout + second.stderr
    assert "since" in second.stdout + second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, first.stderr


def test_a_runner_killed_mid_commit_is_taken_over_after_the_lease_timeout_and_its_commit_recovered(bucket, tmp_path):
    raw = _raw(tmp_path, {"a.csv": GOOD_CSV})
    assert _run(["osaa-ingest", str(raw)], _container(tmp_path, "container-0"), _env(bucket, "ci-0")).returncode == 0
    for name in ("b.csv", "c.csv"):
        (raw / "wdi" / name).write_text(GOOD_CSV)

    killed = _run(["osaa-ingest", str(raw)], _container(tmp_path, "container-1"), _env(bucket, "ci-1", 4),
                  fault=AFTER_PRODUCTION_COPY)
    assert killed.returncode == -9, killed.stderr
    left, _ = read_lease(bucket, LEASE_KEY)
    while left.live():
        time.sleep(0.2)
    took_over = _run(["osaa-ingest", str(raw), "--json"], _container(tmp_path, "container-2"), _env(bucket, "ci-2", 4))

    assert (left.holder.runner, left.released) == ("ci-1", False)
    assert took_over.returncode == 0, took_over.stderr
    assert "Took over the expired checkpoint lease of runner 'ci-1'" in took_over.stderr
    report = json.loads(took_over.stdout)
    # The pulled file is run 0's (the killed runner never pushed): a.csv is skipped, and the killed
    # runner's decided commit was rolled forward, so b and c are already in production unchanged.
    assert "prod/landing/wdi/a.parquet" in report["skipped"]
    assert unfinished_work(bucket) == NOTHING_UNFINISHED
    assert sorted(info.key for info in bucket.list_prefix("prod/landing/")) == [
        f"prod/landing/wdi/{name}.parquet" for name in ("a", "b", "c")
    ]
    lease, _ = read_lease(bucket, LEASE_KEY)
    assert lease.holder.runner == "ci-2" and lease.released


def test_an_operator_sees_a_dead_runners_lease_and_breaks_it_so_the_next_runner_starts_at_once(bucket, tmp_path):
    raw = _raw(tmp_path, {"a.csv": GOOD_CSV})
    killed = _run(["osaa-ingest", str(raw)], _container(tmp_path, "container-1"), _env(bucket, "ci-dead"),
                  fault=AFTER_PRODUCTION_COPY)
    assert killed.returncode == -9
    operator = _container(tmp_path, "operator")

    shown = _run(["osaa-recover", "lease", "show", "--json"], operator, _env(bucket, "ops"))
    refused = _run(["osaa-recover", "lease", "break"], operator, _env(bucket, "ops"))
    broken = _run(["osaa-recover", "lease", "break", "--force", "--json"], operator, _env(bucket, "ops"))
    next_run = _run(["osaa-ingest", str(raw), "--json"], _container(tmp_path, "container-2"), _env(bucket, "ci-next"))

    assert shown.returncode == 1
    assert_documented(json.loads(shown.stdout), "osaa-recover lease show")
    assert_documented(json.loads(broken.stdout), "osaa-recover lease break")
    lease = json.loads(shown.stdout)["lease"]
    assert (lease["state"], lease["holder"]["runner"]) == ("live", "ci-dead")
    assert refused.returncode == 1 and "--force" in refused.stdout + refused.stderr
    assert broken.returncode == 0 and json.loads(broken.stdout)["broken"] is True
    assert next_run.returncode == 0, next_run.stderr
