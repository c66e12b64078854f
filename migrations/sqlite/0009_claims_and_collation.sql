-- (PostgreSQL also aligns the collation of customer references; SQLite needs no such step.)
-- Claims probe each endpoint for a due delivery (see store/webhooks.rs, due_candidates),
-- so a claim costs the same however long the queue.
CREATE INDEX webhook_deliveries_due_by_endpoint ON webhook_deliveries (endpoint_id, state, next_attempt_time);
