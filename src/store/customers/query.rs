//! Listing customers: the filter, order and reach of a List as SQL on the record as
//! the viewer sees it, keyset cursors, and the match-key lookups of duplicate
//! detection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::row::{Bind, Query, SeenCustomer, select_from};
use crate::domain::customer::CustomerField;
use crate::domain::error::{Error, Result};
use crate::domain::filter::{CustomerCondition, NameMatch, Op, ValueKind};
use crate::domain::match_key::MatchSecret;
use crate::domain::visibility::RuleStanding;
use crate::store::rules::standings_of_viewer;
use crate::store::{Page, Store, micros};

/// What a customer list is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKey {
    /// Creation order (ids are UUIDv7).
    Id,
    UpdateTime,
    DisplayName,
    /// The viewer's purchase count (its metrics), then creation.
    PurchaseCount,
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
pub(super) enum SortValue {
    None,
    Int(i64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct Cursor(SortValue, String);

/// Which customers one walk of a list covers.
#[derive(Debug, Clone, Copy)]
pub(super) enum Branch<'a> {
    /// The viewer's own.
    Owned,
    /// Those the viewer holds live grants on.
    Granted,
    /// Owner `owner_id`'s active customers in the segment of a rule that reaches the
    /// viewer (all of them, without a segment).
    Ruled {
        owner_id: &'a str,
        rule: &'a RuleStanding,
    },
}

/// How a condition reads the record in one branch.
#[derive(Clone, Copy)]
enum Narrowing<'a> {
    /// As is: the record of the owner whose id is bound at `owner`, its interactions
    /// as the organization bound at `perspective` sees them.
    Record {
        owner: &'a str,
        perspective: &'a str,
    },
    /// Through the viewer's grant (`g`): a field it hides matches nothing; its
    /// interactions as the viewer (`$1`) sees them.
    Grant,
}

/// The field a condition reads, if it reads one a mask may hide.
fn field_of(condition: &CustomerCondition) -> Option<CustomerField> {
    match condition {
        CustomerCondition::DisplayName(_) => Some(CustomerField::DisplayName),
        CustomerCondition::Email(_) => Some(CustomerField::Emails),
        CustomerCondition::Phone(_) => Some(CustomerField::Phones),
        CustomerCondition::Tag(_) => Some(CustomerField::Tags),
        _ => None,
    }
}

impl CustomerOrder {
    /// The SQL a branch sorts by (binding what it needs in `q`); `None`: by id.
    ///
    /// Another organization's record sorts by its display name only where the
    /// viewer sees the name (some source that covers the record shows it: `rules` are
    /// every rule reaching the viewer), and as empty elsewhere, so neither the order
    /// nor a page boundary tells anything of a hidden name. Every branch sorts a
    /// record by the same expression, so the merged order is one order.
    fn column(
        self,
        q: &mut Query,
        branch: Branch<'_>,
        rules: &[(String, RuleStanding)],
        secret: &MatchSecret,
    ) -> Option<String> {
        match (self.key, branch) {
            (OrderKey::Id, _) => None,
            (OrderKey::UpdateTime, _) => Some("c.update_time".into()),
            // The viewer's own metric, the same expression in every branch.
            (OrderKey::PurchaseCount, _) => Some(format!(
                "(SELECT COALESCE(SUM(t.count), 0) FROM interaction_totals t \
                 WHERE t.customer_id = c.id AND t.type = 'purchase' AND t.scope IN ('{}', $1))",
                crate::domain::metrics::SHARED
            )),
            (OrderKey::DisplayName, Branch::Owned) => Some("c.sort_name".into()),
            // Every record this walk finds, the rule covers, and it shows the name.
            (OrderKey::DisplayName, Branch::Ruled { rule, .. })
                if rule.fields.contains(CustomerField::DisplayName) =>
            {
                Some("c.sort_name".into())
            }
            (OrderKey::DisplayName, _) => {
                let name = CustomerField::DisplayName;
                let mut shows = vec![format!(
                    "(g.fields IS NOT NULL AND p.state = 'active' AND {})",
                    grant_shows(name)
                )];
                for (owner_id, rule) in rules.iter().filter(|(_, r)| r.fields.contains(name)) {
                    let segment = segment_of(rule);
                    if !covers_anything(segment) {
                        continue;
                    }
                    let owner = q.arg(Bind::text(owner_id));
                    let start = q.len();
                    for condition in segment {
                        let how = Narrowing::Record {
                            owner: &owner,
                            perspective: &owner,
                        };
                        narrow(q, condition, secret, how);
                    }
                    let conditions = q.cut(start);
                    shows.push(format!("(c.owner_id = {owner}{conditions})"));
                }
                Some(format!(
                    "(CASE WHEN {} THEN c.sort_name ELSE CAST('' AS TEXT) END)",
                    shows.join(" OR ")
                ))
            }
        }
    }

