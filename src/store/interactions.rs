//! Interactions logged on customers.

use std::collections::HashMap;

use jiff::Timestamp;
use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use super::metrics::boundaries;
use super::{Page, Store, Tx, corrupt, micros, placeholders, timestamp};
use crate::domain::error::{Error, Result};
use crate::domain::filter::Activity;
use crate::domain::interaction::{
    Direction, Interaction, InteractionType, InteractionVisibility, Money,
};
use crate::domain::metrics::{SHARED, Total};
use crate::domain::{OrgRef, Slug};

const SELECT: &str = "SELECT i.id, i.customer_id, i.org_id, o.slug AS org_slug, i.type, i.occur_time, \
     i.member_id, i.channel, i.direction, i.summary, i.body, i.currency, i.amount_units, \
     i.amount_nanos, i.attributes, i.visibility, i.create_time \
     FROM interactions i JOIN organizations o ON o.id = i.org_id";

#[derive(FromRow)]
struct InteractionRow {
    id: String,
    customer_id: String,
    org_id: String,
    org_slug: String,
    #[sqlx(rename = "type")]
    kind: String,
    occur_time: i64,
    member_id: Option<String>,
    channel: String,
    direction: String,
    summary: String,
    body: String,
    currency: Option<String>,
    amount_units: Option<i64>,
    amount_nanos: Option<i64>,
    attributes: String,
    visibility: String,
    create_time: i64,
}

impl TryFrom<InteractionRow> for Interaction {
    type Error = Error;

    fn try_from(row: InteractionRow) -> Result<Self> {
        let amount = match (row.currency, row.amount_units) {
            (Some(currency), Some(units)) => Some(Money {
                currency,
                units,
                nanos: row.amount_nanos.unwrap_or(0) as i32,
            }),
            _ => None,
        };
        Ok(Interaction {
            organization: OrgRef {
                id: row.org_id,
                slug: Slug::parse(&row.org_slug).map_err(|_| corrupt("slug", &row.org_slug))?,
            },
            kind: InteractionType::parse(&row.kind)
                .ok_or_else(|| corrupt("interaction type", &row.kind))?,
            occur_time: timestamp(row.occur_time)?,
            direction: Direction::parse(&row.direction)
                .ok_or_else(|| corrupt("direction", &row.direction))?,
            attributes: serde_json::from_str(&row.attributes)
                .map_err(|e| corrupt("interaction attributes", &e.to_string()))?,
            visibility: InteractionVisibility::parse(&row.visibility)
                .ok_or_else(|| corrupt("visibility", &row.visibility))?,
            create_time: timestamp(row.create_time)?,
            amount,
            id: row.id,
            customer_id: row.customer_id,
            member_id: row.member_id,
            channel: row.channel,
            summary: row.summary,
            body: row.body,
        })
    }
}

/// Which of a customer's interactions to list.
#[derive(Debug, Default, Clone)]
pub struct InteractionFilter {
    pub kind: Option<InteractionType>,
    pub visibility: Option<InteractionVisibility>,
    /// Occurred at or after.
    pub from: Option<Timestamp>,
    /// Occurred before.
    pub until: Option<Timestamp>,
}

/// What organization `org_id` knows of customer `customer_id` beyond the record
/// ([`Activity`]): the time of the last interaction of each type it sees (its own and
/// the shared ones), the open cases it takes part in, its overlay's status and account
/// number. One statement.
pub(crate) async fn activity<'c>(
    db: impl AnyExecutor<'c>,
    customer_id: &str,
    org_id: &str,
) -> Result<Activity> {
    let sql = facts_sql("$2", "$1");
    let rows: Vec<FactRow> = sqlx::query_as(&sql)
        .bind(customer_id)
        .bind(org_id)
        .fetch_all(db)
        .await?;
    let mut found = Activity::default();
    for row in rows {
        row.add_to(&mut found)?;
    }
    Ok(found)
}

