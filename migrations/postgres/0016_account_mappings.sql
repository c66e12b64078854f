-- Account mappings: two partners compare segments of theirs by match keys and learn
-- counts only. `figures` (the overlaps) and `inputs` are JSON written by the comparison: the figures
-- as shown (thresholded), and what they were computed from (each segment's revision
-- and member count), which decides whether a refresh may run.
CREATE TABLE account_mappings (
    id              TEXT    PRIMARY KEY,
    requester_id    TEXT    NOT NULL REFERENCES organizations (id),
    partner_id      TEXT    NOT NULL REFERENCES organizations (id),
    state           TEXT    NOT NULL,
    threshold       BIGINT  NOT NULL,
    figures         TEXT    NOT NULL,
    inputs          TEXT    NOT NULL,
    compare_time    BIGINT,
    -- The earliest time it may be compared again.
    refresh_time    BIGINT,
    -- When the hub next weighs whether to compare it again by itself.
    check_time      BIGINT,
    operation_id    TEXT,
    ended_by        TEXT    REFERENCES organizations (id),
    revision        BIGINT  NOT NULL,
    create_time     BIGINT  NOT NULL,
    update_time     BIGINT  NOT NULL,
    end_time        BIGINT
);
CREATE INDEX account_mappings_by_requester ON account_mappings (requester_id, id);
CREATE INDEX account_mappings_by_partner ON account_mappings (partner_id, id);
CREATE INDEX account_mappings_to_check ON account_mappings (state, check_time);
-- One open mapping between two organizations, whichever asked.
CREATE UNIQUE INDEX account_mappings_one_open ON account_mappings
    (LEAST(requester_id, partner_id), GREATEST(requester_id, partner_id)) WHERE state IN ('proposed', 'active');

-- The segments each side named, in order.
CREATE TABLE mapping_segments (
    mapping_id  TEXT    NOT NULL REFERENCES account_mappings (id),
    side        TEXT    NOT NULL,
    position    BIGINT  NOT NULL,
    segment_id  TEXT    NOT NULL REFERENCES segments (id),
    PRIMARY KEY (mapping_id, side, position)
);
CREATE INDEX mapping_segments_by_segment ON mapping_segments (segment_id);

-- The records that matched at the last comparison, per pair of segments and side
-- (whose record it is): what RequestOverlapAccess asks for. Never shown to the other
-- side; replaced by each comparison.
CREATE TABLE mapping_matches (
    mapping_id         TEXT  NOT NULL REFERENCES account_mappings (id),
    requester_segment  TEXT  NOT NULL,
    partner_segment    TEXT  NOT NULL,
    side               TEXT  NOT NULL,
    customer_id        TEXT  COLLATE "C" NOT NULL REFERENCES customers (id),
    PRIMARY KEY (mapping_id, requester_segment, partner_segment, side, customer_id)
);

-- Access requests made through a mapping's overlap name it (and no match handle).
-- One pending request per requester and customer, and per mapping: asking through a
-- mapping is independent of what else the requester asked for (so the number asked
-- gives nothing else away).
ALTER TABLE access_requests ADD COLUMN mapping_id TEXT REFERENCES account_mappings (id);
DROP INDEX access_requests_one_pending;
CREATE UNIQUE INDEX access_requests_one_pending
    ON access_requests (requester_id, customer_id, COALESCE(mapping_id, '')) WHERE state = 'pending';
CREATE INDEX access_requests_by_mapping ON access_requests (mapping_id, owner_id, state)
    WHERE mapping_id IS NOT NULL;

-- Long-running operations (google.longrunning): background work with progress, run
-- by whichever replica claims it (lease_expire), cancellable between steps. Visible
-- to the organizations named.
CREATE TABLE operations (
    id               TEXT    PRIMARY KEY,
    verb             TEXT    NOT NULL,
    target_id        TEXT    NOT NULL,
    org_id           TEXT    NOT NULL REFERENCES organizations (id),
    other_org_id     TEXT    REFERENCES organizations (id),
    state            TEXT    NOT NULL,
    done             BIGINT  NOT NULL,
    total            BIGINT  NOT NULL,
    cancel_requested BIGINT  NOT NULL,
    error_code       BIGINT,
    error_message    TEXT,
    lease_expire     BIGINT,
    create_time      BIGINT  NOT NULL,
    update_time      BIGINT  NOT NULL,
    end_time         BIGINT
);
CREATE INDEX operations_by_org ON operations (org_id, id);
CREATE INDEX operations_by_other_org ON operations (other_org_id, id);
CREATE INDEX operations_waiting ON operations (state, lease_expire);
