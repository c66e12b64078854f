//! Attempts: recording each delivery attempt's outcome (one at a time, or successes
//! in batches) and the endpoint health that follows, and reading them back.

use std::collections::{BTreeMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use sqlx::FromRow;

use super::endpoints::Endpoint;
use super::queue::ClaimedDelivery;
use crate::domain::error::Result;
use crate::store::{Store, Tx, micros, placeholders};

/// How stale a healthy endpoint's `last_success_time` may get while its deliveries
/// keep succeeding: the row is rewritten at most this often.
const SUCCESS_RECORD_INTERVAL: SignedDuration = SignedDuration::from_secs(1);

/// What recording an attempt did.
#[derive(Debug)]
pub struct RecordedAttempt {
    /// The result came after its lease had passed to another worker (whose result
    /// stands), and was dropped.
    pub late: bool,
    /// The endpoint, if this attempt disabled it: its receiver answered 410, or every
    /// attempt has failed for `disable_after`.
    pub disabled: Option<Endpoint>,
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// UUID v7, made when the attempt starts.
    pub id: String,
    pub time: Timestamp,
    /// HTTP status; 0 if no response came.
    pub status: u16,
    pub latency_micros: i64,
    pub response_excerpt: String,
    pub error: String,
    /// `Some(t)`: try again at `t`; `None`: finished (succeeded or dead).
    pub retry_at: Option<Timestamp>,
    pub succeeded: bool,
    /// Disable the endpoint with this reason (e.g. the receiver answered 410 Gone).
    pub disable: Option<String>,
}

impl AttemptRecord {
    /// `succeeded`, `retrying` or `failed`, as stored.
    pub fn outcome(&self) -> &'static str {
        match (self.succeeded, self.retry_at) {
            (true, _) => "succeeded",
            (false, Some(_)) => "retrying",
            (false, None) => "failed",
        }
    }
}

/// An attempt as stored.
#[derive(Debug, Clone, FromRow)]
pub struct Attempt {
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    pub attempt_time: i64,
    pub status: i64,
    pub latency_micros: i64,
    pub response_excerpt: String,
    pub error: String,
    pub outcome: String,
}

/// Which attempts to list.
pub struct AttemptQuery<'a> {
    pub organization_id: &'a str,
    /// One endpoint, or all the organization's.
    pub endpoint_id: Option<&'a str>,
    pub event_id: Option<&'a str>,
    /// Continue with attempts older than this id (ids are UUID v7: time-ordered).
    pub before: Option<&'a str>,
    pub limit: usize,
}

impl Store {
    /// Attempts, newest first.
    pub async fn attempts(&self, q: &AttemptQuery<'_>) -> Result<crate::store::Page<Attempt>> {
        let mut sql = String::from(
            "SELECT id, endpoint_id, event_id, event_type, attempt_time, status, latency_micros, \
             response_excerpt, error, outcome FROM webhook_attempts WHERE organization_id = $1",
        );
        let mut binds: Vec<&str> = vec![q.organization_id];
        for (column, op, value) in [
            ("endpoint_id", "=", q.endpoint_id),
            ("event_id", "=", q.event_id),
            ("id", "<", q.before),
        ] {
            if let Some(value) = value {
                binds.push(value);
                sql.push_str(&format!(" AND {column} {op} ${}", binds.len()));
            }
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", q.limit + 1));
        let mut query = sqlx::query_as::<_, Attempt>(&sql);
        for b in binds {
            query = query.bind(b);
        }
        let rows = query.fetch_all(self.reader()).await?;
        Ok(crate::store::Page::from_rows(rows, q.limit, |a| {
            a.id.clone()
        }))
    }
}

impl Tx {
    /// Records successful attempts together: one statement settles their deliveries, one
    /// multi-row insert of the attempts and one health update per endpoint (the
    /// webhook worker's common case, in a fraction of [`Tx::record_attempt`]'s
    /// statements each). A delivery whose endpoint was deleted meanwhile is skipped.
    /// Returns how many results came late: their lease had passed to another worker,
    /// whose result stands.
    pub async fn record_successes(
        &mut self,
        done: &[(ClaimedDelivery, AttemptRecord)],
    ) -> Result<usize> {
        let mut late = 0;
        /// Rows per multi-row INSERT (12 parameters each).
        const CHUNK: usize = 50;
        for chunk in done.chunks(CHUNK) {
            debug_assert!(chunk.iter().all(|(_, a)| a.succeeded));
            let mine: Vec<&ClaimedDelivery> = chunk.iter().map(|(d, _)| d).collect();
            let kept = self.settle_successes(&mine).await?;
            let missed: Vec<&ClaimedDelivery> = chunk
                .iter()
                .map(|(d, _)| d)
                .filter(|d| !kept.contains(&d.id))
                .collect();
            late += self.count_lost_leases(&missed).await?;
            let rows: Vec<&(ClaimedDelivery, AttemptRecord)> =
                chunk.iter().filter(|(d, _)| kept.contains(&d.id)).collect();
            if rows.is_empty() {
                continue;
            }
            self.insert_attempts(rows.iter().map(|(d, a)| (d, a)))
                .await?;
            // Endpoint rows in id order, as claims reserve rate-limit slots.
            let mut endpoints: BTreeMap<&str, Timestamp> = BTreeMap::new();
            for (d, a) in &rows {
                let t = endpoints.entry(&d.endpoint_id).or_insert(a.time);
                *t = (*t).max(a.time);
                if d.ordered {
                    // The next delivery in order may go now, from whichever replica.
                    self.wake_deliveries();
                }
            }
            for (endpoint_id, time) in endpoints {
                // A healthy endpoint's row is rewritten at most once a second while
                // deliveries keep succeeding, not once per batch: each rewrite leaves a
                // dead row version that the delivery worker's scans then read.
                sqlx::query(
                    "UPDATE webhook_endpoints SET consecutive_failures = 0, \
                     last_success_time = $1, failing_since = NULL WHERE id = $2 \
                     AND (consecutive_failures <> 0 OR failing_since IS NOT NULL \
                     OR last_success_time IS NULL OR last_success_time <= $3)",
                )
                .bind(micros(time))
                .bind(endpoint_id)
                .bind(micros(time - SUCCESS_RECORD_INTERVAL))
                .execute(self.conn())
                .await?;
            }
        }
        Ok(late)
    }

