//! Who hears of a logged interaction: every organization that may see both the
//! customer and the interaction.

use super::draft::{Draft, emit};
use super::render::interaction_to_pb;
use crate::domain::event::EventType;
use crate::domain::interaction::Interaction;
use crate::pb::event::Payload;
use crate::store::{SeenCustomer, Tx};

/// Tells each organization of the customer's `audience` (as read after the
/// interaction) that may see the customer and `interaction` of it.
pub fn interaction_logged(tx: &mut Tx, interaction: &Interaction, audience: &[SeenCustomer]) {
    let pb = interaction_to_pb(interaction);
    let viewers = audience
        .iter()
        .filter(|seen| seen.access().is_some())
        .map(|seen| seen.viewer_id.clone());
    for viewer in viewers {
        if interaction.visible_to(&viewer) {
            let mut draft = Draft::new(
                EventType::InteractionLogged,
                pb.name.clone(),
                Payload::Interaction(pb.clone()),
            );
            draft.member.clone_from(&pb.member);
            emit(tx, &viewer, draft);
        }
    }
}
