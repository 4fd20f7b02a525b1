"""DuckDB reading and writing our object store: httpfs from the Python package, secrets kept secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import duckdb
import pytest

from sqlmesh_osaa.duckdb_storage import _create_secret, configure_object_storage, load_httpfs
from sqlmesh_osaa.exceptions import ConfigurationError, ErrorCategory, S3ConfigurationError
from sqlmesh_osaa.settings import StorageSettings

SECRET_KEY = "sEcReT-value-7f3a9c"
SESSION_TOKEN = "SeSsIoN-token-55e1b0"


@pytest.fixture
def fresh_duckdb(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection whose DuckDB home and extension directory are empty: nothing installed yet."""
    connection = duckdb.connect()
    connection.execute("SET home_directory = $path", {"path": str(tmp_path / "home")})
    connection.execute("SET extension_directory = $path", {"path": str(tmp_path / "extensions")})
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def shared_extensions(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One extension directory for the S3 tests: installing the 21 MB extension per test is slow."""
    return str(tmp_path_factory.mktemp("duckdb-extensions"))


@pytest.fixture
def connection(shared_extensions: str) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(config={"extension_directory": shared_extensions})
    yield connection
    connection.close()


@pytest.fixture
def distinctive_credentials(s3_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials easy to search for in outputs (moto accepts any)."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)


def s3_settings(bucket: str, endpoint_url: str, addressing_style: str = "path") -> StorageSettings:
    return StorageSettings(backend="s3", bucket=bucket, endpoint_url=endpoint_url, addressing_style=addressing_style)


def httpfs_state(connection: duckdb.DuckDBPyConnection) -> tuple[bool, bool, str]:
    return connection.execute(
        "SELECT installed, loaded, install_path FROM duckdb_extensions() WHERE extension_name = 'httpfs'"
    ).fetchone()


def test_load_httpfs_loads_from_the_python_package_writing_nothing_to_duckdbs_home(
    fresh_duckdb: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    assert httpfs_state(fresh_duckdb)[:2] == (False, False)

    load_httpfs(fresh_duckdb)

    assert httpfs_state(fresh_duckdb)[1] is True
    assert not any((tmp_path / "extensions").rglob("httpfs*"))


def test_loading_httpfs_twice_is_harmless(fresh_duckdb: duckdb.DuckDBPyConnection) -> None:
    load_httpfs(fresh_duckdb)
    load_httpfs(fresh_duckdb)

    assert fresh_duckdb.execute("SELECT count(*) FROM duckdb_secrets()").fetchone() == (0,)
    assert httpfs_state(fresh_duckdb)[1] is True


def test_a_package_built_for_another_duckdb_version_is_a_configuration_error(
    fresh_duckdb: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_version = duckdb.__version__
    monkeypatch.setattr(duckdb, "__version__", "0.0.1")

    with pytest.raises(ConfigurationError) as info:
        load_httpfs(fresh_duckdb)

    message = str(info.value)
    assert "does not match DuckDB 0.0.1" in message
    assert "pip install duckdb-extension-httpfs==0.0.1" in message
    assert f"v{real_version}" in message
    assert httpfs_state(fresh_duckdb)[:2] == (False, False)


def test_the_local_backend_needs_no_extension_and_no_secret(fresh_duckdb: duckdb.DuckDBPyConnection) -> None:
    configure_object_storage(fresh_duckdb, StorageSettings(backend="local"))

    assert httpfs_state(fresh_duckdb)[:2] == (False, False)
    assert fresh_duckdb.execute("SELECT count(*) FROM duckdb_secrets()").fetchone() == (0,)


@pytest.mark.s3
@pytest.mark.parametrize("addressing_style", ["path", "auto"])
def test_duckdb_writes_a_parquet_to_the_bucket_and_reads_it_back(
    connection: duckdb.DuckDBPyConnection,
    s3_server: str,
    s3_bucket: str,
    s3_client: Any,
    addressing_style: str,
) -> None:
    configure_object_storage(connection, s3_settings(s3_bucket, s3_server, addressing_style))
    uri = f"s3://{s3_bucket}/dev/landing/wdi/WDICSV.parquet"

    connection.execute(f"COPY (SELECT range AS n FROM range(1000)) TO '{uri}' (FORMAT parquet)")

    assert s3_client.head_object(Bucket=s3_bucket, Key="dev/landing/wdi/WDICSV.parquet")["ContentLength"] > 0
    assert connection.execute("SELECT count(*), sum(n) FROM read_parquet($uri)", {"uri": uri}).fetchone() == (
        1000,
        499500,
    )


@pytest.mark.s3
@pytest.mark.parametrize("key", ["prod/landing/sdg/goal.parquet", "prod/landing/wdi/données été 日本.parquet"])
def test_duckdb_reads_an_object_uploaded_by_boto3(
    connection: duckdb.DuckDBPyConnection, s3_server: str, s3_bucket: str, s3_client: Any, tmp_path: Path, key: str
) -> None:
    local = tmp_path / "local.parquet"
    duckdb.sql(f"COPY (SELECT 'NGA' AS country, 2.5 AS value) TO '{local}' (FORMAT parquet)")
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=local.read_bytes())

    configure_object_storage(connection, s3_settings(s3_bucket, s3_server))

    rows = connection.execute("SELECT * FROM read_parquet($uri)", {"uri": f"s3://{s3_bucket}/{key}"}).fetchall()
    assert [(country, float(value)) for country, value in rows] == [("NGA", 2.5)]


@pytest.mark.s3
def test_secret_values_are_redacted_in_duckdb_secrets(
    connection: duckdb.DuckDBPyConnection, s3_server: str, s3_bucket: str, distinctive_credentials: None
) -> None:
    configure_object_storage(connection, s3_settings(s3_bucket, s3_server))

    listing = str(connection.execute("SELECT * FROM duckdb_secrets()").fetchall())
    assert f"s3://{s3_bucket}" in listing
    assert SECRET_KEY not in listing
    assert SESSION_TOKEN not in listing


@pytest.mark.s3
def test_a_failed_read_does_not_reveal_the_secret(
    connection: duckdb.DuckDBPyConnection, s3_server: str, s3_bucket: str, distinctive_credentials: None
) -> None:
    configure_object_storage(connection, s3_settings(s3_bucket, s3_server))

    with pytest.raises(duckdb.Error) as info:
        connection.execute("SELECT * FROM read_parquet($uri)", {"uri": f"s3://{s3_bucket}/missing.parquet"})

    assert SECRET_KEY not in str(info.value)
    assert SESSION_TOKEN not in str(info.value)


def test_a_duckdb_error_echoing_a_secret_value_is_reraised_redacted(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    load_httpfs(connection)
    options = {"key_id": "AKIDEXAMPLE", "secret": SECRET_KEY, "use_ssl": SECRET_KEY}

    with pytest.raises(S3ConfigurationError) as info:
        _create_secret(connection, "osaa_s3_test", options)

    assert "***" in str(info.value)
    assert SECRET_KEY not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_missing_credentials_are_a_permanent_configuration_error(
    connection: duckdb.DuckDBPyConnection, s3_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    with pytest.raises(S3ConfigurationError, match="No AWS credentials") as info:
        configure_object_storage(connection, s3_settings("osaa", "http://127.0.0.1:9"))

    assert info.value.category is ErrorCategory.PERMANENT


def test_an_endpoint_with_a_path_is_a_configuration_error(
    connection: duckdb.DuckDBPyConnection, s3_env: None
) -> None:
    with pytest.raises(ConfigurationError, match="without a path") as info:
        configure_object_storage(connection, s3_settings("osaa", "http://127.0.0.1:9000/minio"))

    assert "storage.endpoint_url" in str(info.value)

