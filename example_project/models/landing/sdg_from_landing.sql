-- SDG indicators read straight from the landing parquet of the current environment, as a
-- project whose raw files land through `sqlmesh osaa-ingest data/raw --env <env>` reads them:
-- @osaa_landing('sdg', 'SDG_DATA_NATIONAL') is <env prefix>/landing/sdg/SDG_DATA_NATIONAL.parquet
-- in the configured store (s3://<bucket>/... on S3). Enabled by the variable `landing_models: true`
-- once that landing exists.
MODEL (
  name osaa.sdg_from_landing,
  kind FULL,
  enabled @VAR('landing_models', false),
  audits (not_null(columns := (indicator_id, country_id, year)))
);

SELECT
  INDICATOR_ID::VARCHAR AS indicator_id,
  COUNTRY_ID::VARCHAR AS country_id,
  YEAR::INTEGER AS year,
  VALUE::DOUBLE AS value
FROM read_parquet(@osaa_landing('sdg', 'SDG_DATA_NATIONAL'))
