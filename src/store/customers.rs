//! Customers, their lookup keys, external ids, overlays and history.
//!
//! Every read joins the viewer's grant (and the partnership it rests on) and the
//! viewer's external id, so the caller can decide visibility with
//! `domain::visibility::access` from one row. Lists filter and sort in SQL on the
//! record as the viewer sees it (a condition on a field its grant hides matches
//! nothing), so pages are full and never shaped by a hidden value; the visibility
//! function and `CustomerFilter::matches` still have the final word on each row.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use super::{Page, Store, Tx, corrupt, is_unique_violation, micros, placeholders, timestamp};
use crate::domain::customer::RecordState;
use crate::domain::customer::{
    Customer, CustomerField, CustomerKind, FieldChange, FieldSet, Profile,
};
use crate::domain::error::{Error, Result};
use crate::domain::filter::{CustomerCondition, NameMatch, Op};
use crate::domain::match_key::MatchSecret;
use crate::domain::visibility::{Access, AccessLevel, GrantStanding, access};
use crate::domain::{OrgRef, Slug};

/// A customer as read for one viewer: the record, the viewer's live grant on it (if
/// any) and the viewer's external id for it.
#[derive(Debug, Clone)]
pub struct SeenCustomer {
    pub customer: Customer,
    pub grant: Option<GrantStanding>,
    pub external_id: Option<String>,
    pub viewer_id: String,
}

impl SeenCustomer {
    /// How the viewer may see it; `None`: NOT_FOUND.
    pub fn access(&self) -> Option<Access> {
        access(
            &self.viewer_id,
            &self.customer.owner.id,
            self.customer.state,
            self.grant.as_ref(),
        )
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

fn parse_state(raw: &str) -> Result<RecordState> {
    Ok(match raw {
        "active" => RecordState::Active,
        "deleted" => RecordState::Deleted,
        "merged" => RecordState::Merged,
        "erased" => RecordState::Erased,
        other => return Err(corrupt("customer state", other)),
    })
}

pub(crate) fn level_name(level: AccessLevel) -> &'static str {
    match level {
        AccessLevel::Read => "read",
        AccessLevel::ReadWrite => "read_write",
    }
}

pub(crate) fn parse_level(raw: &str) -> Result<AccessLevel> {
    match raw {
        "read" => Ok(AccessLevel::Read),
        "read_write" => Ok(AccessLevel::ReadWrite),
        other => Err(corrupt("access level", other)),
    }
}

pub(crate) fn parse_fields(raw: &str) -> Result<FieldSet> {
    FieldSet::from_csv(raw).ok_or_else(|| corrupt("field set", raw))
}

/// `$1` is the viewer's organization id in every query built on this.
fn select(grant_join: &str) -> String {
    format!(
        "SELECT c.id, c.owner_id, o.slug AS owner_slug, c.kind, c.state, c.profile, c.sort_name, \
         c.merged_into, c.create_time, c.update_time, c.delete_time, c.revision, \
         g.level AS grant_level, g.fields AS grant_fields, p.state AS partnership_state, \
         x.external_id \
         FROM customers c JOIN organizations o ON o.id = c.owner_id \
         {grant_join} customer_grants g ON g.customer_id = c.id AND g.grantee_id = $1 \
         AND g.revoke_time IS NULL \
         LEFT JOIN partnerships p ON p.id = g.partnership_id \
         LEFT JOIN customer_external_ids x ON x.customer_id = c.id AND x.org_id = $1"
    )
}

/// A grantee's grant on a customer: grantee, level, fields, partnership state and the
/// grantee's external id.
type AudienceGrantRow = (String, String, String, Option<String>, Option<String>);

#[derive(FromRow)]
struct CustomerRow {
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
    fn into_seen(self, viewer_id: &str) -> Result<(SeenCustomer, String)> {
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
            external_id: self.external_id,
            viewer_id: viewer_id.to_owned(),
        };
        Ok((seen, self.sort_name))
    }
}

/// The lower-cased display name lists sort and filter by.
pub fn sort_name(customer: &Customer) -> String {
    customer.profile.display_name(customer.kind).to_lowercase()
}

