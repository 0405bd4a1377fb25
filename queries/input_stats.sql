-- Stage: input_stats, for the run manifest: valid rows read (all partitions)
-- and how many of them dedup drops (SPEC §3.2).
-- Input: valid_events. Grain: one row.
SELECT
  count(*) AS valid_rows,
  count(*) - count(DISTINCT event_id) AS duplicates_dropped
FROM valid_events
