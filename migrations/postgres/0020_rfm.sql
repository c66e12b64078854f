-- RFM: each organization's reporting currency (for monetary scores; '' for none), and
-- the quintile boundaries the hourly job computes over the customers it sees that
-- bought, as JSON {"recency": [4], "frequency": [4], "monetary": [4] | null}.
ALTER TABLE organizations ADD COLUMN reporting_currency TEXT NOT NULL DEFAULT '';

CREATE TABLE rfm_boundaries (
    organization_id  TEXT    PRIMARY KEY,
    currency         TEXT    NOT NULL,
    boundaries       TEXT    NOT NULL,
    customers        BIGINT  NOT NULL,
    compute_time     BIGINT  NOT NULL
);
