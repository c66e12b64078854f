//! Who hears of a partnership's changes: both parties.

use super::draft::{Draft, emit_to};
use super::render::partnership_to_pb;
use crate::domain::Partnership;
use crate::domain::event::EventType;
use crate::pb::event::Payload;
use crate::store::Tx;

/// Tells the proposer and the recipient of `p` of `event_type`.
pub fn partnership_event(tx: &mut Tx, event_type: EventType, p: &Partnership) {
    let pb = partnership_to_pb(p);
    emit_to(tx, &[&p.proposer, &p.recipient], || {
        Draft::new(
            event_type,
            pb.name.clone(),
            Payload::Partnership(pb.clone()),
        )
    });
}
