//! Webhook endpoints: their rows, health and lifecycle (creating, updating and
//! deleting one ends its pending deliveries).

use jiff::Timestamp;
use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use crate::domain::error::Result;
use crate::store::{Dialect, Store, Tx, micros, placeholders, timestamp};

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
    /// A rotated-out secret that still signs until `previous_secret_expire_time`.
    pub previous_secret: String,
    pub previous_secret_expire_time: Option<Timestamp>,
    pub ordered: bool,
    /// Requests per second; 0: unlimited.
    pub rate_limit_per_second: i64,
    pub consecutive_failures: i64,
    pub last_success_time: Option<Timestamp>,
    pub failing_since: Option<Timestamp>,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    pub revision: i64,
}

impl Endpoint {
    /// The secrets that sign a request sent at `at`: the current one, and the previous
    /// one while its overlap lasts.
    pub fn signing_secrets(&self, at: Timestamp) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if !self.previous_secret.is_empty()
            && self.previous_secret_expire_time.is_some_and(|t| t > at)
        {
            secrets.push(&self.previous_secret);
        }
        secrets
    }
}

#[derive(FromRow)]
pub(super) struct EndpointRow {
    id: String,
    organization_id: String,
    url: String,
    description: String,
    event_types: String,
    enabled: i64,
    disabled_reason: String,
    secret: String,
    previous_secret: String,
    previous_secret_expire_time: Option<i64>,
    ordered: i64,
    rate_limit_per_second: i64,
    consecutive_failures: i64,
    last_success_time: Option<i64>,
    failing_since: Option<i64>,
    create_time: i64,
    update_time: i64,
    revision: i64,
}

pub(super) const ENDPOINT_COLUMNS: &str = "id, organization_id, url, description, event_types, enabled, \
     disabled_reason, secret, previous_secret, previous_secret_expire_time, ordered, \
     rate_limit_per_second, consecutive_failures, last_success_time, failing_since, \
     create_time, update_time, revision";

impl TryFrom<EndpointRow> for Endpoint {
    type Error = crate::domain::error::Error;

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
            previous_secret: r.previous_secret,
            previous_secret_expire_time: r
                .previous_secret_expire_time
                .map(timestamp)
                .transpose()?,
            ordered: r.ordered != 0,
            rate_limit_per_second: r.rate_limit_per_second,
            consecutive_failures: r.consecutive_failures,
            last_success_time: r.last_success_time.map(timestamp).transpose()?,
            failing_since: r.failing_since.map(timestamp).transpose()?,
            create_time: timestamp(r.create_time)?,
            update_time: timestamp(r.update_time)?,
            revision: r.revision,
        })
    }
}

pub(super) async fn endpoint_by_id<'c>(
    db: impl AnyExecutor<'c>,
    organization_id: &str,
    id: &str,
) -> Result<Option<Endpoint>> {
    let row: Option<EndpointRow> = sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE organization_id = $1 AND id = $2"
    ))
    .bind(organization_id)
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(Endpoint::try_from).transpose()
}

impl Store {
    pub async fn endpoint(&self, organization_id: &str, id: &str) -> Result<Option<Endpoint>> {
        endpoint_by_id(self.reader(), organization_id, id).await
    }

    /// The endpoints with these ids, in one read (those that no longer exist are
    /// absent). For the webhook worker, which checks each one's organization against
    /// the delivery's.
    pub async fn endpoints_by_id(&self, ids: &[&str]) -> Result<Vec<Endpoint>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id IN ({})",
            crate::store::placeholders(1, ids.len())
        );
        let mut query = sqlx::query_as::<_, EndpointRow>(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        query
            .fetch_all(self.reader())
            .await?
            .into_iter()
            .map(Endpoint::try_from)
            .collect()
    }

    /// An organization's endpoints in creation order, after the id `after`.
    pub async fn endpoints(
        &self,
        organization_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::store::Page<Endpoint>> {
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
        Ok(crate::store::Page::from_rows(items, limit, |e| {
            e.id.clone()
        }))
    }
}

