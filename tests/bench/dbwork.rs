//! The database's work per scenario, on PostgreSQL: what `pg_stat_database` counts
//! for the hub's database (tuples returned, buffer hits), divided by the events the
//! scenario wrote and the webhook deliveries it made; and, where the server loads
//! `pg_stat_statements`, the statements that did most of it.
//!
//! A backend flushes its counts to `pg_stat_database` when it has been idle for a
//! while (up to 10 s in PostgreSQL 15), so a measurement ends by waiting for the
//! hub's connections to go idle and flush; `pg_stat_statements` counts as each
//! statement ends.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row as _};

/// How long idle backends may keep their counts before flushing them (PostgreSQL
/// 15's `PGSTAT_IDLE_INTERVAL`), with a margin.
const FLUSH_WAIT: Duration = Duration::from_millis(11_000);
/// Statements listed per scenario.
const TOP: usize = 5;

/// Reads the counters of one database.
pub struct DbWork {
    pool: PgPool,
    statements: bool,
}

/// The counters at one moment.
struct Snapshot {
    returned: i64,
    fetched: i64,
    hits: i64,
    reads: i64,
    commits: i64,
    events: i64,
    deliveries: i64,
    /// By query id: the text, calls, rows and buffer hits so far.
    statements: HashMap<i64, (String, i64, i64, i64)>,
}

/// The work of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Work {
    pub events: i64,
    pub deliveries: i64,
    pub commits: i64,
    pub tuples_returned: i64,
    pub tuples_fetched: i64,
    pub buffer_hits: i64,
    pub buffer_reads: i64,
    /// The statements that hit the most buffers: text, calls, rows, buffer hits.
    pub top: Vec<(String, i64, i64, i64)>,
    /// The delivery pipeline's own statements (every statement on a `webhook_`
    /// table, and the worker's read of event bodies): rows and buffer hits.
    /// `None` without `pg_stat_statements`.
    pub pipeline: Option<(i64, i64)>,
}

/// Whether a statement is the delivery pipeline's: it touches a webhook table (the
/// fan-out insert, claims, results, attempts, endpoint health) or reads the bodies of
/// claimed events.
fn pipeline_statement(text: &str) -> bool {
    text.contains("webhook_") || text.starts_with("SELECT sequence, body FROM events")
}

impl DbWork {
    /// For a PostgreSQL database URL; `None` for SQLite.
    pub async fn connect(url: &str) -> anyhow::Result<Option<Self>> {
        if !url.starts_with("postgres") {
            return Ok(None);
        }
        let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
        let statements: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements')",
        )
        .fetch_one(&pool)
        .await?;
        let statements = statements
            || sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&pool)
                .await
                .is_ok()
                && sqlx::query("SELECT 1 FROM pg_stat_statements LIMIT 1")
                    .execute(&pool)
                    .await
                    .is_ok();
        Ok(Some(Self { pool, statements }))
    }

    /// Waits for the hub's backends to flush, then reads the counters.
    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        tokio::time::sleep(FLUSH_WAIT).await;
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&self.pool)
            .await?;
        let db = sqlx::query(
            "SELECT tup_returned, tup_fetched, blks_hit, blks_read, xact_commit \
             FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&self.pool)
        .await?;
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await?;
        let deliveries: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_attempts WHERE outcome = 'succeeded'")
                .fetch_one(&self.pool)
                .await?;
        let mut statements = HashMap::new();
        if self.statements {
            let rows = sqlx::query(
                "SELECT queryid, query, calls, rows, shared_blks_hit FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND queryid IS NOT NULL",
            )
            .fetch_all(&self.pool)
            .await?;
            for r in rows {
                statements.insert(
                    r.get::<i64, _>(0),
                    (
                        r.get::<String, _>(1),
                        r.get::<i64, _>(2),
                        r.get::<i64, _>(3),
                        r.get::<i64, _>(4),
                    ),
                );
            }
        }
        Ok(Snapshot {
            returned: db.get(0),
            fetched: db.get(1),
            hits: db.get(2),
            reads: db.get(3),
            commits: db.get(4),
            events,
            deliveries,
            statements,
        })
    }

    /// Starts measuring.
    pub async fn start(&self) -> anyhow::Result<Mark> {
        Ok(Mark(self.snapshot().await?))
    }

    /// The work since `mark` (the bench's own few reads included), and the mark the
    /// next scenario starts from.
    pub async fn since(&self, mark: Mark) -> anyhow::Result<(Work, Mark)> {
        let before = mark.0;
        let after = self.snapshot().await?;
        let mut top: Vec<(String, i64, i64, i64)> = after
            .statements
            .iter()
            .filter_map(|(id, (text, calls, rows, hits))| {
                let (c0, r0, h0) = before
                    .statements
                    .get(id)
                    .map_or((0, 0, 0), |(_, c, r, h)| (*c, *r, *h));
                (calls > &c0).then(|| (one_line(text), calls - c0, rows - r0, hits - h0))
            })
            .collect();
        let pipeline = self.statements.then(|| {
            after
                .statements
                .iter()
                .filter(|(_, (text, ..))| pipeline_statement(text.trim_start()))
                .fold((0, 0), |(r, h), (id, (_, _, rows, hits))| {
                    let (r0, h0) = before
                        .statements
                        .get(id)
                        .map_or((0, 0), |(_, _, r, h)| (*r, *h));
                    (r + rows - r0, h + hits - h0)
                })
        });
        top.sort_by_key(|t| std::cmp::Reverse(t.3));
        top.truncate(TOP);
        let work = Work {
            events: after.events - before.events,
            deliveries: after.deliveries - before.deliveries,
            commits: after.commits - before.commits,
            tuples_returned: after.returned - before.returned,
            tuples_fetched: after.fetched - before.fetched,
            buffer_hits: after.hits - before.hits,
            buffer_reads: after.reads - before.reads,
            top,
            pipeline,
        };
        Ok((work, Mark(after)))
    }
}

/// The counters when a scenario started.
pub struct Mark(Snapshot);

/// A statement's text on one line, shortened.
fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 110 {
        format!("{}…", flat.chars().take(110).collect::<String>())
    } else {
        flat
    }
}

impl Work {
    /// `total` per `n`, or 0 when there were none.
    fn per(total: i64, n: i64) -> f64 {
        if n > 0 { total as f64 / n as f64 } else { 0.0 }
    }

    /// The lines printed under a scenario.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "db: {} events, {} deliveries, {} commits; per event {:.0} tuples returned, {:.0} buffer hits; per delivery {:.0} tuples returned, {:.0} buffer hits",
            self.events,
            self.deliveries,
            self.commits,
            Self::per(self.tuples_returned, self.events),
            Self::per(self.buffer_hits, self.events),
            Self::per(self.tuples_returned, self.deliveries),
            Self::per(self.buffer_hits, self.deliveries),
        )];
        if let Some((rows, hits)) = self.pipeline {
            out.push(format!(
                "of which the delivery pipeline's own statements (webhook tables, event bodies): per delivery {:.1} rows, {:.1} buffer hits",
                Self::per(rows, self.deliveries),
                Self::per(hits, self.deliveries),
            ));
        }
        for (text, calls, rows, hits) in &self.top {
            out.push(format!(
                "    {hits:>9} hits {rows:>8} rows {calls:>7} calls  {text}"
            ));
        }
        out
    }
}
