//! Sharing customers with partners: grants by the owner, matches that let a partner
//! find out that an owner holds a customer it knows (without learning who), and
//! access requests through a match, which the owner approves (as a grant) or
//! declines.

use std::collections::HashSet;

use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use super::check_etag;
use super::customers::{visible, visible_in};
use crate::domain::caller::Caller;
use crate::domain::customer::{FieldSet, RecordState};
use crate::domain::error::{Error, Result};
use crate::domain::event::EventType;
use crate::domain::ids::{AccessRequestId, CustomerId, GrantId, MatchId, PresetId};
use crate::domain::names;
use crate::domain::visibility::{Access, AccessLevel};
use crate::domain::{DisplayName, OrgRef, Reason, Slug, now};
use crate::feed::configuration::own_preset_event;
use crate::feed::sharing::{grant_event, preset_event, request_event};
use crate::store::{
    AccessRequest, CustomerMatch, FieldPreset, Grant, MatchRule, Page, RequestState, Store, Tx,
};

/// How long a match handle can be turned into an access request.
const MATCH_VALIDITY: SignedDuration = SignedDuration::from_hours(24);

fn owner_only(access: Access) -> Result<()> {
    if access.is_owner() {
        Ok(())
    } else {
        Err(Error::PermissionDenied {
            reason: "NOT_CUSTOMER_OWNER",
            message: "only the customer's owner may change its grants".into(),
        })
    }
}

/// The ACTIVE partnership `owner` shares customers with `grantee` through (by grant
/// or rule), or FAILED_PRECONDITION.
pub(super) async fn partnership_to_share_through(
    tx: &mut Tx,
    owner: &OrgRef,
    grantee: &OrgRef,
) -> Result<String> {
    tx.active_partnership_between(&owner.id, &grantee.id)
        .await?
        .ok_or_else(|| {
            Error::failed_precondition(
                "NO_ACTIVE_PARTNERSHIP",
                format!(
                    "{} and {} have no active partnership to share customers through",
                    owner.slug, grantee.slug
                ),
            )
        })
}

/// Grants `customer_id` to `grantee` on behalf of its owner `owner`, which must have
/// an ACTIVE partnership with it.
async fn grant(
    tx: &mut Tx,
    owner: &OrgRef,
    customer_id: &str,
    grantee: OrgRef,
    level: AccessLevel,
    fields: FieldSet,
    preset: Option<(Slug, String)>,
) -> Result<Grant> {
    let partnership = partnership_to_share_through(tx, owner, &grantee).await?;
    let g = Grant {
        id: Uuid::now_v7().to_string(),
        customer_id: customer_id.to_owned(),
        grantee,
        partnership_id: partnership,
        level,
        fields,
        create_time: now(),
        revoke_time: None,
        partnership_active: true,
        preset,
    };
    tx.insert_grant(&g).await?;
    grant_event(tx, EventType::GrantCreated, owner, &g);
    Ok(g)
}

/// The organization `slug`, or NOT_FOUND.
pub async fn organization(store: &Store, slug: &Slug) -> Result<OrgRef> {
    match store.organization(slug).await? {
        Some(o) => Ok(OrgRef {
            id: o.id,
            slug: o.slug,
        }),
        None => Err(Error::NotFound(format!(
            "organization {:?}",
            names::organization(slug)
        ))),
    }
}

/// A grant the owner makes on one of its customers.
pub struct NewGrant<'a> {
    pub customer_id: &'a CustomerId,
    /// The customer's resource name as the caller wrote it.
    pub parent: &'a str,
    pub grantee: OrgRef,
    pub level: AccessLevel,
    /// Ignored when `preset` is set: the grant shares the preset's fields.
    pub fields: FieldSet,
    /// One of the owner's field presets.
    pub preset: Option<PresetId>,
}

/// Grants or names of grants one batch call may carry.
pub const MAX_GRANT_BATCH: usize = 1000;

