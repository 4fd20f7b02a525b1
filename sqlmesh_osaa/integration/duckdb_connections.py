"""SQLMesh's DuckDB connections reach the configured bucket: any model can ``read_parquet`` from it.

SQLMesh prepares every DuckDB cursor it opens with its connection config's cursor
initialiser (``BaseDuckDBConnectionConfig._cursor_init``: the gateway's ``extensions:``,
``secrets:``, ``catalogs:``). Installed when ``sqlmesh_osaa.integration`` is imported, this
module chains one step after SQLMesh's own: with ``storage.backend: s3`` the cursor gets
httpfs from the ``duckdb-extension-httpfs`` package and a temporary S3 secret built from
boto3's credential chain and the settings' endpoint, region and addressing style
(:func:`~sqlmesh_osaa.duckdb_storage.configure_object_storage`). No gateway
``extensions:``/``secrets:`` block is needed, nothing is downloaded, and the credentials
travel as prepared parameters on the raw cursor: they are in no SQL text, SQLMesh logs
no statement of it and its state stores none.

``@osaa_before_all()`` also configures the connection a plan or run already holds
(:func:`configure_adapter`): DuckDB keeps secrets and loaded extensions per database, so
every cursor of that connection then reads the bucket. With the local backend, or in a
project that does not use the package, nothing changes.
"""

from __future__ import annotations

import logging
import typing as t

from sqlmesh.core.config.connection import BaseDuckDBConnectionConfig

from sqlmesh_osaa.duckdb_storage import configure_object_storage
from sqlmesh_osaa.exceptions import PipelineBaseError
from sqlmesh_osaa.integration import runtime
from sqlmesh_osaa.integration.sqlmesh_patches import uses_extension
from sqlmesh_osaa.settings import StorageSettings

_log = logging.getLogger(__name__)

_INSTALLED_MARKER = "__osaa_duckdb_connections__"


def install() -> None:
    """Chain :func:`configure_cursor` after SQLMesh's DuckDB cursor initialiser (idempotent)."""
    original = BaseDuckDBConnectionConfig.__dict__["_cursor_init"]
    if getattr(original.fget, _INSTALLED_MARKER, False):
        return

    def cursor_init(config: BaseDuckDBConnectionConfig) -> t.Callable[[t.Any], None]:
        sqlmesh_init = original.fget(config)

        def init(cursor: t.Any) -> None:
            if sqlmesh_init is not None:
                sqlmesh_init(cursor)
            configure_cursor(cursor)

        return init

    setattr(cursor_init, _INSTALLED_MARKER, True)
    cursor_init.__doc__ = original.fget.__doc__
    BaseDuckDBConnectionConfig._cursor_init = property(cursor_init)  # type: ignore[assignment,method-assign]


def configure_cursor(cursor: t.Any) -> None:
    """Give a new cursor S3 access when the project's storage is S3; a problem is logged, not raised.

    A cursor opens for every SQLMesh command, ``sqlmesh info`` included: a missing
    credential must not break the commands that never read the bucket. A model that does
    read it then fails with DuckDB's error, after this warning said why.
    """
    storage = _project_storage()
    if storage is None or storage.backend != "s3":
        return
    try:
        configure_object_storage(cursor, storage)
    except PipelineBaseError as error:
        _log.warning("DuckDB models cannot read s3://%s: %s", storage.bucket, error)


def configure_adapter(engine_adapter: t.Any, storage: StorageSettings) -> None:
    """Give the connection a plan or run already holds S3 access; raises with a clear message on failure."""
    if storage.backend != "s3" or getattr(engine_adapter, "dialect", None) != "duckdb":
        return
    configure_object_storage(engine_adapter.cursor, storage)


def _project_storage() -> StorageSettings | None:
    """The active runtime's storage settings, or the CLI project's; None outside a project using the package.

    A project whose ``before_all`` does not enable the extension gets no settings read at all.
    """
    rt = runtime.current()
    if rt is not None:
        return rt.settings.storage
    context = runtime.sqlmesh_cli_context_object()
    if context is None or not uses_extension(context):
        return None
    variables, project_dir, _ = runtime.sqlmesh_cli_context()
    if project_dir is None:
        return None
    try:
        return runtime.project_settings(variables or {}, project_dir).storage
    except PipelineBaseError as error:
        _log.warning("sqlmesh-osaa settings are invalid, DuckDB gets no S3 access: %s", error)
        return None
