//! Segments (saved customer filters) and sharing rules, and the rules' standing for a
//! viewer: what [`crate::domain::visibility::access`] weighs besides a grant.
//!
//! Nothing is stored per customer: a rule's reach is read from the rule, its segment
//! and the partnerships at each read, so a revocation, an expiry, a suspended
//! partnership or a customer leaving the segment takes effect at the next read.

use std::sync::Arc;

use jiff::Timestamp;
use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use super::sharing::org_ref;
use super::{
    Dialect, OwnedRows, Page, Store, Tx, corrupt, level_name, micros, parse_fields, parse_level,
    timestamp,
};
use crate::domain::OrgRef;
use crate::domain::customer::{FieldSet, PhoneRegion};
use crate::domain::error::Result;
use crate::domain::filter::CustomerFilter;
use crate::domain::partnership::Relationship;
use crate::domain::visibility::{AccessLevel, RuleStanding};

/// A saved filter of an organization's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub id: String,
    pub organization_id: String,
    pub display_name: String,
    /// In canonical form ([`CustomerFilter::to_text`]).
    pub filter: String,
    pub revision: i64,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
}

/// Whom a rule shares with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleTarget {
    Grantee(OrgRef),
    /// Every organization with an ACTIVE partnership of this relationship with the
    /// owner, in either direction.
    Relationship(Relationship),
}

/// The segment a rule shares, as the rule shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSegment {
    pub id: String,
    pub display_name: String,
    pub filter: String,
}

/// A sharing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharingRule {
    pub id: String,
    pub owner: OrgRef,
    pub display_name: String,
    /// `None`: every customer the owner owns.
    pub segment: Option<RuleSegment>,
    pub target: RuleTarget,
    pub level: AccessLevel,
    pub fields: FieldSet,
    /// The owner's field preset that sets `fields`.
    pub preset_id: Option<String>,
    pub expire_time: Option<Timestamp>,
    pub revoke_time: Option<Timestamp>,
    pub revision: i64,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
}

impl SharingRule {
    /// Neither revoked nor expired at `now`.
    pub fn live_at(&self, now: Timestamp) -> bool {
        self.revoke_time.is_none() && self.expire_time.is_none_or(|t| now < t)
    }
}

#[derive(FromRow)]
struct SegmentRow {
    id: String,
    organization_id: String,
    display_name: String,
    filter: String,
    revision: i64,
    create_time: i64,
    update_time: i64,
}

impl TryFrom<SegmentRow> for Segment {
    type Error = crate::domain::error::Error;

    fn try_from(r: SegmentRow) -> Result<Self> {
        Ok(Segment {
            create_time: timestamp(r.create_time)?,
            update_time: timestamp(r.update_time)?,
            id: r.id,
            organization_id: r.organization_id,
            display_name: r.display_name,
            filter: r.filter,
            revision: r.revision,
        })
    }
}

/// Live (not deleted) segments.
const SEGMENTS: OwnedRows = OwnedRows {
    select: "SELECT id, organization_id, display_name, filter, revision, create_time, \
             update_time FROM segments",
    live: " AND delete_time IS NULL",
};

#[derive(FromRow)]
struct RuleRow {
    id: String,
    owner_id: String,
    owner_slug: String,
    display_name: String,
    segment_id: Option<String>,
    segment_name: Option<String>,
    segment_filter: Option<String>,
    grantee_id: Option<String>,
    grantee_slug: Option<String>,
    relationship: Option<String>,
    level: String,
    fields: String,
    preset_id: Option<String>,
    expire_time: Option<i64>,
    revoke_time: Option<i64>,
    revision: i64,
    create_time: i64,
    update_time: i64,
}

impl TryFrom<RuleRow> for SharingRule {
    type Error = crate::domain::error::Error;