/// What customers are found by: keyed HMACs of emails, phones and name + postal
/// code, and tags in clear.
pub fn lookup_keys(customer: &Customer, secret: &MatchSecret) -> BTreeSet<(&'static str, String)> {
    let p = &customer.profile;
    let mut keys = BTreeSet::new();
    for e in &p.emails {
        keys.insert(("email", secret.email_key(&e.address)));
    }
    for ph in &p.phones {
        keys.insert(("phone", secret.phone_key(&ph.number)));
    }
    for pair in p.name_postal_pairs(customer.kind) {
        keys.insert(("name_postal", secret.name_postal_key(&pair)));
    }
    for t in &p.tags {
        keys.insert(("tag", t.clone()));
    }
    keys
}

/// A value bound to a built query.
enum Bind {
    Text(String),
    Int(i64),
}

impl Bind {
    fn text(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

/// SQL assembled piece by piece with numbered parameters.
struct Query {
    sql: String,
    binds: Vec<Bind>,
}

impl Query {
    fn new(sql: String, first: Bind) -> Self {
        Self {
            sql,
            binds: vec![first],
        }
    }

    /// Binds `value` and returns its placeholder.
    fn arg(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn push(&mut self, sql: &str) {
        self.sql.push_str(sql);
    }

    async fn fetch<'c>(self, db: impl AnyExecutor<'c>) -> Result<Vec<CustomerRow>> {
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

/// What a customer list is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKey {
    /// Creation order (ids are UUIDv7).
    Id,
    UpdateTime,
    DisplayName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerOrder {
    pub key: OrderKey,
    pub descending: bool,
}

/// Which customers a list draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Owned and granted.
    All,
    Owned,
    Granted,
}

pub struct CustomerQuery<'a> {
    pub viewer_id: &'a str,
    pub conditions: &'a [CustomerCondition],
    pub order: CustomerOrder,
    pub show_deleted: bool,
    pub reach: Reach,
    /// The cursor of the last customer of the previous page.
    pub after: Option<&'a str>,
    pub limit: usize,
}

/// Where a page ended: the order value and the id of its last customer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum SortValue {
    None,
    Int(i64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Cursor(SortValue, String);

impl CustomerOrder {
    /// The SQL the order sorts by in the owned or the granted branch; `None`: by id.
    /// A grantee that may not see the display name sorts it as empty, so neither the
    /// order nor a page boundary tells it anything of the hidden name.
    fn column(self, owned: bool) -> Option<String> {
        match self.key {
            OrderKey::Id => None,
            OrderKey::UpdateTime => Some("c.update_time".into()),
            OrderKey::DisplayName if owned => Some("c.sort_name".into()),
            OrderKey::DisplayName => Some(format!(
                "(CASE WHEN {} THEN c.sort_name ELSE '' END)",
                grant_shows(CustomerField::DisplayName)
            )),
        }
    }

    /// Where a page ends after `seen`, in values the viewer may read.
    fn cursor(self, seen: &SeenCustomer, sort_name: &str) -> Cursor {
        let value = match self.key {
            OrderKey::Id => SortValue::None,
            OrderKey::UpdateTime => SortValue::Int(micros(seen.customer.update_time)),
            OrderKey::DisplayName => SortValue::Text(
                if seen
                    .access()
                    .is_some_and(|a| a.sees(CustomerField::DisplayName))
                {
                    sort_name.to_owned()
                } else {
                    String::new()
                },
            ),
        };
        Cursor(value, seen.customer.id.clone())
    }
}

/// SQL true where the viewer's grant (`g`) shows `field`. Field names are fixed
/// identifiers (letters and `_`), so the pattern matches exactly one entry of the list.
fn grant_shows(field: CustomerField) -> String {
    format!("(',' || g.fields || ',') LIKE '%,{},%'", field.as_str())
}

/// Adds the SQL that keeps only rows meeting `condition` as the viewer sees them: in
/// the granted branch a condition on a field the grant hides matches nothing, so which
/// rows come back (and where a page ends) never depends on a hidden value.
fn narrow(q: &mut Query, condition: &CustomerCondition, secret: &MatchSecret, owned: bool) {
    let shown = |q: &mut Query, field: CustomerField| {
        if !owned {
            q.push(&format!(" AND {}", grant_shows(field)));
        }
    };
    let key_in = |q: &mut Query, kind: &str, key: String| {
        let k = q.arg(Bind::Text(key));
        q.push(&format!(
            " AND c.id IN (SELECT customer_id FROM customer_keys WHERE kind = '{kind}' AND key = {k})"
        ));
    };
    match condition {
        CustomerCondition::DisplayName(NameMatch::Exact(name)) => {
            shown(q, CustomerField::DisplayName);
            let a = q.arg(Bind::Text(name.clone()));
            q.push(&format!(" AND c.sort_name = {a}"));
        }
        CustomerCondition::DisplayName(NameMatch::Prefix(prefix)) => {
            shown(q, CustomerField::DisplayName);
            // Byte order in both dialects: every name with the prefix lies in
            // [prefix, prefix + U+10FFFF).
            let lo = q.arg(Bind::Text(prefix.clone()));
            let hi = q.arg(Bind::Text(format!("{prefix}\u{10FFFF}")));
            q.push(&format!(" AND c.sort_name >= {lo} AND c.sort_name < {hi}"));
        }
        CustomerCondition::Email(e) => {
            shown(q, CustomerField::Emails);
            key_in(q, "email", secret.email_key(e))
        }
        CustomerCondition::Phone(p) => {
            shown(q, CustomerField::Phones);
            key_in(q, "phone", secret.phone_key(p))
        }
        CustomerCondition::Tag(t) => {
            shown(q, CustomerField::Tags);
            key_in(q, "tag", t.clone())
        }
        CustomerCondition::ExternalId(x) => {
            let a = q.arg(Bind::Text(x.clone()));
            q.push(&format!(
                " AND c.id IN (SELECT customer_id FROM customer_external_ids \
                 WHERE org_id = $1 AND external_id = {a})"
            ));
        }
        CustomerCondition::Owner(slug) => {
            let a = q.arg(Bind::Text(slug.as_str().to_owned()));
            q.push(&format!(" AND o.slug = {a}"));
        }
        CustomerCondition::Kind(kind) => {
            let a = q.arg(Bind::Text(kind.as_str().to_owned()));
            q.push(&format!(" AND c.kind = {a}"));
        }
        // Decided by which branches run (see `Reach`).
        CustomerCondition::Granted(_) => {}
        CustomerCondition::UpdateTime(op, t) => {
            let symbol = match op {
                Op::Lt => "<",
                Op::Le => "<=",
                Op::Gt => ">",
                Op::Ge => ">=",
                Op::Eq | Op::Ne | Op::Has => return,
            };
            let a = q.arg(Bind::Int(micros(*t)));
            q.push(&format!(" AND c.update_time {symbol} {a}"));
        }
    }
}

/// One branch (owned or granted) of a list, ordered and limited on its own so each
/// walks an index rather than the table.
async fn list_branch(
    store: &Store,
    query: &CustomerQuery<'_>,
    owned: bool,
    after: Option<&Cursor>,
    secret: &MatchSecret,
) -> Result<Vec<(SeenCustomer, Cursor)>> {
    let viewer = query.viewer_id;
    let mut q = if owned {
        let mut q = Query::new(
            format!("{} WHERE c.owner_id = $1", select("LEFT JOIN")),
            Bind::Text(viewer.to_owned()),
        );
        if query.show_deleted {
            q.push(" AND c.state <> 'merged'");
        } else {
            q.push(" AND c.state = 'active'");
        }
        q
    } else {
        Query::new(
            format!(
                "{} WHERE p.state = 'active' AND c.state = 'active'",
                select("JOIN")
            ),
            Bind::Text(viewer.to_owned()),
        )
    };
    for condition in query.conditions {
        narrow(&mut q, condition, secret, owned);
    }
    let (gt, dir) = if query.order.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    let column = query.order.column(owned);
    if let Some(Cursor(value, id)) = after {
        let id = q.arg(Bind::Text(id.clone()));
        match (&column, value) {
            (None, _) => q.push(&format!(" AND c.id {gt} {id}")),
            (Some(col), value) => {
                let v = q.arg(match value {
                    SortValue::Int(i) => Bind::Int(*i),
                    SortValue::Text(s) => Bind::Text(s.clone()),
                    SortValue::None => return Err(Error::invalid("page_token", "is not valid")),
                });
                q.push(&format!(
                    " AND ({col} {gt} {v} OR ({col} = {v} AND c.id {gt} {id}))"
                ));
            }
        }
    }
    let order = match &column {
        None => format!(" ORDER BY c.id {dir}"),
        Some(col) => format!(" ORDER BY {col} {dir}, c.id {dir}"),
    };
    q.push(&order);
    let limit = q.arg(Bind::Int(query.limit as i64 + 1));
    q.push(&format!(" LIMIT {limit}"));
    q.fetch(store.reader())
        .await?
        .into_iter()
        .map(|row| {
            let (seen, sort_name) = row.into_seen(viewer)?;
            let cursor = query.order.cursor(&seen, &sort_name);
            Ok((seen, cursor))
        })
        .collect()
}

async fn by_id<'c>(
    db: impl AnyExecutor<'c>,
    viewer_id: &str,
    id: &str,
) -> Result<Option<SeenCustomer>> {
    let sql = format!("{} WHERE c.id = $2", select("LEFT JOIN"));
    let row: Option<CustomerRow> = sqlx::query_as(&sql)
        .bind(viewer_id)
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(|r| r.into_seen(viewer_id).map(|(seen, _)| seen))
        .transpose()
}

/// One entry of a customer's history.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub id: String,
    pub customer_id: String,
    pub time: Timestamp,
    /// The acting organization; `None` for the hub operator.
    pub org: Option<OrgRef>,
    pub key_id: String,
    pub action: &'static str,
    /// Only this organization may see the entry.
    pub private_to: Option<String>,
    pub changes: Vec<FieldChange>,
    pub note: String,
}

#[derive(FromRow)]
struct HistoryRow {
    id: String,
    customer_id: String,
    time: i64,
    org_id: Option<String>,
    org_slug: Option<String>,
    key_id: String,
    action: String,
    private_to: Option<String>,
    changes: String,
    note: String,
}

const HISTORY_ACTIONS: &[&str] = &[
    "created",
    "updated",
    "deleted",
    "undeleted",
    "merged",
    "erased",
    "overlay_updated",
];

impl TryFrom<HistoryRow> for HistoryEntry {
    type Error = Error;

