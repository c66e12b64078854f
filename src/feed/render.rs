//! The protobuf renderings of the hub's resources that events carry (and responses
//! share, so a resource reads the same in a response and in its event): times, etags,
//! customers as a viewer sees them, webhook endpoints.

use jiff::Timestamp;

use crate::domain::Slug;
use crate::domain::customer::{CustomerKind, RecordState};
use crate::domain::names;
use crate::domain::visibility::{Access, AccessLevel};
use crate::pb;
use crate::store::{Endpoint, SeenCustomer};

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
