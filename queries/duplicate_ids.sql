-- Stage: duplicate_ids (materialised once). SPEC §3.2: the event_ids that
-- occur more than once among the valid rows read, and how many copies each
-- has. Usually a few percent of ids, so the ranking in `relevant_events` only
-- touches these; it also gives the manifest's duplicates_dropped.
-- Input: valid_events. Grain: one row per duplicated event_id.
SELECT event_id, count(*) AS copies
FROM valid_events
GROUP BY event_id
HAVING count(*) > 1
