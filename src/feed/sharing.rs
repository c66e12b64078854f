//! Who hears of grants and access requests: both sides, each with its own view.

use super::draft::{Draft, emit, emit_to};
use super::render::{grant_to_pb, preset_to_pb, request_to_pb, rule_to_pb};
use crate::domain::OrgRef;
use crate::domain::event::EventType;
use crate::pb::event::Payload;
use crate::store::{AccessRequest, FieldPreset, Grant, SharingRule, Tx};

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
        let mut draft = Draft::new(event_type, pb.name.clone(), Payload::AccessRequest(pb));
        // The owner's copy is about its customer (its audit entries go when the customer
        // is erased); the requester may not know which customer it asked for.
        if org.id == r.owner.id {
            draft.customer = Some(r.customer_id.clone());
        }
        emit(tx, &org.id, draft);
    }
}

/// Tells the owner of preset `p` of its change, and each organization holding live
/// grants made through it (`grantees`) of its new fields: one event each, however many
/// customers the grants cover. A grantee's copy carries the preset's name and fields
/// only; its label, etag and times are the owner's.
pub fn preset_event(tx: &mut Tx, owner: &OrgRef, grantees: &[OrgRef], p: &FieldPreset) {
    let full = preset_to_pb(&owner.slug, p);
    let shared = crate::pb::FieldPreset {
        name: full.name.clone(),
        fields: full.fields.clone(),
        ..Default::default()
    };
    let draft = |pb: &crate::pb::FieldPreset| {
        Draft::new(
            EventType::FieldPresetUpdated,
            pb.name.clone(),
            Payload::FieldPreset(pb.clone()),
        )
    };
    emit(tx, &owner.id, draft(&full));
    for grantee in grantees.iter().filter(|g| g.id != owner.id) {
        emit(tx, &grantee.id, draft(&shared));
    }
}

/// Tells the owner of rule `r` of its creation, change or revocation, whole, and each
/// organization it reaches (`reached`) once, without its etag: one event each,
/// however many customers the rule covers.
pub fn rule_event(tx: &mut Tx, event_type: EventType, r: &SharingRule, reached: &[OrgRef]) {
    let draft = |pb: crate::pb::SharingRule| {
        Draft::new(event_type, pb.name.clone(), Payload::SharingRule(pb))
    };
    emit(tx, &r.owner.id, draft(rule_to_pb(r, true)));
    for org in reached.iter().filter(|o| o.id != r.owner.id) {
        emit(tx, &org.id, draft(rule_to_pb(r, false)));
    }
}
