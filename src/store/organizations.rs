//! Organizations.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use super::{Page, Store, Tx, corrupt, is_unique_violation, micros, timestamp};
use crate::domain::error::{Error, Result};
use crate::domain::{DisplayName, OrgRef, Organization, OrganizationKind, OrganizationState, Slug};

const COLUMNS: &str = "id, slug, display_name, kind, state, suspend_reason, reporting_currency, create_time, \
     update_time, revision";

#[derive(FromRow)]
struct OrganizationRow {
    id: String,
    slug: String,
    display_name: String,
    kind: String,
    state: String,
    suspend_reason: Option<String>,
    reporting_currency: String,
    create_time: i64,
    update_time: i64,
    revision: i64,
}

impl TryFrom<OrganizationRow> for Organization {
    type Error = Error;

    fn try_from(row: OrganizationRow) -> Result<Self> {
        let state = match row.state.as_str() {
            "active" => OrganizationState::Active,
            "suspended" => OrganizationState::Suspended {
                reason: row.suspend_reason.unwrap_or_default(),
            },
            other => return Err(corrupt("organization state", other)),
        };
        Ok(Organization {
            slug: Slug::parse(&row.slug).map_err(|_| corrupt("slug", &row.slug))?,
            display_name: DisplayName::parse(&row.display_name)
                .map_err(|_| corrupt("display name", &row.display_name))?,
            kind: OrganizationKind::parse(&row.kind)
                .map_err(|_| corrupt("organization kind", &row.kind))?,
            state,
            reporting_currency: row.reporting_currency,
            create_time: timestamp(row.create_time)?,
            update_time: timestamp(row.update_time)?,
            revision: row.revision,
            id: row.id,
        })
    }
}

fn state_columns(state: &OrganizationState) -> (&'static str, Option<&str>) {
    match state {
        OrganizationState::Active => ("active", None),
        OrganizationState::Suspended { reason } => ("suspended", Some(reason.as_str())),
    }
}

async fn by_slug<'c>(db: impl AnyExecutor<'c>, slug: &Slug) -> Result<Option<Organization>> {
    let sql = format!("SELECT {COLUMNS} FROM organizations WHERE slug = $1");
    let row: Option<OrganizationRow> = sqlx::query_as(&sql)
        .bind(slug.as_str())
        .fetch_optional(db)
        .await?;
    row.map(Organization::try_from).transpose()
}

impl Store {
    pub async fn organization(&self, slug: &Slug) -> Result<Option<Organization>> {
        by_slug(self.reader(), slug).await
    }

    /// Organizations in creation order, after the one with id `after`.
    pub async fn organizations(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Organization>> {
        let sql = format!("SELECT {COLUMNS} FROM organizations WHERE id > $1 ORDER BY id LIMIT $2");
        let rows: Vec<OrganizationRow> = sqlx::query_as(&sql)
            .bind(after.unwrap_or(""))
            .bind(limit as i64 + 1)
            .fetch_all(self.reader())
            .await?;
        let items = rows
            .into_iter()
            .map(Organization::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |o| o.id.clone()))
    }
}

impl Tx {
    pub async fn organization(&mut self, slug: &Slug) -> Result<Option<Organization>> {
        by_slug(self.conn(), slug).await
    }

    pub async fn org_ref(&mut self, id: &str) -> Result<OrgRef> {
        let slug: String = sqlx::query_scalar("SELECT slug FROM organizations WHERE id = $1")
            .bind(id)
            .fetch_one(self.conn())
            .await?;
        Ok(OrgRef {
            id: id.to_owned(),
            slug: Slug::parse(&slug).map_err(|_| corrupt("slug", &slug))?,
        })
    }

    /// Inserts a new organization; a taken slug is `ALREADY_EXISTS`.
    pub async fn insert_organization(&mut self, org: &Organization) -> Result<()> {
        let (state, reason) = state_columns(&org.state);
        let result = sqlx::query(
            "INSERT INTO organizations (id, slug, display_name, kind, state, suspend_reason, \
             create_time, update_time, revision, reporting_currency) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&org.id)
        .bind(org.slug.as_str())
        .bind(org.display_name.as_str())
        .bind(org.kind.as_str())
        .bind(state)
        .bind(reason)
        .bind(micros(org.create_time))
        .bind(micros(org.update_time))
        .bind(org.revision)
        .bind(&org.reporting_currency)
        .execute(self.conn())
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                reason: "SLUG_TAKEN",
                message: format!(
                    "an organization with slug {:?} already exists",
                    org.slug.as_str()
                ),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `org` (whose `revision` is the one it was read at) as revision + 1.
    /// Returns false if someone else changed it in between.
    pub async fn update_organization(&mut self, org: &mut Organization) -> Result<bool> {
        let (state, reason) = state_columns(&org.state);
        let done = sqlx::query(
            "UPDATE organizations SET display_name = $1, kind = $2, state = $3, suspend_reason = $4, \
             update_time = $5, revision = revision + 1, reporting_currency = $8 \
             WHERE id = $6 AND revision = $7",
        )
        .bind(org.display_name.as_str())
        .bind(org.kind.as_str())
        .bind(state)
        .bind(reason)
        .bind(micros(org.update_time))
        .bind(&org.id)
        .bind(org.revision)
        .bind(&org.reporting_currency)
        .execute(self.conn())
        .await?;
        if done.rows_affected() == 1 {
            org.revision += 1;
            // Suspending or reactivating changes what its keys may do.
            self.credentials_changed().await?;
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

impl Store {
    /// The slug of organization `id`, for the hub's own jobs.
    pub async fn organization_slug(&self, id: &str) -> Result<Option<Slug>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT slug FROM organizations WHERE id = $1")
            .bind(id)
            .fetch_optional(self.reader())
            .await?;
        row.map(|(s,)| Slug::parse(&s).map_err(|_| corrupt("slug", &s)))
            .transpose()
    }
}
