//! Numbering events: inline on SQLite, after commit on PostgreSQL.
//!
//! # SQLite
//!
//! One transaction writes at a time, so a transaction numbers its own events just
//! before it commits ([`Tx::number`]): it bumps each organization's `event_feeds` row
//! and writes the events with the numbers just taken. Nothing can interleave.
//!
//! # PostgreSQL: a sequencer after commit
//!
//! Writers take no per-organization lock. A transaction that emitted events adds one
//! row to `event_inbox` holding all of them, in emit order, and commits. The
//! sequencer then numbers committed inbox rows in batches, in one transaction each:
//! it takes the advisory lock [`SEQUENCER_LOCK`] (so one batch runs at a time across
//! every replica), reads up to [`BATCH`] rows in id order, gives their events the next
//! numbers of each feed, writes them to `events` with the number inside the body,
//! queues their webhook deliveries and notifications with multi-row statements,
//! deletes the rows, announces the new heads and commits.
//!
//! Why the invariants hold:
//!
//! - **Gapless, a prefix.** Only the lock holder moves a feed's `last_sequence`, by
//!   exactly the events it writes, and its numbers and events become visible in one
//!   commit. The next holder's statements run after that commit and continue from it.
//! - **Nothing lost.** A row leaves the inbox only in the transaction that writes its
//!   events. A sequencer killed mid-batch (process, connection, or database restart)
//!   rolls back, the lock is released with its session, and the rows are still there
//!   for the next batch, of any replica.
//! - **Nothing skipped.** Rows are read by id, but an id is drawn when the row is
//!   inserted, before its transaction commits: a row can appear below ids already
//!   numbered. The sequencer reads from a floor below which every row that will ever
//!   exist has been numbered ([`Floor`]), never from "the last id it saw".
//! - **A transaction's events stay together and in order**: they are one row.
//! - **Two writes to one record keep their commit order.** The second writer waited
//!   for the first's row lock, which PostgreSQL releases only once the first commit is
//!   visible; the second inserts its inbox row after that (it is the last statement
//!   before its commit), so it draws the larger id and can never be visible without
//!   the first. Unrelated transactions may be numbered in either order.
//!
//! A writer does not wait for the database to decide what it sees: after its commit
//! it runs (or joins) a pass of the sequencer in its own process ([`Store::flush_events`]),
//! unless its inbox row is already gone (numbered by a pass of this replica or
//! another, whose commit removed it), so its events are in the feed when its call
//! returns, and a stream waiting on that feed wakes at once. Each replica also makes
//! a pass every [`SWEEP`], which numbers what a killed replica committed but never
//! numbered.
//!
//! Why not number only rows older than the snapshot's xmin: any long write
//! transaction anywhere (an import, a bulk change) would hold back every feed until
//! it ended. Here a long transaction only holds back the floor, which costs an index
//! scan over the rows numbered meanwhile, not latency.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;

use super::{CHANNEL, INSERT_CHUNK, NewEvent, announcements};
use crate::domain::error::Result;
use crate::domain::event::{EventType, numbered};
use crate::domain::notify::Notifiable;
use crate::store::{AuditHead, Dialect, Store, Tx, corrupt, micros, placeholders, timestamp};

/// Inbox rows (committed transactions) one sequencer batch takes at most.
const BATCH: usize = 256;
/// How often each replica numbers what nobody has (a writer killed after its commit).
const SWEEP: Duration = Duration::from_secs(1);
/// The advisory lock that makes one sequencer batch run at a time across replicas.
const SEQUENCER_LOCK: i64 = 0x6c69_6169_736f_6e01;

