//! Workflow templates as protobuf.

use crate::domain::case::conflict::ConflictPolicy;
use crate::domain::case::workflow::{FieldKind, Template};
use crate::domain::names;
use crate::feed::render::duration;
use crate::pb;

pub fn template_to_pb(t: &Template) -> pb::WorkflowTemplate {
    pb::WorkflowTemplate {
        name: names::workflow_template(&t.name),
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
                automatic_after_idle_days: x
                    .automatic_after_idle
                    .map_or(0, |d| (d.as_hours() / 24) as i32),
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
        conflict_rule: t.conflict.as_ref().map(|r| {
            let (reject_transition, reason_field) = match &r.policy {
                ConflictPolicy::FirstCome {
                    transition,
                    reason_field,
                } => (transition.clone(), reason_field.clone().unwrap_or_default()),
                ConflictPolicy::JudgeDecides => (String::new(), String::new()),
            };
            pb::CaseConflictRule {
                fields: r.fields.clone(),
                judge: r.judge.clone(),
                policy: r.policy.as_str().to_owned(),
                reject_transition,
                reason_field,
            }
        }),
    }
}
