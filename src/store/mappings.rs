//! Account mappings: the mapping, the segments each side named, the records that
//! matched at the last comparison, and the access requests made from an overlap.

use jiff::Timestamp;
use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use super::sharing::org_ref;
use super::{
    AccessRequest, Dialect, Page, Store, Tx, corrupt, is_unique_violation, lock_clause, micros,
    placeholders, timestamp,
};
use crate::domain::OrgRef;
use crate::domain::error::{Error, Result};
use crate::domain::mapping::{MappingState, Overlap, SegmentInput, Side};

/// A segment one side named, as the mapping shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedSegment {
    pub side: Side,
    pub segment_id: String,
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountMapping {
    pub id: String,
    pub requester: OrgRef,
    pub partner: OrgRef,
    pub state: MappingState,
    pub threshold: u32,
    /// Both sides', each in the order named.
    pub segments: Vec<MappedSegment>,
    /// The last comparison's figures, as shown.
    pub overlaps: Vec<Overlap>,
    /// What the last comparison read.
    pub inputs: Vec<SegmentInput>,
    pub compare_time: Option<Timestamp>,
    /// The earliest time it may be compared again.
    pub refresh_time: Option<Timestamp>,
    /// When the hub next weighs whether to compare it again by itself.
    pub check_time: Option<Timestamp>,
    /// The comparison running now.
    pub operation_id: Option<String>,
    pub ended_by: Option<OrgRef>,
    pub revision: i64,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    pub end_time: Option<Timestamp>,
}

impl AccountMapping {
    /// Which side `org_id` is on; `None` for anyone else.
    pub fn side_of(&self, org_id: &str) -> Option<Side> {
        if self.requester.id == org_id {
            Some(Side::Requester)
        } else if self.partner.id == org_id {
            Some(Side::Partner)
        } else {
            None
        }
    }

    pub fn org(&self, side: Side) -> &OrgRef {
        match side {
            Side::Requester => &self.requester,
            Side::Partner => &self.partner,
        }
    }

    /// The segment ids of `side`, in order.
    pub fn segment_ids(&self, side: Side) -> Vec<String> {
        self.segments
            .iter()
            .filter(|s| s.side == side)
            .map(|s| s.segment_id.clone())
            .collect()
    }
}

#[derive(FromRow)]
struct MappingRow {
    id: String,
    requester_id: String,
    requester_slug: String,
    partner_id: String,
    partner_slug: String,
    state: String,
    threshold: i64,
    figures: String,
    inputs: String,
    compare_time: Option<i64>,
    refresh_time: Option<i64>,
    check_time: Option<i64>,
    operation_id: Option<String>,
    ended_by: Option<String>,
    revision: i64,
    create_time: i64,
    update_time: i64,
    end_time: Option<i64>,
}

#[derive(FromRow)]
struct SegmentRow {
    mapping_id: String,
    side: String,
    segment_id: String,
    display_name: String,
}

const MAPPING_SELECT: &str = "SELECT m.id, m.requester_id, ro.slug AS requester_slug, \
     m.partner_id, po.slug AS partner_slug, m.state, m.threshold, m.figures, m.inputs, \
     m.compare_time, m.refresh_time, m.check_time, m.operation_id, m.ended_by, m.revision, m.create_time, m.update_time, \
     m.end_time FROM account_mappings m JOIN organizations ro ON ro.id = m.requester_id \
     JOIN organizations po ON po.id = m.partner_id";

fn json<T: serde::de::DeserializeOwned>(what: &str, raw: &str) -> Result<T> {
    serde_json::from_str(raw).map_err(|_| corrupt(what, raw))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal(e.into()))
}

