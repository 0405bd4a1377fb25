-- Stage: relevant_events (materialised once; last_touch and assisted read it). SPEC §3.2
-- dedup: one survivor per event_id, the copy with the earliest event_time,
-- then the earliest partition. Copies still tied are ordered by the other
-- SPEC columns in SPEC order, NULLs last (a copy that carries a value beats
-- one that lacks it), then by the matched rule's position and value, so the
-- choice never depends on file or thread order. Ids with one copy pass straight
-- through; only duplicated ids are ordered: all their copies in one sorted
-- run by event_id then the tie-break order, where a copy wins when the row
-- before it has another event_id. (One ordered window, not row_number() per
-- event_id: with hundreds of thousands of two-row partitions that was
-- several times slower.) Copies tied on every key are identical in every
-- column, so which of them is kept does not matter. Then only relevant
-- survivors are kept: the events of D and the touches and soft conversions
-- of D's users.
-- Input: candidates. Grain: one row per relevant surviving event.
SELECT * EXCLUDE (has_copies, relevant)
FROM candidates
WHERE NOT has_copies AND relevant
UNION ALL
SELECT * EXCLUDE (has_copies, relevant, previous_id)
FROM (
  SELECT
    *,
    lag(event_id) OVER (
      ORDER BY event_id, ts_us, event_date,
               event_type NULLS LAST, user_id NULLS LAST, anonymous_id NULLS LAST,
               utm_source NULLS LAST, utm_medium NULLS LAST, utm_campaign NULLS LAST,
               utm_content NULLS LAST, utm_term NULLS LAST, device_type NULLS LAST,
               country NULLS LAST, revenue NULLS LAST, rule_index NULLS LAST, rule_value
    ) AS previous_id
  FROM candidates
  WHERE has_copies
) AS ordered
WHERE (previous_id IS DISTINCT FROM event_id) AND relevant
