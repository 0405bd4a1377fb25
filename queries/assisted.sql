-- Stage: assisted (view). SPEC §3.6: hard conversions of D whose user key has
-- a soft conversion (among survivors) with event_time in [t - L days, t).
-- Input: report_events, relevant_events. Parameter $1: L days in microseconds.
-- Grain: one row per assisted hard conversion of D.
SELECT DISTINCT h.event_id
FROM report_events AS h
JOIN relevant_events AS s
  ON s.user_key = h.user_key
 AND s.ts_us >= h.ts_us - CAST($1 AS BIGINT)
 AND s.ts_us < h.ts_us
 AND s.kind = 'soft'
WHERE h.kind = 'hard'
