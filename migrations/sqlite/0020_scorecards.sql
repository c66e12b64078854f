-- Partner scorecards: each partnership's reporting time zone (its days, weeks, months
-- and quarters), and its days aggregated once they closed. A day keeps the instants it
-- covered and its figures (counts, and DDSketches of durations) as JSON; days are never
-- pruned, so scorecards outlive the raw rows' retention.
ALTER TABLE partnerships ADD COLUMN reporting_time_zone TEXT NOT NULL DEFAULT 'UTC';

CREATE TABLE scorecard_days (
    partnership_id  TEXT    NOT NULL REFERENCES partnerships (id),
    -- The local date, YYYY-MM-DD, in time_zone.
    day             TEXT    NOT NULL,
    time_zone       TEXT    NOT NULL,
    start_time      BIGINT  NOT NULL,
    end_time        BIGINT  NOT NULL,
    figures         TEXT    NOT NULL,
    compute_time    BIGINT  NOT NULL,
    PRIMARY KEY (partnership_id, day)
);

-- A day's figures read the rows of that day: each read is a range on time.
CREATE INDEX cases_by_create_time ON cases (create_time);
CREATE INDEX case_history_by_time ON case_history (create_time);
CREATE INDEX case_sla_clocks_met ON case_sla_clocks (phase_time) WHERE phase = 'met';
CREATE INDEX interactions_by_author_time ON interactions (org_id, create_time);
CREATE INDEX customer_grants_by_partnership ON customer_grants (partnership_id, create_time);
CREATE INDEX access_requests_by_decision ON access_requests (owner_id, decide_time)
    WHERE decide_time IS NOT NULL;
CREATE INDEX webhook_attempts_by_org_time ON webhook_attempts (organization_id, attempt_time);
