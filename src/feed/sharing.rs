//! Who hears of grants and access requests: both sides, each with its own view.

use super::draft::{Draft, emit, emit_to};
use super::render::{grant_to_pb, preset_to_pb, request_to_pb};
use crate::domain::OrgRef;
use crate::domain::event::EventType;
use crate::pb::event::Payload;
use crate::store::{AccessRequest, FieldPreset, Grant, Tx};

/// Tells the grant's owner and grantee about it.
pub fn grant_event(tx: &mut Tx, event_type: EventType, owner: &OrgRef, g: &Grant) {
    let pb = grant_to_pb(g);
    emit_to(tx, &[owner, &g.grantee], || {
        Draft::new(event_type, pb.name.clone(), Payload::Grant(pb.clone()))
    });
}

/// Tells the requester and the organization asked about an access request, each with
/// its own view of it.
pub fn request_event(tx: &mut Tx, event_type: EventType, r: &AccessRequest) {
    for org in [&r.requester, &r.owner] {
        let pb = request_to_pb(r, &org.id);
        let draft = Draft::new(event_type, pb.name.clone(), Payload::AccessRequest(pb));
        emit(tx, &org.id, draft);
    }
}

/// Tells the owner of preset `p` and each organization holding live grants made
/// through it (`grantees`) of its change: one event each, however many customers the
/// grants cover.
pub fn preset_event(tx: &mut Tx, owner: &OrgRef, grantees: &[OrgRef], p: &FieldPreset) {
    let pb = preset_to_pb(&owner.slug, p);
    let audience: Vec<&OrgRef> = std::iter::once(owner).chain(grantees).collect();
    emit_to(tx, &audience, || {
        Draft::new(
            EventType::FieldPresetUpdated,
            pb.name.clone(),
            Payload::FieldPreset(pb.clone()),
        )
    });
}