/// Creates every grant of `grants`, in order, as [`create_grant`] creates each, in the
/// caller's transaction: all or none. A failure names the request (`requests[i]`).
pub async fn create_grants(
    tx: &mut Tx,
    caller: &Caller,
    grants: Vec<NewGrant<'_>>,
) -> Result<Vec<Grant>> {
    let mut made = Vec::with_capacity(grants.len());
    for (i, g) in grants.into_iter().enumerate() {
        let g = create_grant(tx, caller, g)
            .await
            .map_err(|e| e.in_item(&format!("requests[{i}]")))?;
        made.push(g);
    }
    Ok(made)
}

/// Revokes every grant of `grants` (customer, grant, and the name as the caller wrote
/// it), in order, as [`revoke_grant`] revokes each: all or none. A failure names the
/// grant (`names[i]`).
pub async fn revoke_grants(
    tx: &mut Tx,
    caller: &Caller,
    grants: &[(CustomerId, GrantId, String)],
) -> Result<Vec<Grant>> {
    let mut revoked = Vec::with_capacity(grants.len());
    for (i, (customer_id, grant_id, name)) in grants.iter().enumerate() {
        let g = revoke_grant(tx, caller, (customer_id, grant_id), name)
            .await
            .map_err(|e| e.in_item(&format!("names[{i}]")))?;
        revoked.push(g);
    }
    Ok(revoked)
}

/// Grants an active customer of the caller's to a partner it has an active
/// partnership with.
pub async fn create_grant(tx: &mut Tx, caller: &Caller, g: NewGrant<'_>) -> Result<Grant> {
    let org = caller.organization()?;
    let (seen, access) = visible_in(tx, org, g.customer_id, g.parent).await?;
    owner_only(access)?;
    if seen.customer.state != RecordState::Active {
        return Err(Error::failed_precondition(
            "CUSTOMER_NOT_ACTIVE",
            format!("{} is not active", g.parent),
        ));
    }
    let (fields, preset) = match &g.preset {
        None => (g.fields, None),
        Some(id) => {
            let p = tx
                .field_preset(&org.id, id, false)
                .await?
                .ok_or_else(|| preset_not_found(&names::field_preset(&org.slug, id)))?;
            (p.fields, Some((org.slug.clone(), p.id)))
        }
    };
    grant(tx, org, g.customer_id, g.grantee, g.level, fields, preset).await
}

pub(super) fn preset_not_found(name: &str) -> Error {
    Error::NotFound(format!("field preset {name:?}"))
}

/// The caller's organization, if it is `slug`; else `missing()`: another
/// organization's presets, and the organization itself, are not found (as for
/// members).
pub(super) fn own_organization<'c>(
    caller: &'c Caller,
    slug: &Slug,
    missing: impl FnOnce() -> Error,
) -> Result<&'c OrgRef> {
    let org = caller.organization()?;
    if &org.slug == slug {
        Ok(org)
    } else {
        Err(missing())
    }
}

/// The caller's organization, if it owns the preset named `name` (of `slug`).
fn preset_owner<'c>(caller: &'c Caller, slug: &Slug, name: &str) -> Result<&'c OrgRef> {
    own_organization(caller, slug, || preset_not_found(name))
}

fn organization_not_found(parent: &str) -> Error {
    Error::NotFound(format!("organization {parent:?}"))
}

/// Creates a field preset of the caller's organization (`parent`, named `parent`).
pub async fn create_preset(
    tx: &mut Tx,
    caller: &Caller,
    (slug, parent): (&Slug, &str),
    display_name: DisplayName,
    fields: FieldSet,
) -> Result<(Slug, FieldPreset)> {
    let org = own_organization(caller, slug, || organization_not_found(parent))?;
    let now = now();
    let p = FieldPreset {
        id: Uuid::now_v7().to_string(),
        organization_id: org.id.clone(),
        display_name: display_name.as_str().to_owned(),
        fields,
        revision: 1,
        create_time: now,
        update_time: now,
    };
    tx.insert_field_preset(&p).await?;
    own_preset_event(tx, EventType::FieldPresetCreated, org, &p);
    Ok((org.slug.clone(), p))
}

/// The caller's preset `id` (named `name`) of `slug`.
pub async fn preset(
    store: &Store,
    caller: &Caller,
    (slug, id, name): (&Slug, &PresetId, &str),
) -> Result<FieldPreset> {
    let org = preset_owner(caller, slug, name)?;
    store
        .field_preset(&org.id, id)
        .await?
        .ok_or_else(|| preset_not_found(name))
}

