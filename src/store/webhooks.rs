//! Webhook endpoints and the durable queue of deliveries to them.
//!
//! A delivery row per (event, matching endpoint) is written by [`Tx::commit`] in the
//! event's own transaction. Workers claim due rows by setting a lease
//! ([`Store::claim_deliveries`]); the HTTP call happens with no transaction or
//! connection held, and its outcome is written in a short transaction afterwards. A
//! worker that dies leaves its lease to expire; the row is then due again.

use jiff::Timestamp;
use sqlx::FromRow;
use uuid::Uuid;

use super::{Dialect, Store, Tx, micros, timestamp};
use crate::domain::event::type_matches;
use crate::error::Result;

/// A webhook endpoint as stored.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub organization_id: String,
    pub url: String,
    pub description: String,
    /// Parsed type filter (see `domain::event::parse_type_filter`); empty: all.
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: String,
    pub secret: String,
    pub consecutive_failures: i64,
    pub last_success_time: Option<Timestamp>,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    pub revision: i64,
}

#[derive(FromRow)]
struct EndpointRow {
    id: String,
    organization_id: String,
    url: String,
    description: String,
    event_types: String,
    enabled: i64,
    disabled_reason: String,
    secret: String,
    consecutive_failures: i64,
    last_success_time: Option<i64>,
    create_time: i64,
    update_time: i64,
    revision: i64,
}

const ENDPOINT_COLUMNS: &str = "id, organization_id, url, description, event_types, enabled, \
     disabled_reason, secret, consecutive_failures, last_success_time, create_time, update_time, revision";

impl TryFrom<EndpointRow> for Endpoint {
    type Error = crate::error::Error;

    fn try_from(r: EndpointRow) -> Result<Self> {
        Ok(Endpoint {
            id: r.id,
            organization_id: r.organization_id,
            url: r.url,
            description: r.description,
            event_types: r
                .event_types
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            enabled: r.enabled != 0,
            disabled_reason: r.disabled_reason,
            secret: r.secret,
            consecutive_failures: r.consecutive_failures,
            last_success_time: r.last_success_time.map(timestamp).transpose()?,
            create_time: timestamp(r.create_time)?,
            update_time: timestamp(r.update_time)?,
            revision: r.revision,
        })
    }
}

/// A delivery a worker has claimed.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedDelivery {
    pub id: String,
    pub endpoint_id: String,
    pub organization_id: String,
    pub event_id: String,
    pub sequence: i64,
    pub attempts: i64,
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
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

