"""``osaa_file_ingest``: a model loaded from raw files through the ingest engine.

``kind CUSTOM (materialization 'osaa_file_ingest',
              materialization_properties (path 'data/raw/wdi/*.csv', source 'wdi'))``

``path`` is a glob relative to the project directory. Each evaluation runs the ingest
engine: changed raw files are converted to parquet and land, in one transaction, in the
store's ingest area ``<staging_prefix>/ingest/landing/<source>/`` (FILE checkpoints; an
unchanged file is neither converted nor uploaded again). The evaluation then snapshots the
current landing files into its staged-output directory (server-side copies) and fills the
model's table by running the model's query against the view ``osaa_landing.<source>`` over
those files. Once SQLMesh records the interval (audits passed), publication copies them
to ``<environment prefix>/landing/<source>/`` and removes the landing files it published
earlier whose raw file no longer exists; objects other writers put there (``osaa-ingest``,
``osaa-promote``) are never touched.
"""

from __future__ import annotations

import logging
import re
import typing as t
from dataclasses import replace
from pathlib import Path, PurePosixPath

from pydantic import model_validator
from sqlglot import exp
from sqlmesh import CustomKind, CustomMaterialization, Model

from sqlmesh_osaa.checkpoint import CheckpointScope
from sqlmesh_osaa.exceptions import ErrorCategory, IngestError
from sqlmesh_osaa.duckdb_storage import configure_object_storage
from sqlmesh_osaa.integration import engine_io, model_checkpoints, properties, runtime
from sqlmesh_osaa.integration.staged_outputs import evaluation_output, write_manifest

if t.TYPE_CHECKING:
    from sqlmesh_osaa.ingest import IngestRequest, IngestResult

_log = logging.getLogger(__name__)

NAME = "osaa_file_ingest"
LANDING_SCHEMA = "osaa_landing"
CREATE_LANDING_SCHEMA = f"CREATE SCHEMA IF NOT EXISTS {LANDING_SCHEMA}"
INGEST_DIR = "ingest"
_GLOB = re.compile(r"[*?\[]")


class OsaaFileIngestKind(CustomKind):
    """Validates ``path`` and ``source`` when the model loads, so a bad one stops ``sqlmesh plan``."""

    @model_validator(mode="after")
    def _check_properties(self) -> OsaaFileIngestKind:
        props = self.materialization_properties
        properties.check_names(NAME, props, required=("path", "source"), optional=())
        properties.relative_path(NAME, "path", props["path"])
        properties.plain_name(NAME, "source", props["source"])
        return self

    @property
    def path(self) -> str:
        return properties.relative_path(NAME, "path", self.materialization_properties["path"])

    @property
    def source(self) -> str:
        return str(self.materialization_properties["source"])


def split_glob(project_dir: Path, path: str) -> tuple[Path, str]:
    """The directory to walk (the glob's fixed leading part) and the pattern below it."""
    parts = PurePosixPath(path).parts
    fixed = 0
    while fixed < len(parts) - 1 and not _GLOB.search(parts[fixed]):
        fixed += 1
    return project_dir.joinpath(*parts[:fixed]), "/".join(parts[fixed:])


