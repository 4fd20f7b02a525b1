"""A Python model of the osaa_s3_export kind: per-source counts of osaa.indicators, published as parquet.

Enabled by the project variable ``python_models: true``. The export kind takes the
DataFrame the function returns like any query result: it fills the table, SQLMesh audits
it, and only then is ``<environment prefix>/indicators/indicator_counts.parquet`` published.
"""

import typing as t
from datetime import datetime

import pandas as pd
from sqlmesh import ExecutionContext, model
from sqlmesh.core.model.kind import ModelKindName


@model(
    "osaa.indicator_counts",
    kind=dict(
        name=ModelKindName.CUSTOM,
        materialization="osaa_s3_export",
        materialization_properties={"key": "indicators/indicator_counts.parquet"},
    ),
    columns={"source": "text", "indicators": "bigint", "observations": "bigint"},
    depends_on=["osaa.indicators"],
    audits=[("not_null", {"columns": ["source", "indicators", "observations"]})],
    enabled="@VAR('python_models', false)",
)
def execute(
    context: ExecutionContext, start: datetime, end: datetime, execution_time: datetime, **kwargs: t.Any
) -> pd.DataFrame:
    indicators = context.resolve_table("osaa.indicators")
    return context.fetchdf(
        f"SELECT source, count(DISTINCT indicator_id) AS indicators, count(*) AS observations FROM {indicators} "
        "GROUP BY source ORDER BY source"
    )
