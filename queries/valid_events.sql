-- Stage: valid_events (view). Valid rows, narrowed to what later stages use,
-- with the first matching rule (SPEC §2) evaluated on the event's own raw columns.
-- Input: events_in. Grain: one row per valid input row.
-- {{RULE_INDEX}} / {{RULE_VALUE}} / {{RULE_NAME}} / {{RULE_KIND}} are the
-- validated rule expressions (src/rules.rs). id_key = hash64(event_id): the
-- integer the duplicate search groups and joins on (src/functions.rs).
SELECT
  event_id,
  hash64(event_id) AS id_key,
  event_date,
  CAST(event_time AS BIGINT) AS ts_us,
  coalesce(user_id, anonymous_id) AS user_key,
  event_type,
  user_id,
  anonymous_id,
  CAST(revenue AS DOUBLE) AS revenue,
  utm_source,
  utm_medium,
  utm_campaign,
  utm_content,
  utm_term,
  device_type,
  country,
  rule_index,
  {{RULE_VALUE}} AS rule_value,
  {{RULE_NAME}} AS conversion_name,
  {{RULE_KIND}} AS kind
FROM (
  SELECT *, {{RULE_INDEX}} AS rule_index
  FROM events_in
  -- Exactly the rows checked_events gives no reject_reason (a NULL fails
  -- `<> ''` too), tested as a plain predicate: building the reason text for
  -- every row only to drop it cost seconds.
  WHERE event_id <> '' AND event_type <> '' AND event_time IS NOT NULL
) AS valid
