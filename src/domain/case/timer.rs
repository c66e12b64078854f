//! Case timers: when a case's SLA clocks warn or breach, its tasks fall overdue and
//! its automatic transitions fire. Stored as rows, fired by the timer worker.

use jiff::Timestamp;

use super::Case;
use super::sla::Due;
use super::workflow::Template;

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    SlaWarning,
    SlaBreach,
    TaskOverdue,
    /// A template transition the hub fires itself (a deal's expiry).
    Automatic,
}

impl TimerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TimerKind::SlaWarning => "sla_warning",
            TimerKind::SlaBreach => "sla_breach",
            TimerKind::TaskOverdue => "task_overdue",
            TimerKind::Automatic => "automatic",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "sla_warning" => TimerKind::SlaWarning,
            "sla_breach" => TimerKind::SlaBreach,
            "task_overdue" => TimerKind::TaskOverdue,
            "automatic" => TimerKind::Automatic,
            _ => return None,
        })
    }
}

/// A pending timer of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub case_id: String,
    pub kind: TimerKind,
    /// The SLA policy, task id or transition it is about.
    pub subject: String,
    pub due_time: Timestamp,
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
            Some(Due::Warning(at)) => timers.push(Timer {
                case_id: c.id.clone(),
                kind: TimerKind::SlaWarning,
                subject: clock.policy.clone(),
                due_time: at,
            }),
            Some(Due::Breach(at)) => timers.push(Timer {
                case_id: c.id.clone(),
                kind: TimerKind::SlaBreach,
                subject: clock.policy.clone(),
                due_time: at,
            }),
            None => {}
        }
    }
    for t in &template.transitions {
        if !t.from.contains(&c.state) {
            continue;
        }
        // A date passes at the end of its day, UTC.
        let on_date = t
            .automatic_at
            .as_ref()
            .and_then(|field| c.fields.get(field))
            .and_then(|v| v.parse::<jiff::civil::Date>().ok())
            .and_then(|d| d.tomorrow().ok())
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp());
        // Idle since the case last changed (a transition, a field, a participant).
        let when_idle = t
            .automatic_after_idle
            .and_then(|idle| c.update_time.checked_add(idle).ok());
        let due = match (on_date, when_idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_kinds_read_back_as_stored() {
        let kinds = [
            (TimerKind::SlaWarning, "sla_warning"),
            (TimerKind::SlaBreach, "sla_breach"),
            (TimerKind::TaskOverdue, "task_overdue"),
            (TimerKind::Automatic, "automatic"),
        ];
        for (kind, stored) in kinds {
            assert_eq!(kind.as_str(), stored);
            assert_eq!(TimerKind::parse(stored), Some(kind));
        }
        assert_eq!(TimerKind::parse(""), None);
        assert_eq!(TimerKind::parse("SLA_WARNING"), None);
    }

    #[test]
    fn a_deal_expires_on_its_date_or_after_ninety_idle_days_whichever_comes_first() {
        use std::collections::BTreeMap;

        use crate::domain::OrgRef;
        use crate::domain::case::Priority;
        let workflows = crate::domain::case::workflow::Workflows::built_in();
        let template = workflows.get("deal_registration").unwrap();
        let changed: Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
        let org = OrgRef {
            id: "o".into(),
            slug: crate::domain::Slug::parse("org-o").unwrap(),
        };
        let mut deal = Case {
            id: "k".into(),
            template: template.name.clone(),
            state: "submitted".into(),
            title: "Deal".into(),
            description: String::new(),
            priority: Priority::Normal,
            customer_id: "c".into(),
            participants: vec![],
            fields: BTreeMap::new(),
            escalation_contacts: vec![],
            clocks: vec![],
            conflicts: vec![],
            opened_by: org,
            create_time: changed,
            update_time: changed,
            state_time: changed,
            revision: 1,
        };
        let expiry = |deal: &Case| -> Vec<Timestamp> {
            schedule(deal, template)
                .0
                .into_iter()
                .filter(|t| t.kind == TimerKind::Automatic && t.subject == "expire")
                .map(|t| t.due_time)
                .collect()
        };
        let idle: Timestamp = "2026-05-30T12:00:00Z".parse().unwrap();
        assert_eq!(expiry(&deal), [idle]);
        deal.fields
            .insert("expiry_date".into(), "2026-04-01".into());
        let on_date: Timestamp = "2026-04-02T00:00:00Z".parse().unwrap();
        assert_eq!(expiry(&deal), [on_date]);
        deal.fields
            .insert("expiry_date".into(), "2027-01-01".into());
        assert_eq!(expiry(&deal), [idle]);
        // A change moves the idle expiry; a final state has none.
        deal.update_time = "2026-04-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            expiry(&deal),
            ["2026-06-30T00:00:00Z".parse::<Timestamp>().unwrap()]
        );
        deal.state = "won".into();
        assert!(expiry(&deal).is_empty());
    }
}
