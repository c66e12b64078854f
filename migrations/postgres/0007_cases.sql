-- Coordination workflows: cases, their participants, SLA clocks, history, tasks, and
-- the durable timers that fire SLA warnings and breaches, overdue tasks and automatic
-- transitions.

CREATE TABLE cases (
    id                   TEXT    PRIMARY KEY,
    template             TEXT    NOT NULL,
    state                TEXT    NOT NULL,
    title                TEXT    NOT NULL,
    description          TEXT    NOT NULL,
    -- low, normal, high, urgent
    priority             TEXT    NOT NULL,
    customer_id          TEXT    NOT NULL,
    -- JSON object of the template's fields.
    fields               TEXT    NOT NULL,
    -- JSON array of member resource names.
    escalation_contacts  TEXT    NOT NULL,
    opened_by            TEXT    NOT NULL,
    -- 1 in a final state.
    closed               BIGINT  NOT NULL,
    -- 1 once any SLA clock was breached.
    breached             BIGINT  NOT NULL,
    -- The earliest due time of a running SLA clock, for "due before" filters.
    due_time             BIGINT,
    create_time          BIGINT  NOT NULL,
    update_time          BIGINT  NOT NULL,
    state_time           BIGINT  NOT NULL,
    revision             BIGINT  NOT NULL
);
CREATE INDEX cases_by_customer ON cases (customer_id);

CREATE TABLE case_participants (
    case_id          TEXT    NOT NULL,
    organization_id  TEXT    NOT NULL,
    role             TEXT    NOT NULL,
    add_time         BIGINT  NOT NULL,
    PRIMARY KEY (case_id, organization_id)
);
-- An organization's cases, newest first.
CREATE INDEX case_participants_by_org ON case_participants (organization_id, case_id);

CREATE TABLE case_sla_clocks (
    case_id      TEXT    NOT NULL,
    policy       TEXT    NOT NULL,
    target       BIGINT  NOT NULL,
    warn_after   BIGINT  NOT NULL,
    -- Microseconds counted before the current phase began.
    used         BIGINT  NOT NULL,
    -- running, paused, met
    phase        TEXT    NOT NULL,
    phase_time   BIGINT  NOT NULL,
    warn_time    BIGINT,
    breach_time  BIGINT,
    PRIMARY KEY (case_id, policy)
);

CREATE TABLE case_history (
    id               TEXT    PRIMARY KEY,
    case_id          TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    organization_id  TEXT,
    member_id        TEXT,
    transition       TEXT    NOT NULL,
    from_state       TEXT    NOT NULL,
    to_state         TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    -- participants, organization
    visibility       TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    create_time      BIGINT  NOT NULL
);
CREATE INDEX case_history_by_case ON case_history (case_id, id);

CREATE TABLE case_tasks (
    id                  TEXT    PRIMARY KEY,
    case_id             TEXT    NOT NULL,
    title               TEXT    NOT NULL,
    description         TEXT    NOT NULL,
    assignee_id         TEXT    NOT NULL,
    assignee_member_id  TEXT,
    due_time            BIGINT,
    -- assigned, accepted, declined, completed
    state               TEXT    NOT NULL,
    -- The decline reason or completion note.
    state_note          TEXT    NOT NULL,
    overdue             BIGINT  NOT NULL,
    assigned_by         TEXT    NOT NULL,
    create_time         BIGINT  NOT NULL,
    update_time         BIGINT  NOT NULL
);
CREATE INDEX case_tasks_by_case ON case_tasks (case_id, id);

-- Pending timers only: a timer's row is deleted in the transaction that fires it, so
-- it fires once however many replicas look.
-- kind: sla_warning, sla_breach (subject: policy), task_overdue (subject: task id),
-- automatic (subject: transition).
CREATE TABLE case_timers (
    case_id   TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    due_time  BIGINT  NOT NULL,
    PRIMARY KEY (case_id, kind, subject)
);
CREATE INDEX case_timers_by_due ON case_timers (due_time);
