//! The only place that speaks SQL.
//!
//! Both backends go through sqlx's `Any` driver, so a query is written once and runs
//! on SQLite and PostgreSQL alike; the few things the dialects do differently
//! (connecting, migrations, how a write transaction starts) live in [`Dialect`]. Schemas
//! use only types both share: TEXT, BIGINT (times in microseconds since the epoch),
//! and BLOB/BYTEA.
//!
//! Two exceptions, both for reads: reads outside a transaction use a pool of their
//! own ([`reads`]) that does without sqlx's ping on release, and on SQLite a read of
//! one record by its key runs in place through rusqlite ([`point`]), without the
//! hand-off to sqlx's connection thread.

mod api_keys;
mod audit;
mod cases;
mod client_certs;
mod credentials;
mod customers;
mod email;
mod error;
mod events;
mod exports;
mod group;
mod idempotency;
mod interactions;
mod long_running;
mod mappings;
mod members;
mod metrics;
mod operations;
mod organizations;
mod partnerships;
mod point;
mod presets;
mod pulse;
mod reads;
mod rules;
mod scorecards;
mod sharing;
mod webhooks;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jiff::Timestamp;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor};

pub use audit::{AuditHead, AuditedOrganization};
pub use cases::CaseQuery;
pub use client_certs::CertificateRecord;
pub use customers::{
    CustomerOrder, CustomerQuery, HistoryEntry, MatchRule, OrderKey, Overlay, Reach, SeenCustomer,
};
pub use email::{EmailOutcome, EmailToSend, NewEmail, PendingNotification};
pub use events::{Cause, EventQuery, FeedSignal, NewEvent, StoredEvent};
pub use exports::ExportFile;
pub use idempotency::{Claim, REQUEST_ID_RETENTION};
pub use interactions::{InteractionFilter, interaction_cursor};
pub use long_running::Operation;
pub use mappings::{AccountMapping, MappedSegment, Unasked};
pub use metrics::{MAX_REPORTED, TotalDifference, TotalsCheck};
pub use operations::OperationalCounts;
pub use partnerships::PartnershipFilter;
pub use presets::FieldPreset;
pub use pulse::{Looks, Worker};
pub(crate) use rules::stored_filter;
pub use rules::{RuleSegment, RuleTarget, Segment, SharingRule};
pub use scorecards::{ScorecardDay, ScorecardRows};
pub use sharing::{AccessRequest, CustomerMatch, Grant, RequestState};
pub use webhooks::{
    Attempt, AttemptQuery, AttemptRecord, ClaimLimits, ClaimedDelivery, Delivery, Endpoint,
    RecordedAttempt,
};

use crate::domain::customer::FieldSet;
use crate::domain::error::{Error, Result};
use crate::domain::visibility::AccessLevel;

/// How long a connection waits for SQLite's write lock held by another process
/// (`liaison admin …` next to a running server) before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Readers on SQLite. WAL lets them run beside the writer; more than a few buys nothing
/// on a small machine.
const SQLITE_READERS: u32 = 4;

/// How a PostgreSQL replica's `database.max_connections` is shared: a quarter (at
/// least one) for reads outside a transaction, which hold a connection for one
/// statement, and the rest (at least one) for write transactions and the workers. So
/// 1 opens two connections: each side needs one.
fn split_connections(max: u32) -> (u32, u32) {
    let readers = max.div_ceil(4).max(1);
    (readers, max.saturating_sub(readers).max(1))
}

