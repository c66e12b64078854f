//! Shared customer records: create, update, delete, merge, erase, upsert by external
//! id, the owner's overlay, history, duplicates.
//!
//! Every read goes through [`visible`]/[`visible_in`], which ask the one visibility
//! function (`domain::visibility::access`) and answer NOT_FOUND when it says no; what
//! a caller gets back is a [`SeenCustomer`] with its [`Access`], which the edge renders
//! through `Access::view`, so a grantee only ever receives the fields granted to it.

use std::collections::BTreeMap;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use uuid::Uuid;

use super::check_etag;
use crate::config::CustomersConfig;
use crate::domain::caller::Caller;
use crate::domain::customer::{Customer, CustomerField, CustomerKind, FieldChange, PhoneRegion};
use crate::domain::customer::{Profile, RecordState};
use crate::domain::error::{Error, Result, Violations};
use crate::domain::event::EventType;
use crate::domain::filter::{Activity, CustomerCondition, CustomerFacts, CustomerFilter};
use crate::domain::ids::CustomerId;
use crate::domain::match_key::MatchSecret;
use crate::domain::metrics::CustomerMetrics;
use crate::domain::names;
use crate::domain::visibility::{Access, AccessLevel};
use crate::domain::{OrgRef, Reason, now};
use crate::feed::customers::{
    CustomerChange, coverage_changed, customer_changed, customer_viewers, overlay_updated, tell,
};
use crate::store::{
    CustomerOrder, CustomerQuery, HistoryEntry, MatchRule, Overlay, Page, Reach, SeenCustomer,
    Store, Tx,
};

/// Most customers in one batch upsert.
pub const MAX_BATCH: usize = 1000;
/// Most customers merged into a survivor in one call.
pub const MAX_MERGED: usize = 20;
/// Most duplicate candidates returned.
const MAX_CANDIDATES: usize = 100;

/// How customers are read and matched on this hub.
pub struct CustomerSettings {
    /// Region of phone numbers written without a country code.
    pub region: PhoneRegion,
    pub secret: MatchSecret,
}

impl CustomerSettings {
    /// Reads the settings; with no configured match secret, the one kept in the
    /// database is used, generated on first start (so every replica shares it).
    pub async fn load(store: &Store, config: &CustomersConfig) -> anyhow::Result<Self> {
        let region = PhoneRegion::parse(&config.default_phone_region)
            .map_err(|v| anyhow::anyhow!("customers.default_phone_region: {}", v.description))?;
        let secret = if config.match_secret.is_empty() {
            let mut fresh = [0u8; 32];
            getrandom::fill(&mut fresh).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let stored = store
                .setting_or_insert("match_secret", &STANDARD.encode(fresh))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            MatchSecret::decode(&stored).context("the match secret kept in the database")?
        } else {
            MatchSecret::decode(&config.match_secret).context("customers.match_secret")?
        };
        Ok(Self { region, secret })
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("customer {name:?}"))
}

enum Found {
    Visible(Box<SeenCustomer>, Access),
    Merged(String),
    Missing,
}

fn decide(seen: Option<SeenCustomer>) -> Found {
    let Some(seen) = seen else {
        return Found::Missing;
    };
    match seen.access() {
        Some(access) => Found::Visible(Box::new(seen), access),
        None => match (&seen.customer.state, &seen.customer.merged_into) {
            (RecordState::Merged, Some(survivor)) => Found::Merged(survivor.clone()),
            _ => Found::Missing,
        },
    }
}

/// Where a customer is read from: the pool, or a write transaction.
enum Reader<'a> {
    Store(&'a Store),
    Tx(&'a mut Tx),
}

impl Reader<'_> {
    async fn customer(&mut self, viewer_id: &str, id: &str) -> Result<Option<SeenCustomer>> {
        match self {
            Reader::Store(store) => store.customer(viewer_id, id).await,
            Reader::Tx(tx) => tx.customer(viewer_id, id).await,
        }
    }
}

/// The customer `id` and how `viewer` may see it, or NOT_FOUND, naming the survivor
/// of a merge if the viewer may see that one.
async fn resolve(
    mut reader: Reader<'_>,
    viewer: &OrgRef,
    id: &str,
    name: &str,
) -> Result<(SeenCustomer, Access)> {
    match decide(reader.customer(&viewer.id, id).await?) {
        Found::Visible(seen, access) => Ok((*seen, access)),
        Found::Merged(survivor) => match decide(reader.customer(&viewer.id, &survivor).await?) {
            Found::Visible(..) => Err(Error::Merged {
                name: name.to_owned(),
                survivor: names::customer(&survivor),
            }),
            _ => Err(not_found(name)),
        },
        Found::Missing => Err(not_found(name)),
    }
}

