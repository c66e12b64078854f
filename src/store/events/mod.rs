//! Per-organization event feeds: the transactional outbox and the signal that wakes
//! open streams.
//!
//! # How sequences stay gapless and in commit order
//!
//! A transaction collects its events in memory ([`Tx::emit`]) and writes them in
//! [`Tx::commit`]. On SQLite it numbers them itself, just before the commit; on
//! PostgreSQL it adds them to an inbox and a sequencer numbers them after the commit,
//! in batches, so writers of one organization never queue behind each other. The
//! `sequence` module says how, and why the feeds stay gapless, in commit order, and
//! visible only as a prefix.
//!
//! # Waking streams
//!
//! After numbering, the writer (or the sequencer) signals [`FeedSignal`] in-process.
//! On PostgreSQL the sequencer's batch also sends `NOTIFY liaison_events` (delivered
//! at commit), so streams on other replicas wake too ([`Store::listen_for_events`]). A signal carries only
//! "organization X reached sequence N"; streams read the events themselves from the
//! store, so a missed or duplicated signal costs latency, never an event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use sqlx::FromRow;
use tokio::sync::{Notify, watch};

use super::{Dialect, Store, Tx, micros, placeholders};
use crate::domain::error::Result;
use crate::domain::event::EventType;

mod sequence;

pub(super) use sequence::Sequencer;

/// The PostgreSQL channel commits announce new events on.
const CHANNEL: &str = "liaison_events";
/// The PostgreSQL channel commits announce new webhook deliveries on.
const DELIVERY_CHANNEL: &str = "liaison_deliveries";
/// The PostgreSQL channel commits announce new notifications and emails on.
const EMAIL_CHANNEL: &str = "liaison_emails";
/// The PostgreSQL channel commits announce new case timers on.
const TIMER_CHANNEL: &str = "liaison_timers";
/// NOTIFY payloads must stay under 8,000 bytes; longer announcements are split.
const MAX_PAYLOAD: usize = 7_000;
/// Rows per multi-row INSERT (7 parameters each, far below either backend's limit).
const INSERT_CHUNK: usize = 500;

/// An event on its way into one organization's feed.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub organization_id: String,
    pub id: String,
    pub event_type: EventType,
    pub resource: String,
    pub create_time: Timestamp,
    /// The encoded event, without its sequence number.
    pub body: Vec<u8>,
    /// Members (ids, of this organization) to alert at once whatever their
    /// preferences: an SLA breach's escalation contacts.
    pub escalate_to: Vec<String>,
    /// The customer the event is about, if any (the audit log empties its entries
    /// when the customer is erased).
    pub customer_id: Option<String>,
}

/// An event read back from a feed.
#[derive(Debug, Clone, FromRow)]
pub struct StoredEvent {
    pub sequence: i64,
    pub body: Vec<u8>,
}

/// What a feed read selects.
#[derive(Debug, Clone, Default)]
pub struct EventQuery<'a> {
    pub organization_id: &'a str,
    pub after: i64,
    /// Read nothing past this sequence.
    pub through: i64,
    /// Exact types and `prefix.` wildcards (`customer.*` arrives as `customer.`);
    /// empty: all.
    pub types: &'a [String],
    pub resource: Option<&'a str>,
    pub limit: usize,
    /// Organizations whose customers the feed no longer carries: every partnership
    /// with them is suspended or ended ([`Store::cut_off_partners`]).
    pub cut_off: &'a [String],
}

/// Who caused the changes of a transaction, stamped on its events.
#[derive(Debug, Clone, Default)]
pub struct Cause {
    /// The acting organization's slug; `None` for the hub operator.
    pub organization: Option<String>,
    pub key_id: String,
    pub request_id: String,
}

/// Wakes the streams of an organization when its feed grows. One watch channel per
/// organization with an open stream; a write never waits on a stream.
#[derive(Debug, Default)]
pub struct FeedSignal {
    feeds: Mutex<HashMap<String, watch::Sender<i64>>>,
}

