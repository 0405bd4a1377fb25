-- Stage: relevant_events (materialised once). The survivors that later
-- stages read, with their rule's name and kind: every event of D, plus the
-- touches (non-empty utm_source, SPEC §3.3) and soft conversions of user keys
-- that occur in partition D. No other survivor can attribute (§3.4) or
-- assist (§3.6) an event of D, so the rest of the lookback is dropped here.
-- Input: survivors, conversion_rules, events_in. Parameter $1: the report date D.
-- Grain: one row per surviving event.
SELECT
  s.*,
  r.conversion_name,
  r.kind,
  coalesce(s.utm_source, '') <> '' AS is_touch
FROM survivors AS s
LEFT JOIN conversion_rules AS r ON r.rule_index = s.rule_index
LEFT JOIN (
  SELECT DISTINCT coalesce(user_id, anonymous_id) AS user_key
  FROM events_in
  WHERE event_date = $1
) AS users_of_d ON users_of_d.user_key = s.user_key
WHERE s.event_date = $1
   OR (users_of_d.user_key IS NOT NULL AND (s.utm_source <> '' OR r.kind = 'soft'))