/// The customer `id` (called `name` in errors) as `viewer` may see it (see
/// [`resolve`]).
pub async fn visible(
    store: &Store,
    viewer: &OrgRef,
    id: &str,
    name: &str,
) -> Result<(SeenCustomer, Access)> {
    resolve(Reader::Store(store), viewer, id, name).await
}

/// Who sees `customer` now, read before a change to what its owner knows of it
/// (its interactions, its cases, its overlay) that may move it into or out of a
/// rule's segment filtering on that; hand it to [`coverage_after`].
pub(super) async fn audience_before(tx: &mut Tx, customer: &Customer) -> Result<Vec<SeenCustomer>> {
    tx.customer_audience_of(customer).await
}

/// After such a change: tells each organization whose view of `customer` it moved
/// (see `coverage_changed`), and returns who sees it now.
pub(super) async fn coverage_after(
    tx: &mut Tx,
    customer: &Customer,
    before: Vec<SeenCustomer>,
) -> Result<Vec<SeenCustomer>> {
    if !before.iter().any(|s| s.rules_need_activity()) {
        return Ok(before);
    }
    let after = tx.customer_audience_of(customer).await?;
    coverage_changed(tx, customer, &before, &after);
    Ok(after)
}

/// [`visible`] inside a write transaction.
pub async fn visible_in(
    tx: &mut Tx,
    viewer: &OrgRef,
    id: &str,
    name: &str,
) -> Result<(SeenCustomer, Access)> {
    resolve(Reader::Tx(tx), viewer, id, name).await
}

fn only_owner(access: Access, what: &str) -> Result<()> {
    if access.is_owner() {
        Ok(())
    } else {
        Err(Error::PermissionDenied {
            reason: "NOT_CUSTOMER_OWNER",
            message: format!("only the customer's owner may {what}"),
        })
    }
}

fn must_be_active(c: &Customer, name: &str) -> Result<()> {
    match c.state {
        RecordState::Active => Ok(()),
        RecordState::Deleted => Err(Error::failed_precondition(
            "CUSTOMER_DELETED",
            format!("{name} is deleted; undelete it first"),
        )),
        RecordState::Erased => Err(Error::failed_precondition(
            "CUSTOMER_ERASED",
            format!("{name} was erased"),
        )),
        RecordState::Merged => Err(not_found(name)),
    }
}

/// A history entry of a change `caller` made.
pub fn entry(
    caller: &Caller,
    customer_id: &str,
    action: &'static str,
    changes: Vec<FieldChange>,
    note: String,
) -> HistoryEntry {
    HistoryEntry {
        id: Uuid::now_v7().to_string(),
        customer_id: customer_id.to_owned(),
        time: now(),
        org: caller.organization().ok().cloned(),
        key_id: caller.key_id.clone(),
        action,
        private_to: None,
        changes,
        note,
    }
}

fn created_changes(profile: &Profile) -> Vec<FieldChange> {
    profile
        .changes_since(&Profile::default())
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

/// Checks `profile` against the rules of `kind`, naming fields under `at`.
pub fn check_profile(profile: &Profile, kind: CustomerKind, at: &str) -> Result<()> {
    let mut v = Violations::new();
    profile.check(kind, &mut v);
    v.finish().map_err(|e| match e {
        Error::InvalidArgument(list) => {
            Error::InvalidArgument(list.into_iter().map(|x| x.under(at)).collect())
        }
        other => other,
    })
}

/// A new customer of `owner`, not yet stored: its id is chosen here, once, so a
/// retried create writes the same record.
pub fn new_customer(owner: &OrgRef, kind: CustomerKind, profile: Profile) -> Customer {
    let now = now();
    Customer {
        id: Uuid::now_v7().to_string(),
        owner: owner.clone(),
        kind,
        state: RecordState::Active,
        profile,
        merged_into: None,
        create_time: now,
        update_time: now,
        delete_time: None,
        revision: 1,
    }
}

/// Stores `customer` (from [`new_customer`]) with its owner's `external_id`, its
/// history entry and its event.
pub async fn create(
    tx: &mut Tx,
    settings: &CustomerSettings,
    caller: &Caller,
    customer: &Customer,
    external_id: Option<&str>,
) -> Result<SeenCustomer> {
    tx.insert_customer(customer, &settings.secret).await?;
    if let Some(x) = external_id {
        tx.set_external_id(&customer.owner.id, &customer.id, Some(x))
            .await?;
    }
    let e = entry(
        caller,
        &customer.id,
        "created",
        created_changes(&customer.profile),
        String::new(),
    );
    tx.insert_history(&e).await?;
    let seen = tx
        .customer(&customer.owner.id, &customer.id)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("customer vanished in its transaction")))?;
    let change = CustomerChange {
        event_type: EventType::CustomerCreated,
        id: &customer.id,
        before: None,
        merged_customers: vec![],
        saw_before: vec![],
        before_audience: None,
    };
    // A new record's audience: its owner, and the partners the owner's rules reach
    // if it lands in a segment they share.
    let mut audience = vec![seen.clone()];
    audience.extend(tx.rule_audience(&seen.customer).await?);
    tell(tx, change, &audience);
    Ok(seen)
}

