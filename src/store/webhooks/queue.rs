//! The durable queue of deliveries: writing them with their event, claiming due ones
//! fairly under a lease, pacing rate-limited endpoints, redelivery and pruning.

use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// Whether its endpoint sends in order (so recording it lets the next one go),
    /// as the worker read the endpoint; true when it could not tell.
    #[sqlx(default)]
    pub ordered: bool,
}

pub(super) const DELIVERY_COLUMNS: &str = "id, endpoint_id, organization_id, event_id, event_type, sequence, \
     attempts, payload, lease_until";

/// A delivery's state, as callers see it.
#[derive(Debug, Clone, FromRow)]
pub struct Delivery {
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    /// pending or dead (succeeded: a test event's, kept for redelivery).
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
    sequence: i64,
    next_attempt_time: i64,
    lease_until: Option<i64>,
    rate: i64,
    paced: i64,
    timed: i64,
}

/// An enabled endpoint with deliveries due.
#[derive(Debug, FromRow)]
pub(super) struct DueEndpoint {
    id: String,
    rate_limit_per_second: i64,
    ordered: i64,
    pace_time: i64,
    fresh_after: i64,
}

/// An idle worker looks again at least this often: a lease left by a worker that
/// died is taken over at most this long after it runs out.
pub const LEASE_SWEEP: SignedDuration = SignedDuration::from_secs(2);

/// Endpoints looked at per claim at most (the rest wait for the next).
pub(super) const ENDPOINTS_PER_CLAIM: usize = 200;

/// A cursor is written once it can move this far: a claim reads past at most this
/// many finished deliveries (whose index entries VACUUM has not removed yet) to its
/// endpoint's first one not done, and the cursor's row is not rewritten every claim.
const CURSOR_STEP: i64 = 64;

/// A parameter of a claim's candidate query.
enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// What a claim may take, and how far each endpoint's fresh lane is finished.
pub(super) struct Candidates {
    rows: Vec<Candidate>,
    /// (endpoint, new cursor): every fresh delivery at or below it is done.
    cursors: Vec<(String, i64)>,
}

impl Store {
    /// Pending deliveries of each of `endpoint_ids`.
    pub async fn pending_deliveries(&self, endpoint_ids: &[&str]) -> Result<HashMap<String, i64>> {
        if endpoint_ids.is_empty() {
            return Ok(HashMap::new());
        }
        // One count per lane, each on its own partial index.
        let ids = placeholders(1, endpoint_ids.len());
        let sql = format!(
            "SELECT endpoint_id, COUNT(*) FROM webhook_deliveries \
             WHERE endpoint_id IN ({ids}) AND state = 'pending' AND timed = 0 GROUP BY endpoint_id \
             UNION ALL SELECT endpoint_id, COUNT(*) FROM webhook_deliveries \
             WHERE endpoint_id IN ({ids}) AND state = 'pending' AND timed = 1 GROUP BY endpoint_id"
        );
        let mut query = sqlx::query_as::<_, (String, i64)>(&sql);
        for id in endpoint_ids {
            query = query.bind(*id);
        }
        let mut counts: HashMap<String, i64> = HashMap::new();
        for (id, n) in query.fetch_all(self.reader()).await? {
            *counts.entry(id).or_default() += n;
        }
        Ok(counts)
    }

