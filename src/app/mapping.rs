//! Account mapping: an organization asks a partner to compare segments of theirs;
//! both learn, per pair of segments, how many customers are in both, only one's or
//! only the other's, never which (`domain::mapping` holds the rules). Comparing runs
//! in the background as a long-running operation; from an overlap either side may ask
//! for access to the other's matching records in bulk.

use std::collections::HashMap;
use std::hash::RandomState;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use super::check_etag;
use super::customers::{CustomerSettings, Listing, count, list};
use super::sharing::{answer, covers, existing_grant, organization, partnership_to_share_through};
use crate::domain::caller::Caller;
use crate::domain::customer::FieldSet;
use crate::domain::error::{Error, Result};
use crate::domain::event::EventType;
use crate::domain::filter::{CustomerCondition, CustomerFilter, Moment, Op};
use crate::domain::ids::{MappingId, SegmentId};
use crate::domain::mapping::{
    Bound, COMPARE_VERB, MAX_SEGMENTS_PER_SIDE, MappingState, Member, OperationState, Overlap,
    SegmentInput, Side, compare, match_keys, may_refresh,
};
use crate::domain::visibility::AccessLevel;
use crate::domain::{OrgRef, Principal, Reason, Scope, Scopes, Slug, names, now};
use crate::feed::mapping::mapping_event;
use crate::store::{
    AccessRequest, AccountMapping, MappedSegment, Operation, Page, RequestState, Store, Tx, Worker,
};

/// Most access requests one call makes or answers.
pub const MAX_OVERLAP_BATCH: usize = 1000;

/// Members read per page while comparing; progress is recorded after each.
const PAGE: usize = 1000;

/// How long a worker holds an operation without recording progress before another
/// replica may take it over: longer than any step between two records of progress
/// (counting the segments first, writing the matched records last).
const LEASE: SignedDuration = SignedDuration::from_mins(10);

/// The hub's mapping settings.
#[derive(Debug, Clone)]
pub struct MappingSettings {
    pub threshold: u32,
    pub refresh_interval: SignedDuration,
}

impl MappingSettings {
    pub fn from_config(c: &crate::config::MappingConfig) -> Self {
        Self {
            threshold: c.threshold,
            refresh_interval: SignedDuration::from_secs(c.refresh_interval_secs as i64),
        }
    }
}

fn mapping_not_found(name: &str) -> Error {
    Error::NotFound(format!("account mapping {name:?}"))
}

fn segment_not_found(name: &str) -> Error {
    Error::NotFound(format!("segment {name:?}"))
}

/// A caller that reads as organization `org` does: what the comparison sees of
/// each side.
fn reader_for(org: &OrgRef) -> Caller {
    Caller {
        key_id: "hub".into(),
        principal: Principal::Organization(org.clone()),
        scopes: Scopes::new(vec![Scope::Read]).expect("non-empty"),
    }
}

/// The segments a side names, as asked: `(slug, id, name as written)`.
pub type SegmentsAsked = Vec<(Slug, SegmentId, String)>;

/// Checks that the caller's `segments` (field `field`) are 1 to 10 distinct segments
/// of its own, each with at least `threshold` members now; returns their ids.
pub async fn check_segments(
    store: &Store,
    customers: &CustomerSettings,
    caller: &Caller,
    (segments, field): (&SegmentsAsked, &str),
    threshold: u32,
) -> Result<Vec<String>> {
    let org = caller.organization()?;
    if segments.is_empty() || segments.len() > MAX_SEGMENTS_PER_SIDE {
        return Err(Error::invalid(
            field,
            format!("must name 1 to {MAX_SEGMENTS_PER_SIDE} segments"),
        ));
    }
    let mut ids: Vec<String> = vec![];
    for (i, (slug, id, name)) in segments.iter().enumerate() {
        if ids.iter().any(|s| s == id.as_str()) {
            return Err(Error::invalid(
                format!("{field}[{i}]"),
                "names a segment twice",
            ));
        }
        if slug != &org.slug {
            return Err(segment_not_found(name));
        }
        let s = store
            .segment(&org.id, id)
            .await?
            .ok_or_else(|| segment_not_found(name))?;
        let filter = crate::store::stored_filter(&s.filter)?;
        if !at_least(store, customers, caller, &filter, threshold as usize).await? {
            return Err(Error::failed_precondition(
                "SEGMENT_TOO_SMALL",
                format!(
                    "{name} has fewer than {threshold} members; a segment that small cannot take part in a mapping"
                ),
            ));
        }
        ids.push(s.id);
    }
    Ok(ids)
}

/// Whether the caller sees at least `n` customers matching `filter`: the first `n`
/// in creation order, not a count of all (a segment of a million answers at once).
async fn at_least(
    store: &Store,
    customers: &CustomerSettings,
    caller: &Caller,
    filter: &CustomerFilter,
    n: usize,
) -> Result<bool> {
    let mut seen = 0;
    let mut after: Option<String> = None;
    loop {
        // Pages of at least 100: rows the filter drops in memory cost no round trip
        // each.
        let listing = Listing::by_creation(filter, after.as_deref(), n.max(100));
        let page = list(store, customers, caller, listing).await?;
        seen += page.items.len();
        match page.next_after {
            _ if seen >= n => return Ok(true),
            Some(next) => after = Some(next),
            None => return Ok(false),
        }
    }
}

