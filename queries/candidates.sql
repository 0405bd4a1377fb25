-- Stage: candidates (materialised once: the single wide pass over the input).
-- Keeps only the valid rows that can matter for report date D, classified:
--   * every row of partition D (the events of D are among them);
--   * every copy of a duplicated id, because dedup (SPEC §3.2) needs all
--     copies to find the earliest, even copies that matter for nothing else;
--   * touches (§3.3) and soft conversions of user keys that occur in D: no
--     other row can attribute (§3.4) or assist (§3.6) an event of D.
-- `relevant` marks the rows of the first and third kind. Both joins are on
-- 64-bit hashes (src/functions.rs): a collision keeps a row that the later
-- stages, which compare the real event_id and user_key, then ignore.
-- Input: valid_events, duplicate_ids, events_in.
-- Parameter $1: the report date D. Grain: one row per kept input row.
SELECT
  v.* EXCLUDE (id_key),
  coalesce(v.utm_source, '') <> '' AS is_touch,
  d.id_key IS NOT NULL AS has_copies,
  v.event_date = $1
    OR (users_of_d.user_hash IS NOT NULL AND (v.utm_source <> '' OR v.kind = 'soft')) AS relevant
FROM valid_events AS v
LEFT JOIN duplicate_ids AS d ON d.id_key = v.id_key
LEFT JOIN (
  SELECT DISTINCT hash64(coalesce(user_id, anonymous_id)) AS user_hash
  FROM events_in
  WHERE event_date = $1
) AS users_of_d ON users_of_d.user_hash = hash64(v.user_key)
WHERE v.event_date = $1
   OR d.id_key IS NOT NULL
   OR (users_of_d.user_hash IS NOT NULL AND (v.utm_source <> '' OR v.kind = 'soft'))
