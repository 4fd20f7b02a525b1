"""The seed's "Transaction Manager" snippets, run as written with sqlmesh_osaa as the package.

A bare bucket name means S3 through boto3's standard configuration, so these tests point
AWS_ENDPOINT_URL at the moto server, as a user points it at MinIO or LocalStack.
"""

from __future__ import annotations

import pytest

from sqlmesh_osaa.checkpoint import PipelineCheckpoint

pytestmark = pytest.mark.s3


@pytest.fixture
def seed_env(tmp_path, monkeypatch, s3_server, s3_env, s3_client):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file.csv").write_text("country,value\nNGA,1\n")
    (tmp_path / "file1.csv").write_text("a\n1\n")
    (tmp_path / "file2.csv").write_text("b\n2\n")
    return s3_client


def test_seed_usage_example_commits_on_exit(seed_env, s3_bucket):
    s3 = seed_env
    checkpoint = PipelineCheckpoint(pipeline_name="ingest")

    def validate_file_size(key):
        return s3.head_object(Bucket=s3_bucket, Key=key)["ContentLength"]

    from sqlmesh_osaa.transaction_manager import TransactionManager

    with TransactionManager(
        bucket_name=s3_bucket,
        staging_prefix="staging",
        checkpoint=checkpoint
    ) as txn:
        # Upload to staging
        txn.upload_file(
            local_path="data/file.csv",
            s3_key="prod/data/file.parquet",
            metadata={"version": "1.0"}
        )

        # Add validation
        txn.add_validator(lambda key: validate_file_size(key) > 0)

        # Commit (automatic on context exit)
    # Files are now in production, or rolled back on error

    head = s3.head_object(Bucket=s3_bucket, Key="prod/data/file.parquet")
    assert head["Metadata"]["version"] == "1.0"
    assert s3.list_objects_v2(Bucket=s3_bucket, Prefix="staging/")["KeyCount"] == 0
    checkpoint.close()


def test_seed_transaction_rollback_as_written(seed_env, s3_bucket):
    s3 = seed_env
    bucket = s3_bucket

    def s3_object_exists(key):
        return s3.list_objects_v2(Bucket=bucket, Prefix=key)["KeyCount"] > 0

    from sqlmesh_osaa.transaction_manager import TransactionManager

    def test_transaction_rollback():
        with pytest.raises(Exception):
            with TransactionManager(bucket) as txn:
                txn.upload_file("file1.csv", "key1")
                txn.upload_file("file2.csv", "key2")
                raise Exception("Simulated failure")

        # Files should not exist in production
        assert not s3_object_exists("key1")
        assert not s3_object_exists("key2")

    test_transaction_rollback()
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_seed_best_practice_3_commits_atomically(seed_env, s3_bucket):
    from sqlmesh_osaa.transaction_manager import TransactionManager

    bucket, local, s3_key = s3_bucket, "file1.csv", "prod/file1.parquet"
    with TransactionManager(bucket_name=bucket) as txn:
        # All operations here are atomic
        txn.upload_file(local, s3_key)
        # Auto-commit or rollback
    assert seed_env.head_object(Bucket=bucket, Key=s3_key)["ContentLength"] == 4
