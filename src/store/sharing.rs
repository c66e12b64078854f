//! Grants of customers to partners, match handles and access requests.

use jiff::Timestamp;
use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use super::{
    Page, Store, Tx, corrupt, is_unique_violation, level_name, micros, parse_fields, parse_level,
    timestamp,
};
use crate::domain::customer::FieldSet;
use crate::domain::error::{Error, Result};
use crate::domain::visibility::AccessLevel;
use crate::domain::{OrgRef, Slug};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub customer_id: String,
    pub grantee: OrgRef,
    pub partnership_id: String,
    pub level: AccessLevel,
    pub fields: FieldSet,
    pub create_time: Timestamp,
    pub revoke_time: Option<Timestamp>,
    /// Whether the partnership it rests on is ACTIVE now.
    pub partnership_active: bool,
    /// The field preset it shares through (its owner's slug and id), which sets
    /// `fields`.
    pub preset: Option<(Slug, String)>,
}

#[derive(FromRow)]
struct GrantRow {
    id: String,
    customer_id: String,
    grantee_id: String,
    grantee_slug: String,
    partnership_id: String,
    level: String,
    fields: String,
    create_time: i64,
    revoke_time: Option<i64>,
    partnership_state: String,
    preset_id: Option<String>,
    preset_owner_slug: Option<String>,
}

const GRANT_SELECT: &str = "SELECT g.id, g.customer_id, g.grantee_id, o.slug AS grantee_slug, \
     g.partnership_id, g.level, g.fields, g.create_time, g.revoke_time, p.state AS partnership_state, \
     fp.id AS preset_id, po.slug AS preset_owner_slug \
     FROM customer_grants g JOIN organizations o ON o.id = g.grantee_id \
     JOIN partnerships p ON p.id = g.partnership_id \
     LEFT JOIN field_presets fp ON fp.id = g.preset_id \
     LEFT JOIN organizations po ON po.id = fp.organization_id";

pub(super) fn org_ref(id: String, slug: &str) -> Result<OrgRef> {
    Ok(OrgRef {
        id,
        slug: Slug::parse(slug).map_err(|_| corrupt("slug", slug))?,
    })
}

impl TryFrom<GrantRow> for Grant {
    type Error = Error;

    fn try_from(row: GrantRow) -> Result<Self> {
        Ok(Grant {
            grantee: org_ref(row.grantee_id, &row.grantee_slug)?,
            level: parse_level(&row.level)?,
            fields: parse_fields(&row.fields)?,
            create_time: timestamp(row.create_time)?,
            revoke_time: row.revoke_time.map(timestamp).transpose()?,
            partnership_active: row.partnership_state == "active",
            preset: match (row.preset_owner_slug, row.preset_id) {
                (Some(slug), Some(id)) => {
                    Some((Slug::parse(&slug).map_err(|_| corrupt("slug", &slug))?, id))
                }
                _ => None,
            },
            id: row.id,
            customer_id: row.customer_id,
            partnership_id: row.partnership_id,
        })
    }
}

async fn grant_by_id<'c>(
    db: impl AnyExecutor<'c>,
    customer_id: &str,
    id: &str,
) -> Result<Option<Grant>> {
    let sql = format!("{GRANT_SELECT} WHERE g.customer_id = $1 AND g.id = $2");
    let row: Option<GrantRow> = sqlx::query_as(&sql)
        .bind(customer_id)
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(Grant::try_from).transpose()
}