/// Every SQLite connection's settings. WAL: readers never block the writer.
/// synchronous=FULL: a commit is on disk before it is acknowledged, so an event or
/// delivery that was confirmed survives a power cut. An 8 MB page cache per
/// connection (SQLite's default is 2 MB), sorts in memory.
fn sqlite_pragmas(
    conn: &mut sqlx::AnyConnection,
) -> futures_util::future::BoxFuture<'_, std::result::Result<(), sqlx::Error>> {
    Box::pin(async move {
        let pragmas = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {}; \
             PRAGMA cache_size = -8000; PRAGMA temp_store = MEMORY;",
            SQLITE_BUSY_TIMEOUT.as_millis()
        );
        conn.execute(sqlx::raw_sql(&pragmas)).await?;
        Ok(())
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            anyhow::bail!(
                "database URL must start with sqlite: or postgres: (got {:?})",
                scheme_of(url)
            )
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

fn scheme_of(url: &str) -> &str {
    url.split(':').next().unwrap_or_default()
}

/// Connection settings the store needs from configuration.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    /// Pool size on PostgreSQL (SQLite uses one writer and a few readers).
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// Reads outside a transaction (see `reads`).
    reader: Arc<reads::ReadPool>,
    /// Write transactions. On SQLite a single connection: SQLite allows one writer at a
    /// time anyway, and queueing for it in-process is fairer and faster than retrying
    /// on `SQLITE_BUSY`.
    writer: AnyPool,
    dialect: Dialect,
    /// The PostgreSQL URL, for the connection that listens for other replicas' events.
    url: Option<String>,
    feeds: Arc<FeedSignal>,
    deliveries: Arc<tokio::sync::Notify>,
    /// Wakes the email worker when notifications or emails are queued.
    emails: Arc<tokio::sync::Notify>,
    /// Wakes the case timer worker when timers are set.
    timers: Arc<tokio::sync::Notify>,
    /// Wakes the worker that runs long-running operations.
    operations: Arc<tokio::sync::Notify>,
    /// Wakes the worker that runs exports.
    exports: Arc<tokio::sync::Notify>,
    /// Counts credential changes seen (see `credentials`).
    credentials: Arc<tokio::sync::watch::Sender<u64>>,
    /// The workers' time (tests move it forward).
    clock: crate::domain::notify::Clock,
    /// The workers' reports of their looks at their queues (see `pulse`).
    pulses: Arc<pulse::Pulses>,
    /// SQLite: concurrent write transactions that commit together.
    group: Option<Arc<group::Group>>,
    /// PostgreSQL: numbers committed events (see `events::sequence`).
    sequencer: Arc<events::Sequencer>,
    /// SQLite: reads of one record by its key, run in place (see `point`).
    points: Option<Arc<point::PointReads>>,
    acquire_timeout: Duration,
}