/// What a change to a record did, for its history and its event.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Updated,
    Deleted,
    Undeleted,
    Merged,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Updated => "updated",
            Action::Deleted => "deleted",
            Action::Undeleted => "undeleted",
            Action::Merged => "merged",
        }
    }

    fn event_type(self) -> EventType {
        match self {
            Action::Updated => EventType::CustomerUpdated,
            Action::Deleted => EventType::CustomerDeleted,
            Action::Undeleted => EventType::CustomerUndeleted,
            Action::Merged => EventType::CustomerMerged,
        }
    }
}

/// Writes `after` over `before` as the next revision with a history entry and its
/// events; false if someone wrote it meanwhile. `merged` names the records a merge
/// folded in.
#[allow(clippy::too_many_arguments)]
async fn write_change(
    tx: &mut Tx,
    settings: &CustomerSettings,
    caller: &Caller,
    before: &Customer,
    after: &mut Customer,
    action: Action,
    note: String,
    (merged, before_audience): (Vec<String>, Option<&[SeenCustomer]>),
) -> Result<bool> {
    let changes: Vec<FieldChange> = after
        .profile
        .changes_since(&before.profile)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    // A state change may hide the record from grantees; they still hear of it.
    let saw_before = if after.state == before.state {
        vec![]
    } else {
        customer_viewers(tx, &after.id).await?
    };
    after.update_time = now();
    if !tx.update_customer(before, after, &settings.secret).await? {
        return Ok(false);
    }
    tx.insert_history(&entry(caller, &after.id, action.as_str(), changes, note))
        .await?;
    customer_changed(
        tx,
        CustomerChange {
            event_type: action.event_type(),
            id: &after.id,
            before: Some(before),
            merged_customers: merged,
            saw_before,
            before_audience,
        },
        after,
    )
    .await?;
    Ok(true)
}

/// Replaces the profile fields in `fields` with those of `input`, refusing any the
/// caller may not change.
fn apply_fields(
    access: Access,
    fields: &[CustomerField],
    current: &Profile,
    input: &Profile,
) -> Result<Profile> {
    let mut next = current.clone();
    for field in fields {
        if !access.may_change(*field) {
            return Err(Error::PermissionDenied {
                reason: "FIELD_NOT_WRITABLE",
                message: match access {
                    Access::Grantee {
                        level: AccessLevel::Read,
                        ..
                    } => "your access to this customer is read-only".to_owned(),
                    _ => format!(
                        "no grant or sharing rule lets you change {}",
                        field.as_str()
                    ),
                },
            });
        }
        next.set_from(*field, input);
    }
    Ok(next)
}

/// Sets `fields` of `profile` on `seen` (read inside the transaction) as the next
/// revision, or returns it as it is if nothing changes. `at` is where the profile's
/// fields are named in errors.
async fn change_profile(
    tx: &mut Tx,
    settings: &CustomerSettings,
    caller: &Caller,
    (seen, access): (SeenCustomer, Access),
    name: &str,
    (fields, profile): (&[CustomerField], &Profile),
    at: &str,
) -> Result<(SeenCustomer, Access, Outcome)> {
    let next = apply_fields(access, fields, &seen.customer.profile, profile)?;
    if next == seen.customer.profile {
        return Ok((seen, access, Outcome::Unchanged));
    }
    check_profile(&next, seen.customer.kind, at)?;
    let mut after = seen.customer.clone();
    after.profile = next;
    let before = &seen.customer;
    if !write_change(
        tx,
        settings,
        caller,
        before,
        &mut after,
        Action::Updated,
        String::new(),
        (vec![], None),
    )
    .await?
    {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    let seen = SeenCustomer {
        customer: after,
        ..seen
    };
    Ok((seen, access, Outcome::Updated))
}

/// A change to some profile fields of one customer.
pub struct ProfileUpdate<'a> {
    pub id: &'a CustomerId,
    /// The customer's resource name as the caller wrote it.
    pub name: &'a str,
    /// The etag the caller read it at; empty to write over any revision.
    pub etag: &'a str,
    /// The fields to set; each takes its value from `profile`.
    pub fields: &'a [CustomerField],
    pub profile: &'a Profile,
}

