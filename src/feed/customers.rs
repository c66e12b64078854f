//! Who hears of a change to a customer record: the owner and every grantee that may
//! see it after the change, each with its own view and the fields that changed
//! within it; those that saw it before and no longer do get a last, bare event.

use std::collections::HashSet;

use super::draft::{Draft, emit};
use super::render::{customer_to_pb, overlay_to_pb, state_to_pb};
use crate::domain::customer::Customer;
use crate::domain::error::Result;
use crate::domain::event::EventType;
use crate::domain::names;
use crate::domain::visibility::CustomerView;
use crate::pb::{self, event::Payload};
use crate::store::{Overlay, SeenCustomer, Tx};

/// A change to a customer record, to be told to everyone who may see it.
pub struct CustomerChange<'a> {
    pub event_type: EventType,
    pub id: &'a str,
    /// The record before the change; `None` if it is new.
    pub before: Option<&'a Customer>,
    /// For `customer.merged`: the names of the records folded in.
    pub merged_customers: Vec<String>,
    /// Organizations that saw the record before the change. Those that no longer see
    /// it after get a last event with its name and state only.
    pub saw_before: Vec<String>,
}

/// The organizations that may see customer `id` now (read inside `tx`).
pub async fn customer_viewers(tx: &mut Tx, id: &str) -> Result<Vec<String>> {
    Ok(tx
        .customer_audience(id)
        .await?
        .into_iter()
        .filter(|seen| seen.access().is_some())
        .map(|seen| seen.viewer_id)
        .collect())
}

/// Emits `change` to the owner and every grantee that may see the customer after it,
/// each with its own view and the fields that changed within that view. A grantee
/// that sees none of the changed fields of an update hears nothing of it.
///
/// `after` is the record as the change left it (written in this transaction), so the
/// record is not read again.
pub async fn customer_changed(
    tx: &mut Tx,
    change: CustomerChange<'_>,
    after: &Customer,
) -> Result<()> {
    let audience = tx.customer_audience_of(after).await?;
    tell(tx, change, &audience);
    Ok(())
}

/// [`customer_changed`] for a caller that already holds the audience (a new record's
/// is its owner alone).
pub fn tell(tx: &mut Tx, change: CustomerChange<'_>, audience: &[SeenCustomer]) {
    let mut told = HashSet::new();
    let mut last_state = None;
    for seen in audience {
        last_state = Some(seen.customer.state);
        let Some(access) = seen.access() else {
            continue;
        };
        let c = &seen.customer;
        let after = access.view(c.kind, &c.profile);
        let before = match change.before {
            Some(b) => access.view(b.kind, &b.profile),
            None => CustomerView {
                display_name: after.display_name.as_ref().map(|_| String::new()),
                profile: Default::default(),
                fields: after.fields,
            },
        };
        let changed: Vec<String> = after
            .changes_since(&before)
            .into_iter()
            .map(|f| f.as_str().to_owned())
            .collect();
        if change.event_type == EventType::CustomerUpdated && changed.is_empty() {
            continue;
        }
        told.insert(seen.viewer_id.clone());
        let mut draft = Draft::new(
            change.event_type,
            names::customer(change.id),
            Payload::Customer(customer_to_pb(seen, access)),
        );
        draft.changed_fields = changed;
        draft.merged_customers = change.merged_customers.clone();
        emit(tx, &seen.viewer_id, draft);
    }
    for org in &change.saw_before {
        if told.contains(org) {
            continue;
        }
        let bare = pb::Customer {
            name: names::customer(change.id),
            state: last_state.map_or(0, |s| state_to_pb(s) as i32),
            ..Default::default()
        };
        let mut draft = Draft::new(
            change.event_type,
            names::customer(change.id),
            Payload::Customer(bare),
        );
        draft.merged_customers = change.merged_customers.clone();
        emit(tx, org, draft);
    }
}

/// Tells `organization_id` alone (an overlay is private to it) that its overlay on
/// customer `customer_id` changed in `changed_fields`.
pub fn overlay_updated(
    tx: &mut Tx,
    organization_id: &str,
    customer_id: &str,
    overlay: &Overlay,
    external_id: &Option<String>,
    changed_fields: Vec<String>,
) {
    let overlay = overlay_to_pb(customer_id, overlay, external_id);
    let mut draft = Draft::new(
        EventType::CustomerOverlayUpdated,
        overlay.name.clone(),
        Payload::CustomerOverlay(overlay),
    );
    draft.changed_fields = changed_fields;
    emit(tx, organization_id, draft);
}
