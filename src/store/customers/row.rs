//! A customer as one viewer reads it: the row joined with the viewer's grant and
//! external id, the names of stored states and levels, and the query builder the
//! reads share.

use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use crate::domain::customer::{Customer, CustomerKind, Profile, RecordState};
use crate::domain::error::Result;
use crate::domain::filter::Activity;
use crate::domain::visibility::{Access, GrantStanding, RuleStanding, access};
use crate::domain::{OrgRef, Slug};
use crate::store::{corrupt, parse_fields, parse_level, timestamp};

/// A customer as read for one viewer: the record, the viewer's live grant on it (if
/// any), the owner's live rules that reach the viewer, and the viewer's external id
/// for it.
#[derive(Debug, Clone)]
pub struct SeenCustomer {
    pub customer: Customer,
    pub grant: Option<GrantStanding>,
    pub rules: Vec<RuleStanding>,
    /// The customer's interactions as its owner sees them, read when a rule's segment
    /// filters on them.
    pub owner_activity: Option<Activity>,
    pub external_id: Option<String>,
    pub viewer_id: String,
}

impl SeenCustomer {
    /// How the viewer may see it now; `None`: NOT_FOUND.
    pub fn access(&self) -> Option<Access> {
        access(
            &self.viewer_id,
            &self.customer,
            self.grant.as_ref(),
            &self.rules,
            self.owner_activity.as_ref(),
            crate::domain::now(),
        )
    }

    /// Whether some rule's segment filters on the customer's interactions.
    pub(crate) fn rules_need_activity(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.segment.as_ref().is_some_and(|s| s.needs_activity()))
    }

    /// Whether the owner's rules may matter to this viewer: it is not the owner and
    /// the record is active (a rule never shows anything else).
    pub(crate) fn wants_rules(&self) -> bool {
        self.viewer_id != self.customer.owner.id
            && self.customer.state == crate::domain::customer::RecordState::Active
    }
}

pub(crate) fn state_name(state: RecordState) -> &'static str {
    match state {
        RecordState::Active => "active",
        RecordState::Deleted => "deleted",
        RecordState::Merged => "merged",
        RecordState::Erased => "erased",
    }
}

pub(super) fn parse_state(raw: &str) -> Result<RecordState> {
    Ok(match raw {
        "active" => RecordState::Active,
        "deleted" => RecordState::Deleted,
        "merged" => RecordState::Merged,
        "erased" => RecordState::Erased,
        other => return Err(corrupt("customer state", other)),
    })
}

/// `$1` is the viewer's organization id in every query built on this.
pub(super) fn select(grant_join: &str) -> String {
    select_from("customers c", grant_join)
}

/// [`select`] with customers (`c`) reached through `from` (say, driven by an index of
/// another table).
pub(super) fn select_from(from: &str, grant_join: &str) -> String {
    format!(
        "SELECT c.id, c.owner_id, o.slug AS owner_slug, c.kind, c.state, c.profile, c.sort_name, \
         c.merged_into, c.create_time, c.update_time, c.delete_time, c.revision, \
         g.level AS grant_level, g.fields AS grant_fields, p.state AS partnership_state, \
         x.external_id \
         FROM {from} JOIN organizations o ON o.id = c.owner_id \
         {grant_join} customer_grants g ON g.customer_id = c.id AND g.grantee_id = $1 \
         AND g.revoke_time IS NULL \
         LEFT JOIN partnerships p ON p.id = g.partnership_id \
         LEFT JOIN customer_external_ids x ON x.customer_id = c.id AND x.org_id = $1"
    )
}

#[derive(FromRow)]
pub(super) struct CustomerRow {
    id: String,
    owner_id: String,
    owner_slug: String,
    kind: String,
    state: String,
    profile: String,
    sort_name: String,
    merged_into: Option<String>,
    create_time: i64,
    update_time: i64,
    delete_time: Option<i64>,
    revision: i64,
    grant_level: Option<String>,
    grant_fields: Option<String>,
    partnership_state: Option<String>,
    external_id: Option<String>,
}

