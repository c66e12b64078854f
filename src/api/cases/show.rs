//! How a case, its tasks and history look to one participant, and telling every
//! participant of a change, each with its own view (the customer through the
//! visibility function, the transitions its role may fire, comments by visibility).

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};

use crate::domain::OrgRef;
use crate::domain::case::sla::Phase;
use crate::domain::case::workflow::{FieldKind, Template};
use crate::domain::case::{Case, CommentVisibility, HistoryEntry, Priority, Task, TaskState};
use crate::domain::error::Result;
use crate::domain::event::EventType;
use crate::domain::names;
use crate::feed::draft::{Draft, emit};
use crate::feed::render::customer_to_pb;
use crate::feed::render::{etag, timestamp};
use crate::pb::{self, event::Payload};
use crate::store::{SeenCustomer, Timer, TimerKind, Tx};

pub fn case_name(id: &str) -> String {
    format!("cases/{id}")
}

pub fn task_name(case_id: &str, id: &str) -> String {
    format!("cases/{case_id}/tasks/{id}")
}

pub fn template_name(name: &str) -> String {
    format!("workflowTemplates/{name}")
}

pub fn priority_to_pb(p: Priority) -> pb::CasePriority {
    match p {
        Priority::Low => pb::CasePriority::Low,
        Priority::Normal => pb::CasePriority::Normal,
        Priority::High => pb::CasePriority::High,
        Priority::Urgent => pb::CasePriority::Urgent,
    }
}

fn duration(d: SignedDuration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: d.as_secs(),
        nanos: d.subsec_nanos(),
    })
}

pub fn template_to_pb(t: &Template) -> pb::WorkflowTemplate {
    pb::WorkflowTemplate {
        name: template_name(&t.name),
        title: t.title.clone(),
        description: t.description.clone(),
        roles: t.roles.clone(),
        initial_state: t.initial.clone(),
        states: t
            .states
            .iter()
            .map(|s| pb::WorkflowState {
                name: s.name.clone(),
                r#final: s.is_final,
            })
            .collect(),
        transitions: t
            .transitions
            .iter()
            .map(|x| pb::WorkflowTransition {
                name: x.name.clone(),
                from: x.from.clone(),
                to: x.to.clone(),
                roles: x.roles.clone(),
                required_fields: x.required_fields.clone(),
                automatic_at: x.automatic_at.clone().unwrap_or_default(),
            })
            .collect(),
        fields: t
            .fields
            .iter()
            .map(|f| pb::WorkflowField {
                name: f.name.clone(),
                kind: match &f.kind {
                    FieldKind::Text => "text",
                    FieldKind::Date => "date",
                    FieldKind::Choice(_) => "choice",
                }
                .into(),
                choices: match &f.kind {
                    FieldKind::Choice(c) => c.clone(),
                    _ => vec![],
                },
                required_at_open: f.required_at_open,
            })
            .collect(),
        sla_policies: t
            .sla
            .iter()
            .map(|p| pb::SlaPolicy {
                name: p.name.clone(),
                targets: p
                    .targets
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), duration(*v)?)))
                    .collect(),
                calendar: p.calendar.clone().unwrap_or_default(),
                warn_at_percent: p.warn_at_percent.into(),
                stop_states: p.stop_states.clone(),
                resume_on_reopen: p.resume_on_reopen,
            })
            .collect(),
        sla_pause_states: t.sla_pause_states.clone(),
        escalation_contacts: t.escalation_contacts.clone(),
        built_in: t.built_in,
    }
}

