//! The history of a customer record: who changed what, and when.

use jiff::Timestamp;
use sqlx::FromRow;

use crate::domain::customer::FieldChange;
use crate::domain::error::{Error, Result};
use crate::domain::{OrgRef, Slug};
use crate::store::{Page, Store, Tx, corrupt, micros, timestamp};

/// One entry of a customer's history.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub id: String,
    pub customer_id: String,
    pub time: Timestamp,
    /// The acting organization; `None` for the hub operator.
    pub org: Option<OrgRef>,
    pub key_id: String,
    pub action: &'static str,
    /// Only this organization may see the entry.
    pub private_to: Option<String>,
    pub changes: Vec<FieldChange>,
    pub note: String,
}

#[derive(FromRow)]
pub(super) struct HistoryRow {
    id: String,
    customer_id: String,
    time: i64,
    org_id: Option<String>,
    org_slug: Option<String>,
    key_id: String,
    action: String,
    private_to: Option<String>,
    changes: String,
    note: String,
}

pub(super) const HISTORY_ACTIONS: &[&str] = &[
    "created",
    "updated",
    "deleted",
    "undeleted",
    "merged",
    "erased",
    "overlay_updated",
];

impl TryFrom<HistoryRow> for HistoryEntry {
    type Error = Error;

    fn try_from(row: HistoryRow) -> Result<Self> {
        let org = match (row.org_id, row.org_slug) {
            (Some(id), Some(slug)) => Some(OrgRef {
                id,
                slug: Slug::parse(&slug).map_err(|_| corrupt("slug", &slug))?,
            }),
            _ => None,
        };
        Ok(HistoryEntry {
            action: HISTORY_ACTIONS
                .iter()
                .find(|a| **a == row.action)
                .ok_or_else(|| corrupt("history action", &row.action))?,
            changes: serde_json::from_str(&row.changes)
                .map_err(|e| corrupt("history changes", &e.to_string()))?,
            time: timestamp(row.time)?,
            id: row.id,
            customer_id: row.customer_id,
            org,
            key_id: row.key_id,
            private_to: row.private_to,
            note: row.note,
        })
    }
}

impl Store {
    /// History entries of a customer, newest first, before id `before`, without the
    /// entries private to organizations other than `viewer_id`.
    pub async fn customer_history(
        &self,
        customer_id: &str,
        viewer_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<HistoryEntry>> {
        let rows: Vec<HistoryRow> = sqlx::query_as(
            "SELECT h.id, h.customer_id, h.time, h.org_id, o.slug AS org_slug, h.key_id, h.action, \
             h.private_to, h.changes, h.note FROM customer_history h \
             LEFT JOIN organizations o ON o.id = h.org_id \
             WHERE h.customer_id = $1 AND ($2 = '' OR h.id < $2) \
             AND (h.private_to IS NULL OR h.private_to = $4) ORDER BY h.id DESC LIMIT $3",
        )
        .bind(customer_id)
        .bind(before.unwrap_or(""))
        .bind(limit as i64 + 1)
        .bind(viewer_id)
        .fetch_all(self.reader())
        .await?;
        let items = rows
            .into_iter()
            .map(HistoryEntry::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |e| e.id.clone()))
    }
}

impl Tx {
    pub async fn insert_history(&mut self, e: &HistoryEntry) -> Result<()> {
        let changes = serde_json::to_string(&e.changes)
            .map_err(|err| Error::Internal(anyhow::anyhow!("history changes: {err}")))?;
        sqlx::query(
            "INSERT INTO customer_history (id, customer_id, time, org_id, key_id, action, private_to, changes, note) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&e.id)
        .bind(&e.customer_id)
        .bind(micros(e.time))
        .bind(e.org.as_ref().map(|o| o.id.as_str()))
        .bind(&e.key_id)
        .bind(e.action)
        .bind(e.private_to.as_deref())
        .bind(changes)
        .bind(&e.note)
        .execute(self.conn())
        .await?;
        Ok(())
    }
}
