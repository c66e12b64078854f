-- Field presets: named sets of customer fields an organization's grants share. A grant
-- made through one keeps the preset's fields in its own row (what every read joins),
-- rewritten in the transaction that changes the preset.
CREATE TABLE field_presets (
    id               TEXT    PRIMARY KEY,
    organization_id  TEXT    NOT NULL REFERENCES organizations (id),
    display_name     TEXT    NOT NULL,
    fields           TEXT    NOT NULL,
    revision         BIGINT  NOT NULL,
    create_time      BIGINT  NOT NULL,
    update_time      BIGINT  NOT NULL
);
CREATE INDEX field_presets_by_organization ON field_presets (organization_id, id);

ALTER TABLE customer_grants ADD COLUMN preset_id TEXT REFERENCES field_presets (id) ON DELETE SET NULL;
CREATE INDEX customer_grants_by_preset ON customer_grants (preset_id, grantee_id)
    WHERE preset_id IS NOT NULL AND revoke_time IS NULL;