/// A page of the caller's presets; `parent` must be its organization.
pub async fn list_presets(
    store: &Store,
    caller: &Caller,
    (slug, parent): (&Slug, &str),
    (after, size): (Option<&str>, usize),
) -> Result<Page<FieldPreset>> {
    let org = own_organization(caller, slug, || organization_not_found(parent))?;
    store.field_presets(&org.id, after, size).await
}

/// What an update of a preset sets: each `None` is left as it is.
pub struct PresetChange {
    pub display_name: Option<DisplayName>,
    pub fields: Option<FieldSet>,
}

/// Changes the caller's preset `id` (named `name`, read at `etag`). A change of its
/// fields reaches every live grant made through it, and the owner and each
/// organization holding such grants hear one `field_preset.updated` event.
pub async fn update_preset(
    tx: &mut Tx,
    caller: &Caller,
    (slug, id, name, etag): (&Slug, &PresetId, &str, &str),
    change: PresetChange,
) -> Result<FieldPreset> {
    let org = preset_owner(caller, slug, name)?.clone();
    let mut p = tx
        .field_preset(&org.id, id, true)
        .await?
        .ok_or_else(|| preset_not_found(name))?;
    check_etag(etag, p.revision, name)?;
    let before = p.clone();
    if let Some(v) = change.display_name {
        p.display_name = v.as_str().to_owned();
    }
    if let Some(v) = change.fields {
        p.fields = v;
    }
    if p == before {
        return Ok(p);
    }
    p.revision += 1;
    p.update_time = now();
    if !tx.update_field_preset(&p).await? {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    // Grantees hear of a change of what they see, and nothing of the owner's label.
    let grantees = if p.fields == before.fields {
        vec![]
    } else {
        tx.field_preset_grantees(&p.id).await?
    };
    preset_event(tx, &org, &grantees, &p);
    Ok(p)
}

/// Deletes the caller's preset `id` (named `name`, read at `etag`), unless a live
/// grant uses it.
pub async fn delete_preset(
    tx: &mut Tx,
    caller: &Caller,
    (slug, id, name, etag): (&Slug, &PresetId, &str, &str),
) -> Result<()> {
    let org = preset_owner(caller, slug, name)?;
    let p = tx
        .field_preset(&org.id, id, true)
        .await?
        .ok_or_else(|| preset_not_found(name))?;
    check_etag(etag, p.revision, name)?;
    if !tx.delete_field_preset(&p.id).await? {
        return Err(Error::failed_precondition(
            "PRESET_IN_USE",
            format!("{name} is used by live grants; revoke them (or grant them otherwise) first"),
        ));
    }
    own_preset_event(tx, EventType::FieldPresetDeleted, org, &p);
    Ok(())
}

/// The grants on customer `id` (called `parent`): all of them for its owner, a
/// grantee's own otherwise; a page of `size` after the grant `after`.
pub async fn list_grants(
    store: &Store,
    caller: &Caller,
    (id, parent): (&CustomerId, &str),
    show_revoked: bool,
    (after, size): (Option<&str>, usize),
) -> Result<Page<Grant>> {
    let org = caller.organization()?;
    let (_, access) = visible(store, org, id, parent).await?;
    let only = (!access.is_owner()).then_some(org.id.as_str());
    let found = store.grants(id, only, show_revoked, after, size).await?;
    Ok(found)
}

/// Revokes grant `grant_id` on the caller's customer `customer_id`; `name` is the
/// grant's resource name as the caller wrote it.
pub async fn revoke_grant(
    tx: &mut Tx,
    caller: &Caller,
    (customer_id, grant_id): (&CustomerId, &GrantId),
    name: &str,
) -> Result<Grant> {
    let org = caller.organization()?;
    let (_, access) = visible_in(tx, org, customer_id, &names::customer(customer_id)).await?;
    owner_only(access)?;
    let mut g = tx
        .grant(customer_id, grant_id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("grant {name:?}")))?;
    if g.revoke_time.is_some() {
        return Err(Error::failed_precondition(
            "GRANT_REVOKED",
            format!("{name} is already revoked"),
        ));
    }
    let now = now();
    tx.revoke_grant(grant_id, now).await?;
    g.revoke_time = Some(now);
    grant_event(tx, EventType::GrantRevoked, org, &g);
    Ok(g)
}