    /// Takes deliveries that succeeded out of the queue, each only while it still
    /// holds the lease it was claimed with; returns the ids whose lease held. A test
    /// event's delivery stays, as 'succeeded': its body is kept nowhere else, and it
    /// may be redelivered. One statement per kind finds its deliveries by primary key
    /// and checks each one's lease. (Claims under load take a delivery or two at a
    /// time, so a batch holds many leases; a statement per lease cost PostgreSQL 40 %
    /// of its updates.)
    async fn settle_successes(&mut self, done: &[&ClaimedDelivery]) -> Result<HashSet<String>> {
        let mut kept = HashSet::new();
        for (test_events, settle) in [
            (false, "DELETE FROM webhook_deliveries"),
            (
                true,
                "UPDATE webhook_deliveries SET state = 'succeeded', attempts = attempts + 1, \
                 lease_until = NULL, paced = 0",
            ),
        ] {
            let these: Vec<&ClaimedDelivery> = done
                .iter()
                .copied()
                .filter(|d| d.payload.is_some() == test_events)
                .collect();
            if these.is_empty() {
                continue;
            }
            let ids = placeholders(1, these.len());
            let leases: String = (0..these.len())
                .map(|i| format!(" WHEN ${} THEN ${}", i + 1, these.len() + i + 1))
                .collect();
            let sql = format!(
                "{settle} WHERE id IN ({ids}) AND lease_until = CASE id{leases} END RETURNING id"
            );
            let mut query = sqlx::query_as::<_, (String,)>(&sql);
            for d in &these {
                query = query.bind(&d.id);
            }
            for d in &these {
                query = query.bind(d.lease_until);
            }
            kept.extend(
                query
                    .fetch_all(self.conn())
                    .await?
                    .into_iter()
                    .map(|(id,)| id),
            );
        }
        Ok(kept)
    }

    /// Counts the deliveries of `missed` whose endpoint still exists: their lease
    /// passed to another worker, whose result stands (and may have taken the delivery
    /// out of the queue already). One whose endpoint is gone went with it.
    pub(super) async fn count_lost_leases(&mut self, missed: &[&ClaimedDelivery]) -> Result<usize> {
        let mut lost = 0;
        for d in missed {
            let exists: Option<(String,)> =
                sqlx::query_as("SELECT id FROM webhook_endpoints WHERE id = $1")
                    .bind(&d.endpoint_id)
                    .fetch_optional(self.conn())
                    .await?;
            if exists.is_some() {
                lost += 1;
            }
        }
        Ok(lost)
    }

