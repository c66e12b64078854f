//! Cases between partner organizations, run by workflow templates: opening, firing
//! transitions, comments, participants, tasks assigned to an organization.
//!
//! A case is seen by its participants only; to anyone else it reads as NOT_FOUND, as
//! if it did not exist. Every time here comes from the store's clock (the one the
//! timer worker reads), so SLA behaviour is tested by moving that clock.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use uuid::Uuid;

use super::check_etag;
use super::customers::{audience_before, coverage_after, visible_in};
use crate::domain::case::conflict::{Conflict, ConflictPolicy};
use crate::domain::case::sla::SlaClock;
use crate::domain::case::timer::{Timer, TimerKind};
use crate::domain::case::workflow::{Refusal, Template, Workflows};
use crate::domain::case::{
    Case, CommentVisibility, HistoryEntry, MAX_PARTICIPANTS, Participant, Priority, Task,
    TaskAction, TaskState,
};
use crate::domain::customer::{Customer, RecordState};
use crate::domain::error::{Error, FieldViolation, Result};
use crate::domain::event::EventType;
use crate::domain::ids::{CaseId, CustomerId, MemberId, TaskId};
use crate::domain::names;
use crate::domain::{OrgRef, Slug};
use crate::feed::cases::{record_change, tell_case, tell_comment, tell_conflict, tell_task};
use crate::store::{CaseQuery, Cause, Page, SeenCustomer, Store, Tx};

/// A case and its customer as one participant sees it (`None` if it may not).
pub struct Seen {
    pub case: Case,
    pub customer: Option<SeenCustomer>,
}

/// The time of the hub's clock.
pub fn now(store: &Store) -> Timestamp {
    store.clock().now()
}

/// The loaded template `name`, or FAILED_PRECONDITION.
pub fn template<'w>(workflows: &'w Workflows, name: &str) -> Result<&'w Template> {
    workflows.get(name).ok_or_else(|| {
        Error::failed_precondition(
            "TEMPLATE_NOT_LOADED",
            format!("workflow template {name:?} is not loaded on this hub"),
        )
    })
}

/// Case `id` (named `name`), if `org` participates in it; NOT_FOUND otherwise.
pub async fn read(store: &Store, org: &OrgRef, id: &str, name: &str) -> Result<Case> {
    store
        .case(id)
        .await?
        .filter(|c| c.participant(&org.id).is_some())
        .ok_or_else(|| Error::NotFound(format!("case {name:?}")))
}

/// [`read`] inside a write transaction, locking the case.
async fn read_in(tx: &mut Tx, org: &OrgRef, id: &str, name: &str) -> Result<Case> {
    tx.case(id)
        .await?
        .filter(|c| c.participant(&org.id).is_some())
        .ok_or_else(|| Error::NotFound(format!("case {name:?}")))
}

/// `case` with its customer as `org` sees it.
pub async fn seen(store: &Store, org: &OrgRef, case: Case) -> Result<Seen> {
    let customer = store.customer(&org.id, &case.customer_id).await?;
    Ok(Seen { case, customer })
}

/// [`seen`] inside a write transaction.
async fn seen_in(tx: &mut Tx, org: &OrgRef, case: Case) -> Result<Seen> {
    let customer = tx.customer(&org.id, &case.customer_id).await?;
    Ok(Seen { case, customer })
}

