-- Stage: assisted (view). SPEC §3.6: hard conversions of D whose user key has
-- a soft conversion (among survivors) with event_time in [t - L days, t).
-- Input: report_events, survivors, conversion_rules. Parameter $1: L days in microseconds.
-- Grain: one row per assisted hard conversion of D.
SELECT DISTINCT h.event_id
FROM report_events AS h
JOIN survivors AS s
  ON s.user_key = h.user_key
 AND s.ts_us >= h.ts_us - CAST($1 AS BIGINT)
 AND s.ts_us < h.ts_us
JOIN conversion_rules AS sr
  ON sr.rule_index = s.rule_index
 AND sr.kind = 'soft'
WHERE h.kind = 'hard'
