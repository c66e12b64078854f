//! Customers, their lookup keys, external ids, overlays and history.
//!
//! Every read joins the viewer's grant (and the partnership it rests on) and the
//! viewer's external id, so the caller can decide visibility with
//! `domain::visibility::access` from one row. Lists filter and sort in SQL on the
//! record as the viewer sees it (a condition on a field its grant hides matches
//! nothing), so pages are full and never shaped by a hidden value; the visibility
//! function and `CustomerFilter::matches` still have the final word on each row.

mod history;
mod overlays;
mod query;
mod row;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use jiff::Timestamp;
use sqlx::any::AnyExecutor;

use super::point::Point;
use super::{Store, Tx, is_unique_violation, micros, placeholders};
use crate::domain::customer::RecordState;
use crate::domain::customer::{Customer, Profile};
use crate::domain::error::{Error, Result};
use crate::domain::filter::Activity;
use crate::domain::match_key::MatchSecret;
use crate::domain::visibility::{GrantStanding, RuleStanding};
use crate::store::interactions::activity;
use crate::store::rules::{standing, standings, standings_sql};

pub use self::history::HistoryEntry;
pub use self::overlays::Overlay;
pub use self::query::{CustomerOrder, CustomerQuery, MatchRule, OrderKey, Reach};
pub use self::row::SeenCustomer;
pub(crate) use self::row::state_name;
use self::row::{Bind, CustomerRow, select};
use super::{parse_fields, parse_level};

/// A grantee's grant on a customer: grantee, level, fields and partnership state.
type AudienceGrantRow = (String, String, String, Option<String>);

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

/// The lookup keys kept for `customer`: those of its profile while it is active or
/// deleted (restorable); none once merged or erased, so it is neither found by
/// filters on contact points nor matched.
fn stored_keys(customer: &Customer, secret: &MatchSecret) -> BTreeSet<(&'static str, String)> {
    match customer.state {
        RecordState::Active | RecordState::Deleted => lookup_keys(customer, secret),
        _ => BTreeSet::new(),
    }
}

/// One customer by id, as the viewer `$1` sees it.
static BY_ID: LazyLock<String> =
    LazyLock::new(|| format!("{} WHERE c.id = $2", select("LEFT JOIN")));

/// One customer by id as the viewer `$1` sees it, without the owner's rules (see
/// [`with_rules`]).
async fn by_id<'c>(
    db: impl AnyExecutor<'c>,
    viewer_id: &str,
    id: &str,
) -> Result<Option<SeenCustomer>> {
    let row: Option<CustomerRow> = sqlx::query_as(&BY_ID)
        .bind(viewer_id)
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(|r| r.into_seen(viewer_id).map(|(seen, _)| seen))
        .transpose()
}

/// Owner's live rules reaching the viewer: `$1` owner, `$2` now, `$3` viewer.
static RULES_FOR_VIEWER: LazyLock<String> = LazyLock::new(|| standings_sql(true));

/// `seen` with the owner's live rules that reach its viewer (and the owner's view of
/// the customer's interactions, if a rule's segment filters on them), read with
/// `db`, if they may matter.
async fn with_rules<'c, E>(db: E, mut seen: SeenCustomer) -> Result<SeenCustomer>
where
    E: AnyExecutor<'c> + Copy,
{
    if seen.wants_rules() {
        let now = crate::domain::now();
        seen.rules = standings(db, &seen.customer.owner.id, Some(&seen.viewer_id), now).await?;
        with_activity(db, &mut seen).await?;
    }
    Ok(seen)
}

/// Reads the owner's view of `seen`'s interactions if one of its rules needs it.
async fn with_activity<'c>(db: impl AnyExecutor<'c>, seen: &mut SeenCustomer) -> Result<()> {
    if seen.rules_need_activity() {
        let c = &seen.customer;
        seen.owner_activity = Some(activity(db, &c.id, &c.owner.id).await?);
    }
    Ok(())
}

fn profile_json(profile: &Profile) -> Result<String> {
    serde_json::to_string(profile).map_err(|e| Error::Internal(anyhow::anyhow!("profile: {e}")))
}

