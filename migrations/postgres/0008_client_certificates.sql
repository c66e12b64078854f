-- Client certificates registered to organizations: with mutual TLS, a connection
-- presenting a matching certificate authenticates as the organization.
CREATE TABLE client_certificates (
    id              TEXT    PRIMARY KEY,
    organization_id TEXT    NOT NULL REFERENCES organizations (id),
    display_name    TEXT    NOT NULL,
    -- Exactly one of the two: lower-case hex SHA-256 of the DER, or a subject CN.
    fingerprint     TEXT,
    subject         TEXT,
    scopes          TEXT    NOT NULL,
    create_time     BIGINT  NOT NULL,
    revoke_time     BIGINT,
    CHECK ((fingerprint IS NULL) <> (subject IS NULL))
);
CREATE INDEX client_certificates_by_organization ON client_certificates (organization_id, id);
-- A live certificate belongs to one organization only.
CREATE UNIQUE INDEX client_certificates_live_fingerprint ON client_certificates (fingerprint)
    WHERE revoke_time IS NULL AND fingerprint IS NOT NULL;
CREATE UNIQUE INDEX client_certificates_live_subject ON client_certificates (subject)
    WHERE revoke_time IS NULL AND subject IS NOT NULL;
