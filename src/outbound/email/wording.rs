//! The wording of an email: what it calls organizations, customers and cases, and
//! how each event reads in words, as the member's organization may see it.

use std::collections::HashMap;

use jiff::{Timestamp, tz::TimeZone};
use serde::Serialize;

use crate::domain::event::EventType;
use crate::domain::visibility::CustomerView;
use crate::pb::{self, event::Payload};
use crate::store::PendingNotification;

/// What an email calls a customer whose name the member's organization may not see.
const UNNAMED_CUSTOMER: &str = "a shared customer";

#[derive(Debug, Serialize)]
struct Detail {
    label: &'static str,
    value: String,
}

impl Detail {
    fn new(label: &'static str, value: impl Into<String>) -> Self {
        Self {
            label,
            value: value.into(),
        }
    }
}

/// An event as an email shows it: only what the member's organization may see (the
/// event is read from that organization's own feed), in words.
#[derive(Debug, Serialize)]
pub(super) struct EventView {
    time: String,
    pub(super) summary: String,
    /// Who acted, by display name, when `summary` does not already say; else empty.
    actor: String,
    details: Vec<Detail>,
}

#[derive(Debug, Serialize)]
pub(super) struct ThreadView {
    /// The customer's name, `Case: <title>`, `Partnership with <organization>`, …
    pub(super) title: String,
    /// The resource name, as a reference next to the title.
    resource: String,
    /// What else the thread is about (a case's customer).
    references: Vec<Detail>,
    pub(super) events: Vec<EventView>,
}

#[derive(Serialize)]
pub(super) struct MemberView {
    pub(super) display_name: String,
    pub(super) email: String,
}

/// The events of one thread (a case, a customer, …) in one email, oldest first.
pub(super) struct Thread<'a> {
    pub(super) key: &'a str,
    pub(super) events: Vec<&'a pb::Event>,
}

/// Groups `events` (oldest first) by thread, threads in order of their first event.
pub(super) fn by_thread<'a>(events: &'a [(PendingNotification, pb::Event)]) -> Vec<Thread<'a>> {
    let mut threads: Vec<Thread<'a>> = vec![];
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (n, event) in events {
        let i = *index.entry(n.thread_key.as_str()).or_insert_with(|| {
            threads.push(Thread {
                key: &n.thread_key,
                events: vec![],
            });
            threads.len() - 1
        });
        threads[i].events.push(event);
    }
    threads
}

/// What an email calls the things its events give only resource names for, read
/// once per email: organizations by display name, customers as the member's
/// organization may see them, cases by title, and the comment given with each
/// transition.
#[derive(Debug, Default)]
pub(super) struct Names {
    /// The member's organization, `organizations/{slug}`.
    pub(super) own: String,
    /// Display names by slug.
    pub(super) organizations: HashMap<String, String>,
    /// Customers as the member's organization may see them (the visibility
    /// function's view), by id; those it may not see are absent.
    pub(super) customers: HashMap<String, CustomerView>,
    /// Title and customer id of the cases no event of the email carries, by case id.
    pub(super) cases: HashMap<String, (String, String)>,
    /// The comment given with a transition, by the id of its `case.transitioned` event.
    pub(super) comments: HashMap<String, String>,
}

impl Names {
    /// An organization (`organizations/{slug}`) by its display name.
    pub(super) fn organization(&self, resource: &str) -> String {
        resource
            .strip_prefix("organizations/")
            .and_then(|slug| self.organizations.get(slug))
            .cloned()
            .unwrap_or_else(|| resource.to_owned())
    }

    /// A customer by id, by the name the member's organization may see; `None` if it
    /// may not see one.
    fn customer(&self, id: &str) -> Option<String> {
        let view = self.customers.get(id)?;
        customer_name(
            view.display_name.as_deref().unwrap_or_default(),
            &view.profile.legal_name,
            &view.profile.given_name,
            &view.profile.family_name,
        )
    }
}

