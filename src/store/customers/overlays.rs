//! Overlays: what an organization keeps about a customer it does not own.

use std::collections::BTreeMap;

use jiff::Timestamp;
use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use crate::domain::error::{Error, Result};
use crate::store::{Store, Tx, corrupt, micros, timestamp};

/// An organization's private fields on a customer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Overlay {
    pub account_number: String,
    pub status: String,
    pub notes: String,
    pub attributes: BTreeMap<String, String>,
    pub update_time: Option<Timestamp>,
    /// 0 while the organization has never written one.
    pub revision: i64,
}

#[derive(FromRow)]
pub(super) struct OverlayRow {
    account_number: String,
    status: String,
    notes: String,
    attributes: String,
    update_time: i64,
    revision: i64,
}

pub(super) async fn overlay_of<'c>(
    db: impl AnyExecutor<'c>,
    customer_id: &str,
    org_id: &str,
) -> Result<Overlay> {
    let row: Option<OverlayRow> = sqlx::query_as(
        "SELECT account_number, status, notes, attributes, update_time, revision \
         FROM customer_overlays WHERE customer_id = $1 AND org_id = $2",
    )
    .bind(customer_id)
    .bind(org_id)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(Overlay::default());
    };
    Ok(Overlay {
        account_number: row.account_number,
        status: row.status,
        notes: row.notes,
        attributes: serde_json::from_str(&row.attributes)
            .map_err(|e| corrupt("overlay attributes", &e.to_string()))?,
        update_time: Some(timestamp(row.update_time)?),
        revision: row.revision,
    })
}

impl Store {
    pub async fn overlay(&self, customer_id: &str, org_id: &str) -> Result<Overlay> {
        overlay_of(self.reader(), customer_id, org_id).await
    }
}

impl Tx {
    pub async fn overlay(&mut self, customer_id: &str, org_id: &str) -> Result<Overlay> {
        overlay_of(self.conn(), customer_id, org_id).await
    }

    /// Writes `org_id`'s overlay read at `overlay.revision` (0: none yet); false if it
    /// changed since.
    pub async fn write_overlay(
        &mut self,
        customer_id: &str,
        org_id: &str,
        overlay: &mut Overlay,
        now: Timestamp,
    ) -> Result<bool> {
        let attributes = serde_json::to_string(&overlay.attributes)
            .map_err(|e| Error::Internal(anyhow::anyhow!("overlay attributes: {e}")))?;
        let done = if overlay.revision == 0 {
            sqlx::query(
                "INSERT INTO customer_overlays (customer_id, org_id, account_number, status, notes, \
                 attributes, update_time, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, 1) \
                 ON CONFLICT (customer_id, org_id) DO NOTHING",
            )
        } else {
            sqlx::query(
                "UPDATE customer_overlays SET account_number = $3, status = $4, notes = $5, \
                 attributes = $6, update_time = $7, revision = revision + 1 \
                 WHERE customer_id = $1 AND org_id = $2 AND revision = $8",
            )
        }
        .bind(customer_id)
        .bind(org_id)
        .bind(&overlay.account_number)
        .bind(&overlay.status)
        .bind(&overlay.notes)
        .bind(attributes)
        .bind(micros(now))
        .bind(overlay.revision)
        .execute(self.conn())
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        overlay.revision += 1;
        overlay.update_time = Some(now);
        Ok(true)
    }
}
