-- The delivery queue's indexes hold pending work only. A delivery is written pending,
-- claimed (its lease set) and finished (succeeded or dead). Before, every index that
-- the workers read led with `state` over the whole table, so finishing a delivery
-- added a new entry to each of them and left the pending one behind until VACUUM;
-- claims, probes and counts read through those. Now:
-- - claims and their probes read partial indexes of pending deliveries only, per
--   endpoint in sequence order and by due time (store/webhooks/queue.rs);
-- - the worker's next-due probe reads pending deliveries by due time, from now on;
-- - nothing indexes `lease_until`, so setting a lease changes no indexed column (on
--   PostgreSQL the claim is then a heap-only update, with room left on each page for
--   it); a lease that ran out is found by the workers' periodic look instead;
-- - finished deliveries are indexed for pruning by age, dead ones per endpoint (for
--   redelivery and the backlog count), and every delivery per endpoint (deleting an
--   endpoint deletes its deliveries).
DROP INDEX webhook_deliveries_leased;
DROP INDEX webhook_deliveries_due;
DROP INDEX webhook_deliveries_due_by_endpoint;
DROP INDEX webhook_deliveries_by_endpoint;
DROP INDEX webhook_deliveries_by_age;
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, sequence)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_pending_due ON webhook_deliveries (endpoint_id, next_attempt_time)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_next ON webhook_deliveries (next_attempt_time)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (create_time)
    WHERE state <> 'pending';
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (endpoint_id, create_time)
    WHERE state = 'dead';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, create_time);