/// Why a transition cannot fire, as the caller is told.
fn refusal(
    r: Refusal,
    case_name: &str,
    transition: &str,
    template: &Template,
    roles: &[&str],
) -> Error {
    let list = |a: &[String]| {
        if a.is_empty() {
            "none for your organization's role".to_owned()
        } else {
            a.join(", ")
        }
    };
    match r {
        Refusal::UnknownTransition { allowed } => Error::invalid(
            "transition",
            format!(
                "{transition:?} is not a transition of {}; allowed now: {}",
                template.name,
                list(&allowed)
            ),
        ),
        Refusal::NotFromHere { state, allowed } => Error::WrongState {
            reason: "TRANSITION_NOT_ALLOWED",
            message: format!(
                "transition {transition:?} cannot fire in state {state:?}; allowed now: {}",
                list(&allowed)
            ),
            subject: case_name.to_owned(),
            allowed,
        },
        Refusal::RoleNotAllowed { roles: needed } => Error::PermissionDenied {
            reason: "ROLE_NOT_ALLOWED",
            message: format!(
                "transition {transition:?} may be fired by {} only; your organization is {}",
                needed.join(", "),
                roles.join(", ")
            ),
        },
        Refusal::MissingFields(missing) => Error::InvalidArgument(
            missing
                .into_iter()
                .map(|f| {
                    FieldViolation::new(
                        format!("fields.{f}"),
                        format!("is required by transition {transition:?}"),
                    )
                    .because("FIELD_REQUIRED")
                })
                .collect(),
        ),
    }
}

/// The organization a name points at, or NOT_FOUND.
async fn org_named(tx: &mut Tx, slug: &Slug, name: &str) -> Result<OrgRef> {
    tx.organization(slug)
        .await?
        .map(|o| OrgRef {
            id: o.id,
            slug: o.slug,
        })
        .ok_or_else(|| Error::NotFound(format!("organization {name:?}")))
}

async fn require_partner(tx: &mut Tx, caller: &OrgRef, other: &OrgRef) -> Result<()> {
    if caller.id == other.id
        || tx
            .active_partnership_between(&caller.id, &other.id)
            .await?
            .is_some()
    {
        Ok(())
    } else {
        Err(Error::failed_precondition(
            "NOT_PARTNERS",
            format!(
                "{} has no active partnership with {}",
                names::organization(&caller.slug),
                names::organization(&other.slug)
            ),
        ))
    }
}

/// A case to open, its fields checked against `template`.
pub struct OpenCase<'a> {
    pub template: &'a Template,
    pub customer_id: CustomerId,
    /// The customer's resource name as the caller wrote it.
    pub customer_name: String,
    pub title: String,
    pub description: String,
    pub priority: Priority,
    /// Each participant: its organization, its role and the name the caller wrote.
    pub participants: Vec<(Slug, String, String)>,
    /// Members told of a breach at once: their organization and id.
    pub contacts: Vec<(Slug, MemberId)>,
    pub fields: BTreeMap<String, String>,
}

/// Opens case `id` for the caller's organization `org` on an active customer it may
/// see, with partners it has an active partnership with, starts its SLA clocks and
/// tells every participant.
pub async fn open(
    tx: &mut Tx,
    org: &OrgRef,
    (id, now): (&CaseId, Timestamp),
    o: &OpenCase<'_>,
) -> Result<Seen> {
    let template = o.template;
    let (seen, _) = visible_in(tx, org, &o.customer_id, &names::customer(&o.customer_id)).await?;
    // A case open on a customer can move it into a rule's segment on `open_cases`.
    let audience = audience_before(tx, &seen.customer).await?;
    if seen.customer.state != RecordState::Active {
        return Err(Error::failed_precondition(
            "CUSTOMER_NOT_ACTIVE",
            format!("{} is not active", o.customer_name),
        ));
    }
    let mut members = vec![];
    for (slug, role, raw) in &o.participants {
        let other = org_named(tx, slug, raw).await?;
        require_partner(tx, org, &other).await?;
        members.push(Participant {
            organization: other,
            role: role.clone(),
        });
    }
    for (slug, member_id) in &o.contacts {
        let owner = members
            .iter()
            .find(|p| p.organization.slug == *slug)
            .map(|p| p.organization.id.clone())
            .unwrap_or_default();
        if tx.member(&owner, member_id).await?.is_none() {
            return Err(Error::invalid(
                "case.escalation_contacts",
                format!("{} is not a member", names::member(slug, member_id)),
            ));
        }
    }
    let case = Case {
        id: id.to_string(),
        template: template.name.clone(),
        state: template.initial.clone(),
        title: o.title.clone(),
        description: o.description.clone(),
        priority: o.priority,
        customer_id: o.customer_id.to_string(),
        participants: members,
        fields: o.fields.clone(),
        escalation_contacts: o
            .contacts
            .iter()
            .map(|(s, m)| names::member(s, m))
            .collect(),
        clocks: SlaClock::start_all(template, o.priority, &template.initial, now),
        conflicts: vec![],
        opened_by: org.clone(),
        create_time: now,
        update_time: now,
        state_time: now,
        revision: 1,
    };
    let mut case = case;
    tx.create_case(&case, template).await?;
    let mut entry = HistoryEntry::new(id, EventType::CaseOpened, Some(org.clone()), now);
    entry.to_state.clone_from(&case.state);
    tx.insert_case_history(&entry).await?;
    let conflicts = find_conflicts(tx, &mut case, template, now).await?;
    tell_case(
        tx,
        &case,
        Some(template),
        EventType::CaseOpened,
        &[],
        &HashMap::new(),
        now,
    )
    .await?;
    settle_conflicts(tx, &mut case, template, conflicts, true, now).await?;
    // After a first-come rejection, so partners are told of the case as it commits.
    coverage_after(tx, &seen.customer, audience).await?;
    Ok(Seen {
        case,
        customer: Some(seen),
    })
}

