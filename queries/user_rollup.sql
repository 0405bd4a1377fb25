-- Fragment: per-user columns of the summary tables. The summaries first
-- group attributed_events by their grain plus user_key with these, so that
-- users and converters become plain counts of groups (no DISTINCT sets):
-- a user counts once per grain row by construction.
  count(*) AS events,
  count(CASE WHEN kind = 'hard' THEN 1 END) AS hard_conversions,
  count(CASE WHEN kind = 'soft' THEN 1 END) AS soft_conversions,
  sum(CASE WHEN kind = 'hard' THEN value END) AS hard_value,
  sum(CASE WHEN kind = 'soft' THEN value END) AS soft_value,
  count(CASE WHEN assisted THEN 1 END) AS assisted_hard_conversions
