-- Exports: files an organization asked for (customers, interactions, scorecards),
-- written by the operations worker in chunks and streamed back by ReadExport until
-- they expire. One row per export operation (operations.id); a worker that takes an
-- export over starts its file again under a token of its own.
CREATE TABLE exports (
    operation_id     TEXT    PRIMARY KEY,
    organization_id  TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    format           TEXT    NOT NULL,
    -- The request's parameters as JSON (filter, partnership, period, dates).
    params           TEXT    NOT NULL,
    records          BIGINT  NOT NULL,
    size_bytes       BIGINT  NOT NULL,
    -- Set once the file is complete (or, for one that failed, to its end: gone).
    expire_time      BIGINT,
    -- Written by the worker that took the export last; a worker whose token is no
    -- longer here was overtaken and writes nothing more.
    token            TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX exports_by_expiry ON exports (expire_time) WHERE expire_time IS NOT NULL;

CREATE TABLE export_chunks (
    operation_id  TEXT    NOT NULL,
    seq           BIGINT  NOT NULL,
    data          BYTEA   NOT NULL,
    PRIMARY KEY (operation_id, seq)
);