    fn try_from(r: RuleRow) -> Result<Self> {
        let target = match (r.grantee_id, r.grantee_slug, r.relationship) {
            (Some(id), Some(slug), None) => RuleTarget::Grantee(org_ref(id, &slug)?),
            (None, None, Some(raw)) => RuleTarget::Relationship(
                Relationship::parse(&raw).ok_or_else(|| corrupt("relationship", &raw))?,
            ),
            _ => return Err(corrupt("sharing rule target", &r.id)),
        };
        let segment = match (r.segment_id, r.segment_name, r.segment_filter) {
            (Some(id), Some(display_name), Some(filter)) => Some(RuleSegment {
                id,
                display_name,
                filter,
            }),
            (None, _, _) => None,
            _ => return Err(corrupt("sharing rule segment", &r.id)),
        };
        Ok(SharingRule {
            owner: org_ref(r.owner_id, &r.owner_slug)?,
            display_name: r.display_name,
            segment,
            target,
            level: parse_level(&r.level)?,
            fields: parse_fields(&r.fields)?,
            preset_id: r.preset_id,
            expire_time: r.expire_time.map(timestamp).transpose()?,
            revoke_time: r.revoke_time.map(timestamp).transpose()?,
            revision: r.revision,
            create_time: timestamp(r.create_time)?,
            update_time: timestamp(r.update_time)?,
            id: r.id,
        })
    }
}

const RULE_SELECT: &str = "SELECT r.id, r.owner_id, o.slug AS owner_slug, r.display_name, \
     r.segment_id, s.display_name AS segment_name, s.filter AS segment_filter, r.grantee_id, \
     go.slug AS grantee_slug, r.relationship, r.level, r.fields, r.preset_id, r.expire_time, \
     r.revoke_time, r.revision, r.create_time, r.update_time \
     FROM sharing_rules r JOIN organizations o ON o.id = r.owner_id \
     LEFT JOIN organizations go ON go.id = r.grantee_id \
     LEFT JOIN segments s ON s.id = r.segment_id";

/// A stored segment filter, read back. It was stored in canonical form, which reads
/// the same under any region.
pub(crate) fn stored_filter(raw: &str) -> Result<Arc<CustomerFilter>> {
    let region = PhoneRegion::parse("US").expect("a region");
    CustomerFilter::parse(raw, region)
        .map(Arc::new)
        .map_err(|_| corrupt("segment filter", raw))
}

/// A rule's standing for one viewer: rule id, viewer, level, fields, segment filter,
/// expiry.
type StandingRow = (String, String, String, String, Option<String>, Option<i64>);

pub(super) fn standing(row: StandingRow) -> Result<RuleStanding> {
    let (rule_id, grantee_id, level, fields, filter, expire_time) = row;
    Ok(RuleStanding {
        rule_id,
        grantee_id,
        level: parse_level(&level)?,
        fields: parse_fields(&fields)?,
        segment: filter.as_deref().map(stored_filter).transpose()?,
        expire_time: expire_time.map(timestamp).transpose()?,
        revoked: false,
        partnership_active: true,
    })
}

/// The live, unexpired rules of owner `$1` and the partners each reaches through an
/// ACTIVE partnership (`$2` is now), as [`StandingRow`]s; with `one_viewer`, only
/// those reaching viewer `$3`. A partner two partnerships reach appears once.
///
/// A rule for one grantee reaches it through any ACTIVE partnership between the two;
/// a rule for a relationship reaches the organizations the owner stands in that
/// relationship to: ACTIVE partnerships "owner <relationship> partner", which the
/// owner proposed.
pub(super) fn standings_sql(one_viewer: bool) -> String {
    let partners = if one_viewer {
        "SELECT $3 AS other, relationship, proposer_id FROM partnerships \
         WHERE state = 'active' \
         AND ((proposer_id = $1 AND recipient_id = $3) OR (proposer_id = $3 AND recipient_id = $1))"
    } else {
        "SELECT CASE WHEN proposer_id = $1 THEN recipient_id ELSE proposer_id END AS other, \
         relationship, proposer_id FROM partnerships WHERE state = 'active' \
         AND (proposer_id = $1 OR recipient_id = $1)"
    };
    format!(
        "SELECT DISTINCT r.id, pt.other, r.level, r.fields, s.filter, r.expire_time \
         FROM sharing_rules r JOIN ({partners}) pt \
         ON (r.grantee_id = pt.other \
         OR (r.relationship = pt.relationship AND pt.proposer_id = r.owner_id)) \
         LEFT JOIN segments s ON s.id = r.segment_id \
         WHERE r.owner_id = $1 AND r.revoke_time IS NULL \
         AND (r.expire_time IS NULL OR r.expire_time > $2) ORDER BY r.id, pt.other"
    )
}

