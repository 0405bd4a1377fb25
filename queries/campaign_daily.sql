-- Output table campaign_daily (SPEC §4).
-- Input: attributed_events, rolled up per user first (user_rollup.sql).
-- Grain: utm_source, utm_medium, utm_campaign, utm_content, utm_term,
-- device_type, country. Sorted by the grain.
SELECT
  utm_source, utm_medium, utm_campaign, utm_content, utm_term, device_type, country,
{{METRICS}}
FROM (
  SELECT
    utm_source, utm_medium, utm_campaign, utm_content, utm_term, device_type, country, user_key,
{{USER_ROLLUP}}
  FROM attributed_events
  GROUP BY utm_source, utm_medium, utm_campaign, utm_content, utm_term, device_type, country, user_key
) AS per_user
GROUP BY utm_source, utm_medium, utm_campaign, utm_content, utm_term, device_type, country
ORDER BY utm_source, utm_medium, utm_campaign, utm_content, utm_term, device_type, country
