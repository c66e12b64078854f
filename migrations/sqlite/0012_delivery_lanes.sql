-- The webhook queue holds only work that is not done: see the PostgreSQL migration
-- 0013_delivery_lanes.sql for the lanes (fresh deliveries read from each endpoint's
-- cursor, timed ones by due time) and why nothing indexes the lease. SQLite cannot
-- drop a foreign key, so both tables are rebuilt without theirs: a succeeded
-- delivery is deleted and its attempts stay as the log.
CREATE TABLE webhook_attempts_new (
    id                TEXT    PRIMARY KEY,
    delivery_id       TEXT    NOT NULL,
    endpoint_id       TEXT    NOT NULL,
    event_id          TEXT    NOT NULL,
    attempt_time      BIGINT  NOT NULL,
    status            BIGINT  NOT NULL,
    latency_micros    BIGINT  NOT NULL,
    response_excerpt  TEXT    NOT NULL,
    error             TEXT    NOT NULL,
    organization_id   TEXT    NOT NULL DEFAULT '',
    event_type        TEXT    NOT NULL DEFAULT '',
    -- succeeded, retrying, failed
    outcome           TEXT    NOT NULL DEFAULT 'failed'
);
INSERT INTO webhook_attempts_new (id, delivery_id, endpoint_id, event_id, attempt_time,
    status, latency_micros, response_excerpt, error, organization_id, event_type, outcome)
    SELECT id, delivery_id, endpoint_id, event_id, attempt_time, status, latency_micros,
    response_excerpt, error, organization_id, event_type, outcome FROM webhook_attempts;
DROP TABLE webhook_attempts;
ALTER TABLE webhook_attempts_new RENAME TO webhook_attempts;
CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts (endpoint_id, id);
CREATE INDEX webhook_attempts_by_organization ON webhook_attempts (organization_id, id);
CREATE INDEX webhook_attempts_by_event ON webhook_attempts (event_id);

CREATE TABLE webhook_deliveries_new (
    id                 TEXT    PRIMARY KEY,
    endpoint_id        TEXT    NOT NULL,
    organization_id    TEXT    NOT NULL,
    event_id           TEXT    NOT NULL,
    sequence           BIGINT  NOT NULL,
    -- pending or dead; succeeded only for a test event (others are deleted then)
    state              TEXT    NOT NULL,
    attempts           BIGINT  NOT NULL,
    next_attempt_time  BIGINT  NOT NULL,
    -- A worker holds the delivery until then; after it, another may take it over.
    lease_until        BIGINT,
    create_time        BIGINT  NOT NULL,
    event_type         TEXT    NOT NULL DEFAULT '',
    -- The body of an event that is not in the feed (test events); NULL: read the feed.
    payload            BLOB,
    -- 1 when next_attempt_time is a rate-limit slot already reserved for this delivery.
    paced              BIGINT  NOT NULL DEFAULT 0,
    -- 0: fresh (queued with its event, read from the endpoint's cursor); 1: timed.
    timed              BIGINT  NOT NULL DEFAULT 0
);
INSERT INTO webhook_deliveries_new (id, endpoint_id, organization_id, event_id, sequence,
    state, attempts, next_attempt_time, lease_until, create_time, event_type, payload, paced, timed)
    SELECT id, endpoint_id, organization_id, event_id, sequence, state, attempts,
    next_attempt_time, lease_until, create_time, event_type, payload, paced,
    CASE WHEN state <> 'pending' OR attempts > 0 OR paced = 1 OR payload IS NOT NULL
         THEN 1 ELSE 0 END
    FROM webhook_deliveries WHERE state <> 'succeeded';
DROP TABLE webhook_deliveries;
ALTER TABLE webhook_deliveries_new RENAME TO webhook_deliveries;
CREATE INDEX webhook_deliveries_fresh ON webhook_deliveries (endpoint_id, sequence)
    WHERE state = 'pending' AND timed = 0;
CREATE INDEX webhook_deliveries_timed ON webhook_deliveries (next_attempt_time)
    WHERE state = 'pending' AND timed = 1;
CREATE INDEX webhook_deliveries_timed_by_endpoint ON webhook_deliveries (endpoint_id, next_attempt_time)
    WHERE state = 'pending' AND timed = 1;
CREATE INDEX webhook_deliveries_settled ON webhook_deliveries (endpoint_id, event_id)
    WHERE timed = 1 OR state <> 'pending';
ALTER TABLE webhook_endpoints ADD COLUMN fresh_after BIGINT NOT NULL DEFAULT 0;
