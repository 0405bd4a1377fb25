-- Output table conversions_by_name (SPEC §4).
-- Input: attributed_events (conversion events only). Grain: conversion_name,
-- kind, utm_source, utm_medium, utm_campaign. Sorted by the grain.
SELECT
  conversion_name,
  kind,
  utm_source,
  utm_medium,
  utm_campaign,
  count(*) AS conversions,
  count(DISTINCT user_key) AS converters,
  CAST(coalesce(sum(value), 0) AS DOUBLE) AS value
FROM attributed_events
WHERE conversion_name IS NOT NULL
GROUP BY conversion_name, kind, utm_source, utm_medium, utm_campaign
ORDER BY conversion_name, kind, utm_source, utm_medium, utm_campaign