/// A customer's name from the fields a view shows: its display name, else its legal
/// name, else given and family name; `None` when the view shows none of them.
fn customer_name(display: &str, legal: &str, given: &str, family: &str) -> Option<String> {
    let name = if !display.is_empty() {
        display.to_owned()
    } else if !legal.is_empty() {
        legal.to_owned()
    } else {
        format!("{given} {family}").trim().to_owned()
    };
    (!name.is_empty()).then_some(name)
}

fn pb_customer_name(c: &pb::Customer) -> Option<String> {
    customer_name(
        &c.display_name,
        &c.legal_name,
        &c.given_name,
        &c.family_name,
    )
}

/// The organizations an event names, as `organizations/{slug}`.
pub(super) fn organizations_in(event: &pb::Event) -> Vec<&str> {
    let mut named = vec![];
    if let Some(actor) = &event.actor {
        named.push(actor.organization.as_str());
    }
    match &event.payload {
        Some(Payload::Task(t)) => named.extend([t.assignee.as_str(), t.assigned_by.as_str()]),
        Some(Payload::Partnership(p)) => named.extend([
            p.proposer.as_str(),
            p.recipient.as_str(),
            p.state_changed_by.as_str(),
        ]),
        Some(Payload::Interaction(i)) => named.push(&i.organization),
        Some(Payload::Case(c)) => named.push(&c.opened_by),
        Some(Payload::CaseConflict(k)) => named.extend(
            k.case
                .iter()
                .chain(&k.conflicting_case)
                .map(|c| c.opened_by.as_str()),
        ),
        Some(Payload::CaseHistoryEntry(h)) => named.push(&h.organization),
        Some(Payload::AccessRequest(r)) => named.extend([r.requester.as_str(), r.owner.as_str()]),
        Some(Payload::AccountMapping(m)) => {
            named.extend([m.requester.as_str(), m.partner.as_str()])
        }
        _ => {}
    }
    named.retain(|o| o.starts_with("organizations/"));
    named
}

/// The newest payload of `events` that `pick` chooses.
pub(super) fn latest<'a, T>(
    events: &[&'a pb::Event],
    pick: impl Fn(&'a Payload) -> Option<&'a T>,
) -> Option<&'a T> {
    events
        .iter()
        .rev()
        .find_map(|e| e.payload.as_ref().and_then(&pick))
}

/// `text` with its first letter upper-case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A state or enum name in words: `waiting_on_customer` → `waiting on customer`.
fn words(name: &str) -> String {
    name.to_lowercase().replace('_', " ")
}

fn local_time(t: Option<&prost_types::Timestamp>, tz: &TimeZone) -> String {
    t.and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
        .map(|t| {
            t.to_zoned(tz.clone())
                .strftime("%Y-%m-%d %H:%M %Z")
                .to_string()
        })
        .unwrap_or_default()
}

/// What the email calls a thread (by the newest event that says), and what else the
/// thread is about.
fn heading(thread: &Thread<'_>, names: &Names) -> (String, Vec<Detail>) {
    let key = thread.key;
    let events = &thread.events;
    if let Some(id) = key.strip_prefix("customers/") {
        let name = match latest(events, |p| match p {
            Payload::Customer(c) => Some(c),
            _ => None,
        }) {
            Some(c) => pb_customer_name(c),
            None => names.customer(id),
        };
        return (
            name.unwrap_or_else(|| capitalized(UNNAMED_CUSTOMER)),
            vec![],
        );
    }
    if let Some(id) = key.strip_prefix("cases/") {
        let (title, customer, customer_resource) = match latest(events, |p| match p {
            Payload::Case(c) => Some(c),
            _ => None,
        }) {
            Some(c) => (
                Some(c.title.clone()),
                c.customer_view.as_ref().and_then(pb_customer_name),
                c.customer.clone(),
            ),
            None => match names.cases.get(id) {
                Some((title, customer_id)) => (
                    Some(title.clone()),
                    names.customer(customer_id),
                    format!("customers/{customer_id}"),
                ),
                None => (None, None, String::new()),
            },
        };
        let title = match title.filter(|t| !t.is_empty()) {
            Some(t) => format!("Case: {t}"),
            None => "A case".to_owned(),
        };
        let mut references = vec![];
        if !customer_resource.is_empty() {
            let customer = customer.unwrap_or_else(|| UNNAMED_CUSTOMER.to_owned());
            references.push(Detail::new(
                "Customer",
                format!("{customer} ({customer_resource})"),
            ));
        }
        return (title, references);
    }
    let title = match events.last().and_then(|e| e.payload.as_ref()) {
        Some(Payload::Partnership(p)) => {
            let other = if p.proposer == names.own {
                &p.recipient
            } else {
                &p.proposer
            };
            format!("Partnership with {}", names.organization(other))
        }
        Some(Payload::AccessRequest(r)) => {
            format!("Access request from {}", names.organization(&r.requester))
        }
        Some(Payload::WebhookEndpoint(e)) => format!("Webhook endpoint {}", e.url),
        Some(Payload::AccountMapping(m)) => {
            let other = if m.requester == names.own {
                &m.partner
            } else {
                &m.requester
            };
            format!("Account mapping with {}", names.organization(other))
        }
        _ => key.to_owned(),
    };
    (title, vec![])
}