/// The caller asks `partner` to map accounts with the caller's `segments` (checked
/// by [`check_segments`]).
pub async fn create_mapping(
    tx: &mut Tx,
    caller: &Caller,
    partner: &OrgRef,
    segments: Vec<String>,
    threshold: u32,
) -> Result<AccountMapping> {
    let org = caller.organization()?.clone();
    if partner.id == org.id {
        return Err(Error::invalid(
            "account_mapping.partner",
            "must be a partner, not the caller itself",
        ));
    }
    partnership_to_share_through(tx, &org, partner).await?;
    if let Some(open) = tx.open_mapping_between(&org.id, &partner.id).await? {
        return Err(Error::AlreadyExists {
            reason: "MAPPING_OPEN",
            message: format!(
                "{} is already open between {} and {}; end it first",
                names::account_mapping(&open),
                org.slug,
                partner.slug
            ),
        });
    }
    let segments = locked_segments(tx, &org, Side::Requester, &segments).await?;
    let now = now();
    let m = AccountMapping {
        id: Uuid::now_v7().to_string(),
        requester: org,
        partner: partner.clone(),
        state: MappingState::Proposed,
        threshold,
        segments,
        overlaps: vec![],
        inputs: vec![],
        compare_time: None,
        refresh_time: None,
        check_time: None,
        operation_id: None,
        ended_by: None,
        revision: 1,
        create_time: now,
        update_time: now,
        end_time: None,
    };
    tx.insert_account_mapping(&m).await?;
    mapping_event(tx, EventType::AccountMappingRequested, &m);
    Ok(m)
}

/// `org`'s segments `ids` (still there), locked shared, as a mapping names them.
async fn locked_segments(
    tx: &mut Tx,
    org: &OrgRef,
    side: Side,
    ids: &[String],
) -> Result<Vec<MappedSegment>> {
    let mut out = vec![];
    for id in ids {
        let s = tx
            .segment(&org.id, id, false)
            .await?
            .ok_or_else(|| segment_not_found(&names::segment(&org.slug, id)))?;
        out.push(MappedSegment {
            side,
            segment_id: s.id,
            display_name: s.display_name,
        });
    }
    Ok(out)
}

/// Mapping `id` (named `name`) if the caller is a side of it.
pub async fn mapping(
    store: &Store,
    caller: &Caller,
    (id, name): (&MappingId, &str),
) -> Result<AccountMapping> {
    let org = caller.organization()?;
    store
        .account_mapping(id)
        .await?
        .filter(|m| m.side_of(&org.id).is_some())
        .ok_or_else(|| mapping_not_found(name))
}

/// A page of the caller's mappings, newest first.
pub async fn list_mappings(
    store: &Store,
    caller: &Caller,
    state: Option<MappingState>,
    page: (Option<&str>, usize),
) -> Result<Page<AccountMapping>> {
    let org = caller.organization()?;
    store.account_mappings(&org.id, state, page).await
}

/// Mapping `id` locked for a change by the caller, which must be a side of it; the
/// caller's side.
async fn locked(
    tx: &mut Tx,
    caller: &Caller,
    (id, name, etag): (&MappingId, &str, &str),
) -> Result<(AccountMapping, Side)> {
    let org = caller.organization()?;
    let m = tx
        .account_mapping(id, true)
        .await?
        .ok_or_else(|| mapping_not_found(name))?;
    let side = m.side_of(&org.id).ok_or_else(|| mapping_not_found(name))?;
    check_etag(etag, m.revision, name)?;
    Ok((m, side))
}

/// Refused unless `m` is active (accepted, not ended).
fn active(m: &AccountMapping) -> Result<()> {
    if m.state == MappingState::Active {
        return Ok(());
    }
    Err(Error::failed_precondition(
        "MAPPING_NOT_ACTIVE",
        format!("{} is {}", names::account_mapping(&m.id), m.state.as_str()),
    ))
}

fn not_open(name: &str, m: &AccountMapping) -> Error {
    Error::failed_precondition("MAPPING_ENDED", format!("{name} is {}", m.state.as_str()))
}

