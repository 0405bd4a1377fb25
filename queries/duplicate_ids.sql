-- Stage: duplicate_ids (materialised once). SPEC §3.2: the event_ids that
-- may occur more than once among the valid rows read, as their id_key
-- (hash64 of the id). Usually a few percent of ids, so the ranking in
-- `relevant_events` only touches these. A hash collision only adds an id with
-- one copy, which the ranking (on the real event_id) passes through unchanged.
-- Input: valid_events. Grain: one row per id_key seen more than once.
SELECT id_key
FROM valid_events
GROUP BY id_key
HAVING count(*) > 1
