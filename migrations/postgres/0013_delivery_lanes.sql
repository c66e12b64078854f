-- The webhook queue holds only work that is not done (issue 22): a delivery that
-- succeeds is deleted (its attempts, in webhook_attempts, are the log), except a
-- test event's, which keeps the only copy of its body; one that fails for good stays
-- as 'dead' until redelivered or pruned.
--
-- Pending deliveries are in one of two lanes:
-- * fresh (timed = 0): queued by the sequencer with their event, never attempted.
--   An endpoint's fresh deliveries are committed in sequence order (one sequencer
--   batch at a time), so each endpoint keeps a cursor, fresh_after, below which
--   nothing fresh is left: a claim reads from the cursor, never the finished prefix
--   whose index entries wait for VACUUM.
-- * timed (timed = 1): everything due at a time of its own: retries, redeliveries,
--   test events, deliveries deferred to a rate-limit slot.
--
-- Claiming a delivery sets only lease_until, which no index holds: on a page with
-- room (fill factor 70) it is a heap-only update. Nothing indexes the lease any
-- more: a worker that died leaves leases that the next claim on their endpoint takes
-- over, and idle workers look again at least every few seconds.
ALTER TABLE webhook_deliveries ADD COLUMN timed BIGINT NOT NULL DEFAULT 0;
UPDATE webhook_deliveries SET timed = 1
    WHERE state <> 'pending' OR attempts > 0 OR paced = 1 OR payload IS NOT NULL;
DELETE FROM webhook_deliveries WHERE state = 'succeeded';
ALTER TABLE webhook_attempts DROP CONSTRAINT webhook_attempts_delivery_id_fkey;
-- The sequencer's insert no longer locks the endpoint row for each delivery; a
-- delivery queued while its endpoint is deleted is never claimed (claims start from
-- endpoints) and goes with the next prune.
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_endpoint_id_fkey;
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_event_id_endpoint_id_key;
DROP INDEX webhook_deliveries_due;
DROP INDEX webhook_deliveries_by_endpoint;
DROP INDEX webhook_deliveries_by_age;
DROP INDEX webhook_deliveries_due_by_endpoint;
DROP INDEX webhook_deliveries_leased;
DROP INDEX webhook_attempts_by_delivery;
CREATE INDEX webhook_deliveries_fresh ON webhook_deliveries (endpoint_id, sequence)
    WHERE state = 'pending' AND timed = 0;
CREATE INDEX webhook_deliveries_timed ON webhook_deliveries (next_attempt_time)
    WHERE state = 'pending' AND timed = 1;
CREATE INDEX webhook_deliveries_timed_by_endpoint ON webhook_deliveries (endpoint_id, next_attempt_time)
    WHERE state = 'pending' AND timed = 1;
-- Redelivery finds an event's delivery here (or in the fresh lane, by sequence).
CREATE INDEX webhook_deliveries_settled ON webhook_deliveries (endpoint_id, event_id)
    WHERE timed = 1 OR state <> 'pending';
ALTER TABLE webhook_deliveries SET (fillfactor = 70);
ALTER TABLE webhook_endpoints ADD COLUMN fresh_after BIGINT NOT NULL DEFAULT 0;
