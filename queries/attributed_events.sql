-- Stage: attributed_events (materialised once, read by every summary table).
-- SPEC §3.4: campaign dimensions from the event if it is a touch, else from
-- its last touch, else direct; null or empty values become '(not set)';
-- device_type and country always from the event. Plus the classification
-- (§3.5) and the assist flag (§3.6).
-- Input: report_events, last_touch, assisted. Grain: one row per event of D.
SELECT
  coalesce(nullif(CASE WHEN e.is_touch THEN e.utm_source
                       WHEN lt.event_id IS NOT NULL THEN lt.utm_source
                       ELSE '(direct)' END, ''), '(not set)') AS utm_source,
  coalesce(nullif(CASE WHEN e.is_touch THEN e.utm_medium
                       WHEN lt.event_id IS NOT NULL THEN lt.utm_medium
                       ELSE '(none)' END, ''), '(not set)') AS utm_medium,
  coalesce(nullif(CASE WHEN e.is_touch THEN e.utm_campaign
                       WHEN lt.event_id IS NOT NULL THEN lt.utm_campaign END, ''), '(not set)') AS utm_campaign,
  coalesce(nullif(CASE WHEN e.is_touch THEN e.utm_content
                       WHEN lt.event_id IS NOT NULL THEN lt.utm_content END, ''), '(not set)') AS utm_content,
  coalesce(nullif(CASE WHEN e.is_touch THEN e.utm_term
                       WHEN lt.event_id IS NOT NULL THEN lt.utm_term END, ''), '(not set)') AS utm_term,
  coalesce(nullif(e.device_type, ''), '(not set)') AS device_type,
  coalesce(nullif(e.country, ''), '(not set)') AS country,
  e.user_key,
  e.conversion_name,
  e.kind,
  e.rule_value AS value,
  a.event_id IS NOT NULL AS assisted
FROM report_events AS e
LEFT JOIN last_touch AS lt ON lt.event_id = e.event_id
LEFT JOIN assisted AS a ON a.event_id = e.event_id