/// Owner `owner_id`'s live rules reaching `viewer_id` (every viewer: `None`) now.
pub(super) async fn standings<'c>(
    db: impl AnyExecutor<'c>,
    owner_id: &str,
    viewer_id: Option<&str>,
    now: Timestamp,
) -> Result<Vec<RuleStanding>> {
    let sql = standings_sql(viewer_id.is_some());
    let mut q = sqlx::query_as::<_, StandingRow>(&sql)
        .bind(owner_id)
        .bind(micros(now));
    if let Some(v) = viewer_id {
        q = q.bind(v);
    }
    q.fetch_all(db).await?.into_iter().map(standing).collect()
}

/// Every live rule reaching viewer `viewer_id` now, whoever owns it: `(owner id,
/// standing)`, by owner and rule.
pub(super) async fn standings_of_viewer<'c>(
    db: impl AnyExecutor<'c>,
    viewer_id: &str,
    now: Timestamp,
) -> Result<Vec<(String, RuleStanding)>> {
    // The shape of a `StandingRow`, with the owner where the viewer is.
    let rows: Vec<StandingRow> = sqlx::query_as(
        "SELECT DISTINCT r.owner_id, r.id, r.level, r.fields, s.filter, r.expire_time \
             FROM partnerships p JOIN sharing_rules r ON r.owner_id = \
             (CASE WHEN p.proposer_id = $1 THEN p.recipient_id ELSE p.proposer_id END) \
             AND r.revoke_time IS NULL AND (r.grantee_id = $1 \
             OR (r.relationship = p.relationship AND p.proposer_id = r.owner_id)) \
             LEFT JOIN segments s ON s.id = r.segment_id \
             WHERE p.state = 'active' AND (p.proposer_id = $1 OR p.recipient_id = $1) \
             AND (r.expire_time IS NULL OR r.expire_time > $2) ORDER BY r.owner_id, r.id",
    )
    .bind(viewer_id)
    .bind(micros(now))
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|(owner, id, level, fields, filter, expire)| {
            let s = standing((id, viewer_id.to_owned(), level, fields, filter, expire))?;
            Ok((owner, s))
        })
        .collect()
}

async fn rule_by_id<'c>(
    db: impl AnyExecutor<'c>,
    owner_id: &str,
    id: &str,
    lock: &str,
) -> Result<Option<SharingRule>> {
    let sql = format!("{RULE_SELECT} WHERE r.owner_id = $1 AND r.id = $2{lock}");
    let row: Option<RuleRow> = sqlx::query_as(&sql)
        .bind(owner_id)
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(SharingRule::try_from).transpose()
}

impl Store {
    /// Segment `id` of organization `org_id`.
    pub async fn segment(&self, org_id: &str, id: &str) -> Result<Option<Segment>> {
        SEGMENTS
            .one::<SegmentRow, _>(self.reader(), (org_id, id), "")
            .await
    }

