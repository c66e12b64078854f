//! Partnerships between organizations.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use super::{Page, Store, Tx, corrupt, is_unique_violation, micros, timestamp};
use crate::domain::calendar::Zone;
use crate::domain::error::{Error, Result};
use crate::domain::{OrgRef, Partnership, PartnershipState, Reason, Relationship, Slug};

const SELECT: &str = "SELECT p.id, p.proposer_id, po.slug AS proposer_slug, p.recipient_id, \
     ro.slug AS recipient_slug, p.relationship, p.message, p.state, p.state_changed_by, \
     co.slug AS changed_by_slug, p.state_reason, p.reporting_time_zone, p.create_time, p.update_time, p.revision \
     FROM partnerships p \
     JOIN organizations po ON po.id = p.proposer_id \
     JOIN organizations ro ON ro.id = p.recipient_id \
     JOIN organizations co ON co.id = p.state_changed_by";

#[derive(FromRow)]
struct PartnershipRow {
    id: String,
    proposer_id: String,
    proposer_slug: String,
    recipient_id: String,
    recipient_slug: String,
    relationship: String,
    message: String,
    state: String,
    state_changed_by: String,
    changed_by_slug: String,
    state_reason: String,
    reporting_time_zone: String,
    create_time: i64,
    update_time: i64,
    revision: i64,
}

fn org_ref(id: String, slug: &str) -> Result<OrgRef> {
    Ok(OrgRef {
        id,
        slug: Slug::parse(slug).map_err(|_| corrupt("slug", slug))?,
    })
}

impl TryFrom<PartnershipRow> for Partnership {
    type Error = Error;

    fn try_from(row: PartnershipRow) -> Result<Self> {
        let changed_by = org_ref(row.state_changed_by, &row.changed_by_slug)?;
        let reason =
            Reason::parse(&row.state_reason).map_err(|_| corrupt("reason", &row.state_reason))?;
        let state = match row.state.as_str() {
            "proposed" => PartnershipState::Proposed,
            "active" => PartnershipState::Active,
            "declined" => PartnershipState::Declined { reason },
            "suspended" => PartnershipState::Suspended {
                by: changed_by.clone(),
                reason,
            },
            "ended" => PartnershipState::Ended {
                by: changed_by.clone(),
                reason,
            },
            other => return Err(corrupt("partnership state", other)),
        };
        Ok(Partnership {
            proposer: org_ref(row.proposer_id, &row.proposer_slug)?,
            recipient: org_ref(row.recipient_id, &row.recipient_slug)?,
            relationship: Relationship::parse(&row.relationship)
                .ok_or_else(|| corrupt("relationship", &row.relationship))?,
            message: Reason::parse(&row.message).map_err(|_| corrupt("message", &row.message))?,
            state,
            state_changed_by: changed_by,
            reporting_time_zone: Zone::parse(&row.reporting_time_zone)
                .map_err(|_| corrupt("time zone", &row.reporting_time_zone))?,
            create_time: timestamp(row.create_time)?,
            update_time: timestamp(row.update_time)?,
            revision: row.revision,
            id: row.id,
        })
    }
}

fn state_reason(state: &PartnershipState) -> &str {
    match state {
        PartnershipState::Proposed | PartnershipState::Active => "",
        PartnershipState::Declined { reason }
        | PartnershipState::Suspended { reason, .. }
        | PartnershipState::Ended { reason, .. } => reason.as_str(),
    }
}

/// Which of an organization's partnerships to list.
#[derive(Debug, Default, Clone, Copy)]
pub struct PartnershipFilter {
    /// Only partnerships in this state (its `PartnershipState::name`).
    pub state: Option<&'static str>,
}

/// The partnership with `id` if `org_id` is one of its two parties.
async fn of_party<'c>(
    db: impl AnyExecutor<'c>,
    org_id: &str,
    id: &str,
) -> Result<Option<Partnership>> {
    let sql = format!("{SELECT} WHERE p.id = $1 AND (p.proposer_id = $2 OR p.recipient_id = $2)");
    let row: Option<PartnershipRow> = sqlx::query_as(&sql)
        .bind(id)
        .bind(org_id)
        .fetch_optional(db)
        .await?;
    row.map(Partnership::try_from).transpose()
}

