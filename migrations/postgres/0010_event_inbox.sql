-- Events are numbered after their transaction commits (see src/store/events/sequence.rs).
--
-- A writing transaction no longer locks its organizations' event_feeds rows: it adds
-- one row here holding all the events it emitted, in order, and commits. The sequencer
-- (one at a time across replicas, by an advisory lock) takes rows in id order, gives
-- their events the next numbers of each feed, writes them to `events`, queues their
-- deliveries and notifications, and deletes the rows, all in one transaction.
--
-- `xact` is the writer's transaction id. Rows are taken by id, and an id is drawn
-- before its transaction commits, so a row can appear below ids already numbered; the
-- sequencer only stops scanning from an id once every transaction that was running
-- when it was drawn has ended (`xact` and the snapshot's xmin say when).
CREATE TABLE event_inbox (
    xact   BIGINT    NOT NULL,
    id     BIGSERIAL PRIMARY KEY,
    events BYTEA     NOT NULL
);