async fn write(tx: &mut Tx, m: &mut AccountMapping, name: &str) -> Result<()> {
    m.revision += 1;
    m.update_time = now();
    if !tx.update_account_mapping(m).await? {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    Ok(())
}

/// Queues a comparison of `m` (which the caller then writes) and returns it.
async fn start_comparison(tx: &mut Tx, m: &mut AccountMapping) -> Result<Operation> {
    let op = Operation::new(
        COMPARE_VERB,
        &m.id,
        (&m.requester.id, Some(&m.partner.id)),
        now(),
    );
    tx.insert_operation(&op).await?;
    m.operation_id = Some(op.id.clone());
    Ok(op)
}

/// The partner accepts with its `segments` (checked by [`check_segments`]); the first
/// comparison starts.
pub async fn accept(
    tx: &mut Tx,
    caller: &Caller,
    target: (&MappingId, &str, &str),
    segments: Vec<String>,
) -> Result<(AccountMapping, Operation)> {
    let name = target.1;
    let (mut m, side) = locked(tx, caller, target).await?;
    if side != Side::Partner {
        return Err(Error::permission_denied(
            "only the partner asked may accept a mapping",
        ));
    }
    if m.state != MappingState::Proposed {
        return Err(Error::failed_precondition(
            "MAPPING_NOT_PROPOSED",
            format!("{name} is {}", m.state.as_str()),
        ));
    }
    partnership_to_share_through(tx, &m.requester, &m.partner).await?;
    let partner = m.partner.clone();
    let mine = locked_segments(tx, &partner, Side::Partner, &segments).await?;
    tx.set_mapping_segments(&m.id, Side::Partner, &segments)
        .await?;
    m.segments.retain(|s| s.side == Side::Requester);
    m.segments.extend(mine);
    m.state = MappingState::Active;
    let op = start_comparison(tx, &mut m).await?;
    write(tx, &mut m, name).await?;
    mapping_event(tx, EventType::AccountMappingAccepted, &m);
    Ok((m, op))
}

/// The partner declines a proposed mapping.
pub async fn decline(
    tx: &mut Tx,
    caller: &Caller,
    target: (&MappingId, &str, &str),
) -> Result<AccountMapping> {
    let name = target.1;
    let (mut m, side) = locked(tx, caller, target).await?;
    if side != Side::Partner {
        return Err(Error::permission_denied(
            "only the partner asked may decline a mapping",
        ));
    }
    if m.state != MappingState::Proposed {
        return Err(Error::failed_precondition(
            "MAPPING_NOT_PROPOSED",
            format!("{name} is {}", m.state.as_str()),
        ));
    }
    m.state = MappingState::Declined;
    m.ended_by = Some(m.partner.clone());
    m.end_time = Some(now());
    write(tx, &mut m, name).await?;
    mapping_event(tx, EventType::AccountMappingDeclined, &m);
    Ok(m)
}

/// Replaces the caller's side's segments (`side`, which must be the caller's; checked
/// by [`check_segments`]); they take part from the next comparison.
pub async fn update_segments(
    tx: &mut Tx,
    caller: &Caller,
    target: (&MappingId, &str, &str),
    side_asked: Side,
    segments: Vec<String>,
) -> Result<AccountMapping> {
    let name = target.1;
    let (mut m, side) = locked(tx, caller, target).await?;
    if side != side_asked {
        return Err(Error::invalid(
            "update_mask",
            format!(
                "the caller is the mapping's {}: it may change {}_segments only",
                side.as_str(),
                side.as_str()
            ),
        ));
    }
    if !m.state.open() {
        return Err(not_open(name, &m));
    }
    if side == Side::Partner && m.state != MappingState::Active {
        return Err(Error::failed_precondition(
            "MAPPING_NOT_ACTIVE",
            "the partner names its segments when it accepts",
        ));
    }
    if m.segment_ids(side) == segments {
        return Ok(m);
    }
    let org = m.org(side).clone();
    let mine = locked_segments(tx, &org, side, &segments).await?;
    tx.set_mapping_segments(&m.id, side, &segments).await?;
    m.segments.retain(|s| s.side != side);
    m.segments.extend(mine);
    m.segments.sort_by_key(|s| s.side == Side::Partner);
    write(tx, &mut m, name).await?;
    mapping_event(tx, EventType::AccountMappingUpdated, &m);
    Ok(m)
}

/// Either side ends a proposed or active mapping; a running comparison is cancelled.
pub async fn end(
    tx: &mut Tx,
    caller: &Caller,
    target: (&MappingId, &str, &str),
) -> Result<AccountMapping> {
    let name = target.1;
    let (mut m, side) = locked(tx, caller, target).await?;
    if !m.state.open() {
        return Err(not_open(name, &m));
    }
    let now = now();
    if let Some(op) = m.operation_id.take() {
        tx.finish_operation(
            &op,
            OperationState::Cancelled,
            Some((tonic_code::CANCELLED, "the mapping was ended")),
            now,
        )
        .await?;
    }
    m.state = MappingState::Ended;
    m.ended_by = Some(m.org(side).clone());
    m.end_time = Some(now);
    write(tx, &mut m, name).await?;
    mapping_event(tx, EventType::AccountMappingEnded, &m);
    Ok(m)
}

/// Ends the open mappings between `a` and `b` once no active partnership joins them
/// (one was ended by `actor`): a mapping needs a partnership, as sharing does.
pub async fn end_with_partnership(tx: &mut Tx, actor: &OrgRef, (a, b): (&str, &str)) -> Result<()> {
    // Two ends of the last two partnerships at once: the second waits for the first
    // (or one is told to retry), so neither misses that none is left.
    tx.lock_partnerships_between(a, b).await?;
    if tx.active_partnership_between(a, b).await?.is_some() {
        return Ok(());
    }
    let now = now();
    for id in tx.open_mappings_between(a, b).await? {
        let Some(mut m) = tx.account_mapping(&id, true).await? else {
            continue;
        };
        if let Some(op) = m.operation_id.take() {
            tx.finish_operation(
                &op,
                OperationState::Cancelled,
                Some((tonic_code::CANCELLED, "the partnership ended")),
                now,
            )
            .await?;
        }
        m.state = MappingState::Ended;
        m.ended_by = Some(actor.clone());
        m.end_time = Some(now);
        let name = names::account_mapping(&m.id);
        write(tx, &mut m, &name).await?;
        mapping_event(tx, EventType::AccountMappingEnded, &m);
    }
    Ok(())
}

/// gRPC status codes an operation's error carries (google.rpc.Code).
pub mod tonic_code {
    pub const CANCELLED: i32 = 1;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
}

/// The segments of both sides as they stand now, with their member counts as each
/// side sees them: what a comparison would read.
async fn current_inputs(
    store: &Store,
    customers: &CustomerSettings,
    m: &AccountMapping,
    changed_since: Option<Timestamp>,
) -> Result<(Vec<SegmentInput>, i64)> {
    let mut inputs = vec![];
    let mut changed = 0;
    for s in &m.segments {
        let org = m.org(s.side);
        let reader = reader_for(org);
        let Some(segment) = store.segment(&org.id, &s.segment_id).await? else {
            continue;
        };
        let filter = crate::store::stored_filter(&segment.filter)?;
        let members = count(store, customers, &reader, &filter).await?;
        if let Some(since) = changed_since {
            let mut recent = CustomerFilter::clone(&filter);
            recent
                .conditions
                .push(CustomerCondition::UpdateTime(Op::Gt, Moment::At(since)));
            changed += count(store, customers, &reader, &recent).await?;
        }
        inputs.push(SegmentInput {
            segment_id: segment.id,
            side: s.side,
            revision: segment.revision,
            members,
        });
    }
    Ok((inputs, changed))
}

/// Whether active mapping `m` may be compared again now (see
/// [`crate::domain::mapping::may_refresh`]); `Err(FAILED_PRECONDITION MAPPING_FRESH)`
/// says why not.
async fn refresh_allowed(
    store: &Store,
    customers: &CustomerSettings,
    settings: &MappingSettings,
    m: &AccountMapping,
) -> Result<()> {
    let fresh = |why: String| {
        Error::failed_precondition(
            "MAPPING_FRESH",
            format!(
                "{} was compared recently: {why}",
                names::account_mapping(&m.id)
            ),
        )
    };
    let Some(compared) = m.compare_time else {
        return Ok(());
    };
    let now = store.clock().now();
    // The interval first: it needs no counting.
    let next = compared
        .checked_add(settings.refresh_interval)
        .unwrap_or(compared);
    if now < next {
        return Err(fresh(format!("it may be compared again from {next}")));
    }
    let (inputs, changed) = current_inputs(store, customers, m, Some(compared)).await?;
    may_refresh(
        compared,
        settings.refresh_interval,
        now,
        (&m.inputs, &inputs),
        changed,
        m.threshold,
    )
    .map_err(fresh)
}

/// Refused unless the two sides of `m` stand in an active partnership.
async fn partnered(store: &Store, m: &AccountMapping) -> Result<()> {
    match store
        .active_partnership_between(&m.requester.id, &m.partner.id)
        .await?
    {
        Some(_) => Ok(()),
        None => Err(no_partnership(m)),
    }
}

fn no_partnership(m: &AccountMapping) -> Error {
    Error::failed_precondition(
        "NO_ACTIVE_PARTNERSHIP",
        format!(
            "{} and {} have no active partnership",
            m.requester.slug, m.partner.slug
        ),
    )
}

/// What weighing a refresh of a mapping found.
pub enum Weighed {
    /// A comparison is running already.
    Running(Box<Operation>),
    /// One may start ([`start_refresh`]).
    Start,
}

/// Weighs whether active mapping `m` may be compared again now, outside a
/// transaction (it counts the segments' members).
pub async fn weigh_refresh(
    store: &Store,
    customers: &CustomerSettings,
    settings: &MappingSettings,
    m: &AccountMapping,
) -> Result<Weighed> {
    active(m)?;
    partnered(store, m).await?;
    if let Some(op) = &m.operation_id
        && let Some(op) = store.operation(op).await?
        && !op.state.done()
    {
        return Ok(Weighed::Running(Box::new(op)));
    }
    refresh_allowed(store, customers, settings, m).await?;
    Ok(Weighed::Start)
}

/// Starts the comparison [`weigh_refresh`] allowed for mapping `weighed` as it read
/// it; if another started meanwhile, returns that one, and if another finished
/// meanwhile, refuses (`MAPPING_FRESH`): one comparison per interval.
pub async fn start_refresh(tx: &mut Tx, weighed: &AccountMapping, name: &str) -> Result<Operation> {
    let mut m = tx
        .account_mapping(&weighed.id, true)
        .await?
        .ok_or_else(|| mapping_not_found(name))?;
    active(&m)?;
    if let Some(op) = &m.operation_id
        && let Some(op) = tx.operation(op).await?
        && !op.state.done()
    {
        return Ok(op);
    }
    if m.compare_time != weighed.compare_time {
        return Err(Error::failed_precondition(
            "MAPPING_FRESH",
            format!("{name} was compared while its refresh was weighed"),
        ));
    }
    let op = start_comparison(tx, &mut m).await?;
    write(tx, &mut m, name).await?;
    Ok(op)
}

/// Operation `id` (named `name`) if the caller may see it.
pub async fn operation(
    store: &Store,
    caller: &Caller,
    (id, name): (&str, &str),
) -> Result<Operation> {
    let org = caller.organization()?;
    store
        .operation(id)
        .await?
        .filter(|o| o.visible_to(&org.id))
        .ok_or_else(|| Error::NotFound(format!("operation {name:?}")))
}

/// A page of the operations the caller may see, newest first.
pub async fn list_operations(
    store: &Store,
    caller: &Caller,
    done: Option<bool>,
    page: (Option<&str>, usize),
) -> Result<Page<Operation>> {
    let org = caller.organization()?;
    store.operations_of(&org.id, done, page).await
}

/// Asks a running operation to stop. One still waiting ends at once, and the mapping
/// it was to compare is free (weighed again after a refresh interval, not restarted).
pub async fn cancel_operation(
    store: &Store,
    caller: &Caller,
    settings: &MappingSettings,
    (id, name): (&str, &str),
) -> Result<()> {
    let op = operation(store, caller, (id, name)).await?;
    let now = now();
    let mut tx = store.begin().await?;
    // The mapping first, as every change of both takes them.
    let mapping = tx.account_mapping(&op.target_id, true).await?;
    if !tx.cancel_operation(&op.id, now).await? {
        return Err(Error::failed_precondition(
            "OPERATION_DONE",
            format!("{name} has finished"),
        ));
    }
    if let Some(mut m) = mapping
        && m.operation_id.as_deref() == Some(op.id.as_str())
        && tx.operation(&op.id).await?.is_some_and(|o| o.state.done())
    {
        m.operation_id = None;
        m.check_time = store
            .clock()
            .now()
            .checked_add(settings.refresh_interval)
            .ok();
        let mapping_name = names::account_mapping(&m.id);
        write(&mut tx, &mut m, &mapping_name).await?;
    }
    tx.commit().await
}

/// Forgets a finished operation.
pub async fn delete_operation(
    store: &Store,
    caller: &Caller,
    (id, name): (&str, &str),
) -> Result<()> {
    let op = operation(store, caller, (id, name)).await?;
    if !store.delete_operation(&op.id).await? {
        return Err(Error::failed_precondition(
            "OPERATION_RUNNING",
            format!("{name} has not finished; cancel it first"),
        ));
    }
    Ok(())
}

/// Waits until operation `id` is done or `timeout` passes, looking every `poll`.
pub async fn wait_operation(
    store: &Store,
    caller: &Caller,
    (id, name): (&str, &str),
    timeout: Duration,
) -> Result<Operation> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let op = operation(store, caller, (id, name)).await?;
        if op.state.done() || tokio::time::Instant::now() >= deadline {
            return Ok(op);
        }
        let nap = Duration::from_millis(100).min(deadline - tokio::time::Instant::now());
        tokio::time::sleep(nap).await;
    }
}

