-- Stage: last_touch (view). SPEC §3.3-3.4: for each event of D that is not a
-- touch itself, the latest touch (a survivor with non-empty utm_source) of the
-- same user key with event_time in [t - L days, t]; ties: greatest event_id.
-- Events without a user key never match (NULL = NULL is not true).
-- Input: report_events, relevant_events. Parameter $1: L days in microseconds.
-- Grain: one row per attributed event of D, with the touch's dimensions.
SELECT
  best.event_id,
  t.utm_source,
  t.utm_medium,
  t.utm_campaign,
  t.utm_content,
  t.utm_term
FROM (
  SELECT
    e.event_id,
    first_value(c.event_id ORDER BY c.ts_us DESC, c.event_id DESC) AS touch_id
  FROM report_events AS e
  JOIN relevant_events AS c
    ON c.user_key = e.user_key
   AND c.ts_us >= e.ts_us - CAST($1 AS BIGINT)
   AND c.ts_us <= e.ts_us
  WHERE NOT e.is_touch
    AND c.is_touch
  GROUP BY e.event_id
) AS best
JOIN relevant_events AS t ON t.event_id = best.touch_id
