"""The ingest engine: raw CSV -> landing parquet, once per change, bad files recorded not fatal."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

from sqlmesh_osaa.commit_log import HEAD_KEY, LOG_PREFIX, MARKER_PREFIX, STAGED_FILES, VERSIONS_PREFIX

from sqlmesh_osaa.checkpoint import CheckpointScope, PipelineCheckpoint
from sqlmesh_osaa.error_handler import ErrorHandler, RetryPolicy
from sqlmesh_osaa.ingest import SINGLE_THREAD_BELOW, IngestRequest, _ConversionThreads, run_ingest
from sqlmesh_osaa.settings import load_settings
from sqlmesh_osaa.storage import LocalStore, ObjectStore, S3Store

SETTINGS = load_settings(environ={})
FAST = ErrorHandler(RetryPolicy(max_attempts=3, initial_delay=0, max_delay=0, jitter=False))


def csv_rows(count: int, seed: int = 0) -> str:
    return "country,year,value\n" + "".join(f"C{i},{2000 + i % 20},{i * 10 + seed}\n" for i in range(count))


@pytest.fixture
def raw(tmp_path) -> Path:
    root = tmp_path / "raw"
    (root / "wdi").mkdir(parents=True)
    (root / "sdg").mkdir()
    (root / "wdi" / "WDICSV.csv").write_text(csv_rows(30))
    (root / "sdg" / "SDG_DATA_NATIONAL.csv").write_text(csv_rows(20, seed=1))
    return root


@pytest.fixture
def checkpoint(tmp_path):
    with PipelineCheckpoint("ingest", tmp_path / "checkpoints.duckdb") as checkpoint:
        yield checkpoint


def ingest(raw: Path, store: ObjectStore, checkpoint: PipelineCheckpoint, handler: ErrorHandler = FAST, **kwargs):
    return run_ingest(
        IngestRequest(raw, "prod", **kwargs),
        checkpoint=checkpoint,
        store=store,
        settings=SETTINGS,
        error_handler=handler,
    )


def landed(store: ObjectStore) -> list[str]:
    return [info.key for info in store.list_prefix("prod/")]


def test_first_ingest_lands_every_file_with_its_rows(raw, store, checkpoint, tmp_path):
    result = ingest(raw, store, checkpoint)
    assert result.ok
    assert landed(store) == ["prod/landing/sdg/SDG_DATA_NATIONAL.parquet", "prod/landing/wdi/WDICSV.parquet"]
    local = tmp_path / "check.parquet"
    store.get_file("prod/landing/wdi/WDICSV.parquet", local)
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{local}')").fetchone()[0] == 30
    assert checkpoint.is_completed(CheckpointScope.FILE, "prod/landing/wdi/WDICSV.parquet", str(raw / "wdi/WDICSV.csv"))
    assert list(store.list_prefix("staging/")) == []


def test_rerun_with_nothing_changed_skips_every_file(raw, store, checkpoint):
    ingest(raw, store, checkpoint)
    again = ingest(raw, store, checkpoint)
    assert again.landed == []
    assert sorted(again.skipped) == landed(store)


def data_requests(proxy, operation: str) -> list:
    """Requests of ``operation`` that carry data: the commit protocol's own small records aside."""
    records = (f"/{MARKER_PREFIX}", f"/{LOG_PREFIX}", f"/{HEAD_KEY}", f"/{STAGED_FILES}")
    return [r for r in proxy.requests(operation) if not any(record in r.target for record in records)]


@pytest.mark.s3
def test_rerun_with_nothing_changed_uploads_nothing(raw, fault_proxy, s3_bucket, checkpoint):
    store = S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")
    ingest(raw, store, checkpoint)
    fault_proxy.reset_counts()
    ingest(raw, store, checkpoint)
    assert fault_proxy.count("PutObject") == 0
    assert fault_proxy.count("CopyObject") == 0
    assert fault_proxy.count("GetObject") == 0


@pytest.mark.s3
def test_changing_one_file_reprocesses_exactly_that_file(raw, fault_proxy, s3_bucket, checkpoint):
    store = S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")
    ingest(raw, store, checkpoint)
    (raw / "wdi" / "WDICSV.csv").write_text(csv_rows(31))
    fault_proxy.reset_counts()
    result = ingest(raw, store, checkpoint)
    assert result.landed == ["prod/landing/wdi/WDICSV.parquet"]
    uploads = [r for r in data_requests(fault_proxy, "PutObject") if f"/{VERSIONS_PREFIX}" in r.target]
    assert len(uploads) == 1
    assert fault_proxy.count("CopyObject") == 1