    /// Where a page ends after `seen`, in values the viewer may read (`purchases`:
    /// its purchase count, read for this order).
    fn cursor(self, seen: &SeenCustomer, sort_name: &str, purchases: Option<i64>) -> Cursor {
        let value = match self.key {
            OrderKey::Id => SortValue::None,
            OrderKey::PurchaseCount => SortValue::Int(purchases.unwrap_or_default()),
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
pub(super) fn grant_shows(field: CustomerField) -> String {
    format!("(',' || g.fields || ',') LIKE '%,{},%'", field.as_str())
}

/// Adds the SQL that keeps only rows meeting `condition` as the branch reads the
/// record: through a grant, a condition on a field the grant hides matches nothing,
/// so which rows come back (and where a page ends) never depends on a hidden value.
fn narrow(q: &mut Query, condition: &CustomerCondition, secret: &MatchSecret, how: Narrowing<'_>) {
    if let (Narrowing::Grant, Some(field)) = (how, field_of(condition)) {
        q.push(&format!(" AND {}", grant_shows(field)));
    }
    // The owner's keys are found by the key's primary key (kind, key, owner); a
    // granted record's by the record (`customer_keys_by_customer_key`), one probe each.
    let key_in = |q: &mut Query, kind: &str, key: String| {
        let k = q.arg(Bind::Text(key));
        match how {
            Narrowing::Record { owner, .. } => q.push(&format!(
                " AND c.id IN (SELECT customer_id FROM customer_keys \
                 WHERE kind = '{kind}' AND key = {k} AND owner_id = {owner})"
            )),
            // `OFFSET 0` keeps PostgreSQL from turning the probe into a join driven
            // by every organization's entries of the key (10,000 for a common tag,
            // 150 ms at a million customers), so the grants drive, in order.
            Narrowing::Grant => q.push(&format!(
                " AND EXISTS (SELECT 1 FROM customer_keys ck WHERE ck.customer_id = c.id \
                 AND ck.kind = '{kind}' AND ck.key = {k} LIMIT 1 OFFSET 0)"
            )),
        }
    };
    match condition {
        CustomerCondition::DisplayName(NameMatch::Exact(name)) => {
            let a = q.arg(Bind::Text(name.clone()));
            q.push(&format!(" AND c.sort_name = {a}"));
        }
        CustomerCondition::DisplayName(NameMatch::Prefix(prefix)) => {
            // Byte order in both dialects: every name with the prefix lies in
            // [prefix, prefix + U+10FFFF).
            let lo = q.arg(Bind::Text(prefix.clone()));
            let hi = q.arg(Bind::Text(format!("{prefix}\u{10FFFF}")));
            q.push(&format!(" AND c.sort_name >= {lo} AND c.sort_name < {hi}"));
        }
        CustomerCondition::Email(_) | CustomerCondition::Phone(_) | CustomerCondition::Tag(_) => {
            let (_, kind, key) = key_of(condition, secret).expect("a key condition");
            key_in(q, kind, key)
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
            q.push(&format!(
                " AND c.owner_id IN (SELECT id FROM organizations WHERE slug = {a})"
            ));
        }
        CustomerCondition::Kind(kind) => {
            let a = q.arg(Bind::Text(kind.as_str().to_owned()));
            q.push(&format!(" AND c.kind = {a}"));
        }
        // Decided by which branches run (see `Reach`).
        CustomerCondition::Granted(_) => {}
        CustomerCondition::UpdateTime(op, t) => {
            let Some(symbol) = symbol(*op) else { return };
            let a = q.arg(Bind::Int(micros(t.at(crate::domain::now()))));
            q.push(&format!(" AND c.update_time {symbol} {a}"));
        }
        CustomerCondition::OpenCases(op, n) => {
            let Some(symbol) = number_symbol(*op) else {
                return;
            };
            let perspective = perspective_of(how);
            let a = q.arg(Bind::Int(*n));
            // The open cases on the record the organization takes part in.
            q.push(&format!(
                " AND (SELECT COUNT(*) FROM cases k JOIN case_participants cp \
                 ON cp.case_id = k.id AND cp.organization_id = {perspective} \
                 WHERE k.customer_id = c.id AND k.closed = 0) {symbol} {a}"
            ));
        }
        CustomerCondition::Status(v) | CustomerCondition::AccountNumber(v) => {
            let column = match condition {
                CustomerCondition::Status(_) => "status",
                _ => "account_number",
            };
            let perspective = perspective_of(how);
            let a = q.arg(Bind::Text(v.clone()));
            // The organization's own overlay on the record.
            q.push(&format!(
                " AND EXISTS (SELECT 1 FROM customer_overlays o WHERE o.customer_id = c.id \
                 AND o.org_id = {perspective} AND o.{column} = {a})"
            ));
        }
        CustomerCondition::LastInteraction(kind, op, t)
        | CustomerCondition::FirstInteraction(kind, op, t) => {
            let Some(symbol) = symbol(*op) else { return };
            let (column, pick) = match condition {
                CustomerCondition::LastInteraction(..) => ("last_time", "MAX"),
                _ => ("first_time", "MIN"),
            };
            let of_kind = kind.map_or(String::new(), |k| format!(" AND t.type = '{}'", k.as_str()));
            let a = q.arg(Bind::Int(micros(t.at(crate::domain::now()))));
            // Of the interactions the organization sees (its own and the shared ones),
            // from their running totals: a handful of rows per customer.
            q.push(&format!(
                " AND (SELECT {pick}(t.{column}) FROM interaction_totals t \
                 WHERE t.customer_id = c.id{of_kind} AND {}) {symbol} {a}",
                totals_seen(how)
            ));
        }
        // Scores move with the hourly quintiles; read from the metrics in memory
        // (`CustomerFilter::matches`), not narrowed here.
        CustomerCondition::Rfm(..) => {}
        CustomerCondition::PurchaseCount(op, n) => {
            let Some(symbol) = number_symbol(*op) else {
                return;
            };
            let a = q.arg(Bind::Int(*n));
            q.push(&format!(
                " AND (SELECT COALESCE(SUM(t.count), 0) FROM interaction_totals t \
                 WHERE t.customer_id = c.id AND t.type = 'purchase' AND {}) {symbol} {a}",
                totals_seen(how)
            ));
        }
        CustomerCondition::Value(kind, currency, op, n) => {
            let Some(symbol) = number_symbol(*op) else {
                return;
            };
            let of_kind = match kind {
                ValueKind::Purchase => " AND t.type = 'purchase'",
                ValueKind::Lifetime => "",
            };
            let c = q.arg(Bind::Text(currency.clone()));
            // Within MAX_VALUE_UNITS, so it fits; exact integer arithmetic either way
            // (PostgreSQL's SUM of BIGINT is NUMERIC).
            let a = q.arg(Bind::Int(i64::try_from(*n).unwrap_or(i64::MAX)));
            q.push(&format!(
                " AND (SELECT COALESCE(SUM(t.units), 0) * 1000000000 + COALESCE(SUM(t.nanos), 0) \
                 FROM interaction_totals t WHERE t.customer_id = c.id AND t.currency = {c}{of_kind} \
                 AND {}) {symbol} {a}",
                totals_seen(how)
            ));
        }
    }
}

/// SQL true for the rows of `interaction_totals t` the condition's perspective sees:
/// the shared scope and its own.
fn totals_seen(how: Narrowing<'_>) -> String {
    format!(
        "t.scope IN ('{}', {})",
        crate::domain::metrics::SHARED,
        perspective_of(how)
    )
}

/// Whose view of the record's interactions, cases and overlay a condition reads.
fn perspective_of<'a>(how: Narrowing<'a>) -> &'a str {
    match how {
        Narrowing::Record { perspective, .. } => perspective,
        Narrowing::Grant => "$1",
    }
}

/// A count or amount comparison in SQL: `=` and the orderings.
fn number_symbol(op: Op) -> Option<&'static str> {
    match op {
        Op::Eq => Some("="),
        other => symbol(other),
    }
}

