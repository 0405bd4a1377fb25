-- Stage: candidates (materialised once: the single wide pass over the input).
-- Keeps only the valid rows that can matter for report date D, classified:
--   * every row of partition D (the events of D are among them);
--   * every copy of a duplicated id, because dedup (SPEC §3.2) needs all
--     copies to find the earliest, even copies that matter for nothing else;
--   * touches (§3.3) and soft conversions of user keys that occur in D: no
--     other row can attribute (§3.4) or assist (§3.6) an event of D.
-- `relevant` marks the rows of the first and third kind.
-- Input: valid_events, conversion_rules, duplicate_ids, events_in.
-- Parameter $1: the report date D. Grain: one row per kept input row.
SELECT
  v.*,
  r.conversion_name,
  r.kind,
  coalesce(v.utm_source, '') <> '' AS is_touch,
  d.event_id IS NOT NULL AS has_copies,
  v.event_date = $1
    OR (users_of_d.user_key IS NOT NULL AND (v.utm_source <> '' OR r.kind = 'soft')) AS relevant
FROM valid_events AS v
LEFT JOIN conversion_rules AS r ON r.rule_index = v.rule_index
LEFT JOIN duplicate_ids AS d ON d.event_id = v.event_id
LEFT JOIN (
  SELECT DISTINCT coalesce(user_id, anonymous_id) AS user_key
  FROM events_in
  WHERE event_date = $1
) AS users_of_d ON users_of_d.user_key = v.user_key
WHERE v.event_date = $1
   OR d.event_id IS NOT NULL
   OR (users_of_d.user_key IS NOT NULL AND (v.utm_source <> '' OR r.kind = 'soft'))
