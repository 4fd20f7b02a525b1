"""A Python model of the osaa_file_ingest kind: the WDI raw files, ingested into osaa_raw.wdi_python.

Enabled by the project variable ``python_models: true``. SQLMesh calls the function
before the kind lands the raw files, so the function returns the query over the landing
view ``osaa_landing.<source>`` (a SQLGlot expression, or SQL such as ``ibis.to_sql(expr)``
parsed with ``exp.maybe_parse``) rather than a DataFrame: the kind runs it once the
files have landed. The landing parquet is published under ``<prefix>/landing/wdi_python/``.
"""

import typing as t
from datetime import datetime

from sqlglot import exp
from sqlmesh import ExecutionContext, model
from sqlmesh.core.model.kind import ModelKindName


@model(
    "osaa_raw.wdi_python",
    kind=dict(
        name=ModelKindName.CUSTOM,
        materialization="osaa_file_ingest",
        materialization_properties={"path": "data/raw/wdi/*.csv", "source": "wdi_python"},
    ),
    columns={"country_code": "text", "indicator_code": "text", "y2023": "double"},
    audits=[("not_null", {"columns": ["country_code", "indicator_code"]})],
    enabled="@VAR('python_models', false)",
)
def execute(
    context: ExecutionContext, start: datetime, end: datetime, execution_time: datetime, **kwargs: t.Any
) -> exp.Query:
    return exp.maybe_parse(
        'SELECT "Country Code"::VARCHAR AS country_code, "Indicator Code"::VARCHAR AS indicator_code, '
        '"2023"::DOUBLE AS y2023 FROM osaa_landing.wdi_python',
        dialect="duckdb",
    )
