//! The protobuf renderings of the hub's resources that events carry (and responses
//! share, so a resource reads the same in a response and in its event): times, etags,
//! customers as a viewer sees them, cases as a participant sees them, webhook
//! endpoints.

use jiff::{SignedDuration, Timestamp};

use crate::domain::case::sla::Phase;
use crate::domain::case::workflow::Template;
use crate::domain::case::{Case, CommentVisibility, HistoryEntry, Priority, Task, TaskState};
use crate::domain::customer::FieldSet;
use crate::domain::customer::{CustomerKind, RecordState};
use crate::domain::error::FieldViolation;
use crate::domain::interaction::{Direction, Interaction, InteractionType, InteractionVisibility};
use crate::domain::metrics::{CustomerMetrics, units_and_nanos};
use crate::domain::names;
use crate::domain::scorecard::{PartyFigures, Period, RELATIVE_ERROR, Scorecard, Sketch};
use crate::domain::visibility::{Access, AccessLevel};
use crate::domain::{
    Member, MemberRole, OrganizationKind, Partnership, PartnershipState, Relationship, Scope, Slug,
};
use crate::pb;
use crate::store::{
    AccessRequest, AccountMapping, Endpoint, FieldPreset, Grant, Operation, Overlay, RequestState,
    RuleTarget, SeenCustomer, Segment, SharingRule,
};

/// Maps a domain enum to its protobuf enum and back (the edge parses requests with
/// the second half); the protobuf's UNSPECIFIED (or any
/// value not listed) reads as "is required", an unknown number as not known.
macro_rules! enum_mapping {
    ($to:ident, $from:ident, $domain:ty, $pb:ty, $what:literal, { $($d:path => $p:path),+ $(,)? }) => {
        pub fn $to(value: $domain) -> $pb {
            match value {
                $($d => $p,)+
            }
        }

        pub fn $from(raw: i32) -> Result<$domain, FieldViolation> {
            match <$pb>::try_from(raw) {
                $(Ok($p) => Ok($d),)+
                Ok(_) => Err(FieldViolation::required("")),
                Err(_) => Err(FieldViolation::new("", format!("{raw} is not a known {}", $what))),
            }
        }
    };
}

enum_mapping!(org_kind_to_pb, org_kind_from_pb, OrganizationKind, pb::OrganizationKind, "organization kind", {
    OrganizationKind::Vendor => pb::OrganizationKind::Vendor,
    OrganizationKind::Distributor => pb::OrganizationKind::Distributor,
    OrganizationKind::Retailer => pb::OrganizationKind::Retailer,
    OrganizationKind::Other => pb::OrganizationKind::Other,
});

enum_mapping!(scope_to_pb, scope_from_pb, Scope, pb::ApiKeyScope, "scope; use READ, WRITE or ADMIN", {
    Scope::Read => pb::ApiKeyScope::Read,
    Scope::Write => pb::ApiKeyScope::Write,
    Scope::Admin => pb::ApiKeyScope::Admin,
});

enum_mapping!(role_to_pb, role_from_pb, MemberRole, pb::MemberRole, "member role", {
    MemberRole::Coordinator => pb::MemberRole::Coordinator,
    MemberRole::Manager => pb::MemberRole::Manager,
    MemberRole::Administrator => pb::MemberRole::Administrator,
});

enum_mapping!(relationship_to_pb, relationship_from_pb, Relationship, pb::Relationship, "relationship", {
    Relationship::Supplies => pb::Relationship::Supplies,
    Relationship::DistributesFor => pb::Relationship::DistributesFor,
    Relationship::SellsFor => pb::Relationship::SellsFor,
    Relationship::ServicesFor => pb::Relationship::ServicesFor,
});

pub fn timestamp(t: Timestamp) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    })
}

/// The etag of a resource at `revision`: opaque to callers.
pub fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
}

pub fn kind_to_pb(kind: CustomerKind) -> pb::CustomerKind {
    match kind {
        CustomerKind::Person => pb::CustomerKind::Person,
        CustomerKind::Company => pb::CustomerKind::Company,
    }
}

