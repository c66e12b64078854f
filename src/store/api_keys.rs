//! API keys, stored by the hash of their secret.

use jiff::Timestamp;
use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use super::{Page, Store, Tx, corrupt, micros, timestamp};
use crate::domain::error::{Error, Result};
use crate::domain::{ApiKey, KeyHash, OrgRef, Principal, Scopes, Slug};

const SELECT: &str = "SELECT k.id, k.organization_id, o.slug, o.state AS organization_state, k.display_name, \
     k.scopes, k.prefix, k.create_time, k.expire_time, k.revoke_time \
     FROM api_keys k LEFT JOIN organizations o ON o.id = k.organization_id";

#[derive(FromRow)]
struct ApiKeyRow {
    id: String,
    organization_id: Option<String>,
    slug: Option<String>,
    organization_state: Option<String>,
    display_name: String,
    scopes: String,
    prefix: String,
    create_time: i64,
    expire_time: Option<i64>,
    revoke_time: Option<i64>,
}

/// A key found by its hash, with what authentication needs to know of its owner.
pub struct KeyRecord {
    pub key: ApiKey,
    /// False if the owning organization is suspended (always true for the operator).
    pub owner_active: bool,
}

impl TryFrom<ApiKeyRow> for KeyRecord {
    type Error = Error;

    fn try_from(row: ApiKeyRow) -> Result<Self> {
        let principal = match (row.organization_id, row.slug) {
            (None, _) => Principal::Operator,
            (Some(id), Some(slug)) => Principal::Organization(OrgRef {
                id,
                slug: Slug::parse(&slug).map_err(|_| corrupt("slug", &slug))?,
            }),
            (Some(id), None) => return Err(corrupt("organization of key", &id)),
        };
        let key = ApiKey {
            principal,
            display_name: row.display_name,
            scopes: Scopes::from_csv(&row.scopes).ok_or_else(|| corrupt("scopes", &row.scopes))?,
            prefix: row.prefix,
            create_time: timestamp(row.create_time)?,
            expire_time: row.expire_time.map(timestamp).transpose()?,
            revoke_time: row.revoke_time.map(timestamp).transpose()?,
            id: row.id,
        };
        Ok(KeyRecord {
            key,
            owner_active: row.organization_state.is_none_or(|s| s == "active"),
        })
    }
}

fn owner_id(principal: &Principal) -> Option<&str> {
    match principal {
        Principal::Operator => None,
        Principal::Organization(org) => Some(&org.id),
    }
}

async fn by_id<'c>(
    db: impl AnyExecutor<'c>,
    owner: &Principal,
    id: &str,
) -> Result<Option<ApiKey>> {
    // `IS NOT DISTINCT FROM` is not SQLite; `COALESCE` to '' matches the operator's
    // NULL owner the same way on both.
    let sql = format!("{SELECT} WHERE k.id = $1 AND COALESCE(k.organization_id, '') = $2");
    let row: Option<ApiKeyRow> = sqlx::query_as(&sql)
        .bind(id)
        .bind(owner_id(owner).unwrap_or(""))
        .fetch_optional(db)
        .await?;
    row.map(|r| KeyRecord::try_from(r).map(|rec| rec.key))
        .transpose()
}

impl Store {
    pub async fn api_key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>> {
        let sql = format!("{SELECT} WHERE k.key_hash = $1");
        let row: Option<ApiKeyRow> = sqlx::query_as(&sql)
            .bind(&hash.0)
            .fetch_optional(self.reader())
            .await?;
        row.map(KeyRecord::try_from).transpose()
    }

    pub async fn api_key(&self, owner: &Principal, id: &str) -> Result<Option<ApiKey>> {
        by_id(self.reader(), owner, id).await
    }

    /// Keys of `owner` in creation order, after the one with id `after`.
    pub async fn api_keys(
        &self,
        owner: &Principal,
        show_revoked: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<ApiKey>> {
        let sql = format!(
            "{SELECT} WHERE COALESCE(k.organization_id, '') = $1 AND k.id > $2 \
             AND ($3 OR k.revoke_time IS NULL) ORDER BY k.id LIMIT $4"
        );
        let rows: Vec<ApiKeyRow> = sqlx::query_as(&sql)
            .bind(owner_id(owner).unwrap_or(""))
            .bind(after.unwrap_or(""))
            .bind(show_revoked)
            .bind(limit as i64 + 1)
            .fetch_all(self.reader())
            .await?;
        let items = rows
            .into_iter()
            .map(|r| KeyRecord::try_from(r).map(|rec| rec.key))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |k| k.id.clone()))
    }

    /// True if the operator has a key that is neither revoked nor expired.
    pub async fn operator_has_live_key(&self, now: Timestamp) -> Result<bool> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE organization_id IS NULL AND revoke_time IS NULL \
             AND (expire_time IS NULL OR expire_time > $1)",
        )
        .bind(micros(now))
        .fetch_one(self.reader())
        .await?;
        Ok(count > 0)
    }
}

impl Tx {
    pub async fn insert_api_key(&mut self, key: &ApiKey, hash: &KeyHash) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, organization_id, display_name, scopes, prefix, key_hash, \
             create_time, expire_time, revoke_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&key.id)
        .bind(owner_id(&key.principal))
        .bind(&key.display_name)
        .bind(key.scopes.to_csv())
        .bind(&key.prefix)
        .bind(&hash.0)
        .bind(micros(key.create_time))
        .bind(key.expire_time.map(micros))
        .bind(key.revoke_time.map(micros))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    pub async fn api_key(&mut self, owner: &Principal, id: &str) -> Result<Option<ApiKey>> {
        by_id(self.conn(), owner, id).await
    }

    pub async fn revoke_api_key(&mut self, id: &str, now: Timestamp) -> Result<()> {
        sqlx::query("UPDATE api_keys SET revoke_time = $1 WHERE id = $2 AND revoke_time IS NULL")
            .bind(micros(now))
            .bind(id)
            .execute(self.conn())
            .await?;
        self.credentials_changed().await
    }
}
