//! Who hears of a change to a case: every participant (and one just removed), each
//! with its own view of the case (the customer through the visibility function, the
//! transitions its role may fire); comments only where their visibility allows.

use std::collections::HashMap;

use jiff::Timestamp;

use super::draft::{Draft, emit};
use super::render::{case_to_pb, history_to_pb, task_to_pb};
use crate::domain::OrgRef;
use crate::domain::case::conflict::ConflictRule;
use crate::domain::case::workflow::Template;
use crate::domain::case::{Case, HistoryEntry, Task};
use crate::domain::error::Result;
use crate::domain::event::EventType;
use crate::domain::names;
use crate::pb::{self, event::Payload};
use crate::store::Tx;

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
        // A copy showing the customer is about it (its audit entries are emptied when
        // the customer is erased).
        if seen.is_some() {
            draft.customer = Some(c.customer_id.clone());
        }
        emit(tx, &org.id, draft);
    }
    Ok(())
}

/// Tells `judge` that `case` (just opened) conflicts with `earlier`, both as the judge
/// sees them; no one else hears of it.
pub async fn tell_conflict(
    tx: &mut Tx,
    (case, earlier): (&Case, &Case),
    (template, rule): (&Template, &ConflictRule),
    judge: &OrgRef,
    now: Timestamp,
) -> Result<()> {
    let seen = tx.customer(&judge.id, &case.customer_id).await?;
    let view = |c: &Case| case_to_pb(c, Some(template), &judge.id, seen.as_ref(), now);
    let pb = pb::CaseConflict {
        case: Some(view(case)),
        conflicting_case: Some(view(earlier)),
        fields: rule.fields.clone(),
        policy: rule.policy.as_str().to_owned(),
    };
    let mut draft = Draft::new(
        EventType::CaseConflictDetected,
        names::case(&case.id),
        Payload::CaseConflict(pb),
    );
    if seen.is_some() {
        draft.customer = Some(case.customer_id.clone());
    }
    emit(tx, &judge.id, draft);
    Ok(())
}

/// Tells the participants that may read it of a history entry (`case.commented`).
pub fn tell_comment(tx: &mut Tx, c: &Case, entry: &HistoryEntry) {
    let pb = history_to_pb(entry);
    for org in audience(c, &[]) {
        if entry.visible_to(&org.id) {
            let mut draft = Draft::new(
                EventType::CaseCommented,
                names::case(&c.id),
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
    if !tx.save_case(c, template, expected, true).await? {
        return Err(crate::domain::error::Error::StaleEtag(names::case(&c.id)));
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
