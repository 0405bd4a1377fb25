-- Stage: report_events (view). The events of D (SPEC §3.2: survivors found
-- in partition D, whatever their event_time), classified.
-- Input: relevant_events. Parameter $1: the report date D.
-- Grain: one row per event of D.
SELECT *
FROM relevant_events
WHERE event_date = $1
