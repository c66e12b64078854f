//! The durable queue of deliveries: writing them with their event, claiming due ones
//! fairly under a lease, pacing rate-limited endpoints, redelivery and pruning.

use std::collections::{HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use sqlx::FromRow;
use uuid::Uuid;

use super::endpoints::Endpoint;
use crate::domain::error::Result;
use crate::domain::event::type_matches;
use crate::store::{Dialect, Store, Tx, micros, placeholders, timestamp};

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

pub(super) const DELIVERY_COLUMNS: &str = "id, endpoint_id, organization_id, event_id, event_type, sequence, \
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
pub(super) const PACE_LOOKAHEAD: SignedDuration = SignedDuration::from_secs(1);
/// A reserved slot this close to now is taken as now.
pub(super) const PACE_SLACK: SignedDuration = SignedDuration::from_millis(5);

#[derive(FromRow)]
pub(super) struct Candidate {
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
pub(super) struct DueEndpoint {
    id: String,
    rate_limit_per_second: i64,
    ordered: i64,
    pace_time: i64,
}

/// Endpoints looked at per claim at most (the rest wait for the next).
pub(super) const ENDPOINTS_PER_CLAIM: usize = 200;

impl Store {
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
    pub(super) async fn due_candidates(
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
        // claimed since the read above is left alone. The rows are found by primary key
        // (the `+` keeps the planner off the due-time indexes, which it had scanned for
        // every due delivery to keep the eighty it was given).
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_until = $1 WHERE id IN (\
             SELECT id FROM webhook_deliveries WHERE id IN ({}) AND state = 'pending' \
             AND +next_attempt_time <= $2 AND (lease_until IS NULL OR lease_until < $2) {lock}) \
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
    /// a retry or a reserved rate-limit slot falling due, or a lease running out. Each
    /// part is one index probe that starts at `now` (`webhook_deliveries_due`,
    /// `webhook_deliveries_leased`), so what finished earlier is never read.
    pub async fn next_delivery_due(&self, now: Timestamp) -> Result<Option<Timestamp>> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(t) FROM (\
               SELECT MIN(next_attempt_time) AS t FROM webhook_deliveries \
                 WHERE state = 'pending' AND next_attempt_time > $1 \
               UNION ALL SELECT MIN(lease_until) AS t FROM webhook_deliveries \
                 WHERE state = 'pending' AND lease_until IS NOT NULL AND lease_until > $1 \
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

    /// The stored bodies of several events of one organization's feed, by sequence
    /// (those pruned meanwhile are absent).
    pub async fn event_bodies(
        &self,
        organization_id: &str,
        sequences: &[i64],
    ) -> Result<HashMap<i64, Vec<u8>>> {
        if sequences.is_empty() {
            return Ok(HashMap::new());
        }
        let mut conn = self.reader().acquire().await?;
        crate::store::events::event_bodies(&mut conn, organization_id, sequences).await
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

/// Deliveries written by one INSERT at commit (5 parameters each).
const DELIVERY_CHUNK: usize = 200;

impl Tx {
    /// Queues a delivery of each event to each enabled endpoint of its organization
    /// whose filter it passes; true if any was queued. Part of [`Tx::commit`].
    pub(in crate::store) async fn queue_deliveries(
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
        let mut rows: Vec<(String, &str, &str, &str, i64)> = vec![];
        for (endpoint_id, filter) in &endpoints {
            let filter: Vec<String> = filter.split_whitespace().map(str::to_owned).collect();
            for (event_id, event_type, sequence) in events {
                if type_matches(&filter, event_type) {
                    let id = Uuid::now_v7().to_string();
                    rows.push((id, endpoint_id, event_id, event_type, *sequence));
                }
            }
        }
        // Many rows a statement: a commit of a batch fans out to one INSERT per
        // DELIVERY_CHUNK deliveries, not one per delivery.
        for chunk in rows.chunks(DELIVERY_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p = 3 + i * 5;
                    format!(
                        "(${}, ${}, $1, ${}, ${}, ${}, 'pending', 0, $2, NULL, $2, NULL, 0)",
                        p,
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO webhook_deliveries (id, endpoint_id, organization_id, event_id, \
                 event_type, sequence, state, attempts, next_attempt_time, lease_until, \
                 create_time, payload, paced) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(organization_id).bind(now);
            for (id, endpoint_id, event_id, event_type, sequence) in chunk {
                query = query
                    .bind(id)
                    .bind(*endpoint_id)
                    .bind(*event_id)
                    .bind(*event_type)
                    .bind(*sequence);
            }
            query.execute(self.conn()).await?;
        }
        let queued = !rows.is_empty();
        Ok(queued)
    }

    pub(super) async fn insert_delivery(
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
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 AND event_id = $2",
        )
        .bind(&endpoint.id)
        .bind(event_id)
        .fetch_optional(self.conn())
        .await?;
        match existing {
            Some(id) => {
                // Decided in SQL, under the row's lock: a delivery in flight (leased)
                // counts as done, so it is sent again whatever its worker records
                // (the worker's result needs the lease it held, which this clears).
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, \
                     next_attempt_time = $1, lease_until = NULL, paced = 0 \
                     WHERE id = $2 AND (state <> 'pending' OR lease_until IS NOT NULL)",
                )
                .bind(now)
                .bind(&id)
                .execute(self.conn())
                .await?;
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
}