pub fn level_to_pb(access: Access) -> pb::AccessLevel {
    match access {
        Access::Owner => pb::AccessLevel::Owner,
        Access::Grantee {
            level: AccessLevel::Read,
            ..
        } => pb::AccessLevel::Read,
        Access::Grantee {
            level: AccessLevel::ReadWrite,
            ..
        } => pb::AccessLevel::ReadWrite,
    }
}

/// A customer as `access` shows it.
pub fn state_to_pb(state: RecordState) -> pb::customer::State {
    use pb::customer::State;
    match state {
        RecordState::Active | RecordState::Merged => State::Active,
        RecordState::Deleted => State::Deleted,
        RecordState::Erased => State::Erased,
    }
}

pub fn customer_to_pb(seen: &SeenCustomer, access: Access) -> pb::Customer {
    let c = &seen.customer;
    let view = access.view(c.kind, &c.profile);
    let p = view.profile;
    pb::Customer {
        name: names::customer(&c.id),
        owner: names::organization(&c.owner.slug),
        kind: kind_to_pb(c.kind) as i32,
        state: state_to_pb(c.state) as i32,
        display_name: view.display_name.unwrap_or_default(),
        given_name: p.given_name,
        family_name: p.family_name,
        legal_name: p.legal_name,
        emails: p
            .emails
            .into_iter()
            .map(|e| pb::EmailContact {
                address: e.address.as_str().to_owned(),
                label: e.label,
                primary: e.primary,
            })
            .collect(),
        phones: p
            .phones
            .into_iter()
            .map(|ph| pb::PhoneContact {
                number: ph.number.as_str().to_owned(),
                label: ph.label,
                primary: ph.primary,
            })
            .collect(),
        addresses: p
            .addresses
            .into_iter()
            .map(|a| pb::PostalAddress {
                label: a.label,
                lines: a.lines,
                locality: a.locality,
                region: a.region,
                postal_code: a.postal_code,
                country_code: a.country_code,
            })
            .collect(),
        tags: p.tags,
        attributes: p.attributes.into_iter().collect(),
        external_id: seen.external_id.clone().unwrap_or_default(),
        access: level_to_pb(access) as i32,
        visible_fields: view.fields.iter().map(|f| f.as_str().to_owned()).collect(),
        create_time: timestamp(c.create_time),
        update_time: timestamp(c.update_time),
        delete_time: c.delete_time.and_then(timestamp),
        etag: etag(c.revision),
        metrics: None,
        owner_metrics: None,
    }
}

/// An organization's metrics of a customer. An amount past what 64-bit units hold is
/// left out rather than shown wrong.
pub fn metrics_to_pb(m: &CustomerMetrics) -> pb::CustomerMetrics {
    let money = |values: &std::collections::BTreeMap<String, i128>| -> Vec<pb::Money> {
        values
            .iter()
            .filter_map(|(currency, amount)| {
                let (units, nanos) = units_and_nanos(*amount)?;
                Some(pb::Money {
                    currency_code: currency.clone(),
                    units,
                    nanos,
                })
            })
            .collect()
    };
    pb::CustomerMetrics {
        purchase_count: m.purchases,
        purchase_value: money(&m.purchase_value),
        lifetime_value: money(&m.lifetime_value),
        interactions: m
            .spans
            .iter()
            .map(|(kind, span)| pb::InteractionSpan {
                r#type: type_to_pb(*kind) as i32,
                count: span.count,
                first_time: timestamp(span.first),
                last_time: timestamp(span.last),
            })
            .collect(),
        open_cases: m.open_cases,
        rfm: m.rfm.map(|s| pb::RfmScores {
            recency: s.recency.into(),
            frequency: s.frequency.into(),
            monetary: s.monetary.into(),
        }),
    }
}

/// The filter as the caller wrote it: stored prefixes `customer.` read `customer.*`.
fn filter_to_pb(types: &[String]) -> Vec<String> {
    types
        .iter()
        .map(|t| match t.strip_suffix('.') {
            Some(prefix) => format!("{prefix}.*"),
            None => t.clone(),
        })
        .collect()
}

