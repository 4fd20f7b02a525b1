-- UIS SDG education indicators, long format: indicator, country, year, value, magnitude, qualifier.
-- The table is loaded from the landing parquet of data/raw/sdg/*.csv (view osaa_landing.sdg).
MODEL (
  name osaa_raw.sdg,
  kind CUSTOM (
    materialization 'osaa_file_ingest',
    materialization_properties (path = 'data/raw/sdg/*.csv', source = 'sdg')
  ),
  audits (
    not_null(columns := (indicator_id, country_id, year)),
    unique_combination_of_columns(columns := (indicator_id, country_id, year)),
    accepted_range(column := year, min_v := 1960, max_v := 2030)
  )
);

SELECT
  INDICATOR_ID::VARCHAR AS indicator_id,
  COUNTRY_ID::VARCHAR AS country_id,
  YEAR::INTEGER AS year,
  VALUE::DOUBLE AS value,
  MAGNITUDE::VARCHAR AS magnitude,
  QUALIFIER::VARCHAR AS qualifier
FROM osaa_landing.sdg