/// A customer key to look for: the kind (`email` or `phone`), the keyed value and the
/// rule it matches by.
pub struct MatchKey {
    pub kind: &'static str,
    pub key: String,
    pub rule: MatchRule,
}

/// One owner that holds the customer: its slug and a handle the caller may turn into
/// an access request until `expire_time`.
pub struct Found {
    pub owner_slug: String,
    pub match_id: String,
    pub rule: MatchRule,
    pub expire_time: Timestamp,
}

/// The partners of the caller (or only `only`) that hold a customer with `key`, one
/// handle per partner; nothing says which customer.
pub async fn match_customer(
    store: &Store,
    caller: &Caller,
    key: MatchKey,
    only: Option<&Slug>,
) -> Result<Vec<Found>> {
    let org = caller.organization()?;
    let holders = store.holders_of_key(key.kind, &key.key, &org.id).await?;
    let expire_time: Timestamp = now() + MATCH_VALIDITY;
    let mut matches = vec![];
    let mut tx = store.begin().await?;
    let mut answered = HashSet::new();
    for (owner_id, owner_slug, customer_id) in holders {
        if only.is_some_and(|o| o.as_str() != owner_slug)
            || answered.contains(&owner_id)
            || tx
                .active_partnership_between(&org.id, &owner_id)
                .await?
                .is_none()
        {
            continue;
        }
        let m = CustomerMatch {
            id: Uuid::now_v7().to_string(),
            requester_id: org.id.clone(),
            owner_id: owner_id.clone(),
            customer_id,
            rule: key.rule.as_str().to_owned(),
            expire_time,
        };
        tx.insert_match(&m).await?;
        matches.push(Found {
            owner_slug,
            match_id: m.id,
            rule: key.rule,
            expire_time,
        });
        answered.insert(owner_id);
    }
    // Old handles are dropped as new ones are made.
    tx.expire_matches(now()).await?;
    tx.commit().await?;
    Ok(matches)
}

/// What a partner asks for through a match.
pub struct NewAccessRequest<'a> {
    pub match_id: &'a MatchId,
    /// The match's resource name as the caller wrote it.
    pub match_name: &'a str,
    pub level: AccessLevel,
    pub fields: FieldSet,
    pub reason: Reason,
}

/// Asks the owner behind a live match for access to its customer.
pub async fn create_access_request(
    tx: &mut Tx,
    caller: &Caller,
    a: NewAccessRequest<'_>,
) -> Result<AccessRequest> {
    let org = caller.organization()?;
    let now = now();
    let m = tx
        .live_match(&org.id, a.match_id, now)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "match {:?} (matches are valid for 24 hours)",
                a.match_name
            ))
        })?;
    let owner = tx.org_ref(&m.owner_id).await?;
    if tx
        .active_partnership_between(&org.id, &owner.id)
        .await?
        .is_none()
    {
        return Err(Error::failed_precondition(
            "NO_ACTIVE_PARTNERSHIP",
            format!("you have no active partnership with {}", owner.slug),
        ));
    }
    let r = AccessRequest {
        id: Uuid::now_v7().to_string(),
        requester: org.clone(),
        owner,
        customer_id: m.customer_id,
        match_id: m.id,
        mapping_id: None,
        level: a.level,
        fields: a.fields,
        reason: a.reason.as_str().to_owned(),
        state: RequestState::Pending,
        decision_reason: String::new(),
        grant_id: None,
        create_time: now,
        decide_time: None,
    };
    tx.insert_access_request(&r).await?;
    request_event(tx, EventType::AccessRequestCreated, &r);
    Ok(r)
}

/// The caller's access requests, those it was asked (`incoming`) or those it made,
/// optionally in one `state`; a page of `size` after the request `after`.
pub async fn list_access_requests(
    store: &Store,
    caller: &Caller,
    incoming: bool,
    state: Option<RequestState>,
    (after, size): (Option<&str>, usize),
) -> Result<Page<AccessRequest>> {
    let org = caller.organization()?;
    let found = store
        .access_requests(&org.id, incoming, state, after, size)
        .await?;
    Ok(found)
}