/// A MatchCustomer answer: lets `requester` ask `owner` for access to a customer it
/// was not told the name of.
#[derive(Debug, Clone)]
pub struct CustomerMatch {
    pub id: String,
    pub requester_id: String,
    pub owner_id: String,
    pub customer_id: String,
    pub rule: String,
    pub expire_time: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Pending,
    Approved,
    Declined,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Declined => "declined",
        }
    }

    fn parse(raw: &str) -> Result<Self> {
        match raw {
            "pending" => Ok(Self::Pending),
            "approved" => Ok(Self::Approved),
            "declined" => Ok(Self::Declined),
            other => Err(corrupt("access request state", other)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AccessRequest {
    pub id: String,
    pub requester: OrgRef,
    pub owner: OrgRef,
    pub customer_id: String,
    /// Empty when asked for through a mapping.
    pub match_id: String,
    /// The account mapping whose overlap it was asked for from.
    pub mapping_id: Option<String>,
    pub level: AccessLevel,
    pub fields: FieldSet,
    pub reason: String,
    pub state: RequestState,
    pub decision_reason: String,
    pub grant_id: Option<String>,
    pub create_time: Timestamp,
    pub decide_time: Option<Timestamp>,
}

#[derive(FromRow)]
struct RequestRow {
    id: String,
    requester_id: String,
    requester_slug: String,
    owner_id: String,
    owner_slug: String,
    customer_id: String,
    match_id: String,
    mapping_id: Option<String>,
    level: String,
    fields: String,
    reason: String,
    state: String,
    decision_reason: String,
    grant_id: Option<String>,
    create_time: i64,
    decide_time: Option<i64>,
}

const REQUEST_SELECT: &str = "SELECT r.id, r.requester_id, ro.slug AS requester_slug, r.owner_id, \
     oo.slug AS owner_slug, r.customer_id, r.match_id, r.mapping_id, r.level, r.fields, r.reason, r.state, \
     r.decision_reason, r.grant_id, r.create_time, r.decide_time FROM access_requests r \
     JOIN organizations ro ON ro.id = r.requester_id JOIN organizations oo ON oo.id = r.owner_id";

impl TryFrom<RequestRow> for AccessRequest {
    type Error = Error;

    fn try_from(row: RequestRow) -> Result<Self> {
        Ok(AccessRequest {
            requester: org_ref(row.requester_id, &row.requester_slug)?,
            owner: org_ref(row.owner_id, &row.owner_slug)?,
            level: parse_level(&row.level)?,
            fields: parse_fields(&row.fields)?,
            state: RequestState::parse(&row.state)?,
            create_time: timestamp(row.create_time)?,
            decide_time: row.decide_time.map(timestamp).transpose()?,
            id: row.id,
            customer_id: row.customer_id,
            match_id: row.match_id,
            mapping_id: row.mapping_id,
            reason: row.reason,
            decision_reason: row.decision_reason,
            grant_id: row.grant_id,
        })
    }
}

/// An access request that `org_id` made or received.
async fn request_by_id<'c>(
    db: impl AnyExecutor<'c>,
    org_id: &str,
    id: &str,
) -> Result<Option<AccessRequest>> {
    let sql =
        format!("{REQUEST_SELECT} WHERE r.id = $1 AND (r.owner_id = $2 OR r.requester_id = $2)");
    let row: Option<RequestRow> = sqlx::query_as(&sql)
        .bind(id)
        .bind(org_id)
        .fetch_optional(db)
        .await?;
    row.map(AccessRequest::try_from).transpose()
}

impl Store {
    /// Grants of a customer in creation order; `grantee_id` limits them to one
    /// grantee's.
    pub async fn grants(
        &self,
        customer_id: &str,
        grantee_id: Option<&str>,
        show_revoked: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Grant>> {
        let sql = format!(
            "{GRANT_SELECT} WHERE g.customer_id = $1 AND ($2 = '' OR g.grantee_id = $2) \
             AND ($3 = 1 OR g.revoke_time IS NULL) AND g.id > $4 ORDER BY g.id LIMIT $5"
        );
        let rows: Vec<GrantRow> = sqlx::query_as(&sql)
            .bind(customer_id)
            .bind(grantee_id.unwrap_or(""))
            .bind(i64::from(show_revoked))
            .bind(after.unwrap_or(""))
            .bind(limit as i64 + 1)
            .fetch_all(self.reader())
            .await?;
        let items = rows
            .into_iter()
            .map(Grant::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |g| g.id.clone()))
    }

    /// Access requests `org_id` received (`incoming`) or made, in creation order.
    pub async fn access_requests(
        &self,
        org_id: &str,
        incoming: bool,
        state: Option<RequestState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<AccessRequest>> {
        let side = if incoming {
            "r.owner_id"
        } else {
            "r.requester_id"
        };
        let sql = format!(
            "{REQUEST_SELECT} WHERE {side} = $1 AND ($2 = '' OR r.state = $2) AND r.id > $3 \
             ORDER BY r.id LIMIT $4"
        );
        let rows: Vec<RequestRow> = sqlx::query_as(&sql)
            .bind(org_id)
            .bind(state.map(RequestState::as_str).unwrap_or(""))
            .bind(after.unwrap_or(""))
            .bind(limit as i64 + 1)
            .fetch_all(self.reader())
            .await?;
        let items = rows
            .into_iter()
            .map(AccessRequest::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |r| r.id.clone()))
    }

    /// An ACTIVE partnership between the two organizations (either direction), if any.
    pub async fn active_partnership_between(&self, a: &str, b: &str) -> Result<Option<String>> {
        active_partnership(self.reader(), a, b).await
    }
}

async fn active_partnership<'c>(
    db: impl AnyExecutor<'c>,
    a: &str,
    b: &str,
) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM partnerships WHERE state = 'active' AND \
         ((proposer_id = $1 AND recipient_id = $2) OR (proposer_id = $2 AND recipient_id = $1)) \
         ORDER BY id LIMIT 1",
    )
    .bind(a)
    .bind(b)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| r.0))
}