/// The endpoint as its organization sees it (never its secret); `pending_deliveries`
/// is left 0 for the caller to fill in.
/// An API key as its owner sees it (never its secret).
pub fn api_key_to_pb(k: &crate::domain::ApiKey) -> pb::ApiKey {
    let owner = match &k.principal {
        crate::domain::Principal::Operator => None,
        crate::domain::Principal::Organization(org) => Some(&org.slug),
    };
    pb::ApiKey {
        name: names::api_key(owner, &k.id),
        display_name: k.display_name.clone(),
        scopes: k.scopes.iter().map(|s| scope_to_pb(s) as i32).collect(),
        prefix: k.prefix.clone(),
        create_time: timestamp(k.create_time),
        expire_time: k.expire_time.and_then(timestamp),
        revoke_time: k.revoke_time.and_then(timestamp),
    }
}

/// A client certificate registration as its organization sees it.
pub fn certificate_to_pb(
    c: &crate::domain::client_cert::ClientCertificate,
) -> pb::ClientCertificate {
    let r#match = match &c.matches {
        crate::domain::client_cert::CertificateMatch::Fingerprint(f) => {
            pb::client_certificate::Match::FingerprintSha256(f.clone())
        }
        crate::domain::client_cert::CertificateMatch::Subject(s) => {
            pb::client_certificate::Match::SubjectCommonName(s.clone())
        }
    };
    pb::ClientCertificate {
        name: names::client_certificate(&c.organization.slug, &c.id),
        display_name: c.display_name.clone(),
        r#match: Some(r#match),
        scopes: c.scopes.iter().map(|s| scope_to_pb(s) as i32).collect(),
        create_time: timestamp(c.create_time),
        revoke_time: c.revoke_time.and_then(timestamp),
    }
}

pub fn endpoint_to_pb(org: &Slug, e: &Endpoint) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        name: names::webhook_endpoint(org, &e.id),
        url: e.url.clone(),
        description: e.description.clone(),
        event_types: filter_to_pb(&e.event_types),
        enabled: Some(e.enabled),
        disabled_reason: e.disabled_reason.clone(),
        consecutive_failures: e.consecutive_failures,
        last_success_time: e.last_success_time.and_then(timestamp),
        create_time: timestamp(e.create_time),
        update_time: timestamp(e.update_time),
        etag: etag(e.revision),
        rate_limit_per_second: e.rate_limit_per_second as i32,
        ordered: e.ordered,
        failing_since_time: e.failing_since.and_then(timestamp),
        pending_deliveries: 0,
    }
}

pub fn priority_to_pb(p: Priority) -> pb::CasePriority {
    match p {
        Priority::Low => pb::CasePriority::Low,
        Priority::Normal => pb::CasePriority::Normal,
        Priority::High => pb::CasePriority::High,
        Priority::Urgent => pb::CasePriority::Urgent,
    }
}

pub fn duration(d: SignedDuration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: d.as_secs(),
        nanos: d.subsec_nanos(),
    })
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
        name: names::case(&c.id),
        template: names::workflow_template(&c.template),
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
        // A conflict is the judge's to see: the other side's case is not the viewer's.
        conflicting_cases: c
            .conflicts
            .iter()
            .filter(|k| k.judge_id == viewer_id)
            .map(|k| names::case(&k.case_id))
            .collect(),
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
        name: names::task(&t.case_id, &t.id),
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

/// An organization's overlay on customer `customer_id`, with its external id.
pub fn overlay_to_pb(
    customer_id: &str,
    o: &Overlay,
    external_id: &Option<String>,
) -> pb::CustomerOverlay {
    pb::CustomerOverlay {
        name: names::overlay(customer_id),
        external_id: external_id.clone().unwrap_or_default(),
        account_number: o.account_number.clone(),
        status: o.status.clone(),
        notes: o.notes.clone(),
        attributes: o.attributes.clone().into_iter().collect(),
        update_time: o.update_time.and_then(timestamp),
        etag: etag(o.revision),
    }
}