/// A time comparison in SQL; `None` for an operator times do not take.
fn symbol(op: Op) -> Option<&'static str> {
    match op {
        Op::Lt => Some("<"),
        Op::Le => Some("<="),
        Op::Gt => Some(">"),
        Op::Ge => Some(">="),
        Op::Eq | Op::Ne | Op::Has => None,
    }
}

/// The lookup key a condition matches on, if it is one: the field it reads, and the
/// key's kind and value in `customer_keys`.
fn key_of(
    condition: &CustomerCondition,
    secret: &MatchSecret,
) -> Option<(CustomerField, &'static str, String)> {
    match condition {
        CustomerCondition::Email(e) => Some((CustomerField::Emails, "email", secret.email_key(e))),
        CustomerCondition::Phone(p) => Some((CustomerField::Phones, "phone", secret.phone_key(p))),
        CustomerCondition::Tag(t) => Some((CustomerField::Tags, "tag", t.clone())),
        _ => None,
    }
}

/// What a branch selects: whole rows (`select_from`) or ids only (to count).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Selecting {
    Rows,
    Ids,
}

/// Whether a branch can match anything: a viewer's condition on a field a rule hides
/// finds nothing through that rule.
fn possible(query: &CustomerQuery<'_>, branch: Branch<'_>) -> bool {
    match branch {
        Branch::Ruled { rule, .. } => {
            covers_anything(segment_of(rule))
                && query
                    .conditions
                    .iter()
                    .filter_map(field_of)
                    .all(|f| rule.fields.contains(f))
        }
        _ => true,
    }
}

