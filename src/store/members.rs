//! Members of organizations.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use super::{Page, Store, Tx, corrupt, is_unique_violation, micros, timestamp};
use crate::domain::error::{Error, Result};
use crate::domain::{DisplayName, EmailAddress, Member, MemberRole, TimeZoneName};

const COLUMNS: &str = "id, organization_id, display_name, email, role, time_zone, create_time, \
     update_time, revision, email_bounce, email_bounce_time";

#[derive(FromRow)]
struct MemberRow {
    id: String,
    organization_id: String,
    display_name: String,
    email: String,
    role: String,
    time_zone: String,
    create_time: i64,
    update_time: i64,
    revision: i64,
    email_bounce: String,
    email_bounce_time: Option<i64>,
}

impl TryFrom<MemberRow> for Member {
    type Error = Error;

    fn try_from(row: MemberRow) -> Result<Self> {
        Ok(Member {
            display_name: DisplayName::parse(&row.display_name)
                .map_err(|_| corrupt("display name", &row.display_name))?,
            email: EmailAddress::parse(&row.email).map_err(|_| corrupt("email", &row.email))?,
            role: MemberRole::parse(&row.role).ok_or_else(|| corrupt("member role", &row.role))?,
            time_zone: TimeZoneName::parse(&row.time_zone)
                .map_err(|_| corrupt("time zone", &row.time_zone))?,
            create_time: timestamp(row.create_time)?,
            update_time: timestamp(row.update_time)?,
            revision: row.revision,
            email_bounce: row.email_bounce,
            email_bounce_time: row.email_bounce_time.map(timestamp).transpose()?,
            id: row.id,
            organization_id: row.organization_id,
        })
    }
}

fn email_taken(email: &EmailAddress) -> Error {
    Error::AlreadyExists {
        reason: "MEMBER_EMAIL_TAKEN",
        message: format!(
            "the organization already has a member with email {:?}",
            email.as_str()
        ),
    }
}

async fn by_id<'c>(db: impl AnyExecutor<'c>, org_id: &str, id: &str) -> Result<Option<Member>> {
    let sql = format!("SELECT {COLUMNS} FROM members WHERE organization_id = $1 AND id = $2");
    let row: Option<MemberRow> = sqlx::query_as(&sql)
        .bind(org_id)
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(Member::try_from).transpose()
}

impl Store {
    pub async fn member(&self, org_id: &str, id: &str) -> Result<Option<Member>> {
        by_id(self.reader(), org_id, id).await
    }

    pub async fn members(
        &self,
        org_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Member>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM members WHERE organization_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows: Vec<MemberRow> = sqlx::query_as(&sql)
            .bind(org_id)
            .bind(after.unwrap_or(""))
            .bind(limit as i64 + 1)
            .fetch_all(self.reader())
            .await?;
        let items = rows
            .into_iter()
            .map(Member::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |m| m.id.clone()))
    }
}

impl Tx {
    pub async fn member(&mut self, org_id: &str, id: &str) -> Result<Option<Member>> {
        by_id(self.conn(), org_id, id).await
    }

    pub async fn insert_member(&mut self, m: &Member) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO members (id, organization_id, display_name, email, role, time_zone, \
             create_time, update_time, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&m.id)
        .bind(&m.organization_id)
        .bind(m.display_name.as_str())
        .bind(m.email.as_str())
        .bind(m.role.as_str())
        .bind(m.time_zone.as_str())
        .bind(micros(m.create_time))
        .bind(micros(m.update_time))
        .bind(m.revision)
        .execute(self.conn())
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(email_taken(&m.email)),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `m` (read at `m.revision`) as the next revision; false if it changed since.
    pub async fn update_member(&mut self, m: &mut Member) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE members SET display_name = $1, email = $2, role = $3, time_zone = $4, update_time = $5, \
             revision = revision + 1 WHERE organization_id = $6 AND id = $7 AND revision = $8",
        )
        .bind(m.display_name.as_str())
        .bind(m.email.as_str())
        .bind(m.role.as_str())
        .bind(m.time_zone.as_str())
        .bind(micros(m.update_time))
        .bind(&m.organization_id)
        .bind(&m.id)
        .bind(m.revision)
        .execute(self.conn())
        .await;
        match result {
            Ok(done) if done.rows_affected() == 1 => {
                m.revision += 1;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if is_unique_violation(&e) => Err(email_taken(&m.email)),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the member if it is still at `revision`; false if it changed since.
    pub async fn delete_member(&mut self, org_id: &str, id: &str, revision: i64) -> Result<bool> {
        self.forget_member_email(id).await?;
        let done = sqlx::query(
            "DELETE FROM members WHERE organization_id = $1 AND id = $2 AND revision = $3",
        )
        .bind(org_id)
        .bind(id)
        .bind(revision)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
