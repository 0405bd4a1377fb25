-- Stage: input_stats, for the run manifest: how many valid rows read (all
-- partitions) dedup drops (SPEC §3.2): every copy of an id but one. Every
-- copy of a duplicated id is a candidate with has_copies set.
-- Input: candidates. Grain: one row.
SELECT CAST(count(*) - count(DISTINCT event_id) AS BIGINT) AS duplicates_dropped
FROM candidates
WHERE has_copies