    /// A page of organization `org_id`'s segments, by id, after `after`.
    pub async fn segments(
        &self,
        org_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Segment>> {
        let id = |s: &Segment| s.id.clone();
        SEGMENTS
            .page::<SegmentRow, _>(self.reader(), org_id, (after, limit), id)
            .await
    }

    /// Rule `id` of owner `owner_id`.
    pub async fn sharing_rule(&self, owner_id: &str, id: &str) -> Result<Option<SharingRule>> {
        rule_by_id(self.reader(), owner_id, id, "").await
    }

    /// Owner `owner_id`'s live rules that reach `viewer_id` now.
    pub async fn rule_standings(
        &self,
        owner_id: &str,
        viewer_id: &str,
    ) -> Result<Vec<RuleStanding>> {
        standings(
            self.reader(),
            owner_id,
            Some(viewer_id),
            crate::domain::now(),
        )
        .await
    }

    /// A page of owner `owner_id`'s rules by id after `after` (revoked ones with
    /// `show_revoked`); with `only_ids`, just those rules (the ones reaching a viewer).
    pub async fn sharing_rules(
        &self,
        owner_id: &str,
        only_ids: Option<&[String]>,
        show_revoked: bool,
        (after, limit): (Option<&str>, usize),
    ) -> Result<Page<SharingRule>> {
        let mut sql = format!("{RULE_SELECT} WHERE r.owner_id = $1 AND r.id > $2");
        if !show_revoked {
            sql.push_str(" AND r.revoke_time IS NULL");
        }
        if let Some(ids) = only_ids {
            if ids.is_empty() {
                return Ok(Page {
                    items: vec![],
                    next_after: None,
                });
            }
            sql.push_str(&format!(
                " AND r.id IN ({})",
                super::placeholders(4, ids.len())
            ));
        }
        sql.push_str(" ORDER BY r.id LIMIT $3");
        let mut q = sqlx::query_as::<_, RuleRow>(&sql)
            .bind(owner_id)
            .bind(after.unwrap_or(""))
            .bind(limit as i64 + 1);
        for id in only_ids.unwrap_or_default() {
            q = q.bind(id);
        }
        let items = q
            .fetch_all(self.reader())
            .await?
            .into_iter()
            .map(SharingRule::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |r| r.id.clone()))
    }
}

impl Tx {
    /// Segment `id` of organization `org_id`, locked shared by a rule made through it
    /// (`change` false), so a concurrent change of its filter waits and then tells
    /// that rule's partners too, or exclusive for a change or a delete.
    pub async fn segment(
        &mut self,
        org_id: &str,
        id: &str,
        change: bool,
    ) -> Result<Option<Segment>> {
        let lock = super::lock_clause(self.dialect, change);
        SEGMENTS
            .one::<SegmentRow, _>(self.conn(), (org_id, id), lock)
            .await
    }

    pub async fn insert_segment(&mut self, s: &Segment) -> Result<()> {
        sqlx::query(
            "INSERT INTO segments (id, organization_id, display_name, filter, revision, \
             create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&s.id)
        .bind(&s.organization_id)
        .bind(&s.display_name)
        .bind(&s.filter)
        .bind(s.revision)
        .bind(micros(s.create_time))
        .bind(micros(s.update_time))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Writes `s` if it is still at `s.revision - 1`; false if another change came
    /// first.
    pub async fn update_segment(&mut self, s: &Segment) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE segments SET display_name = $1, filter = $2, revision = $3, \
             update_time = $4 WHERE id = $5 AND revision = $6",
        )
        .bind(&s.display_name)
        .bind(&s.filter)
        .bind(s.revision)
        .bind(micros(s.update_time))
        .bind(&s.id)
        .bind(s.revision - 1)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes segment `id` unless a live rule shares it; false if one does.
    pub async fn delete_segment(&mut self, id: &str) -> Result<bool> {
        let in_use: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM sharing_rules WHERE segment_id = $1 AND revoke_time IS NULL LIMIT 1",
        )
        .bind(id)
        .fetch_optional(self.conn())
        .await?;
        if in_use.is_some() {
            return Ok(false);
        }
        // Revoked rules keep naming it.
        sqlx::query("UPDATE segments SET delete_time = $1 WHERE id = $2")
            .bind(micros(crate::domain::now()))
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(true)
    }

