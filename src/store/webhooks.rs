//! Webhook endpoints and the durable queue of deliveries to them.
//!
//! A delivery row per (event, matching endpoint) is written by [`Tx::commit`] in the
//! event's own transaction. Workers claim due rows by setting a lease
//! ([`Store::claim_deliveries`]); the HTTP call happens with no transaction or
//! connection held, and its outcome is written in a short transaction afterwards
//! ([`Tx::record_attempt`]). A worker that dies leaves its lease to expire; the row is
//! then due again.
//!
//! Claiming is fair: due deliveries are ranked round-robin, first across
//! organizations, then across each organization's endpoints, so one backlog never
//! starves another. Per endpoint at most `per_endpoint` are taken (less what this
//! replica already has in flight); an `ordered` endpoint only ever offers its
//! lowest-sequence pending delivery, and only while none of its deliveries is leased,
//! which keeps it to one in flight across replicas. A rate-limited endpoint reserves a
//! send slot per delivery on its row (GCRA: `pace_time` is when the next request may
//! go); deliveries whose slot lies ahead are put back with that slot as their due
//! time, so replicas together keep to the limit.

use std::collections::{HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use sqlx::FromRow;
use uuid::Uuid;

use sqlx::any::AnyExecutor;

use super::{Dialect, Store, Tx, micros, placeholders, timestamp};
use crate::domain::error::Result;
use crate::domain::event::type_matches;

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
struct EndpointRow {
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

const ENDPOINT_COLUMNS: &str = "id, organization_id, url, description, event_types, enabled, \
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

/// A delivery a worker has claimed.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedDelivery {
    pub id: String,
    pub endpoint_id: String,
    pub organization_id: String,
    pub event_id: String,
    pub event_type: String,
    pub sequence: i64,
    pub attempts: i64,
    /// The body of an event outside the feed (a test event); else read from the feed.
    pub payload: Option<Vec<u8>>,
    /// The lease this claim holds: its result is recorded only while the delivery
    /// still carries it (a worker that outlived its lease is fenced off).
    pub lease_until: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "id, endpoint_id, organization_id, event_id, event_type, sequence, \
     attempts, payload, lease_until";

/// A delivery's state, as callers see it.
#[derive(Debug, Clone, FromRow)]
pub struct Delivery {
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    /// pending, succeeded or dead.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_time: i64,
}

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

/// How the worker wants a claim shaped.
pub struct ClaimLimits<'a> {
    /// Deliveries to claim at most.
    pub total: usize,
    /// In flight per endpoint at most.
    pub per_endpoint: usize,
    /// In flight on this replica now, by endpoint id.
    pub busy: &'a HashMap<String, usize>,
}

/// A rate-limited endpoint may reserve slots this far ahead of now at claim time.
const PACE_LOOKAHEAD: SignedDuration = SignedDuration::from_secs(1);
/// A reserved slot this close to now is taken as now.
const PACE_SLACK: SignedDuration = SignedDuration::from_millis(5);

#[derive(FromRow)]
struct Candidate {
    id: String,
    endpoint_id: String,
    organization_id: String,
    next_attempt_time: i64,
    lease_until: Option<i64>,
    rate: i64,
    paced: i64,
}

/// An enabled endpoint with deliveries due.
#[derive(Debug, FromRow)]
struct DueEndpoint {
    id: String,
    rate_limit_per_second: i64,
    ordered: i64,
    pace_time: i64,
}

/// Endpoints looked at per claim at most (the rest wait for the next).
const ENDPOINTS_PER_CLAIM: usize = 200;

async fn endpoint_by_id<'c>(
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

    /// Pending deliveries of each of `endpoint_ids`.
    pub async fn pending_deliveries(&self, endpoint_ids: &[&str]) -> Result<HashMap<String, i64>> {
        if endpoint_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT endpoint_id, COUNT(*) FROM webhook_deliveries \
             WHERE state = 'pending' AND endpoint_id IN ({}) GROUP BY endpoint_id",
            placeholders(1, endpoint_ids.len())
        );
        let mut query = sqlx::query_as::<_, (String, i64)>(&sql);
        for id in endpoint_ids {
            query = query.bind(*id);
        }
        Ok(query.fetch_all(self.reader()).await?.into_iter().collect())
    }

    /// The deliveries a claim may take, in the order it should take them: at most
    /// `per_endpoint` per endpoint (the oldest by sequence; for an ordered endpoint only
    /// its first pending delivery, once due), interleaved fairly across organizations
    /// (each one's first, then each one's second, …, earliest due first), `total` in all.
    /// With more endpoints due than one claim looks at, the least recently served go
    /// first.
    ///
    /// Each step is an index probe, so a claim costs the same however long the queue:
    /// first the enabled endpoints with anything due (`webhook_deliveries_due_by_endpoint`),
    /// then each one's first deliveries in sequence order (`webhook_deliveries_by_endpoint`;
    /// the `+` keeps SQLite's planner off the due-time index here).
    async fn due_candidates(
        &self,
        now: Timestamp,
        per_endpoint: usize,
        total: usize,
    ) -> Result<Vec<Candidate>> {
        let endpoints: Vec<DueEndpoint> = sqlx::query_as(
            "SELECT e.id, e.rate_limit_per_second, e.ordered, e.pace_time FROM webhook_endpoints e \
             WHERE e.enabled = 1 AND EXISTS (SELECT 1 FROM webhook_deliveries d \
               WHERE d.endpoint_id = e.id AND d.state = 'pending' AND d.next_attempt_time <= $1 \
               AND (d.lease_until IS NULL OR d.lease_until < $1)) \
             ORDER BY COALESCE(e.last_success_time, 0) LIMIT $2",
        )
        .bind(micros(now))
        .bind(ENDPOINTS_PER_CLAIM as i64)
        .fetch_all(self.reader())
        .await?;
        if endpoints.is_empty() {
            return Ok(vec![]);
        }
        let pace_horizon = micros(now + PACE_LOOKAHEAD);
        let pace_blocked =
            |e: &DueEndpoint| e.rate_limit_per_second > 0 && e.pace_time > pace_horizon;
        let blocked: HashSet<&str> = endpoints
            .iter()
            .filter(|e| pace_blocked(e))
            .map(|e| e.id.as_str())
            .collect();
        let mut parts = vec![];
        for (i, e) in endpoints.iter().enumerate() {
            let p = i * 2;
            // An ordered endpoint: its first pending delivery, checked below.
            let (due, limit) = if e.ordered != 0 {
                (String::new(), 1)
            } else {
                (
                    format!(
                        "AND +next_attempt_time <= ${n} AND (lease_until IS NULL OR lease_until < ${n}) ",
                        n = p + 2
                    ),
                    per_endpoint,
                )
            };
            // A rate-limited endpoint whose slots are reserved beyond the horizon sends
            // only deliveries that already hold a slot (checked below for an ordered one,
            // whose first delivery must not be passed over).
            let paced = if e.ordered == 0 && pace_blocked(e) {
                "AND paced = 1 "
            } else {
                ""
            };
            parts.push(format!(
                "SELECT * FROM (SELECT id, endpoint_id, organization_id, next_attempt_time, \
                 lease_until, CAST({rate} AS BIGINT) AS rate, paced FROM webhook_deliveries \
                 WHERE endpoint_id = ${id} AND state = 'pending' {due}{paced}\
                 ORDER BY sequence LIMIT {limit}) AS q{i}",
                id = p + 1,
                rate = e.rate_limit_per_second,
            ));
        }
        let sql = parts.join(" UNION ALL ");
        let mut query = sqlx::query_as::<_, Candidate>(&sql);
        for e in &endpoints {
            query = query.bind(&e.id).bind(micros(now));
        }
        let mut rows = query.fetch_all(self.reader()).await?;
        // An ordered endpoint's first delivery goes only when it is due, free and (if
        // rate-limited) within its pace.
        rows.retain(|c| {
            c.next_attempt_time <= micros(now)
                && c.lease_until.is_none_or(|l| l < micros(now))
                && (c.paced == 1 || !blocked.contains(c.endpoint_id.as_str()))
        });
        // Position within its endpoint (rows come in sequence order per endpoint), then
        // fair rank within its organization.
        let mut position: HashMap<String, usize> = HashMap::new();
        let mut ranked: Vec<(usize, Candidate)> = rows
            .into_iter()
            .map(|c| {
                let n = position.entry(c.endpoint_id.clone()).or_default();
                *n += 1;
                (*n, c)
            })
            .collect();
        ranked.sort_by(|(a, x), (b, y)| {
            (&x.organization_id, *a, x.next_attempt_time).cmp(&(
                &y.organization_id,
                *b,
                y.next_attempt_time,
            ))
        });
        let mut fair: HashMap<String, usize> = HashMap::new();
        let mut ordered: Vec<(usize, Candidate)> = ranked
            .into_iter()
            .map(|(_, c)| {
                let n = fair.entry(c.organization_id.clone()).or_default();
                *n += 1;
                (*n, c)
            })
            .collect();
        ordered.sort_by_key(|(f, c)| (*f, c.next_attempt_time));
        ordered.truncate(total);
        Ok(ordered.into_iter().map(|(_, c)| c).collect())
    }

    /// Claims due deliveries until `lease_until` (see the module docs for the rules).
    /// On PostgreSQL rows another replica is claiming right now are skipped, not
    /// waited for.
    pub async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limits: ClaimLimits<'_>,
    ) -> Result<Vec<ClaimedDelivery>> {
        let busy_total: usize = limits.busy.values().sum();
        let candidates = self
            .due_candidates(now, limits.per_endpoint, limits.total + busy_total)
            .await?;
        // Leave room for what this replica already has in flight to each endpoint.
        let mut room: HashMap<&str, usize> = HashMap::new();
        let mut chosen = vec![];
        for c in &candidates {
            let left = room.entry(&c.endpoint_id).or_insert_with(|| {
                limits
                    .per_endpoint
                    .saturating_sub(limits.busy.get(&c.endpoint_id).copied().unwrap_or(0))
            });
            if *left > 0 && chosen.len() < limits.total {
                *left -= 1;
                chosen.push(c);
            }
        }
        if chosen.is_empty() {
            return Ok(vec![]);
        }
        let lock = match self.dialect {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        // The conditions are checked again under the row locks: a row another replica
        // claimed since the read above is left alone.
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_until = $1 WHERE id IN (\
             SELECT id FROM webhook_deliveries WHERE id IN ({}) AND state = 'pending' \
             AND next_attempt_time <= $2 AND (lease_until IS NULL OR lease_until < $2) {lock}) \
             RETURNING {DELIVERY_COLUMNS}",
            placeholders(3, chosen.len())
        );
        let mut tx = self.begin().await?;
        let mut query = sqlx::query_as::<_, ClaimedDelivery>(&sql)
            .bind(micros(lease_until))
            .bind(micros(now));
        for c in &chosen {
            query = query.bind(&c.id);
        }
        let mut claimed = query.fetch_all(tx.conn()).await?;
        // Rate limits: reserve a slot per newly claimed delivery of a limited endpoint.
        let mut unpaced: HashMap<&str, (i64, Vec<&str>)> = HashMap::new();
        for c in &chosen {
            if c.rate > 0 && c.paced == 0 && claimed.iter().any(|d| d.id == c.id) {
                let entry = unpaced.entry(&c.endpoint_id).or_insert((c.rate, vec![]));
                entry.1.push(&c.id);
            }
        }
        let mut deferred: Vec<String> = vec![];
        for (endpoint_id, (rate, ids)) in unpaced {
            let interval = 1_000_000 / rate.max(1);
            let n = ids.len() as i64;
            let (end,): (i64,) = sqlx::query_as(
                "UPDATE webhook_endpoints SET pace_time = \
                 (CASE WHEN pace_time > $1 THEN pace_time ELSE $1 END) + $2 \
                 WHERE id = $3 RETURNING pace_time",
            )
            .bind(micros(now))
            .bind(interval * n)
            .bind(endpoint_id)
            .fetch_one(tx.conn())
            .await?;
            let start = end - interval * n;
            for (i, id) in ids.into_iter().enumerate() {
                let slot = start + interval * i as i64;
                if slot > micros(now + PACE_SLACK) {
                    sqlx::query(
                        "UPDATE webhook_deliveries SET lease_until = NULL, \
                         next_attempt_time = $1, paced = 1 WHERE id = $2",
                    )
                    .bind(slot)
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                    deferred.push(id.to_owned());
                }
            }
        }
        tx.commit().await?;
        claimed.retain(|d| !deferred.contains(&d.id));
        Ok(claimed)
    }

    /// The next moment something may become claimable that no notification announces:
    /// a retry or a reserved rate-limit slot falling due, or a lease running out.
    pub async fn next_delivery_due(&self, now: Timestamp) -> Result<Option<Timestamp>> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(t) FROM (\
               SELECT MIN(next_attempt_time) AS t FROM webhook_deliveries \
                 WHERE state = 'pending' AND next_attempt_time > $1 \
               UNION ALL SELECT MIN(lease_until) AS t FROM webhook_deliveries \
                 WHERE state = 'pending' AND lease_until > $1 \
               UNION ALL SELECT MIN(pace_time) - $2 AS t FROM webhook_endpoints \
                 WHERE rate_limit_per_second > 0 AND pace_time - $2 > $1\
             ) due",
        )
        .bind(micros(now))
        .bind(PACE_LOOKAHEAD.as_micros() as i64)
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

    /// Attempts, newest first.
    pub async fn attempts(&self, q: &AttemptQuery<'_>) -> Result<super::Page<Attempt>> {
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
        Ok(super::Page::from_rows(rows, q.limit, |a| a.id.clone()))
    }

    /// Deletes finished deliveries, and their attempts, created before `cutoff`;
    /// returns how many deliveries went.
    pub async fn prune_deliveries(&self, cutoff: Timestamp) -> Result<u64> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries \
             WHERE state <> 'pending' AND create_time < $1)",
        )
        .bind(micros(cutoff))
        .execute(tx.conn())
        .await?;
        let done = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND create_time < $1",
        )
        .bind(micros(cutoff))
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
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
    async fn end_pending_deliveries(&mut self, endpoint_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_deliveries SET state = 'dead', lease_until = NULL, paced = 0 \
             WHERE endpoint_id = $1 AND state = 'pending'",
        )
        .bind(endpoint_id)
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
                self.insert_delivery(
                    endpoint_id,
                    organization_id,
                    (event_id, event_type, *sequence),
                    None,
                    now,
                )
                .await?;
                queued = true;
            }
        }
        Ok(queued)
    }

    async fn insert_delivery(
        &mut self,
        endpoint_id: &str,
        organization_id: &str,
        (event_id, event_type, sequence): (&str, &str, i64),
        payload: Option<&[u8]>,
        now: i64,
    ) -> Result<String> {
        let id = Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, endpoint_id, organization_id, event_id, \
             event_type, sequence, state, attempts, next_attempt_time, lease_until, create_time, \
             payload, paced) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, NULL, $7, $8, 0)",
        )
        .bind(&id)
        .bind(endpoint_id)
        .bind(organization_id)
        .bind(event_id)
        .bind(event_type)
        .bind(sequence)
        .bind(now)
        .bind(payload)
        .execute(self.conn())
        .await?;
        Ok(id)
    }

    /// A test delivery of `payload`, leased to the caller (who sends it at once) until
    /// `lease_until`.
    pub async fn insert_test_delivery(
        &mut self,
        endpoint: &Endpoint,
        event_id: &str,
        event_type: &str,
        payload: &[u8],
        lease_until: Timestamp,
    ) -> Result<ClaimedDelivery> {
        let now = micros(crate::domain::now());
        let id = self
            .insert_delivery(
                &endpoint.id,
                &endpoint.organization_id,
                (event_id, event_type, 0),
                Some(payload),
                now,
            )
            .await?;
        sqlx::query("UPDATE webhook_deliveries SET lease_until = $1 WHERE id = $2")
            .bind(micros(lease_until))
            .bind(&id)
            .execute(self.conn())
            .await?;
        Ok(ClaimedDelivery {
            id,
            endpoint_id: endpoint.id.clone(),
            organization_id: endpoint.organization_id.clone(),
            event_id: event_id.to_owned(),
            event_type: event_type.to_owned(),
            sequence: 0,
            attempts: 0,
            payload: Some(payload.to_vec()),
            lease_until: Some(micros(lease_until)),
        })
    }

    /// Queues `event_id` for the endpoint again, or for the first time if it never
    /// was; a delivery still pending is left as it is. `None` if the organization has
    /// no such event (in its feed, or as an earlier test delivery).
    pub async fn redeliver_event(
        &mut self,
        endpoint: &Endpoint,
        event_id: &str,
    ) -> Result<Option<Delivery>> {
        let now = micros(crate::domain::now());
        let existing: Option<(String, String)> = sqlx::query_as(
            "SELECT id, state FROM webhook_deliveries WHERE endpoint_id = $1 AND event_id = $2",
        )
        .bind(&endpoint.id)
        .bind(event_id)
        .fetch_optional(self.conn())
        .await?;
        match existing {
            Some((id, state)) => {
                if state != "pending" {
                    sqlx::query(
                        "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, \
                         next_attempt_time = $1, lease_until = NULL, paced = 0 WHERE id = $2",
                    )
                    .bind(now)
                    .bind(&id)
                    .execute(self.conn())
                    .await?;
                }
            }
            None => {
                let event: Option<(String, i64)> = sqlx::query_as(
                    "SELECT type, sequence FROM events WHERE organization_id = $1 AND id = $2",
                )
                .bind(&endpoint.organization_id)
                .bind(event_id)
                .fetch_optional(self.conn())
                .await?;
                let Some((event_type, sequence)) = event else {
                    return Ok(None);
                };
                self.insert_delivery(
                    &endpoint.id,
                    &endpoint.organization_id,
                    (event_id, &event_type, sequence),
                    None,
                    now,
                )
                .await?;
            }
        }
        self.wake_deliveries();
        let delivery: Delivery = sqlx::query_as(
            "SELECT endpoint_id, event_id, event_type, state, attempts, next_attempt_time \
             FROM webhook_deliveries WHERE endpoint_id = $1 AND event_id = $2",
        )
        .bind(&endpoint.id)
        .bind(event_id)
        .fetch_one(self.conn())
        .await?;
        Ok(Some(delivery))
    }

    /// Queues again every failed delivery to the endpoint created at or after `since`.
    pub async fn redeliver_failed(&mut self, endpoint_id: &str, since: Timestamp) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, \
             next_attempt_time = $1, lease_until = NULL, paced = 0 \
             WHERE endpoint_id = $2 AND state = 'dead' AND create_time >= $3",
        )
        .bind(micros(crate::domain::now()))
        .bind(endpoint_id)
        .bind(micros(since))
        .execute(self.conn())
        .await?;
        if done.rows_affected() > 0 {
            self.wake_deliveries();
        }
        Ok(done.rows_affected())
    }

    /// Records successful attempts together: one update of their deliveries, one
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
            let Some(last) = chunk.iter().map(|(_, a)| a.time).max() else {
                continue;
            };
            // Each only while it still holds the lease it was claimed with: one
            // statement joins the batch's (id, lease) pairs, each found by primary key.
            // (Claims under load take a delivery or two at a time, so a batch holds
            // many leases; a statement per lease cost PostgreSQL 40 % of its updates.)
            let held: Vec<String> = (0..chunk.len())
                .map(|i| format!("SELECT ${} AS id, ${} AS lease", 2 * i + 2, 2 * i + 3))
                .collect();
            let sql = format!(
                "UPDATE webhook_deliveries SET state = 'succeeded', attempts = attempts + 1, \
                 next_attempt_time = $1, lease_until = NULL, paced = 0 \
                 FROM ({}) AS held \
                 WHERE webhook_deliveries.id = held.id AND webhook_deliveries.lease_until = held.lease \
                 RETURNING webhook_deliveries.id",
                held.join(" UNION ALL ")
            );
            let mut query = sqlx::query_as::<_, (String,)>(&sql).bind(micros(last));
            for (d, _) in chunk {
                query = query.bind(&d.id).bind(d.lease_until);
            }
            let kept: HashSet<String> = query
                .fetch_all(self.conn())
                .await?
                .into_iter()
                .map(|(id,)| id)
                .collect();
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
            let mut endpoints: HashMap<&str, Timestamp> = HashMap::new();
            for (d, a) in &rows {
                let t = endpoints.entry(&d.endpoint_id).or_insert(a.time);
                *t = (*t).max(a.time);
            }
            for (endpoint_id, time) in endpoints {
                let ordered: Option<(i64,)> = sqlx::query_as(
                    "UPDATE webhook_endpoints SET consecutive_failures = 0, \
                     last_success_time = $1, failing_since = NULL WHERE id = $2 RETURNING ordered",
                )
                .bind(micros(time))
                .bind(endpoint_id)
                .fetch_optional(self.conn())
                .await?;
                if ordered.is_some_and(|(o,)| o != 0) {
                    // The next delivery in order may go now, from whichever replica.
                    self.wake_deliveries();
                }
            }
        }
        Ok(late)
    }

    /// Gives a claimed delivery back unattempted (the hub is stopping): due at once
    /// for whichever worker looks next, here or on another replica.
    pub async fn release_delivery(&mut self, d: &ClaimedDelivery) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_deliveries SET lease_until = NULL WHERE id = $1 AND lease_until = $2",
        )
        .bind(&d.id)
        .bind(d.lease_until)
        .execute(self.conn())
        .await?;
        self.wake_deliveries();
        Ok(())
    }

    /// Counts the deliveries of `missed` that still exist: their lease passed to
    /// another worker, whose result stands. (One that is gone went with its endpoint.)
    async fn count_lost_leases(&mut self, missed: &[&ClaimedDelivery]) -> Result<usize> {
        let mut lost = 0;
        for d in missed {
            let exists: Option<(String,)> =
                sqlx::query_as("SELECT id FROM webhook_deliveries WHERE id = $1")
                    .bind(&d.id)
                    .fetch_optional(self.conn())
                    .await?;
            if exists.is_some() {
                lost += 1;
            }
        }
        Ok(lost)
    }

    /// Inserts attempts (at most 50, 12 parameters each) in one statement.
    async fn insert_attempts<'a>(
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
        let updated = sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, \
             next_attempt_time = $2, lease_until = NULL, paced = 0 \
             WHERE id = $3 AND lease_until = $4",
        )
        .bind(state)
        .bind(micros(a.retry_at.unwrap_or(a.time)))
        .bind(&d.id)
        .bind(d.lease_until)
        .execute(self.conn())
        .await?;
        if updated.rows_affected() == 0 {
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
    async fn endpoint_health_after(
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