/// A rule's segment conditions; none for every customer.
fn segment_of(rule: &RuleStanding) -> &[CustomerCondition] {
    rule.segment.as_ref().map_or(&[][..], |s| &s.conditions[..])
}

/// Whether a segment can hold any of its owner's own records: `granted = true` is
/// read from the owner's side, where nothing of its own is granted to it (as
/// `domain::visibility` reads it).
fn covers_anything(segment: &[CustomerCondition]) -> bool {
    !segment.contains(&CustomerCondition::Granted(true))
}

/// One branch's query pushed onto `q` (whose `$1` is the viewer), without order or
/// limit; `None` if the branch can match nothing. Returns the column its id order
/// follows.
///
/// In creation (id) order each walk follows an index in that order and stops after the
/// page: the owner's records by `customers_by_owner`, or, with a tag, email or phone
/// condition, the owner's entries of that key (`customer_keys`' primary key ends with
/// the customer id), so a common tag costs a page of entries however many records
/// there are; a grantee's by its live grants (`customer_grants_by_grantee`), each
/// probed for the other conditions. A rule's branch walks its owner's records as the
/// owner's own list does, with the segment's conditions and the viewer's.
fn push_branch(
    store: &Store,
    q: &mut Query,
    query: &CustomerQuery<'_>,
    branch: Branch<'_>,
    secret: &MatchSecret,
    selecting: Selecting,
) -> Option<&'static str> {
    if !possible(query, branch) {
        return None;
    }
    let (owner, segment): (Option<String>, &[CustomerCondition]) = match branch {
        Branch::Owned => (Some("$1".into()), &[]),
        Branch::Granted => (None, &[]),
        Branch::Ruled { owner_id, rule } => {
            let owner = q.arg(Bind::text(owner_id));
            (Some(owner), segment_of(rule))
        }
    };
    let conditions: Vec<&CustomerCondition> = segment.iter().chain(query.conditions).collect();
    let by_id = query.order.key == OrderKey::Id;
    // The first key condition drives the walk of an owner's records in id order.
    let driving = match (&owner, by_id) {
        (Some(_), true) => conditions
            .iter()
            .enumerate()
            .find_map(|(i, c)| key_of(c, secret).map(|key| (i, key))),
        _ => None,
    };
    let driving_key = driving.as_ref().map(|(i, _)| *i);
    let select = |from: &str, grant_join: &str| match selecting {
        Selecting::Rows => select_from(from, grant_join),
        Selecting::Ids if grant_join == "JOIN" => format!(
            "SELECT c.id FROM {from} JOIN customer_grants g ON g.customer_id = c.id \
             AND g.grantee_id = $1 AND g.revoke_time IS NULL \
             LEFT JOIN partnerships p ON p.id = g.partnership_id"
        ),
        Selecting::Ids => format!("SELECT c.id FROM {from}"),
    };
    let id_column = match &owner {
        Some(owner) => {
            match driving.map(|(_, key)| key) {
                Some((_, kind, key)) => {
                    // SQLite takes `CROSS JOIN` as "walk the left side first".
                    let join = match store.dialect() {
                        crate::store::Dialect::Sqlite => "CROSS JOIN",
                        crate::store::Dialect::Postgres => "JOIN",
                    };
                    let from =
                        format!("customer_keys k {join} customers c ON c.id = k.customer_id");
                    q.push(&format!(
                        "{} WHERE k.kind = '{kind}' AND k.owner_id = {owner} AND c.owner_id = {owner}",
                        select(&from, "LEFT JOIN")
                    ));
                    let k = q.arg(Bind::Text(key));
                    q.push(&format!(" AND k.key = {k}"));
                }
                None => q.push(&format!(
                    "{} WHERE c.owner_id = {owner}",
                    select("customers c", "LEFT JOIN")
                )),
            }
            if matches!(branch, Branch::Owned) && query.show_deleted {
                q.push(" AND c.state <> 'merged'");
            } else {
                q.push(" AND c.state = 'active'");
            }
            if driving_key.is_some() {
                "k.customer_id"
            } else {
                "c.id"
            }
        }
        None => {
            q.push(&format!(
                "{} WHERE p.state = 'active' AND c.state = 'active'",
                select("customers c", "JOIN")
            ));
            "g.customer_id"
        }
    };
    // The segment's conditions read interactions as the owner sees them, the
    // viewer's as the viewer does.
    for (i, condition) in conditions.iter().enumerate() {
        let how = match &owner {
            Some(owner) if i < segment.len() => Narrowing::Record {
                owner,
                perspective: owner,
            },
            Some(owner) => Narrowing::Record {
                owner,
                perspective: "$1",
            },
            None => Narrowing::Grant,
        };
        if Some(i) != driving_key {
            narrow(q, condition, secret, how);
        }
    }
    Some(id_column)
}

