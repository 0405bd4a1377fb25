-- Stage: relevant_events (materialised once; last_touch and assisted read it). SPEC §3.2
-- dedup: one survivor per event_id, the copy with the earliest event_time,
-- then the earliest partition. Copies still tied are ordered by the other
-- SPEC columns in SPEC order, NULLs last (a copy that carries a value beats
-- one that lacks it), then by the matched rule's position and value, so the
-- choice never depends on file or thread order. Ids with one copy pass straight
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
      ORDER BY ts_us, event_date,
               event_type NULLS LAST, user_id NULLS LAST, anonymous_id NULLS LAST,
               utm_source NULLS LAST, utm_medium NULLS LAST, utm_campaign NULLS LAST,
               utm_content NULLS LAST, utm_term NULLS LAST, device_type NULLS LAST,
               country NULLS LAST, revenue NULLS LAST, rule_index NULLS LAST, rule_value
    ) AS dup_rank
  FROM candidates
  WHERE has_copies
) AS ranked
WHERE dup_rank = 1 AND relevant
