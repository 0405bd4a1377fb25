-- Fragment: the metric columns shared by campaign_daily and dimension_summary
-- (SPEC §4), in contract order, over rows of attributed_events. Distinct
-- counts are computed at the grain of the enclosing GROUP BY, never summed.
  count(*) AS events,
  count(DISTINCT user_key) AS users,
  count(CASE WHEN kind = 'hard' THEN 1 END) AS hard_conversions,
  count(CASE WHEN kind = 'soft' THEN 1 END) AS soft_conversions,
  count(DISTINCT CASE WHEN kind = 'hard' THEN user_key END) AS hard_converters,
  count(DISTINCT CASE WHEN kind = 'soft' THEN user_key END) AS soft_converters,
  CAST(coalesce(sum(CASE WHEN kind = 'hard' THEN value END), 0) AS DOUBLE) AS hard_value,
  CAST(coalesce(sum(CASE WHEN kind = 'soft' THEN value END), 0) AS DOUBLE) AS soft_value,
  count(CASE WHEN assisted THEN 1 END) AS assisted_hard_conversions,
  CAST(count(DISTINCT CASE WHEN kind = 'hard' THEN user_key END) AS DOUBLE)
    / CAST(nullif(count(DISTINCT user_key), 0) AS DOUBLE) AS hard_conversion_rate,
  CAST(count(DISTINCT CASE WHEN kind = 'soft' THEN user_key END) AS DOUBLE)
    / CAST(nullif(count(DISTINCT user_key), 0) AS DOUBLE) AS soft_conversion_rate