/// What an access request asked through an overlap is for.
pub struct OverlapAsk {
    pub segment: (Slug, SegmentId, String),
    pub partner_segment: (Slug, SegmentId, String),
    pub level: AccessLevel,
    pub fields: FieldSet,
    pub reason: Reason,
}

/// The caller asks the other side for access to the other side's records that
/// matched at the last comparison of the pair; returns (made, left to ask for).
pub async fn request_overlap_access(
    tx: &mut Tx,
    caller: &Caller,
    target: (&MappingId, &str),
    ask: OverlapAsk,
) -> Result<(i64, i64)> {
    let name = target.1;
    let (m, side) = locked(tx, caller, (target.0, name, "")).await?;
    active(&m)?;
    let in_side = |(slug, id, written): &(Slug, SegmentId, String), s: Side, field: &str| {
        if slug == &m.org(s).slug && m.segment_ids(s).iter().any(|x| x == id.as_str()) {
            Ok(id.as_str().to_owned())
        } else {
            Err(Error::invalid(
                field,
                format!(
                    "{written} is not one of the mapping's {} segments",
                    match s {
                        Side::Requester => "requester's",
                        Side::Partner => "partner's",
                    }
                ),
            ))
        }
    };
    partnership_to_share_through(tx, &m.requester, &m.partner).await?;
    let mine = in_side(&ask.segment, side, "segment")?;
    let theirs = in_side(&ask.partner_segment, side.other(), "partner_segment")?;
    let (requester_segment, partner_segment) = match side {
        Side::Requester => (mine, theirs),
        Side::Partner => (theirs, mine),
    };
    let overlap = m
        .overlaps
        .iter()
        .find(|o| o.requester_segment == requester_segment && o.partner_segment == partner_segment)
        .ok_or_else(|| {
            Error::failed_precondition(
                "OVERLAP_NOT_COMPARED",
                "the pair has not been compared (a segment was small or added since)",
            )
        })?;
    if overlap.both.bound != Bound::Exact {
        return Err(Error::failed_precondition(
            "OVERLAP_TOO_SMALL",
            format!(
                "the pair's overlap is under the mapping's threshold of {}; asking would show its size",
                m.threshold
            ),
        ));
    }
    let me = m.org(side).clone();
    let owner = m.org(side.other()).clone();
    let found = tx
        .unasked_matches(
            &m.id,
            (&requester_segment, &partner_segment),
            side.other(),
            (&me.id, &owner.id),
            MAX_OVERLAP_BATCH,
        )
        .await?;
    // The figures count every match; the records that can be asked for are the other
    // side's own. Fewer of those than the threshold would show a small overlap's size.
    if found.matched < i64::from(m.threshold) {
        return Err(Error::failed_precondition(
            "OVERLAP_TOO_SMALL",
            format!(
                "fewer than {} of the matching records are the other side's own; asking would show how many",
                m.threshold
            ),
        ));
    }
    let now = now();
    for customer_id in &found.customer_ids {
        let r = AccessRequest {
            id: Uuid::now_v7().to_string(),
            requester: me.clone(),
            owner: owner.clone(),
            customer_id: customer_id.clone(),
            match_id: String::new(),
            mapping_id: Some(m.id.clone()),
            level: ask.level,
            fields: ask.fields,
            reason: ask.reason.as_str().to_owned(),
            state: RequestState::Pending,
            decision_reason: String::new(),
            grant_id: None,
            create_time: now,
            decide_time: None,
        };
        tx.insert_access_request(&r).await?;
    }
    let made = found.customer_ids.len() as i64;
    if made > 0 {
        mapping_event(tx, EventType::AccountMappingAccessRequested, &m);
    }
    Ok((made, found.total - made))
}