/// The events of one committed transaction, as its inbox row keeps them.
#[derive(Clone, PartialEq, prost::Message)]
struct Stash {
    /// The acting organization's slug, if an organization acted (not the operator).
    #[prost(string, optional, tag = "1")]
    actor: Option<String>,
    #[prost(message, repeated, tag = "2")]
    events: Vec<StashedEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StashedEvent {
    #[prost(string, tag = "1")]
    organization_id: String,
    #[prost(string, tag = "2")]
    id: String,
    #[prost(string, tag = "3")]
    event_type: String,
    #[prost(string, tag = "4")]
    resource: String,
    #[prost(int64, tag = "5")]
    create_time: i64,
    #[prost(bytes = "vec", tag = "6")]
    body: Vec<u8>,
    #[prost(string, repeated, tag = "7")]
    escalate_to: Vec<String>,
    #[prost(string, optional, tag = "8")]
    customer_id: Option<String>,
}

/// The events of one committed transaction, waiting for their numbers.
struct Committed {
    actor: Option<String>,
    events: Vec<NewEvent>,
}

impl Committed {
    fn encode(&self) -> Vec<u8> {
        Stash {
            actor: self.actor.clone(),
            events: self
                .events
                .iter()
                .map(|e| StashedEvent {
                    organization_id: e.organization_id.clone(),
                    id: e.id.clone(),
                    event_type: e.event_type.as_str().to_owned(),
                    resource: e.resource.clone(),
                    create_time: micros(e.create_time),
                    body: e.body.clone(),
                    escalate_to: e.escalate_to.clone(),
                    customer_id: e.customer_id.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let stash = Stash::decode(bytes).map_err(|e| corrupt("event inbox row", &e.to_string()))?;
        let events = stash
            .events
            .into_iter()
            .map(|e| {
                Ok(NewEvent {
                    event_type: EventType::parse(&e.event_type)
                        .ok_or_else(|| corrupt("event type", &e.event_type))?,
                    create_time: timestamp(e.create_time)?,
                    organization_id: e.organization_id,
                    id: e.id,
                    resource: e.resource,
                    body: e.body,
                    escalate_to: e.escalate_to,
                    customer_id: e.customer_id,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            actor: stash.actor,
            events,
        })
    }
}

/// Where the sequencer of this process starts reading the inbox.
///
/// `below`: every inbox row with an id at or below it that will ever exist has been
/// numbered. Each batch notes the largest id drawn so far, and then takes a
/// transaction id of its own (`marks`). A writer has its transaction id before it
/// draws its row's id (see [`Tx::write_events`]), so every writer that drew an id at
/// or below the noted one has a smaller transaction id than the batch. Once the
/// oldest transaction still running (a later snapshot's xmin) is past the batch's id,
/// every one of those writers has ended, so their rows are visible, and a batch that
/// then read past the noted id has numbered them all.
///
/// (The snapshot's xmax would not do instead of the batch's own id: it is one past
/// the newest *completed* transaction, and transactions above it may be running.)
#[derive(Debug, Clone, Default)]
struct Floor {
    below: i64,
    marks: VecDeque<Mark>,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    /// The largest inbox id drawn when the batch began.
    drawn: i64,
    /// The batch's transaction id, taken after `drawn` was read.
    xid: i64,
}

impl Floor {
    /// The floor after a batch that noted `mark` and then read every visible row above
    /// `self.below` up to `read_through` (`None`: all of them), once `xmin` was the
    /// oldest transaction still running.
    fn advanced(&self, mark: Mark, xmin: i64, read_through: Option<i64>) -> Floor {
        let mut next = self.clone();
        if next.marks.back().is_none_or(|m| m.drawn < mark.drawn) {
            next.marks.push_back(mark);
        }
        while let Some(m) = next.marks.front().copied() {
            if m.xid > xmin {
                break;
            }
            match read_through {
                Some(through) if through < m.drawn => {
                    next.below = next.below.max(through);
                    break;
                }
                _ => {
                    next.below = next.below.max(m.drawn);
                    next.marks.pop_front();
                }
            }
        }
        next
    }
}

/// The sequencer's state in one process: passes run one at a time.
#[derive(Debug, Default)]
pub(in crate::store) struct Sequencer {
    floor: tokio::sync::Mutex<Floor>,
    /// Passes started and finished (successfully), numbered from 1.
    started: AtomicU64,
    finished: AtomicU64,
}

impl Tx {
    /// Writes this transaction's events: numbers them now (SQLite) or adds them to the
    /// inbox for the sequencer (PostgreSQL). Returns the feeds' new heads, if numbered.
    pub(in crate::store) async fn write_events(&mut self) -> Result<Vec<(String, i64)>> {
        let events = std::mem::take(&mut self.events);
        if events.is_empty() {
            return Ok(vec![]);
        }
        let committed = Committed {
            actor: self.cause.organization.clone(),
            events,
        };
        match self.dialect {
            Dialect::Sqlite => self.number(&[committed]).await,
            Dialect::Postgres => {
                // The transaction id is taken before the row draws its id (the
                // subquery, kept apart by OFFSET 0, runs before the INSERT's defaults
                // are computed): the sequencer's floor depends on it.
                let (row,): (i64,) = sqlx::query_as(
                    "INSERT INTO event_inbox (xact, events) SELECT x, $1 FROM \
                     (SELECT pg_current_xact_id()::text::bigint AS x OFFSET 0) AS t \
                     RETURNING id",
                )
                .bind(committed.encode())
                .fetch_one(self.conn())
                .await?;
                self.stashed = Some(row);
                Ok(vec![])
            }
        }
    }

    /// Numbers the events of committed transactions, given in commit order: bumps
    /// each organization's feed by its count, queues deliveries and notifications,
    /// writes the events with their numbers, and (PostgreSQL) announces the heads.
    async fn number(&mut self, committed: &[Committed]) -> Result<Vec<(String, i64)>> {
        let mut all: Vec<(Option<&str>, &NewEvent)> = committed
            .iter()
            .flat_map(|c| c.events.iter().map(|e| (c.actor.as_deref(), e)))
            .collect();
        // Stable: an organization's events keep their commit and emit order.
        all.sort_by(|a, b| a.1.organization_id.cmp(&b.1.organization_id));
        let mut heads = vec![];
        let mut queued = false;
        let mut numbered_events: Vec<(&NewEvent, i64)> = Vec::with_capacity(all.len());
        // Per organization: its audit head and where its events sit in `numbered_events`.
        let mut audit_heads: Vec<(&str, AuditHead, std::ops::Range<usize>)> = vec![];
        let mut rest = all.as_slice();
        while let Some((_, first)) = rest.first() {
            let org = first.organization_id.as_str();
            let n = rest
                .iter()
                .take_while(|(_, e)| e.organization_id == org)
                .count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            // The audit head comes back with the numbers: the chain continues from it.
            let (last, audit_position, audit_hash): (i64, i64, Option<Vec<u8>>) = sqlx::query_as(
                "INSERT INTO event_feeds (organization_id, last_sequence) VALUES ($1, $2) \
                 ON CONFLICT (organization_id) \
                 DO UPDATE SET last_sequence = event_feeds.last_sequence + excluded.last_sequence \
                 RETURNING last_sequence, audit_position, audit_hash",
            )
            .bind(org)
            .bind(n as i64)
            .fetch_one(self.conn())
            .await?;
            audit_heads.push((
                org,
                AuditHead {
                    position: audit_position,
                    hash: audit_hash,
                },
                numbered_events.len()..numbered_events.len() + n,
            ));
            let start = last - n as i64 + 1;
            let deliveries: Vec<(&NewEvent, i64)> = group
                .iter()
                .zip(start..)
                .map(|((_, e), sequence)| (*e, sequence))
                .collect();
            queued |= self.queue_deliveries(org, &deliveries).await?;
            // Whether a notification is the organization's own work depends on who
            // acted, so they are routed per actor (a batch usually has few).
            let mut actors: Vec<Option<&str>> = group.iter().map(|(a, _)| *a).collect();
            actors.sort();
            actors.dedup();
            for actor in actors {
                let notifiable: Vec<Notifiable<'_>> = group
                    .iter()
                    .zip(start..)
                    .filter(|((a, _), _)| *a == actor)
                    .map(|((_, e), sequence)| Notifiable {
                        event_type: e.event_type,
                        resource: &e.resource,
                        sequence,
                        escalate_to: &e.escalate_to,
                    })
                    .collect();
                self.queue_notifications(org, actor, &notifiable).await?;
            }
            numbered_events.extend(group.iter().map(|(_, e)| *e).zip(start..));
            heads.push((org.to_owned(), last));
        }
        // Each body once, with its number: the feed's copy and the audit log's content.
        let bodies: Vec<Vec<u8>> = numbered_events
            .iter()
            .map(|(e, sequence)| numbered(&e.body, *sequence))
            .collect();
        for (chunk, bodies) in numbered_events
            .chunks(INSERT_CHUNK)
            .zip(bodies.chunks(INSERT_CHUNK))
        {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * 7 + 1, 7)))
                .collect();
            let sql = format!(
                "INSERT INTO events (organization_id, sequence, id, type, resource, create_time, body) \
                 VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for ((e, sequence), body) in chunk.iter().zip(bodies) {
                query = query
                    .bind(&e.organization_id)
                    .bind(*sequence)
                    .bind(&e.id)
                    .bind(e.event_type.as_str())
                    .bind(&e.resource)
                    .bind(micros(e.create_time))
                    .bind(body.as_slice());
            }
            query.execute(self.conn()).await?;
        }
        let chains: Vec<_> = audit_heads
            .into_iter()
            .map(|(org, head, range)| {
                let events = range
                    .map(|k| {
                        (
                            numbered_events[k].0,
                            numbered_events[k].1,
                            bodies[k].as_slice(),
                        )
                    })
                    .collect();
                (org, head, events)
            })
            .collect();
        self.append_audit(&chains).await?;
        self.deliveries_queued |= queued;
        if self.dialect == Dialect::Postgres {
            for payload in announcements(&heads) {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(payload)
                    .execute(self.conn())
                    .await?;
            }
        }
        Ok(heads)
    }

    /// One sequencer batch (PostgreSQL): numbers up to [`BATCH`] committed inbox rows
    /// above `floor` and deletes them. Returns the feeds' new heads, the floor to use
    /// once this transaction commits, and whether rows may be left.
    async fn sequence_batch(&mut self, floor: &Floor) -> Result<(Vec<(String, i64)>, Floor, bool)> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SEQUENCER_LOCK)
            .execute(self.conn())
            .await?;
        // The largest id drawn so far, then this batch's own transaction id and the
        // oldest transaction still running (see `Floor`).
        let (drawn,): (i64,) = sqlx::query_as(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM event_inbox_id_seq",
        )
        .fetch_one(self.conn())
        .await?;
        let (xid, xmin): (i64, i64) = sqlx::query_as(
            "SELECT pg_current_xact_id()::text::bigint, \
             pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        )
        .fetch_one(self.conn())
        .await?;
        // Planned afresh each time (not a prepared statement): a plan cached while the
        // inbox was empty (right after VACUUM) is a sequential scan and sort, which
        // then reads every dead row the inbox gathers until the next VACUUM (seen at
        // 100 to 500 buffers a batch). Planned with the table's current size, it is a
        // range of the primary key from the floor.
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(&format!(
            "SELECT id, events FROM event_inbox WHERE id > $1 ORDER BY id LIMIT {BATCH}"
        ))
        .bind(floor.below)
        .persistent(false)
        .fetch_all(self.conn())
        .await?;
        tracing::debug!(
            floor = floor.below,
            drawn,
            xid,
            xmin,
            marks = floor.marks.len(),
            rows = rows.len(),
            "sequencer batch"
        );
        let full = rows.len() == BATCH;
        let read_through = full.then(|| rows.last().map_or(floor.below, |r| r.0));
        let next = floor.advanced(Mark { drawn, xid }, xmin, read_through);
        if rows.is_empty() {
            return Ok((vec![], next, false));
        }
        let committed = rows
            .iter()
            .map(|(_, bytes)| Committed::decode(bytes))
            .collect::<Result<Vec<_>>>()?;
        let heads = self.number(&committed).await?;
        let sql = format!(
            "DELETE FROM event_inbox WHERE id IN ({})",
            placeholders(1, rows.len())
        );
        let mut delete = sqlx::query(&sql);
        for (id, _) in &rows {
            delete = delete.bind(*id);
        }
        delete.execute(self.conn()).await?;
        Ok((heads, next, full))
    }
}

impl Store {
    /// Numbers every event committed before this call and not numbered yet
    /// (PostgreSQL; on SQLite events are numbered as they commit). Concurrent calls in
    /// one process share passes: a call returns once a pass that began after it was
    /// made has finished, whoever ran it.
    pub async fn flush_events(&self) -> Result<()> {
        self.flush_events_of(None).await
    }

