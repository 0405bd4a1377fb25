-- Stage: survivors (view). SPEC §3.2 dedup: one row per event_id, the one
-- with the earliest event_time, then the earliest partition. Copies still
-- tied are ordered by their remaining columns, so the choice never depends
-- on file or thread order (identical re-deliveries are indistinguishable).
-- Ids with a single copy pass straight through; only duplicate_ids are ranked.
-- Input: valid_events, duplicate_ids. Grain: one row per event_id.
SELECT v.*
FROM valid_events AS v
LEFT ANTI JOIN duplicate_ids AS d ON d.event_id = v.event_id
UNION ALL
SELECT * EXCLUDE (dup_rank)
FROM (
  SELECT
    v.*,
    row_number() OVER (
      PARTITION BY v.event_id
      ORDER BY v.ts_us, v.event_date, v.user_key, v.utm_source, v.utm_medium, v.utm_campaign,
               v.utm_content, v.utm_term, v.device_type, v.country, v.rule_index, v.rule_value
    ) AS dup_rank
  FROM valid_events AS v
  LEFT SEMI JOIN duplicate_ids AS d ON d.event_id = v.event_id
) AS ranked
WHERE dup_rank = 1
