//! What operators look at and do: the gauges behind the metrics endpoint, and online
//! backups of a SQLite database.

use std::path::Path;

use anyhow::Context;
use jiff::Timestamp;

use super::{Dialect, Store, micros};
use crate::domain::error::Result;

/// Counts read at each metrics scrape.
#[derive(Debug, Default)]
pub struct OperationalCounts {
    /// (channel, state, count) of what is not yet delivered: webhook deliveries
    /// (`pending`, `dead`), notifications (`pending`), emails (`pending`, `dead`).
    pub backlog: Vec<(&'static str, String, i64)>,
    pub endpoints_healthy: i64,
    pub endpoints_failing: i64,
    pub endpoints_disabled: i64,
    /// Case timers due at `now` that no worker has fired yet.
    pub timers_due: i64,
}

impl Store {
    /// Each query is served by an index on `state` (or `due_time`); delivered rows
    /// are not counted, so the cost follows the backlog, not the history.
    pub async fn operational_counts(&self, now: Timestamp) -> Result<OperationalCounts> {
        let mut counts = OperationalCounts::default();
        for (channel, sql) in [
            (
                "webhook",
                "SELECT state, COUNT(*) FROM webhook_deliveries WHERE state IN ('pending', 'dead') GROUP BY state",
            ),
            (
                "notification",
                "SELECT state, COUNT(*) FROM notifications WHERE state = 'pending' GROUP BY state",
            ),
            (
                "email",
                "SELECT state, COUNT(*) FROM emails WHERE state IN ('pending', 'dead') GROUP BY state",
            ),
        ] {
            let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(self.reader()).await?;
            for state in ["pending", "dead"] {
                if channel == "notification" && state == "dead" {
                    continue;
                }
                let n = rows.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                counts.backlog.push((channel, state.to_owned(), n));
            }
        }
        let (healthy, failing, disabled): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
               COALESCE(SUM(CASE WHEN enabled <> 0 AND consecutive_failures = 0 THEN 1 ELSE 0 END), 0), \
               COALESCE(SUM(CASE WHEN enabled <> 0 AND consecutive_failures > 0 THEN 1 ELSE 0 END), 0), \
               COALESCE(SUM(CASE WHEN enabled = 0 THEN 1 ELSE 0 END), 0) \
             FROM webhook_endpoints",
        )
        .fetch_one(self.reader())
        .await?;
        counts.endpoints_healthy = healthy;
        counts.endpoints_failing = failing;
        counts.endpoints_disabled = disabled;
        counts.timers_due =
            sqlx::query_scalar("SELECT COUNT(*) FROM case_timers WHERE due_time <= $1")
                .bind(micros(now))
                .fetch_one(self.reader())
                .await?;
        Ok(counts)
    }

    /// Connections in the pools (size, idle), readers and writer together.
    pub fn pool_use(&self) -> (u32, usize) {
        (
            self.writer.size() + self.reader.size(),
            self.writer.num_idle() + self.reader.num_idle(),
        )
    }

    /// A consistent copy of the SQLite database at `path` (`VACUUM INTO`), taken while
    /// the hub keeps serving: readers and the writer go on; the copy is what was
    /// committed when it started. `path` must not exist yet.
    pub async fn backup(&self, path: &Path) -> anyhow::Result<()> {
        if self.dialect != Dialect::Sqlite {
            anyhow::bail!(
                "backup copies SQLite databases; for PostgreSQL use pg_dump or pg_basebackup (see the README)"
            );
        }
        if path.exists() {
            anyhow::bail!("{} exists already; backups never overwrite", path.display());
        }
        let target = path
            .to_str()
            .context("the backup path must be valid UTF-8")?
            .to_owned();
        // VACUUM INTO reads in one read transaction, on a reader connection, so it
        // never holds the write lock.
        sqlx::query("VACUUM INTO $1")
            .bind(target)
            .execute(self.reader())
            .await
            .with_context(|| format!("Failed to back up into {}", path.display()))?;
        Ok(())
    }
}
