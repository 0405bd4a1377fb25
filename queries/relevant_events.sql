-- Stage: relevant_events (view over the in-memory candidates). SPEC §3.2
-- dedup: one survivor per event_id, the copy with the earliest event_time,
-- then the earliest partition; copies still tied are ordered by their other
-- columns so the choice never depends on file or thread order (identical
-- re-deliveries are indistinguishable). Ids with one copy pass straight
-- through; only duplicated ids are ranked. Then only relevant survivors are
-- kept: the events of D and the touches and soft conversions of D's users.
-- Input: candidates. Grain: one row per relevant surviving event.
SELECT * EXCLUDE (has_copies, relevant)
FROM candidates
WHERE NOT has_copies AND relevant
UNION ALL
SELECT * EXCLUDE (has_copies, relevant, dup_rank)
FROM (
  SELECT
    *,
    row_number() OVER (
      PARTITION BY event_id
      ORDER BY ts_us, event_date, user_key, utm_source, utm_medium, utm_campaign,
               utm_content, utm_term, device_type, country, rule_index, rule_value
    ) AS dup_rank
  FROM candidates
  WHERE has_copies
) AS ranked
WHERE dup_rank = 1 AND relevant