/// One branch of a list, ordered and limited on its own so each walks an index rather
/// than the table (see [`push_branch`]): its rows, and each one's sort name.
pub(super) async fn list_branch(
    store: &Store,
    query: &CustomerQuery<'_>,
    (branch, rules): (Branch<'_>, &[(String, RuleStanding)]),
    after: Option<&Cursor>,
    secret: &MatchSecret,
) -> Result<Vec<(SeenCustomer, String)>> {
    let viewer = query.viewer_id;
    let mut q = Query::new(String::new(), Bind::text(viewer));
    let Some(id_column) = push_branch(store, &mut q, query, branch, secret, Selecting::Rows) else {
        return Ok(vec![]);
    };
    let column = query.order.column(&mut q, branch, rules, secret);
    let (gt, dir) = if query.order.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some(Cursor(value, id)) = after {
        let id = q.arg(Bind::Text(id.clone()));
        match (&column, value) {
            (None, _) => q.push(&format!(" AND {id_column} {gt} {id}")),
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
        None => format!(" ORDER BY {id_column} {dir}"),
        Some(col) => format!(" ORDER BY {col} {dir}, c.id {dir}"),
    };
    q.push(&order);
    let limit = q.arg(Bind::Int(query.limit as i64 + 1));
    q.push(&format!(" LIMIT {limit}"));
    q.fetch(store.reader())
        .await?
        .into_iter()
        .map(|row| row.into_seen(viewer))
        .collect()
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
    /// A page of customers for `query.viewer_id`, as index walks (owned, granted, one
    /// per rule reaching the viewer) merged in order, each customer once with every
    /// rule of its owner that reaches the viewer. `next_after` is the cursor of the
    /// last row looked at.
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
        let after = after.as_ref();
        let rules = self.viewer_rules(query).await?;
        let mut rows = vec![];
        if query.reach != Reach::Granted {
            let branch = (Branch::Owned, &rules[..]);
            rows.extend(list_branch(self, query, branch, after, secret).await?);
        }
        if query.reach != Reach::Owned {
            let branch = (Branch::Granted, &rules[..]);
            rows.extend(list_branch(self, query, branch, after, secret).await?);
            for (owner_id, rule) in &rules {
                let branch = (Branch::Ruled { owner_id, rule }, &rules[..]);
                rows.extend(list_branch(self, query, branch, after, secret).await?);
            }
        }
        for (seen, _) in &mut rows {
            if seen.wants_rules() {
                seen.rules = rules
                    .iter()
                    .filter(|(owner, _)| *owner == seen.customer.owner.id)
                    .map(|(_, r)| r.clone())
                    .collect();
            }
        }
        // A cursor by name asks whether the viewer sees the name, which a rule on
        // interactions answers only with them; other cursors do not, so those pages
        // read interactions only for the rows they keep.
        let by_name = query.order.key == OrderKey::DisplayName;
        if by_name {
            self.with_owner_activity(rows.iter_mut().map(|(seen, _)| seen))
                .await?;
        }
        // A page by purchase count needs each row's, as the viewer counts them.
        let purchases = if query.order.key == OrderKey::PurchaseCount {
            let ids: Vec<&str> = rows.iter().map(|(s, _)| s.customer.id.as_str()).collect();
            self.activities(&ids, Some(query.viewer_id)).await?
        } else {
            Default::default()
        };
        let mut rows: Vec<(SeenCustomer, Cursor)> = rows
            .into_iter()
            .map(|(seen, sort_name)| {
                let count = purchases
                    .get(&seen.customer.id)
                    .map(|a| a.metrics().purchases);
                let cursor = query.order.cursor(&seen, &sort_name, count);
                (seen, cursor)
            })
            .collect();
        rows.sort_by(|a, b| {
            let ord = a.1.cmp(&b.1);
            if query.order.descending {
                ord.reverse()
            } else {
                ord
            }
        });
        // A customer a grant and a rule (or two rules) share came once per walk.
        rows.dedup_by(|a, b| a.0.customer.id == b.0.customer.id);
        rows.truncate(query.limit + 1);
        if !by_name {
            self.with_owner_activity(rows.iter_mut().map(|(seen, _)| seen))
                .await?;
        }
        let page = Page::from_rows(rows, query.limit, |(_, cursor)| {
            serde_json::to_string(cursor).expect("cursors serialize")
        });
        Ok(Page {
            items: page.items.into_iter().map(|(seen, _)| seen).collect(),
            next_after: page.next_after,
        })
    }

    /// Reads, in one statement, the owner's view of the interactions of each record
    /// of `seen` whose rules filter on them.
    async fn with_owner_activity<'s>(
        &self,
        seen: impl Iterator<Item = &'s mut SeenCustomer>,
    ) -> Result<()> {
        let mut wanting: Vec<&mut SeenCustomer> = seen
            .filter(|s| s.rules_need_activity() && s.owner_activity.is_none())
            .collect();
        let ids: Vec<&str> = wanting.iter().map(|s| s.customer.id.as_str()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut found = self.activities(&ids, None).await?;
        for s in &mut wanting {
            s.owner_activity = Some(found.remove(&s.customer.id).unwrap_or_default());
        }
        Ok(())
    }

    /// The live rules reaching the viewer of `query`, if its reach takes in others'
    /// customers: `(owner id, rule)`.
    async fn viewer_rules(&self, query: &CustomerQuery<'_>) -> Result<Vec<(String, RuleStanding)>> {
        if query.reach == Reach::Owned {
            return Ok(vec![]);
        }
        standings_of_viewer(self.reader(), query.viewer_id, crate::domain::now()).await
    }

    /// How many customers `query` would list (its order, cursor and limit aside): the
    /// viewer's own counted in the database, and the others (granted, shared by rules)
    /// as one union, so a customer two of them share counts once. The SQL narrowing is
    /// what lists use; segments do not filter on external ids, so it is exact for them.
    pub async fn count_customers(
        &self,
        query: &CustomerQuery<'_>,
        secret: &MatchSecret,
    ) -> Result<i64> {
        let rules = self.viewer_rules(query).await?;
        let mut total = 0;
        if query.reach != Reach::Granted {
            let mut q = Query::new("SELECT COUNT(*) FROM (".into(), Bind::text(query.viewer_id));
            push_branch(self, &mut q, query, Branch::Owned, secret, Selecting::Ids);
            q.push(") t");
            total += q.count(self.reader()).await?;
        }
        if query.reach != Reach::Owned {
            let mut q = Query::new("SELECT COUNT(*) FROM (".into(), Bind::text(query.viewer_id));
            let branches = std::iter::once(Branch::Granted)
                .chain(
                    rules
                        .iter()
                        .map(|(owner_id, rule)| Branch::Ruled { owner_id, rule }),
                )
                .filter(|b| possible(query, *b));
            for (i, branch) in branches.enumerate() {
                if i > 0 {
                    q.push(" UNION ");
                }
                push_branch(self, &mut q, query, branch, secret, Selecting::Ids);
            }
            q.push(") t");
            total += q.count(self.reader()).await?;
        }
        Ok(total)
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
}