/// The caller approves or declines the pending requests made to it through the
/// mapping; returns (answered, left).
pub async fn answer_overlap_access(
    tx: &mut Tx,
    caller: &Caller,
    target: (&MappingId, &str),
    approve: bool,
    reason: Reason,
) -> Result<(i64, i64)> {
    let name = target.1;
    let (m, side) = locked(tx, caller, (target.0, name, "")).await?;
    let me = m.org(side).clone();
    let (pending, total) = tx
        .pending_mapping_requests(&m.id, &me.id, MAX_OVERLAP_BATCH)
        .await?;
    let answered = pending.len() as i64;
    for mut r in pending {
        let request_name = names::access_request(&r.id);
        let still_there = tx.customer(&me.id, &r.customer_id).await?.is_some_and(|c| {
            c.customer.state == crate::domain::customer::RecordState::Active
                && c.customer.owner.id == me.id
        });
        let narrower = match existing_grant(tx, &r).await? {
            Some(g) => !covers(&g, &r),
            None => false,
        };
        if approve && !still_there {
            let gone = Reason::parse("the customer is no longer active")
                .map_err(|v| Error::Internal(anyhow::anyhow!(v.description)))?;
            answer(tx, &me, &mut r, false, gone, &request_name).await?;
        } else if approve && narrower {
            // All at once cannot widen a grant the requester holds: declined, saying
            // why; one by one, the owner may revoke it and approve.
            let held = Reason::parse("you hold a narrower grant on this customer already")
                .map_err(|v| Error::Internal(anyhow::anyhow!(v.description)))?;
            answer(tx, &me, &mut r, false, held, &request_name).await?;
        } else {
            answer(tx, &me, &mut r, approve, reason.clone(), &request_name).await?;
        }
    }
    if answered > 0 {
        mapping_event(tx, EventType::AccountMappingAccessAnswered, &m);
    }
    Ok((answered, total - answered))
}