/// The open cases `case` conflicts with under its template's rule, each with the
/// organizations judging; each conflict is recorded (and shown on both cases to their
/// judges). Locks the customer first, so two registrations opened at once queue and
/// the second sees the first.
async fn find_conflicts(
    tx: &mut Tx,
    case: &mut Case,
    template: &Template,
    now: Timestamp,
) -> Result<Vec<(Case, Vec<OrgRef>)>> {
    let Some(rule) = &template.conflict else {
        return Ok(vec![]);
    };
    if template.is_final(&case.state) {
        return Ok(vec![]);
    }
    tx.lock_customers(&[&case.customer_id]).await?;
    // Every open case of the template on the customer, by its fields first; only
    // those with the same key are read whole.
    let key = rule.key(&case.fields);
    let same: Vec<String> = tx
        .open_case_fields(&case.customer_id, &case.template)
        .await?
        .into_iter()
        .filter(|(id, opened_by, fields)| {
            *id != case.id
                && *opened_by != case.opened_by.id
                && key.is_some()
                && rule.key(fields) == key
        })
        .map(|(id, _, _)| id)
        .collect();
    let others = tx.cases_with_ids(&same).await?;
    let mut found = vec![];
    for mut other in others {
        let judges = case.conflict_judges(rule, &other);
        if judges.is_empty() {
            continue;
        }
        for judge in &judges {
            tx.insert_conflict((&case.id, &other.id), &judge.id, now)
                .await?;
            case.conflicts.push(Conflict {
                case_id: other.id.clone(),
                judge_id: judge.id.clone(),
                detect_time: now,
            });
            other.conflicts.push(Conflict {
                case_id: case.id.clone(),
                judge_id: judge.id.clone(),
                detect_time: now,
            });
        }
        found.push((other, judges));
    }
    Ok(found)
}