impl MappingRow {
    fn into_mapping(self, segments: Vec<MappedSegment>) -> Result<AccountMapping> {
        let requester = org_ref(self.requester_id, &self.requester_slug)?;
        let partner = org_ref(self.partner_id, &self.partner_slug)?;
        let ended_by = match self.ended_by {
            None => None,
            Some(id) if id == requester.id => Some(requester.clone()),
            Some(id) if id == partner.id => Some(partner.clone()),
            Some(id) => return Err(corrupt("mapping's ender", &id)),
        };
        Ok(AccountMapping {
            state: MappingState::parse(&self.state)
                .ok_or_else(|| corrupt("mapping state", &self.state))?,
            threshold: u32::try_from(self.threshold)
                .map_err(|_| corrupt("threshold", &self.threshold.to_string()))?,
            overlaps: json("mapping figures", &self.figures)?,
            inputs: json("mapping inputs", &self.inputs)?,
            compare_time: self.compare_time.map(timestamp).transpose()?,
            refresh_time: self.refresh_time.map(timestamp).transpose()?,
            check_time: self.check_time.map(timestamp).transpose()?,
            create_time: timestamp(self.create_time)?,
            update_time: timestamp(self.update_time)?,
            end_time: self.end_time.map(timestamp).transpose()?,
            id: self.id,
            requester,
            partner,
            segments,
            operation_id: self.operation_id,
            ended_by,
            revision: self.revision,
        })
    }
}