impl Store {
    pub async fn endpoint(&self, organization_id: &str, id: &str) -> Result<Option<Endpoint>> {
        let row: Option<EndpointRow> = sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE organization_id = $1 AND id = $2"
        ))
        .bind(organization_id)
        .bind(id)
        .fetch_optional(self.reader())
        .await?;
        row.map(Endpoint::try_from).transpose()
    }

    /// An organization's endpoints in creation order, after the id `after`.
    pub async fn endpoints(
        &self,
        organization_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<super::Page<Endpoint>> {
        let rows: Vec<EndpointRow> = sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE organization_id = $1 AND id > $2 \
             ORDER BY id LIMIT {}",
            limit + 1
        ))
        .bind(organization_id)
        .bind(after.unwrap_or(""))
        .fetch_all(self.reader())
        .await?;
        let items = rows
            .into_iter()
            .map(Endpoint::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(super::Page::from_rows(items, limit, |e| e.id.clone()))
    }

    /// Claims up to `limit` due deliveries for `lease_until`. On PostgreSQL rows
    /// another replica is claiming right now are skipped, not waited for.
    pub async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>> {
        let lock = match self.dialect {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_until = $1 WHERE id IN (\
             SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_time <= $2 \
             AND (lease_until IS NULL OR lease_until < $2) ORDER BY next_attempt_time LIMIT {limit} {lock}) \
             RETURNING id, endpoint_id, organization_id, event_id, sequence, attempts"
        );
        let mut tx = self.begin().await?;
        let claimed: Vec<ClaimedDelivery> = sqlx::query_as(&sql)
            .bind(micros(lease_until))
            .bind(micros(now))
            .fetch_all(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// When the next pending delivery falls due, if any.
    pub async fn next_delivery_due(&self) -> Result<Option<Timestamp>> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(COALESCE(lease_until, next_attempt_time)) FROM webhook_deliveries \
             WHERE state = 'pending'",
        )
        .fetch_one(self.reader())
        .await?;
        row.0.map(timestamp).transpose()
    }

    /// The stored body of the event `(organization_id, sequence)`.
    pub async fn event_body(
        &self,
        organization_id: &str,
        sequence: i64,
    ) -> Result<Option<Vec<u8>>> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT body FROM events WHERE organization_id = $1 AND sequence = $2")
                .bind(organization_id)
                .bind(sequence)
                .fetch_optional(self.reader())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Writes an attempt's outcome, releases the lease and updates the endpoint's
    /// health, in one short transaction.
    pub async fn record_attempt(&self, d: &ClaimedDelivery, a: &AttemptRecord) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (id, delivery_id, endpoint_id, event_id, attempt_time, \
             status, latency_micros, response_excerpt, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(&d.id)
        .bind(&d.endpoint_id)
        .bind(&d.event_id)
        .bind(micros(a.time))
        .bind(i64::from(a.status))
        .bind(a.latency_micros)
        .bind(&a.response_excerpt)
        .bind(&a.error)
        .execute(tx.conn())
        .await?;
        let state = match (a.succeeded, a.retry_at) {
            (true, _) => "succeeded",
            (false, Some(_)) => "pending",
            (false, None) => "dead",
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, \
             next_attempt_time = $2, lease_until = NULL WHERE id = $3",
        )
        .bind(state)
        .bind(micros(a.retry_at.unwrap_or(a.time)))
        .bind(&d.id)
        .execute(tx.conn())
        .await?;
        if a.succeeded {
            sqlx::query(
                "UPDATE webhook_endpoints SET consecutive_failures = 0, last_success_time = $1 \
                 WHERE id = $2",
            )
            .bind(micros(a.time))
            .bind(&d.endpoint_id)
            .execute(tx.conn())
            .await?;
        } else {
            sqlx::query(
                "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1 \
                 WHERE id = $1",
            )
            .bind(&d.endpoint_id)
            .execute(tx.conn())
            .await?;
        }
        if let Some(reason) = &a.disable {
            sqlx::query(
                "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = $1, \
                 revision = revision + 1 WHERE id = $2",
            )
            .bind(reason)
            .bind(&d.endpoint_id)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }
}

impl Tx {
    pub async fn insert_endpoint(&mut self, e: &Endpoint) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(&e.id)
        .bind(&e.organization_id)
        .bind(&e.url)
        .bind(&e.description)
        .bind(e.event_types.join(" "))
        .bind(i64::from(e.enabled))
        .bind(&e.disabled_reason)
        .bind(&e.secret)
        .bind(e.consecutive_failures)
        .bind(e.last_success_time.map(micros))
        .bind(micros(e.create_time))
        .bind(micros(e.update_time))
        .bind(e.revision)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Deletes an endpoint and its queue; false if it was not there.
    pub async fn delete_endpoint(&mut self, organization_id: &str, id: &str) -> Result<bool> {
        for sql in [
            "DELETE FROM webhook_attempts WHERE endpoint_id = $1",
            "DELETE FROM webhook_deliveries WHERE endpoint_id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(self.conn()).await?;
        }
        let done =
            sqlx::query("DELETE FROM webhook_endpoints WHERE organization_id = $1 AND id = $2")
                .bind(organization_id)
                .bind(id)
                .execute(self.conn())
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Queues a delivery of each event to each enabled endpoint of its organization
    /// whose filter it passes; true if any was queued. Part of [`Tx::commit`].
    pub(super) async fn queue_deliveries(
        &mut self,
        organization_id: &str,
        events: &[(&str, &str, i64)],
    ) -> Result<bool> {
        let endpoints: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, event_types FROM webhook_endpoints WHERE organization_id = $1 AND enabled = 1",
        )
        .bind(organization_id)
        .fetch_all(self.conn())
        .await?;
        let now = micros(crate::domain::now());
        let mut queued = false;
        for (endpoint_id, filter) in &endpoints {
            let filter: Vec<String> = filter.split_whitespace().map(str::to_owned).collect();
            for (event_id, event_type, sequence) in events {
                if !type_matches(&filter, event_type) {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO webhook_deliveries (id, endpoint_id, organization_id, event_id, \
                     sequence, state, attempts, next_attempt_time, lease_until, create_time) \
                     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, NULL, $6)",
                )
                .bind(Uuid::now_v7().to_string())
                .bind(endpoint_id)
                .bind(organization_id)
                .bind(*event_id)
                .bind(*sequence)
                .bind(now)
                .execute(self.conn())
                .await?;
                queued = true;
            }
        }
        Ok(queued)
    }
}
