-- World Bank WDI export: one row per country and indicator, one column per year.
-- The table is loaded from the landing parquet of data/raw/wdi/*.csv (view osaa_landing.wdi).
MODEL (
  name osaa_raw.wdi,
  kind CUSTOM (
    materialization 'osaa_file_ingest',
    materialization_properties (path = 'data/raw/wdi/*.csv', source = 'wdi')
  ),
  audits (not_null(columns := (country_code, indicator_code)))
);

SELECT
  "Country Code"::VARCHAR AS country_code,
  "Country Name"::VARCHAR AS country_name,
  "Indicator Code"::VARCHAR AS indicator_code,
  "Indicator Name"::VARCHAR AS indicator_name,
  "2019"::DOUBLE AS y2019,
  "2020"::DOUBLE AS y2020,
  "2021"::DOUBLE AS y2021,
  "2022"::DOUBLE AS y2022,
  "2023"::DOUBLE AS y2023
FROM osaa_landing.wdi
