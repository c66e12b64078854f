//! Segments and sharing rules: an owner shares a saved filter of its customers (or all
//! of them) with one partner or every partner of a relationship.
//!
//! A rule stores no per-customer rows: reads weigh the owner's live rules beside a
//! grant (`domain::visibility::access`), so what a rule covers follows the customers,
//! the segment, the partnerships and the clock at every read. Creating, changing or
//! revoking a rule over any number of customers is one row and one event per
//! organization it reaches.

use jiff::Timestamp;
use uuid::Uuid;

use super::check_etag;
use super::customers::{CustomerSettings, Listing, count, list};
use super::sharing::{own_organization, partnership_to_share_through, preset_not_found};
use crate::domain::caller::Caller;
use crate::domain::customer::FieldSet;
use crate::domain::error::{Error, Result};
use crate::domain::event::EventType;
use crate::domain::filter::CustomerFilter;
use crate::domain::ids::{PresetId, RuleId, SegmentId};
use crate::domain::visibility::{Access, AccessLevel};
use crate::domain::{DisplayName, OrgRef, Relationship, Slug, names, now};
use crate::feed::sharing::rule_event;
use crate::store::{Page, RuleSegment, RuleTarget, SeenCustomer, Segment, SharingRule, Store, Tx};

fn segment_not_found(name: &str) -> Error {
    Error::NotFound(format!("segment {name:?}"))
}

fn rule_not_found(name: &str) -> Error {
    Error::NotFound(format!("sharing rule {name:?}"))
}

fn organization_not_found(parent: &str) -> Error {
    Error::NotFound(format!("organization {parent:?}"))
}

/// Creates a segment of the caller's organization (`parent`, named `parent`).
pub async fn create_segment(
    tx: &mut Tx,
    caller: &Caller,
    (slug, parent): (&Slug, &str),
    display_name: DisplayName,
    filter: &CustomerFilter,
) -> Result<(Slug, Segment)> {
    let org = own_organization(caller, slug, || organization_not_found(parent))?;
    let now = now();
    let s = Segment {
        id: Uuid::now_v7().to_string(),
        organization_id: org.id.clone(),
        display_name: display_name.as_str().to_owned(),
        filter: filter.to_text(),
        revision: 1,
        create_time: now,
        update_time: now,
    };
    tx.insert_segment(&s).await?;
    Ok((org.slug.clone(), s))
}

/// The caller's segment `id` (named `name`) of `slug`.
pub async fn segment(
    store: &Store,
    caller: &Caller,
    (slug, id, name): (&Slug, &SegmentId, &str),
) -> Result<Segment> {
    let org = own_organization(caller, slug, || segment_not_found(name))?;
    store
        .segment(&org.id, id)
        .await?
        .ok_or_else(|| segment_not_found(name))
}

/// A page of the caller's segments; `parent` must be its organization.
pub async fn list_segments(
    store: &Store,
    caller: &Caller,
    (slug, parent): (&Slug, &str),
    (after, size): (Option<&str>, usize),
) -> Result<Page<Segment>> {
    let org = own_organization(caller, slug, || organization_not_found(parent))?;
    store.segments(&org.id, after, size).await
}

/// What an update of a segment sets: each `None` is left as it is.
pub struct SegmentChange {
    pub display_name: Option<DisplayName>,
    pub filter: Option<CustomerFilter>,
}