/// The event's type in words, with the fields that changed: `Customer updated: emails`.
fn generic_summary(event: &pb::Event) -> String {
    let mut summary = capitalized(&event.r#type.replace(['.', '_'], " "));
    if !event.changed_fields.is_empty() {
        summary = format!("{summary}: {}", event.changed_fields.join(", "));
    }
    summary
}

/// One event in words: what happened, naming organizations by display name and cases,
/// tasks and customers as the member's organization knows them.
fn event_view(event: &pb::Event, names: &Names, tz: &TimeZone) -> EventView {
    let actor = event
        .actor
        .as_ref()
        .map(|a| a.organization.as_str())
        .filter(|o| !o.is_empty())
        .map(|o| names.organization(o));
    // `what` by the actor, and whether that names the actor.
    let by = |what: &str| match &actor {
        Some(a) => (format!("{what} by {a}"), true),
        None => (what.to_owned(), false),
    };
    let kind = EventType::parse(&event.r#type);
    let mut details = vec![];
    let (summary, names_actor) = match &event.payload {
        Some(Payload::Case(c)) => {
            details.push(Detail::new("State", words(&c.state)));
            for clock in c.sla_clocks.iter().filter(|k| k.breach_time.is_some()) {
                details.push(Detail::new("SLA breached", clock.policy.clone()));
            }
            if let Some(comment) = names.comments.get(&event.id) {
                details.push(Detail::new("Comment", comment.clone()));
            }
            match kind {
                Some(EventType::CaseOpened) => by("Case opened"),
                Some(EventType::CaseTransitioned) => by(&format!("Moved to {}", words(&c.state))),
                Some(EventType::CaseSlaWarning) => ("SLA warning".to_owned(), false),
                Some(EventType::CaseSlaBreached) => ("SLA breached".to_owned(), false),
                _ => by(&generic_summary(event)),
            }
        }
        Some(Payload::Task(t)) => {
            let assignee = names.organization(&t.assignee);
            details.push(Detail::new("Task", t.title.clone()));
            details.push(Detail::new("Assignee", assignee.clone()));
            if t.due_time.is_some() {
                details.push(Detail::new("Due", local_time(t.due_time.as_ref(), tz)));
            }
            if !t.decline_reason.is_empty() {
                details.push(Detail::new("Reason", t.decline_reason.clone()));
            }
            if !t.completion_note.is_empty() {
                details.push(Detail::new("Note", t.completion_note.clone()));
            }
            let (what, names_actor) = match kind {
                Some(EventType::TaskAssigned) => (format!("Task assigned to {assignee}"), false),
                Some(EventType::TaskOverdue) => ("Task overdue".to_owned(), false),
                _ => by(&capitalized(&event.r#type.replace('.', " "))),
            };
            (format!("{what}: {}", t.title), names_actor)
        }
        Some(Payload::Interaction(i)) => {
            let what = match pb::InteractionType::try_from(i.r#type) {
                Ok(pb::InteractionType::Unspecified) | Err(_) => "Interaction".to_owned(),
                Ok(t) => capitalized(&words(t.as_str_name())),
            };
            details.push(Detail::new("Summary", i.summary.clone()));
            let (what, names_actor) = by(&format!("{what} logged"));
            (format!("{what}: {}", i.summary), names_actor)
        }
        Some(Payload::Partnership(p)) => {
            let relationship = pb::Relationship::try_from(p.relationship)
                .map(|r| words(r.as_str_name()))
                .unwrap_or_default();
            details.push(Detail::new(
                "Relationship",
                format!(
                    "{} {relationship} {}",
                    names.organization(&p.proposer),
                    names.organization(&p.recipient)
                ),
            ));
            if !p.message.is_empty() {
                details.push(Detail::new("Message", p.message.clone()));
            }
            if !p.state_reason.is_empty() {
                details.push(Detail::new("Reason", p.state_reason.clone()));
            }
            match kind {
                Some(EventType::PartnershipProposed) => (
                    format!(
                        "Partnership proposed by {}",
                        names.organization(&p.proposer)
                    ),
                    true,
                ),
                _ => by(&generic_summary(event)),
            }
        }
        Some(Payload::AccessRequest(r)) => {
            if let Some(id) = r.customer.strip_prefix("customers/") {
                let customer = names
                    .customer(id)
                    .unwrap_or_else(|| UNNAMED_CUSTOMER.to_owned());
                details.push(Detail::new(
                    "Customer",
                    format!("{customer} ({})", r.customer),
                ));
            }
            if !r.fields.is_empty() {
                details.push(Detail::new("Fields", r.fields.join(", ")));
            }
            if !r.reason.is_empty() {
                details.push(Detail::new("Reason", r.reason.clone()));
            }
            match kind {
                Some(EventType::AccessRequestCreated) => (
                    format!("Access requested by {}", names.organization(&r.requester)),
                    true,
                ),
                _ => by(&generic_summary(event)),
            }
        }
        Some(Payload::CaseHistoryEntry(h)) => {
            details.push(Detail::new("Comment", h.body.clone()));
            if h.organization.is_empty() {
                by("Comment")
            } else {
                (
                    format!("Comment by {}", names.organization(&h.organization)),
                    true,
                )
            }
        }
        Some(Payload::Customer(c)) => {
            if let Some(name) = pb_customer_name(c) {
                details.push(Detail::new("Name", name));
            }
            let emails: Vec<&str> = c.emails.iter().map(|e| e.address.as_str()).collect();
            if !emails.is_empty() {
                details.push(Detail::new("Email", emails.join(", ")));
            }
            let phones: Vec<&str> = c.phones.iter().map(|p| p.number.as_str()).collect();
            if !phones.is_empty() {
                details.push(Detail::new("Phone", phones.join(", ")));
            }
            (generic_summary(event), false)
        }
        Some(Payload::SharingRule(r)) => {
            if !r.segment_display_name.is_empty() {
                details.push(Detail::new("Segment", r.segment_display_name.clone()));
            } else if r.segment.is_empty() {
                details.push(Detail::new("Segment", "Every customer".to_owned()));
            }
            let level = pb::AccessLevel::try_from(r.level)
                .map(|l| capitalized(&words(l.as_str_name().trim_start_matches("ACCESS_LEVEL_"))))
                .unwrap_or_default();
            details.push(Detail::new("Access", level));
            if !r.fields.is_empty() {
                details.push(Detail::new("Fields", r.fields.join(", ")));
            }
            if r.expire_time.is_some() {
                details.push(Detail::new("Until", local_time(r.expire_time.as_ref(), tz)));
            }
            let what = match kind {
                Some(EventType::SharingRuleCreated) => "Customers shared",
                Some(EventType::SharingRuleRevoked) => "Sharing ended",
                _ => "Sharing changed",
            };
            by(&format!("{what}: {}", r.display_name))
        }
        Some(Payload::AccountMapping(m)) => {
            let segments = |list: &[pb::MappingSegment]| {
                list.iter()
                    .map(|s| s.display_name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            details.push(Detail::new(
                "Requester's segments",
                segments(&m.requester_segments),
            ));
            if !m.partner_segments.is_empty() {
                details.push(Detail::new(
                    "Partner's segments",
                    segments(&m.partner_segments),
                ));
            }
            let what = match kind {
                Some(EventType::AccountMappingRequested) => "Account mapping asked for",
                Some(EventType::AccountMappingAccepted) => "Account mapping accepted",
                Some(EventType::AccountMappingDeclined) => "Account mapping declined",
                Some(EventType::AccountMappingEnded) => "Account mapping ended",
                Some(EventType::AccountMappingAccessRequested) => {
                    "Access asked for to the overlap of an account mapping"
                }
                Some(EventType::AccountMappingAccessAnswered) => {
                    "Access to the overlap of an account mapping answered"
                }
                _ => "Account mapping changed",
            };
            by(what)
        }
        Some(Payload::CaseConflict(k)) => {
            // Both registrations side by side, as the judge sees them.
            for (label, c) in [
                ("This case", &k.case),
                ("Conflicts with", &k.conflicting_case),
            ] {
                if let Some(c) = c {
                    details.push(Detail::new(
                        label,
                        format!(
                            "{} ({}), opened by {} on {}, {}",
                            c.title,
                            c.name,
                            names.organization(&c.opened_by),
                            local_time(c.create_time.as_ref(), tz),
                            words(&c.state)
                        ),
                    ));
                }
            }
            let key: Vec<String> = k
                .fields
                .iter()
                .filter_map(|f| {
                    let v = k.case.as_ref()?.fields.get(f)?;
                    Some(format!("{} {v}", words(f)))
                })
                .collect();
            details.push(Detail::new("Same customer and", key.join(", ")));
            let what = if k.policy == "first_come" {
                "Conflicting registration, turned down as the later one"
            } else {
                "Conflicting registration, for you to decide"
            };
            (what.to_owned(), false)
        }
        Some(Payload::WebhookEndpoint(e)) => {
            details.push(Detail::new("Endpoint", e.url.clone()));
            details.push(Detail::new("Reason", e.disabled_reason.clone()));
            // The changed fields (`enabled, disabled_reason`) say nothing the summary
            // and the reason do not.
            (capitalized(&event.r#type.replace(['.', '_'], " ")), false)
        }
        _ => (generic_summary(event), false),
    };
    EventView {
        time: local_time(event.create_time.as_ref(), tz),
        summary,
        actor: if names_actor {
            String::new()
        } else {
            actor.unwrap_or_default()
        },
        details,
    }
}

pub(super) fn thread_view(thread: &Thread<'_>, names: &Names, tz: &TimeZone) -> ThreadView {
    let (title, references) = heading(thread, names);
    ThreadView {
        title,
        resource: thread.key.to_owned(),
        references,
        events: thread
            .events
            .iter()
            .map(|e| event_view(e, names, tz))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::customer::Profile;

    fn event(kind: &str, resource: &str, actor: &str, payload: Payload) -> pb::Event {
        pb::Event {
            id: "0198f0e4-0000-7000-8000-000000000001".into(),
            r#type: kind.into(),
            resource: resource.into(),
            actor: Some(pb::Actor {
                organization: actor.into(),
                ..Default::default()
            }),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn names() -> Names {
        let hidden = Profile {
            given_name: String::new(),
            family_name: String::new(),
            legal_name: String::new(),
            emails: vec![],
            phones: vec![],
            addresses: vec![],
            tags: vec!["vip".into()],
            attributes: Default::default(),
        };
        let shown = Profile {
            given_name: "Ada".into(),
            family_name: "Lovelace".into(),
            ..hidden.clone()
        };
        let view = |profile: Profile| CustomerView {
            display_name: None,
            profile,
            fields: crate::domain::customer::FieldSet::ALL,
        };
        Names {
            own: "organizations/shop".into(),
            organizations: HashMap::from([
                ("shop".into(), "Shop Ltd".into()),
                ("vendor".into(), "Vendor GmbH".into()),
            ]),
            customers: HashMap::from([
                ("ada".into(), view(shown)),
                ("secret".into(), view(hidden)),
            ]),
            cases: HashMap::from([("k1".into(), ("Fridge not cooling".into(), "ada".into()))]),
            comments: HashMap::from([(
                "0198f0e4-0000-7000-8000-000000000001".into(),
                "Parts ordered.".into(),
            )]),
        }
    }

    fn one_thread<'a>(key: &'a str, events: &'a [pb::Event]) -> Thread<'a> {
        Thread {
            key,
            events: events.iter().collect(),
        }
    }

    #[test]
    fn events_read_in_words_with_names_instead_of_ids() {
        let names = names();
        let utc = TimeZone::UTC;
        let task = [event(
            "task.assigned",
            "cases/k1/tasks/t1",
            "organizations/vendor",
            Payload::Task(pb::CaseTask {
                name: "cases/k1/tasks/t1".into(),
                title: "Swap the unit".into(),
                assignee: "organizations/shop".into(),
                assigned_by: "organizations/vendor".into(),
                ..Default::default()
            }),
        )];
        let view = thread_view(&one_thread("cases/k1", &task), &names, &utc);
        assert_eq!(view.title, "Case: Fridge not cooling");
        assert_eq!(view.references[0].value, "Ada Lovelace (customers/ada)");
        assert_eq!(
            view.events[0].summary,
            "Task assigned to Shop Ltd: Swap the unit"
        );
        assert_eq!(view.events[0].actor, "Vendor GmbH");

        let moved = [event(
            "case.transitioned",
            "cases/k1",
            "organizations/vendor",
            Payload::Case(pb::Case {
                name: "cases/k1".into(),
                title: "Fridge not cooling".into(),
                state: "awaiting_parts".into(),
                customer: "customers/secret".into(),
                ..Default::default()
            }),
        )];
        let view = thread_view(&one_thread("cases/k1", &moved), &names, &utc);
        assert_eq!(
            view.events[0].summary,
            "Moved to awaiting parts by Vendor GmbH"
        );
        assert_eq!(view.events[0].actor, "", "the summary says who");
        assert!(
            view.events[0]
                .details
                .iter()
                .any(|d| d.label == "Comment" && d.value == "Parts ordered.")
        );
        assert_eq!(
            view.references[0].value, "a shared customer (customers/secret)",
            "no customer view in the event: not named"
        );

        let logged = [event(
            "interaction.logged",
            "customers/secret/interactions/i1",
            "organizations/vendor",
            Payload::Interaction(pb::Interaction {
                r#type: pb::InteractionType::Call as i32,
                summary: "Asked about the warranty".into(),
                ..Default::default()
            }),
        )];
        let view = thread_view(&one_thread("customers/secret", &logged), &names, &utc);
        assert_eq!(view.title, "A shared customer");
        assert_eq!(
            view.events[0].summary,
            "Call logged by Vendor GmbH: Asked about the warranty"
        );
        let view = thread_view(&one_thread("customers/ada", &logged), &names, &utc);
        assert_eq!(view.title, "Ada Lovelace");

        let proposed = [event(
            "partnership.proposed",
            "partnerships/p1",
            "organizations/vendor",
            Payload::Partnership(pb::Partnership {
                proposer: "organizations/vendor".into(),
                recipient: "organizations/shop".into(),
                relationship: pb::Relationship::Supplies as i32,
                ..Default::default()
            }),
        )];
        let view = thread_view(&one_thread("partnerships/p1", &proposed), &names, &utc);
        assert_eq!(view.title, "Partnership with Vendor GmbH");
        assert_eq!(
            view.events[0].summary,
            "Partnership proposed by Vendor GmbH"
        );
        assert_eq!(
            view.events[0].details[0].value,
            "Vendor GmbH supplies Shop Ltd"
        );
    }

    #[test]
    fn an_unknown_case_is_not_named_by_its_id() {
        let names = Names::default();
        let task = [event(
            "task.overdue",
            "cases/k9/tasks/t1",
            "",
            Payload::Task(pb::CaseTask {
                title: "Call back".into(),
                ..Default::default()
            }),
        )];
        let view = thread_view(&one_thread("cases/k9", &task), &names, &TimeZone::UTC);
        assert_eq!(view.title, "A case");
        assert_eq!(view.events[0].summary, "Task overdue: Call back");
        assert_eq!(view.events[0].actor, "");
    }
}
