//! Listing customers: the filter, order and reach of a List as SQL on the record as
//! the viewer sees it, keyset cursors, and the match-key lookups of duplicate
//! detection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::row::{Bind, Query, SeenCustomer, select, select_from};
use crate::domain::customer::CustomerField;
use crate::domain::error::{Error, Result};
use crate::domain::filter::{CustomerCondition, NameMatch, Op};
use crate::domain::match_key::MatchSecret;
use crate::store::{Page, Store, micros};

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
pub(super) enum SortValue {
    None,
    Int(i64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct Cursor(SortValue, String);

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
pub(super) fn grant_shows(field: CustomerField) -> String {
    format!("(',' || g.fields || ',') LIKE '%,{},%'", field.as_str())
}

/// Adds the SQL that keeps only rows meeting `condition` as the viewer sees them: in
/// the granted branch a condition on a field the grant hides matches nothing, so which
/// rows come back (and where a page ends) never depends on a hidden value.
pub(super) fn narrow(
    q: &mut Query,
    condition: &CustomerCondition,
    secret: &MatchSecret,
    owned: bool,
) {
    let shown = |q: &mut Query, field: CustomerField| {
        if !owned {
            q.push(&format!(" AND {}", grant_shows(field)));
        }
    };
    // The owner's keys are found by the key's primary key (kind, key, owner); a
    // granted record's by the record (`customer_keys_by_customer_key`), one probe each.
    let key_in = |q: &mut Query, kind: &str, key: String| {
        let k = q.arg(Bind::Text(key));
        if owned {
            q.push(&format!(
                " AND c.id IN (SELECT customer_id FROM customer_keys \
                 WHERE kind = '{kind}' AND key = {k} AND owner_id = $1)"
            ));
        } else {
            q.push(&format!(
                " AND EXISTS (SELECT 1 FROM customer_keys ck WHERE ck.customer_id = c.id \
                 AND ck.kind = '{kind}' AND ck.key = {k})"
            ));
        }
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
        CustomerCondition::Email(_) | CustomerCondition::Phone(_) | CustomerCondition::Tag(_) => {
            let (field, kind, key) = key_of(condition, secret).expect("a key condition");
            shown(q, field);
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

/// One branch (owned or granted) of a list, ordered and limited on its own so each
/// walks an index rather than the table.
///
/// In creation (id) order each walk follows an index in that order and stops after the
/// page: the owner's records by `customers_by_owner`, or, with a tag, email or phone
/// condition, the owner's entries of that key (`customer_keys`' primary key ends with
/// the customer id), so a common tag costs a page of entries however many records
/// there are; a grantee's by its live grants (`customer_grants_by_grantee`), each
/// probed for the other conditions.
pub(super) async fn list_branch(
    store: &Store,
    query: &CustomerQuery<'_>,
    owned: bool,
    after: Option<&Cursor>,
    secret: &MatchSecret,
) -> Result<Vec<(SeenCustomer, Cursor)>> {
    let viewer = query.viewer_id;
    let column = query.order.column(owned);
    // The first key condition drives the walk (its position, and the key).
    let driving = match (owned, &column) {
        (true, None) => query
            .conditions
            .iter()
            .enumerate()
            .find_map(|(i, c)| key_of(c, secret).map(|key| (i, key))),
        _ => None,
    };
    let driving_key = driving.as_ref().map(|(i, _)| *i);
    // The column the walk is ordered by, which the id order and the cursor follow.
    let id_column = match (owned, driving_key) {
        (true, Some(_)) => "k.customer_id",
        (true, None) => "c.id",
        (false, _) => "g.customer_id",
    };
    let mut q = if owned {
        let mut q = match driving.map(|(_, key)| key) {
            Some((_, kind, key)) => {
                // SQLite takes `CROSS JOIN` as "walk the left side first".
                let join = match store.dialect() {
                    crate::store::Dialect::Sqlite => "CROSS JOIN",
                    crate::store::Dialect::Postgres => "JOIN",
                };
                let mut q = Query::new(
                    format!(
                        "{} WHERE k.kind = '{kind}' AND k.owner_id = $1 AND c.owner_id = $1",
                        select_from(
                            &format!("customer_keys k {join} customers c ON c.id = k.customer_id"),
                            "LEFT JOIN"
                        )
                    ),
                    Bind::Text(viewer.to_owned()),
                );
                let k = q.arg(Bind::Text(key));
                q.push(&format!(" AND k.key = {k}"));
                q
            }
            None => Query::new(
                format!("{} WHERE c.owner_id = $1", select("LEFT JOIN")),
                Bind::Text(viewer.to_owned()),
            ),
        };
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
    for (i, condition) in query.conditions.iter().enumerate() {
        if Some(i) != driving_key {
            narrow(&mut q, condition, secret, owned);
        }
    }
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
        .map(|row| {
            let (seen, sort_name) = row.into_seen(viewer)?;
            let cursor = query.order.cursor(&seen, &sort_name);
            Ok((seen, cursor))
        })
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