/// Updates the fields `u` names, as far as the caller's access lets it.
pub async fn update(
    tx: &mut Tx,
    settings: &CustomerSettings,
    caller: &Caller,
    u: ProfileUpdate<'_>,
) -> Result<(SeenCustomer, Access)> {
    let org = caller.organization()?;
    let (seen, access) = visible_in(tx, org, u.id, u.name).await?;
    must_be_active(&seen.customer, u.name)?;
    check_etag(u.etag, seen.customer.revision, u.name)?;
    let (seen, access, _) = change_profile(
        tx,
        settings,
        caller,
        (seen, access),
        u.name,
        (u.fields, u.profile),
        "customer",
    )
    .await?;
    Ok((seen, access))
}

/// Soft delete (`delete`) or undelete, by the owner.
pub async fn set_state(
    tx: &mut Tx,
    settings: &CustomerSettings,
    caller: &Caller,
    (id, name, etag): (&CustomerId, &str, &str),
    delete: bool,
) -> Result<(SeenCustomer, Access)> {
    let org = caller.organization()?;
    let (seen, access) = visible_in(tx, org, id, name).await?;
    only_owner(access, if delete { "delete it" } else { "undelete it" })?;
    check_etag(etag, seen.customer.revision, name)?;
    let (from, to, action) = if delete {
        (RecordState::Active, RecordState::Deleted, Action::Deleted)
    } else {
        (RecordState::Deleted, RecordState::Active, Action::Undeleted)
    };
    if seen.customer.state != from {
        return Err(Error::failed_precondition(
            if delete {
                "CUSTOMER_NOT_ACTIVE"
            } else {
                "CUSTOMER_NOT_DELETED"
            },
            format!(
                "{name} is not {}",
                if delete { "active" } else { "deleted" }
            ),
        ));
    }
    let mut after = seen.customer.clone();
    after.state = to;
    after.delete_time = delete.then(now);
    if !write_change(
        tx,
        settings,
        caller,
        &seen.customer,
        &mut after,
        action,
        String::new(),
        (vec![], None),
    )
    .await?
    {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    let seen = SeenCustomer {
        customer: after,
        ..seen
    };
    Ok((seen, access))
}

/// What an upsert did to one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// One record of a batch upsert, keyed by its owner's external id.
pub struct Upsert {
    pub kind: CustomerKind,
    pub external_id: String,
    pub profile: Profile,
}

/// Creates or updates each of `items` by external id, in order, in one transaction;
/// an error names the item (`customers[i]`).
pub async fn upsert(
    tx: &mut Tx,
    settings: &CustomerSettings,
    caller: &Caller,
    items: &[Upsert],
) -> Result<Vec<(SeenCustomer, Access, Outcome)>> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        out.push(
            upsert_one(tx, settings, caller, item)
                .await
                .map_err(|e| within_item(e, i))?,
        );
    }
    Ok(out)
}

async fn upsert_one(
    tx: &mut Tx,
    settings: &CustomerSettings,
    caller: &Caller,
    item: &Upsert,
) -> Result<(SeenCustomer, Access, Outcome)> {
    let org = caller.organization()?;
    let (kind, external_id, profile) = (item.kind, &item.external_id, &item.profile);
    let Some(id) = tx.customer_by_external_id(&org.id, external_id).await? else {
        let customer = new_customer(org, kind, profile.clone());
        check_profile(&customer.profile, kind, "")?;
        let seen = create(tx, settings, caller, &customer, Some(external_id)).await?;
        return Ok((seen, Access::Owner, Outcome::Created));
    };
    let name = names::customer(&id);
    let (seen, access) = visible_in(tx, org, &id, &name).await.map_err(|e| match e {
        Error::NotFound(_) | Error::Merged { .. } => Error::failed_precondition(
            "CUSTOMER_NOT_VISIBLE",
            format!(
                "external id {external_id:?} names {name}, which your organization can no longer see"
            ),
        ),
        other => other,
    })?;
    must_be_active(&seen.customer, &name)?;
    if seen.customer.kind != kind {
        return Err(Error::invalid(
            "kind",
            format!(
                "{name} is a {}; the kind cannot change",
                seen.customer.kind.as_str()
            ),
        ));
    }
    // Fields the caller may not change must come empty (it cannot see them).
    let fields: Vec<CustomerField> = CustomerField::SETTABLE
        .into_iter()
        .filter(|f| access.may_change(*f) || profile.value_of(*f).is_some())
        .collect();
    change_profile(
        tx,
        settings,
        caller,
        (seen, access),
        &name,
        (&fields, profile),
        "",
    )
    .await
}

