-- Fragment: the metric columns shared by campaign_daily and dimension_summary
-- (SPEC §4), in contract order, over per-user rows made with user_rollup.sql.
-- users and *_converters count the non-NULL user keys of the grain row
-- (SPEC §3.7); rates are converters / users, NULL when users = 0.
  CAST(coalesce(sum(events), 0) AS BIGINT) AS events,
  count(user_key) AS users,
  CAST(coalesce(sum(hard_conversions), 0) AS BIGINT) AS hard_conversions,
  CAST(coalesce(sum(soft_conversions), 0) AS BIGINT) AS soft_conversions,
  count(CASE WHEN hard_conversions > 0 THEN user_key END) AS hard_converters,
  count(CASE WHEN soft_conversions > 0 THEN user_key END) AS soft_converters,
  CAST(coalesce(sum(hard_value), 0) AS DOUBLE) AS hard_value,
  CAST(coalesce(sum(soft_value), 0) AS DOUBLE) AS soft_value,
  CAST(coalesce(sum(assisted_hard_conversions), 0) AS BIGINT) AS assisted_hard_conversions,
  CAST(count(CASE WHEN hard_conversions > 0 THEN user_key END) AS DOUBLE)
    / CAST(nullif(count(user_key), 0) AS DOUBLE) AS hard_conversion_rate,
  CAST(count(CASE WHEN soft_conversions > 0 THEN user_key END) AS DOUBLE)
    / CAST(nullif(count(user_key), 0) AS DOUBLE) AS soft_conversion_rate
