-- Output table dimension_summary (SPEC §4).
-- Input: attributed_events, rolled up per user first (user_rollup.sql).
-- Grain: dimension, dimension_value. The total row ('total', '(all)') is an
-- ungrouped aggregate so it exists even for a day without valid events.
-- Sorted by dimension in SPEC order, then value.
SELECT * EXCLUDE (dimension_order)
FROM (
  SELECT 0 AS dimension_order, 'total' AS dimension, '(all)' AS dimension_value,
{{METRICS}}
  FROM (
    SELECT user_key,
{{USER_ROLLUP}}
    FROM attributed_events
    GROUP BY user_key
  ) AS per_user
  UNION ALL
  SELECT dimension_order, dimension, dimension_value,
{{METRICS}}
  FROM (
    SELECT dimension_order, dimension, dimension_value, user_key,
{{USER_ROLLUP}}
    FROM (
      SELECT
        d.dimension_order,
        d.dimension,
        CASE d.dimension
          WHEN 'utm_source' THEN e.utm_source
          WHEN 'utm_medium' THEN e.utm_medium
          WHEN 'utm_campaign' THEN e.utm_campaign
          WHEN 'utm_content' THEN e.utm_content
          WHEN 'utm_term' THEN e.utm_term
          WHEN 'device_type' THEN e.device_type
          WHEN 'country' THEN e.country
        END AS dimension_value,
        e.user_key, e.kind, e.value, e.assisted
      FROM attributed_events AS e
      CROSS JOIN (VALUES (1, 'utm_source'), (2, 'utm_medium'), (3, 'utm_campaign'),
                         (4, 'utm_content'), (5, 'utm_term'), (6, 'device_type'),
                         (7, 'country')) AS d(dimension_order, dimension)
    ) AS long_form
    GROUP BY dimension_order, dimension, dimension_value, user_key
  ) AS per_user
  GROUP BY dimension_order, dimension, dimension_value
) AS summary
ORDER BY dimension_order, dimension_value