/// Says which batch item an error is about.
fn within_item(error: Error, i: usize) -> Error {
    let at = format!("customers[{i}]");
    match error {
        Error::InvalidArgument(list) => {
            Error::InvalidArgument(list.into_iter().map(|v| v.under(&at)).collect())
        }
        Error::PermissionDenied { reason, message } => Error::PermissionDenied {
            reason,
            message: format!("{at}: {message}"),
        },
        Error::FailedPrecondition { reason, message } => Error::FailedPrecondition {
            reason,
            message: format!("{at}: {message}"),
        },
        Error::AlreadyExists { reason, message } => Error::AlreadyExists {
            reason,
            message: format!("{at}: {message}"),
        },
        other => other,
    }
}

/// The records that may be duplicates of the caller's customer `id`, each as the
/// caller sees it, with the rules it matched by.
pub async fn duplicates(
    store: &Store,
    caller: &Caller,
    id: &CustomerId,
    name: &str,
) -> Result<Vec<(SeenCustomer, Access, Vec<MatchRule>)>> {
    let org = caller.organization()?;
    let (_, access) = visible(store, org, id, name).await?;
    only_owner(access, "look for its duplicates")?;
    let found = store
        .duplicate_candidates(&org.id, id, MAX_CANDIDATES)
        .await?;
    let mut candidates = vec![];
    for (candidate, rules) in found {
        if let Some(seen) = store.customer(&org.id, &candidate).await?
            && let Some(access) = seen.access()
        {
            candidates.push((seen, access, rules));
        }
    }
    Ok(candidates)
}

/// A merge of `losers` into `survivor_id`.
pub struct Merge<'a> {
    pub survivor_id: &'a CustomerId,
    /// The survivor's resource name as the caller wrote it.
    pub name: &'a str,
    pub etag: &'a str,
    pub losers: &'a [CustomerId],
}