/// The facts of [`activity`] of the `customers` (placeholders) as organization `org`
/// (a placeholder, or `c.owner_id`: each record's owner) knows them, as rows
/// `(customer_id, what, name, n, s)`: one per interaction type, one count of open
/// cases, one overlay.
fn facts_sql(org: &str, customers: &str) -> String {
    let zero = "CAST(0 AS BIGINT)";
    format!(
        "SELECT f.customer_id, f.what, f.name, f.n, f.s, f.u, f.v, f.a, f.b FROM ( \
         SELECT t.customer_id, 'total' AS what, t.type AS name, t.count AS n, t.currency AS s, \
         t.units AS u, t.nanos AS v, t.first_time AS a, t.last_time AS b \
         FROM interaction_totals t JOIN customers c ON c.id = t.customer_id \
         WHERE t.customer_id IN ({customers}) AND t.scope IN ('{SHARED}', {org}) \
         UNION ALL SELECT k.customer_id, 'cases', '', COUNT(*), '', {zero}, {zero}, {zero}, \
         {zero} FROM cases k \
         JOIN customers c ON c.id = k.customer_id JOIN case_participants cp \
         ON cp.case_id = k.id AND cp.organization_id = {org} \
         WHERE k.customer_id IN ({customers}) AND k.closed = 0 GROUP BY k.customer_id \
         UNION ALL SELECT o.customer_id, 'overlay', o.account_number, {zero}, o.status, {zero}, \
         {zero}, {zero}, {zero} \
         FROM customer_overlays o JOIN customers c ON c.id = o.customer_id \
         WHERE o.customer_id IN ({customers}) AND o.org_id = {org} \
         UNION ALL SELECT c.id, 'rfm', b.currency, b.customers, b.boundaries, {zero}, {zero}, \
         b.compute_time, {zero} FROM customers c \
         JOIN rfm_boundaries b ON b.organization_id = {org} WHERE c.id IN ({customers})) f"
    )
}

#[derive(sqlx::FromRow)]
struct FactRow {
    customer_id: String,
    what: String,
    name: String,
    n: i64,
    s: String,
    u: i64,
    v: i64,
    a: i64,
    b: i64,
}

impl FactRow {
    fn add_to(self, a: &mut Activity) -> Result<()> {
        match self.what.as_str() {
            "total" => {
                let kind = InteractionType::parse(&self.name)
                    .ok_or_else(|| corrupt("interaction type", &self.name))?;
                a.totals.push(Total {
                    kind,
                    currency: (!self.s.is_empty()).then_some(self.s),
                    count: self.n,
                    amount: i128::from(self.u) * 1_000_000_000 + i128::from(self.v),
                    first: timestamp(self.a)?,
                    last: timestamp(self.b)?,
                });
            }
            "cases" => a.open_cases = self.n,
            "rfm" => a.rfm = Some(boundaries(self.name, &self.s, self.n, self.a)?),
            _ => {
                a.status = self.s;
                a.account_number = self.name;
            }
        }
        Ok(())
    }
}

impl Store {
    /// [`activity`] of each of `customer_ids` in one statement, as organization
    /// `viewer` knows them, or (`None`) as each customer's owner does. A customer
    /// nothing is known of has an empty [`Activity`].
    pub async fn activities(
        &self,
        customer_ids: &[&str],
        viewer: Option<&str>,
    ) -> Result<HashMap<String, Activity>> {
        let mut found: HashMap<String, Activity> = customer_ids
            .iter()
            .map(|id| (id.to_string(), Activity::default()))
            .collect();
        if customer_ids.is_empty() {
            return Ok(found);
        }
        let org = if viewer.is_some() { "$1" } else { "c.owner_id" };
        let sql = facts_sql(org, &placeholders(2, customer_ids.len()));
        let mut q = sqlx::query_as::<_, FactRow>(&sql).bind(viewer.unwrap_or(""));
        for id in customer_ids {
            q = q.bind(*id);
        }
        for row in q.fetch_all(self.reader()).await? {
            let id = row.customer_id.clone();
            row.add_to(found.entry(id).or_default())?;
        }
        Ok(found)
    }

