"""Giving a DuckDB connection access to our object store, with no network install and no leaked secret.

DuckDB reaches S3 through its httpfs extension. The extension comes from the
``duckdb-extension-httpfs`` Python package (a dependency pinned to our DuckDB version),
never from DuckDB's extension repository: pipelines run where there is no internet, and
a run must not depend on a download. Credentials come from boto3's standard chain, as
for :class:`~sqlmesh_osaa.storage.S3Store`, and travel to DuckDB as prepared parameters
of a temporary (in-memory) secret: they are never in SQL text, in logs or in our error
messages. The secret is a snapshot: call :func:`configure_object_storage` again when
temporary credentials have been refreshed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb

from sqlmesh_osaa.exceptions import ConfigurationError, S3ConfigurationError
from sqlmesh_osaa.redaction import register_secret
from sqlmesh_osaa.settings import StorageSettings
from sqlmesh_osaa.storage import make_s3_client

logger = logging.getLogger(__name__)

HTTPFS_PACKAGE = "duckdb-extension-httpfs"
_HTTPFS_MODULE = "duckdb_extension_httpfs"
_REDACTED = "***"
_URL_STYLES = {"path": "path", "virtual": "vhost"}


def load_httpfs(connection: duckdb.DuckDBPyConnection) -> None:
    """Load httpfs into ``connection`` straight from the file the Python package ships.

    Loading by path writes nothing outside the environment (no ``~/.duckdb``) and can never
    reach for the network. An httpfs installed in DuckDB's own directory is the fallback when
    the package is missing. Raises :class:`ConfigurationError` when neither is there or the
    package was built for another DuckDB version, saying which version to install.
    """
    installed, loaded = _httpfs_state(connection)
    if loaded:
        return
    try:
        extension = packaged_httpfs_path()
    except ConfigurationError:
        if not installed:
            raise
        connection.execute("LOAD httpfs")
        return
    try:
        connection.execute(f"LOAD {_sql_string(str(extension))}")
    except duckdb.Error as exc:
        raise ConfigurationError(
            f"DuckDB could not load its httpfs extension from the {HTTPFS_PACKAGE} package: {exc}; "
            f"reinstall it with: pip install --force-reinstall {HTTPFS_PACKAGE}=={duckdb.__version__}",
            extension=str(extension),
        ) from exc
    logger.debug("Loaded DuckDB's httpfs extension from %s", extension)


def packaged_httpfs_path() -> Path:
    """The httpfs extension file that ``duckdb-extension-httpfs`` ships for the running DuckDB."""
    fix = f"pip install {HTTPFS_PACKAGE}=={duckdb.__version__}"
    spec = importlib.util.find_spec(_HTTPFS_MODULE)
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            f"DuckDB needs its httpfs extension for S3 and the {HTTPFS_PACKAGE} package that ships it "
            f"is not installed; run: {fix}",
            duckdb_version=duckdb.__version__,
        )
    extensions = Path(spec.origin).parent / "extensions"
    extension = extensions / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    if not extension.is_file():
        shipped = sorted(path.name for path in extensions.glob("v*")) if extensions.is_dir() else []
        raise ConfigurationError(
            f"The installed {HTTPFS_PACKAGE} does not match DuckDB {duckdb.__version__}; run: {fix}",
            package_version=_package_version(),
            shipped_for=", ".join(shipped) or "nothing",
            duckdb_version=duckdb.__version__,
        )
    return extension


def configure_object_storage(connection: duckdb.DuckDBPyConnection, storage: StorageSettings) -> None:
    """Let ``connection`` read and write ``storage``'s bucket.

    The local backend needs nothing: its URIs are plain paths. For S3, httpfs is
    loaded and a temporary secret scoped to ``s3://<bucket>`` is created from boto3's
    credential chain and the endpoint, region and addressing style that
    :class:`~sqlmesh_osaa.storage.S3Store` uses for the same settings. Raises
    :class:`S3ConfigurationError` (permanent) when there are no credentials or DuckDB
    rejects the secret; secret values never appear in its message.
    """
    if storage.backend == "local":
        return
    load_httpfs(connection)
    endpoint_url, region = _resolved_endpoint(storage)
    endpoint = urlsplit(endpoint_url)
    if endpoint.path not in ("", "/") or not endpoint.netloc:
        raise ConfigurationError(
            "DuckDB needs an S3 endpoint without a path, such as http://host:9000",
            setting="storage.endpoint_url",
            value=endpoint_url,
        )
    options: dict[str, Any] = {
        "scope": f"s3://{storage.bucket}",
        "region": region,
        "endpoint": endpoint.netloc,
        "url_style": _url_style(storage, endpoint.hostname or ""),
        "use_ssl": endpoint.scheme != "http",
        **_credentials(),
    }
    _create_secret(connection, _secret_name(storage.bucket), options)
    logger.info(
        "DuckDB reaches s3://%s at %s (region %s, %s-style URLs)",
        storage.bucket,
        endpoint_url,
        region,
        options["url_style"],
    )


def _httpfs_state(connection: duckdb.DuckDBPyConnection) -> tuple[bool, bool]:
    row = connection.execute(
        "SELECT installed, loaded FROM duckdb_extensions() WHERE extension_name = 'httpfs'"
    ).fetchone()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


def _package_version() -> str:
    try:
        return importlib.metadata.version(HTTPFS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _sql_string(value: str) -> str:
    """A SQL string literal, for the statements (INSTALL) that take no prepared parameters."""
    return "'" + value.replace("'", "''") + "'"


def _resolved_endpoint(storage: StorageSettings) -> tuple[str, str]:
    """Endpoint and region as boto3 resolves them, so DuckDB talks to the same service as S3Store."""
    client = make_s3_client(storage.endpoint_url, storage.region, storage.addressing_style)
    return client.meta.endpoint_url, client.meta.region_name or "us-east-1"


def _url_style(storage: StorageSettings, host: str) -> str:
    """Custom endpoints (MinIO, moto, Ceph) rarely resolve bucket sub-domains, so ``auto`` means path there."""
    if storage.addressing_style in _URL_STYLES:
        return _URL_STYLES[storage.addressing_style]
    return "vhost" if host.endswith(".amazonaws.com") else "path"


def _credentials() -> dict[str, str]:
    import botocore.session

    found = botocore.session.get_session().get_credentials()
    if found is None:
        raise S3ConfigurationError(
            "No AWS credentials found for DuckDB's S3 access; provide them the way boto3 looks for them "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance or container role)",
            operation="configure_object_storage",
        )
    frozen = found.get_frozen_credentials()
    register_secret(frozen.secret_key, frozen.token)
    credentials = {"key_id": frozen.access_key, "secret": frozen.secret_key}
    if frozen.token:
        credentials["session_token"] = frozen.token
    return credentials


def _secret_name(bucket: str) -> str:
    return "osaa_s3_" + re.sub(r"[^a-z0-9]", "_", bucket.lower())


def _create_secret(connection: duckdb.DuckDBPyConnection, name: str, options: dict[str, Any]) -> None:
    """Create the secret from prepared parameters; a failure is re-raised with every secret value redacted."""
    assignments = ", ".join(f"{option.upper()} ${option}" for option in options)
    statement = f"CREATE OR REPLACE TEMPORARY SECRET {name} (TYPE s3, PROVIDER config, {assignments})"
    try:
        connection.execute(statement, options)
        return
    except duckdb.Error as exc:
        message = _redact(str(exc), options)
    # Raised outside the except block so the DuckDB error (and its text) is not chained.
    raise S3ConfigurationError(
        f"DuckDB rejected the S3 settings: {message}",
        operation="configure_object_storage",
        secret=name,
    )


def _redact(text: str, options: dict[str, Any]) -> str:
    for option in ("key_id", "secret", "session_token"):
        value = options.get(option)
        if value:
            text = text.replace(str(value), _REDACTED)
    return text