impl Store {
    /// Customer `id` as `viewer_id` sees it: the row, the viewer's grant and the
    /// owner's rules that reach the viewer.
    pub async fn customer(&self, viewer_id: &str, id: &str) -> Result<Option<SeenCustomer>> {
        if let Some(points) = &self.points {
            let now = micros(crate::domain::now());
            let read = points.run(|conn| {
                let mut statement = conn.prepare_cached(&BY_ID)?;
                let mut rows = statement.query(rusqlite::params![viewer_id, id])?;
                let Some(row) = rows.next()?.map(CustomerRow::from_point).transpose()? else {
                    return Ok(None);
                };
                let (owner, active) = row.owner_and_active();
                let mut rules = vec![];
                if owner != viewer_id && active {
                    let mut statement = conn.prepare_cached(&RULES_FOR_VIEWER)?;
                    // By name: SQLite numbers `$n` in the order they first appear.
                    let params =
                        rusqlite::named_params! { "$1": owner, "$2": now, "$3": viewer_id };
                    let mut found = statement.query(params)?;
                    while let Some(r) = found.next()? {
                        rules.push((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                        ));
                    }
                }
                Ok(Some((row, rules)))
            });
            if let Point::Read(read) = read {
                let Some((row, rules)) = read? else {
                    return Ok(None);
                };
                let (mut seen, _) = row.into_seen(viewer_id)?;
                seen.rules = rules.into_iter().map(standing).collect::<Result<_>>()?;
                with_activity(self.reader(), &mut seen).await?;
                return Ok(Some(seen));
            }
        }
        match by_id(self.reader(), viewer_id, id).await? {
            Some(seen) => with_rules(self.reader(), seen).await.map(Some),
            None => Ok(None),
        }
    }

