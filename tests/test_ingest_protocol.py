"""Ingest on the commit protocol: fingerprints from the read, recovery by a machine with nothing local."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import duckdb
from support import jobs
from support.jobs import NOTHING_UNFINISHED, unfinished_work

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy
from sqlmesh_osaa.fault_points import AFTER_COMMIT_DECISION
from sqlmesh_osaa.ingest import IngestRequest, run_ingest
from sqlmesh_osaa.settings import load_settings
from sqlmesh_osaa.storage import LocalStore, S3Store

FAST = ErrorHandler(RetryPolicy(max_attempts=3, initial_delay=0, max_delay=0, jitter=False))
BIN = Path(sys.executable).parent
KEY = "prod/landing/wdi/data.parquet"


def csv(rows: int) -> str:
    return "country,year,value\n" + "".join(f"C{r},{2000 + r},{r}\n" for r in range(rows))


def landed_rows(store, key: str, tmp_path: Path) -> int:
    target = tmp_path / "landed.parquet"
    store.get_file(key, target)
    return duckdb.sql(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()[0]


def test_a_raw_file_rewritten_while_its_ingest_uploads_is_landed_again_by_the_next_ingest(store, tmp_path):
    raw = tmp_path / "raw"
    source = raw / "wdi" / "data.csv"
    source.parent.mkdir(parents=True)
    source.write_text(csv(3))
    settings = load_settings(environ={})

    def producer_rewrites(_: str) -> None:  # called once the chunk is uploaded, before the commit
        source.write_text(csv(7))

    with PipelineCheckpoint("ingest", tmp_path / "c.duckdb") as checkpoint:
        first = run_ingest(IngestRequest(raw, "prod"), checkpoint=checkpoint, store=store, settings=settings,
                           error_handler=FAST, progress=producer_rewrites)
        assert first.landed == [KEY] and landed_rows(store, KEY, tmp_path) == 3
        assert checkpoint.get(CheckpointScope.FILE, KEY)["file_size"] == len(csv(3))
        second = run_ingest(IngestRequest(raw, "prod"), checkpoint=checkpoint, store=store, settings=settings,
                            error_handler=FAST)
    assert second.landed == [KEY]
    assert landed_rows(store, KEY, tmp_path) == 7


def _settings_env(store, root: Path) -> dict[str, str]:
    """Only settings: where the bucket is and where this machine keeps its (new) checkpoint DB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSAA_", "SQLMESH_"))}
    env["OSAA_CHECKPOINT__DB_PATH"] = str(root / "checkpoints.duckdb")
    if isinstance(store, LocalStore):
        env.update(OSAA_STORAGE__ROOT=str(store.root), OSAA_STORAGE__BUCKET=store.bucket)
    else:
        assert isinstance(store, S3Store)
        env.update(
            OSAA_STORAGE__BACKEND="s3", OSAA_STORAGE__BUCKET=store.bucket, OSAA_STORAGE__ENDPOINT_URL=store.endpoint_url,
            OSAA_STORAGE__ADDRESSING_STYLE="path",
        )
    return env


def test_a_killed_ingest_is_rolled_forward_from_a_new_directory_after_every_local_file_is_gone(store, tmp_path):
    raw = tmp_path / "raw"
    for name, rows in (("a", 3), ("b", 5), ("c", 2)):
        (raw / "wdi").mkdir(parents=True, exist_ok=True)
        (raw / "wdi" / f"{name}.csv").write_text(csv(rows))
    reference = LocalStore(tmp_path / "reference", "osaa")
    with PipelineCheckpoint("ingest", tmp_path / "reference.duckdb") as checkpoint:
        run_ingest(IngestRequest(raw, "prod"), checkpoint=checkpoint, store=reference,
                   settings=load_settings(environ={}), error_handler=FAST)
    clean = {info.key: info.md5 for info in reference.list_prefix("prod/")}

    first = tmp_path / "container-1"
    first.mkdir()
    killed = jobs.finish(jobs.start([str(BIN / "osaa-ingest"), str(raw), "--json"],
                                              fault=AFTER_COMMIT_DECISION, env=_settings_env(store, first), cwd=first))
    assert killed.returncode == -9, killed.stderr
    shutil.rmtree(first)

    second = tmp_path / "container-2"
    second.mkdir()
    recovered = jobs.finish(jobs.start([str(BIN / "osaa-recover"), "reconcile", "--json"],
                                                 env=_settings_env(store, second), cwd=second))
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert len(json.loads(recovered.stdout)["transactions"]["rolled_forward"]) == 1
    assert {info.key: info.md5 for info in store.list_prefix("prod/")} == clean
    assert unfinished_work(store) == NOTHING_UNFINISHED


def test_the_same_checkpoints_pointed_at_another_store_land_every_file_there(store, tmp_path):
    raw = tmp_path / "raw"
    (raw / "wdi").mkdir(parents=True)
    (raw / "wdi" / "data.csv").write_text(csv(4))
    first = LocalStore(tmp_path / "first-storage", "osaa")
    settings = load_settings(environ={})
    with PipelineCheckpoint("ingest", tmp_path / "c.duckdb") as checkpoint:
        landed = run_ingest(IngestRequest(raw, "prod"), checkpoint=checkpoint, store=first, settings=settings,
                            error_handler=FAST)
        other = run_ingest(IngestRequest(raw, "prod"), checkpoint=checkpoint, store=store, settings=settings,
                           error_handler=FAST)
        again = run_ingest(IngestRequest(raw, "prod"), checkpoint=checkpoint, store=store, settings=settings,
                           error_handler=FAST)
        row = checkpoint.get(CheckpointScope.FILE, KEY)
    assert landed.landed == other.landed == [KEY]
    assert again.landed == [] and again.skipped == [KEY]
    assert landed_rows(store, KEY, tmp_path) == 4
    assert row["metadata"]["store"] == store.identity


def test_a_store_identity_names_backend_endpoint_and_bucket(s3_server, s3_env, tmp_path):
    assert S3Store("osaa", endpoint_url=s3_server).identity == f"s3:{s3_server}/osaa"
    assert LocalStore(tmp_path, "osaa").identity == f"local:{tmp_path.resolve()}/osaa"
