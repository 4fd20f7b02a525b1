"""Where the current environment's landing objects are, for models that read them.

``@osaa_landing('sdg', 'SDG_DATA_NATIONAL')`` in a model's query becomes the string
``'s3://<bucket>/<prefix>/landing/sdg/SDG_DATA_NATIONAL.parquet'`` (or the local store's
path), where ``<prefix>`` is the environment's prefix from ``environments`` settings: the
layout ``osaa-ingest --env <env>`` and the ingest kind's publication write. Without a name
(or with a glob) it is every landing file of the source: ``.../landing/sdg/*.parquet``.

The environment is the one the running ``sqlmesh plan``/``run`` targets: recorded by
``@osaa_before_all()`` for evaluations, taken from the command line while SQLMesh loads the
project, ``prod`` otherwise. SQLMesh shares a snapshot's table between environments, so a
table evaluated in ``dev`` and promoted to ``prod`` by a virtual update keeps the rows it
read from dev's landing (docs/sqlmesh-integration.md, "Reading landing data").
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from sqlmesh.utils.errors import ConfigError

from sqlmesh_osaa.integration import runtime
from sqlmesh_osaa.raw_files import landing_prefix
from sqlmesh_osaa.settings import OsaaSettings, StorageSettings
from sqlmesh_osaa.storage import ObjectStore, make_store

PROD = "prod"
LANDING_SUFFIX = ".parquet"
_PLAIN = re.compile(r"^[^/\\\x00]+$")
_stores: dict[StorageSettings, ObjectStore] = {}
_stores_lock = threading.Lock()


def landing_key(settings: OsaaSettings, environment: str, source: str, name: str | None = None) -> str:
    """The object key of a landing file (a glob of them when ``name`` is None or has wildcards)."""
    _check("source", source)
    if name is not None:
        _check("name", name)
    stem = name.removesuffix(LANDING_SUFFIX) if name else "*"
    return f"{landing_prefix(settings.environments.prefix_for(environment))}{source}/{stem}{LANDING_SUFFIX}"


def landing_uri(settings: OsaaSettings, environment: str, source: str, name: str | None = None) -> str:
    """Where DuckDB reads that landing file: ``s3://bucket/key`` or the local store's path."""
    return _store(settings).uri(landing_key(settings, environment, source, name))


def current_environment() -> str:
    """The SQLMesh environment of the command running in this process (``prod`` when none says)."""
    rt = runtime.current()
    run = rt.pipeline_run if rt is not None else None
    if run is not None:
        return str(run.environment)
    return _cli_environment() or PROD


def current_settings() -> OsaaSettings:
    """The active runtime's settings, or the project's while SQLMesh loads it (nothing is activated)."""
    rt = runtime.current()
    if rt is not None:
        return rt.settings
    variables, project_dir, _ = runtime.sqlmesh_cli_context()
    return runtime.project_settings(variables or {}, project_dir or Path.cwd())


def _cli_environment() -> str | None:
    try:
        import click
    except ImportError:
        return None
    context = click.get_current_context(silent=True)
    value = context.params.get("environment") if context is not None else None
    return str(value) if value else None


def _store(settings: OsaaSettings) -> ObjectStore:
    rt = runtime.current()
    if rt is not None and rt.settings is settings:
        return rt.store
    # Models render many times while a project loads; one store (one S3 client) per storage setting.
    cache_key = settings.storage
    with _stores_lock:
        if cache_key not in _stores:
            _stores[cache_key] = make_store(settings.storage)
        return _stores[cache_key]


def _check(what: str, value: object) -> None:
    if not isinstance(value, str) or not _PLAIN.match(value) or value in (".", ".."):
        raise ConfigError(
            f"@osaa_landing: {what} must be a plain name without '/' (e.g. @osaa_landing('sdg', "
            f"'SDG_DATA_NATIONAL')), got {value!r}"
        )