class OsaaFileIngestMaterialization(CustomMaterialization[OsaaFileIngestKind]):
    NAME = NAME

    def insert(
        self,
        table_name: str,
        query_or_df: t.Any,
        model: Model,
        is_first_insert: bool,
        render_kwargs: t.Dict[str, t.Any],
        **kwargs: t.Any,
    ) -> None:
        kind = t.cast(OsaaFileIngestKind, model.kind)
        rt = runtime.require()
        output = evaluation_output(rt.settings.storage.staging_prefix, model.name, kwargs, NAME)
        model_checkpoints.note_output(output.prefix)
        landed = self._ingest(rt, model.name, kind)
        prefix = output.prefix
        area = _ingest_area(rt)
        objects: dict[str, str] = {}
        for key in landed:
            info = rt.error_handler.execute(rt.store.copy, key, prefix + key[len(area) :], operation="CopyObject")
            objects[key[len(area) :]] = info.md5 or ""
        uris = [rt.store.uri(prefix + key) for key in sorted(objects)]
        self._load(rt, table_name, query_or_df, model, kind.source, uris)
        output = replace(output, objects=objects)
        write_manifest(rt.store, output, rt.error_handler)

    def _ingest(self, rt: runtime.Runtime, model_name: str, kind: OsaaFileIngestKind) -> list[str]:
        """Landing keys of every raw file the glob matches now; raises if any could not land."""
        # The ingest engine (CSV conversion, raw-file discovery) is imported by the models that ingest only:
        # SQLMesh imports this module for every project with an osaa kind.
        from sqlmesh_osaa.ingest import IngestRequest

        raw_root, pattern = split_glob(rt.project_dir, kind.path)
        request = IngestRequest(
            raw_root=raw_root, env_prefix=_ingest_area(rt).rstrip("/"), pattern=pattern, source=kind.source
        )
        result = self._run(rt, request)
        missing = [key for key in result.skipped if rt.store.head(key) is None]
        if missing:
            # The checkpoint remembers files the store lost (a new bucket, a wiped directory): land them again.
            _log.warning(
                "%d landing file(s) of %s are missing from the store; ingesting them again", len(missing), model_name
            )
            for key in missing:
                rt.checkpoint.clear_checkpoint(CheckpointScope.FILE, key)
            result = self._run(rt, request)
        if result.failures:
            listed = "; ".join(f"{failure.item}: {failure.message}" for failure in result.failures[:5])
            raise IngestError(
                f"{len(result.failures)} raw file(s) of {model_name} could not be ingested: {listed}",
                category=ErrorCategory.PERMANENT,
                model=model_name,
            )
        keys = sorted(result.landed + result.skipped)
        if not keys:
            raise IngestError(
                f"No raw file matches path '{kind.path}' of {model_name} (searched {raw_root})",
                category=ErrorCategory.PERMANENT,
                model=model_name,
            )
        return keys

    @staticmethod
    def _run(rt: runtime.Runtime, request: IngestRequest) -> IngestResult:
        from sqlmesh_osaa.ingest import run_ingest

        return run_ingest(
            request, checkpoint=rt.checkpoint, store=rt.store, settings=rt.settings, error_handler=rt.error_handler
        )

    def _load(
        self, rt: runtime.Runtime, table_name: str, query_or_df: t.Any, model: Model, source: str, uris: list[str]
    ) -> None:
        if not engine_io.is_native(self.adapter):
            landing = exp.table_(source, db=LANDING_SCHEMA)
            with engine_io.landing_table(self.adapter, landing, uris, rt.settings.storage, model.dialect):
                self.adapter.replace_query(table_name, query_or_df, model.columns_to_types)
            return
        # Repeated each time: cheap when in effect, and SQLMesh may have recycled its connections.
        configure_object_storage(self.adapter.cursor, rt.settings.storage)
        view = exp.table_(source, db=LANDING_SCHEMA).sql(dialect="duckdb")
        files = exp.Array(expressions=[exp.Literal.string(uri) for uri in uris]).sql(dialect="duckdb")
        # A no-op once @osaa_before_all() created the schema (see create_landing_schema).
        self.adapter.execute(CREATE_LANDING_SCHEMA)
        self.adapter.execute(
            f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet({files}, union_by_name = true)"
        )
        try:
            self.adapter.replace_query(table_name, query_or_df, model.columns_to_types)
        finally:
            self.adapter.execute(f"DROP VIEW IF EXISTS {view}")


def create_landing_schema(engine_adapter: t.Any) -> None:
    """Create the landing schema before evaluations start.

    Each evaluation runs in its own DuckDB transaction; two ingest models creating the schema
    in concurrent transactions (``concurrent_tasks`` > 1) fail with a write-write conflict.
    Created once beforehand, the evaluations' ``IF NOT EXISTS`` writes nothing.
    """
    engine_adapter.execute(CREATE_LANDING_SCHEMA)


def _ingest_area(rt: runtime.Runtime) -> str:
    return f"{rt.settings.storage.staging_prefix.strip('/')}/{INGEST_DIR}/"