impl CustomerRow {
    /// The row as a point read (`store::point`) returns it, by position (cheaper than by
    /// name): the columns of [`select_from`], in its order.
    pub(super) fn from_point(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            owner_id: row.get(1)?,
            owner_slug: row.get(2)?,
            kind: row.get(3)?,
            state: row.get(4)?,
            profile: row.get(5)?,
            sort_name: row.get(6)?,
            merged_into: row.get(7)?,
            create_time: row.get(8)?,
            update_time: row.get(9)?,
            delete_time: row.get(10)?,
            revision: row.get(11)?,
            grant_level: row.get(12)?,
            grant_fields: row.get(13)?,
            partnership_state: row.get(14)?,
            external_id: row.get(15)?,
        })
    }

    /// The owner's id, and whether the record is active.
    pub(super) fn owner_and_active(&self) -> (&str, bool) {
        (&self.owner_id, self.state == "active")
    }

    pub(super) fn into_seen(self, viewer_id: &str) -> Result<(SeenCustomer, String)> {
        let grant = match (self.grant_level, self.grant_fields) {
            (Some(level), Some(fields)) => Some(GrantStanding {
                grantee_id: viewer_id.to_owned(),
                level: parse_level(&level)?,
                fields: parse_fields(&fields)?,
                revoked: false,
                partnership_active: self.partnership_state.as_deref() == Some("active"),
            }),
            _ => None,
        };
        let profile: Profile = serde_json::from_str(&self.profile)
            .map_err(|e| corrupt("customer profile", &e.to_string()))?;
        let customer = Customer {
            owner: OrgRef {
                id: self.owner_id,
                slug: Slug::parse(&self.owner_slug)
                    .map_err(|_| corrupt("slug", &self.owner_slug))?,
            },
            kind: CustomerKind::parse(&self.kind).ok_or_else(|| corrupt("kind", &self.kind))?,
            state: parse_state(&self.state)?,
            profile,
            merged_into: self.merged_into,
            create_time: timestamp(self.create_time)?,
            update_time: timestamp(self.update_time)?,
            delete_time: self.delete_time.map(timestamp).transpose()?,
            revision: self.revision,
            id: self.id,
        };
        let seen = SeenCustomer {
            customer,
            grant,
            rules: vec![],
            owner_activity: None,
            external_id: self.external_id,
            viewer_id: viewer_id.to_owned(),
        };
        Ok((seen, self.sort_name))
    }
}

/// A value bound to a built query.
pub(super) enum Bind {
    Text(String),
    Int(i64),
}

impl Bind {
    pub(super) fn text(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

/// SQL assembled piece by piece with numbered parameters.
pub(super) struct Query {
    sql: String,
    binds: Vec<Bind>,
}

impl Query {
    pub(super) fn new(sql: String, first: Bind) -> Self {
        Self {
            sql,
            binds: vec![first],
        }
    }

    /// Binds `value` and returns its placeholder.
    pub(super) fn arg(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    pub(super) fn push(&mut self, sql: &str) {
        self.sql.push_str(sql);
    }

    /// How much SQL there is so far.
    pub(super) fn len(&self) -> usize {
        self.sql.len()
    }

    /// Takes back the SQL pushed since `start` (its binds stay), to use elsewhere in
    /// the statement.
    pub(super) fn cut(&mut self, start: usize) -> String {
        self.sql.split_off(start)
    }

    /// Runs a `SELECT COUNT(*)`.
    pub(super) async fn count<'c>(self, db: impl AnyExecutor<'c>) -> Result<i64> {
        let mut q = sqlx::query_scalar::<_, i64>(&self.sql);
        for b in self.binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
            };
        }
        Ok(q.fetch_one(db).await?)
    }

    pub(super) async fn fetch<'c>(self, db: impl AnyExecutor<'c>) -> Result<Vec<CustomerRow>> {
        let mut q = sqlx::query_as::<_, CustomerRow>(&self.sql);
        for b in self.binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
            };
        }
        Ok(q.fetch_all(db).await?)
    }
}