impl Store {
    pub async fn partnership(&self, org_id: &str, id: &str) -> Result<Option<Partnership>> {
        of_party(self.reader(), org_id, id).await
    }

    /// Partnership `id`, for the hub's own jobs (no party to check).
    pub async fn partnership_by_id(&self, id: &str) -> Result<Option<Partnership>> {
        let sql = format!("{SELECT} WHERE p.id = $1");
        let row: Option<PartnershipRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(self.reader())
            .await?;
        row.map(Partnership::try_from).transpose()
    }

    /// `org_id`'s partnerships (either side) in creation order, after id `after`.
    pub async fn partnerships(
        &self,
        org_id: &str,
        filter: PartnershipFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Partnership>> {
        let sql = format!(
            "{SELECT} WHERE (p.proposer_id = $1 OR p.recipient_id = $1) AND p.id > $2 \
             AND ($3 = '' OR p.state = $3) ORDER BY p.id LIMIT $4"
        );
        let rows: Vec<PartnershipRow> = sqlx::query_as(&sql)
            .bind(org_id)
            .bind(after.unwrap_or(""))
            .bind(filter.state.unwrap_or(""))
            .bind(limit as i64 + 1)
            .fetch_all(self.reader())
            .await?;
        let items = rows
            .into_iter()
            .map(Partnership::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |p| p.id.clone()))
    }
}

impl Tx {
    pub async fn partnership(&mut self, org_id: &str, id: &str) -> Result<Option<Partnership>> {
        of_party(self.conn(), org_id, id).await
    }

    /// Inserts a new proposal; a live one for the same direction and relationship is
    /// `ALREADY_EXISTS`.
    pub async fn insert_partnership(&mut self, p: &Partnership) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO partnerships (id, proposer_id, recipient_id, relationship, message, state, \
             state_changed_by, state_reason, reporting_time_zone, create_time, update_time, \
             revision) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&p.id)
        .bind(&p.proposer.id)
        .bind(&p.recipient.id)
        .bind(p.relationship.as_str())
        .bind(p.message.as_str())
        .bind(p.state.name())
        .bind(&p.state_changed_by.id)
        .bind(state_reason(&p.state))
        .bind(&p.reporting_time_zone.name)
        .bind(micros(p.create_time))
        .bind(micros(p.update_time))
        .bind(p.revision)
        .execute(self.conn())
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                reason: "PARTNERSHIP_EXISTS",
                message: format!(
                    "{} already has a live partnership in which it {} {}",
                    p.proposer.slug,
                    p.relationship.as_str().replace('_', " "),
                    p.recipient.slug
                ),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the state of `p` (read at `p.revision`) as the next revision; false if
    /// it changed since.
    pub async fn update_partnership_state(&mut self, p: &mut Partnership) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE partnerships SET state = $1, state_changed_by = $2, state_reason = $3, update_time = $4, \
             revision = revision + 1 WHERE id = $5 AND revision = $6",
        )
        .bind(p.state.name())
        .bind(&p.state_changed_by.id)
        .bind(state_reason(&p.state))
        .bind(micros(p.update_time))
        .bind(&p.id)
        .bind(p.revision)
        .execute(self.conn())
        .await?;
        if done.rows_affected() == 1 {
            p.revision += 1;
            // Open streams look again at what they may carry (see `events`).
            self.credentials_changed().await?;
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

impl Tx {
    /// Writes the settings of `p` (read at `p.revision`) as the next revision; false if
    /// it changed since.
    pub async fn update_partnership_settings(&mut self, p: &mut Partnership) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE partnerships SET reporting_time_zone = $1, update_time = $2, \
             revision = revision + 1 WHERE id = $3 AND revision = $4",
        )
        .bind(&p.reporting_time_zone.name)
        .bind(micros(p.update_time))
        .bind(&p.id)
        .bind(p.revision)
        .execute(self.conn())
        .await?;
        let updated = done.rows_affected() == 1;
        if updated {
            p.revision += 1;
        }
        Ok(updated)
    }
}
