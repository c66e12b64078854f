-- Organizations, their API keys and members, partnerships between them, and the
-- idempotency records that make every write safe to retry.
-- Times are microseconds since the Unix epoch (UTC) in both dialects, so every
-- query that does not need a dialect's special syntax is written once.

CREATE TABLE organizations (
    id             TEXT    PRIMARY KEY,
    slug           TEXT    NOT NULL UNIQUE,
    display_name   TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    suspend_reason TEXT,
    create_time    BIGINT  NOT NULL,
    update_time    BIGINT  NOT NULL,
    revision       BIGINT  NOT NULL
);

CREATE TABLE api_keys (
    id              TEXT    PRIMARY KEY,
    -- NULL for the hub operator's keys.
    organization_id TEXT    REFERENCES organizations (id),
    display_name    TEXT    NOT NULL,
    scopes          TEXT    NOT NULL,
    prefix          TEXT    NOT NULL,
    key_hash        TEXT    NOT NULL UNIQUE,
    create_time     BIGINT  NOT NULL,
    expire_time     BIGINT,
    revoke_time     BIGINT
);
CREATE INDEX api_keys_by_organization ON api_keys (organization_id, id);

CREATE TABLE members (
    id              TEXT    PRIMARY KEY,
    organization_id TEXT    NOT NULL REFERENCES organizations (id),
    display_name    TEXT    NOT NULL,
    email           TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    time_zone       TEXT    NOT NULL,
    create_time     BIGINT  NOT NULL,
    update_time     BIGINT  NOT NULL,
    revision        BIGINT  NOT NULL,
    UNIQUE (organization_id, email)
);
CREATE INDEX members_by_organization ON members (organization_id, id);

CREATE TABLE partnerships (
    id               TEXT    PRIMARY KEY,
    proposer_id      TEXT    NOT NULL REFERENCES organizations (id),
    recipient_id     TEXT    NOT NULL REFERENCES organizations (id),
    relationship     TEXT    NOT NULL,
    message          TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    state_changed_by TEXT    NOT NULL REFERENCES organizations (id),
    state_reason     TEXT    NOT NULL,
    create_time      BIGINT  NOT NULL,
    update_time      BIGINT  NOT NULL,
    revision         BIGINT  NOT NULL,
    CHECK (proposer_id <> recipient_id)
);
-- At most one live partnership per direction and relationship.
CREATE UNIQUE INDEX partnerships_one_live
    ON partnerships (proposer_id, recipient_id, relationship)
    WHERE state IN ('proposed', 'active', 'suspended');
CREATE INDEX partnerships_by_proposer ON partnerships (proposer_id, id);
CREATE INDEX partnerships_by_recipient ON partnerships (recipient_id, id);

CREATE TABLE idempotency_records (
    -- Whose request: 'operator' or 'org:<organization id>'.
    scope        TEXT    NOT NULL,
    request_id   TEXT    NOT NULL,
    method       TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    response     BYTEA,
    create_time  BIGINT  NOT NULL,
    PRIMARY KEY (scope, request_id)
);
CREATE INDEX idempotency_records_by_age ON idempotency_records (create_time);
