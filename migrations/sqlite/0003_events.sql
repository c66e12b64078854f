-- Per-organization event feeds (the transactional outbox).
--
-- event_feeds holds each organization's newest sequence number. A transaction that
-- emits events bumps its organizations' rows last, just before it commits, in
-- organization-id order; the row lock it takes orders every writer of one feed, so
-- sequences are gapless and become visible in order (see src/store/events.rs).
CREATE TABLE event_feeds (
    organization_id TEXT    PRIMARY KEY REFERENCES organizations (id),
    last_sequence   BIGINT  NOT NULL
);

CREATE TABLE events (
    organization_id TEXT    NOT NULL,
    sequence        BIGINT  NOT NULL,
    id              TEXT    NOT NULL UNIQUE,
    type            TEXT    NOT NULL,
    resource        TEXT    NOT NULL,
    create_time     BIGINT  NOT NULL,
    -- The event as a protobuf message (liaison.v1.Event without its sequence).
    body            BLOB   NOT NULL,
    PRIMARY KEY (organization_id, sequence)
);
