//! Turns a change into events: one per organization that may see it, each showing
//! the resource as that organization sees it. Called inside the change's transaction,
//! so the events commit with it or not at all.

use std::collections::HashSet;

use prost::Message;
use uuid::Uuid;

use super::render::{endpoint_to_pb, timestamp};
use crate::domain::event::{EventType, TEST_EVENT_TYPE};
use crate::domain::{OrgRef, Slug, names, now};
use crate::pb::{self, event::Payload};
use crate::store::{Endpoint, NewEvent, Tx};

/// One event before it is addressed to an organization.
pub struct Draft {
    pub event_type: EventType,
    pub resource: String,
    pub changed_fields: Vec<String>,
    pub merged_customers: Vec<String>,
    /// The member the change names (an interaction's author), as a resource name.
    pub member: String,
    /// Members of the receiving organization told at once whatever their
    /// preferences (an SLA breach's escalation contacts), by id.
    pub escalate_to: Vec<String>,
    /// The customer the event is about when its resource does not say (an access
    /// request's), by id.
    pub customer: Option<String>,
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
            customer: None,
            payload,
        }
    }
}

/// Queues `draft` for `organization_id`'s feed, stamped with the transaction's cause.
pub fn emit(tx: &mut Tx, organization_id: &str, draft: Draft) {
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
    let customer_id = draft
        .customer
        .or_else(|| crate::domain::audit::customer_in(&draft.resource).map(str::to_owned));
    tx.emit(NewEvent {
        customer_id,
        organization_id: organization_id.to_owned(),
        id,
        event_type: draft.event_type,
        resource: draft.resource,
        create_time,
        body: event.encode_to_vec(),
        escalate_to: draft.escalate_to,
    });
}

/// Queues the same event for several organizations (each gets its own id).
pub fn emit_to(tx: &mut Tx, organizations: &[&OrgRef], draft: impl Fn() -> Draft) {
    let mut seen = HashSet::new();
    for org in organizations {
        if seen.insert(&org.id) {
            emit(tx, &org.id, draft());
        }
    }
}

/// The body of a test event `id` to `endpoint` of organization `org` (named
/// `resource`), sent by the key `key_id`: the endpoint itself as the payload, outside
/// any feed.
pub fn test_event(
    id: &str,
    (org, key_id): (&Slug, &str),
    endpoint: &Endpoint,
    resource: &str,
) -> Vec<u8> {
    pb::Event {
        id: id.to_owned(),
        sequence: 0,
        r#type: TEST_EVENT_TYPE.into(),
        create_time: timestamp(now()),
        actor: Some(pb::Actor {
            organization: names::organization(org),
            api_key: names::api_key(Some(org), key_id),
            member: String::new(),
        }),
        request_id: String::new(),
        resource: resource.to_owned(),
        changed_fields: vec![],
        merged_customers: vec![],
        payload: Some(Payload::WebhookEndpoint(endpoint_to_pb(org, endpoint))),
    }
    .encode_to_vec()
}