    /// The deliveries a claim may take, in the order it should take them: at most
    /// `per_endpoint` per endpoint (the oldest by sequence; for an ordered endpoint only
    /// its first pending delivery, once due), interleaved fairly across organizations
    /// (each one's first, then each one's second, …, earliest due first), `total` in all.
    /// With more endpoints due than one claim looks at, the least recently served go
    /// first.
    ///
    /// Each step is an index range that starts where the work is, so a claim costs
    /// the same however long the queue and however many finished deliveries VACUUM
    /// has not removed yet: the enabled endpoints with anything due, then each one's
    /// fresh deliveries from its cursor (`webhook_deliveries_fresh`) and its timed
    /// ones due by now (`webhook_deliveries_timed_by_endpoint`). The first fresh
    /// delivery read, done or not, moves the endpoint's cursor up to it.
    pub(super) async fn due_candidates(
        &self,
        now: Timestamp,
        per_endpoint: usize,
        busy: &HashMap<String, usize>,
        total: usize,
    ) -> Result<Candidates> {
        let endpoints: Vec<DueEndpoint> = sqlx::query_as(
            // Each probe is a correlated subquery in its index's order with a LIMIT, so
            // PostgreSQL runs it per endpoint on the lane's index (written as EXISTS,
            // the planner may hash it into a read of the whole queue: 6,400 buffers a
            // call while the statistics still said the queue was empty). Both
            // statements of a claim's read are planned afresh each time, not prepared:
            // a plan cached while the queue was empty may scan it once it has grown.
            "SELECT e.id, e.rate_limit_per_second, e.ordered, e.pace_time, e.fresh_after \
             FROM webhook_endpoints e WHERE e.enabled = 1 AND (\
               (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = e.id \
                 AND d.state = 'pending' AND d.timed = 0 AND d.sequence > e.fresh_after \
                 AND (d.lease_until IS NULL OR d.lease_until < $1) \
                 ORDER BY d.sequence LIMIT 1) IS NOT NULL \
               OR (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = e.id \
                 AND d.state = 'pending' AND d.timed = 1 AND d.next_attempt_time <= $1 \
                 AND (d.lease_until IS NULL OR d.lease_until < $1) \
                 ORDER BY d.next_attempt_time LIMIT 1) IS NOT NULL) \
             ORDER BY COALESCE(e.last_success_time, 0) LIMIT $2",
        )
        .bind(micros(now))
        .bind(ENDPOINTS_PER_CLAIM as i64)
        .persistent(false)
        .fetch_all(self.reader())
        .await?;
        if endpoints.is_empty() {
            return Ok(Candidates {
                rows: vec![],
                cursors: vec![],
            });
        }
        let pace_horizon = micros(now + PACE_LOOKAHEAD);
        let pace_blocked =
            |e: &DueEndpoint| e.rate_limit_per_second > 0 && e.pace_time > pace_horizon;
        let blocked: HashSet<&str> = endpoints
            .iter()
            .filter(|e| pace_blocked(e))
            .map(|e| e.id.as_str())
            .collect();
        const COLUMNS: &str = "id, endpoint_id, organization_id, sequence, next_attempt_time, \
             lease_until, paced, timed";
        let mut parts: Vec<String> = vec![];
        let mut args: Vec<Arg> = vec![];
        for (i, e) in endpoints.iter().enumerate() {
            let room = per_endpoint.saturating_sub(busy.get(&e.id).copied().unwrap_or(0));
            if room == 0 {
                // Full on this replica: nothing to take, and its cursor can wait.
                continue;
            }
            // `$id`, `$cursor` and `$now` become this endpoint's parameters.
            let mut part = |sql: String| {
                let mut sql = sql;
                for (token, arg) in [
                    ("$id", Arg::Text(&e.id)),
                    ("$cursor", Arg::Int(e.fresh_after)),
                    ("$now", Arg::Int(micros(now))),
                ] {
                    if sql.contains(token) {
                        args.push(arg);
                        sql = sql.replace(token, &format!("${}", args.len()));
                    }
                }
                parts.push(sql);
            };
            let rate = e.rate_limit_per_second;
            let ordered = e.ordered != 0;
            let select = format!(
                "SELECT * FROM (SELECT {COLUMNS}, CAST({rate} AS BIGINT) AS rate \
                 FROM webhook_deliveries WHERE endpoint_id = $id AND state = 'pending'"
            );
            // A rate-limited endpoint whose slots are reserved beyond the horizon sends
            // only deliveries that already hold a slot, all of them timed (checked below
            // for an ordered one, whose first delivery must not be passed over).
            let blocked = !ordered && pace_blocked(e);
            if !blocked {
                // The first fresh delivery, held or not: it moves the cursor, and is
                // an ordered endpoint's only candidate in this lane.
                part(format!(
                    "{select} AND timed = 0 AND sequence > $cursor ORDER BY sequence LIMIT 1) AS h{i}"
                ));
            }
            if !blocked && !ordered {
                // The first ones free to take (held ones, in flight or awaiting their
                // record, are passed: as many as are in flight, at most).
                part(format!(
                    "{select} AND timed = 0 AND sequence > $cursor \
                     AND (lease_until IS NULL OR lease_until < $now) \
                     ORDER BY sequence LIMIT {room}) AS f{i}"
                ));
            }
            part(if ordered {
                // Its first timed delivery by sequence, due or not (checked below).
                format!("{select} AND timed = 1 ORDER BY sequence LIMIT 1) AS t{i}")
            } else {
                let paced = if blocked { "AND paced = 1 " } else { "" };
                format!(
                    "{select} AND timed = 1 AND next_attempt_time <= $now \
                     AND (lease_until IS NULL OR lease_until < $now) {paced}\
                     ORDER BY next_attempt_time LIMIT {room}) AS t{i}"
                )
            });
        }
        if parts.is_empty() {
            return Ok(Candidates {
                rows: vec![],
                cursors: vec![],
            });
        }
        let sql = parts.join(" UNION ALL ");
        let mut query = sqlx::query_as::<_, Candidate>(&sql).persistent(false);
        for arg in args {
            query = match arg {
                Arg::Text(text) => query.bind(text),
                Arg::Int(n) => query.bind(n),
            };
        }
        let rows = query.fetch_all(self.reader()).await?;
        // Each endpoint's rows in sequence order; its first fresh one is the cursor.
        let mut by_endpoint: HashMap<String, Vec<Candidate>> = HashMap::new();
        let mut seen = HashSet::new();
        for c in rows {
            // The first fresh delivery may come twice (as the head, and as free).
            if seen.insert(c.id.clone()) {
                by_endpoint
                    .entry(c.endpoint_id.clone())
                    .or_default()
                    .push(c);
            }
        }
        let mut cursors = vec![];
        let mut rows = vec![];
        for e in &endpoints {
            let Some(mut mine) = by_endpoint.remove(&e.id) else {
                continue;
            };
            mine.sort_by_key(|c| c.sequence);
            if let Some(first) = mine.iter().find(|c| c.timed == 0)
                && first.sequence > e.fresh_after + CURSOR_STEP
            {
                cursors.push((e.id.clone(), first.sequence - 1));
            }
            if e.ordered != 0 {
                mine.truncate(1);
            }
            rows.extend(mine);
        }
        // A delivery goes only when it is due, free and (if rate-limited) within its
        // pace; an ordered endpoint's first one, or nothing.
        rows.retain(|c| {
            c.next_attempt_time <= micros(now)
                && c.lease_until.is_none_or(|l| l < micros(now))
                && (c.paced == 1 || !blocked.contains(c.endpoint_id.as_str()))
        });
        // Position within its endpoint (rows are in sequence order per endpoint), then
        // fair rank within its organization.
        let mut position: HashMap<String, usize> = HashMap::new();
        let mut ranked: Vec<(usize, Candidate)> = rows
            .into_iter()
            .filter_map(|c| {
                let n = position.entry(c.endpoint_id.clone()).or_default();
                *n += 1;
                (*n <= per_endpoint).then_some((*n, c))
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
        Ok(Candidates {
            rows: ordered.into_iter().map(|(_, c)| c).collect(),
            cursors,
        })
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
        let Candidates {
            rows: candidates,
            cursors,
        } = self
            .due_candidates(
                now,
                limits.per_endpoint,
                limits.busy,
                limits.total + busy_total,
            )
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
        if chosen.is_empty() && cursors.is_empty() {
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
        // Cursors only move up (another worker's may be ahead already). Any value a
        // claim computed is safe, so on PostgreSQL each moves in a statement of its
        // own, which holds no other lock and so cannot wait in a cycle; SQLite writes
        // one transaction at a time anyway, and moves them in the claim's.
        if self.dialect == Dialect::Postgres {
            if !cursors.is_empty() {
                move_cursors(&mut *self.writer.acquire().await?, &cursors).await?;
            }
            if chosen.is_empty() {
                return Ok(vec![]);
            }
        }
        let mut tx = self.begin().await?;
        if self.dialect == Dialect::Sqlite {
            move_cursors(tx.conn(), &cursors).await?;
        }
        let mut claimed = if chosen.is_empty() {
            vec![]
        } else {
            let mut query = sqlx::query_as::<_, ClaimedDelivery>(&sql)
                .bind(micros(lease_until))
                .bind(micros(now));
            for c in &chosen {
                query = query.bind(&c.id);
            }
            query.fetch_all(tx.conn()).await?
        };
        // Rate limits: reserve a slot per newly claimed delivery of a limited endpoint,
        // endpoint rows in id order (as the recorder writes their health).
        let mut unpaced: BTreeMap<&str, (i64, Vec<&str>)> = BTreeMap::new();
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
                         next_attempt_time = $1, paced = 1, timed = 1 WHERE id = $2",
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
    /// a retry or a reserved rate-limit slot falling due (one index probe each, from
    /// `now`: what finished earlier is never read), or at the latest
    /// [`LEASE_SWEEP`] from now, for leases a worker that died left behind (nothing
    /// indexes leases: taking one is a heap-only update).
    pub async fn next_delivery_due(&self, now: Timestamp) -> Result<Option<Timestamp>> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(t) FROM (\
               SELECT MIN(next_attempt_time) AS t FROM webhook_deliveries \
                 WHERE state = 'pending' AND timed = 1 AND next_attempt_time > $1 \
               UNION ALL SELECT MIN(pace_time) - $2 AS t FROM webhook_endpoints \
                 WHERE rate_limit_per_second > 0 AND pace_time - $2 > $1\
             ) due",
        )
        .bind(micros(now))
        .bind(PACE_LOOKAHEAD.as_micros() as i64)
        .fetch_one(self.reader())
        .await?;
        let sweep = now + LEASE_SWEEP;
        Ok(Some(match row.0.map(timestamp).transpose()? {
            Some(due) if due < sweep => due,
            _ => sweep,
        }))
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
        self.reader()
            .run(async |conn| {
                crate::store::events::event_bodies(conn, organization_id, sequences).await
            })
            .await
    }

    /// Deletes attempts made before `cutoff`, finished deliveries created before it
    /// (those that failed for good, and test events, which keep their body), and
    /// deliveries whose endpoint was deleted while they were being queued; returns
    /// how many deliveries went. (Any other delivery that succeeded left the queue
    /// then; its attempts are the record.)
    pub async fn prune_deliveries(&self, cutoff: Timestamp) -> Result<u64> {
        let mut tx = self.begin().await?;
        // Attempt ids are UUID v7, which sort by the time they were made: the range
        // below the cutoff's smallest id is the attempts made before it.
        let ms = cutoff.as_millisecond().max(0) as u64;
        let floor = format!(
            "{:08x}-{:04x}-7000-8000-000000000000",
            ms >> 16,
            ms & 0xffff
        );
        sqlx::query("DELETE FROM webhook_attempts WHERE id < $1")
            .bind(floor)
            .execute(tx.conn())
            .await?;
        let dead = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND create_time < $1",
        )
        .bind(micros(cutoff))
        .execute(tx.conn())
        .await?;
        let orphans = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE NOT EXISTS \
             (SELECT 1 FROM webhook_endpoints e WHERE e.id = webhook_deliveries.endpoint_id)",
        )
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(dead.rows_affected() + orphans.rows_affected())
    }
}

