//! Who hears of a logged interaction: every organization that may see both the
//! customer and the interaction.

use super::customers::customer_viewers;
use super::draft::{Draft, emit};
use super::render::interaction_to_pb;
use crate::domain::error::Result;
use crate::domain::event::EventType;
use crate::domain::interaction::Interaction;
use crate::pb::event::Payload;
use crate::store::Tx;

/// Tells each organization that may see `interaction` (and its customer) of it.
pub async fn interaction_logged(tx: &mut Tx, interaction: &Interaction) -> Result<()> {
    let pb = interaction_to_pb(interaction);
    for viewer in customer_viewers(tx, &interaction.customer_id).await? {
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
    Ok(())
}