/// Changes the caller's segment `id` (named `name`, read at `etag`). A change of its
/// filter changes what every live rule sharing it covers; the owner and each
/// organization such a rule reaches hear one `sharing_rule.updated` per rule.
pub async fn update_segment(
    tx: &mut Tx,
    caller: &Caller,
    (slug, id, name, etag): (&Slug, &SegmentId, &str, &str),
    change: SegmentChange,
) -> Result<Segment> {
    let org = own_organization(caller, slug, || segment_not_found(name))?.clone();
    let mut s = tx
        .segment(&org.id, id, true)
        .await?
        .ok_or_else(|| segment_not_found(name))?;
    check_etag(etag, s.revision, name)?;
    let before = s.clone();
    if let Some(v) = change.display_name {
        s.display_name = v.as_str().to_owned();
    }
    if let Some(f) = change.filter {
        s.filter = f.to_text();
    }
    if s == before {
        return Ok(s);
    }
    s.revision += 1;
    s.update_time = now();
    if !tx.update_segment(&s).await? {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    // Partners see the segment's display name in the rule, and what it covers.
    for rule in tx.live_rules_sharing(&org.id, &s.id).await? {
        let reached = tx.rule_reaches(&rule).await?;
        rule_event(tx, EventType::SharingRuleUpdated, &rule, &reached);
    }
    Ok(s)
}

/// Deletes the caller's segment `id` (named `name`, read at `etag`), unless a live
/// rule shares it.
pub async fn delete_segment(
    tx: &mut Tx,
    caller: &Caller,
    (slug, id, name, etag): (&Slug, &SegmentId, &str, &str),
) -> Result<()> {
    let org = own_organization(caller, slug, || segment_not_found(name))?;
    let s = tx
        .segment(&org.id, id, true)
        .await?
        .ok_or_else(|| segment_not_found(name))?;
    check_etag(etag, s.revision, name)?;
    if tx.segment_in_open_mapping(&s.id).await? {
        return Err(Error::failed_precondition(
            "SEGMENT_IN_USE",
            format!(
                "{name} takes part in an open account mapping; take it out of the mapping first"
            ),
        ));
    }
    if !tx.delete_segment(&s.id).await? {
        return Err(Error::failed_precondition(
            "SEGMENT_IN_USE",
            format!(
                "{name} is shared by live sharing rules; revoke them (or share otherwise) first"
            ),
        ));
    }
    Ok(())
}

/// The caller's segment `id` (named `name`) and its filter.
async fn segment_filter(
    store: &Store,
    caller: &Caller,
    target: (&Slug, &SegmentId, &str),
) -> Result<CustomerFilter> {
    let s = segment(store, caller, target).await?;
    let filter = crate::store::stored_filter(&s.filter)?;
    Ok(CustomerFilter::clone(&filter))
}

/// How many customers the caller can see are members of its segment now.
pub async fn count_members(
    store: &Store,
    settings: &CustomerSettings,
    caller: &Caller,
    target: (&Slug, &SegmentId, &str),
) -> Result<i64> {
    let filter = segment_filter(store, caller, target).await?;
    count(store, settings, caller, &filter).await
}

/// A page of the members of the caller's segment, in creation order, as ListCustomers
/// pages them.
pub async fn list_members(
    store: &Store,
    settings: &CustomerSettings,
    caller: &Caller,
    target: (&Slug, &SegmentId, &str),
    (after, limit): (Option<&str>, usize),
) -> Result<Page<(SeenCustomer, Access)>> {
    let filter = segment_filter(store, caller, target).await?;
    let listing = Listing::by_creation(&filter, after, limit);
    list(store, settings, caller, listing).await
}

/// Whom a new rule shares with, as asked.
pub enum TargetAsked {
    Grantee(OrgRef),
    Relationship(Relationship),
}

/// A rule as the caller asks for it.
pub struct NewRule {
    pub display_name: DisplayName,
    /// One of the owner's segments; `None`: every customer it owns.
    pub segment: Option<SegmentId>,
    pub target: TargetAsked,
    pub level: AccessLevel,
    /// Ignored when `preset` is set.
    pub fields: FieldSet,
    pub preset: Option<PresetId>,
    pub expire_time: Option<Timestamp>,
}

fn expiry_in_future(expire_time: Option<Timestamp>, field: &str) -> Result<()> {
    match expire_time {
        Some(t) if t <= now() => Err(Error::invalid(field, "must be in the future")),
        _ => Ok(()),
    }
}

/// The owner's segment `id` for a rule, locked shared (so a concurrent change of its
/// filter tells this rule's partners too).
async fn rule_segment(tx: &mut Tx, owner: &OrgRef, id: &SegmentId) -> Result<RuleSegment> {
    let s = tx
        .segment(&owner.id, id, false)
        .await?
        .ok_or_else(|| segment_not_found(&names::segment(&owner.slug, id)))?;
    Ok(RuleSegment {
        id: s.id,
        display_name: s.display_name,
        filter: s.filter,
    })
}

/// The fields a rule shares: the preset's (locked shared), or its own.
async fn rule_fields(
    tx: &mut Tx,
    owner: &OrgRef,
    fields: FieldSet,
    preset: Option<&PresetId>,
) -> Result<(FieldSet, Option<String>)> {
    match preset {
        None => Ok((fields, None)),
        Some(id) => {
            let p = tx
                .field_preset(&owner.id, id, false)
                .await?
                .ok_or_else(|| preset_not_found(&names::field_preset(&owner.slug, id)))?;
            Ok((p.fields, Some(p.id)))
        }
    }
}

/// Creates a rule of the caller's organization (`parent`): it covers the segment's
/// customers (or all the owner's) for its partner(s) from now on.
pub async fn create_rule(
    tx: &mut Tx,
    caller: &Caller,
    (slug, parent): (&Slug, &str),
    new: NewRule,
) -> Result<SharingRule> {
    let owner = own_organization(caller, slug, || organization_not_found(parent))?.clone();
    expiry_in_future(new.expire_time, "sharing_rule.expire_time")?;
    let target = match new.target {
        TargetAsked::Grantee(grantee) => {
            if grantee.id == owner.id {
                return Err(Error::invalid(
                    "sharing_rule.grantee",
                    "must be a partner, not the owner itself",
                ));
            }
            partnership_to_share_through(tx, &owner, &grantee).await?;
            RuleTarget::Grantee(grantee)
        }
        TargetAsked::Relationship(r) => RuleTarget::Relationship(r),
    };
    let segment = match &new.segment {
        Some(id) => Some(rule_segment(tx, &owner, id).await?),
        None => None,
    };
    let (fields, preset_id) = rule_fields(tx, &owner, new.fields, new.preset.as_ref()).await?;
    let now = now();
    let r = SharingRule {
        id: Uuid::now_v7().to_string(),
        owner,
        display_name: new.display_name.as_str().to_owned(),
        segment,
        target,
        level: new.level,
        fields,
        preset_id,
        expire_time: new.expire_time,
        revoke_time: None,
        revision: 1,
        create_time: now,
        update_time: now,
    };
    tx.insert_sharing_rule(&r).await?;
    let reached = tx.rule_reaches(&r).await?;
    rule_event(tx, EventType::SharingRuleCreated, &r, &reached);
    Ok(r)
}

/// Rule `id` (named `name`) of `slug`: whole for its owner; for an organization a
/// live rule reaches now, as [`crate::feed::render::rule_to_pb`] shows it to one
/// (`false`); NOT_FOUND for anyone else.
pub async fn rule(
    store: &Store,
    caller: &Caller,
    (slug, id, name): (&Slug, &RuleId, &str),
) -> Result<(SharingRule, bool)> {
    let org = caller.organization()?;
    let owner = super::sharing::organization(store, slug)
        .await
        .map_err(|_| rule_not_found(name))?;
    let whole = owner.id == org.id;
    if !whole {
        let reaching = store.rule_standings(&owner.id, &org.id).await?;
        if !reaching.iter().any(|s| s.rule_id == id.as_str()) {
            return Err(rule_not_found(name));
        }
    }
    let r = store
        .sharing_rule(&owner.id, id)
        .await?
        .ok_or_else(|| rule_not_found(name))?;
    Ok((r, whole))
}

/// `parent` the caller's organization: a page of its rules (revoked ones with
/// `show_revoked`). Another organization's: that one's live rules reaching the caller
/// now. Each with whether it is shown whole.
pub async fn list_rules(
    store: &Store,
    caller: &Caller,
    (slug, parent): (&Slug, &str),
    show_revoked: bool,
    page: (Option<&str>, usize),
) -> Result<(Page<SharingRule>, bool)> {
    let org = caller.organization()?;
    let owner = super::sharing::organization(store, slug)
        .await
        .map_err(|_| organization_not_found(parent))?;
    if owner.id == org.id {
        let found = store
            .sharing_rules(&owner.id, None, show_revoked, page)
            .await?;
        return Ok((found, true));
    }
    let mut ids: Vec<String> = store
        .rule_standings(&owner.id, &org.id)
        .await?
        .into_iter()
        .map(|s| s.rule_id)
        .collect();
    ids.dedup();
    let found = store
        .sharing_rules(&owner.id, Some(&ids), false, page)
        .await?;
    Ok((found, false))
}

/// What an update of a rule sets: each `None` is left as it is; `Some(None)` clears.
pub struct RuleChange {
    pub display_name: Option<DisplayName>,
    pub segment: Option<Option<SegmentId>>,
    pub level: Option<AccessLevel>,
    pub fields: Option<FieldSet>,
    pub preset: Option<Option<PresetId>>,
    pub expire_time: Option<Option<Timestamp>>,
}

/// The caller's live rule `id` (named `name`, read at `etag`), locked for a change.
async fn live_rule(
    tx: &mut Tx,
    caller: &Caller,
    (slug, id, name, etag): (&Slug, &RuleId, &str, &str),
) -> Result<SharingRule> {
    let owner = own_organization(caller, slug, || rule_not_found(name))?;
    let r = tx
        .sharing_rule(&owner.id, id)
        .await?
        .ok_or_else(|| rule_not_found(name))?;
    check_etag(etag, r.revision, name)?;
    if r.revoke_time.is_some() {
        return Err(Error::failed_precondition(
            "RULE_REVOKED",
            format!("{name} is revoked; create a new rule"),
        ));
    }
    Ok(r)
}

/// Changes the caller's rule; the owner and each organization it reaches (while
/// live before or after the change) hear one `sharing_rule.updated`.
pub async fn update_rule(
    tx: &mut Tx,
    caller: &Caller,
    target: (&Slug, &RuleId, &str, &str),
    change: RuleChange,
) -> Result<SharingRule> {
    let owner = own_organization(caller, target.0, || rule_not_found(target.2))?.clone();
    // The segment and preset it is to share, locked before the rule: a change of the
    // preset locks the preset, then rewrites the rules using it, so this order
    // cannot deadlock with one.
    let segment = match &change.segment {
        Some(Some(id)) => Some(Some(rule_segment(tx, &owner, id).await?)),
        Some(None) => Some(None),
        None => None,
    };
    let preset = match &change.preset {
        Some(Some(id)) => Some(Some(
            rule_fields(tx, &owner, FieldSet::NONE, Some(id)).await?,
        )),
        Some(None) => Some(None),
        None => None,
    };
    let mut r = live_rule(tx, caller, target).await?;
    let before = r.clone();
    if let Some(v) = change.display_name {
        r.display_name = v.as_str().to_owned();
    }
    if let Some(segment) = segment {
        r.segment = segment;
    }
    if let Some(level) = change.level {
        r.level = level;
    }
    match preset {
        Some(Some((fields, id))) => (r.fields, r.preset_id) = (fields, id),
        Some(None) => {
            // Fields of its own from now on: those given, or the preset's last.
            (r.fields, r.preset_id) = (change.fields.unwrap_or(r.fields), None);
        }
        None => {
            if let Some(fields) = change.fields {
                // Fields of its own: the rule no longer follows a preset.
                (r.fields, r.preset_id) = (fields, None);
            }
        }
    }
    if let Some(expire_time) = change.expire_time {
        expiry_in_future(expire_time, "sharing_rule.expire_time")?;
        r.expire_time = expire_time;
    }
    if r == before {
        return Ok(r);
    }
    r.revision += 1;
    r.update_time = now();
    if !tx.update_sharing_rule(&r).await? {
        return Err(Error::StaleEtag(target.2.to_owned()));
    }
    let now = now();
    let reached = if before.live_at(now) || r.live_at(now) {
        tx.rule_reaches(&r).await?
    } else {
        vec![]
    };
    rule_event(tx, EventType::SharingRuleUpdated, &r, &reached);
    Ok(r)
}

/// Revokes the caller's rule: it covers nothing from now on. The owner and each
/// organization it reached hear one `sharing_rule.revoked`.
pub async fn revoke_rule(
    tx: &mut Tx,
    caller: &Caller,
    target: (&Slug, &RuleId, &str, &str),
) -> Result<SharingRule> {
    let mut r = live_rule(tx, caller, target).await?;
    let now = now();
    // An expired rule reaches no one any more: only its owner hears.
    let reached = if r.live_at(now) {
        tx.rule_reaches(&r).await?
    } else {
        vec![]
    };
    r.revoke_time = Some(now);
    r.update_time = now;
    r.revision += 1;
    if !tx.update_sharing_rule(&r).await? {
        return Err(Error::StaleEtag(target.2.to_owned()));
    }
    rule_event(tx, EventType::SharingRuleRevoked, &r, &reached);
    Ok(r)
}