    /// Rule `id` of owner `owner_id`, locked for a change.
    pub async fn sharing_rule(&mut self, owner_id: &str, id: &str) -> Result<Option<SharingRule>> {
        // PostgreSQL locks the rows of every table a `FOR UPDATE` joins; `OF r` keeps
        // the lock on the rule.
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE OF r",
            Dialect::Sqlite => "",
        };
        rule_by_id(self.conn(), owner_id, id, lock).await
    }

    /// The live, unexpired rules of owner `owner_id` that share segment `segment_id`.
    pub async fn live_rules_sharing(
        &mut self,
        owner_id: &str,
        segment_id: &str,
    ) -> Result<Vec<SharingRule>> {
        let sql = format!(
            "{RULE_SELECT} WHERE r.owner_id = $1 AND r.revoke_time IS NULL \
             AND (r.expire_time IS NULL OR r.expire_time > $3) AND r.segment_id = $2 \
             ORDER BY r.id"
        );
        let rows: Vec<RuleRow> = sqlx::query_as(&sql)
            .bind(owner_id)
            .bind(segment_id)
            .bind(micros(crate::domain::now()))
            .fetch_all(self.conn())
            .await?;
        rows.into_iter().map(SharingRule::try_from).collect()
    }

    pub async fn insert_sharing_rule(&mut self, r: &SharingRule) -> Result<()> {
        let (grantee, relationship) = target_columns(&r.target);
        sqlx::query(
            "INSERT INTO sharing_rules (id, owner_id, display_name, segment_id, grantee_id, \
             relationship, level, fields, preset_id, expire_time, revoke_time, revision, \
             create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, $11, $12, $13)",
        )
        .bind(&r.id)
        .bind(&r.owner.id)
        .bind(&r.display_name)
        .bind(r.segment.as_ref().map(|s| s.id.as_str()))
        .bind(grantee)
        .bind(relationship)
        .bind(level_name(r.level))
        .bind(r.fields.to_csv())
        .bind(r.preset_id.as_deref())
        .bind(r.expire_time.map(micros))
        .bind(r.revision)
        .bind(micros(r.create_time))
        .bind(micros(r.update_time))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Writes `r` (every field a change or a revocation sets) if it is still at
    /// `r.revision - 1`; false if another change came first.
    pub async fn update_sharing_rule(&mut self, r: &SharingRule) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sharing_rules SET display_name = $1, segment_id = $2, level = $3, \
             fields = $4, preset_id = $5, expire_time = $6, revoke_time = $7, revision = $8, \
             update_time = $9 WHERE id = $10 AND revision = $11",
        )
        .bind(&r.display_name)
        .bind(r.segment.as_ref().map(|s| s.id.as_str()))
        .bind(level_name(r.level))
        .bind(r.fields.to_csv())
        .bind(r.preset_id.as_deref())
        .bind(r.expire_time.map(micros))
        .bind(r.revoke_time.map(micros))
        .bind(r.revision)
        .bind(micros(r.update_time))
        .bind(&r.id)
        .bind(r.revision - 1)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The organizations rule `r` reaches through ACTIVE partnerships, by id, were it
    /// live (whether it is, is the caller's to weigh).
    pub async fn rule_reaches(&mut self, r: &SharingRule) -> Result<Vec<OrgRef>> {
        let (grantee, relationship) = target_columns(&r.target);
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT o.id, o.slug FROM organizations o WHERE o.id IN (\
             SELECT CASE WHEN p.proposer_id = $1 THEN p.recipient_id ELSE p.proposer_id END \
             FROM partnerships p WHERE p.state = 'active' \
             AND (p.proposer_id = $1 OR p.recipient_id = $1) \
             AND (p.proposer_id = $2 OR p.recipient_id = $2 \
             OR (p.relationship = $3 AND p.proposer_id = $1))) \
             ORDER BY o.id",
        )
        .bind(&r.owner.id)
        .bind(grantee)
        .bind(relationship)
        .fetch_all(self.conn())
        .await?;
        rows.into_iter()
            .map(|(id, slug)| org_ref(id, &slug))
            .collect()
    }
}

fn target_columns(target: &RuleTarget) -> (Option<&str>, Option<&'static str>) {
    match target {
        RuleTarget::Grantee(g) => (Some(g.id.as_str()), None),
        RuleTarget::Relationship(r) => (None, Some(r.as_str())),
    }
}
