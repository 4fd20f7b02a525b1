"""Ingest killed at random times on S3 through a proxy that fails 10% of requests, then recovered.

Every tenth kill is at the commit decision instead (a fault point), so recovery rolls some
transactions forward whatever the timing.

After every kill plus recovery: each production object is absent or byte-identical to a clean
run's, nothing unfinished is left (markers, staging, unreferenced versions), and every FILE
checkpoint marked completed describes what production holds. A final ingest finishes the set
and one more lands nothing.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from support import jobs
from support.jobs import NOTHING_UNFINISHED, unfinished_work

from sqlmesh_osaa.checkpoint import CheckpointScope, CheckpointStatus, PipelineCheckpoint
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy
from sqlmesh_osaa.fault_points import AFTER_COMMIT_DECISION
from sqlmesh_osaa.ingest import IngestRequest, run_ingest
from sqlmesh_osaa.settings import load_settings
from sqlmesh_osaa.storage import LocalStore, S3Store
from sqlmesh_osaa.transaction_manager import recover_transactions

pytestmark = [pytest.mark.s3, pytest.mark.slow]

KILLS = 50
FILES = 8
PATIENT = ErrorHandler(RetryPolicy(max_attempts=10, initial_delay=0, max_delay=0, jitter=False))
JOB = jobs.CRASH_DIR / "ingest_job.py"


def write_raw(raw: Path) -> None:
    for index in range(FILES):
        path = raw / ("wdi" if index % 2 else "sdg") / f"file_{index}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("country,year,value\n" + "".join(f"C{index}{r},{2000 + r},{r * index}\n" for r in range(200)))


def production(store) -> dict[str, str | None]:
    return {info.key: info.md5 for info in store.list_prefix("prod/")}


def assert_agrees(store, db: Path, clean: dict[str, str]) -> None:
    now = production(store)
    assert all(clean.get(key) == md5 for key, md5 in now.items()), "a production object differs from the clean run"
    assert unfinished_work(store) == NOTHING_UNFINISHED
    with PipelineCheckpoint("ingest", db) as checkpoint:
        for row in checkpoint.list(CheckpointScope.FILE, CheckpointStatus.COMPLETED):
            assert now.get(row["key"]) == clean[row["key"]], f"{row['key']} checkpointed but production differs"


def _timed_run(spec: str, raw: Path, db: Path) -> float:
    """Seconds an uninterrupted ingest job takes from the end of its imports to its exit."""
    job = jobs.start([str(JOB), str(raw), str(db.parent / "unused"), str(db), spec, "8"])
    jobs.wait_for_line(job, "started")
    started = time.monotonic()
    finished = jobs.finish(job)
    assert finished.stdout.split() == ["done"], finished.stderr
    return time.monotonic() - started


def test_fifty_random_kills_under_transient_faults_leave_production_clean(tmp_path, fault_proxy, s3_bucket, s3_server, s3_client):
    raw = tmp_path / "raw"
    write_raw(raw)
    reference = tmp_path / "reference"
    assert jobs.run([str(JOB), str(raw), str(reference), str(tmp_path / "ref.duckdb")]).stdout.split() == ["started", "done"]
    clean = production(LocalStore(reference, "osaa"))
    assert len(clean) == FILES

    direct = S3Store(s3_bucket, endpoint_url=s3_server, addressing_style="path")
    proxied = S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")
    spec = f"s3:{fault_proxy.url}:{s3_bucket}"
    fault_proxy.fail_fraction(0.10, 503, "SlowDown", seed=7)
    rng = random.Random(20261201)
    db = tmp_path / "c.duckdb"
    clean_run = _timed_run(spec, raw, tmp_path / "timed.duckdb")  # kill times span a whole run, under any load
    recovered = {"rolled_back": 0, "rolled_forward": 0}
    for kill in range(KILLS):
        if kill % 3 == 0 or production(direct) == clean:  # start over, so every run has work left to kill
            keys = [info.key for info in direct.list_prefix("")]
            if keys:
                direct.delete_many(keys)
            db.unlink(missing_ok=True)
        # Every tenth kill lands between the decision and finish: a random time rarely does.
        at_decision = kill % 10 == 9
        job = jobs.start([str(JOB), str(raw), str(tmp_path / "unused"), str(db), spec, "8"],
                         fault=AFTER_COMMIT_DECISION if at_decision else None)
        jobs.wait_for_line(job, "started")
        if not at_decision:
            time.sleep(rng.uniform(0, 1.2 * clean_run))
            jobs.kill_group(job)
        ended = jobs.finish(job)
        assert not at_decision or ended.returncode == -9, f"kill {kill} never reached the decision: {ended.stderr}"
        with PipelineCheckpoint("ingest", db) as checkpoint:
            report = recover_transactions(checkpoint, proxied, error_handler=PATIENT)
        assert report.failed == {}, f"kill {kill}: {report.failed}"
        recovered["rolled_back"] += len(report.rolled_back)
        recovered["rolled_forward"] += len(report.rolled_forward)
        assert_agrees(direct, db, clean)
    assert recovered["rolled_back"] and recovered["rolled_forward"], f"kills missed a phase: {recovered}"

    settings = load_settings(environ={})
    with PipelineCheckpoint("ingest", db) as checkpoint:
        finished = run_ingest(IngestRequest(raw, "prod"), checkpoint=checkpoint, store=proxied, settings=settings,
                              error_handler=PATIENT)
        assert finished.ok, finished.failures
        assert production(direct) == clean
        again = run_ingest(IngestRequest(raw, "prod"), checkpoint=checkpoint, store=proxied, settings=settings,
                           error_handler=PATIENT)
    assert again.landed == [] and sorted(again.skipped) == sorted(clean)
    assert_agrees(direct, db, clean)