/// Folds the losers into the survivor: their profiles are absorbed, their dependents
/// move, and they point at the survivor from then on. Owner only.
pub async fn merge(
    tx: &mut Tx,
    settings: &CustomerSettings,
    caller: &Caller,
    m: Merge<'_>,
) -> Result<SeenCustomer> {
    let org = caller.organization()?;
    let (survivor_id, name) = (m.survivor_id, m.name);
    let mut ids = vec![survivor_id.as_str()];
    ids.extend(m.losers.iter().map(CustomerId::as_str));
    tx.lock_customers(&ids).await?;
    // A record merged away while this merge waited for its lock: the other merge won.
    let lost = |e: Error| match e {
        Error::Merged { name, survivor } => Error::failed_precondition(
            "CUSTOMER_MERGED",
            format!("{name} was merged into {survivor}"),
        ),
        other => other,
    };
    let (survivor, access) = visible_in(tx, org, survivor_id, name).await.map_err(lost)?;
    only_owner(access, "merge it")?;
    must_be_active(&survivor.customer, name)?;
    check_etag(m.etag, survivor.customer.revision, name)?;
    // Who sees the survivor before anything moves: the losers' interactions moving
    // in can move it into or out of a rule's segment that filters on them.
    let before_audience = tx.customer_audience_of(&survivor.customer).await?;
    let mut after = survivor.customer.clone();
    for (i, loser_id) in m.losers.iter().enumerate() {
        let loser_name = names::customer(loser_id);
        let (loser, access) =
            visible_in(tx, org, loser_id, &loser_name)
                .await
                .map_err(|e| match e {
                    Error::NotFound(m) => Error::NotFound(format!("merged[{i}]: {m}")),
                    other => lost(other),
                })?;
        only_owner(access, "merge it")?;
        must_be_active(&loser.customer, &loser_name)?;
        after.profile.absorb(&loser.customer.profile);
        let mut gone = loser.customer.clone();
        gone.state = RecordState::Merged;
        gone.merged_into = Some(survivor_id.to_string());
        gone.update_time = now();
        gone.delete_time = Some(gone.update_time);
        if !tx
            .update_customer(&loser.customer, &mut gone, &settings.secret)
            .await?
        {
            return Err(Error::StaleEtag(loser_name));
        }
        tx.move_customer_dependents(loser_id, survivor_id).await?;
    }
    let merged: Vec<String> = m.losers.iter().map(|l| names::customer(l)).collect();
    let note = format!("merged {}", merged.join(", "));
    if !write_change(
        tx,
        settings,
        caller,
        &survivor.customer,
        &mut after,
        Action::Merged,
        note,
        (merged, Some(&before_audience)),
    )
    .await?
    {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    tx.customer(&org.id, survivor_id)
        .await?
        .ok_or_else(|| not_found(name))
}

/// Erases customer `id` for `reason`: its profile and dependents are wiped for good,
/// the record stays as a tombstone. Owner only; erasing twice changes nothing.
pub async fn erase(
    tx: &mut Tx,
    settings: &CustomerSettings,
    caller: &Caller,
    (id, name): (&CustomerId, &str),
    reason: Reason,
) -> Result<(SeenCustomer, Access)> {
    let org = caller.organization()?;
    let (seen, access) = visible_in(tx, org, id, name).await?;
    only_owner(access, "erase it")?;
    if seen.customer.state == RecordState::Erased {
        return Ok((seen, access));
    }
    let saw_before = customer_viewers(tx, id).await?;
    let now = now();
    let mut after = seen.customer.clone();
    after.profile = Profile::default();
    after.state = RecordState::Erased;
    after.update_time = now;
    after.delete_time = Some(now);
    if !tx
        .update_customer(&seen.customer, &mut after, &settings.secret)
        .await?
    {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    tx.erase_customer_dependents(id, now).await?;
    let e = entry(caller, id, "erased", vec![], reason.as_str().to_owned());
    tx.insert_history(&e).await?;
    customer_changed(
        tx,
        CustomerChange {
            event_type: EventType::CustomerErased,
            id,
            before: Some(&seen.customer),
            merged_customers: vec![],
            saw_before,
            before_audience: None,
        },
        &after,
    )
    .await?;
    let seen = SeenCustomer {
        customer: after,
        external_id: None,
        ..seen
    };
    Ok((seen, access))
}

/// Whose customers a filter can match for `org`: all it sees, only its own or only
/// others'; `None` if its conditions contradict each other.
fn reach_of(filter: &CustomerFilter, org: &OrgRef) -> Option<Reach> {
    let mut reach = Reach::All;
    for condition in &filter.conditions {
        let only = match condition {
            CustomerCondition::Owner(slug) if *slug == org.slug => Reach::Owned,
            CustomerCondition::Owner(_) => Reach::Granted,
            CustomerCondition::Granted(true) => Reach::Granted,
            CustomerCondition::Granted(false) => Reach::Owned,
            _ => continue,
        };
        if reach != Reach::All && reach != only {
            return None;
        }
        reach = only;
    }
    Some(reach)
}

/// How many customers the caller may see match `filter` now.
pub async fn count(
    store: &Store,
    settings: &CustomerSettings,
    caller: &Caller,
    filter: &CustomerFilter,
) -> Result<i64> {
    let org = caller.organization()?;
    let Some(reach) = reach_of(filter, org) else {
        return Ok(0);
    };
    let query = CustomerQuery {
        viewer_id: &org.id,
        conditions: &filter.conditions,
        order: CustomerOrder {
            key: crate::store::OrderKey::Id,
            descending: false,
        },
        show_deleted: false,
        reach,
        after: None,
        limit: 0,
    };
    store.count_customers(&query, &settings.secret).await
}

/// One page of a customer listing.
pub struct Listing<'a> {
    pub filter: &'a CustomerFilter,
    pub order: CustomerOrder,
    pub show_deleted: bool,
    /// The last row of the previous page.
    pub after: Option<&'a str>,
    pub limit: usize,
}

impl<'a> Listing<'a> {
    /// Live customers matching `filter`, in creation order: how segments and mappings
    /// walk their members.
    pub fn by_creation(filter: &'a CustomerFilter, after: Option<&'a str>, limit: usize) -> Self {
        Self {
            filter,
            order: CustomerOrder {
                key: crate::store::OrderKey::Id,
                descending: false,
            },
            show_deleted: false,
            after,
            limit,
        }
    }
}

/// The customers the caller may see that match the listing's filter, each with how
/// the caller sees it, and the row to continue after.
pub async fn list(
    store: &Store,
    settings: &CustomerSettings,
    caller: &Caller,
    l: Listing<'_>,
) -> Result<Page<(SeenCustomer, Access)>> {
    let page = list_with_activity(store, settings, caller, l).await?;
    Ok(Page {
        items: page.items.into_iter().map(|(s, a, _)| (s, a)).collect(),
        next_after: page.next_after,
    })
}

/// [`list`], each customer with what the caller knows of it beyond the record where
/// the filter needed it read ([`CustomerFilter::needs_activity`]).
pub async fn list_with_activity(
    store: &Store,
    settings: &CustomerSettings,
    caller: &Caller,
    l: Listing<'_>,
) -> Result<Page<(SeenCustomer, Access, Option<Activity>)>> {
    let org = caller.organization()?;
    let Some(reach) = reach_of(l.filter, org) else {
        return Ok(Page {
            items: vec![],
            next_after: None,
        });
    };
    let found = store
        .customers(
            &CustomerQuery {
                viewer_id: &org.id,
                conditions: &l.filter.conditions,
                order: l.order,
                show_deleted: l.show_deleted,
                reach,
                after: l.after,
                limit: l.limit,
            },
            &settings.secret,
        )
        .await?;
    // SQL filtered on the viewer's view already; visibility and the filter on the
    // masked view have the final word on each row.
    let now = now();
    // The viewer's view of each row's interactions, in one read, if the filter asks.
    let activities = if l.filter.needs_activity() {
        let ids: Vec<&str> = found.items.iter().map(|s| s.customer.id.as_str()).collect();
        Some(store.activities(&ids, Some(&org.id)).await?)
    } else {
        None
    };
    let mut customers = vec![];
    for seen in found.items {
        let Some(access) = seen.access() else {
            continue;
        };
        let activity = activities
            .as_ref()
            .map(|a| a.get(&seen.customer.id).cloned().unwrap_or_default());
        let view = access.view(seen.customer.kind, &seen.customer.profile);
        let facts = CustomerFacts {
            view: &view,
            kind: seen.customer.kind,
            owner: &seen.customer.owner.slug,
            external_id: seen.external_id.as_deref(),
            update_time: seen.customer.update_time,
            granted: !access.is_owner(),
            activity: activity.as_ref(),
            now,
        };
        if l.filter.matches(&facts) {
            customers.push((seen, access, activity));
        }
    }
    Ok(Page {
        items: customers,
        next_after: found.next_after,
    })
}

/// A history entry as `viewer_id` (with `access` to the customer) may read it; `None`
/// if it tells the viewer nothing it may know.
fn readable(mut e: HistoryEntry, viewer_id: &str, access: Access) -> Option<HistoryEntry> {
    if e.private_to.as_ref().is_some_and(|p| p != viewer_id) {
        return None;
    }
    let private = e.private_to.is_some();
    e.changes
        .retain(|c| private || CustomerField::parse(&c.field).is_some_and(|f| access.sees(f)));
    // An update of fields this viewer may not see tells it nothing.
    if e.action == "updated" && e.changes.is_empty() {
        return None;
    }
    // Notes name merged records and erasure reasons: the owner's business.
    if !(access.is_owner() || private) {
        e.note.clear();
    }
    Some(e)
}

/// Up to `size` history entries of customer `id` that `viewer` (with `access` to it,
/// as [`visible`] found) may read, after the entry `after`, and the entry to continue
/// after. An entry the viewer may not read is skipped; pages are filled from the next
/// rows, and the entry to continue after is always one the viewer was shown.
pub async fn history(
    store: &Store,
    viewer: &OrgRef,
    (id, access): (&CustomerId, Access),
    mut after: Option<String>,
    size: usize,
) -> Result<Page<HistoryEntry>> {
    let org = viewer;
    let mut entries = Vec::with_capacity(size);
    loop {
        let found = store
            .customer_history(id, &org.id, after.as_deref(), size)
            .await?;
        let more = found.next_after.is_some();
        let count = found.items.len();
        for (i, e) in found.items.into_iter().enumerate() {
            let entry_id = e.id.clone();
            after = Some(entry_id.clone());
            let Some(shown) = readable(e, &org.id, access) else {
                continue;
            };
            entries.push(shown);
            if entries.len() == size {
                let next = (more || i + 1 < count).then_some(entry_id);
                return Ok(Page {
                    items: entries,
                    next_after: next,
                });
            }
        }
        if !more {
            return Ok(Page {
                items: entries,
                next_after: None,
            });
        }
    }
}

/// The caller's overlay on customer `id` and the caller's external id for it.
pub async fn overlay(
    store: &Store,
    caller: &Caller,
    id: &CustomerId,
) -> Result<(Overlay, Option<String>)> {
    let org = caller.organization()?;
    let (seen, _) = visible(store, org, id, &names::customer(id)).await?;
    let overlay = store.overlay(id, &org.id).await?;
    Ok((overlay, seen.external_id))
}

/// A change to some fields of the caller's overlay on a customer.
pub struct OverlayUpdate<'a> {
    pub customer_id: &'a CustomerId,
    /// The overlay's resource name as the caller wrote it.
    pub name: &'a str,
    pub etag: &'a str,
    /// The fields to set (`external_id`, `account_number`, `status`, `notes`,
    /// `attributes`), each from `external_id` or `wanted`.
    pub paths: &'a [String],
    pub external_id: Option<String>,
    pub wanted: Overlay,
}

