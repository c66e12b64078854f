//! The running totals customer metrics are read from (`interaction_totals`): one
//! upsert as each interaction is logged, moved with a merge, gone with an erasure.

use std::collections::BTreeMap;

use sqlx::FromRow;

use super::{Dialect, Store, Tx, corrupt, micros, placeholders, timestamp};
use crate::domain::error::Result;
use crate::domain::interaction::{Interaction, InteractionType};
use crate::domain::metrics::{RfmBoundaries, Total, scope_of};

#[derive(FromRow)]
struct TotalRow {
    customer_id: String,
    scope: String,
    #[sqlx(rename = "type")]
    kind: String,
    currency: String,
    count: i64,
    units: i64,
    nanos: i64,
    first_time: i64,
    last_time: i64,
}

impl TotalRow {
    fn total(self) -> Result<(String, Total)> {
        Ok((
            self.customer_id,
            Total {
                kind: InteractionType::parse(&self.kind)
                    .ok_or_else(|| corrupt("interaction type", &self.kind))?,
                currency: (!self.currency.is_empty()).then_some(self.currency),
                count: self.count,
                amount: i128::from(self.units) * 1_000_000_000 + i128::from(self.nanos),
                first: timestamp(self.first_time)?,
                last: timestamp(self.last_time)?,
            },
        ))
    }
}

/// The SQL that adds the totals of `excluded` to a row already there.
fn add_on_conflict(dialect: Dialect) -> String {
    let (least, greatest) = match dialect {
        Dialect::Postgres => ("LEAST", "GREATEST"),
        Dialect::Sqlite => ("MIN", "MAX"),
    };
    format!(
        "ON CONFLICT (customer_id, scope, type, currency) DO UPDATE SET \
         count = interaction_totals.count + excluded.count, \
         units = interaction_totals.units + excluded.units, \
         nanos = interaction_totals.nanos + excluded.nanos, \
         first_time = {least}(interaction_totals.first_time, excluded.first_time), \
         last_time = {greatest}(interaction_totals.last_time, excluded.last_time)"
    )
}

const TOTAL_COLUMNS: &str = "t.customer_id, t.scope, t.type, t.currency, t.count, t.units, \
     t.nanos, t.first_time, t.last_time";

/// The totals the interactions of the customers `list` (placeholders) give, in the
/// columns of `interaction_totals`.
fn recompute(list: &str) -> String {
    let scope = "CASE WHEN visibility = 'shared' THEN '' ELSE org_id END";
    format!(
        "SELECT customer_id, {scope} AS scope, type, COALESCE(currency, '') AS currency, \
         COUNT(*) AS count, CAST(COALESCE(SUM(amount_units), 0) AS BIGINT) AS units, \
         CAST(COALESCE(SUM(amount_nanos), 0) AS BIGINT) AS nanos, \
         MIN(occur_time) AS first_time, MAX(occur_time) AS last_time FROM interactions \
         WHERE customer_id IN ({list}) GROUP BY customer_id, {scope}, type, \
         COALESCE(currency, '')"
    )
}

/// Where one customer's stored totals and those its interactions give disagree:
/// one row of either (`None` where the other side has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalDifference {
    pub customer_id: String,
    /// `''` for the shared scope, else the organization whose private interactions.
    pub scope: String,
    pub stored: Option<Total>,
    pub recomputed: Option<Total>,
}

/// The result of checking (and perhaps repairing) every customer's totals.
#[derive(Debug, Clone, Default)]
pub struct TotalsCheck {
    pub customers: u64,
    /// Every difference found (the first `MAX_REPORTED` of them).
    pub differences: Vec<TotalDifference>,
    /// How many customers had any.
    pub customers_differing: u64,
    pub repaired: bool,
}

/// Most differences a check keeps to report; the count goes on.
pub const MAX_REPORTED: usize = 1_000;

/// Customers checked per step.
const CHECK_BATCH: usize = 500;

type Keyed = BTreeMap<(String, String, String, String), Total>;