/// One side's members, and each of its segments read with its size.
type SideRead = (Vec<Member>, Vec<(String, i64)>);

/// A comparison's reading so far.
struct Reading<'a> {
    op: &'a Operation,
    done: i64,
    total: i64,
    hasher: &'a RandomState,
    /// Segments that had fewer members than the threshold once read, with their size.
    left_out: Vec<(String, i64)>,
}

/// Runs the hub's long-running operations (comparisons) and starts the refreshes of
/// active mappings that are due, forever.
pub struct Comparisons {
    store: Store,
    customers: Arc<CustomerSettings>,
    settings: MappingSettings,
}

impl Comparisons {
    pub fn new(store: Store, customers: Arc<CustomerSettings>, settings: MappingSettings) -> Self {
        Self {
            store,
            customers,
            settings,
        }
    }

    /// How often the worker looks for due refreshes (by the workers' clock, which
    /// tests move): the refresh interval, between a second and a minute.
    fn cadence(&self) -> SignedDuration {
        let secs = self.settings.refresh_interval.as_secs().clamp(1, 60);
        SignedDuration::from_secs(secs)
    }

    pub async fn run(self) {
        let mut last_look: Option<Timestamp> = None;
        loop {
            let mut busy = false;
            let now = self.store.clock().now();
            match self
                .store
                .claim_operation(now, LEASE, &[COMPARE_VERB])
                .await
            {
                Ok(Some(op)) => {
                    busy = true;
                    self.run_one(&op).await;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "failed to look for operations"),
            }
            if !busy && last_look.is_none_or(|t| now.duration_since(t) >= self.cadence()) {
                last_look = Some(now);
                if let Err(error) = self.refresh_due(now).await {
                    tracing::warn!(%error, "failed to look for mappings to refresh");
                }
            }
            self.store.looked(Worker::Operations, busy);
            if busy {
                continue;
            }
            let nap = Duration::try_from(self.cadence())
                .unwrap_or(Duration::from_secs(5))
                .min(Duration::from_secs(5));
            let _ = tokio::time::timeout(nap, self.store.operations_signal().notified()).await;
        }
    }