    fn try_from(row: HistoryRow) -> Result<Self> {
        let org = match (row.org_id, row.org_slug) {
            (Some(id), Some(slug)) => Some(OrgRef {
                id,
                slug: Slug::parse(&slug).map_err(|_| corrupt("slug", &slug))?,
            }),
            _ => None,
        };
        Ok(HistoryEntry {
            action: HISTORY_ACTIONS
                .iter()
                .find(|a| **a == row.action)
                .ok_or_else(|| corrupt("history action", &row.action))?,
            changes: serde_json::from_str(&row.changes)
                .map_err(|e| corrupt("history changes", &e.to_string()))?,
            time: timestamp(row.time)?,
            id: row.id,
            customer_id: row.customer_id,
            org,
            key_id: row.key_id,
            private_to: row.private_to,
            note: row.note,
        })
    }
}

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
struct OverlayRow {
    account_number: String,
    status: String,
    notes: String,
    attributes: String,
    update_time: i64,
    revision: i64,
}

async fn overlay_of<'c>(
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

/// Which rule made two customers look alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchRule {
    SameEmail,
    SamePhone,
    SameNameAndPostalCode,
}

impl MatchRule {
    pub fn of_key_kind(kind: &str) -> Option<Self> {
        match kind {
            "email" => Some(Self::SameEmail),
            "phone" => Some(Self::SamePhone),
            "name_postal" => Some(Self::SameNameAndPostalCode),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SameEmail => "email",
            Self::SamePhone => "phone",
            Self::SameNameAndPostalCode => "name_postal",
        }
    }
}