/// Mappings of `rows`, each with its segments (one more statement).
async fn with_segments<'c>(
    db: impl AnyExecutor<'c>,
    rows: Vec<MappingRow>,
) -> Result<Vec<AccountMapping>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let sql = format!(
        "SELECT ms.mapping_id, ms.side, ms.segment_id, s.display_name FROM mapping_segments ms \
         JOIN segments s ON s.id = ms.segment_id WHERE ms.mapping_id IN ({}) \
         ORDER BY ms.mapping_id, ms.side DESC, ms.position",
        placeholders(1, rows.len())
    );
    let mut q = sqlx::query_as::<_, SegmentRow>(&sql);
    for r in &rows {
        q = q.bind(&r.id);
    }
    let segments = q.fetch_all(db).await?;
    rows.into_iter()
        .map(|row| {
            let mine = segments
                .iter()
                .filter(|s| s.mapping_id == row.id)
                .map(|s| {
                    Ok(MappedSegment {
                        side: Side::parse(&s.side).ok_or_else(|| corrupt("side", &s.side))?,
                        segment_id: s.segment_id.clone(),
                        display_name: s.display_name.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            row.into_mapping(mine)
        })
        .collect()
}

/// One mapping's matched records to ask for: those of `side`'s segment in the pair
/// that `requester_id` has no pending request for, up to `limit`, and how many such
/// there are in all.
pub struct Unasked {
    pub customer_ids: Vec<String>,
    pub total: i64,
    /// The side's own matched records of the pair, asked for or not.
    pub matched: i64,
}

impl Store {
    /// Mapping `id`, whoever's.
    pub async fn account_mapping(&self, id: &str) -> Result<Option<AccountMapping>> {
        let sql = format!("{MAPPING_SELECT} WHERE m.id = $1");
        let rows: Vec<MappingRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_all(self.reader())
            .await?;
        Ok(with_segments(self.reader(), rows).await?.pop())
    }

    /// A page of the mappings `org_id` is a side of, newest first, optionally in one
    /// state.
    pub async fn account_mappings(
        &self,
        org_id: &str,
        state: Option<MappingState>,
        (after, limit): (Option<&str>, usize),
    ) -> Result<Page<AccountMapping>> {
        // Each side's index walked newest first, then merged.
        let sql = format!(
            "{MAPPING_SELECT} WHERE m.id IN (SELECT id FROM (SELECT id FROM account_mappings \
             WHERE requester_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3) a UNION \
             SELECT id FROM (SELECT id FROM account_mappings WHERE partner_id = $1 AND id < $2 \
             ORDER BY id DESC LIMIT $3) b) AND ($4 = '' OR m.state = $4) ORDER BY m.id DESC \
             LIMIT $3"
        );
        let after = after.unwrap_or("\u{10FFFF}");
        let rows: Vec<MappingRow> = if state.is_none() {
            sqlx::query_as(&sql)
                .bind(org_id)
                .bind(after)
                .bind(limit as i64 + 1)
                .bind("")
                .fetch_all(self.reader())
                .await?
        } else {
            // A state filter may skip rows of the inner pages: filter first.
            let sql = format!(
                "{MAPPING_SELECT} WHERE (m.requester_id = $1 OR m.partner_id = $1) AND m.id < $2 \
                 AND m.state = $4 ORDER BY m.id DESC LIMIT $3"
            );
            sqlx::query_as(&sql)
                .bind(org_id)
                .bind(after)
                .bind(limit as i64 + 1)
                .bind(state.map(MappingState::as_str).unwrap_or(""))
                .fetch_all(self.reader())
                .await?
        };
        let items = with_segments(self.reader(), rows).await?;
        Ok(Page::from_rows(items, limit, |m| m.id.clone()))
    }

    /// Active mappings whose check time has come (`now`), the longest waiting first:
    /// those the hub weighs comparing again.
    pub async fn mappings_to_check(&self, now: Timestamp, limit: usize) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT m.id FROM account_mappings m WHERE m.state = 'active' \
             AND COALESCE(m.check_time, 0) <= $1 AND (m.operation_id IS NULL OR NOT EXISTS \
             (SELECT 1 FROM operations o WHERE o.id = m.operation_id \
             AND o.state IN ('pending', 'running'))) \
             ORDER BY COALESCE(m.check_time, 0), m.id LIMIT $2",
        )
        .bind(micros(now))
        .bind(limit as i64)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}

impl Tx {
    /// Mapping `id`, locked for a change (`change`) or shared.
    pub async fn account_mapping(
        &mut self,
        id: &str,
        change: bool,
    ) -> Result<Option<AccountMapping>> {
        let lock = lock_clause(self.dialect, change);
        let sql = format!(
            "{MAPPING_SELECT} WHERE m.id = $1{}",
            lock_of_mappings(self.dialect, lock)
        );
        let rows: Vec<MappingRow> = sqlx::query_as(&sql).bind(id).fetch_all(self.conn()).await?;
        Ok(with_segments(self.conn(), rows).await?.pop())
    }

    /// The open (proposed or active) mapping between `a` and `b`, either way round.
    pub async fn open_mapping_between(&mut self, a: &str, b: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM account_mappings WHERE state IN ('proposed', 'active') AND \
             ((requester_id = $1 AND partner_id = $2) OR (requester_id = $2 AND partner_id = $1)) \
             LIMIT 1",
        )
        .bind(a)
        .bind(b)
        .fetch_optional(self.conn())
        .await?;
        Ok(row.map(|(id,)| id))
    }

    pub async fn insert_account_mapping(&mut self, m: &AccountMapping) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO account_mappings (id, requester_id, partner_id, state, threshold, \
             figures, inputs, compare_time, operation_id, ended_by, revision, create_time, \
             update_time, end_time) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL, $8, \
             $9, $10, NULL)",
        )
        .bind(&m.id)
        .bind(&m.requester.id)
        .bind(&m.partner.id)
        .bind(m.state.as_str())
        .bind(i64::from(m.threshold))
        .bind(to_json(&m.overlaps)?)
        .bind(to_json(&m.inputs)?)
        .bind(m.revision)
        .bind(micros(m.create_time))
        .bind(micros(m.update_time))
        .execute(self.conn())
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::AlreadyExists {
                    reason: "MAPPING_OPEN",
                    message:
                        "a mapping is already open between the two organizations; end it first"
                            .into(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        for side in [Side::Requester, Side::Partner] {
            self.set_mapping_segments(&m.id, side, &m.segment_ids(side))
                .await?;
        }
        Ok(())
    }

    /// Writes `m` if it is still at `m.revision - 1`; false if another change came
    /// first. Its segments are written with [`Tx::set_mapping_segments`].
    pub async fn update_account_mapping(&mut self, m: &AccountMapping) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE account_mappings SET state = $1, figures = $2, inputs = $3, \
             compare_time = $4, operation_id = $5, ended_by = $6, revision = $7, \
             update_time = $8, end_time = $9, refresh_time = $12, check_time = $13 \
             WHERE id = $10 AND revision = $11",
        )
        .bind(m.state.as_str())
        .bind(to_json(&m.overlaps)?)
        .bind(to_json(&m.inputs)?)
        .bind(m.compare_time.map(micros))
        .bind(m.operation_id.as_deref())
        .bind(m.ended_by.as_ref().map(|o| o.id.as_str()))
        .bind(m.revision)
        .bind(micros(m.update_time))
        .bind(m.end_time.map(micros))
        .bind(&m.id)
        .bind(m.revision - 1)
        .bind(m.refresh_time.map(micros))
        .bind(m.check_time.map(micros))
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces `side`'s segments of mapping `id`.
    pub async fn set_mapping_segments(
        &mut self,
        id: &str,
        side: Side,
        segments: &[String],
    ) -> Result<()> {
        sqlx::query("DELETE FROM mapping_segments WHERE mapping_id = $1 AND side = $2")
            .bind(id)
            .bind(side.as_str())
            .execute(self.conn())
            .await?;
        for (position, segment_id) in segments.iter().enumerate() {
            sqlx::query(
                "INSERT INTO mapping_segments (mapping_id, side, position, segment_id) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(side.as_str())
            .bind(position as i64)
            .bind(segment_id)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }

    /// Replaces the matched records of mapping `id` with `matches`: per pair
    /// (requester segment, partner segment) and side, the records.
    pub async fn replace_mapping_matches(
        &mut self,
        id: &str,
        matches: &[(&str, &str, Side, &[String])],
    ) -> Result<()> {
        sqlx::query("DELETE FROM mapping_matches WHERE mapping_id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        for (r, p, side, customers) in matches {
            // Five values a row; 200 rows a statement stays under SQLite's limit on
            // parameters.
            for chunk in customers.chunks(200) {
                let rows: Vec<String> = (0..chunk.len())
                    .map(|i| format!("({})", placeholders(i * 5 + 1, 5)))
                    .collect();
                let sql = format!(
                    "INSERT INTO mapping_matches (mapping_id, requester_segment, \
                     partner_segment, side, customer_id) VALUES {}",
                    rows.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for customer in chunk {
                    q = q
                        .bind(id)
                        .bind(*r)
                        .bind(*p)
                        .bind(side.as_str())
                        .bind(customer);
                }
                q.execute(self.conn()).await?;
            }
        }
        Ok(())
    }

    /// `side`'s matched records of the pair, owned by `owner_id`, that `requester_id`
    /// has not asked for through this mapping, up to `limit`, and how many there are.
    pub async fn unasked_matches(
        &mut self,
        id: &str,
        (requester_segment, partner_segment): (&str, &str),
        side: Side,
        (requester_id, owner_id): (&str, &str),
        limit: usize,
    ) -> Result<Unasked> {
        // Nothing here depends on what else the requester sees or asked for, so the
        // count gives nothing away beyond the figures.
        const UNASKED: &str = "FROM mapping_matches mm JOIN customers c ON c.id = mm.customer_id \
             AND c.state = 'active' AND c.owner_id = $6 WHERE mm.mapping_id = $1 \
             AND mm.requester_segment = $2 AND mm.partner_segment = $3 AND mm.side = $4 \
             AND NOT EXISTS (SELECT 1 FROM access_requests r WHERE r.mapping_id = $1 \
             AND r.requester_id = $5 AND r.customer_id = mm.customer_id)";
        let (total,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) {UNASKED}"))
            .bind(id)
            .bind(requester_segment)
            .bind(partner_segment)
            .bind(side.as_str())
            .bind(requester_id)
            .bind(owner_id)
            .fetch_one(self.conn())
            .await?;
        let rows: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT mm.customer_id {UNASKED} ORDER BY mm.customer_id LIMIT $7"
        ))
        .bind(id)
        .bind(requester_segment)
        .bind(partner_segment)
        .bind(side.as_str())
        .bind(requester_id)
        .bind(owner_id)
        .bind(limit as i64)
        .fetch_all(self.conn())
        .await?;
        let (matched,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM mapping_matches mm JOIN customers c ON c.id = mm.customer_id \
             AND c.owner_id = $5 WHERE mm.mapping_id = $1 AND mm.requester_segment = $2 \
             AND mm.partner_segment = $3 AND mm.side = $4",
        )
        .bind(id)
        .bind(requester_segment)
        .bind(partner_segment)
        .bind(side.as_str())
        .bind(owner_id)
        .fetch_one(self.conn())
        .await?;
        Ok(Unasked {
            customer_ids: rows.into_iter().map(|(c,)| c).collect(),
            total,
            matched,
        })
    }

    /// The pending requests made through mapping `id` to `owner_id`, up to `limit`,
    /// locked for a decision, and how many there are.
    pub async fn pending_mapping_requests(
        &mut self,
        id: &str,
        owner_id: &str,
        limit: usize,
    ) -> Result<(Vec<AccessRequest>, i64)> {
        let (total,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM access_requests WHERE mapping_id = $1 AND owner_id = $2 \
             AND state = 'pending'",
        )
        .bind(id)
        .bind(owner_id)
        .fetch_one(self.conn())
        .await?;
        let lock = lock_clause(self.dialect, true);
        let ids: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT id FROM access_requests WHERE mapping_id = $1 AND owner_id = $2 \
             AND state = 'pending' ORDER BY id LIMIT $3{lock}"
        ))
        .bind(id)
        .bind(owner_id)
        .bind(limit as i64)
        .fetch_all(self.conn())
        .await?;
        let mut found = Vec::with_capacity(ids.len());
        for (request_id,) in ids {
            if let Some(r) = self.access_request(owner_id, &request_id).await? {
                found.push(r);
            }
        }
        Ok((found, total))
    }

    /// Locks every partnership between `a` and `b` (PostgreSQL; SQLite's writes run
    /// one at a time), so two ends of the last two at once see each other.
    pub async fn lock_partnerships_between(&mut self, a: &str, b: &str) -> Result<()> {
        if self.dialect != Dialect::Postgres {
            return Ok(());
        }
        sqlx::query(
            "SELECT id FROM partnerships WHERE (proposer_id = $1 AND recipient_id = $2) \
             OR (proposer_id = $2 AND recipient_id = $1) ORDER BY id FOR UPDATE",
        )
        .bind(a)
        .bind(b)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// The open (proposed or active) mappings between `a` and `b`, either way round.
    pub async fn open_mappings_between(&mut self, a: &str, b: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM account_mappings WHERE state IN ('proposed', 'active') AND \
             ((requester_id = $1 AND partner_id = $2) OR (requester_id = $2 AND partner_id = $1))",
        )
        .bind(a)
        .bind(b)
        .fetch_all(self.conn())
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Puts the next weighing of mapping `id` off until `at`, unless it changed.
    pub async fn check_mapping_at(&mut self, id: &str, revision: i64, at: Timestamp) -> Result<()> {
        sqlx::query("UPDATE account_mappings SET check_time = $1 WHERE id = $2 AND revision = $3")
            .bind(micros(at))
            .bind(id)
            .bind(revision)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// The live grant of customer `customer_id` to `grantee_id`, if any.
    pub async fn live_grant_to(
        &mut self,
        customer_id: &str,
        grantee_id: &str,
    ) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM customer_grants WHERE customer_id = $1 AND grantee_id = $2 \
             AND revoke_time IS NULL LIMIT 1",
        )
        .bind(customer_id)
        .bind(grantee_id)
        .fetch_optional(self.conn())
        .await?;
        Ok(row.map(|(id,)| id))
    }

    /// Whether an open mapping names segment `id`.
    pub async fn segment_in_open_mapping(&mut self, id: &str) -> Result<bool> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM mapping_segments ms JOIN account_mappings m ON m.id = ms.mapping_id \
             WHERE ms.segment_id = $1 AND m.state IN ('proposed', 'active') LIMIT 1",
        )
        .bind(id)
        .fetch_optional(self.conn())
        .await?;
        Ok(row.is_some())
    }
}

/// PostgreSQL locks only the mapping's row (`OF m`), not the organizations joined.
fn lock_of_mappings(dialect: Dialect, lock: &str) -> String {
    match dialect {
        Dialect::Postgres if !lock.is_empty() => format!("{lock} OF m"),
        _ => lock.to_owned(),
    }
}