    /// Weighs each active mapping whose check time has come, and starts the
    /// comparisons that may run; the others are weighed again later (when the
    /// interval ends, or a minute on if too little changed).
    async fn refresh_due(&self, now: Timestamp) -> Result<()> {
        let store = &self.store;
        for id in store.mappings_to_check(now, 20).await? {
            let Some(m) = store.account_mapping(&id).await? else {
                continue;
            };
            let name = names::account_mapping(&id);
            let weighed = weigh_refresh(store, &self.customers, &self.settings, &m).await;
            let mut tx = store.begin().await?;
            match weighed {
                Ok(Weighed::Start) => {
                    match start_refresh(&mut tx, &m, &name).await {
                        Ok(op) => {
                            tx.commit().await?;
                            tracing::info!(mapping = %name, operation = %op.id, "mapping refresh started");
                        }
                        Err(error) => {
                            tracing::warn!(mapping = %name, %error, "failed to refresh a mapping")
                        }
                    }
                    continue;
                }
                Ok(Weighed::Running(_)) => continue,
                Err(Error::FailedPrecondition { .. }) => {}
                Err(error) => {
                    tracing::warn!(mapping = %name, %error, "failed to weigh a mapping's refresh")
                }
            }
            // Not now: when the interval ends, or (too little changed) a quarter of an
            // interval on, so an unchanged mapping is not counted at every look.
            let later = now + self.cadence().max(self.settings.refresh_interval / 4);
            let due = m
                .compare_time
                .and_then(|t| t.checked_add(self.settings.refresh_interval).ok())
                .filter(|t| *t > now)
                .unwrap_or(later);
            tx.check_mapping_at(&id, m.revision, due).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    async fn run_one(&self, op: &Operation) {
        let outcome = self.compare(op).await;
        let now = self.store.clock().now();
        let finished = async {
            let (state, error) = match &outcome {
                Ok(Some(())) => return Ok(()),
                Ok(None) => (
                    OperationState::Cancelled,
                    (tonic_code::CANCELLED, "cancelled".to_owned()),
                ),
                Err(Error::FailedPrecondition { message, .. }) => (
                    OperationState::Failed,
                    (tonic_code::FAILED_PRECONDITION, message.clone()),
                ),
                // Its cause is the hub's to log, not the partners' to read (it may
                // quote a stored filter).
                Err(_) => (
                    OperationState::Failed,
                    (
                        tonic_code::INTERNAL,
                        "the comparison failed; the hub's operator has the cause in its log"
                            .to_owned(),
                    ),
                ),
            };
            // The mapping first, as every other change of both takes them.
            let mut tx = self.store.begin().await?;
            let mapping = tx.account_mapping(&op.target_id, true).await?;
            tx.finish_operation(&op.id, state, Some((error.0, &error.1)), now)
                .await?;
            if let Some(mut m) = mapping
                && m.operation_id.as_deref() == Some(op.id.as_str())
            {
                m.operation_id = None;
                // Weighed again after an interval, not at once.
                m.check_time = now.checked_add(self.settings.refresh_interval).ok();
                let name = names::account_mapping(&m.id);
                write(&mut tx, &mut m, &name).await?;
            }
            tx.commit().await
        };
        if let Err(e) = &outcome {
            tracing::warn!(operation = %op.id, error = %e, "a comparison failed");
        }
        if let Err(error) = finished.await {
            tracing::warn!(operation = %op.id, %error, "failed to record an operation's end");
        }
    }

    /// Compares the mapping `op` works on and records the figures; `Ok(None)` when
    /// cancelled.
    async fn compare(&self, op: &Operation) -> Result<Option<()>> {
        let store = &self.store;
        let m = store
            .account_mapping(&op.target_id)
            .await?
            .ok_or_else(|| Error::failed_precondition("MAPPING_GONE", "the mapping is gone"))?;
        active(&m)?;
        partnered(store, &m).await?;
        // Changes from here on count towards the next refresh. (By the workers'
        // clock, which is the system's but where tests move it.)
        let started = store.clock().now();
        let (inputs, _) = current_inputs(store, &self.customers, &m, None).await?;
        let threshold = i64::from(m.threshold);
        // Segments under the threshold are left out, and their members not read.
        let total: i64 = inputs
            .iter()
            .filter(|i| i.members >= threshold)
            .map(|i| i.members)
            .sum();
        if self.progress(op, 0, total).await? {
            return Ok(None);
        }
        let hasher = RandomState::new();
        let mut read = Reading {
            op,
            done: 0,
            total,
            hasher: &hasher,
            left_out: vec![],
        };
        let Some((r_members, r_segments)) = self
            .read_side(&m, Side::Requester, &inputs, &mut read)
            .await?
        else {
            return Ok(None);
        };
        let Some((p_members, p_segments)) = self
            .read_side(&m, Side::Partner, &inputs, &mut read)
            .await?
        else {
            return Ok(None);
        };
        let done = read.done;
        let r_sizes: Vec<i64> = r_segments.iter().map(|s| s.1).collect();
        let p_sizes: Vec<i64> = p_segments.iter().map(|s| s.1).collect();
        let compared = compare(&r_members, &p_members, (&r_sizes, &p_sizes));
        let mut overlaps = vec![];
        let mut matches: Vec<(&str, &str, Side, &[String])> = vec![];
        for (i, (r_id, _)) in r_segments.iter().enumerate() {
            for (j, (p_id, _)) in p_segments.iter().enumerate() {
                let counts = compared.pairs.get(&(i, j)).copied().unwrap_or_default();
                let (both, only_requester, only_partner) = counts.shown(m.threshold);
                overlaps.push(Overlap {
                    requester_segment: r_id.clone(),
                    partner_segment: p_id.clone(),
                    both,
                    only_requester,
                    only_partner,
                });
                for side in [Side::Requester, Side::Partner] {
                    if let Some(ids) = compared.matched.get(&(i, j, side)) {
                        matches.push((r_id, p_id, side, ids));
                    }
                }
            }
        }
        // Sizes as listed: a record that changed during the reading counts as read.
        let mut inputs = inputs;
        for input in &mut inputs {
            if let Some((_, size)) = r_segments
                .iter()
                .chain(&p_segments)
                .chain(&read.left_out)
                .find(|(id, _)| id == &input.segment_id)
            {
                input.members = *size;
            }
        }
        let mut tx = store.begin().await?;
        let Some(mut current) = tx.account_mapping(&m.id, true).await? else {
            return Err(Error::failed_precondition(
                "MAPPING_GONE",
                "the mapping is gone",
            ));
        };
        if current.state != MappingState::Active
            || current.operation_id.as_deref() != Some(op.id.as_str())
        {
            return Ok(None);
        }
        if !tx
            .finish_operation(&op.id, OperationState::Succeeded, None, store.clock().now())
            .await?
        {
            // Cancelled while the figures were being written.
            return Ok(None);
        }
        tx.replace_mapping_matches(&m.id, &matches).await?;
        current.overlaps = overlaps;
        current.inputs = inputs;
        current.compare_time = Some(started);
        current.refresh_time = started.checked_add(self.settings.refresh_interval).ok();
        current.check_time = current.refresh_time;
        current.operation_id = None;
        let name = names::account_mapping(&m.id);
        write(&mut tx, &mut current, &name).await?;
        mapping_event(&mut tx, EventType::AccountMappingCompared, &current);
        tx.commit().await?;
        tracing::info!(mapping = %name, operation = %op.id, members = done, "accounts compared");
        Ok(Some(()))
    }

    /// Reads the members of `side`'s segments that have at least the threshold of
    /// members (`inputs`), recording progress in `read`: the members, and each
    /// segment read with its size. `None` when the operation is to stop.
    async fn read_side(
        &self,
        m: &AccountMapping,
        side: Side,
        inputs: &[SegmentInput],
        read: &mut Reading<'_>,
    ) -> Result<Option<SideRead>> {
        let store = &self.store;
        let org = m.org(side);
        let reader = reader_for(org);
        let mut members: HashMap<String, Member> = HashMap::new();
        let mut included = vec![];
        for input in inputs.iter().filter(|i| i.side == side) {
            if input.members < i64::from(m.threshold) {
                continue;
            }
            let bit = 1u16 << included.len();
            let Some(segment) = store.segment(&org.id, &input.segment_id).await? else {
                continue;
            };
            let filter = crate::store::stored_filter(&segment.filter)?;
            let mut after: Option<String> = None;
            let mut size = 0;
            loop {
                let listing = Listing::by_creation(&filter, after.as_deref(), PAGE);
                let page = list(store, &self.customers, &reader, listing).await?;
                for (seen, access) in &page.items {
                    let c = &seen.customer;
                    size += 1;
                    members
                        .entry(c.id.clone())
                        .or_insert_with(|| Member {
                            customer_id: c.id.clone(),
                            segments: 0,
                            keys: match_keys(read.hasher, c.kind, &c.profile, access.fields()),
                            owned: c.owner.id == org.id,
                        })
                        .segments |= bit;
                }
                read.done += page.items.len() as i64;
                let total = read.total.max(read.done);
                if self.progress(read.op, read.done, total).await? {
                    return Ok(None);
                }
                match page.next_after {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            if size < i64::from(m.threshold) {
                // It shrank under the threshold while being read: left out after all.
                members.retain(|_, member| {
                    member.segments &= !bit;
                    member.segments != 0
                });
                read.left_out.push((input.segment_id.clone(), size));
                continue;
            }
            included.push((input.segment_id.clone(), size));
        }
        Ok(Some((members.into_values().collect(), included)))
    }

    /// Records progress; true if the operation is to stop.
    async fn progress(&self, op: &Operation, done: i64, total: i64) -> Result<bool> {
        let now = self.store.clock().now();
        self.store
            .operation_progress(&op.id, (done, total), now, LEASE)
            .await
    }
}

/// The organization named `slug` (for a mapping's partner).
pub async fn partner(store: &Store, slug: &Slug) -> Result<OrgRef> {
    organization(store, slug).await
}