/// Sets the fields `u` names on the caller's overlay (private to the caller's
/// organization, as is its history entry and its event).
pub async fn update_overlay(
    tx: &mut Tx,
    caller: &Caller,
    u: OverlayUpdate<'_>,
) -> Result<(Overlay, Option<String>)> {
    let org = caller.organization()?;
    let id = u.customer_id;
    let (seen, _) = visible_in(tx, org, id, &names::customer(id)).await?;
    // The owner's overlay is what its rules' segments read.
    let audience = if seen.customer.owner.id == org.id {
        Some(audience_before(tx, &seen.customer).await?)
    } else {
        None
    };
    let before = tx.overlay(id, &org.id).await?;
    check_etag(u.etag, before.revision, u.name)?;
    let mut after = before.clone();
    let mut external_id = seen.external_id.clone();
    let mut changes = vec![];
    let json = |s: &str| (!s.is_empty()).then(|| serde_json::Value::from(s));
    let wanted = u.wanted;
    for path in u.paths {
        let (old, new) = match path.as_str() {
            "external_id" => {
                let old = external_id.clone();
                external_id = u.external_id.clone();
                (
                    json(old.as_deref().unwrap_or("")),
                    json(u.external_id.as_deref().unwrap_or("")),
                )
            }
            "account_number" => {
                let old =
                    std::mem::replace(&mut after.account_number, wanted.account_number.clone());
                (json(&old), json(&after.account_number))
            }
            "status" => {
                let old = std::mem::replace(&mut after.status, wanted.status.clone());
                (json(&old), json(&after.status))
            }
            "notes" => {
                let old = std::mem::replace(&mut after.notes, wanted.notes.clone());
                (json(&old), json(&after.notes))
            }
            _ => {
                let old = std::mem::replace(&mut after.attributes, wanted.attributes.clone());
                let as_json = |m: &BTreeMap<String, String>| {
                    (!m.is_empty()).then(|| serde_json::to_value(m).unwrap_or_default())
                };
                (as_json(&old), as_json(&after.attributes))
            }
        };
        if old != new {
            changes.push(FieldChange {
                field: format!("overlay.{path}"),
                old,
                new,
            });
        }
    }
    if changes.is_empty() {
        return Ok((before, seen.external_id));
    }
    let changed_paths: Vec<String> = changes
        .iter()
        .map(|c| c.field.trim_start_matches("overlay.").to_owned())
        .collect();
    if external_id != seen.external_id {
        tx.set_external_id(&org.id, id, external_id.as_deref())
            .await?;
    }
    if !tx.write_overlay(id, &org.id, &mut after, now()).await? {
        return Err(Error::StaleEtag(u.name.to_owned()));
    }
    let mut e = entry(caller, id, "overlay_updated", changes, String::new());
    e.private_to = Some(org.id.clone());
    tx.insert_history(&e).await?;
    if let Some(audience) = audience {
        coverage_after(tx, &seen.customer, audience).await?;
    }
    overlay_updated(tx, &org.id, id, &after, &external_id, changed_paths);
    Ok((after, external_id))
}

