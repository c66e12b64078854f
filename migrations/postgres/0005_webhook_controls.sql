-- Endpoint controls (ordering, rate limit, secret rotation, failure period), test
-- events, and attempt outcomes.
ALTER TABLE webhook_endpoints ADD COLUMN ordered BIGINT NOT NULL DEFAULT 0;
ALTER TABLE webhook_endpoints ADD COLUMN rate_limit_per_second BIGINT NOT NULL DEFAULT 0;
-- Rate limiting (GCRA): the earliest time the next request may go; reserved at claim.
ALTER TABLE webhook_endpoints ADD COLUMN pace_time BIGINT NOT NULL DEFAULT 0;
-- During a rotation the previous secret signs too, until it expires.
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret TEXT NOT NULL DEFAULT '';
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret_expire_time BIGINT;
-- When the current run of failures began; NULL while healthy.
ALTER TABLE webhook_endpoints ADD COLUMN failing_since BIGINT;

ALTER TABLE webhook_deliveries ADD COLUMN event_type TEXT NOT NULL DEFAULT '';
-- The body of an event that is not in the feed (test events); NULL: read the feed.
ALTER TABLE webhook_deliveries ADD COLUMN payload BYTEA;
-- 1 when next_attempt_time is a rate-limit slot already reserved for this delivery.
ALTER TABLE webhook_deliveries ADD COLUMN paced BIGINT NOT NULL DEFAULT 0;
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, state, sequence);
CREATE INDEX webhook_deliveries_by_age ON webhook_deliveries (create_time);

ALTER TABLE webhook_attempts ADD COLUMN organization_id TEXT NOT NULL DEFAULT '';
ALTER TABLE webhook_attempts ADD COLUMN event_type TEXT NOT NULL DEFAULT '';
-- succeeded, retrying, failed
ALTER TABLE webhook_attempts ADD COLUMN outcome TEXT NOT NULL DEFAULT 'failed';
CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts (endpoint_id, id);
CREATE INDEX webhook_attempts_by_organization ON webhook_attempts (organization_id, id);
CREATE INDEX webhook_attempts_by_event ON webhook_attempts (event_id);
