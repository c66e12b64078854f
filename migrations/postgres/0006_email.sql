-- Email to members: preferences, follows, the notification queue and the email outbox.

-- A member's settings, or the organization's defaults (member_id ''). Modes are
-- immediate, digest or off; '' inherits. digest_hour -1 inherits.
CREATE TABLE notification_preferences (
    organization_id  TEXT    NOT NULL,
    member_id        TEXT    NOT NULL,
    work             TEXT    NOT NULL,
    sla              TEXT    NOT NULL,
    customers        TEXT    NOT NULL,
    integration      TEXT    NOT NULL,
    digest_hour      BIGINT  NOT NULL,
    update_time      BIGINT  NOT NULL,
    PRIMARY KEY (organization_id, member_id)
);

-- Customers a member follows (their changes are the `customers` category).
CREATE TABLE member_follows (
    organization_id  TEXT    NOT NULL,
    member_id        TEXT    NOT NULL,
    customer_id      TEXT    NOT NULL,
    PRIMARY KEY (member_id, customer_id)
);
CREATE INDEX member_follows_by_customer ON member_follows (organization_id, customer_id);

-- The last permanent failure to deliver to the member's address.
ALTER TABLE members ADD COLUMN email_bounce TEXT NOT NULL DEFAULT '';
ALTER TABLE members ADD COLUMN email_bounce_time BIGINT;

-- One row per (event, member to tell), written in the event's transaction. The email
-- worker gathers due rows into emails: one per thread (immediate) or per day (digest).
CREATE TABLE notifications (
    id               TEXT    PRIMARY KEY,
    organization_id  TEXT    NOT NULL,
    member_id        TEXT    NOT NULL,
    sequence         BIGINT  NOT NULL,
    event_type       TEXT    NOT NULL,
    thread_key       TEXT    NOT NULL,
    -- immediate, digest
    mode             TEXT    NOT NULL,
    due_time         BIGINT  NOT NULL,
    -- pending, composed
    state            TEXT    NOT NULL,
    email_id         TEXT,
    create_time      BIGINT  NOT NULL
);
CREATE INDEX notifications_due ON notifications (state, mode, due_time);
CREATE INDEX notifications_by_thread ON notifications (member_id, thread_key, state);

-- Per member and thread: the Message-ID every later email replies to, and when the
-- last email was composed (the coalescing window runs from it).
CREATE TABLE email_threads (
    member_id        TEXT    NOT NULL,
    thread_key       TEXT    NOT NULL,
    root_message_id  TEXT    NOT NULL,
    last_sent_time   BIGINT  NOT NULL,
    PRIMARY KEY (member_id, thread_key)
);

-- The outbox: each email rendered once (so a retry sends the same message, with the
-- same Message-ID) and sent at least once.
CREATE TABLE emails (
    id                 TEXT    PRIMARY KEY,
    organization_id    TEXT    NOT NULL,
    member_id          TEXT    NOT NULL,
    to_address         TEXT    NOT NULL,
    message_id         TEXT    NOT NULL,
    -- immediate, digest
    kind               TEXT    NOT NULL,
    subject            TEXT    NOT NULL,
    message            BYTEA    NOT NULL,
    -- pending, sent, dead
    state              TEXT    NOT NULL,
    attempts           BIGINT  NOT NULL,
    next_attempt_time  BIGINT  NOT NULL,
    lease_until        BIGINT,
    last_error         TEXT    NOT NULL,
    create_time        BIGINT  NOT NULL,
    sent_time          BIGINT
);
CREATE INDEX emails_due ON emails (state, next_attempt_time);