impl Tx {
    pub async fn endpoint(&mut self, organization_id: &str, id: &str) -> Result<Option<Endpoint>> {
        endpoint_by_id(self.conn(), organization_id, id).await
    }

    /// How many endpoints the organization has, counted under a lock on the
    /// organization (PostgreSQL; SQLite writers are serialized anyway), so two
    /// concurrent creates cannot both find room for one more.
    pub async fn count_endpoints_for_insert(&mut self, organization_id: &str) -> Result<usize> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT id FROM organizations WHERE id = $1 FOR UPDATE")
                .bind(organization_id)
                .fetch_optional(self.conn())
                .await?;
        }
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM webhook_endpoints WHERE organization_id = $1")
                .bind(organization_id)
                .fetch_one(self.conn())
                .await?;
        Ok(n as usize)
    }

    pub async fn insert_endpoint(&mut self, e: &Endpoint) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES ({})",
            placeholders(1, 18)
        ))
        .bind(&e.id)
        .bind(&e.organization_id)
        .bind(&e.url)
        .bind(&e.description)
        .bind(e.event_types.join(" "))
        .bind(i64::from(e.enabled))
        .bind(&e.disabled_reason)
        .bind(&e.secret)
        .bind(&e.previous_secret)
        .bind(e.previous_secret_expire_time.map(micros))
        .bind(i64::from(e.ordered))
        .bind(e.rate_limit_per_second)
        .bind(e.consecutive_failures)
        .bind(e.last_success_time.map(micros))
        .bind(e.failing_since.map(micros))
        .bind(micros(e.create_time))
        .bind(micros(e.update_time))
        .bind(e.revision)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Writes the caller-settable fields, the secrets and the failure record of `e` if
    /// its revision is still current, and bumps the revision; false if it was not.
    /// Disabling ends the endpoint's pending deliveries as failed.
    pub async fn update_endpoint(&mut self, e: &mut Endpoint) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET url = $1, description = $2, event_types = $3, \
             enabled = $4, disabled_reason = $5, secret = $6, previous_secret = $7, \
             previous_secret_expire_time = $8, ordered = $9, rate_limit_per_second = $10, \
             consecutive_failures = $11, failing_since = $12, update_time = $13, \
             revision = revision + 1 WHERE id = $14 AND revision = $15",
        )
        .bind(&e.url)
        .bind(&e.description)
        .bind(e.event_types.join(" "))
        .bind(i64::from(e.enabled))
        .bind(&e.disabled_reason)
        .bind(&e.secret)
        .bind(&e.previous_secret)
        .bind(e.previous_secret_expire_time.map(micros))
        .bind(i64::from(e.ordered))
        .bind(e.rate_limit_per_second)
        .bind(e.consecutive_failures)
        .bind(e.failing_since.map(micros))
        .bind(micros(e.update_time))
        .bind(&e.id)
        .bind(e.revision)
        .execute(self.conn())
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        e.revision += 1;
        if !e.enabled {
            self.end_pending_deliveries(&e.id).await?;
        }
        Ok(true)
    }

    /// Pending deliveries of a disabled endpoint fail; they can be redelivered later.
    pub(super) async fn end_pending_deliveries(&mut self, endpoint_id: &str) -> Result<()> {
        // Lane by lane, each on its own index.
        for lane in ["timed = 0", "timed = 1"] {
            sqlx::query(&format!(
                "UPDATE webhook_deliveries SET state = 'dead', lease_until = NULL, paced = 0, \
                 timed = 1 WHERE endpoint_id = $1 AND state = 'pending' AND {lane}"
            ))
            .bind(endpoint_id)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }

    /// Deletes an endpoint and its queue; false if it was not there.
    pub async fn delete_endpoint(&mut self, organization_id: &str, id: &str) -> Result<bool> {
        for sql in [
            "DELETE FROM webhook_attempts WHERE endpoint_id = $1",
            "DELETE FROM webhook_deliveries WHERE endpoint_id = $1 AND state = 'pending' AND timed = 0",
            "DELETE FROM webhook_deliveries WHERE endpoint_id = $1 AND (timed = 1 OR state <> 'pending')",
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
}