/// The metrics shown with `found` (customers read by `org`, each with its access):
/// `org`'s own of each, and the owner's where the access shows the `owner_metrics`
/// field (the owner's own access does).
pub async fn metrics_of(
    store: &Store,
    org: &OrgRef,
    found: &[(SeenCustomer, Access)],
) -> Result<Vec<(CustomerMetrics, Option<CustomerMetrics>)>> {
    let wanted: Vec<Wanted<'_>> = found
        .iter()
        .map(|(s, access)| Wanted {
            id: &s.customer.id,
            owned: s.customer.owner.id == org.id,
            owners_shown: access.sees(CustomerField::OwnerMetrics),
        })
        .collect();
    metrics_for(store, org, &wanted).await
}

/// One customer whose metrics are shown to `org`: whether `org` owns it, and whether
/// the visibility function showed it the `owner_metrics` field.
pub struct Wanted<'a> {
    pub id: &'a str,
    pub owned: bool,
    pub owners_shown: bool,
}

/// `org`'s metrics of each of `wanted`, and the owner's where shown (for the owner,
/// its own).
pub async fn metrics_for(
    store: &Store,
    org: &OrgRef,
    wanted: &[Wanted<'_>],
) -> Result<Vec<(CustomerMetrics, Option<CustomerMetrics>)>> {
    let ids: Vec<&str> = wanted.iter().map(|w| w.id).collect();
    let mut own = store.activities(&ids, Some(&org.id)).await?;
    let theirs: Vec<&str> = wanted
        .iter()
        .filter(|w| !w.owned && w.owners_shown)
        .map(|w| w.id)
        .collect();
    let owners = store.activities(&theirs, None).await?;
    Ok(wanted
        .iter()
        .map(|w| {
            let mine = own.remove(w.id).unwrap_or_default().metrics();
            let owner = if w.owned {
                Some(mine.clone())
            } else {
                owners.get(w.id).map(|a| a.metrics())
            };
            (mine, owner)
        })
        .collect())
}