impl Store {
    pub async fn customer(&self, viewer_id: &str, id: &str) -> Result<Option<SeenCustomer>> {
        by_id(self.reader(), viewer_id, id).await
    }

    /// A page of customers for `query.viewer_id`, as two index walks (owned, granted)
    /// merged in order. `next_after` is the cursor of the last row looked at.
    pub async fn customers(
        &self,
        query: &CustomerQuery<'_>,
        secret: &MatchSecret,
    ) -> Result<Page<SeenCustomer>> {
        let after: Option<Cursor> = query
            .after
            .map(|raw| {
                serde_json::from_str(raw)
                    .map_err(|_| Error::invalid("page_token", "is not a token this list returned"))
            })
            .transpose()?;
        let mut rows = vec![];
        if query.reach != Reach::Granted {
            rows.extend(list_branch(self, query, true, after.as_ref(), secret).await?);
        }
        if query.reach != Reach::Owned {
            rows.extend(list_branch(self, query, false, after.as_ref(), secret).await?);
        }
        rows.sort_by(|a, b| {
            let ord = a.1.cmp(&b.1);
            if query.order.descending {
                ord.reverse()
            } else {
                ord
            }
        });
        rows.truncate(query.limit + 1);
        let page = Page::from_rows(rows, query.limit, |(_, cursor)| {
            serde_json::to_string(cursor).expect("cursors serialize")
        });
        Ok(Page {
            items: page.items.into_iter().map(|(seen, _)| seen).collect(),
            next_after: page.next_after,
        })
    }

