-- Events are numbered after their transaction commits (see src/store/events/sequence.rs).
--
-- A writing transaction no longer locks its organizations' event_feeds rows: it adds
-- one row here holding all the events it emitted, in order, and commits. The sequencer
-- (one at a time across replicas, by an advisory lock) takes rows in id order, gives
-- their events the next numbers of each feed, writes them to `events`, queues their
-- deliveries and notifications, and deletes the rows, all in one transaction.
--
-- `xact` is the writer's transaction id, taken before the row draws its id. Rows are
-- taken by id, and an id is drawn before its transaction commits, so a row can appear
-- below ids already numbered; the sequencer stops scanning below an id only once every
-- transaction that could have drawn it has ended (see `Floor` in sequence.rs).
CREATE TABLE event_inbox (
    xact   BIGINT    NOT NULL,
    id     BIGSERIAL PRIMARY KEY,
    events BYTEA     NOT NULL
);
