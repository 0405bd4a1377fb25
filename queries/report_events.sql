-- Stage: report_events (view). The events of D (SPEC §3.2: survivors found
-- in partition D, whatever their event_time), with their rule's name and kind.
-- Input: survivors, conversion_rules. Parameter $1: the report date D.
-- Grain: one row per event of D.
SELECT
  s.*,
  r.conversion_name,
  r.kind,
  coalesce(s.utm_source, '') <> '' AS is_touch
FROM survivors AS s
LEFT JOIN conversion_rules AS r ON r.rule_index = s.rule_index
WHERE s.event_date = $1
