-- Stage: last_touch (view). SPEC §3.3-3.4: for each event of D that is not a
-- touch itself, the latest touch (a survivor with non-empty utm_source) of the
-- same user key with event_time in [t - L days, t]; ties: greatest event_id.
-- Events without a user key never match (NULL = NULL is not true).
--
-- Linear instead of a range join over all of a user's touches: the latest
-- touch at or before t is either the user's latest touch before their first
-- such event of D (one aggregate row per user) or a touch between that first
-- event and t (few: they are near D). That touch is in the window exactly when
-- its time is >= t - L; otherwise every earlier touch is outside it too.
--
-- "The latest touch, ties: greatest event_id" is max() over one string per
-- touch: its time offset by 2^62 (non-negative for any time within ~146,000
-- years of 1970) and zero-padded to 19 digits, then its event_id. Comparing
-- such strings compares the times, then the ids; substr(.., 20) is the id.
-- A grouped max over strings is fast; first_value(.. ORDER BY ts, id) was
-- the slowest operator of the whole job.
-- Input: report_events, relevant_events. Parameter $1: L days in microseconds.
-- Grain: one row per attributed event of D, with the touch's dimensions.
WITH targets AS (
  SELECT event_id, user_key, ts_us
  FROM report_events
  WHERE NOT is_touch AND user_key IS NOT NULL
),
first_target AS (
  SELECT user_key, min(ts_us) AS first_ts
  FROM targets
  GROUP BY user_key
),
touches AS (
  SELECT c.event_id, c.user_key, c.ts_us, f.first_ts
  FROM relevant_events AS c
  JOIN first_target AS f ON f.user_key = c.user_key
  WHERE c.is_touch
),
before_first AS (
  SELECT
    user_key,
    max(ts_us) AS ts_us,
    substr(max(lpad(CAST(ts_us + 4611686018427387904 AS VARCHAR), 19, '0') || event_id), 20) AS touch_id
  FROM touches
  WHERE ts_us < first_ts
  GROUP BY user_key
),
touch_options AS (
  SELECT e.event_id, e.ts_us AS event_ts, t.ts_us, t.event_id AS touch_id
  FROM targets AS e
  JOIN touches AS t
    ON t.user_key = e.user_key
   AND t.ts_us >= t.first_ts
   AND t.ts_us <= e.ts_us
  UNION ALL
  SELECT e.event_id, e.ts_us AS event_ts, b.ts_us, b.touch_id
  FROM targets AS e
  JOIN before_first AS b ON b.user_key = e.user_key
),
best AS (
  SELECT
    event_id,
    substr(max(lpad(CAST(ts_us + 4611686018427387904 AS VARCHAR), 19, '0') || touch_id), 20) AS touch_id
  FROM touch_options
  GROUP BY event_id
  HAVING max(ts_us) >= max(event_ts) - CAST($1 AS BIGINT)
)
SELECT
  best.event_id,
  t.utm_source,
  t.utm_medium,
  t.utm_campaign,
  t.utm_content,
  t.utm_term
FROM best
JOIN relevant_events AS t ON t.event_id = best.touch_id
