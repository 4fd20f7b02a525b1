-- The master indicators table: every source in one long format.
MODEL (
  name osaa.indicators,
  kind FULL,
  grain (country_id, indicator_id, year),
  audits (
    not_null(columns := (country_id, indicator_id, year, value, source)),
    unique_combination_of_columns(columns := (country_id, indicator_id, year)),
    accepted_range(column := year, min_v := 1960, max_v := 2030)
  )
);

WITH wdi_long AS (
  SELECT country_code AS country_id, indicator_code AS indicator_id, 2019 AS year, y2019 AS value FROM osaa_raw.wdi
  UNION ALL
  SELECT country_code, indicator_code, 2020, y2020 FROM osaa_raw.wdi
  UNION ALL
  SELECT country_code, indicator_code, 2021, y2021 FROM osaa_raw.wdi
  UNION ALL
  SELECT country_code, indicator_code, 2022, y2022 FROM osaa_raw.wdi
  UNION ALL
  SELECT country_code, indicator_code, 2023, y2023 FROM osaa_raw.wdi
)
SELECT country_id, indicator_id, year, value, 'wdi' AS source FROM wdi_long WHERE value IS NOT NULL
UNION ALL
SELECT country_id, indicator_id, year, value, 'sdg' AS source FROM osaa_raw.sdg
UNION ALL
SELECT country_id, indicator_id, year, value, 'opri' AS source FROM osaa_raw.opri
