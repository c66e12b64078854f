//! Point reads on SQLite, run in place.
//!
//! sqlx runs each SQLite connection on a thread of its own: a statement is handed to
//! that thread and its rows handed back, and a pooled connection is pinged (one more
//! round trip) every time it returns to the pool. For a read of one record by its key
//! (GetCustomer) those hand-offs cost more than SQLite's own work: in a profile of
//! GetCustomer they and the thread switches they cause took about a third of the
//! hub's time (BENCHMARKS.md).
//!
//! The reads here run on the calling thread instead, through rusqlite on the same
//! SQLite library sqlx links, on connections of their own with their statements
//! prepared once. Only reads bounded by a primary key come here: they touch a few
//! pages and take microseconds, so they do not hold up the runtime's thread. Anything
//! that can scan stays on the sqlx pool. When every connection here is in use, or
//! SQLite answers BUSY (as a reader in WAL mode it rarely does), the caller is told to
//! use the pool instead: a point read never waits here.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::domain::error::{Error, Result};

/// Connections kept at most: about one per runtime thread (a read holds one only
/// while it runs, on the thread that runs it).
const CONNECTIONS: usize = 8;
/// How long a read waits for SQLite's own locks before going to the pool.
const BUSY_TIMEOUT: Duration = Duration::from_millis(20);
/// Prepared statements kept per connection.
const STATEMENTS: usize = 16;

pub(crate) struct PointReads {
    path: PathBuf,
    /// Idle connections, and how many exist (idle or lent).
    pool: Mutex<(Vec<Connection>, usize)>,
}

impl std::fmt::Debug for PointReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointReads")
            .field("path", &self.path)
            .finish()
    }
}

/// The outcome of a point read: done (found or not), or left to the pool.
pub(crate) enum Point<T> {
    Read(Result<T>),
    UsePool,
}

impl PointReads {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            pool: Mutex::new((Vec::new(), 0)),
        }
    }

    /// Runs `read` on a connection of its own, or says to use the pool (see the module
    /// documentation).
    pub(crate) fn run<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Point<T> {
        let Some(conn) = self.take() else {
            return Point::UsePool;
        };
        let outcome = read(&conn);
        let busy = matches!(
            &outcome,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        self.give_back(conn);
        match outcome {
            _ if busy => Point::UsePool,
            Ok(value) => Point::Read(Ok(value)),
            Err(e) => Point::Read(Err(Error::Internal(
                anyhow::Error::new(e).context("database error (point read)"),
            ))),
        }
    }

    fn take(&self) -> Option<Connection> {
        {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(conn) = pool.0.pop() {
                return Some(conn);
            }
            if pool.1 >= CONNECTIONS {
                return None;
            }
            pool.1 += 1;
        }
        match self.open() {
            Ok(conn) => Some(conn),
            Err(error) => {
                tracing::warn!(%error, "could not open a SQLite connection for point reads");
                self.pool.lock().unwrap_or_else(|p| p.into_inner()).1 -= 1;
                None
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.0.push(conn);
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        // Opened for writing (a read-only connection cannot recover a WAL index the
        // writer left), then refused every write.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA cache_size = -8000;")?;
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("points.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); \
             INSERT INTO t VALUES (1, 'one');",
        )
        .unwrap();
        (dir, path)
    }

    fn value(conn: &Connection) -> rusqlite::Result<String> {
        conn.query_row("SELECT v FROM t WHERE id = 1", [], |r| r.get(0))
    }

    #[test]
    fn a_read_runs_in_place_and_sees_what_another_connection_committed() {
        let (_dir, path) = database();
        let points = PointReads::new(path.clone());
        assert!(matches!(points.run(value), Point::Read(Ok(v)) if v == "one"));
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE t SET v = 'uno' WHERE id = 1", [])
            .unwrap();
        assert!(matches!(points.run(value), Point::Read(Ok(v)) if v == "uno"));
    }

    #[test]
    fn when_every_connection_is_lent_the_read_goes_to_the_pool() {
        let (_dir, path) = database();
        let points = PointReads::new(path);
        fn nest(points: &PointReads, depth: usize) -> usize {
            match points.run(|_| Ok(())) {
                Point::UsePool => depth,
                Point::Read(_) => unreachable!(),
            }
        }
        // Each read holds its connection while the next one starts inside it.
        fn hold(points: &PointReads, depth: usize) -> usize {
            if depth == CONNECTIONS {
                return nest(points, depth);
            }
            let mut inner = None;
            let outcome = points.run(|_| {
                inner = Some(hold(points, depth + 1));
                Ok(())
            });
            assert!(matches!(outcome, Point::Read(Ok(()))));
            inner.unwrap()
        }
        assert_eq!(hold(&points, 0), CONNECTIONS);
        // Given back, they serve again.
        assert!(matches!(points.run(value), Point::Read(Ok(_))));
        assert_eq!(points.pool.lock().unwrap().1, CONNECTIONS);
    }

    #[test]
    fn a_point_connection_refuses_writes_and_a_busy_database_goes_to_the_pool() {
        let (_dir, path) = database();
        let points = PointReads::new(path.clone());
        let write = points.run(|c| c.execute("UPDATE t SET v = 'x' WHERE id = 1", []));
        assert!(matches!(write, Point::Read(Err(Error::Internal(_)))));
        drop(points);
        // A writer holding an exclusive lock on a database not in WAL mode keeps
        // readers out: BUSY, which the caller takes to the pool.
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("PRAGMA journal_mode = DELETE; BEGIN EXCLUSIVE;")
            .unwrap();
        let fresh = PointReads::new(path);
        assert!(matches!(fresh.run(value), Point::UsePool));
        writer.execute_batch("COMMIT").unwrap();
        assert!(matches!(fresh.run(value), Point::Read(Ok(_))));
    }
}
