-- Stage: input_stats, for the run manifest: how many valid rows read (all
-- partitions) dedup drops (SPEC §3.2): every copy of an id but one.
-- Input: duplicate_ids. Grain: one row.
SELECT CAST(coalesce(sum(copies - 1), 0) AS BIGINT) AS duplicates_dropped
FROM duplicate_ids
