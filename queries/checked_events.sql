-- Stage: checked_events (view). SPEC §3.1 validity.
-- Input: events_in (every row of partitions D-L..D: all input columns + event_date).
-- Grain: one row per input row; reject_reason is NULL for a valid row,
-- otherwise the first reason that applies, in SPEC order.
SELECT
  *,
  CASE
    WHEN event_id IS NULL OR event_id = '' THEN 'missing_event_id'
    WHEN event_type IS NULL OR event_type = '' THEN 'missing_event_type'
    WHEN event_time IS NULL THEN 'missing_event_time'
  END AS reject_reason
FROM events_in