    /// A setting, or `value` stored as it if there is none yet (first writer wins).
    /// Once it exists this is one read, with no write transaction (List calls reload
    /// the page-token keys through it).
    pub async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String> {
        let existing: Option<(String,)> =
            sqlx::query_as("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_optional(self.reader())
                .await?;
        if let Some((stored,)) = existing {
            return Ok(stored);
        }
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
        let Some(mut seen) = by_id(self.conn(), viewer_id, id).await? else {
            return Ok(None);
        };
        if seen.wants_rules() {
            let (owner, now) = (&seen.customer.owner.id, crate::domain::now());
            seen.rules = standings(self.conn(), owner, Some(viewer_id), now).await?;
            with_activity(self.conn(), &mut seen).await?;
        }
        Ok(Some(seen))
    }

    /// The customer as read by each organization that might see it: its owner, every
    /// holder of an unrevoked grant and every partner a live rule of the owner
    /// reaches. Whether each one does is for [`SeenCustomer::access`] to say.
    pub async fn customer_audience(&mut self, id: &str) -> Result<Vec<SeenCustomer>> {
        let Some(base) = by_id(self.conn(), "", id).await? else {
            return Ok(vec![]);
        };
        self.customer_audience_of(&base.customer).await
    }

    /// [`Tx::customer_audience`] of `c` as this transaction holds it (just written,
    /// say), without reading the record again: the external ids, the grants and the
    /// owner's rules, three queries however many grants and rules there are.
    pub async fn customer_audience_of(&mut self, c: &Customer) -> Result<Vec<SeenCustomer>> {
        let id = c.id.as_str();
        let external_ids: BTreeMap<String, String> = sqlx::query_as(
            "SELECT org_id, external_id FROM customer_external_ids WHERE customer_id = $1",
        )
        .bind(id)
        .fetch_all(self.conn())
        .await?
        .into_iter()
        .collect();
        let grants: Vec<AudienceGrantRow> = sqlx::query_as(
            "SELECT g.grantee_id, g.level, g.fields, p.state \
             FROM customer_grants g LEFT JOIN partnerships p ON p.id = g.partnership_id \
             WHERE g.customer_id = $1 AND g.revoke_time IS NULL ORDER BY g.grantee_id",
        )
        .bind(id)
        .fetch_all(self.conn())
        .await?;
        let rules = if c.state == RecordState::Active {
            standings(self.conn(), &c.owner.id, None, crate::domain::now()).await?
        } else {
            vec![]
        };
        // Each viewer once, after the owner: its grant (if any) and the rules reaching it.
        let mut viewers: BTreeMap<String, (Option<GrantStanding>, Vec<RuleStanding>)> =
            BTreeMap::new();
        for (grantee_id, level, fields, partnership_state) in grants {
            let grant = GrantStanding {
                grantee_id: grantee_id.clone(),
                level: parse_level(&level)?,
                fields: parse_fields(&fields)?,
                revoked: false,
                partnership_active: partnership_state.as_deref() == Some("active"),
            };
            viewers.entry(grantee_id).or_default().0 = Some(grant);
        }
        for rule in rules {
            viewers
                .entry(rule.grantee_id.clone())
                .or_default()
                .1
                .push(rule);
        }
        let owner_activity = self
            .owner_activity_for(c, viewers.values().flat_map(|v| &v.1))
            .await?;
        let seen = |viewer_id: &str, grant, rules| SeenCustomer {
            customer: c.clone(),
            grant,
            rules,
            owner_activity: owner_activity.clone(),
            external_id: external_ids.get(viewer_id).cloned(),
            viewer_id: viewer_id.to_owned(),
        };
        let mut audience = vec![seen(&c.owner.id, None, vec![])];
        for (viewer_id, (grant, rules)) in viewers {
            if viewer_id != c.owner.id {
                audience.push(seen(&viewer_id, grant, rules));
            }
        }
        Ok(audience)
    }

    /// Customer `c` (just created, say) as read by each partner a live rule of its
    /// owner reaches, with the rules reaching it; whether a rule covers it is for
    /// [`SeenCustomer::access`] to say.
    pub async fn rule_audience(&mut self, c: &Customer) -> Result<Vec<SeenCustomer>> {
        if c.state != RecordState::Active {
            return Ok(vec![]);
        }
        let rules = standings(self.conn(), &c.owner.id, None, crate::domain::now()).await?;
        let owner_activity = self.owner_activity_for(c, rules.iter()).await?;
        let mut by_viewer: BTreeMap<String, Vec<RuleStanding>> = BTreeMap::new();
        for rule in rules {
            by_viewer
                .entry(rule.grantee_id.clone())
                .or_default()
                .push(rule);
        }
        Ok(by_viewer
            .into_iter()
            .map(|(viewer_id, rules)| SeenCustomer {
                customer: c.clone(),
                grant: None,
                rules,
                owner_activity: owner_activity.clone(),
                external_id: None,
                viewer_id,
            })
            .collect())
    }

    /// The owner's view of `c`'s interactions, if one of `rules` filters on them.
    async fn owner_activity_for<'r>(
        &mut self,
        c: &Customer,
        mut rules: impl Iterator<Item = &'r RuleStanding>,
    ) -> Result<Option<Activity>> {
        let needed = rules.any(|r| r.segment.as_ref().is_some_and(|s| s.needs_activity()));
        if !needed {
            return Ok(None);
        }
        Ok(Some(activity(self.conn(), &c.id, &c.owner.id).await?))
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

    /// Writes `c` (read at `c.revision` as `before`) as the next revision and refreshes
    /// its lookup keys if they changed; false if someone else wrote it since.
    pub async fn update_customer(
        &mut self,
        before: &Customer,
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
        // Most updates touch no contact point or tag: the keys stay as they are (they
        // were written from `before` with the same secret).
        if stored_keys(before, secret) != stored_keys(c, secret) {
            self.replace_keys(c, secret).await?;
        }
        Ok(true)
    }

    /// Lookup keys follow the profile (see [`stored_keys`]).
    async fn replace_keys(&mut self, c: &Customer, secret: &MatchSecret) -> Result<()> {
        sqlx::query("DELETE FROM customer_keys WHERE customer_id = $1")
            .bind(&c.id)
            .execute(self.conn())
            .await?;
        let keys: Vec<(&str, String)> = stored_keys(c, secret).into_iter().collect();
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
        self.move_totals(loser, survivor).await?;
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
            "DELETE FROM interaction_totals WHERE customer_id = $1",
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