pub fn type_to_pb(t: InteractionType) -> pb::InteractionType {
    use pb::InteractionType as P;
    match t {
        InteractionType::Call => P::Call,
        InteractionType::Meeting => P::Meeting,
        InteractionType::Email => P::Email,
        InteractionType::Purchase => P::Purchase,
        InteractionType::Complaint => P::Complaint,
        InteractionType::Incident => P::Incident,
        InteractionType::Note => P::Note,
    }
}

/// An interaction; only those its reader may see are ever rendered.
pub fn interaction_to_pb(i: &Interaction) -> pb::Interaction {
    pb::Interaction {
        name: names::interaction(&i.customer_id, &i.id),
        r#type: type_to_pb(i.kind) as i32,
        occur_time: timestamp(i.occur_time),
        organization: names::organization(&i.organization.slug),
        member: i
            .member_id
            .as_ref()
            .map(|m| names::member(&i.organization.slug, m))
            .unwrap_or_default(),
        channel: i.channel.clone(),
        direction: match i.direction {
            Direction::Unspecified => pb::Direction::Unspecified,
            Direction::Inbound => pb::Direction::Inbound,
            Direction::Outbound => pb::Direction::Outbound,
        } as i32,
        summary: i.summary.clone(),
        body: i.body.clone(),
        amount: i.amount.as_ref().map(|m| pb::Money {
            currency_code: m.currency.clone(),
            units: m.units,
            nanos: m.nanos,
        }),
        attributes: i.attributes.clone().into_iter().collect(),
        visibility: match i.visibility {
            InteractionVisibility::Organization => pb::InteractionVisibility::Organization,
            InteractionVisibility::Shared => pb::InteractionVisibility::Shared,
        } as i32,
        create_time: timestamp(i.create_time),
    }
}

pub fn grant_level_to_pb(level: AccessLevel) -> pb::AccessLevel {
    match level {
        AccessLevel::Read => pb::AccessLevel::Read,
        AccessLevel::ReadWrite => pb::AccessLevel::ReadWrite,
    }
}

/// The fields a grant, rule or request shares, as written: empty for every field of
/// the record (what an empty list reads as).
pub fn field_names(fields: FieldSet) -> Vec<String> {
    if fields == FieldSet::PROFILE {
        vec![]
    } else {
        fields.iter().map(|f| f.as_str().to_owned()).collect()
    }
}

pub fn grant_to_pb(g: &Grant) -> pb::Grant {
    use pb::grant::State;
    pb::Grant {
        name: names::grant(&g.customer_id, &g.id),
        grantee: names::organization(&g.grantee.slug),
        level: grant_level_to_pb(g.level) as i32,
        fields: field_names(g.fields),
        partnership: names::partnership(&g.partnership_id),
        state: if g.revoke_time.is_some() {
            State::Revoked
        } else {
            State::Active
        } as i32,
        effective: g.revoke_time.is_none() && g.partnership_active,
        create_time: timestamp(g.create_time),
        revoke_time: g.revoke_time.and_then(timestamp),
        preset: g
            .preset
            .as_ref()
            .map(|(owner, id)| names::field_preset(owner, id))
            .unwrap_or_default(),
    }
}

/// A field preset of organization `owner`.
pub fn preset_to_pb(owner: &crate::domain::Slug, p: &FieldPreset) -> pb::FieldPreset {
    pb::FieldPreset {
        name: names::field_preset(owner, &p.id),
        display_name: p.display_name.clone(),
        fields: field_names(p.fields),
        etag: etag(p.revision),
        create_time: timestamp(p.create_time),
        update_time: timestamp(p.update_time),
    }
}

/// A segment of organization `owner`.
pub fn segment_to_pb(owner: &Slug, s: &Segment) -> pb::Segment {
    pb::Segment {
        name: names::segment(owner, &s.id),
        display_name: s.display_name.clone(),
        filter: s.filter.clone(),
        etag: etag(s.revision),
        create_time: timestamp(s.create_time),
        update_time: timestamp(s.update_time),
    }
}

