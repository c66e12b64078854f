-- Webhook endpoints of organizations, and the durable queue of deliveries to them.
CREATE TABLE webhook_endpoints (
    id                    TEXT    PRIMARY KEY,
    organization_id       TEXT    NOT NULL REFERENCES organizations (id),
    url                   TEXT    NOT NULL,
    description           TEXT    NOT NULL,
    -- The event-type filter, space-separated (`customer.` for `customer.*`); empty: all.
    event_types           TEXT    NOT NULL,
    enabled               BIGINT  NOT NULL,
    disabled_reason       TEXT    NOT NULL,
    -- Signing secret (whsec_…); needed in clear to sign.
    secret                TEXT    NOT NULL,
    consecutive_failures  BIGINT  NOT NULL,
    last_success_time     BIGINT,
    create_time           BIGINT  NOT NULL,
    update_time           BIGINT  NOT NULL,
    revision              BIGINT  NOT NULL
);
CREATE INDEX webhook_endpoints_by_organization ON webhook_endpoints (organization_id);

-- One row per (event, endpoint), written in the event's transaction.
CREATE TABLE webhook_deliveries (
    id                 TEXT    PRIMARY KEY,
    endpoint_id        TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    organization_id    TEXT    NOT NULL,
    event_id           TEXT    NOT NULL,
    sequence           BIGINT  NOT NULL,
    -- pending, succeeded, dead
    state              TEXT    NOT NULL,
    attempts           BIGINT  NOT NULL,
    next_attempt_time  BIGINT  NOT NULL,
    -- A worker holds the delivery until then; after it, another may take it over.
    lease_until        BIGINT,
    create_time        BIGINT  NOT NULL,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_time);

CREATE TABLE webhook_attempts (
    id                TEXT    PRIMARY KEY,
    delivery_id       TEXT    NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    endpoint_id       TEXT    NOT NULL,
    event_id          TEXT    NOT NULL,
    attempt_time      BIGINT  NOT NULL,
    -- HTTP status, or 0 when no response came.
    status            BIGINT  NOT NULL,
    latency_micros    BIGINT  NOT NULL,
    response_excerpt  TEXT    NOT NULL,
    error             TEXT    NOT NULL
);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id, attempt_time);
