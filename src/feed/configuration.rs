//! Who hears of changes to an organization's own configuration (its API keys, client
//! certificates, webhook endpoints, and field presets created or deleted): that organization alone. Keys of
//! the hub's operator belong to no feed.

use super::draft::{Draft, emit};
use super::render::{api_key_to_pb, certificate_to_pb, endpoint_to_pb, preset_to_pb};
use crate::domain::client_cert::ClientCertificate;
use crate::domain::event::EventType;
use crate::domain::{ApiKey, OrgRef, Principal, Slug};
use crate::pb::event::Payload;
use crate::store::{Endpoint, FieldPreset, Tx};

/// Tells the key's organization of `event_type` (nothing for an operator key).
pub fn key_event(tx: &mut Tx, event_type: EventType, key: &ApiKey) {
    let Principal::Organization(org) = &key.principal else {
        return;
    };
    let pb = api_key_to_pb(key);
    emit(
        tx,
        &org.id,
        Draft::new(event_type, pb.name.clone(), Payload::ApiKey(pb)),
    );
}

/// Tells the certificate's organization of `event_type`.
pub fn certificate_event(tx: &mut Tx, event_type: EventType, c: &ClientCertificate) {
    let pb = certificate_to_pb(c);
    emit(
        tx,
        &c.organization.id,
        Draft::new(event_type, pb.name.clone(), Payload::ClientCertificate(pb)),
    );
}

/// Tells the endpoint's organization (`slug`) of `event_type`, naming the fields an
/// update changed.
pub fn endpoint_event(
    tx: &mut Tx,
    event_type: EventType,
    slug: &Slug,
    endpoint: &Endpoint,
    changed_fields: Vec<String>,
) {
    let pb = endpoint_to_pb(slug, endpoint);
    let mut draft = Draft::new(event_type, pb.name.clone(), Payload::WebhookEndpoint(pb));
    draft.changed_fields = changed_fields;
    emit(tx, &endpoint.organization_id, draft);
}

/// Tells the owner of preset `p` that it was created or deleted (no grant uses a new
/// preset or a deleted one, so no one else hears).
pub fn own_preset_event(tx: &mut Tx, event_type: EventType, owner: &OrgRef, p: &FieldPreset) {
    let pb = preset_to_pb(&owner.slug, p);
    emit(
        tx,
        &owner.id,
        Draft::new(event_type, pb.name.clone(), Payload::FieldPreset(pb)),
    );
}
