//! The connections reads outside a transaction use.
//!
//! sqlx's pool pings every connection it takes back before lending it again: a round
//! trip to PostgreSQL, or to the thread that runs a SQLite connection. A read holds
//! its connection for one statement, so the ping doubled the round trips of every read
//! and kept each connection out of use twice as long (GetCustomer on PostgreSQL waited
//! for connections with the hub's CPU half idle).
//!
//! This pool lends a connection for one statement (or one [`ReadPool::run`]) and takes
//! it back at once, as it is, when the statement has finished. What the ping guarded
//! against is handled where it arises: a connection whose statement was abandoned
//! halfway (its caller's deadline passed, the future was dropped) or failed in a way
//! that can mean a broken connection is closed instead of kept, and the next read
//! opens a new one. Connections are also replaced after [`IDLE_TIMEOUT`] unused and
//! [`MAX_LIFETIME`], as sqlx's pool does by default.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::AnyConnection;
use sqlx::any::{AnyConnectOptions, AnyQueryResult, AnyRow, AnyStatement};
use sqlx::{Any, ConnectOptions, Connection, Describe, Either, Execute, Executor};
use tokio::sync::Semaphore;

use crate::domain::error::{Error, Result};

/// A connection unused this long is closed rather than lent.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// A connection this old is closed rather than lent.
const MAX_LIFETIME: Duration = Duration::from_secs(1800);

/// Statements run on each new connection before it is lent (SQLite's pragmas).
pub(crate) type Setup =
    fn(&mut AnyConnection) -> BoxFuture<'_, std::result::Result<(), sqlx::Error>>;

struct Idle {
    conn: AnyConnection,
    opened: Instant,
    since: Instant,
}

pub(crate) struct ReadPool {
    connect: AnyConnectOptions,
    setup: Option<Setup>,
    idle: Mutex<Vec<Idle>>,
    permits: Semaphore,
    max: usize,
    /// Connections open, idle or lent.
    open: AtomicUsize,
    acquire_timeout: Duration,
    closed: AtomicBool,
}

impl std::fmt::Debug for ReadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPool")
            .field("max", &self.max)
            .field("open", &self.size())
            .finish()
    }
}

/// A connection lent for one read; back to the pool when dropped, if it was settled.
pub(crate) struct Lent<'p> {
    pool: &'p ReadPool,
    conn: Option<(AnyConnection, Instant)>,
    _permit: tokio::sync::SemaphorePermit<'p>,
    /// The work on it finished in a way that leaves it usable.
    settled: bool,
}

impl std::ops::Deref for Lent<'_> {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.conn.as_ref().expect("a lent connection").0
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn.as_mut().expect("a lent connection").0
    }
}

impl Lent<'_> {
    /// Marks the connection for reuse unless `failure` may have broken it.
    fn settle(&mut self, failure: Option<&sqlx::Error>) {
        self.settled = failure.is_none_or(|e| !breaks_connection(e));
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let Some((conn, opened)) = self.conn.take() else {
            return;
        };
        if self.settled {
            // Checked under the lock `close` empties the list with, so a connection
            // coming back while the pool closes is either taken by it or dropped here.
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            if !self.pool.closed.load(Ordering::Acquire) {
                idle.push(Idle {
                    conn,
                    opened,
                    since: Instant::now(),
                });
                return;
            }
        }
        // Dropped, not closed gracefully: its state is unknown.
        self.pool.open.fetch_sub(1, Ordering::AcqRel);
        drop(conn);
    }
}

/// Whether a failed statement may have left its connection unusable (I/O, TLS,
/// protocol, a lost or shut-down server). Errors of the statement itself (a
/// constraint, a decode) leave it as good as before.
fn breaks_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            code.starts_with("08") || code.starts_with("57P")
        }
        sqlx::Error::RowNotFound
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. } => false,
        _ => true,
    }
}

impl ReadPool {
    pub(crate) fn new(
        connect: AnyConnectOptions,
        setup: Option<Setup>,
        max: u32,
        acquire_timeout: Duration,
    ) -> Self {
        let max = max.max(1) as usize;
        Self {
            connect,
            setup,
            idle: Mutex::new(Vec::with_capacity(max)),
            permits: Semaphore::new(max),
            max,
            open: AtomicUsize::new(0),
            acquire_timeout,
            closed: AtomicBool::new(false),
        }
    }

    /// Opens one connection now, so a bad URL or an unreachable server is found at
    /// start rather than by the first read.
    pub(crate) async fn check(&self) -> std::result::Result<(), sqlx::Error> {
        self.acquire().await?.settle(None);
        Ok(())
    }

    /// Connections open (idle or lent).
    pub(crate) fn size(&self) -> u32 {
        self.open.load(Ordering::Acquire) as u32
    }

