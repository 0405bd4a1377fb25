-- Output table rejected_events (SPEC §4): the rejected rows of partition D
-- with all their input columns and reject_reason.
-- Input: checked_events. Parameter $1: the report date D. Sorted by event_id, event_time.
SELECT * EXCLUDE (event_date)
FROM checked_events
WHERE event_date = $1 AND reject_reason IS NOT NULL
ORDER BY event_id, event_time, event_type
