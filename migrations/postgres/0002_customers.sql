-- Shared customer records and what hangs off them: lookup keys, external ids,
-- grants, overlays, history, access requests and interactions.

-- Values the hub generates once and keeps (the match-key secret).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE customers (
    id          TEXT    COLLATE "C" PRIMARY KEY,
    owner_id    TEXT    NOT NULL REFERENCES organizations (id),
    kind        TEXT    NOT NULL,
    -- active, deleted, merged, erased
    state       TEXT    NOT NULL,
    -- The profile as JSON (see store/customers.rs).
    profile     TEXT    NOT NULL,
    -- The display name lower-cased, compared byte by byte in both dialects.
    sort_name   TEXT    COLLATE "C" NOT NULL,
    merged_into TEXT,
    create_time BIGINT  NOT NULL,
    update_time BIGINT  NOT NULL,
    delete_time BIGINT,
    revision    BIGINT  NOT NULL
);
CREATE INDEX customers_by_owner ON customers (owner_id, id);
CREATE INDEX customers_by_owner_update ON customers (owner_id, update_time, id);
CREATE INDEX customers_by_owner_name ON customers (owner_id, sort_name, id);

-- What customers are found by: HMACs of emails, phones and name + postal code (so
-- the table does not reveal them), and tags.
CREATE TABLE customer_keys (
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    PRIMARY KEY (kind, key, owner_id, customer_id)
);
CREATE INDEX customer_keys_by_customer ON customer_keys (customer_id);

-- Each organization's own id for a customer: one per organization and customer.
CREATE TABLE customer_external_ids (
    org_id      TEXT NOT NULL REFERENCES organizations (id),
    external_id TEXT NOT NULL,
    customer_id TEXT NOT NULL REFERENCES customers (id),
    PRIMARY KEY (org_id, external_id),
    UNIQUE (customer_id, org_id)
);

CREATE TABLE customer_grants (
    id             TEXT   PRIMARY KEY,
    customer_id    TEXT   NOT NULL REFERENCES customers (id),
    grantee_id     TEXT   NOT NULL REFERENCES organizations (id),
    partnership_id TEXT   NOT NULL REFERENCES partnerships (id),
    level          TEXT   NOT NULL,
    -- Comma-separated customer field names.
    fields         TEXT   NOT NULL,
    create_time    BIGINT NOT NULL,
    revoke_time    BIGINT
);
CREATE UNIQUE INDEX customer_grants_one_live
    ON customer_grants (customer_id, grantee_id) WHERE revoke_time IS NULL;
CREATE INDEX customer_grants_by_grantee
    ON customer_grants (grantee_id, customer_id) WHERE revoke_time IS NULL;
CREATE INDEX customer_grants_by_customer ON customer_grants (customer_id, id);

CREATE TABLE customer_overlays (
    customer_id    TEXT   NOT NULL REFERENCES customers (id),
    org_id         TEXT   NOT NULL REFERENCES organizations (id),
    account_number TEXT   NOT NULL,
    status         TEXT   NOT NULL,
    notes          TEXT   NOT NULL,
    attributes     TEXT   NOT NULL,
    update_time    BIGINT NOT NULL,
    revision       BIGINT NOT NULL,
    PRIMARY KEY (customer_id, org_id)
);

CREATE TABLE customer_history (
    id          TEXT   PRIMARY KEY,
    customer_id TEXT   NOT NULL REFERENCES customers (id),
    time        BIGINT NOT NULL,
    org_id      TEXT,
    key_id      TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    -- Set for entries only one organization may see (its overlay).
    private_to  TEXT,
    -- JSON list of {field, old, new}.
    changes     TEXT   NOT NULL,
    note        TEXT   NOT NULL
);
CREATE INDEX customer_history_by_customer ON customer_history (customer_id, id);

-- Answers to MatchCustomer: a handle that lets the requester ask for access
-- without learning which record matched.
CREATE TABLE customer_matches (
    id           TEXT   PRIMARY KEY,
    requester_id TEXT   NOT NULL REFERENCES organizations (id),
    owner_id     TEXT   NOT NULL REFERENCES organizations (id),
    customer_id  TEXT   NOT NULL REFERENCES customers (id),
    rule         TEXT   NOT NULL,
    expire_time  BIGINT NOT NULL
);
CREATE INDEX customer_matches_by_age ON customer_matches (expire_time);

CREATE TABLE access_requests (
    id              TEXT   PRIMARY KEY,
    requester_id    TEXT   NOT NULL REFERENCES organizations (id),
    owner_id        TEXT   NOT NULL REFERENCES organizations (id),
    customer_id     TEXT   NOT NULL REFERENCES customers (id),
    match_id        TEXT   NOT NULL,
    level           TEXT   NOT NULL,
    fields          TEXT   NOT NULL,
    reason          TEXT   NOT NULL,
    state           TEXT   NOT NULL,
    decision_reason TEXT   NOT NULL,
    grant_id        TEXT,
    create_time     BIGINT NOT NULL,
    decide_time     BIGINT
);
CREATE UNIQUE INDEX access_requests_one_pending
    ON access_requests (requester_id, customer_id) WHERE state = 'pending';
CREATE INDEX access_requests_by_owner ON access_requests (owner_id, id);
CREATE INDEX access_requests_by_requester ON access_requests (requester_id, id);

CREATE TABLE interactions (
    id           TEXT   PRIMARY KEY,
    customer_id  TEXT   NOT NULL REFERENCES customers (id),
    org_id       TEXT   NOT NULL REFERENCES organizations (id),
    type         TEXT   NOT NULL,
    occur_time   BIGINT NOT NULL,
    member_id    TEXT,
    channel      TEXT   NOT NULL,
    direction    TEXT   NOT NULL,
    summary      TEXT   NOT NULL,
    body         TEXT   NOT NULL,
    currency     TEXT,
    amount_units BIGINT,
    amount_nanos BIGINT,
    attributes   TEXT   NOT NULL,
    visibility   TEXT   NOT NULL,
    create_time  BIGINT NOT NULL
);
CREATE INDEX interactions_by_customer ON interactions (customer_id, occur_time, id);
