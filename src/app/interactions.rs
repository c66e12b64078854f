//! Interactions: what happened with a customer (calls, meetings, purchases, …),
//! logged by an organization that may see the customer, and read by those that may
//! see both the customer and the interaction.

use crate::domain::caller::Caller;
use crate::domain::customer::RecordState;
use crate::domain::error::{Error, Result};
use crate::domain::ids::{CustomerId, InteractionId};
use crate::domain::interaction::Interaction;
use crate::domain::names;
use crate::feed::interactions::interaction_logged;
use crate::store::{InteractionFilter, Page, Store, Tx};

use super::customers::{audience_before, coverage_after, visible, visible_in};

/// NOT_FOUND unless `member_id` (named `name` by the caller), if given, is a member
/// of the caller's organization.
pub async fn check_author(
    store: &Store,
    caller: &Caller,
    member_id: Option<&str>,
    name: &str,
) -> Result<()> {
    let org = caller.organization()?;
    if let Some(member) = member_id
        && store.member(&org.id, member).await?.is_none()
    {
        return Err(Error::NotFound(format!("member {name:?}")));
    }
    Ok(())
}

/// Logs `interaction` on its customer (called `parent` by the caller), which the
/// caller must see and which must be active, and tells whoever may see it.
pub async fn log(
    tx: &mut Tx,
    caller: &Caller,
    interaction: &Interaction,
    parent: &str,
) -> Result<()> {
    let org = caller.organization()?;
    let (seen, _) = visible_in(tx, org, &interaction.customer_id, parent).await?;
    if seen.customer.state != RecordState::Active {
        return Err(Error::failed_precondition(
            "CUSTOMER_NOT_ACTIVE",
            format!("{parent} is not active"),
        ));
    }
    // Who sees the customer, before and after: an interaction can move it into or
    // out of a rule's segment that filters on interactions.
    let before = audience_before(tx, &seen.customer).await?;
    tx.insert_interaction(interaction).await?;
    let audience = coverage_after(tx, &seen.customer, before).await?;
    interaction_logged(tx, interaction, &audience);
    Ok(())
}

/// Interaction `id` of customer `customer_id`, if the caller may see both; NOT_FOUND
/// (naming `name`) otherwise, whichever it may not see.
pub async fn get(
    store: &Store,
    caller: &Caller,
    (customer_id, id): (&CustomerId, &InteractionId),
    name: &str,
) -> Result<Interaction> {
    let org = caller.organization()?;
    let missing = || Error::NotFound(format!("interaction {name:?}"));
    visible(store, org, customer_id, &names::customer(customer_id))
        .await
        .map_err(|_| missing())?;
    store
        .interaction(customer_id, id)
        .await?
        .filter(|i| i.visible_to(&org.id))
        .ok_or_else(missing)
}

/// The interactions of customer `customer_id` (called `parent`) that the caller may
/// see and `filter` selects, a page of `size` after the row `(time, id)`; and the
/// row to continue after.
pub async fn list(
    store: &Store,
    caller: &Caller,
    (customer_id, parent): (&CustomerId, &str),
    filter: &InteractionFilter,
    after: Option<(i64, &str)>,
    size: usize,
) -> Result<Page<Interaction>> {
    let org = caller.organization()?;
    visible(store, org, customer_id, parent).await?;
    let found = store
        .interactions(customer_id, &org.id, filter, after, size)
        .await?;
    let shown = found
        .items
        .into_iter()
        .filter(|i| i.visible_to(&org.id))
        .collect();
    Ok(Page {
        items: shown,
        next_after: found.next_after,
    })
}
