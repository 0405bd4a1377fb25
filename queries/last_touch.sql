-- Stage: last_touch (view). SPEC §3.3-3.4: for each event of D that is not a
-- touch itself, the latest touch (a survivor with non-empty utm_source) of the
-- same user key with event_time in [t - L days, t]; ties: greatest event_id.
-- Events without a user key never match (NULL = NULL is not true).
-- Input: report_events, survivors. Parameter $1: L days in microseconds.
-- Grain: one row per attributed event of D.
SELECT event_id, utm_source, utm_medium, utm_campaign, utm_content, utm_term
FROM (
  SELECT
    e.event_id,
    t.utm_source,
    t.utm_medium,
    t.utm_campaign,
    t.utm_content,
    t.utm_term,
    row_number() OVER (
      PARTITION BY e.event_id
      ORDER BY t.ts_us DESC, t.event_id DESC
    ) AS touch_rank
  FROM report_events AS e
  JOIN survivors AS t
    ON t.user_key = e.user_key
   AND t.ts_us >= e.ts_us - CAST($1 AS BIGINT)
   AND t.ts_us <= e.ts_us
  WHERE NOT e.is_touch
    AND t.utm_source <> ''
) AS ranked
WHERE touch_rank = 1
