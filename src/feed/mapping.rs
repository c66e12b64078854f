//! Who hears of an account mapping: both sides, with the same view of it (names and
//! display names of the segments, the thresholded figures; never a filter).

use super::draft::{Draft, emit_to};
use super::render::mapping_to_pb;
use crate::domain::event::EventType;
use crate::pb::event::Payload;
use crate::store::{AccountMapping, Tx};

/// Tells both sides of `m` of a change to it.
pub fn mapping_event(tx: &mut Tx, event_type: EventType, m: &AccountMapping) {
    let pb = mapping_to_pb(m);
    emit_to(tx, &[&m.requester, &m.partner], || {
        Draft::new(
            event_type,
            pb.name.clone(),
            Payload::AccountMapping(pb.clone()),
        )
    });
}