impl FeedSignal {
    /// A receiver whose value is the newest sequence announced for `organization_id`.
    pub fn subscribe(&self, organization_id: &str) -> watch::Receiver<i64> {
        let mut feeds = self.feeds.lock().expect("feed signal lock");
        feeds
            .entry(organization_id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Announces that `organization_id`'s feed reached `sequence`.
    pub fn publish(&self, organization_id: &str, sequence: i64) {
        let mut feeds = self.feeds.lock().expect("feed signal lock");
        if let Some(sender) = feeds.get(organization_id) {
            if sender.receiver_count() == 0 {
                feeds.remove(organization_id);
                return;
            }
            sender.send_if_modified(|newest| {
                let newer = sequence > *newest;
                if newer {
                    *newest = sequence;
                }
                newer
            });
        }
    }

    /// Wakes every stream (announcements may have been lost, e.g. while reconnecting
    /// to PostgreSQL); each re-reads its feed.
    pub fn wake_all(&self) {
        let mut feeds = self.feeds.lock().expect("feed signal lock");
        feeds.retain(|_, sender| sender.receiver_count() > 0);
        for sender in feeds.values() {
            sender.send_modify(|_| {});
        }
    }
}

impl Tx {
    /// Queues `event` for its organization's feed; written at commit.
    pub fn emit(&mut self, event: NewEvent) {
        self.events.push(event);
    }

    /// Who caused this transaction's changes.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }

    pub fn set_cause(&mut self, cause: Cause) {
        self.cause = cause;
    }

    /// Wakes the webhook workers of every replica once this transaction commits.
    pub fn wake_deliveries(&mut self) {
        self.deliveries_queued = true;
    }

    /// Announces queued deliveries to other replicas (PostgreSQL), inside the
    /// transaction so the announcement is sent only if it commits.
    pub(super) async fn announce_deliveries(&mut self) -> Result<()> {
        if self.dialect != Dialect::Postgres {
            return Ok(());
        }
        for (queued, channel) in [
            (self.deliveries_queued, DELIVERY_CHANNEL),
            (self.emails_queued, EMAIL_CHANNEL),
            (self.timers_queued, TIMER_CHANNEL),
        ] {
            if queued {
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(channel)
                    .execute(self.conn())
                    .await?;
            }
        }
        Ok(())
    }

    /// Wakes the email workers of every replica once this transaction commits.
    pub fn wake_emails(&mut self) {
        self.emails_queued = true;
    }
}

/// `org:seq` pairs joined by spaces, split to fit NOTIFY's payload limit.
fn announcements(heads: &[(String, i64)]) -> Vec<String> {
    let mut out = vec![];
    let mut current = String::new();
    for (org, sequence) in heads {
        let item = format!("{org}:{sequence}");
        if !current.is_empty() && current.len() + 1 + item.len() > MAX_PAYLOAD {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn parse_announcement(payload: &str) -> impl Iterator<Item = (&str, i64)> {
    payload.split(' ').filter_map(|item| {
        let (org, sequence) = item.rsplit_once(':')?;
        Some((org, sequence.parse().ok()?))
    })
}

impl Store {
    /// Signalled when deliveries are queued (here, or on another replica).
    pub fn deliveries_signal(&self) -> &Arc<Notify> {
        &self.deliveries
    }

    pub fn emails_signal(&self) -> &Arc<Notify> {
        &self.emails
    }

    /// Wakes the case timer worker (tests: after moving the clock).
    pub fn timers_signal(&self) -> &Arc<Notify> {
        &self.timers
    }

    /// Wakes the operations worker (an operation was queued or cancelled here).
    pub fn operations_signal(&self) -> &Arc<Notify> {
        &self.operations
    }

    /// Wakes the exports worker (an export was queued here).
    pub fn exports_signal(&self) -> &Arc<Notify> {
        &self.exports
    }

    pub fn clock(&self) -> &crate::domain::notify::Clock {
        &self.clock
    }

    /// The signal streams of this process wait on.
    pub fn feed_signal(&self) -> &Arc<FeedSignal> {
        &self.feeds
    }

    /// The newest sequence of `organization_id`'s feed (0 if it has none).
    pub async fn feed_head(&self, organization_id: &str) -> Result<i64> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT last_sequence FROM event_feeds WHERE organization_id = $1")
                .bind(organization_id)
                .fetch_optional(self.reader())
                .await?;
        Ok(row.map_or(0, |r| r.0))
    }

    /// The oldest sequence still kept, or `head + 1` if every event was pruned.
    pub async fn feed_oldest(&self, organization_id: &str, head: i64) -> Result<i64> {
        let row: (Option<i64>,) =
            sqlx::query_as("SELECT MIN(sequence) FROM events WHERE organization_id = $1")
                .bind(organization_id)
                .fetch_one(self.reader())
                .await?;
        Ok(row.0.unwrap_or(head + 1))
    }

    /// Events of a feed in sequence order.
    pub async fn events(&self, q: &EventQuery<'_>) -> Result<Vec<StoredEvent>> {
        let mut sql = String::from(
            "SELECT sequence, body FROM events \
             WHERE organization_id = $1 AND sequence > $2 AND sequence <= $3",
        );
        // A partner's feed carries another organization's customers only while a
        // partnership between the two is active: suspending or ending it stops every
        // stream and page from carrying that owner's records at once, events already
        // in the feed included. (One primary-key lookup per event, only for a feed
        // with such partners.)
        if !q.cut_off.is_empty() {
            let id = match self.dialect {
                Dialect::Postgres => "substr(resource, 11, 36) COLLATE \"C\"",
                Dialect::Sqlite => "substr(resource, 11, 36)",
            };
            let owners = super::placeholders(4, q.cut_off.len());
            sql.push_str(&format!(
                " AND NOT (resource LIKE 'customers/%' AND EXISTS (SELECT 1 FROM customers c \
                 WHERE c.id = {id} AND c.owner_id IN ({owners})))"
            ));
        }
        let mut n = 3 + q.cut_off.len();
        let mut conditions = vec![];
        for t in q.types {
            n += 1;
            conditions.push(if t.ends_with('.') {
                format!("type LIKE ${n}")
            } else {
                format!("type = ${n}")
            });
        }
        if !conditions.is_empty() {
            sql.push_str(&format!(" AND ({})", conditions.join(" OR ")));
        }
        if q.resource.is_some() {
            n += 1;
            sql.push_str(&format!(" AND resource = ${n}"));
        }
        sql.push_str(&format!(" ORDER BY sequence LIMIT {}", q.limit));
        let mut query = sqlx::query_as::<_, StoredEvent>(&sql)
            .bind(q.organization_id)
            .bind(q.after)
            .bind(q.through);
        for owner in q.cut_off {
            query = query.bind(owner);
        }
        for t in q.types {
            query = query.bind(if t.ends_with('.') {
                // Event types hold no LIKE wildcards, so only the suffix is one.
                format!("{t}%")
            } else {
                t.clone()
            });
        }
        if let Some(resource) = q.resource {
            query = query.bind(resource);
        }
        Ok(query.fetch_all(self.reader()).await?)
    }

    /// The organizations `organization_id` has partnerships with, none of them
    /// active and one at least suspended or ended: their customers are not carried by
    /// its feed (see [`EventQuery::cut_off`]). Usually none.
    pub async fn cut_off_partners(&self, organization_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT other FROM (SELECT CASE WHEN proposer_id = $1 THEN recipient_id \
             ELSE proposer_id END AS other, state FROM partnerships \
             WHERE proposer_id = $1 OR recipient_id = $1) AS mine GROUP BY other \
             HAVING SUM(CASE WHEN state = 'active' THEN 1 ELSE 0 END) = 0 \
             AND SUM(CASE WHEN state IN ('suspended', 'ended') THEN 1 ELSE 0 END) > 0",
        )
        .bind(organization_id)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|(o,)| o).collect())
    }

    /// Deletes events created before `cutoff`, oldest first per feed, so what remains
    /// of each feed is always an unbroken run of sequences. Returns how many went.
    pub async fn prune_events(&self, cutoff: Timestamp) -> Result<u64> {
        const BATCH: i64 = 1_000;
        let feeds: Vec<(String,)> = sqlx::query_as("SELECT organization_id FROM event_feeds")
            .fetch_all(self.reader())
            .await?;
        let mut pruned = 0;
        for (org,) in feeds {
            loop {
                let rows: Vec<(i64, i64)> = sqlx::query_as(&format!(
                    "SELECT sequence, create_time FROM events WHERE organization_id = $1 \
                     ORDER BY sequence LIMIT {BATCH}"
                ))
                .bind(&org)
                .fetch_all(self.reader())
                .await?;
                let old = rows
                    .iter()
                    .take_while(|(_, time)| *time < micros(cutoff))
                    .count();
                let Some((through, _)) = old.checked_sub(1).map(|i| rows[i]) else {
                    break;
                };
                let mut tx = self.begin().await?;
                let done =
                    sqlx::query("DELETE FROM events WHERE organization_id = $1 AND sequence <= $2")
                        .bind(&org)
                        .bind(through)
                        .execute(tx.conn())
                        .await?;
                tx.commit().await?;
                pruned += done.rows_affected();
                if old < rows.len() || (rows.len() as i64) < BATCH {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    /// On PostgreSQL, relays other replicas' commit announcements to this process's
    /// streams, forever. A lost connection is re-established and every stream woken,
    /// since announcements may have been missed meanwhile. On SQLite there is nothing
    /// to listen to (one process writes) and this just never completes.
    pub async fn listen_for_events(&self) {
        let Some(url) = self
            .url
            .clone()
            .filter(|_| self.dialect == Dialect::Postgres)
        else {
            return std::future::pending().await;
        };
        loop {
            match relay(
                &url,
                &self.feeds,
                &[
                    (DELIVERY_CHANNEL, &self.deliveries),
                    (EMAIL_CHANNEL, &self.emails),
                    (TIMER_CHANNEL, &self.timers),
                ],
            )
            .await
            {
                Ok(never) => match never {},
                Err(error) => {
                    tracing::warn!(%error, "lost the event announcement channel; reconnecting");
                    self.feeds.wake_all();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Relays announcements: feed heads to the streams, and each work channel to the
/// worker it wakes.
/// Sequences read per statement at most.
const BODIES_CHUNK: usize = 500;

/// The stored bodies of an organization's events, by sequence (those pruned are
/// absent): one statement per [`BODIES_CHUNK`] sequences.
pub(in crate::store) async fn event_bodies(
    conn: &mut sqlx::AnyConnection,
    organization_id: &str,
    sequences: &[i64],
) -> Result<HashMap<i64, Vec<u8>>> {
    let mut out = HashMap::new();
    for chunk in sequences.chunks(BODIES_CHUNK) {
        let sql = format!(
            "SELECT sequence, body FROM events WHERE organization_id = $1 AND sequence IN ({})",
            placeholders(2, chunk.len())
        );
        let mut query = sqlx::query_as::<_, (i64, Vec<u8>)>(&sql).bind(organization_id);
        for sequence in chunk {
            query = query.bind(*sequence);
        }
        out.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

async fn relay(
    url: &str,
    feeds: &FeedSignal,
    workers: &[(&str, &Notify)],
) -> Result<std::convert::Infallible> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    let mut channels = vec![CHANNEL];
    channels.extend(workers.iter().map(|(c, _)| *c));
    listener.listen_all(channels).await?;
    let wake_all = || {
        feeds.wake_all();
        for (_, worker) in workers {
            worker.notify_one();
        }
    };
    // Anything committed while we were not listening is found by this wake-up.
    wake_all();
    loop {
        match listener.try_recv().await? {
            Some(n) if n.channel() == CHANNEL => {
                for (org, sequence) in parse_announcement(n.payload()) {
                    feeds.publish(org, sequence);
                }
            }
            Some(n) => {
                if let Some((_, worker)) = workers.iter().find(|(c, _)| *c == n.channel()) {
                    worker.notify_one();
                }
            }
            // The connection dropped and is re-established on the next call.
            None => wake_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_fit_the_notify_limit() {
        let heads: Vec<(String, i64)> = (0..400)
            .map(|i| (format!("0198e1f2-7c3a-7def-8000-{i:012}"), i * 1_000_003))
            .collect();
        let payloads = announcements(&heads);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let back: Vec<(String, i64)> = payloads
            .iter()
            .flat_map(|p| parse_announcement(p).map(|(o, s)| (o.to_owned(), s)))
            .collect();
        assert_eq!(back, heads);
    }

    #[tokio::test]
    async fn a_signal_wakes_subscribers_only_when_the_feed_grows() {
        let signal = FeedSignal::default();
        let mut rx = signal.subscribe("a");
        signal.publish("a", 3);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 3);
        signal.publish("a", 2);
        assert!(!rx.has_changed().unwrap());
        signal.publish("b", 9);
        assert!(!rx.has_changed().unwrap());
        signal.wake_all();
        assert!(rx.has_changed().unwrap());
        drop(rx);
        signal.publish("a", 4);
        assert!(signal.feeds.lock().unwrap().is_empty());
    }
}