impl Store {
    pub async fn connect(options: &StoreOptions) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(&options.url)?;
        let url = match dialect {
            // Create the file on first start.
            Dialect::Sqlite if !options.url.contains("mode=") => {
                let sep = if options.url.contains('?') { '&' } else { '?' };
                format!("{}{sep}mode=rwc", options.url)
            }
            _ => options.url.clone(),
        };
        let connect =
            AnyConnectOptions::from_str(&url).context("Failed to parse the database URL")?;
        let store = match dialect {
            Dialect::Sqlite => {
                let writer = AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .acquire_timeout(options.acquire_timeout)
                    // A connection to a file does not go stale: no ping (a round trip
                    // to its thread) before every statement.
                    .test_before_acquire(false)
                    .after_connect(|conn, _| sqlite_pragmas(conn))
                    .connect_with(connect.clone())
                    .await
                    .context("Failed to open the SQLite database")?;
                let reader = reads::ReadPool::new(
                    connect,
                    Some(sqlite_pragmas),
                    SQLITE_READERS,
                    options.acquire_timeout,
                );
                reader
                    .check()
                    .await
                    .context("Failed to open the SQLite database")?;
                let file = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                    .context("Failed to parse the database URL")?
                    .get_filename()
                    .to_owned();
                let in_memory = url.contains(":memory:") || url.contains("mode=memory");
                Store {
                    reader: Arc::new(reader),
                    writer,
                    dialect,
                    url: None,
                    feeds: Arc::default(),
                    deliveries: Arc::default(),
                    emails: Arc::default(),
                    timers: Arc::default(),
                    operations: Arc::default(),
                    exports: Arc::default(),
                    credentials: Arc::new(tokio::sync::watch::Sender::new(0)),
                    clock: Default::default(),
                    pulses: Arc::default(),
                    group: Some(Arc::default()),
                    sequencer: Arc::default(),
                    points: (!in_memory).then(|| Arc::new(point::PointReads::new(file))),
                    acquire_timeout: options.acquire_timeout,
                }
            }
            Dialect::Postgres => {
                let (readers, writers) = split_connections(options.max_connections);
                let writer = AnyPoolOptions::new()
                    .max_connections(writers)
                    .acquire_timeout(options.acquire_timeout)
                    // No ping before every statement (a network round trip each): a
                    // connection the server dropped fails its next statement, which is
                    // UNAVAILABLE to that caller, and the pool discards it.
                    .test_before_acquire(false)
                    .connect_with(connect.clone())
                    .await
                    .context("Failed to connect to PostgreSQL")?;
                let reader = reads::ReadPool::new(connect, None, readers, options.acquire_timeout);
                reader
                    .check()
                    .await
                    .context("Failed to connect to PostgreSQL")?;
                Store {
                    reader: Arc::new(reader),
                    writer,
                    dialect,
                    url: Some(options.url.clone()),
                    feeds: Arc::default(),
                    deliveries: Arc::default(),
                    emails: Arc::default(),
                    timers: Arc::default(),
                    operations: Arc::default(),
                    exports: Arc::default(),
                    credentials: Arc::new(tokio::sync::watch::Sender::new(0)),
                    clock: Default::default(),
                    pulses: Arc::default(),
                    group: None,
                    sequencer: Arc::default(),
                    points: None,
                    acquire_timeout: options.acquire_timeout,
                }
            }
        };
        Ok(store)
    }

    /// Brings the schema up to date. Safe to run from several processes at once: on
    /// PostgreSQL sqlx takes an advisory lock; on SQLite, which has none, the whole run
    /// is one `BEGIN IMMEDIATE` transaction (each migration a savepoint in it), so a
    /// second process waits for the write lock and then finds the work done.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let context = "Failed to run database migrations";
        match self.dialect {
            Dialect::Sqlite => {
                let mut tx = self
                    .writer
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .context(context)?;
                sqlx::migrate!("migrations/sqlite")
                    .run(&mut *tx)
                    .await
                    .context(context)?;
                tx.commit().await.context(context)?;
            }
            Dialect::Postgres => sqlx::migrate!("migrations/postgres")
                .run(&self.writer)
                .await
                .context(context)?,
        }
        Ok(())
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The pool for reads outside a transaction.
    pub(crate) fn reader(&self) -> &reads::ReadPool {
        &self.reader
    }

    /// Starts a write transaction. On SQLite it is a member of the group transaction
    /// on the one writer connection (see [`group`]).
    pub async fn begin(&self) -> Result<Tx> {
        let (inner, member) = match &self.group {
            Some(group) => {
                let (inner, member) = group
                    .join(self.acquire_timeout, async || {
                        // IMMEDIATE takes the write lock now rather than on the first
                        // write, so two processes that both read then write cannot
                        // deadlock on the upgrade.
                        self.writer.begin_with("BEGIN IMMEDIATE").await
                    })
                    .await?;
                (inner, Some(member))
            }
            None => (self.writer.begin().await?, None),
        };
        Ok(Tx {
            inner: Some(inner),
            member,
            dialect: self.dialect,
            events: vec![],
            cause: Cause::default(),
            deliveries_queued: false,
            emails_queued: false,
            timers_queued: false,
            operations_queued: false,
            exports_queued: false,
            credentials_changed: false,
            stashed: None,
            heads: vec![],
            store: self.clone(),
        })
    }

    /// Closes the database pools, at exit.
    pub async fn close(&self) {
        if let Some(group) = &self.group
            && tokio::time::timeout(CLOSE_WAIT, group.close())
                .await
                .is_err()
        {
            tracing::warn!("the open group transaction could not be committed at exit");
        }
        // A pool's close waits for every connection checked out of it. One still
        // held after CLOSE_WAIT (by a task that outlived the shutdown) is left to
        // close when dropped, and named here, rather than hang the exit: SQLite's
        // WAL and PostgreSQL keep what was committed either way.
        let writer = || (self.writer.size(), self.writer.num_idle());
        close_or_warn("writer", self.writer.close(), writer).await;
        let reader = || (self.reader.size(), self.reader.num_idle());
        close_or_warn("reader", self.reader.close(), reader).await;
    }
}