/// After [`find_conflicts`]: under `first_come`, a case found in conflict when it
/// opened is turned down at once by the hub (its template's reject transition, the
/// reason written in); then each judge is told, with both cases side by side.
async fn settle_conflicts(
    tx: &mut Tx,
    case: &mut Case,
    template: &Template,
    found: Vec<(Case, Vec<OrgRef>)>,
    at_open: bool,
    now: Timestamp,
) -> Result<()> {
    let Some(rule) = &template.conflict else {
        return Ok(());
    };
    if found.is_empty() {
        return Ok(());
    }
    let mut found = found;
    if at_open
        && let ConflictPolicy::FirstCome {
            transition,
            reason_field,
        } = &rule.policy
    {
        if let Some(field) = reason_field {
            case.fields.insert(field.clone(), rule.reason());
        }
        let to = template
            .fire(&case.state, transition, None, &case.fields)
            .map(|t| t.to.clone())
            .map_err(|r| {
                Error::Internal(anyhow::anyhow!(
                    "template {}: reject_transition {transition} cannot fire at open: {r:?}",
                    template.name
                ))
            })?;
        let from = case.state.clone();
        case.enter_state(template, &to, now);
        let mut entry = HistoryEntry::new(&case.id, EventType::CaseTransitioned, None, now);
        entry.transition.clone_from(transition);
        entry.from_state = from;
        entry.to_state = to;
        entry.body = rule.reason();
        // The hub acts, as its timers do; the request that set it off stays named.
        let caller = tx.cause().clone();
        tx.set_cause(Cause {
            organization: None,
            key_id: String::new(),
            request_id: caller.request_id.clone(),
        });
        let recorded = record_change(tx, case, template, &entry, &[], now).await;
        tx.set_cause(caller);
        recorded?;
        // Closed: its conflicts are gone (the store dropped them with the close).
        case.conflicts.clear();
        for (other, _) in &mut found {
            other.conflicts.retain(|k| k.case_id != case.id);
        }
    }
    for (other, judges) in &found {
        for judge in judges {
            tell_conflict(tx, (case, other), (template, rule), judge, now).await?;
        }
    }
    Ok(())
}

/// The cases `query` selects among those `org` participates in; its participant
/// filter names an organization by slug (an unknown one participates in nothing).
pub async fn list(
    store: &Store,
    org: &OrgRef,
    mut query: CaseQuery,
    participant: Option<&Slug>,
) -> Result<Page<Seen>> {
    query.viewer_id.clone_from(&org.id);
    if let Some(slug) = participant {
        query.participant_id = Some(
            store
                .organization(slug)
                .await?
                .map_or_else(|| "-".to_owned(), |o| o.id),
        );
    }
    let found = store.cases(&query).await?;
    let mut cases = Vec::with_capacity(found.items.len());
    for c in found.items {
        cases.push(seen(store, org, c).await?);
    }
    Ok(Page {
        items: cases,
        next_after: found.next_after,
    })
}

/// The case's customer and who sees it, before a change to the case that may change
/// its open cases as its owner counts them (see [`audience_before`]).
async fn case_audience(
    tx: &mut Tx,
    org: &OrgRef,
    case: &Case,
) -> Result<Option<(Customer, Vec<SeenCustomer>)>> {
    let Some(seen) = tx.customer(&org.id, &case.customer_id).await? else {
        return Ok(None);
    };
    let audience = audience_before(tx, &seen.customer).await?;
    Ok(Some((seen.customer, audience)))
}

/// After the change: [`coverage_after`].
async fn case_coverage(tx: &mut Tx, before: Option<(Customer, Vec<SeenCustomer>)>) -> Result<()> {
    if let Some((customer, audience)) = before {
        coverage_after(tx, &customer, audience).await?;
    }
    Ok(())
}

/// A transition to fire on a case.
pub struct Transition<'a> {
    pub id: &'a CaseId,
    /// The case's resource name as the caller wrote it.
    pub name: &'a str,
    pub etag: &'a str,
    pub transition: &'a str,
    /// Fields set with the transition, checked against `template`.
    pub fields: BTreeMap<String, String>,
    pub comment: String,
    pub template: &'a Template,
}