/// The case as `viewer` sees it at `now`. `customer` is the viewer's sight of the
/// case's customer (`None`: no access, so no customer fields).
pub fn case_to_pb(
    c: &Case,
    template: Option<&Template>,
    viewer_id: &str,
    customer: Option<&SeenCustomer>,
    now: Timestamp,
) -> pb::Case {
    let roles: Vec<&str> = c
        .participants
        .iter()
        .filter(|p| p.organization.id == viewer_id)
        .map(|p| p.role.as_str())
        .collect();
    let clocks = c
        .clocks
        .iter()
        .map(|clock| {
            let hours = template.map_or(&crate::domain::calendar::Hours::Calendar, |t| {
                clock.hours(t)
            });
            let (state, met_time) = match clock.phase {
                Phase::Running { .. } => (pb::SlaClockState::Running, None),
                Phase::Paused { .. } => (pb::SlaClockState::Paused, None),
                Phase::Met { at } => (pb::SlaClockState::Met, timestamp(at)),
            };
            pb::SlaClock {
                policy: clock.policy.clone(),
                state: state as i32,
                target: duration(clock.target),
                elapsed: duration(clock.used_at(hours, now)),
                warn_time: clock.warning_time(hours).and_then(timestamp),
                due_time: clock.due_time(hours).and_then(timestamp),
                breach_time: clock.breach_time.and_then(timestamp),
                met_time,
                calendar: template
                    .and_then(|t| t.sla.iter().find(|p| p.name == clock.policy))
                    .and_then(|p| p.calendar.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    pb::Case {
        name: case_name(&c.id),
        template: template_name(&c.template),
        state: c.state.clone(),
        title: c.title.clone(),
        description: c.description.clone(),
        priority: priority_to_pb(c.priority) as i32,
        customer: names::customer(&c.customer_id),
        customer_view: customer.and_then(|seen| Some(customer_to_pb(seen, seen.access()?))),
        participants: c
            .participants
            .iter()
            .map(|p| pb::CaseParticipant {
                organization: names::organization(&p.organization.slug),
                role: p.role.clone(),
            })
            .collect(),
        fields: c.fields.clone().into_iter().collect(),
        escalation_contacts: c.escalation_contacts.clone(),
        sla_clocks: clocks,
        breached: c.breached(),
        allowed_transitions: template.map_or(vec![], |t| t.allowed(&c.state, &roles)),
        opened_by: names::organization(&c.opened_by.slug),
        create_time: timestamp(c.create_time),
        update_time: timestamp(c.update_time),
        state_time: timestamp(c.state_time),
        closed: template.is_some_and(|t| t.is_final(&c.state)),
        etag: etag(c.revision),
    }
}

pub fn visibility_to_pb(v: CommentVisibility) -> pb::CommentVisibility {
    match v {
        CommentVisibility::Participants => pb::CommentVisibility::AllParticipants,
        CommentVisibility::Organization => pb::CommentVisibility::OwnOrganization,
    }
}

pub fn history_to_pb(h: &HistoryEntry) -> pb::CaseHistoryEntry {
    pb::CaseHistoryEntry {
        name: format!("cases/{}/history/{}", h.case_id, h.id),
        kind: h.kind.clone(),
        organization: h
            .organization
            .as_ref()
            .map(|o| names::organization(&o.slug))
            .unwrap_or_default(),
        member: match (&h.organization, &h.member_id) {
            (Some(o), Some(m)) => names::member(&o.slug, m),
            _ => String::new(),
        },
        create_time: timestamp(h.create_time),
        transition: h.transition.clone(),
        from_state: h.from_state.clone(),
        to_state: h.to_state.clone(),
        body: h.body.clone(),
        visibility: visibility_to_pb(h.visibility) as i32,
        subject: h.subject.clone(),
    }
}

pub fn task_to_pb(t: &Task) -> pb::CaseTask {
    let (state, decline_reason, completion_note) = match &t.state {
        TaskState::Assigned => (pb::TaskState::Assigned, "", ""),
        TaskState::Accepted => (pb::TaskState::Accepted, "", ""),
        TaskState::Declined { reason } => (pb::TaskState::Declined, reason.as_str(), ""),
        TaskState::Completed { note } => (pb::TaskState::Completed, "", note.as_str()),
    };
    pb::CaseTask {
        name: task_name(&t.case_id, &t.id),
        title: t.title.clone(),
        description: t.description.clone(),
        assignee: names::organization(&t.assignee.slug),
        assignee_member: t
            .assignee_member_id
            .as_ref()
            .map(|m| names::member(&t.assignee.slug, m))
            .unwrap_or_default(),
        due_time: t.due_time.and_then(timestamp),
        state: state as i32,
        decline_reason: decline_reason.to_owned(),
        completion_note: completion_note.to_owned(),
        overdue: t.overdue,
        assigned_by: names::organization(&t.assigned_by.slug),
        create_time: timestamp(t.create_time),
        update_time: timestamp(t.update_time),
    }
}

/// The organizations to tell of a change: the participants, then `also` (one
/// just removed), each once.
fn audience<'a>(c: &'a Case, also: &'a [OrgRef]) -> Vec<&'a OrgRef> {
    let mut orgs: Vec<&OrgRef> = c.participants.iter().map(|p| &p.organization).collect();
    for o in also {
        if !orgs.iter().any(|x| x.id == o.id) {
            orgs.push(o);
        }
    }
    orgs
}

/// Tells every participant (and `also`) of a change to the case, each with its own
/// view. `escalate` names, per organization, the members to alert whatever their
/// preferences (a breach's escalation contacts).
pub async fn tell_case(
    tx: &mut Tx,
    c: &Case,
    template: Option<&Template>,
    event_type: EventType,
    also: &[OrgRef],
    escalate: &HashMap<String, Vec<String>>,
    now: Timestamp,
) -> Result<()> {
    for org in audience(c, also) {
        let seen = tx.customer(&org.id, &c.customer_id).await?;
        let view = case_to_pb(c, template, &org.id, seen.as_ref(), now);
        let mut draft = Draft::new(event_type, view.name.clone(), Payload::Case(view));
        draft.escalate_to = escalate.get(&org.id).cloned().unwrap_or_default();
        emit(tx, &org.id, draft);
    }
    Ok(())
}

/// Tells the participants that may read it of a history entry (`case.commented`).
pub fn tell_comment(tx: &mut Tx, c: &Case, entry: &HistoryEntry) {
    let pb = history_to_pb(entry);
    for org in audience(c, &[]) {
        if entry.visible_to(&org.id) {
            let mut draft = Draft::new(
                EventType::CaseCommented,
                case_name(&c.id),
                Payload::CaseHistoryEntry(pb.clone()),
            );
            draft.member.clone_from(&pb.member);
            emit(tx, &org.id, draft);
        }
    }
}

/// Tells every participant of a change to a task.
pub fn tell_task(tx: &mut Tx, c: &Case, task: &Task, event_type: EventType) {
    let pb = task_to_pb(task);
    for org in audience(c, &[]) {
        emit(
            tx,
            &org.id,
            Draft::new(event_type, pb.name.clone(), Payload::Task(pb.clone())),
        );
    }
}

/// The timers the case's SLA clocks and automatic transitions need now, and the
/// earliest running SLA due time (kept on the case for "due before" filters).
pub fn schedule(c: &Case, template: &Template) -> (Vec<Timer>, Option<Timestamp>) {
    let mut timers = vec![];
    let mut earliest: Option<Timestamp> = None;
    for clock in &c.clocks {
        let hours = clock.hours(template);
        if let Some(due) = clock.due_time(hours) {
            earliest = Some(earliest.map_or(due, |e| e.min(due)));
        }
        match clock.next_due(hours) {
            Some(crate::domain::case::sla::Due::Warning(at)) => timers.push(Timer {
                case_id: c.id.clone(),
                kind: TimerKind::SlaWarning,
                subject: clock.policy.clone(),
                due_time: at,
            }),
            Some(crate::domain::case::sla::Due::Breach(at)) => timers.push(Timer {
                case_id: c.id.clone(),
                kind: TimerKind::SlaBreach,
                subject: clock.policy.clone(),
                due_time: at,
            }),
            None => {}
        }
    }
    for t in &template.transitions {
        let Some(field) = &t.automatic_at else {
            continue;
        };
        if !t.from.contains(&c.state) {
            continue;
        }
        // A date passes at the end of its day, UTC.
        let due = c
            .fields
            .get(field)
            .and_then(|v| v.parse::<jiff::civil::Date>().ok())
            .and_then(|d| d.tomorrow().ok())
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp());
        if let Some(due) = due {
            timers.push(Timer {
                case_id: c.id.clone(),
                kind: TimerKind::Automatic,
                subject: t.name.clone(),
                due_time: due,
            });
        }
    }
    (timers, earliest)
}

/// Writes a new case with its SLA and automatic timers.
pub async fn insert_case(tx: &mut Tx, c: &Case, template: &Template) -> Result<()> {
    let (timers, due) = schedule(c, template);
    tx.insert_case(c, template.is_final(&c.state), due).await?;
    for timer in &timers {
        tx.set_timer(timer).await?;
    }
    tx.wake_timers();
    Ok(())
}

/// Writes the case after a change (bumping its revision if `bump`), with fresh SLA
/// and automatic timers. False if the stored revision is no longer `expected`.
pub async fn save_case(
    tx: &mut Tx,
    c: &mut Case,
    template: &Template,
    expected: i64,
    bump: bool,
) -> Result<bool> {
    if bump {
        c.revision = expected + 1;
    }
    let (timers, due) = schedule(c, template);
    if !tx
        .update_case(c, expected, template.is_final(&c.state), due)
        .await?
    {
        return Ok(false);
    }
    tx.replace_timers(
        &c.id,
        &[
            TimerKind::SlaWarning,
            TimerKind::SlaBreach,
            TimerKind::Automatic,
        ],
        &timers,
    )
    .await?;
    tx.wake_timers();
    Ok(true)
}

/// Records a change the etag covers: saves the case with its revision bumped (ABORTED
/// if someone changed it meanwhile), writes `entry` to its history, and tells every
/// participant (and `also`) with the entry's kind as the event type.
pub async fn record_change(
    tx: &mut Tx,
    c: &mut Case,
    template: &Template,
    entry: &HistoryEntry,
    also: &[OrgRef],
    now: Timestamp,
) -> Result<()> {
    let expected = c.revision;
    if !save_case(tx, c, template, expected, true).await? {
        return Err(crate::domain::error::Error::StaleEtag(case_name(&c.id)));
    }
    tx.insert_case_history(entry).await?;
    let event_type = EventType::parse(&entry.kind)
        .ok_or_else(|| anyhow::anyhow!("{} is not an event type", entry.kind))?;
    tell_case(
        tx,
        c,
        Some(template),
        event_type,
        also,
        &HashMap::new(),
        now,
    )
    .await
}

/// The case as `viewer` sees it, read inside `tx`.
pub async fn view_in(
    tx: &mut Tx,
    c: &Case,
    template: &Template,
    viewer: &OrgRef,
    now: Timestamp,
) -> Result<pb::Case> {
    let seen = tx.customer(&viewer.id, &c.customer_id).await?;
    Ok(case_to_pb(
        c,
        Some(template),
        &viewer.id,
        seen.as_ref(),
        now,
    ))
}