    /// Inserts attempts (at most 50, 12 parameters each) in one statement.
    pub(super) async fn insert_attempts<'a>(
        &mut self,
        rows: impl IntoIterator<Item = (&'a ClaimedDelivery, &'a AttemptRecord)>,
    ) -> Result<()> {
        let rows: Vec<_> = rows.into_iter().collect();
        let values: Vec<String> = (0..rows.len())
            .map(|i| format!("({})", placeholders(i * 12 + 1, 12)))
            .collect();
        let sql = format!(
            "INSERT INTO webhook_attempts (id, delivery_id, endpoint_id, organization_id, \
             event_id, event_type, attempt_time, status, latency_micros, response_excerpt, \
             error, outcome) VALUES {}",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (d, a) in rows {
            query = query
                .bind(&a.id)
                .bind(&d.id)
                .bind(&d.endpoint_id)
                .bind(&d.organization_id)
                .bind(&d.event_id)
                .bind(&d.event_type)
                .bind(micros(a.time))
                .bind(i64::from(a.status))
                .bind(a.latency_micros)
                .bind(&a.response_excerpt)
                .bind(&a.error)
                .bind(a.outcome());
        }
        query.execute(self.conn()).await?;
        Ok(())
    }

    /// Writes an attempt's outcome, releases the lease and updates the endpoint's
    /// health.
    pub async fn record_attempt(
        &mut self,
        d: &ClaimedDelivery,
        a: &AttemptRecord,
        disable_after: SignedDuration,
    ) -> Result<RecordedAttempt> {
        let state = match a.outcome() {
            "succeeded" => "succeeded",
            "retrying" => "pending",
            _ => "dead",
        };
        // Only while it still holds its lease: one that succeeded is settled as any
        // success is; a retry waits in the timed lane; one that failed for good
        // stays, dead.
        let updated = if a.succeeded {
            self.settle_successes(&[d]).await?.len() as u64
        } else {
            sqlx::query(
                "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, \
                 next_attempt_time = $2, lease_until = NULL, paced = 0, timed = 1 \
                 WHERE id = $3 AND lease_until = $4",
            )
            .bind(state)
            .bind(micros(a.retry_at.unwrap_or(a.time)))
            .bind(&d.id)
            .bind(d.lease_until)
            .execute(self.conn())
            .await?
            .rows_affected()
        };
        if updated == 0 {
            // Another worker took the delivery over, or the endpoint was deleted
            // meanwhile (and its queue with it).
            let late = self.count_lost_leases(&[d]).await? > 0;
            return Ok(RecordedAttempt {
                late,
                disabled: None,
            });
        }
        self.insert_attempts([(d, a)]).await?;
        let disabled = self
            .endpoint_health_after(d, a, state, disable_after)
            .await?;
        Ok(RecordedAttempt {
            late: false,
            disabled,
        })
    }

    /// Updates the endpoint's health after an attempt on `d`; returns the endpoint if
    /// the attempt disabled it.
    pub(super) async fn endpoint_health_after(
        &mut self,
        d: &ClaimedDelivery,
        a: &AttemptRecord,
        state: &str,
        disable_after: SignedDuration,
    ) -> Result<Option<Endpoint>> {
        if a.succeeded {
            sqlx::query(
                "UPDATE webhook_endpoints SET consecutive_failures = 0, last_success_time = $1, \
                 failing_since = NULL WHERE id = $2",
            )
            .bind(micros(a.time))
            .bind(&d.endpoint_id)
            .execute(self.conn())
            .await?;
        } else {
            sqlx::query(
                "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1, \
                 failing_since = COALESCE(failing_since, $1) WHERE id = $2",
            )
            .bind(micros(a.time))
            .bind(&d.endpoint_id)
            .execute(self.conn())
            .await?;
        }
        // Read after the health update: `failing_since` is when this run of failures began.
        let Some(mut endpoint) = self.endpoint(&d.organization_id, &d.endpoint_id).await? else {
            return Ok(None);
        };
        if endpoint.ordered && state != "pending" {
            // The next delivery in order may go now, from whichever replica.
            self.wake_deliveries();
        }
        if !endpoint.enabled {
            return Ok(None);
        }
        let reason = match (&a.disable, endpoint.failing_since) {
            (Some(reason), _) => reason.clone(),
            (None, Some(since)) if a.time.duration_since(since) >= disable_after => format!(
                "every attempt has failed since {}",
                since.strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
            _ => return Ok(None),
        };
        endpoint.enabled = false;
        endpoint.disabled_reason = reason;
        endpoint.update_time = a.time;
        if !self.update_endpoint(&mut endpoint).await? {
            return Ok(None);
        }
        Ok(Some(endpoint))
    }
}