/// Fires a transition of the case's template, if the caller's roles may and the
/// fields it needs are set, and tells every participant.
pub async fn transition(
    tx: &mut Tx,
    org: &OrgRef,
    t: Transition<'_>,
    now: Timestamp,
) -> Result<Seen> {
    let template = t.template;
    let mut case = read_in(tx, org, t.id, t.name).await?;
    check_etag(t.etag, case.revision, t.name)?;
    let roles = case.roles_of(&org.id);
    fixed_fields(template, &case, &t.fields)?;
    let mut merged = case.fields.clone();
    merged.extend(t.fields);
    let fired = template
        .fire(&case.state, t.transition, Some(&roles), &merged)
        .map_err(|r| refusal(r, t.name, t.transition, template, &roles))?;
    let (name, from, to) = (fired.name.clone(), case.state.clone(), fired.to.clone());
    case.fields = merged;
    case.enter_state(template, &to, now);
    let mut entry = HistoryEntry::new(t.id, EventType::CaseTransitioned, Some(org.clone()), now);
    entry.transition = name;
    entry.from_state = from;
    entry.to_state = to;
    entry.body = t.comment;
    let reopened = template.is_final(&entry.from_state) && !template.is_final(&entry.to_state);
    let audience = case_audience(tx, org, &case).await?;
    // A reopened case is open again, so it may conflict again (the judge decides).
    let conflicts = if reopened {
        find_conflicts(tx, &mut case, template, now).await?
    } else {
        vec![]
    };
    record_change(tx, &mut case, template, &entry, &[], now).await?;
    settle_conflicts(tx, &mut case, template, conflicts, false, now).await?;
    case_coverage(tx, audience).await?;
    seen_in(tx, org, case).await
}

