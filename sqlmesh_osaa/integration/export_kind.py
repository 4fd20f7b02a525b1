"""``osaa_s3_export``: a model materialized as a table whose content is published as parquet.

``kind CUSTOM (materialization 'osaa_s3_export', materialization_properties (key 'x/y.parquet'))``

The insert replaces the table (like FULL) and stages its content, sorted so that equal
content gives equal bytes, in a new staged-output directory of this evaluation (never one
an earlier evaluation wrote). Nothing is
written under an environment's prefix here: SQLMesh audits the table after the insert, and
only an interval SQLMesh records is published (``publication.py``).
"""

from __future__ import annotations

import logging
import tempfile
import typing as t
from dataclasses import replace
from pathlib import Path

from pydantic import model_validator
from sqlglot import exp
from sqlmesh import CustomKind, CustomMaterialization, Model

from sqlmesh_osaa.fault_points import fault_point
from sqlmesh_osaa.integration import engine_io, model_checkpoints, properties, runtime
from sqlmesh_osaa.integration.staged_outputs import evaluation_output, write_manifest

_log = logging.getLogger(__name__)

NAME = "osaa_s3_export"
# Crash tests kill the process here: the export is staged and sealed, SQLMesh has not audited it yet.
EXPORT_STAGED = "osaa_export_staged"


class OsaaS3ExportKind(CustomKind):
    """Validates ``key`` when the model loads, so a bad one stops ``sqlmesh plan``."""

    @model_validator(mode="after")
    def _check_properties(self) -> OsaaS3ExportKind:
        props = self.materialization_properties
        properties.check_names(NAME, props, required=("key",), optional=())
        properties.relative_path(NAME, "key", props["key"])
        return self

    @property
    def key(self) -> str:
        return properties.relative_path(NAME, "key", self.materialization_properties["key"])


class OsaaS3ExportMaterialization(CustomMaterialization[OsaaS3ExportKind]):
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
        self.adapter.replace_query(table_name, query_or_df, model.columns_to_types)
        rt = runtime.require()
        key = t.cast(OsaaS3ExportKind, model.kind).key
        output = evaluation_output(rt.settings.storage.staging_prefix, model.name, kwargs, NAME)
        model_checkpoints.note_output(output.prefix)
        with tempfile.TemporaryDirectory(prefix="osaa-export-") as workdir:
            local = Path(workdir) / "export.parquet"
            self._write_parquet(table_name, model, local)
            info = rt.error_handler.execute(rt.store.put_file, local, output.staged_key(key), operation="PutObject")
        write_manifest(rt.store, replace(output, objects={key: info.md5}), rt.error_handler)
        fault_point(EXPORT_STAGED)
        _log.info(
            "Staged export of %s at %s (published once SQLMesh records the interval)", model.name, output.staged_key(key)
        )

    def _write_parquet(self, table_name: str, model: Model, target: Path) -> None:
        if engine_io.is_native(self.adapter):
            self.adapter.execute(engine_io.sorted_parquet_copy(exp.to_table(table_name).sql(dialect="duckdb"), target))
        else:
            engine_io.export_parquet(self.adapter, table_name, engine_io.export_columns(self.adapter, table_name, model), target)
