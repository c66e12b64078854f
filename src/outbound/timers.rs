//! The case timer worker: fires SLA warnings and breaches, overdue tasks and
//! automatic transitions when they fall due, as the hub.
//!
//! Timers are rows (see `store::cases`), so a restart loses none: the worker's first
//! look finds every timer that fell due while the hub was down and fires it at once.
//! Each firing takes its timer in the transaction that records the change and emits
//! the events, so with several replicas each timer fires once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use crate::domain::case::HistoryEntry;
use crate::domain::case::sla::Phase;
use crate::domain::case::timer::{Timer, TimerKind};
use crate::domain::case::workflow::Workflows;
use crate::domain::error::{Error, Result};
use crate::domain::event::EventType;
use crate::domain::names;
use crate::feed::cases::{record_change, tell_case, tell_task};
use crate::store::{Store, Worker};

/// Timers taken per look; the rest wait for the next one, a moment later.
const BATCH: usize = 100;
/// After a failure, the worker waits this long before looking again, so a timer
/// that cannot fire (a broken template) does not spin.
const BACKOFF: Duration = Duration::from_secs(1);

pub struct CaseTimers {
    store: Store,
    workflows: Arc<Workflows>,
}

impl CaseTimers {
    pub fn new(store: Store, workflows: Arc<Workflows>) -> Self {
        Self { store, workflows }
    }

    /// Gives the open cases of templates with an idle transition the timer they lack
    /// (cases opened before the template had one), once at start.
    async fn catch_up(&self) -> Result<()> {
        for template in self.workflows.all() {
            if !template
                .transitions
                .iter()
                .any(|t| t.automatic_after_idle.is_some())
            {
                continue;
            }
            let mut tx = self.store.begin().await?;
            let ids = tx
                .open_cases_without_automatic_timer(&template.name)
                .await?;
            tx.commit().await?;
            for id in ids {
                let mut tx = self.store.begin().await?;
                if let Some(case) = tx.case(&id).await? {
                    tx.schedule_automatic(&case, template).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Fires due timers forever.
    pub async fn run(self) {
        if let Err(error) = self.catch_up().await {
            tracing::warn!(%error, "failed to schedule the idle timers of older cases");
        }
        let store = &self.store;
        loop {
            let now = store.clock().now();
            let mut failed = false;
            let mut busy = false;
            match store.due_timers(now, BATCH).await {
                Ok(due) => {
                    busy = !due.is_empty();
                    for timer in &due {
                        if let Err(error) = self.fire(timer, now).await {
                            failed = true;
                            tracing::warn!(
                                case = %timer.case_id,
                                kind = timer.kind.as_str(),
                                subject = %timer.subject,
                                %error,
                                "failed to fire a case timer"
                            );
                        }
                    }
                    if due.len() == BATCH && !failed {
                        store.looked(Worker::Timers, busy);
                        continue;
                    }
                }
                Err(error) => {
                    failed = true;
                    tracing::warn!(%error, "failed to read due case timers");
                }
            }
            store.looked(Worker::Timers, busy);
            let floor = if failed { BACKOFF } else { Duration::ZERO };
            crate::outbound::idle(store.timers_signal(), store.next_timer().await, now, floor)
                .await;
        }
    }

    /// Fires one timer if it is still pending (another replica may have fired it, or a
    /// change moved it).
    pub async fn fire(&self, timer: &Timer, now: Timestamp) -> Result<()> {
        let mut tx = self.store.begin().await?;
        if !tx.take_timer(timer, now).await? {
            return Ok(());
        }
        let Some(mut case) = tx.case(&timer.case_id).await? else {
            return tx.commit().await;
        };
        let template = self.workflows.get(&case.template).ok_or_else(|| {
            Error::Internal(anyhow::anyhow!(
                "workflow template {:?} is not loaded",
                case.template
            ))
        })?;
        match timer.kind {
            TimerKind::SlaWarning | TimerKind::SlaBreach => {
                let warning = timer.kind == TimerKind::SlaWarning;
                let Some(clock) = case
                    .clocks
                    .iter_mut()
                    .find(|c| c.policy == timer.subject)
                    .filter(|c| matches!(c.phase, Phase::Running { .. }))
                else {
                    return tx.commit().await;
                };
                // The moment it fell due, not when the worker got to it.
                if warning {
                    clock.warn_time = Some(timer.due_time);
                } else {
                    clock.breach_time = Some(timer.due_time);
                    clock.warn_time.get_or_insert(timer.due_time);
                }
                let revision = case.revision;
                tx.save_case(&mut case, template, revision, false).await?;
                let event_type = if warning {
                    EventType::CaseSlaWarning
                } else {
                    EventType::CaseSlaBreached
                };
                let mut entry = HistoryEntry::new(&case.id, event_type, None, now);
                entry.subject.clone_from(&timer.subject);
                let escalate = if warning {
                    HashMap::new()
                } else {
                    escalation(&case, template)
                };
                tx.insert_case_history(&entry).await?;
                tell_case(
                    &mut tx,
                    &case,
                    Some(template),
                    event_type,
                    &[],
                    &escalate,
                    now,
                )
                .await?;
                tracing::info!(case = %case.id, policy = %timer.subject, %event_type, "SLA timer fired");
            }
            TimerKind::TaskOverdue => {
                let Some(mut task) = tx.task(&case.id, &timer.subject).await? else {
                    return tx.commit().await;
                };
                if !task.state.is_open() || task.overdue {
                    return tx.commit().await;
                }
                task.overdue = true;
                task.update_time = now;
                tx.update_task(&task).await?;
                let mut entry = HistoryEntry::new(&case.id, EventType::TaskOverdue, None, now);
                entry.subject = names::task(&case.id, &task.id);
                tx.insert_case_history(&entry).await?;
                tell_task(&mut tx, &case, &task, EventType::TaskOverdue);
            }
            TimerKind::Automatic => {
                let fired = template
                    .fire(&case.state, &timer.subject, None, &case.fields)
                    .map(|t| t.to.clone());
                let Ok(to) = fired else {
                    tracing::warn!(case = %case.id, transition = %timer.subject, "automatic transition no longer applies");
                    return tx.commit().await;
                };
                let from = case.state.clone();
                case.enter_state(template, &to, now);
                let mut entry = HistoryEntry::new(&case.id, EventType::CaseTransitioned, None, now);
                entry.transition.clone_from(&timer.subject);
                entry.from_state = from;
                entry.to_state = to;
                record_change(&mut tx, &mut case, template, &entry, &[], now).await?;
            }
        }
        tx.commit().await
    }
}

/// The escalation contacts of a case (the template's and the case's) that belong to
/// participants, as member ids by organization id.
fn escalation(
    case: &crate::domain::case::Case,
    template: &crate::domain::case::workflow::Template,
) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for contact in template
        .escalation_contacts
        .iter()
        .chain(&case.escalation_contacts)
    {
        let Ok((slug, member)) = names::parse_member(contact) else {
            continue;
        };
        if let Some(p) = case
            .participants
            .iter()
            .find(|p| p.organization.slug == slug)
        {
            let ids = out.entry(p.organization.id.clone()).or_default();
            if !ids.iter().any(|m| member == *m) {
                ids.push(member.into_string());
            }
        }
    }
    out
}