/// A sharing rule: whole for its owner (`whole`); for an organization it reaches,
/// without its etag (the owner's to change with).
pub fn rule_to_pb(r: &SharingRule, whole: bool) -> pb::SharingRule {
    use pb::sharing_rule::State;
    let owner = &r.owner.slug;
    let (grantee, relationship) = match &r.target {
        RuleTarget::Grantee(g) => (names::organization(&g.slug), 0),
        RuleTarget::Relationship(rel) => (String::new(), relationship_to_pb(*rel) as i32),
    };
    pb::SharingRule {
        name: names::sharing_rule(owner, &r.id),
        display_name: r.display_name.clone(),
        segment: r
            .segment
            .as_ref()
            .map(|s| names::segment(owner, &s.id))
            .unwrap_or_default(),
        segment_display_name: r
            .segment
            .as_ref()
            .map(|s| s.display_name.clone())
            .unwrap_or_default(),
        grantee,
        relationship,
        level: grant_level_to_pb(r.level) as i32,
        fields: field_names(r.fields),
        preset: r
            .preset_id
            .as_ref()
            .map(|id| names::field_preset(owner, id))
            .unwrap_or_default(),
        expire_time: r.expire_time.and_then(timestamp),
        state: if r.revoke_time.is_some() {
            State::Revoked
        } else {
            State::Active
        } as i32,
        etag: if whole {
            etag(r.revision)
        } else {
            String::new()
        },
        create_time: timestamp(r.create_time),
        update_time: timestamp(r.update_time),
        revoke_time: r.revoke_time.and_then(timestamp),
    }
}

/// An access request as `viewer_id` may see it: the requester learns the customer
/// only once access is approved.
pub fn request_to_pb(r: &AccessRequest, viewer_id: &str) -> pb::AccessRequest {
    use pb::access_request::State;
    let shows_customer = r.owner.id == viewer_id || r.state == RequestState::Approved;
    pb::AccessRequest {
        name: names::access_request(&r.id),
        requester: names::organization(&r.requester.slug),
        owner: names::organization(&r.owner.slug),
        r#match: if r.match_id.is_empty() {
            String::new()
        } else {
            names::customer_match(&r.match_id)
        },
        account_mapping: r
            .mapping_id
            .as_deref()
            .map(names::account_mapping)
            .unwrap_or_default(),
        level: grant_level_to_pb(r.level) as i32,
        fields: field_names(r.fields),
        reason: r.reason.clone(),
        state: match r.state {
            RequestState::Pending => State::Pending,
            RequestState::Approved => State::Approved,
            RequestState::Declined => State::Declined,
        } as i32,
        customer: if shows_customer {
            names::customer(&r.customer_id)
        } else {
            String::new()
        },
        grant: r
            .grant_id
            .as_ref()
            .filter(|_| shows_customer)
            .map(|g| names::grant(&r.customer_id, g))
            .unwrap_or_default(),
        decision_reason: r.decision_reason.clone(),
        create_time: timestamp(r.create_time),
        decide_time: r.decide_time.and_then(timestamp),
    }
}

/// A member of organization `org`.
pub fn member_to_pb(org: &Slug, m: &Member) -> pb::Member {
    pb::Member {
        name: names::member(org, &m.id),
        display_name: m.display_name.as_str().to_owned(),
        email: m.email.as_str().to_owned(),
        role: role_to_pb(m.role) as i32,
        time_zone: m.time_zone.as_str().to_owned(),
        create_time: timestamp(m.create_time),
        update_time: timestamp(m.update_time),
        etag: etag(m.revision),
        email_bounce: m.email_bounce.clone(),
        email_bounce_time: m.email_bounce_time.and_then(timestamp),
    }
}

