"""One validated settings object, merged from four sources.

Later sources win: built-in defaults < the settings file (``config.yaml`` in the working
directory, or the file named by ``OSAA_CONFIG``) < the SQLMesh project's
``variables: {osaa: ...}`` < ``OSAA_<SECTION>__<KEY>`` environment variables.

A settings file holds the settings under a top-level ``osaa:`` key, or under
``variables: osaa:`` when it is a SQLMesh project's ``config.yaml``; so one file can serve
both. Credentials are never settings: boto3's standard chain supplies them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Literal, Mapping

from sqlmesh_osaa.exceptions import ConfigurationError
from sqlmesh_osaa.redaction import url_userinfo
from sqlmesh_osaa.sections import Invalid, Section, setting

logger = logging.getLogger(__name__)

CONFIG_ENV_VAR = "OSAA_CONFIG"
ENV_PREFIX = "OSAA_"
ENV_SECTION_SEPARATOR = "__"
DEFAULT_CONFIG_FILE = "config.yaml"


def _storage_staging_prefix(value: str) -> str:
    value = value.strip("/")
    if not value or ".." in value.split("/"):
        raise ValueError("must be a non-empty relative prefix without '..'")
    return value


def _no_credentials_in_endpoint(value: str | None) -> str | None:
    if value and url_userinfo(value):
        raise ValueError(
            "must not carry a user name or password: S3 takes credentials from boto3's chain "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a role); remove 'user:password@'"
        )
    return value


class StorageSettings(Section):
    """Where objects live: a local directory that behaves as a bucket, or an S3 endpoint."""

    _checks = {"endpoint_url": _no_credentials_in_endpoint, "staging_prefix": _storage_staging_prefix}

    backend: Literal["local", "s3"] = "local"
    root: Path = Path(".osaa/storage")
    bucket: str = setting("osaa", min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$")
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    staging_prefix: str = "staging"


def dsn_password_problem(dsn: str) -> str | None:
    """Why ``dsn`` may not be used because it holds a password, or None when it holds none."""
    if re.match(r"^postgres(ql)?://", dsn):
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(dsn)
        if parts.password is not None or "password" in parse_qs(parts.query):
            return "the DSN holds a password"
    elif _DSN_PASSWORD.search(dsn):
        return "the DSN holds a password"
    return None


def describe_dsn(dsn: str) -> str:
    """``dsn`` as messages and logs may show it: host, port, database and user, never a secret."""
    if re.match(r"^postgres(ql)?://", dsn):
        from urllib.parse import urlsplit

        parts = urlsplit(dsn)
        fields = {"host": parts.hostname, "port": parts.port, "dbname": parts.path.lstrip("/") or None,
                  "user": parts.username}  # fmt: skip
    else:
        fields = dict(_DSN_FIELD.findall(dsn))
    shown = " ".join(f"{name}={fields[name]}" for name in ("host", "port", "dbname", "user") if fields.get(name))
    return f"postgresql {shown}".strip()


_DSN_PASSWORD = re.compile(r"(^|\s)password\s*=", re.IGNORECASE)
_DSN_FIELD = re.compile(r"(host|port|dbname|user)\s*=\s*('[^']*'|\S+)")


def _bucket_url_or_directory(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if url_userinfo(value):
        raise ValueError("must not carry a user name or password: credentials come from boto3's chain")
    if "://" in value and not value.startswith(("s3://", "file://")):
        raise ValueError("must be s3://bucket/prefix or a directory (a path or file:///path)")
    if value.startswith("s3://"):
        bucket, _, prefix = value[len("s3://") :].partition("/")
        if not re.match(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$", bucket):
            raise ValueError(f"names no valid bucket: {bucket!r} (write s3://bucket/prefix)")
        if ".." in prefix.split("/"):
            raise ValueError("its prefix must not contain '..'")
    return value


class SyncSettings(Section):
    """Ephemeral runners: the checkpoint file (and optionally SQLMesh's) kept in object storage under a lease.

    ``url`` is ``s3://bucket/prefix`` (endpoint, region and addressing of ``storage:``) or a
    directory (a local or mounted filesystem). Unset, nothing is synced. docs/checkpoints.md.
    """

    _checks = {"url": _bucket_url_or_directory}

    url: str | None = None
    lease_timeout_seconds: float = setting(300.0, gt=0)
    # Shown to other runners and operators as the lease's holder; default user@host.
    runner_name: str | None = setting(None, min_length=1, max_length=200)
    # The SQLMesh project's DuckDB file (state and warehouse), synced beside the checkpoints.
    sqlmesh_state_file: Path | None = None


def _no_password(value: str | None) -> str | None:
    if value is not None and (problem := dsn_password_problem(value)):
        raise ValueError(f"{problem}; remove it and let libpq find it in PGPASSWORD, PGPASSFILE or ~/.pgpass")
    return value


class CheckpointSettings(Section):
    """Where checkpoints live: a DuckDB file (the default) or a PostgreSQL database shared by a team."""

    _checks = {"dsn": _no_password}

    backend: Literal["duckdb", "postgres"] = "duckdb"
    db_path: Path = Path(".osaa/checkpoints.duckdb")
    dsn: str | None = None
    synchronous_commit: bool = True
    lock_timeout_seconds: float = setting(10.0, ge=0)
    retention_days: int = setting(30, ge=1)
    sync: SyncSettings = setting(default_factory=SyncSettings)
    # SQLMesh integration: how long a MODEL checkpoint may wait in memory for its batch commit.
    model_flush_seconds: float = setting(60.0, ge=0)

    def _check(self) -> None:
        if self.backend == "postgres" and not self.dsn:
            raise ValueError("backend 'postgres' needs checkpoint.dsn, e.g. 'host=db.internal dbname=osaa user=osaa'")
        if self.backend == "postgres" and self.sync.url:
            raise ValueError(
                "checkpoint.sync keeps a DuckDB checkpoint file in object storage; a PostgreSQL store "
                "already outlives the runner: remove checkpoint.sync.url or use backend 'duckdb'"
            )


class RetrySettings(Section):
    """Exponential backoff with jitter for transient failures (the one retry layer)."""

    max_attempts: int = setting(3, ge=1, le=100)
    initial_delay: float = setting(1.0, ge=0)
    max_delay: float = setting(60.0, ge=0)
    exponential_base: float = setting(2.0, ge=1)
    jitter: bool = True


class CircuitBreakerSettings(Section):
    """When to stop calling a failing service, and when to try it again."""

    failure_threshold: int = setting(5, ge=1)
    timeout_seconds: float = setting(60.0, ge=0)


def _distinct_relative_prefixes(value: dict[str, str]) -> dict[str, str]:
    cleaned = {name: prefix.strip("/") for name, prefix in value.items()}
    if "prod" in cleaned:
        raise ValueError("must not name 'prod': set prod_prefix instead")
    for name, prefix in cleaned.items():
        if not prefix or ".." in prefix.split("/") or "{" in prefix:
            raise ValueError(f"{name!r}: must be a non-empty relative prefix without '..' or placeholders")
    shared = sorted({p for p in cleaned.values() if list(cleaned.values()).count(p) > 1})
    if shared:
        raise ValueError(f"environments must not share a prefix: {', '.join(shared)}")
    return cleaned


def _has_env_placeholder(value: str) -> str:
    if "{env}" not in value:
        raise ValueError("must contain '{env}' so that dev environments do not share a prefix")
    try:
        value.format(env="dev")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"may use only the placeholder {{env}} (the environment name), found {error}; "
            "write a literal brace as {{ or }}"
        ) from None
    return value.strip("/")


class EnvironmentSettings(Section):
    """Object-storage prefixes of SQLMesh environments; ``{env}`` is the environment name.

    ``prefixes`` names the prefix of particular environments outright (``{dev: dev}`` gives
    the layout ``prod/landing``, ``dev/landing``); every other dev environment gets
    ``dev_prefix``. No two environments may share a prefix.
    """

    _checks = {
        "prod_prefix": lambda value: value.strip("/"),
        "dev_prefix": _has_env_placeholder,
        "prefixes": _distinct_relative_prefixes,
    }

    prod_prefix: str = "prod"
    dev_prefix: str = "dev/{env}"
    prefixes: dict[str, str] = setting(default_factory=dict)

    def _check(self) -> None:
        taken = [name for name, prefix in self.prefixes.items() if prefix == self.prod_prefix]
        if taken:
            raise ValueError(f"prefixes: {', '.join(taken)} would share prod's prefix {self.prod_prefix!r}")

    def prefix_for(self, environment: str) -> str:
        """The prefix that holds ``environment``'s outputs (``prod`` maps to the prod prefix)."""
        if environment == "prod":
            return self.prod_prefix
        if environment in self.prefixes:
            return self.prefixes[environment]
        return self.dev_prefix.format(env=environment)


class MonitoringSettings(Section):
    """Where metrics go and whether failures are announced (docs/monitoring.md)."""

    # node-exporter's textfile collector directory: each pipeline writes osaa_<pipeline>.prom there.
    textfile_directory: Path | None = None
    # Send the package's failures to the SQLMesh project's notification_targets.
    alerts: bool = True


class OsaaSettings(Section):
    """Every setting of sqlmesh-osaa; see the root ``config.yaml`` for each with its default."""

    storage: StorageSettings = setting(default_factory=StorageSettings)
    checkpoint: CheckpointSettings = setting(default_factory=CheckpointSettings)
    retry: RetrySettings = setting(default_factory=RetrySettings)
    circuit_breaker: CircuitBreakerSettings = setting(default_factory=CircuitBreakerSettings)
    environments: EnvironmentSettings = setting(default_factory=EnvironmentSettings)
    monitoring: MonitoringSettings = setting(default_factory=MonitoringSettings)

def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _read_settings_file(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ConfigurationError(
                "Settings file not found; fix the path or unset the variable",
                setting=CONFIG_ENV_VAR,
                value=str(path),
                source="environment",
            )
        return {}
    import yaml  # only when there is a file: most runs take their settings from the environment

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"Settings file is not valid YAML: {exc}", source=str(path)) from exc
    if not isinstance(document, Mapping):
        raise ConfigurationError("Settings file must hold a mapping", source=str(path))
    section = document.get("osaa")
    if section is None:
        section = (document.get("variables") or {}).get("osaa")
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigurationError("'osaa' must be a mapping of settings", setting="osaa", source=str(path))
    return dict(section)


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    overrides: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV_VAR:
            continue
        path = name[len(ENV_PREFIX) :].lower().split(ENV_SECTION_SEPARATOR)
        if len(path) == 1:
            logger.debug("Ignoring %s: settings variables look like %s<SECTION>__<KEY>", name, ENV_PREFIX)
            continue
        if len(path) > 3 or not all(path):
            raise ConfigurationError(
                f"Environment variable must look like {ENV_PREFIX}<SECTION>{ENV_SECTION_SEPARATOR}<KEY> "
                f"(or {ENV_PREFIX}<SECTION>{ENV_SECTION_SEPARATOR}<SUBSECTION>{ENV_SECTION_SEPARATOR}<KEY>)",
                setting=name,
                value=value,
                source="environment",
            )
        target = overrides
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigurationError(
                    "Environment variables set both a setting and keys inside it",
                    setting=name,
                    value=value,
                    source="environment",
                )
        target[path[-1]] = value
        for length in range(1, len(path) + 1):
            sources.setdefault(tuple(path[:length]), f"environment variable {name}")
        sources[tuple(path)] = f"environment variable {name}"
    return overrides, sources


def _validate(data: Mapping[str, Any], sources: Mapping[tuple[str, ...], str]) -> OsaaSettings:
    try:
        return OsaaSettings.from_data(data)
    except Invalid as invalid:
        if invalid.unknown:
            message = "Unknown setting; see config.yaml at the project root for every setting"
        else:
            message = f"Invalid setting: {invalid.reason}"
        value = invalid.value
        if isinstance(value, str) and dsn_password_problem(value):
            value = describe_dsn(value) + " (password removed)"
        raise ConfigurationError(
            message,
            setting=".".join(invalid.location),
            value=value,
            source=_source_of(invalid.location, sources),
        ) from None


def _source_of(location: tuple[str, ...], sources: Mapping[tuple[str, ...], str]) -> str:
    for length in range(len(location), 0, -1):
        if location[:length] in sources:
            return sources[location[:length]]
    return "defaults"


def _record_sources(data: Mapping[str, Any], source: str, into: dict[tuple[str, ...], str]) -> None:
    for section, values in data.items():
        into[(section,)] = source
        if isinstance(values, Mapping):
            for key in values:
                into[(section, key)] = source


def load_settings(
    variables: Mapping[str, Any] | None = None,
    *,
    config_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> OsaaSettings:
    """Merge defaults, the settings file, SQLMesh ``variables.osaa`` and ``OSAA_*`` variables.

    ``variables`` is a SQLMesh project's ``variables`` mapping; only its ``osaa`` entry
    is read. Given ``variables`` (inside SQLMesh), ``config.yaml`` in the working directory
    is SQLMesh's own config, already parsed by SQLMesh (it may hold Jinja, which is not
    YAML), so it is not read again; a file named by ``OSAA_CONFIG`` still is. Raises :class:`ConfigurationError` naming the
    setting, the value and where it came from.
    """
    environ = os.environ if environ is None else environ
    explicit = config_path or environ.get(CONFIG_ENV_VAR)
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if explicit or variables is None:
        path = Path(explicit or DEFAULT_CONFIG_FILE)
        layers.append((str(path), _read_settings_file(path, required=bool(explicit))))
    if variables and variables.get("osaa") is not None:
        layers.append(("SQLMesh variables.osaa", variables["osaa"]))
    env_layer, env_sources = _env_overrides(environ)
    layers.append(("environment", env_layer))

    data: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    for source, layer in layers:
        if not isinstance(layer, Mapping):
            raise ConfigurationError("'osaa' must be a mapping of settings", setting="osaa", source=source)
        data = _merge(data, layer)
        _record_sources(layer, source, sources)
    sources.update(env_sources)
    return _validate(data, sources)


_cached: OsaaSettings | None = None
_cache_lock = threading.Lock()


def get_settings() -> OsaaSettings:
    """The process-wide settings, loaded once from the file and the environment."""
    global _cached
    with _cache_lock:
        if _cached is None:
            _cached = load_settings()
        return _cached


def set_settings(settings: OsaaSettings) -> None:
    """Make ``settings`` the process-wide settings (the SQLMesh integration does this)."""
    global _cached
    with _cache_lock:
        _cached = settings


def reset_settings() -> None:
    """Forget the process-wide settings so the next :func:`get_settings` reloads them."""
    global _cached
    with _cache_lock:
        _cached = None