impl Tx {
    pub async fn active_partnership_between(&mut self, a: &str, b: &str) -> Result<Option<String>> {
        active_partnership(self.conn(), a, b).await
    }

    pub async fn grant(&mut self, customer_id: &str, id: &str) -> Result<Option<Grant>> {
        grant_by_id(self.conn(), customer_id, id).await
    }

    /// Inserts a live grant; one exists already for the customer and grantee:
    /// ALREADY_EXISTS.
    pub async fn insert_grant(&mut self, g: &Grant) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO customer_grants (id, customer_id, grantee_id, partnership_id, level, fields, \
             create_time, revoke_time, preset_id) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8)",
        )
        .bind(&g.id)
        .bind(&g.customer_id)
        .bind(&g.grantee.id)
        .bind(&g.partnership_id)
        .bind(level_name(g.level))
        .bind(g.fields.to_csv())
        .bind(micros(g.create_time))
        .bind(g.preset.as_ref().map(|(_, id)| id.as_str()))
        .execute(self.conn())
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                reason: "GRANT_EXISTS",
                message: format!(
                    "{} already has a live grant on this customer; revoke it to grant differently",
                    g.grantee.slug
                ),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends a live grant; false if it was not live.
    pub async fn revoke_grant(&mut self, id: &str, now: Timestamp) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE customer_grants SET revoke_time = $1 WHERE id = $2 AND revoke_time IS NULL",
        )
        .bind(micros(now))
        .bind(id)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn insert_match(&mut self, m: &CustomerMatch) -> Result<()> {
        sqlx::query(
            "INSERT INTO customer_matches (id, requester_id, owner_id, customer_id, rule, expire_time) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&m.id)
        .bind(&m.requester_id)
        .bind(&m.owner_id)
        .bind(&m.customer_id)
        .bind(&m.rule)
        .bind(micros(m.expire_time))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// A match handed to `requester_id` that has not expired.
    pub async fn live_match(
        &mut self,
        requester_id: &str,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<CustomerMatch>> {
        let row: Option<(String, String, String, String, String, i64)> = sqlx::query_as(
            "SELECT id, requester_id, owner_id, customer_id, rule, expire_time FROM customer_matches \
             WHERE id = $1 AND requester_id = $2 AND expire_time > $3",
        )
        .bind(id)
        .bind(requester_id)
        .bind(micros(now))
        .fetch_optional(self.conn())
        .await?;
        row.map(|(id, requester_id, owner_id, customer_id, rule, expire)| {
            Ok(CustomerMatch {
                id,
                requester_id,
                owner_id,
                customer_id,
                rule,
                expire_time: timestamp(expire)?,
            })
        })
        .transpose()
    }

    /// Forgets match handles that expired before `cutoff`.
    pub async fn expire_matches(&mut self, cutoff: Timestamp) -> Result<u64> {
        let done = sqlx::query("DELETE FROM customer_matches WHERE expire_time < $1")
            .bind(micros(cutoff))
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn insert_access_request(&mut self, r: &AccessRequest) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO access_requests (id, requester_id, owner_id, customer_id, match_id, level, \
             fields, reason, state, decision_reason, grant_id, create_time, decide_time, \
             mapping_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, '', NULL, $10, NULL, $11)",
        )
        .bind(&r.id)
        .bind(&r.requester.id)
        .bind(&r.owner.id)
        .bind(&r.customer_id)
        .bind(&r.match_id)
        .bind(level_name(r.level))
        .bind(r.fields.to_csv())
        .bind(&r.reason)
        .bind(r.state.as_str())
        .bind(micros(r.create_time))
        .bind(r.mapping_id.as_deref())
        .execute(self.conn())
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                reason: "ACCESS_REQUEST_PENDING",
                message: "you already have a pending access request for this customer".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn access_request(
        &mut self,
        org_id: &str,
        id: &str,
    ) -> Result<Option<AccessRequest>> {
        request_by_id(self.conn(), org_id, id).await
    }

    /// Records the owner's decision on a pending request; false if it was decided
    /// meanwhile.
    pub async fn decide_access_request(&mut self, r: &AccessRequest) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE access_requests SET state = $1, decision_reason = $2, grant_id = $3, decide_time = $4 \
             WHERE id = $5 AND state = 'pending'",
        )
        .bind(r.state.as_str())
        .bind(&r.decision_reason)
        .bind(r.grant_id.as_deref())
        .bind(r.decide_time.map(micros))
        .bind(&r.id)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
