//! Who hears of a change to a customer record: the owner and every grantee that may
//! see it after the change, each with its own view and the fields that changed
//! within it; those that saw it before and no longer do get a last, bare event.

use std::collections::HashSet;

use super::draft::{Draft, emit};
use super::render::{customer_to_pb, overlay_to_pb, state_to_pb};
use crate::domain::customer::{Customer, RecordState};
use crate::domain::error::Result;
use crate::domain::event::EventType;
use crate::domain::names;
use crate::domain::visibility::{Access, CustomerView};
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
    /// The audience as read before the change, where the change moves what each
    /// viewer sees without being a change of the record (an interaction logged);
    /// `None`: each viewer's grant and rules weighed on `before`.
    pub before_audience: Option<&'a [SeenCustomer]>,
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

/// How the viewer of `seen` saw the record as it was `before` a change, by the same
/// grant and rules: a change of the profile moves a record into or out of a rule's
/// segment. Grants and states are the same before and after a change of the profile
/// (a change of state names those who saw it in `saw_before`).
fn saw(seen: &SeenCustomer, before: &Customer) -> Option<Access> {
    if seen.rules.is_empty() {
        return seen.access();
    }
    let then = SeenCustomer {
        customer: before.clone(),
        ..seen.clone()
    };
    then.access()
}

/// [`customer_changed`] for a caller that already holds the audience (a new record's:
/// its owner, and the partners its owner's rules reach).
///
/// A viewer that sees the record now but did not before the change (it entered a
/// rule's segment) hears of every field it sees, as of a new record; one that saw it
/// before and no longer does (it left the segment) gets a last, bare event.
pub fn tell(tx: &mut Tx, change: CustomerChange<'_>, audience: &[SeenCustomer]) {
    let mut told = HashSet::new();
    let mut last_state = None;
    let mut left = change.saw_before.clone();
    for seen in audience {
        last_state = Some(seen.customer.state);
        let before_access = match change.before_audience {
            Some(then) => then
                .iter()
                .find(|s| s.viewer_id == seen.viewer_id)
                .and_then(SeenCustomer::access),
            None => change.before.and_then(|b| saw(seen, b)),
        };
        let Some(access) = seen.access() else {
            if before_access.is_some() && seen.customer.state == RecordState::Active {
                left.push(seen.viewer_id.clone());
            }
            continue;
        };
        let c = &seen.customer;
        let after = access.view(c.kind, &c.profile);
        // Each field as the viewer saw it: one it sees only since this change (a rule
        // that now covers the record shows it) counts as changed, and so does one it
        // no longer sees (emptied in its view).
        let before = match (change.before, before_access) {
            (Some(b), Some(then)) => then.view(b.kind, &b.profile),
            _ => CustomerView {
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
    for org in &left {
        if !told.insert(org.clone()) {
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

/// Tells each organization of the customer's audience whose view of it an
/// interaction changed (it moved the record into or out of a rule's segment that
/// filters on interactions): those that see it now and did not, or see other fields
/// now, hear of the fields that changed in their view; those that no longer see it get
/// a last, bare event. `before` and `after` are the audience read before and after.
pub fn coverage_changed(
    tx: &mut Tx,
    customer: &Customer,
    before: &[SeenCustomer],
    after: &[SeenCustomer],
) {
    let change = CustomerChange {
        event_type: EventType::CustomerUpdated,
        id: &customer.id,
        before: Some(customer),
        merged_customers: vec![],
        saw_before: vec![],
        before_audience: Some(before),
    };
    tell(tx, change, after);
}
