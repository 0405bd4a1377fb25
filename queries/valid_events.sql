-- Stage: valid_events (view). Valid rows, narrowed to what later stages use,
-- with the first matching rule (SPEC §2) evaluated on the event's own raw columns.
-- Input: checked_events. Grain: one row per valid input row.
-- {{RULE_INDEX}} / {{RULE_VALUE}} are the validated rule expressions (src/rules.rs).
SELECT
  event_id,
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
  {{RULE_VALUE}} AS rule_value
FROM (
  SELECT *, {{RULE_INDEX}} AS rule_index
  FROM checked_events
  WHERE reject_reason IS NULL
) AS valid