/// Refuses a change to a field the template's conflict rule compares: it is fixed
/// once the case is open, or a registration could move onto another's ground unseen.
fn fixed_fields(
    template: &Template,
    case: &Case,
    changes: &BTreeMap<String, String>,
) -> Result<()> {
    let Some(rule) = &template.conflict else {
        return Ok(());
    };
    let violations: Vec<FieldViolation> = rule
        .fields
        .iter()
        .filter(|f| {
            changes
                .get(*f)
                .is_some_and(|v| case.fields.get(*f) != Some(v))
        })
        .map(|f| {
            FieldViolation::new(
                format!("fields.{f}"),
                "is fixed once the case is open (the template's conflict rule compares it); \
                 open a new case instead",
            )
            .because("FIELD_FIXED")
        })
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// A comment on a case.
pub struct Comment {
    pub body: String,
    pub visibility: CommentVisibility,
    /// The member of the caller's organization who wrote it, and the name the caller
    /// wrote for it.
    pub member: Option<(MemberId, String)>,
}

/// Adds a comment to case `id` (named `name`) and tells those who may read it.
pub async fn comment(
    tx: &mut Tx,
    org: &OrgRef,
    (id, name): (&CaseId, &str),
    c: Comment,
    now: Timestamp,
) -> Result<HistoryEntry> {
    let case = read_in(tx, org, id, name).await?;
    if let Some((m, member_name)) = &c.member
        && tx.member(&org.id, m).await?.is_none()
    {
        return Err(Error::NotFound(format!("member {member_name:?}")));
    }
    let mut entry = HistoryEntry::new(id, EventType::CaseCommented, Some(org.clone()), now);
    entry.body = c.body;
    entry.visibility = c.visibility;
    entry.member_id = c.member.map(|(m, _)| m.into_string());
    tx.insert_case_history(&entry).await?;
    tell_comment(tx, &case, &entry);
    Ok(entry)
}

/// Adds organization `slug` (named `org_name`) to case `id` (named `name`) in
/// `role`; it must be a partner of the caller's.
pub async fn add_participant(
    tx: &mut Tx,
    org: &OrgRef,
    (id, name, template): (&CaseId, &str, &Template),
    (slug, org_name, role): (&Slug, &str, &str),
    now: Timestamp,
) -> Result<Seen> {
    let mut case = read_in(tx, org, id, name).await?;
    let other = org_named(tx, slug, org_name).await?;
    if case.participant(&other.id).is_some() {
        return Err(Error::AlreadyExists {
            reason: "ALREADY_A_PARTICIPANT",
            message: format!("{org_name} already participates"),
        });
    }
    if case.participants.len() >= MAX_PARTICIPANTS {
        return Err(Error::failed_precondition(
            "TOO_MANY_PARTICIPANTS",
            format!("a case has at most {MAX_PARTICIPANTS} participants"),
        ));
    }
    require_partner(tx, org, &other).await?;
    case.participants.push(Participant {
        organization: other,
        role: role.to_owned(),
    });
    case.update_time = now;
    let mut entry = HistoryEntry::new(id, EventType::CaseParticipantAdded, Some(org.clone()), now);
    entry.subject = org_name.to_owned();
    entry.body = role.to_owned();
    let audience = case_audience(tx, org, &case).await?;
    record_change(tx, &mut case, template, &entry, &[], now).await?;
    // A judge joining an open case judges its conflicts from now on.
    if template.conflict.as_ref().is_some_and(|r| r.judge == role) {
        let conflicts = find_conflicts(tx, &mut case, template, now).await?;
        settle_conflicts(tx, &mut case, template, conflicts, false, now).await?;
    }
    case_coverage(tx, audience).await?;
    seen_in(tx, org, case).await
}

/// Removes organization `slug` (named `org_name`) from case `id` (named `name`): an
/// organization may remove itself, the one that opened the case any other, and the
/// last participant stays. The one removed hears of it a last time.
pub async fn remove_participant(
    tx: &mut Tx,
    org: &OrgRef,
    (id, name, template): (&CaseId, &str, &Template),
    (slug, org_name): (&Slug, &str),
    now: Timestamp,
) -> Result<Seen> {
    let mut case = read_in(tx, org, id, name).await?;
    let Some(gone) = case
        .participants
        .iter()
        .find(|p| p.organization.slug == *slug)
        .map(|p| p.organization.clone())
    else {
        return Err(Error::NotFound(format!(
            "participant {org_name:?} of {name}"
        )));
    };
    if gone.id != org.id && case.opened_by.id != org.id {
        return Err(Error::permission_denied(
            "an organization may remove itself; only the organization that opened \
             the case removes others",
        ));
    }
    if case.participants.len() == 1 {
        return Err(Error::failed_precondition(
            "LAST_PARTICIPANT",
            "the last participant cannot be removed",
        ));
    }
    case.participants.retain(|p| p.organization.id != gone.id);
    // A judge that leaves no longer judges this case's conflicts.
    tx.drop_conflicts_judged_by(&case.id, &gone.id).await?;
    case.conflicts.retain(|k| k.judge_id != gone.id);
    let prefix = format!("{}/", names::organization(&gone.slug));
    case.escalation_contacts.retain(|m| !m.starts_with(&prefix));
    case.update_time = now;
    let mut entry = HistoryEntry::new(
        id,
        EventType::CaseParticipantRemoved,
        Some(org.clone()),
        now,
    );
    entry.subject = org_name.to_owned();
    let audience = case_audience(tx, org, &case).await?;
    record_change(
        tx,
        &mut case,
        template,
        &entry,
        std::slice::from_ref(&gone),
        now,
    )
    .await?;
    case_coverage(tx, audience).await?;
    seen_in(tx, org, case).await
}

/// The history of `case` (as [`read`] found it for `org`) that `org` may read; a
/// page of `size` after `after`.
pub async fn history(
    store: &Store,
    org: &OrgRef,
    case: &Case,
    (after, size): (Option<&str>, usize),
) -> Result<Page<HistoryEntry>> {
    let found = store.case_history(&case.id, &org.id, after, size).await?;
    Ok(found)
}

/// A task to assign.
pub struct NewTask {
    pub title: String,
    pub description: String,
    /// The participant organization it is assigned to.
    pub assignee: Slug,
    /// A member of the assignee, and the name the caller wrote for it.
    pub member: Option<(MemberId, String)>,
    pub due_time: Option<Timestamp>,
}

/// Assigns a task on open case `case_id` (named `parent`) to one of its participants,
/// with a timer for its due time, and tells the participants.
pub async fn assign_task(
    tx: &mut Tx,
    (org, workflows): (&OrgRef, &Workflows),
    (case_id, parent): (&CaseId, &str),
    t: NewTask,
    now: Timestamp,
) -> Result<Task> {
    let case = read_in(tx, org, case_id, parent).await?;
    let template = template(workflows, &case.template)?;
    if template.is_final(&case.state) {
        return Err(Error::failed_precondition(
            "CASE_CLOSED",
            format!("{parent} is {}; it takes no new tasks", case.state),
        ));
    }
    let Some(to) = case
        .participants
        .iter()
        .find(|p| p.organization.slug == t.assignee)
        .map(|p| p.organization.clone())
    else {
        return Err(Error::invalid(
            "task.assignee",
            "must be a participant of the case",
        ));
    };
    if let Some((m, member_name)) = &t.member
        && tx.member(&to.id, m).await?.is_none()
    {
        return Err(Error::NotFound(format!("member {member_name:?}")));
    }
    let task = Task {
        id: Uuid::now_v7().to_string(),
        case_id: case_id.to_string(),
        title: t.title,
        description: t.description,
        assignee: to,
        assignee_member_id: t.member.map(|(m, _)| m.into_string()),
        due_time: t.due_time,
        state: TaskState::Assigned,
        overdue: false,
        assigned_by: org.clone(),
        create_time: now,
        update_time: now,
    };
    tx.insert_task(&task).await?;
    if let Some(due) = t.due_time {
        tx.set_timer(&Timer {
            case_id: case_id.to_string(),
            kind: TimerKind::TaskOverdue,
            subject: task.id.clone(),
            due_time: due,
        })
        .await?;
        tx.wake_timers();
    }
    let mut entry = HistoryEntry::new(case_id, EventType::TaskAssigned, Some(org.clone()), now);
    entry.subject = names::task(case_id, &task.id);
    entry.body.clone_from(&task.title);
    tx.insert_case_history(&entry).await?;
    tell_task(tx, &case, &task, EventType::TaskAssigned);
    Ok(task)
}

/// Task `id` of case `case_id` (named `name`), if `org` participates in the case.
pub async fn task(
    store: &Store,
    org: &OrgRef,
    (case_id, id): (&CaseId, &TaskId),
    name: &str,
) -> Result<Task> {
    let missing = || Error::NotFound(format!("task {name:?}"));
    read(store, org, case_id, name)
        .await
        .map_err(|_| missing())?;
    store.task(case_id, id).await?.ok_or_else(missing)
}

/// The tasks of `case` (as [`read`] found it); a page of `size` after `after`.
pub async fn tasks(
    store: &Store,
    case: &Case,
    (after, size): (Option<&str>, usize),
) -> Result<Page<Task>> {
    let found = store.tasks(&case.id, after, size).await?;
    Ok(found)
}

/// Accepts, declines or completes task `task_id` of case `case_id` (named `name`);
/// only the assignee may. A task no longer open stops its due-time timer.
pub async fn act_on_task(
    tx: &mut Tx,
    org: &OrgRef,
    (case_id, task_id, name): (&CaseId, &TaskId, &str),
    action: TaskAction,
    now: Timestamp,
) -> Result<Task> {
    let event_type = action.event_type();
    let case = read_in(tx, org, case_id, name).await?;
    let mut task = tx
        .task(case_id, task_id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("task {name:?}")))?;
    if task.assignee.id != org.id {
        return Err(Error::PermissionDenied {
            reason: "NOT_THE_ASSIGNEE",
            message: format!(
                "only {} (the assignee) may act on this task",
                names::organization(&task.assignee.slug)
            ),
        });
    }
    task.state = task
        .apply(action)
        .map_err(|e| Error::failed_precondition("TASK_NOT_OPEN", e))?;
    task.update_time = now;
    tx.update_task(&task).await?;
    if !task.state.is_open() {
        tx.clear_timer(case_id, TimerKind::TaskOverdue, &task.id)
            .await?;
    }
    let mut entry = HistoryEntry::new(case_id, event_type, Some(org.clone()), now);
    entry.subject = names::task(case_id, &task.id);
    entry.body = match &task.state {
        TaskState::Declined { reason } => reason.clone(),
        TaskState::Completed { note } => note.clone(),
        _ => String::new(),
    };
    tx.insert_case_history(&entry).await?;
    tell_task(tx, &case, &task, event_type);
    Ok(task)
}