    /// [`Store::flush_events`] for a writer whose events are inbox row `row`: it also
    /// returns, without a pass, once that row is gone, which happens only in the
    /// commit of the batch that numbered it (of this replica or another). A writer
    /// that waited for this process's pass in progress often finds its row numbered
    /// by it or by another replica's meanwhile, and needs no pass (nor the sequencer's
    /// lock, which every replica's passes queue for) of its own.
    pub(in crate::store) async fn flush_events_of(&self, row: Option<i64>) -> Result<()> {
        if self.dialect != Dialect::Postgres {
            return Ok(());
        }
        let s = &self.sequencer;
        let seen = s.started.load(Ordering::SeqCst);
        let mut floor = s.floor.lock().await;
        if s.finished.load(Ordering::SeqCst) > seen {
            return Ok(());
        }
        if let Some(row) = row {
            let waiting: Option<(i64,)> =
                sqlx::query_as("SELECT id FROM event_inbox WHERE id = $1")
                    .bind(row)
                    .fetch_optional(self.reader())
                    .await?;
            if waiting.is_none() {
                return Ok(());
            }
        }
        let pass = s.started.fetch_add(1, Ordering::SeqCst) + 1;
        loop {
            let mut tx = self.begin().await?;
            let (heads, next, more) = tx.sequence_batch(&floor).await?;
            tx.heads = heads;
            tx.commit().await?;
            *floor = next;
            if !more {
                break;
            }
        }
        s.finished.store(pass, Ordering::SeqCst);
        Ok(())
    }

