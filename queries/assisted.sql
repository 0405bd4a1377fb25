-- Stage: assisted (view). SPEC §3.6: hard conversions of D whose user key has
-- a soft conversion (among survivors) with event_time in [t - L days, t).
-- Same linear shape as last_touch: only the latest soft conversion before t
-- matters, and it is the user's latest before their first hard conversion of
-- D or one between that and t.
-- Input: report_events, relevant_events. Parameter $1: L days in microseconds.
-- Grain: one row per assisted hard conversion of D.
WITH targets AS (
  SELECT event_id, user_key, ts_us
  FROM report_events
  WHERE kind = 'hard' AND user_key IS NOT NULL
),
first_target AS (
  SELECT user_key, min(ts_us) AS first_ts
  FROM targets
  GROUP BY user_key
),
softs AS (
  SELECT s.user_key, s.ts_us, f.first_ts
  FROM relevant_events AS s
  JOIN first_target AS f ON f.user_key = s.user_key
  WHERE s.kind = 'soft'
),
before_first AS (
  SELECT user_key, max(ts_us) AS ts_us
  FROM softs
  WHERE ts_us < first_ts
  GROUP BY user_key
),
latest AS (
  SELECT h.event_id, h.ts_us AS event_ts, s.ts_us
  FROM targets AS h
  JOIN softs AS s
    ON s.user_key = h.user_key
   AND s.ts_us >= s.first_ts
   AND s.ts_us < h.ts_us
  UNION ALL
  SELECT h.event_id, h.ts_us AS event_ts, b.ts_us
  FROM targets AS h
  JOIN before_first AS b ON b.user_key = h.user_key
)
SELECT event_id
FROM latest
GROUP BY event_id
HAVING max(ts_us) >= max(event_ts) - CAST($1 AS BIGINT)