/// Waits up to [`CLOSE_WAIT`] for `close`; if it does not finish, says how many of
/// the pool's connections (open, idle) were left.
async fn close_or_warn(
    pool: &str,
    close: impl std::future::Future<Output = ()>,
    in_use: impl Fn() -> (u32, usize),
) {
    if tokio::time::timeout(CLOSE_WAIT, close).await.is_err() {
        let (connections, idle) = in_use();
        tracing::warn!(
            pool,
            connections,
            idle,
            "database connections still in use at exit; not waiting for them"
        );
    }
}

/// How long closing the store waits for each pool's connections to come back.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A write transaction: everything done through it commits together or not at all.
/// Dropping it without [`Tx::commit`] rolls back.
pub struct Tx {
    /// The database transaction; on SQLite the group's, lent to this member.
    inner: Option<sqlx::Transaction<'static, Any>>,
    /// SQLite: this transaction's place in the group (its savepoint is open).
    member: Option<group::Member>,
    dialect: Dialect,
    /// Events emitted so far, written at commit (see `events`).
    events: Vec<NewEvent>,
    cause: Cause,
    /// Whether committing queues webhook deliveries (the worker is then woken).
    deliveries_queued: bool,
    /// Whether committing queues notifications or emails.
    emails_queued: bool,
    /// Whether committing sets case timers.
    timers_queued: bool,
    /// Whether committing queues a long-running operation.
    operations_queued: bool,
    exports_queued: bool,
    /// Whether committing revokes credentials (see `credentials`).
    credentials_changed: bool,
    /// PostgreSQL: the inbox row holding this transaction's events, if it emitted any
    /// (the sequencer numbers them once it commits).
    stashed: Option<i64>,
    /// Feed heads a sequencer batch reached, announced in-process at commit.
    heads: Vec<(String, i64)>,
    /// The store it belongs to: the signals it wakes at commit, the workers' clock,
    /// and (PostgreSQL) the sequencer it runs after commit.
    store: Store,
}

impl Tx {
    /// Writes the events emitted in this transaction, commits, and wakes the streams
    /// of the organizations whose feeds grew. On PostgreSQL the events are numbered
    /// after the commit, before this returns (see `events::sequence`); if that fails
    /// the commit stands and the sequencer numbers them on its next pass.
    pub async fn commit(mut self) -> Result<()> {
        let mut heads = self.write_events().await?;
        heads.append(&mut self.heads);
        self.announce_deliveries().await?;
        let inner = self.inner.take().expect("an open transaction");
        match self.member.take() {
            Some(member) => member.commit(inner).await?,
            None => inner.commit().await?,
        }
        let store = &self.store;
        for (org, sequence) in heads {
            store.feeds.publish(&org, sequence);
        }
        if self.deliveries_queued {
            store.deliveries.notify_one();
        }
        if self.emails_queued {
            store.emails.notify_one();
        }
        if self.timers_queued {
            store.timers.notify_one();
        }
        if self.operations_queued {
            store.operations.notify_one();
        }
        if self.exports_queued {
            store.exports.notify_one();
        }
        if self.credentials_changed {
            store.credentials.send_modify(|g| *g += 1);
        }
        if let Some(row) = self.stashed
            && let Err(error) = Box::pin(store.flush_events_of(Some(row))).await
        {
            tracing::warn!(%error, "committed events wait for the sequencer's next pass");
        }
        Ok(())
    }

    fn conn(&mut self) -> &mut sqlx::AnyConnection {
        self.inner.as_mut().expect("an open transaction")
    }
}

impl Drop for Tx {
    /// A group member that ends without committing hands the transaction back to be
    /// rolled back to its savepoint; on PostgreSQL sqlx rolls back on drop.
    fn drop(&mut self) {
        if let (Some(member), Some(inner)) = (self.member.take(), self.inner.take()) {
            member.abandon(inner);
        }
    }
}

