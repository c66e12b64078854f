-- The tamper-evident audit log: each organization's changes as a hash chain, appended
-- where events are numbered (src/store/events/sequence.rs), and signed checkpoints.
-- What a hash covers is src/domain/audit.rs. Entries are never pruned; erasing a
-- customer empties the content of its entries and keeps their hashes.

-- An organization's newest entry: how many it has and the last one's hash.
ALTER TABLE event_feeds ADD COLUMN audit_position BIGINT NOT NULL DEFAULT 0;
ALTER TABLE event_feeds ADD COLUMN audit_hash BLOB;

CREATE TABLE audit_entries (
    organization_id TEXT    NOT NULL,
    position        BIGINT  NOT NULL,
    -- The event's sequence in the organization's feed, its id, type and resource.
    sequence        BIGINT  NOT NULL,
    event_id        TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    resource        TEXT    NOT NULL,
    -- The customer the event is about, if any (hashed): only its entries may be
    -- emptied, and only by its erasure.
    customer_id     TEXT,
    -- customer.erased: the customers whose entries it emptied (hashed).
    erases          TEXT,
    create_time     BIGINT  NOT NULL,
    -- The event as the feed carried it (liaison.v1.Event) and the random salt
    -- hashed with it; both NULL once erased.
    content         BLOB,
    salt            BLOB,
    content_hash    BLOB   NOT NULL,
    hash            BLOB   NOT NULL,
    PRIMARY KEY (organization_id, position)
);

CREATE INDEX audit_entries_by_customer ON audit_entries (customer_id)
    WHERE customer_id IS NOT NULL;

CREATE TABLE audit_checkpoints (
    organization_id TEXT    NOT NULL,
    position        BIGINT  NOT NULL,
    hash            BLOB   NOT NULL,
    create_time     BIGINT  NOT NULL,
    public_key      BLOB   NOT NULL,
    signature       BLOB   NOT NULL,
    PRIMARY KEY (organization_id, position)
);