def test_touched_but_identical_file_is_not_uploaded_again(raw, store, checkpoint):
    ingest(raw, store, checkpoint)
    path = raw / "wdi" / "WDICSV.csv"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    result = ingest(raw, store, checkpoint)
    assert result.landed == []
    assert "prod/landing/wdi/WDICSV.parquet" in result.skipped


def test_verify_checksum_catches_a_change_that_kept_size_and_mtime(raw, store, checkpoint):
    ingest(raw, store, checkpoint)
    path = raw / "wdi" / "WDICSV.csv"
    before = path.stat()
    path.write_text(path.read_text().replace("C1,", "D1,"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert ingest(raw, store, checkpoint).landed == []
    assert ingest(raw, store, checkpoint, verify_checksum=True).landed == ["prod/landing/wdi/WDICSV.parquet"]


@pytest.mark.s3
def test_ingest_of_50_files_completes_with_30_percent_transient_faults(tmp_path, fault_proxy, s3_bucket, checkpoint):
    root = tmp_path / "many"
    (root / "uis").mkdir(parents=True)
    for index in range(50):
        (root / "uis" / f"file_{index:02d}.csv").write_text(csv_rows(5, seed=index))
    store = S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")
    fault_proxy.fail_fraction(0.3, 503, "SlowDown", seed=3)
    result = ingest(root, store, checkpoint, ErrorHandler(RetryPolicy(max_attempts=10, initial_delay=0.001)))
    fault_proxy.clear()
    assert result.ok, result.failures
    assert len(landed(store)) == 50
    assert list(store.list_prefix("staging/")) == []
    for info in store.list_prefix("prod/"):
        assert store.head(info.key).md5 == info.md5


@pytest.mark.s3
def test_access_denied_fails_every_file_at_the_first_request_and_stages_nothing(raw, fault_proxy, s3_bucket, checkpoint):
    store = S3Store(s3_bucket, endpoint_url=fault_proxy.url, addressing_style="path")
    fault_proxy.fail_always(403, "AccessDenied")
    result = ingest(raw, store, checkpoint)
    requests = fault_proxy.count()
    fault_proxy.clear()
    assert not result.ok
    assert fault_proxy.count("PutObject") == 0
    assert list(store.list_prefix("")) == []
    failed = {row["key"]: row for row in checkpoint.get_pending(CheckpointScope.FILE)}
    assert set(failed) == {"prod/landing/wdi/WDICSV.parquet", "prod/landing/sdg/SDG_DATA_NATIONAL.parquet"}
    assert all(row["error_category"] == "permanent" for row in failed.values())
    assert requests <= 3  # recovery's listings and the marker's read: a permanent error is never retried


def test_bad_files_are_recorded_and_the_good_ones_still_land(raw, store, checkpoint):
    (raw / "wdi" / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5\n6,7,8,9\n")
    (raw / "wdi" / "empty.csv").write_bytes(b"")
    (raw / "wdi" / "latin1.csv").write_bytes("country,name\nCIV,C\xf4te d'Ivoire\n".encode("latin-1"))
    (raw / "wdi" / "it's \"quoted\".csv").write_text(csv_rows(3))
    result = ingest(raw, store, checkpoint)
    failures = {record.item: record for record in result.failures}
    assert set(failures) == {"wdi/ragged.csv", "wdi/empty.csv", "wdi/latin1.csv"}
    assert all(record.category.value == "permanent" for record in failures.values())
    assert "ragged.csv" in failures["wdi/ragged.csv"].message
    assert "empty" in failures["wdi/empty.csv"].message.lower()
    assert "utf-8" in failures["wdi/latin1.csv"].message.lower()
    assert "prod/landing/wdi/it's \"quoted\".parquet" in landed(store)
    assert "prod/landing/wdi/WDICSV.parquet" in landed(store)
    row = checkpoint.get(CheckpointScope.FILE, "prod/landing/wdi/ragged.parquet")
    assert row["status"] == "failed"
    assert "ragged.csv" in row["error_message"]


def test_fixed_bad_file_lands_on_the_next_run(raw, store, checkpoint):
    bad = raw / "wdi" / "ragged.csv"
    bad.write_text("a,b,c\n1,2,3\n4,5\n")
    assert not ingest(raw, store, checkpoint).ok
    bad.write_text("a,b,c\n1,2,3\n4,5,6\n")
    result = ingest(raw, store, checkpoint)
    assert result.ok
    assert result.landed == ["prod/landing/wdi/ragged.parquet"]
    assert checkpoint.get(CheckpointScope.FILE, "prod/landing/wdi/ragged.parquet")["status"] == "completed"


def test_symlink_leading_outside_the_raw_root_is_refused(raw, store, checkpoint, tmp_path):
    secret = tmp_path / "outside.csv"
    secret.write_text(csv_rows(2))
    (raw / "wdi" / "link.csv").symlink_to(secret)
    result = ingest(raw, store, checkpoint)
    assert [record.item for record in result.failures] == ["wdi/link.csv"]
    assert "outside" in result.failures[0].message
    assert "prod/landing/wdi/link.parquet" not in landed(store)


def test_missing_raw_root_is_a_clear_error(tmp_path, checkpoint):
    from sqlmesh_osaa.exceptions import IngestError

    with pytest.raises(IngestError) as info:
        ingest(tmp_path / "nope", LocalStore(tmp_path / "s", "osaa"), checkpoint)
    assert "nope" in str(info.value)


def test_a_raw_file_with_a_non_ascii_name_lands_with_its_name_in_the_metadata(raw, store, checkpoint):
    (raw / "wdi" / "données été 日本.csv").write_text(csv_rows(4))

    result = ingest(raw, store, checkpoint)

    assert result.ok, result.failures
    landed_info = store.head("prod/landing/wdi/données été 日本.parquet")
    assert landed_info is not None
    assert landed_info.metadata["source-file"] == "wdi/données été 日本.csv"


@pytest.mark.s3
def test_an_unchanged_large_landing_file_is_not_uploaded_again_by_a_runner_without_checkpoints(
    tmp_path, fault_proxy, s3_bucket
):
    """A fresh container (no checkpoint DB) re-ingesting unchanged raw files: the listing of
    production must carry the MD5 of multipart objects too, so nothing is staged or copied."""
    root = tmp_path / "raw"
    (root / "big").mkdir(parents=True)
    rows = "".join(f"{i},{os.urandom(24).hex()}\n" for i in range(220_000))
    (root / "big" / "large.csv").write_text("id,payload\n" + rows)
    threshold = 5 * 1024**2  # parts of 5 MiB: the landing file is a multipart upload and copy
    store = S3Store(
        s3_bucket,
        endpoint_url=fault_proxy.url,
        addressing_style="path",
        multipart_threshold=threshold,
        copy_multipart_threshold=threshold,
    )
    with PipelineCheckpoint("ingest", tmp_path / "first.duckdb") as first:
        assert ingest(root, store, first).ok
    landed_info = store.head("prod/landing/big/large.parquet")
    assert landed_info is not None and landed_info.size >= threshold and "-" in (landed_info.etag or "")
    fault_proxy.reset_counts()

    with PipelineCheckpoint("ingest", tmp_path / "fresh.duckdb") as fresh:
        result = ingest(root, store, fresh)

    assert result.ok, result.failures
    uploads = ("PutObject", "CreateMultipartUpload", "UploadPart", "CopyObject", "UploadPartCopy")
    assert {op: len(data_requests(fault_proxy, op)) for op in uploads} == dict.fromkeys(uploads, 0)
    assert store.head("prod/landing/big/large.parquet") == landed_info


def test_a_local_ingest_moves_its_converted_files_into_the_store_and_leaves_no_work_directory(raw, tmp_path, checkpoint):
    store = LocalStore(tmp_path / "storage", "osaa")

    result = ingest(raw, store, checkpoint)

    assert result.ok and len(result.landed) == 2
    assert list(store.scratch_directory().iterdir()) == []
    production = Path(store.uri("prod/landing/wdi/WDICSV.parquet"))
    assert production.stat().st_nlink == 2  # the production key and its version share one file
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{production}')").fetchone() == (30,)


def test_work_directories_of_killed_runs_on_this_host_are_removed_and_live_ones_kept(tmp_path):
    import socket
    import subprocess
    import sys

    from sqlmesh_osaa.ingest import remove_abandoned_workdirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    scratch = tmp_path / "scratch"
    for name in (f"osaa-ingest-{host}-{dead.pid}-abc", f"osaa-ingest-{host}-{os.getpid()}-def", f"osaa-ingest-elsewhere-{dead.pid}-ghi"):
        (scratch / name).mkdir(parents=True)
        (scratch / name / "0.parquet").write_bytes(b"PAR1")

    removed = remove_abandoned_workdirs(scratch)

    assert removed == 1
    assert {path.name for path in scratch.iterdir()} == {
        f"osaa-ingest-{host}-{os.getpid()}-def", f"osaa-ingest-elsewhere-{dead.pid}-ghi",
    }


def test_small_files_are_converted_on_one_duckdb_thread_and_large_ones_on_duckdbs_default() -> None:
    with duckdb.connect() as connection:
        (default,) = connection.execute("SELECT current_setting('threads')").fetchone()
        threads = _ConversionThreads(connection)
        seen = []
        for size in (600, 1200, SINGLE_THREAD_BELOW, 700):
            threads.fit(size)
            seen.append(connection.execute("SELECT current_setting('threads')").fetchone()[0])
    assert seen == [1, 1, default, 1]