fn keyed(rows: Vec<TotalRow>) -> Result<Keyed> {
    let mut out = Keyed::new();
    for r in rows {
        let key = (
            r.customer_id.clone(),
            r.scope.clone(),
            r.kind.clone(),
            r.currency.clone(),
        );
        out.insert(key, r.total()?.1);
    }
    Ok(out)
}

impl Tx {
    /// Adds a newly logged interaction to its customer's running totals.
    pub async fn add_to_totals(&mut self, i: &Interaction) -> Result<()> {
        let sql = format!(
            "INSERT INTO interaction_totals (customer_id, scope, type, currency, count, units, \
             nanos, first_time, last_time) VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $7) {}",
            add_on_conflict(self.dialect)
        );
        sqlx::query(&sql)
            .bind(&i.customer_id)
            .bind(scope_of(i.visibility, &i.organization.id))
            .bind(i.kind.as_str())
            .bind(i.amount.as_ref().map_or("", |m| m.currency.as_str()))
            .bind(i.amount.as_ref().map_or(0, |m| m.units))
            .bind(i.amount.as_ref().map_or(0, |m| i64::from(m.nanos)))
            .bind(micros(i.occur_time))
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Adds `loser`'s totals to `survivor`'s (a merge moves its interactions).
    pub async fn move_totals(&mut self, loser: &str, survivor: &str) -> Result<()> {
        let sql = format!(
            "INSERT INTO interaction_totals (customer_id, scope, type, currency, count, units, \
             nanos, first_time, last_time) SELECT $2, scope, type, currency, count, units, nanos, \
             first_time, last_time FROM interaction_totals WHERE customer_id = $1 {}",
            add_on_conflict(self.dialect)
        );
        sqlx::query(&sql)
            .bind(loser)
            .bind(survivor)
            .execute(self.conn())
            .await?;
        sqlx::query("DELETE FROM interaction_totals WHERE customer_id = $1")
            .bind(loser)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}

impl Store {
    /// Recomputes every customer's running totals from its interactions, a batch of
    /// customers at a time, and reports where the stored ones differ; with `repair`,
    /// replaces those customers' totals by the recomputed ones (each batch in one
    /// transaction, so a customer is never seen half repaired).
    pub async fn check_totals(&self, repair: bool) -> Result<TotalsCheck> {
        let mut check = TotalsCheck {
            repaired: repair,
            ..Default::default()
        };
        let mut after = String::new();
        loop {
            let ids: Vec<String> =
                sqlx::query_scalar("SELECT id FROM customers WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(&after)
                    .bind(CHECK_BATCH as i64)
                    .fetch_all(self.reader())
                    .await?;
            let Some(last) = ids.last() else {
                return Ok(check);
            };
            after.clone_from(last);
            check.customers += ids.len() as u64;
            let mut tx = self.begin().await?;
            // Both reads from one snapshot, so an interaction logged meanwhile is no
            // false difference (SQLite's write transaction is one already).
            if self.dialect == Dialect::Postgres {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .execute(tx.conn())
                    .await?;
            }
            let list = placeholders(1, ids.len());
            let stored_sql = format!(
                "SELECT {TOTAL_COLUMNS} FROM interaction_totals t WHERE t.customer_id IN ({list})"
            );
            let recomputed_sql = format!("SELECT {TOTAL_COLUMNS} FROM ({}) t", recompute(&list));
            let (mut stored_q, mut recomputed_q) = (
                sqlx::query_as::<_, TotalRow>(&stored_sql),
                sqlx::query_as::<_, TotalRow>(&recomputed_sql),
            );
            for id in &ids {
                stored_q = stored_q.bind(id);
                recomputed_q = recomputed_q.bind(id);
            }
            let stored = keyed(stored_q.fetch_all(tx.conn()).await?)?;
            let recomputed = keyed(recomputed_q.fetch_all(tx.conn()).await?)?;
            let mut differing: Vec<&str> = vec![];
            let keys: std::collections::BTreeSet<_> =
                stored.keys().chain(recomputed.keys()).collect();
            for key in keys {
                let (s, r) = (stored.get(key), recomputed.get(key));
                if s == r {
                    continue;
                }
                if differing.last() != Some(&key.0.as_str()) {
                    differing.push(&key.0);
                }
                if check.differences.len() < MAX_REPORTED {
                    check.differences.push(TotalDifference {
                        customer_id: key.0.clone(),
                        scope: key.1.clone(),
                        stored: s.cloned(),
                        recomputed: r.cloned(),
                    });
                }
            }
            check.customers_differing += differing.len() as u64;
            if repair && !differing.is_empty() {
                let list = placeholders(1, differing.len());
                let delete_sql =
                    format!("DELETE FROM interaction_totals WHERE customer_id IN ({list})");
                let insert_sql = format!(
                    "INSERT INTO interaction_totals (customer_id, scope, type, currency, count, \
                     units, nanos, first_time, last_time) {}",
                    recompute(&list)
                );
                let mut d = sqlx::query(&delete_sql);
                let mut i = sqlx::query(&insert_sql);
                for id in &differing {
                    d = d.bind(*id);
                    i = i.bind(*id);
                }
                d.execute(tx.conn()).await?;
                i.execute(tx.conn()).await?;
            }
            tx.commit().await?;
        }
    }
}

/// Quintile boundaries as stored (`rfm_boundaries.boundaries`).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredBoundaries {
    recency: [i128; 4],
    frequency: [i128; 4],
    monetary: Option<[i128; 4]>,
}

/// Quintiles as stored: their currency, the JSON of the boundaries, how many
/// customers and when.
pub(super) fn boundaries(
    currency: String,
    json: &str,
    customers: i64,
    compute_time: i64,
) -> Result<RfmBoundaries> {
    let b: StoredBoundaries =
        serde_json::from_str(json).map_err(|_| corrupt("rfm boundaries", json))?;
    Ok(RfmBoundaries {
        recency: b.recency,
        frequency: b.frequency,
        monetary: b.monetary,
        currency,
        customers,
        compute_time: timestamp(compute_time)?,
    })
}

impl Store {
    /// The RFM quintiles of the organization `org_id`, if the job has computed them.
    pub async fn rfm_of(&self, org_id: &str) -> Result<Option<RfmBoundaries>> {
        let row: Option<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT currency, boundaries, customers, compute_time \
             FROM rfm_boundaries WHERE organization_id = $1",
        )
        .bind(org_id)
        .fetch_optional(self.reader())
        .await?;
        row.map(|(currency, json, customers, at)| boundaries(currency, &json, customers, at))
            .transpose()
    }
}

impl Tx {
    /// Stores organization `org_id`'s RFM quintiles (`None`: it has none, as no
    /// customer it sees bought).
    pub async fn save_rfm(&mut self, org_id: &str, b: Option<&RfmBoundaries>) -> Result<()> {
        let Some(b) = b else {
            sqlx::query("DELETE FROM rfm_boundaries WHERE organization_id = $1")
                .bind(org_id)
                .execute(self.conn())
                .await?;
            return Ok(());
        };
        let stored = serde_json::to_string(&StoredBoundaries {
            recency: b.recency,
            frequency: b.frequency,
            monetary: b.monetary,
        })
        .map_err(|e| crate::domain::error::Error::Internal(e.into()))?;
        sqlx::query(
            "INSERT INTO rfm_boundaries (organization_id, currency, boundaries, customers, \
             compute_time) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (organization_id) DO UPDATE \
             SET currency = excluded.currency, boundaries = excluded.boundaries, \
             customers = excluded.customers, compute_time = excluded.compute_time",
        )
        .bind(org_id)
        .bind(&b.currency)
        .bind(stored)
        .bind(b.customers)
        .bind(micros(b.compute_time))
        .execute(self.conn())
        .await?;
        Ok(())
    }
}