/// A partnership; both parties see the same.
pub fn partnership_to_pb(p: &Partnership) -> pb::Partnership {
    use pb::partnership::State;
    let (state, reason) = match &p.state {
        PartnershipState::Proposed => (State::Proposed, ""),
        PartnershipState::Active => (State::Active, ""),
        PartnershipState::Declined { reason } => (State::Declined, reason.as_str()),
        PartnershipState::Suspended { reason, .. } => (State::Suspended, reason.as_str()),
        PartnershipState::Ended { reason, .. } => (State::Ended, reason.as_str()),
    };
    pb::Partnership {
        name: names::partnership(&p.id),
        proposer: names::organization(&p.proposer.slug),
        recipient: names::organization(&p.recipient.slug),
        relationship: relationship_to_pb(p.relationship) as i32,
        message: p.message.as_str().to_owned(),
        state: state as i32,
        state_changed_by: names::organization(&p.state_changed_by.slug),
        state_reason: reason.to_owned(),
        create_time: timestamp(p.create_time),
        update_time: timestamp(p.update_time),
        etag: etag(p.revision),
        reporting_time_zone: p.reporting_time_zone.name.clone(),
    }
}

/// A mapping, as both of its sides see it.
pub fn mapping_to_pb(m: &AccountMapping) -> pb::AccountMapping {
    use crate::domain::mapping::{MappingState, Side};
    use pb::account_mapping::State;
    let segment_name = |side: Side, id: &str| names::segment(&m.org(side).slug, id);
    let segments = |side: Side| -> Vec<pb::MappingSegment> {
        m.segments
            .iter()
            .filter(|s| s.side == side)
            .map(|s| pb::MappingSegment {
                segment: segment_name(side, &s.segment_id),
                display_name: s.display_name.clone(),
                too_small: m
                    .inputs
                    .iter()
                    .any(|i| i.segment_id == s.segment_id && i.members < i64::from(m.threshold)),
            })
            .collect()
    };
    let count = |c: &crate::domain::mapping::Count| {
        use crate::domain::mapping::Bound;
        use pb::mapping_count::Bound as B;
        pb::MappingCount {
            value: c.value,
            bound: match c.bound {
                Bound::Exact => B::Exact,
                Bound::FewerThan => B::FewerThan,
                Bound::MoreThan => B::MoreThan,
            } as i32,
        }
    };
    pb::AccountMapping {
        name: names::account_mapping(&m.id),
        requester: names::organization(&m.requester.slug),
        partner: names::organization(&m.partner.slug),
        state: match m.state {
            MappingState::Proposed => State::Proposed,
            MappingState::Active => State::Active,
            MappingState::Declined => State::Declined,
            MappingState::Ended => State::Ended,
        } as i32,
        requester_segments: segments(Side::Requester),
        partner_segments: segments(Side::Partner),
        threshold: m.threshold as i32,
        overlaps: m
            .overlaps
            .iter()
            .map(|o| pb::SegmentOverlap {
                requester_segment: segment_name(Side::Requester, &o.requester_segment),
                partner_segment: segment_name(Side::Partner, &o.partner_segment),
                both: Some(count(&o.both)),
                only_requester: Some(count(&o.only_requester)),
                only_partner: Some(count(&o.only_partner)),
            })
            .collect(),
        compare_time: m.compare_time.and_then(timestamp),
        next_refresh_time: m.refresh_time.and_then(timestamp),
        operation: m
            .operation_id
            .as_deref()
            .map(names::operation)
            .unwrap_or_default(),
        ended_by: m
            .ended_by
            .as_ref()
            .map(|o| names::organization(&o.slug))
            .unwrap_or_default(),
        etag: etag(m.revision),
        create_time: timestamp(m.create_time),
        update_time: timestamp(m.update_time),
        end_time: m.end_time.and_then(timestamp),
    }
}

