-- The published dataset: written as parquet to <environment prefix>/indicators/indicators.parquet
-- once SQLMesh has recorded the interval, i.e. every blocking audit upstream and here passed.
MODEL (
  name osaa.indicators_export,
  kind CUSTOM (
    materialization 'osaa_s3_export',
    materialization_properties (key = 'indicators/indicators.parquet')
  ),
  audits (not_null(columns := (country_id, indicator_id, year, value)))
);

SELECT country_id, indicator_id, year, value, source
FROM osaa.indicators