    /// Connections open and not lent.
    pub(crate) fn num_idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Lends a connection: an idle one, or a new one while fewer than the maximum are
    /// open; waits at most the acquire timeout for one to come back.
    pub(crate) async fn acquire(&self) -> std::result::Result<Lent<'_>, sqlx::Error> {
        let lend = async {
            let permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| sqlx::Error::PoolClosed)?;
            let now = Instant::now();
            loop {
                let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
                match idle {
                    Some(i)
                        if now.duration_since(i.since) < IDLE_TIMEOUT
                            && now.duration_since(i.opened) < MAX_LIFETIME =>
                    {
                        return Ok(self.lent(i.conn, i.opened, permit));
                    }
                    Some(stale) => {
                        self.open.fetch_sub(1, Ordering::AcqRel);
                        let _ = stale.conn.close().await;
                    }
                    None => break,
                }
            }
            // Counted once open: a connect abandoned halfway (the acquire timeout, the
            // caller's deadline) leaves nothing to count.
            let conn = self.open_one().await?;
            self.open.fetch_add(1, Ordering::AcqRel);
            Ok(self.lent(conn, Instant::now(), permit))
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(sqlx::Error::PoolClosed);
        }
        tokio::time::timeout(self.acquire_timeout, lend)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    fn lent<'p>(
        &'p self,
        conn: AnyConnection,
        opened: Instant,
        permit: tokio::sync::SemaphorePermit<'p>,
    ) -> Lent<'p> {
        Lent {
            pool: self,
            conn: Some((conn, opened)),
            _permit: permit,
            settled: false,
        }
    }

    async fn open_one(&self) -> std::result::Result<AnyConnection, sqlx::Error> {
        let mut conn = self.connect.connect().await?;
        if let Some(setup) = self.setup {
            setup(&mut conn).await?;
        }
        Ok(conn)
    }

    /// Runs several statements on one connection (say, a read and the reads it
    /// leads to); the connection goes back to the pool unless the work failed in a
    /// way that may have broken it.
    pub(crate) async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut AnyConnection) -> Result<T>,
    ) -> Result<T> {
        let mut lent = self.acquire().await?;
        let outcome = work(&mut lent).await;
        lent.settled = match &outcome {
            Ok(_) => true,
            // A database failure the caller sees as INTERNAL: keep the connection
            // only if the statement, not the connection, failed.
            Err(Error::Internal(e)) => e
                .downcast_ref::<sqlx::Error>()
                .is_some_and(|e| !breaks_connection(e)),
            Err(Error::DatabaseUnavailable { .. }) => false,
            // The rest (not found, contention, bad input) are answers, not breakage.
            Err(_) => true,
        };
        outcome
    }

    /// Closes the idle connections and refuses new reads; reads under way finish,
    /// and their connections are closed when they come back. Waits for them.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *idle)
        };
        for i in idle {
            self.open.fetch_sub(1, Ordering::AcqRel);
            let _ = i.conn.close().await;
        }
        while self.open.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl<'p> Executor<'p> for &'p ReadPool {
    type Database = Any;

    /// Runs the statement to the end and then yields its results: a read outside a
    /// transaction is bounded (every one has a LIMIT or a key), and collecting it
    /// lets the connection go back before the caller looks at the rows.
    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, std::result::Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        Box::pin(
            futures_util::stream::once(async move {
                let mut lent = self.acquire().await?;
                let all: std::result::Result<Vec<_>, _> =
                    lent.fetch_many(query).try_collect().await;
                lent.settle(all.as_ref().err());
                all.map(|rows| futures_util::stream::iter(rows.into_iter().map(Ok)))
            })
            .try_flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, std::result::Result<Option<AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        Box::pin(async move {
            let mut lent = self.acquire().await?;
            let row = lent.fetch_optional(query).await;
            lent.settle(row.as_ref().err());
            row
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [sqlx::any::AnyTypeInfo],
    ) -> BoxFuture<'e, std::result::Result<AnyStatement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        Box::pin(async move {
            let mut lent = self.acquire().await?;
            let statement = lent.prepare_with(sql, parameters).await;
            lent.settle(statement.as_ref().err());
            statement
        })
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, std::result::Result<Describe<Any>, sqlx::Error>>
    where
        'p: 'e,
    {
        Box::pin(async move {
            let mut lent = self.acquire().await?;
            let described = lent.describe(sql).await;
            lent.settle(described.as_ref().err());
            described
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn pool(dir: &tempfile::TempDir, max: u32, acquire_timeout: Duration) -> ReadPool {
        sqlx::any::install_default_drivers();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("reads.db").display()
        );
        let connect = AnyConnectOptions::from_str(&url).unwrap();
        ReadPool::new(
            connect,
            Some(super::super::sqlite_pragmas),
            max,
            acquire_timeout,
        )
    }

    async fn one(pool: &ReadPool) -> i64 {
        sqlx::query_scalar("SELECT 1")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// A statement that runs for a while (a recursive count to five million).
    const SLOW: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                        WHERE i < 5000000) SELECT count(*) FROM n";

    #[tokio::test]
    async fn a_connection_serves_read_after_read_and_a_failed_statement_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 4, Duration::from_secs(5));
        for _ in 0..20 {
            assert_eq!(one(&pool).await, 1);
        }
        assert_eq!(
            (pool.size(), pool.num_idle()),
            (1, 1),
            "one connection, reused"
        );
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT 1 UNION ALL SELECT 2")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(rows, vec![(1,), (2,)]);
        // An error of the statement itself leaves the connection as it was.
        let missing = sqlx::query("SELECT * FROM no_such_table")
            .fetch_optional(&pool)
            .await;
        assert!(matches!(missing.map(|_| ()), Err(sqlx::Error::Database(_))));
        assert_eq!((pool.size(), pool.num_idle()), (1, 1));
    }

    #[tokio::test]
    async fn a_read_abandoned_halfway_closes_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 4, Duration::from_secs(5));
        assert_eq!(one(&pool).await, 1);
        let abandoned = tokio::time::timeout(
            Duration::from_millis(50),
            sqlx::query_scalar::<_, i64>(SLOW).fetch_one(&pool),
        )
        .await;
        assert!(abandoned.is_err(), "the slow read was cut off");
        assert_eq!((pool.size(), pool.num_idle()), (0, 0), "not put back");
        assert_eq!(one(&pool).await, 1, "the next read opens a new one");
        assert_eq!(pool.size(), 1);
    }

    #[tokio::test]
    async fn when_every_connection_is_lent_a_read_waits_then_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 1, Duration::from_millis(100));
        let held = pool.acquire().await.unwrap();
        let waited = sqlx::query("SELECT 1")
            .fetch_optional(&pool)
            .await
            .map(|_| ());
        assert!(matches!(waited, Err(sqlx::Error::PoolTimedOut)));
        assert!(matches!(
            Error::from(waited.unwrap_err()),
            Error::DatabaseUnavailable { .. }
        ));
        drop(held);
        // Lent without being settled (as by `acquire` alone): closed, not reused.
        assert_eq!(pool.size(), 0);
        assert_eq!(one(&pool).await, 1);
    }

    #[tokio::test]
    async fn run_keeps_the_connection_across_its_statements_and_close_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 2, Duration::from_secs(5));
        let (a, b) = pool
            .run(async |conn| {
                sqlx::query("CREATE TEMP TABLE t (v INTEGER)")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("INSERT INTO t VALUES (7)")
                    .execute(&mut *conn)
                    .await?;
                // A temporary table is the connection's own: both statements ran on one.
                let v: i64 = sqlx::query_scalar("SELECT v FROM t")
                    .fetch_one(&mut *conn)
                    .await?;
                Ok((v, 1))
            })
            .await
            .unwrap();
        assert_eq!((a, b), (7, 1));
        assert_eq!((pool.size(), pool.num_idle()), (1, 1));
        pool.close().await;
        assert_eq!(pool.size(), 0);
        assert!(matches!(
            sqlx::query("SELECT 1")
                .fetch_optional(&pool)
                .await
                .map(|_| ()),
            Err(sqlx::Error::PoolClosed)
        ));
    }

    /// On PostgreSQL, where an abandoned statement can leave half a message on the
    /// wire: a cut-off read and a connection the server ended are both closed, and
    /// the next read gets a working connection.
    #[tokio::test]
    #[cfg_attr(
        not(liaison_postgres_tests),
        ignore = "LIAISON_TEST_POSTGRES_URL is not set"
    )]
    async fn on_postgres_a_cut_off_read_or_a_lost_connection_is_not_lent_again() {
        sqlx::any::install_default_drivers();
        let url = std::env::var("LIAISON_TEST_POSTGRES_URL").unwrap();
        let connect = AnyConnectOptions::from_str(&url).unwrap();
        let pool = ReadPool::new(connect, None, 2, Duration::from_secs(5));
        let cut = tokio::time::timeout(
            Duration::from_millis(50),
            sqlx::query("SELECT pg_sleep(2)").execute(&pool),
        )
        .await;
        assert!(cut.is_err());
        assert_eq!(pool.size(), 0, "the cut-off connection was closed");
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        // Another session ends this connection on the server.
        let mut admin = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut admin)
            .await
            .unwrap();
        let lost = sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&pool)
            .await;
        assert!(
            lost.is_err(),
            "the ended connection fails its next statement"
        );
        assert_eq!(pool.size(), 0, "and is not kept");
        let next: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_ne!(next, pid, "a new connection serves the next read");
        assert_eq!((pool.size(), pool.num_idle()), (1, 1));
    }

    #[test]
    fn only_failures_that_may_break_a_connection_close_it() {
        assert!(breaks_connection(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(breaks_connection(&sqlx::Error::Protocol("garbled".into())));
        assert!(!breaks_connection(&sqlx::Error::RowNotFound));
        assert!(!breaks_connection(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