/// A long-running operation; `response` is what it produced, when it succeeded.
pub fn operation_to_pb(
    o: &Operation,
    response: Option<prost_types::Any>,
) -> crate::google::longrunning::Operation {
    use crate::google::longrunning::operation::Result as Outcome;
    use prost::Message;
    let target = match o.verb.as_str() {
        crate::domain::mapping::COMPARE_VERB => names::account_mapping(&o.target_id),
        _ => o.target_id.clone(),
    };
    let metadata = pb::OperationMetadata {
        target,
        verb: o.verb.clone(),
        done: o.done,
        total: o.total,
        cancel_requested: o.cancel_requested,
        create_time: timestamp(o.create_time),
        update_time: timestamp(o.update_time),
        end_time: o.end_time.and_then(timestamp),
    };
    let result = match (&o.error, response) {
        (Some((code, message)), _) => Some(Outcome::Error(crate::google::rpc::Status {
            code: *code,
            message: message.clone(),
            details: vec![],
        })),
        (None, Some(any)) if o.state.done() => Some(Outcome::Response(any)),
        _ => None,
    };
    crate::google::longrunning::Operation {
        name: names::operation(&o.id),
        metadata: Some(prost_types::Any {
            type_url: "type.googleapis.com/liaison.v1.OperationMetadata".into(),
            value: metadata.encode_to_vec(),
        }),
        done: o.state.done(),
        result,
    }
}

/// Partner scorecards, as both sides of the partnership see them.
pub fn period_to_pb(p: Period) -> pb::ScorecardPeriod {
    match p {
        Period::Day => pb::ScorecardPeriod::Day,
        Period::Week => pb::ScorecardPeriod::Week,
        Period::Month => pb::ScorecardPeriod::Month,
        Period::Quarter => pb::ScorecardPeriod::Quarter,
    }
}

fn seconds_pb(seconds: f64) -> prost_types::Duration {
    let micros = (seconds * 1e6).round() as i64;
    prost_types::Duration {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn summary(s: &Sketch) -> pb::DurationSummary {
    pb::DurationSummary {
        count: s.count() as i64,
        median: s.quantile(0.5).map(seconds_pb),
        p90: s.quantile(0.9).map(seconds_pb),
        p95: s.quantile(0.95).map(seconds_pb),
    }
}

fn party_to_pb(organization: String, f: &PartyFigures) -> pb::PartyScorecard {
    pb::PartyScorecard {
        organization,
        cases_received: f.cases_received,
        cases_resolved: f.cases_resolved,
        first_response: Some(summary(&f.first_response)),
        resolution: Some(summary(&f.resolution)),
        sla_clocks: f
            .sla_clocks
            .iter()
            .map(|(policy, c)| pb::SlaClockFigures {
                policy: policy.clone(),
                met: c.met,
                breached: c.breached,
            })
            .collect(),
        tasks_overdue: f.tasks_overdue,
        interactions_logged: f.interactions_logged,
        customers_shared: f.customers_shared,
        customers_visible: f.customers_visible,
        access_requests_answered: f.access_requests_answered,
        time_to_answer: Some(summary(&f.time_to_answer)),
        webhook_attempts: f.webhook_attempts,
        webhook_succeeded: f.webhook_succeeded,
        webhook_success_rate: f.webhook_success_rate().unwrap_or(0.0),
        webhook_latency: Some(summary(&f.webhook_latency)),
        deals_submitted: f.deals.submitted,
        deals_approved: f.deals.approved,
        deals_won: f.deals.won,
        deals_lost: f.deals.lost,
    }
}

/// A scorecard as both of its sides see it.
pub fn scorecard_to_pb(s: &Scorecard) -> pb::PartnershipScorecard {
    let p = &s.partnership;
    let parties = [&p.proposer, &p.recipient]
        .into_iter()
        .map(|org| {
            let f = s.figures.parties.get(&org.id).cloned().unwrap_or_default();
            party_to_pb(names::organization(&org.slug), &f)
        })
        .collect();
    pb::PartnershipScorecard {
        partnership: names::partnership(&p.id),
        period: period_to_pb(s.period) as i32,
        first_date: s.first.to_string(),
        last_date: s.last.to_string(),
        time_zone: p.reporting_time_zone.name.clone(),
        start_time: timestamp(s.start),
        end_time: timestamp(s.end),
        closed: s.closed,
        parties,
        relative_error: RELATIVE_ERROR,
    }
}