/// Approves (as a grant of what was asked) or declines (for `reason`) access request
/// `id`, named `name` by the caller; only the organization asked may.
pub async fn decide(
    tx: &mut Tx,
    caller: &Caller,
    (id, name): (&AccessRequestId, &str),
    approve: bool,
    reason: Reason,
) -> Result<AccessRequest> {
    let org = caller.organization()?;
    let mut r = tx
        .access_request(&org.id, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("access request {name:?}")))?;
    if r.owner.id != org.id {
        return Err(Error::permission_denied(
            "only the organization asked may decide an access request",
        ));
    }
    if r.state != RequestState::Pending {
        return Err(Error::failed_precondition(
            "ACCESS_REQUEST_DECIDED",
            format!("{name} was already {}", r.state.as_str()),
        ));
    }
    answer(tx, org, &mut r, approve, reason, name).await?;
    let event_type = if approve {
        EventType::AccessRequestApproved
    } else {
        EventType::AccessRequestDeclined
    };
    request_event(tx, event_type, &r);
    Ok(r)
}

/// The requester's live grant on the customer request `r` asks for, if any.
pub(super) async fn existing_grant(tx: &mut Tx, r: &AccessRequest) -> Result<Option<Grant>> {
    match tx.live_grant_to(&r.customer_id, &r.requester.id).await? {
        Some(id) => tx.grant(&r.customer_id, &id).await,
        None => Ok(None),
    }
}

/// Whether grant `g` gives at least what request `r` asks: its level and its fields.
pub(super) fn covers(g: &Grant, r: &AccessRequest) -> bool {
    let level = g.level == AccessLevel::ReadWrite || r.level == AccessLevel::Read;
    level && r.fields.iter().all(|f| g.fields.contains(f))
}

/// Approves (a grant of what was asked) or declines pending request `r` to `org`,
/// named `name`, without telling anyone: the caller tells.
pub(super) async fn answer(
    tx: &mut Tx,
    org: &OrgRef,
    r: &mut AccessRequest,
    approve: bool,
    reason: Reason,
    name: &str,
) -> Result<()> {
    if approve {
        let customer = tx
            .customer(&org.id, &r.customer_id)
            .await?
            .filter(|c| c.customer.state == RecordState::Active)
            .ok_or_else(|| {
                Error::failed_precondition(
                    "CUSTOMER_NOT_ACTIVE",
                    "the customer asked for is no longer active",
                )
            })?;
        // Only an owner grants (a record another organization shares with this one
        // is not this one's to pass on).
        if customer.customer.owner.id != org.id {
            return Err(Error::failed_precondition(
                "CUSTOMER_NOT_OWNED",
                "the customer asked for belongs to another organization; only its owner may grant it",
            ));
        }
        // Asked for twice (through a match and through a mapping): the grant the
        // first approval made serves both, if it gives what this one asks.
        if let Some(existing) = existing_grant(tx, r).await? {
            if !covers(&existing, r) {
                return Err(Error::AlreadyExists {
                    reason: "GRANT_EXISTS",
                    message: format!(
                        "{} holds a narrower grant on this customer; revoke it to grant what {name} asks",
                        r.requester.slug
                    ),
                });
            }
            r.grant_id = Some(existing.id);
            r.state = RequestState::Approved;
            r.decide_time = Some(now());
            if !tx.decide_access_request(r).await? {
                return Err(Error::StaleEtag(name.to_owned()));
            }
            return Ok(());
        }
        let g = grant(
            tx,
            org,
            &customer.customer.id,
            r.requester.clone(),
            r.level,
            r.fields,
            None,
        )
        .await?;
        r.grant_id = Some(g.id);
        r.state = RequestState::Approved;
    } else {
        r.state = RequestState::Declined;
        r.decision_reason = reason.as_str().to_owned();
    }
    r.decide_time = Some(now());
    if !tx.decide_access_request(r).await? {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    Ok(())
}
