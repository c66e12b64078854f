//! Who hears of a change to a member: its own organization alone.

use super::draft::{Draft, emit};
use super::render::member_to_pb;
use crate::domain::event::EventType;
use crate::domain::{Member, Slug};
use crate::pb::event::Payload;
use crate::store::Tx;

/// Tells the member's organization (`slug`) of `event_type`, naming the fields an
/// update changed.
pub fn member_event(
    tx: &mut Tx,
    event_type: EventType,
    slug: &Slug,
    member: &Member,
    changed_fields: Vec<String>,
) {
    let pb = member_to_pb(slug, member);
    let mut draft = Draft::new(event_type, pb.name.clone(), Payload::Member(pb));
    draft.changed_fields = changed_fields;
    emit(tx, &member.organization_id, draft);
}
