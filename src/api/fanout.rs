//! Turns a change into events: one per organization that may see it, each showing
//! the resource as that organization sees it. Called inside the change's transaction,
//! so the events commit with it or not at all.

use std::collections::HashSet;

use prost::Message;
use uuid::Uuid;

use super::convert::timestamp;
use super::customers::{customer_to_pb, state_to_pb};
use super::names;
use crate::domain::customer::Customer;
use crate::domain::error::Result;
use crate::domain::event::EventType;
use crate::domain::visibility::CustomerView;
use crate::domain::{OrgRef, Slug, now};
use crate::pb::{self, event::Payload};
use crate::store::{NewEvent, SeenCustomer, Tx};

/// One event before it is addressed to an organization.
pub(crate) struct Draft {
    pub event_type: EventType,
    pub resource: String,
    pub changed_fields: Vec<String>,
    pub merged_customers: Vec<String>,
    /// The member the change names (an interaction's author), as a resource name.
    pub member: String,
    /// Members of the receiving organization told at once whatever their
    /// preferences (an SLA breach's escalation contacts), by id.
    pub escalate_to: Vec<String>,
    pub payload: Payload,
}

impl Draft {
    pub fn new(event_type: EventType, resource: String, payload: Payload) -> Self {
        Self {
            event_type,
            resource,
            changed_fields: vec![],
            merged_customers: vec![],
            member: String::new(),
            escalate_to: vec![],
            payload,
        }
    }
}

/// Queues `draft` for `organization_id`'s feed, stamped with the transaction's cause.
pub(crate) fn emit(tx: &mut Tx, organization_id: &str, draft: Draft) {
    let cause = tx.cause();
    let slug = cause
        .organization
        .as_deref()
        .and_then(|s| Slug::parse(s).ok());
    let actor = pb::Actor {
        organization: slug.as_ref().map(names::organization).unwrap_or_default(),
        api_key: if cause.key_id.is_empty() {
            String::new()
        } else {
            names::api_key(slug.as_ref(), &cause.key_id)
        },
        member: draft.member,
    };
    let id = Uuid::now_v7().to_string();
    let create_time = now();
    let event = pb::Event {
        id: id.clone(),
        sequence: 0,
        r#type: draft.event_type.as_str().to_owned(),
        create_time: timestamp(create_time),
        actor: Some(actor),
        request_id: cause.request_id.clone(),
        resource: draft.resource.clone(),
        changed_fields: draft.changed_fields,
        merged_customers: draft.merged_customers,
        payload: Some(draft.payload),
    };
    tx.emit(NewEvent {
        organization_id: organization_id.to_owned(),
        id,
        event_type: draft.event_type.as_str().to_owned(),
        resource: draft.resource,
        create_time,
        body: event.encode_to_vec(),
        escalate_to: draft.escalate_to,
    });
}

/// Queues the same event for several organizations (each gets its own id).
pub(crate) fn emit_to(tx: &mut Tx, organizations: &[&OrgRef], draft: impl Fn() -> Draft) {
    let mut seen = HashSet::new();
    for org in organizations {
        if seen.insert(&org.id) {
            emit(tx, &org.id, draft());
        }
    }
}

/// A change to a customer record, to be told to everyone who may see it.
pub(crate) struct CustomerChange<'a> {
    pub event_type: EventType,
    pub id: &'a str,
    /// The record before the change; `None` if it is new.
    pub before: Option<&'a Customer>,
    /// For `customer.merged`: the names of the records folded in.
    pub merged_customers: Vec<String>,
    /// Organizations that saw the record before the change. Those that no longer see
    /// it after get a last event with its name and state only.
    pub saw_before: Vec<String>,
}

/// The organizations that may see customer `id` now (read inside `tx`).
pub(crate) async fn customer_viewers(tx: &mut Tx, id: &str) -> Result<Vec<String>> {
    Ok(tx
        .customer_audience(id)
        .await?
        .into_iter()
        .filter(|seen| seen.access().is_some())
        .map(|seen| seen.viewer_id)
        .collect())
}

/// Emits `change` to the owner and every grantee that may see the customer after it,
/// each with its own view and the fields that changed within that view. A grantee
/// that sees none of the changed fields of an update hears nothing of it.
pub(crate) async fn customer_changed(tx: &mut Tx, change: CustomerChange<'_>) -> Result<()> {
    let audience = tx.customer_audience(change.id).await?;
    tell(tx, change, &audience);
    Ok(())
}

/// [`customer_changed`] for a caller that already holds the audience (a new record's
/// is its owner alone).
pub(crate) fn tell(tx: &mut Tx, change: CustomerChange<'_>, audience: &[SeenCustomer]) {
    let mut told = HashSet::new();
    let mut last_state = None;
    for seen in audience {
        last_state = Some(seen.customer.state);
        let Some(access) = seen.access() else {
            continue;
        };
        let c = &seen.customer;
        let after = access.view(c.kind, &c.profile);
        let before = match change.before {
            Some(b) => access.view(b.kind, &b.profile),
            None => CustomerView {
                display_name: after.display_name.as_ref().map(|_| String::new()),
                profile: Default::default(),
                fields: after.fields,
            },
        };
        let changed: Vec<String> = after
            .changes_since(&before)
            .into_iter()
            .map(|f| f.as_str().to_owned())
            .collect();
        if change.event_type == EventType::CustomerUpdated && changed.is_empty() {
            continue;
        }
        told.insert(seen.viewer_id.clone());
        let mut draft = Draft::new(
            change.event_type,
            names::customer(change.id),
            Payload::Customer(customer_to_pb(seen, access)),
        );
        draft.changed_fields = changed;
        draft.merged_customers = change.merged_customers.clone();
        emit(tx, &seen.viewer_id, draft);
    }
    for org in &change.saw_before {
        if told.contains(org) {
            continue;
        }
        let bare = pb::Customer {
            name: names::customer(change.id),
            state: last_state.map_or(0, |s| state_to_pb(s) as i32),
            ..Default::default()
        };
        let mut draft = Draft::new(
            change.event_type,
            names::customer(change.id),
            Payload::Customer(bare),
        );
        draft.merged_customers = change.merged_customers.clone();
        emit(tx, org, draft);
    }
}