    pub async fn interaction(&self, customer_id: &str, id: &str) -> Result<Option<Interaction>> {
        let sql = format!("{SELECT} WHERE i.customer_id = $1 AND i.id = $2");
        let row: Option<InteractionRow> = sqlx::query_as(&sql)
            .bind(customer_id)
            .bind(id)
            .fetch_optional(self.reader())
            .await?;
        row.map(Interaction::try_from).transpose()
    }

    /// The interactions of a customer `viewer_id` may see, newest first, after the
    /// cursor `(occur_time, id)` of the previous page.
    pub async fn interactions(
        &self,
        customer_id: &str,
        viewer_id: &str,
        filter: &InteractionFilter,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Page<Interaction>> {
        let sql = format!(
            "{SELECT} WHERE i.customer_id = $1 AND (i.visibility = 'shared' OR i.org_id = $2) \
             AND ($3 = '' OR i.type = $3) AND ($4 = '' OR i.visibility = $4) \
             AND i.occur_time >= $5 AND i.occur_time < $6 \
             AND (i.occur_time < $7 OR (i.occur_time = $7 AND i.id < $8)) \
             ORDER BY i.occur_time DESC, i.id DESC LIMIT $9"
        );
        let (after_time, after_id) = after.unwrap_or((i64::MAX, ""));
        let rows: Vec<InteractionRow> = sqlx::query_as(&sql)
            .bind(customer_id)
            .bind(viewer_id)
            .bind(filter.kind.map(InteractionType::as_str).unwrap_or(""))
            .bind(
                filter
                    .visibility
                    .map(InteractionVisibility::as_str)
                    .unwrap_or(""),
            )
            .bind(filter.from.map(micros).unwrap_or(i64::MIN))
            .bind(filter.until.map(micros).unwrap_or(i64::MAX))
            .bind(after_time)
            .bind(if after.is_some() {
                after_id
            } else {
                "\u{10FFFF}"
            })
            .bind(limit as i64 + 1)
            .fetch_all(self.reader())
            .await?;
        let items = rows
            .into_iter()
            .map(Interaction::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |i| {
            format!("{}:{}", micros(i.occur_time), i.id)
        }))
    }
}

/// The row an interactions page continues after, as [`Store::interactions`] wrote it
/// in `next_after` (`{occur_time}:{id}`); `None` if it is not one.
pub fn interaction_cursor(raw: &str) -> Option<(i64, String)> {
    let (time, id) = raw.split_once(':')?;
    Some((time.parse().ok()?, id.to_owned()))
}

impl Tx {
    pub async fn insert_interaction(&mut self, i: &Interaction) -> Result<()> {
        let attributes = serde_json::to_string(&i.attributes)
            .map_err(|e| Error::Internal(anyhow::anyhow!("interaction attributes: {e}")))?;
        sqlx::query(
            "INSERT INTO interactions (id, customer_id, org_id, type, occur_time, member_id, channel, \
             direction, summary, body, currency, amount_units, amount_nanos, attributes, visibility, \
             create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&i.id)
        .bind(&i.customer_id)
        .bind(&i.organization.id)
        .bind(i.kind.as_str())
        .bind(micros(i.occur_time))
        .bind(i.member_id.as_deref())
        .bind(&i.channel)
        .bind(i.direction.as_str())
        .bind(&i.summary)
        .bind(&i.body)
        .bind(i.amount.as_ref().map(|m| m.currency.clone()))
        .bind(i.amount.as_ref().map(|m| m.units))
        .bind(i.amount.as_ref().map(|m| i64::from(m.nanos)))
        .bind(attributes)
        .bind(i.visibility.as_str())
        .bind(micros(i.create_time))
        .execute(self.conn())
        .await?;
        self.add_to_totals(i).await
    }
}
