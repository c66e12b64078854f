//! Field presets, and the grants made through them.

use jiff::Timestamp;
use sqlx::FromRow;

use super::sharing::org_ref;
use super::{OwnedRows, Page, Store, Tx, micros, parse_fields, timestamp};
use crate::domain::OrgRef;
use crate::domain::customer::FieldSet;
use crate::domain::error::Result;

/// A named set of fields an organization's grants share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPreset {
    pub id: String,
    pub organization_id: String,
    pub display_name: String,
    pub fields: FieldSet,
    pub revision: i64,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
}

#[derive(FromRow)]
struct PresetRow {
    id: String,
    organization_id: String,
    display_name: String,
    fields: String,
    revision: i64,
    create_time: i64,
    update_time: i64,
}

impl TryFrom<PresetRow> for FieldPreset {
    type Error = crate::domain::error::Error;

    fn try_from(r: PresetRow) -> Result<Self> {
        Ok(FieldPreset {
            fields: parse_fields(&r.fields)?,
            create_time: timestamp(r.create_time)?,
            update_time: timestamp(r.update_time)?,
            id: r.id,
            organization_id: r.organization_id,
            display_name: r.display_name,
            revision: r.revision,
        })
    }
}

const PRESETS: OwnedRows = OwnedRows {
    select: "SELECT id, organization_id, display_name, fields, revision, create_time, \
             update_time FROM field_presets",
    live: "",
};

impl Store {
    /// Preset `id` of organization `org_id`.
    pub async fn field_preset(&self, org_id: &str, id: &str) -> Result<Option<FieldPreset>> {
        PRESETS
            .one::<PresetRow, _>(self.reader(), (org_id, id), "")
            .await
    }

    /// A page of organization `org_id`'s presets, by id, after `after`.
    pub async fn field_presets(
        &self,
        org_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<FieldPreset>> {
        let id = |p: &FieldPreset| p.id.clone();
        PRESETS
            .page::<PresetRow, _>(self.reader(), org_id, (after, limit), id)
            .await
    }
}

impl Tx {
    /// Preset `id` of organization `org_id`, read in this transaction and locked to
    /// its end on PostgreSQL: shared by a grant made through it (`change` false), so
    /// a concurrent change of its fields waits and then rewrites that grant too;
    /// exclusive for a change or a delete (`change` true). SQLite's write
    /// transactions run one at a time already.
    pub async fn field_preset(
        &mut self,
        org_id: &str,
        id: &str,
        change: bool,
    ) -> Result<Option<FieldPreset>> {
        let lock = super::lock_clause(self.dialect, change);
        PRESETS
            .one::<PresetRow, _>(self.conn(), (org_id, id), lock)
            .await
    }

    pub async fn insert_field_preset(&mut self, p: &FieldPreset) -> Result<()> {
        sqlx::query(
            "INSERT INTO field_presets (id, organization_id, display_name, fields, revision, \
             create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&p.id)
        .bind(&p.organization_id)
        .bind(&p.display_name)
        .bind(p.fields.to_csv())
        .bind(p.revision)
        .bind(micros(p.create_time))
        .bind(micros(p.update_time))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Writes `p` if it is still at `p.revision - 1`, and gives every live grant made
    /// through it the preset's fields; false if another change came first.
    pub async fn update_field_preset(&mut self, p: &FieldPreset) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE field_presets SET display_name = $1, fields = $2, revision = $3, \
             update_time = $4 WHERE id = $5 AND revision = $6",
        )
        .bind(&p.display_name)
        .bind(p.fields.to_csv())
        .bind(p.revision)
        .bind(micros(p.update_time))
        .bind(&p.id)
        .bind(p.revision - 1)
        .execute(self.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        for table in ["customer_grants", "sharing_rules"] {
            sqlx::query(&format!(
                "UPDATE {table} SET fields = $1 \
                 WHERE preset_id = $2 AND revoke_time IS NULL AND fields <> $1"
            ))
            .bind(p.fields.to_csv())
            .bind(&p.id)
            .execute(self.conn())
            .await?;
        }
        Ok(true)
    }

    /// The organizations holding live grants made through preset `id` under an
    /// ACTIVE partnership (a suspended partner hears nothing of the owner's), or
    /// reached through one by a live rule made through it, by id.
    pub async fn field_preset_grantees(&mut self, id: &str) -> Result<Vec<OrgRef>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT o.id, o.slug FROM organizations o WHERE o.id IN (SELECT g.grantee_id \
             FROM customer_grants g JOIN partnerships p ON p.id = g.partnership_id \
             WHERE g.preset_id = $1 AND g.revoke_time IS NULL AND p.state = 'active' \
             UNION SELECT CASE WHEN p.proposer_id = r.owner_id THEN p.recipient_id \
             ELSE p.proposer_id END FROM sharing_rules r JOIN partnerships p \
             ON (p.proposer_id = r.owner_id OR p.recipient_id = r.owner_id) \
             AND (p.proposer_id = r.grantee_id OR p.recipient_id = r.grantee_id \
             OR (p.relationship = r.relationship AND p.proposer_id = r.owner_id)) \
             WHERE r.preset_id = $1 AND r.revoke_time IS NULL \
             AND (r.expire_time IS NULL OR r.expire_time > $2) AND p.state = 'active') \
             ORDER BY o.id",
        )
        .bind(id)
        .bind(micros(crate::domain::now()))
        .fetch_all(self.conn())
        .await?;
        rows.into_iter()
            .map(|(id, slug)| org_ref(id, &slug))
            .collect()
    }

    /// Deletes preset `id` unless a live grant or rule uses it; false if one does.
    pub async fn delete_field_preset(&mut self, id: &str) -> Result<bool> {
        let in_use: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM customer_grants WHERE preset_id = $1 AND revoke_time IS NULL \
             UNION ALL SELECT 1 FROM sharing_rules WHERE preset_id = $1 AND revoke_time IS NULL \
             LIMIT 1",
        )
        .bind(id)
        .fetch_optional(self.conn())
        .await?;
        if in_use.is_some() {
            return Ok(false);
        }
        // Revoked rules keep their history but no longer name the preset.
        sqlx::query("UPDATE sharing_rules SET preset_id = NULL WHERE preset_id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        sqlx::query("DELETE FROM field_presets WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(true)
    }
}
