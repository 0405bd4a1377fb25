-- Stage: survivors (view). SPEC §3.2 dedup: one row per event_id, the one
-- with the earliest event_time, then the earliest partition. Rows still tied
-- are ordered by their remaining columns so the choice never depends on file
-- or thread order.
-- Input: valid_events. Grain: one row per event_id.
SELECT * EXCLUDE (dup_rank)
FROM (
  SELECT
    *,
    row_number() OVER (
      PARTITION BY event_id
      ORDER BY ts_us, event_date, user_key, utm_source, utm_medium, utm_campaign,
               utm_content, utm_term, device_type, country, rule_index, rule_value
    ) AS dup_rank
  FROM valid_events
) AS ranked
WHERE dup_rank = 1