/// Moves endpoints' fresh-lane cursors up (never down: another worker's may be ahead).
async fn move_cursors(conn: &mut sqlx::AnyConnection, cursors: &[(String, i64)]) -> Result<()> {
    for (endpoint_id, cursor) in cursors {
        sqlx::query(
            "UPDATE webhook_endpoints SET fresh_after = $1 WHERE id = $2 AND fresh_after < $1",
        )
        .bind(cursor)
        .bind(endpoint_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Deliveries written by one INSERT at commit (5 parameters each).
const DELIVERY_CHUNK: usize = 200;

impl Tx {
    /// Queues a delivery of each event to each enabled endpoint of its organization
    /// whose filter it passes; true if any was queued. Part of [`Tx::commit`].
    pub(in crate::store) async fn queue_deliveries(
        &mut self,
        organization_id: &str,
        events: &[(&crate::store::NewEvent, i64)],
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
            for (event, sequence) in events {
                let event_type = event.event_type.as_str();
                // An endpoint is not told of its own changes: the first would reach it
                // (as `webhook_endpoint.created`) before its receiver holds the secret.
                let about_itself = event_type.starts_with("webhook_endpoint.")
                    && event
                        .resource
                        .rsplit_once("/webhookEndpoints/")
                        .is_some_and(|(_, id)| id == endpoint_id);
                if type_matches(&filter, event_type) && !about_itself {
                    let id = Uuid::now_v7().to_string();
                    rows.push((id, endpoint_id, &event.id, event_type, *sequence));
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
                        "(${}, ${}, $1, ${}, ${}, ${}, 'pending', 0, $2, NULL, $2, NULL, 0, 0)",
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
                 create_time, payload, paced, timed) VALUES {}",
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

    /// A delivery in the timed lane, due at `now` (a test event, or a redelivery).
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
             payload, paced, timed) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, NULL, $7, $8, 0, 1)",
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
            ordered: endpoint.ordered,
        })
    }

    /// Queues `event_id` for the endpoint again, or for the first time if it never
    /// was (or succeeded, and so left the queue); a delivery still pending is left as
    /// it is. `None` if the organization has no such event (in its feed, or as an
    /// earlier test delivery not yet pruned).
    pub async fn redeliver_event(
        &mut self,
        endpoint: &Endpoint,
        event_id: &str,
    ) -> Result<Option<Delivery>> {
        let now = micros(crate::domain::now());
        let event: Option<(String, i64)> = sqlx::query_as(
            "SELECT type, sequence FROM events WHERE organization_id = $1 AND id = $2",
        )
        .bind(&endpoint.organization_id)
        .bind(event_id)
        .fetch_optional(self.conn())
        .await?;
        // Timed or dead, by event; still fresh, by its event's sequence (each lane on
        // its own index).
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 AND event_id = $2 \
               AND (timed = 1 OR state <> 'pending') \
             UNION ALL SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 \
               AND state = 'pending' AND timed = 0 AND sequence = $3 AND event_id = $2",
        )
        .bind(&endpoint.id)
        .bind(event_id)
        .bind(event.as_ref().map_or(-1, |(_, sequence)| *sequence))
        .fetch_optional(self.conn())
        .await?;
        let id = match existing {
            Some(id) => {
                // Decided in SQL, under the row's lock: a delivery in flight (leased)
                // counts as done, so it is sent again whatever its worker records
                // (the worker's result needs the lease it held, which this clears).
                // It goes in the timed lane: the fresh lane's cursors may be past it.
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, \
                     next_attempt_time = $1, lease_until = NULL, paced = 0, timed = 1 \
                     WHERE id = $2 AND (state <> 'pending' OR lease_until IS NOT NULL)",
                )
                .bind(now)
                .bind(&id)
                .execute(self.conn())
                .await?;
                id
            }
            None => {
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
                .await?
            }
        };
        self.wake_deliveries();
        let delivery: Delivery = sqlx::query_as(
            "SELECT endpoint_id, event_id, event_type, state, attempts, next_attempt_time \
             FROM webhook_deliveries WHERE id = $1",
        )
        .bind(&id)
        .fetch_one(self.conn())
        .await?;
        Ok(Some(delivery))
    }

    /// Queues again every failed delivery to the endpoint created at or after `since`.
    pub async fn redeliver_failed(&mut self, endpoint_id: &str, since: Timestamp) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, \
             next_attempt_time = $1, lease_until = NULL, paced = 0, timed = 1 \
             WHERE endpoint_id = $2 AND state = 'dead' AND (timed = 1 OR state <> 'pending') \
             AND create_time >= $3",
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
