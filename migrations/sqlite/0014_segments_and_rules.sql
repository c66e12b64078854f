-- Segments: an organization's saved customer filters, in the ListCustomers filter
-- language, kept in canonical form (phones in E.164) so they read the same under any
-- phone region. A deleted segment keeps its row (delete_time) so that the revoked rules
-- that shared it still name it.
CREATE TABLE segments (
    id               TEXT    PRIMARY KEY,
    organization_id  TEXT    NOT NULL REFERENCES organizations (id),
    display_name     TEXT    NOT NULL,
    filter           TEXT    NOT NULL,
    revision         BIGINT  NOT NULL,
    create_time      BIGINT  NOT NULL,
    update_time      BIGINT  NOT NULL,
    delete_time      BIGINT
);
CREATE INDEX segments_by_organization ON segments (organization_id, id);

-- Sharing rules: an owner shares a segment (or every customer it owns: segment_id
-- NULL) with one partner (grantee_id) or with every organization the owner stands in
-- a relationship to ("owner <relationship> partner": partnerships the owner proposed). Reads evaluate the live rules themselves; nothing is stored per
-- customer, so a revocation, an expiry or a customer leaving the segment takes effect
-- at the next read.
CREATE TABLE sharing_rules (
    id               TEXT    PRIMARY KEY,
    owner_id         TEXT    NOT NULL REFERENCES organizations (id),
    display_name     TEXT    NOT NULL,
    segment_id       TEXT    REFERENCES segments (id),
    grantee_id       TEXT    REFERENCES organizations (id),
    relationship     TEXT,
    level            TEXT    NOT NULL,
    fields           TEXT    NOT NULL,
    preset_id        TEXT    REFERENCES field_presets (id),
    expire_time      BIGINT,
    revoke_time      BIGINT,
    revision         BIGINT  NOT NULL,
    create_time      BIGINT  NOT NULL,
    update_time      BIGINT  NOT NULL,
    CHECK ((grantee_id IS NULL) <> (relationship IS NULL))
);
CREATE INDEX sharing_rules_by_owner ON sharing_rules (owner_id, id);
CREATE INDEX sharing_rules_live_by_owner ON sharing_rules (owner_id) WHERE revoke_time IS NULL;
CREATE INDEX sharing_rules_by_grantee ON sharing_rules (grantee_id) WHERE revoke_time IS NULL;
CREATE INDEX sharing_rules_by_segment ON sharing_rules (segment_id) WHERE revoke_time IS NULL;
CREATE INDEX sharing_rules_by_preset ON sharing_rules (preset_id) WHERE revoke_time IS NULL;

-- Counting a segment on kind (say, every person among a million customers) walks this
-- index alone, never the records.
CREATE INDEX customers_by_owner_state_kind ON customers (owner_id, state, kind);