    /// History entries of a customer, newest first, before id `before`, without the
    /// entries private to organizations other than `viewer_id`.
    pub async fn customer_history(
        &self,
        customer_id: &str,
        viewer_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<HistoryEntry>> {
        let rows: Vec<HistoryRow> = sqlx::query_as(
            "SELECT h.id, h.customer_id, h.time, h.org_id, o.slug AS org_slug, h.key_id, h.action, \
             h.private_to, h.changes, h.note FROM customer_history h \
             LEFT JOIN organizations o ON o.id = h.org_id \
             WHERE h.customer_id = $1 AND ($2 = '' OR h.id < $2) \
             AND (h.private_to IS NULL OR h.private_to = $4) ORDER BY h.id DESC LIMIT $3",
        )
        .bind(customer_id)
        .bind(before.unwrap_or(""))
        .bind(limit as i64 + 1)
        .bind(viewer_id)
        .fetch_all(self.reader())
        .await?;
        let items = rows
            .into_iter()
            .map(HistoryEntry::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |e| e.id.clone()))
    }

    pub async fn overlay(&self, customer_id: &str, org_id: &str) -> Result<Overlay> {
        overlay_of(self.reader(), customer_id, org_id).await
    }

    /// The owner's other live customers sharing a lookup key with `customer_id`, with
    /// the rules that matched, in creation order; at most `limit`.
    pub async fn duplicate_candidates(
        &self,
        owner_id: &str,
        customer_id: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<MatchRule>)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT k2.customer_id, k2.kind FROM customer_keys k1 \
             JOIN customer_keys k2 ON k2.kind = k1.kind AND k2.key = k1.key AND k2.owner_id = k1.owner_id \
             JOIN customers c ON c.id = k2.customer_id \
             WHERE k1.customer_id = $1 AND k1.owner_id = $2 AND k1.kind <> 'tag' \
             AND k2.customer_id <> $1 AND c.state = 'active' ORDER BY k2.customer_id",
        )
        .bind(customer_id)
        .bind(owner_id)
        .fetch_all(self.reader())
        .await?;
        let mut found: BTreeMap<String, Vec<MatchRule>> = BTreeMap::new();
        for (id, kind) in rows {
            if let Some(rule) = MatchRule::of_key_kind(&kind) {
                found.entry(id).or_default().push(rule);
            }
        }
        Ok(found.into_iter().take(limit).collect())
    }

    /// Live customers of organizations other than `requester_id` with this lookup
    /// key: `(owner id, owner slug, customer id)`.
    pub async fn holders_of_key(
        &self,
        kind: &str,
        key: &str,
        requester_id: &str,
    ) -> Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT k.owner_id, o.slug, k.customer_id FROM customer_keys k \
             JOIN customers c ON c.id = k.customer_id JOIN organizations o ON o.id = k.owner_id \
             WHERE k.kind = $1 AND k.key = $2 AND k.owner_id <> $3 AND c.state = 'active' \
             ORDER BY k.owner_id, k.customer_id",
        )
        .bind(kind)
        .bind(key)
        .bind(requester_id)
        .fetch_all(self.reader())
        .await?)
    }

    /// A setting, or `value` stored as it if there is none yet (first writer wins).
    pub async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(tx.conn())
        .await?;
        let (stored,): (String,) = sqlx::query_as("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_one(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Replaces a setting with `change(current)`, read and written in one write
    /// transaction so two changes at once do not lose one.
    pub async fn update_setting(
        &self,
        name: &str,
        change: impl FnOnce(Option<&str>) -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        let current: Option<(String,)> =
            sqlx::query_as("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_optional(tx.conn())
                .await
                .map_err(Error::from)?;
        let value = change(current.as_ref().map(|(v,)| v.as_str()))?;
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(tx.conn())
        .await
        .map_err(Error::from)?;
        tx.commit().await?;
        Ok(())
    }
}

impl Tx {
    /// Locks the rows of `ids` until the transaction ends, in id order, so two
    /// transactions that change the same customers (opposite merges) queue instead of
    /// deadlocking; the second then reads what the first committed. (SQLite runs one
    /// write transaction at a time already.)
    pub async fn lock_customers(&mut self, ids: &[&str]) -> Result<()> {
        if self.dialect != super::Dialect::Postgres || ids.is_empty() {
            return Ok(());
        }
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let sql = format!(
            "SELECT id FROM customers WHERE id IN ({}) ORDER BY id FOR UPDATE",
            placeholders(1, ids.len())
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for id in ids {
            q = q.bind(id);
        }
        q.fetch_all(self.conn()).await?;
        Ok(())
    }

    pub async fn customer(&mut self, viewer_id: &str, id: &str) -> Result<Option<SeenCustomer>> {
        by_id(self.conn(), viewer_id, id).await
    }

    /// The customer as read by each organization that might see it: its owner and
    /// every holder of an unrevoked grant. Whether each one does is for
    /// [`SeenCustomer::access`] to say. Three queries however many grants there are.
    pub async fn customer_audience(&mut self, id: &str) -> Result<Vec<SeenCustomer>> {
        let Some(base) = by_id(self.conn(), "", id).await? else {
            return Ok(vec![]);
        };
        let owner_id = base.customer.owner.id.clone();
        let Some(owner) = by_id(self.conn(), &owner_id, id).await? else {
            return Ok(vec![]);
        };
        let grants: Vec<AudienceGrantRow> = sqlx::query_as(
            "SELECT g.grantee_id, g.level, g.fields, p.state, x.external_id \
                 FROM customer_grants g LEFT JOIN partnerships p ON p.id = g.partnership_id \
                 LEFT JOIN customer_external_ids x ON x.customer_id = g.customer_id \
                 AND x.org_id = g.grantee_id \
                 WHERE g.customer_id = $1 AND g.revoke_time IS NULL ORDER BY g.grantee_id",
        )
        .bind(id)
        .fetch_all(self.conn())
        .await?;
        let mut audience = vec![owner];
        for (grantee_id, level, fields, partnership_state, external_id) in grants {
            audience.push(SeenCustomer {
                customer: base.customer.clone(),
                grant: Some(GrantStanding {
                    grantee_id: grantee_id.clone(),
                    level: parse_level(&level)?,
                    fields: parse_fields(&fields)?,
                    revoked: false,
                    partnership_active: partnership_state.as_deref() == Some("active"),
                }),
                external_id,
                viewer_id: grantee_id,
            });
        }
        Ok(audience)
    }

    /// The customer `org_id` knows by `external_id`, if any.
    pub async fn customer_by_external_id(
        &mut self,
        org_id: &str,
        external_id: &str,
    ) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT customer_id FROM customer_external_ids WHERE org_id = $1 AND external_id = $2",
        )
        .bind(org_id)
        .bind(external_id)
        .fetch_optional(self.conn())
        .await?;
        Ok(row.map(|r| r.0))
    }

    pub async fn insert_customer(&mut self, c: &Customer, secret: &MatchSecret) -> Result<()> {
        sqlx::query(
            "INSERT INTO customers (id, owner_id, kind, state, profile, sort_name, merged_into, \
             create_time, update_time, delete_time, revision) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&c.id)
        .bind(&c.owner.id)
        .bind(c.kind.as_str())
        .bind(state_name(c.state))
        .bind(profile_json(&c.profile)?)
        .bind(sort_name(c))
        .bind(c.merged_into.as_deref())
        .bind(micros(c.create_time))
        .bind(micros(c.update_time))
        .bind(c.delete_time.map(micros))
        .bind(c.revision)
        .execute(self.conn())
        .await?;
        self.replace_keys(c, secret).await
    }

    /// Writes `c` (read at `c.revision`) as the next revision and refreshes its lookup
    /// keys; false if someone else wrote it since.
    pub async fn update_customer(
        &mut self,
        c: &mut Customer,
        secret: &MatchSecret,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE customers SET state = $1, profile = $2, sort_name = $3, merged_into = $4, \
             update_time = $5, delete_time = $6, revision = revision + 1 \
             WHERE id = $7 AND revision = $8",
        )
        .bind(state_name(c.state))
        .bind(profile_json(&c.profile)?)
        .bind(sort_name(c))
        .bind(c.merged_into.as_deref())
        .bind(micros(c.update_time))
        .bind(c.delete_time.map(micros))
        .bind(&c.id)
        .bind(c.revision)
        .execute(self.conn())
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        c.revision += 1;
        self.replace_keys(c, secret).await?;
        Ok(true)
    }

    /// Lookup keys follow the profile; a record that is not active has none, so it is
    /// neither found by filters on contact points nor matched.
    async fn replace_keys(&mut self, c: &Customer, secret: &MatchSecret) -> Result<()> {
        sqlx::query("DELETE FROM customer_keys WHERE customer_id = $1")
            .bind(&c.id)
            .execute(self.conn())
            .await?;
        if c.state != RecordState::Active && c.state != RecordState::Deleted {
            return Ok(());
        }
        let keys: Vec<(&str, String)> = lookup_keys(c, secret).into_iter().collect();
        // One multi-row insert (a profile has a handful of keys; 4 parameters each).
        for chunk in keys.chunks(100) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * 4 + 1, 4)))
                .collect();
            let sql = format!(
                "INSERT INTO customer_keys (kind, key, owner_id, customer_id) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (kind, key) in chunk {
                query = query.bind(*kind).bind(key).bind(&c.owner.id).bind(&c.id);
            }
            query.execute(self.conn()).await?;
        }
        Ok(())
    }

    /// Sets (or with `None` clears) `org_id`'s external id for a customer.
    pub async fn set_external_id(
        &mut self,
        org_id: &str,
        customer_id: &str,
        external_id: Option<&str>,
    ) -> Result<()> {
        sqlx::query("DELETE FROM customer_external_ids WHERE customer_id = $1 AND org_id = $2")
            .bind(customer_id)
            .bind(org_id)
            .execute(self.conn())
            .await?;
        let Some(external_id) = external_id else {
            return Ok(());
        };
        let result = sqlx::query(
            "INSERT INTO customer_external_ids (org_id, external_id, customer_id) VALUES ($1, $2, $3)",
        )
        .bind(org_id)
        .bind(external_id)
        .bind(customer_id)
        .execute(self.conn())
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                reason: "EXTERNAL_ID_IN_USE",
                message: format!(
                    "your organization already uses external id {external_id:?} for another customer"
                ),
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn insert_history(&mut self, e: &HistoryEntry) -> Result<()> {
        let changes = serde_json::to_string(&e.changes)
            .map_err(|err| Error::Internal(anyhow::anyhow!("history changes: {err}")))?;
        sqlx::query(
            "INSERT INTO customer_history (id, customer_id, time, org_id, key_id, action, private_to, changes, note) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&e.id)
        .bind(&e.customer_id)
        .bind(micros(e.time))
        .bind(e.org.as_ref().map(|o| o.id.as_str()))
        .bind(&e.key_id)
        .bind(e.action)
        .bind(e.private_to.as_deref())
        .bind(changes)
        .bind(&e.note)
        .execute(self.conn())
        .await?;
        Ok(())
    }

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

    /// Moves what hangs off `loser` to `survivor` in a merge: interactions and history
    /// always; grants, overlays and external ids where the survivor has none for that
    /// organization (the survivor's win; the loser's are dropped).
    pub async fn move_customer_dependents(&mut self, loser: &str, survivor: &str) -> Result<()> {
        let moves = [
            "UPDATE interactions SET customer_id = $2 WHERE customer_id = $1",
            "UPDATE customer_history SET customer_id = $2 WHERE customer_id = $1",
            "UPDATE customer_grants SET customer_id = $2 WHERE customer_id = $1 AND revoke_time IS NULL \
             AND grantee_id NOT IN (SELECT grantee_id FROM customer_grants WHERE customer_id = $2 \
             AND revoke_time IS NULL)",
            "UPDATE customer_overlays SET customer_id = $2 WHERE customer_id = $1 \
             AND org_id NOT IN (SELECT org_id FROM customer_overlays WHERE customer_id = $2)",
            "DELETE FROM customer_overlays WHERE customer_id = $1",
            "UPDATE customer_external_ids SET customer_id = $2 WHERE customer_id = $1 \
             AND org_id NOT IN (SELECT org_id FROM customer_external_ids WHERE customer_id = $2)",
            "DELETE FROM customer_external_ids WHERE customer_id = $1",
            "DELETE FROM customer_matches WHERE customer_id = $1",
        ];
        for sql in moves {
            self.execute_with(sql, &[Bind::text(loser), Bind::text(survivor)])
                .await?;
        }
        let ends = [
            "UPDATE customer_grants SET revoke_time = $2 WHERE customer_id = $1 AND revoke_time IS NULL",
            "UPDATE access_requests SET state = 'declined', decision_reason = 'merged into another record', \
             decide_time = $2 WHERE customer_id = $1 AND state = 'pending'",
        ];
        let now = micros(crate::domain::now());
        for sql in ends {
            self.execute_with(sql, &[Bind::text(loser), Bind::Int(now)])
                .await?;
        }
        Ok(())
    }

    /// Removes everything personal that hangs off a customer (erasure): keys, external
    /// ids, overlays, interactions, history and pending access requests; grants end.
    pub async fn erase_customer_dependents(
        &mut self,
        customer_id: &str,
        now: Timestamp,
    ) -> Result<()> {
        let statements = [
            "DELETE FROM customer_keys WHERE customer_id = $1",
            "DELETE FROM customer_external_ids WHERE customer_id = $1",
            "DELETE FROM customer_overlays WHERE customer_id = $1",
            "DELETE FROM interactions WHERE customer_id = $1",
            "DELETE FROM customer_history WHERE customer_id = $1",
            "DELETE FROM customer_matches WHERE customer_id = $1",
            "UPDATE customer_grants SET revoke_time = $2 WHERE customer_id = $1 AND revoke_time IS NULL",
            "UPDATE access_requests SET state = 'declined', decision_reason = 'the customer was erased', \
             decide_time = $2, reason = '' WHERE customer_id = $1 AND state = 'pending'",
        ];
        for sql in statements {
            self.execute_with(sql, &[Bind::text(customer_id), Bind::Int(micros(now))])
                .await?;
        }
        Ok(())
    }

    /// Runs `sql` with as many of `args` as it has placeholders (`$1`, `$2`, …).
    async fn execute_with(&mut self, sql: &str, args: &[Bind]) -> Result<()> {
        let used = (1..=args.len())
            .take_while(|n| sql.contains(&format!("${n}")))
            .count();
        let mut q = sqlx::query(sql);
        for arg in &args[..used] {
            q = match arg {
                Bind::Text(s) => q.bind(s.clone()),
                Bind::Int(i) => q.bind(*i),
            };
        }
        q.execute(self.conn()).await?;
        Ok(())
    }
}

fn profile_json(profile: &Profile) -> Result<String> {
    serde_json::to_string(profile).map_err(|e| Error::Internal(anyhow::anyhow!("profile: {e}")))
}