    /// Forever: numbers events nobody numbered (PostgreSQL), every [`SWEEP`]. On
    /// SQLite this never completes and does nothing.
    pub async fn run_sequencer(&self) {
        if self.dialect != Dialect::Postgres {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.flush_events().await {
                tracing::warn!(%error, "failed to number committed events; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(drawn: i64, xid: i64) -> Mark {
        Mark { drawn, xid }
    }

    #[test]
    fn the_floor_waits_for_every_transaction_that_was_running_when_an_id_was_noted() {
        let floor = Floor::default();
        // Transactions below xid 100 still run: nothing moves.
        let f = floor.advanced(mark(10, 105), 100, None);
        assert_eq!(f.below, 0);
        // Later, all of them ended: everything up to 10 is done.
        let f = f.advanced(mark(20, 130), 110, None);
        assert_eq!(f.below, 10);
        assert_eq!(f.marks.len(), 1);
        let f = f.advanced(mark(25, 140), 135, None);
        assert_eq!(f.below, 20);
    }

    #[test]
    fn a_batch_that_stopped_early_moves_the_floor_only_as_far_as_it_read() {
        let f = Floor::default().advanced(mark(50, 10), 5, None);
        assert_eq!(f.below, 0);
        let f = f.advanced(mark(60, 20), 15, Some(30));
        assert_eq!(f.below, 30);
        assert_eq!(f.marks.front().map(|m| m.drawn), Some(50));
        let f = f.advanced(mark(60, 20), 25, None);
        assert_eq!(f.below, 60);
        assert!(f.marks.is_empty());
    }

    #[test]
    fn an_inbox_row_round_trips() {
        let committed = Committed {
            actor: Some("acme".into()),
            events: vec![NewEvent {
                organization_id: "o".into(),
                id: "e".into(),
                event_type: EventType::CustomerUpdated,
                resource: "customers/c".into(),
                create_time: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
                body: vec![1, 2, 3],
                escalate_to: vec!["m".into()],
                customer_id: Some("c".into()),
            }],
        };
        let back = Committed::decode(&committed.encode()).unwrap();
        assert_eq!(back.actor.as_deref(), Some("acme"));
        let (a, b) = (&committed.events[0], &back.events[0]);
        assert_eq!(
            (&a.organization_id, &a.id, a.event_type, &a.resource),
            (&b.organization_id, &b.id, b.event_type, &b.resource)
        );
        assert_eq!(
            (a.create_time, &a.body, &a.escalate_to),
            (b.create_time, &b.body, &b.escalate_to)
        );
        assert!(Committed::decode(&[0xff, 0xff]).is_err());
    }
}
