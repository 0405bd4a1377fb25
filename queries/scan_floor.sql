-- Benchmark floor (`convmart scan-floor`): read and decode every input column
-- the job uses, over the same partitions, and nothing more. Sums of lengths
-- force decoding (Parquet statistics cannot answer them).
-- Input: events_in. Grain: one row.
SELECT
  count(*) AS rows_read,
  sum(length(event_id)) + sum(length(event_type))
    + sum(length(user_id)) + sum(length(anonymous_id))
    + sum(length(utm_source)) + sum(length(utm_medium)) + sum(length(utm_campaign))
    + sum(length(utm_content)) + sum(length(utm_term))
    + sum(length(device_type)) + sum(length(country)) AS string_bytes,
  sum(CAST(event_time AS BIGINT) % 1000) AS time_checksum,
  sum(revenue) AS revenue
FROM events_in