/// `$first, $first+1, …` for `n` values.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

pub(crate) fn timestamp(micros: i64) -> Result<Timestamp> {
    Timestamp::from_microsecond(micros)
        .map_err(|e| Error::Internal(anyhow::anyhow!("stored time {micros} is out of range: {e}")))
}

/// How an access level is stored.
pub(crate) fn level_name(level: AccessLevel) -> &'static str {
    match level {
        AccessLevel::Read => "read",
        AccessLevel::ReadWrite => "read_write",
    }
}

pub(crate) fn parse_level(raw: &str) -> Result<AccessLevel> {
    match raw {
        "read" => Ok(AccessLevel::Read),
        "read_write" => Ok(AccessLevel::ReadWrite),
        other => Err(corrupt("access level", other)),
    }
}

pub(crate) fn parse_fields(raw: &str) -> Result<FieldSet> {
    FieldSet::from_csv(raw).ok_or_else(|| corrupt("field set", raw))
}

/// A value read from the database that the domain does not accept: the database was
/// changed by something other than this program.
pub(crate) fn corrupt(what: &str, value: &str) -> Error {
    Error::Internal(anyhow::anyhow!(
        "unexpected {what} {value:?} in the database"
    ))
}

/// True if `error` is a unique-constraint violation (SQLSTATE 23505 on PostgreSQL,
/// SQLITE_CONSTRAINT_UNIQUE / PRIMARYKEY on SQLite).
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation),
        _ => false,
    }
}

/// A page of results and the key to continue after, if there may be more.
/// A locking clause for a row a transaction reads: shared (`change` false) or
/// exclusive, on PostgreSQL; SQLite's write transactions run one at a time already.
pub(crate) fn lock_clause(dialect: Dialect, change: bool) -> &'static str {
    match (dialect, change) {
        (Dialect::Postgres, false) => " FOR SHARE",
        (Dialect::Postgres, true) => " FOR UPDATE",
        _ => "",
    }
}

/// An organization's own resources of one table (`select` reads its columns, `live`
/// adds a condition such as ` AND delete_time IS NULL`), read by id or a page at a
/// time in id order.
pub(crate) struct OwnedRows<'a> {
    pub select: &'a str,
    pub live: &'a str,
}

impl OwnedRows<'_> {
    /// Row `id` of organization `org_id`, with `lock` (a locking clause, or empty).
    pub(crate) async fn one<'c, R, T>(
        &self,
        db: impl sqlx::any::AnyExecutor<'c>,
        (org_id, id): (&str, &str),
        lock: &str,
    ) -> Result<Option<T>>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
        T: TryFrom<R, Error = Error>,
    {
        let (select, live) = (self.select, self.live);
        let sql = format!("{select} WHERE organization_id = $1 AND id = $2{live}{lock}");
        let row: Option<R> = sqlx::query_as(&sql)
            .bind(org_id)
            .bind(id)
            .fetch_optional(db)
            .await?;
        row.map(T::try_from).transpose()
    }

    /// A page of organization `org_id`'s rows after id `after`; `id` is a row's id.
    pub(crate) async fn page<'c, R, T>(
        &self,
        db: impl sqlx::any::AnyExecutor<'c>,
        org_id: &str,
        (after, limit): (Option<&str>, usize),
        id: impl Fn(&T) -> String,
    ) -> Result<Page<T>>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
        T: TryFrom<R, Error = Error>,
    {
        let (select, live) = (self.select, self.live);
        let sql =
            format!("{select} WHERE organization_id = $1 AND id > $2{live} ORDER BY id LIMIT $3");
        let rows: Vec<R> = sqlx::query_as(&sql)
            .bind(org_id)
            .bind(after.unwrap_or(""))
            .bind(limit as i64 + 1)
            .fetch_all(db)
            .await?;
        let items = rows
            .into_iter()
            .map(T::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, id))
    }
}

pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only says more exist.
    pub(crate) fn from_rows(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Self {
        let next_after = if items.len() > limit {
            items.truncate(limit);
            items.last().map(&key)
        } else {
            None
        };
        Page { items, next_after }
    }
}
