//! Partnerships: one organization proposes, the other accepts or declines; either
//! may suspend, resume or end it. Customers are shared only through an active one.

use uuid::Uuid;

use super::check_etag;
use crate::domain::calendar::Zone;
use crate::domain::caller::Caller;
use crate::domain::error::{Error, Result};
use crate::domain::event::EventType;
use crate::domain::ids::PartnershipId;
use crate::domain::names;
use crate::domain::{
    OrgRef, Partnership, PartnershipAction, PartnershipState, Reason, Relationship, Slug, now,
};
use crate::feed::partnerships::partnership_event;
use crate::store::{Page, PartnershipFilter, Store, Tx};

/// A proposal from the caller's organization to `recipient`, not yet stored: its id
/// is chosen once, so a retried proposal writes the same partnership. The recipient
/// must exist and be active.
pub async fn proposal(
    store: &Store,
    caller: &Caller,
    recipient: &Slug,
    relationship: Relationship,
    message: Reason,
) -> Result<Partnership> {
    let proposer = caller.organization()?.clone();
    let recipient_name = names::organization(recipient);
    let recipient = match store.organization(recipient).await? {
        Some(org) if org.is_active() => OrgRef {
            id: org.id,
            slug: org.slug,
        },
        Some(_) => {
            return Err(Error::failed_precondition(
                "ORGANIZATION_SUSPENDED",
                format!("{recipient_name} is suspended"),
            ));
        }
        None => return Err(Error::NotFound(format!("organization {recipient_name:?}"))),
    };
    let now = now();
    Ok(Partnership {
        id: Uuid::now_v7().to_string(),
        proposer: proposer.clone(),
        recipient,
        relationship,
        message,
        state: PartnershipState::Proposed,
        state_changed_by: proposer,
        reporting_time_zone: Zone::default(),
        create_time: now,
        update_time: now,
        revision: 1,
    })
}

/// Stores a [`proposal`] and tells both parties.
pub async fn propose(tx: &mut Tx, partnership: &Partnership) -> Result<()> {
    tx.insert_partnership(partnership).await?;
    partnership_event(tx, EventType::PartnershipProposed, partnership);
    Ok(())
}

/// Partnership `id` (named `name`), if the caller's organization is a party to it.
pub async fn get(
    store: &Store,
    caller: &Caller,
    id: &PartnershipId,
    name: &str,
) -> Result<Partnership> {
    let org = caller.organization()?;
    store
        .partnership(&org.id, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("partnership {name:?}")))
}

/// The caller's partnerships that `filter` selects; a page of `size` after `after`.
pub async fn list(
    store: &Store,
    caller: &Caller,
    filter: PartnershipFilter,
    (after, size): (Option<&str>, usize),
) -> Result<Page<Partnership>> {
    let org = caller.organization()?;
    let found = store.partnerships(&org.id, filter, after, size).await?;
    Ok(found)
}

/// Partnership `id` (named `name`) as `actor`, a party to it, read at `etag` (empty:
/// any revision) for a change; NOT_FOUND if `actor` is no party.
async fn to_change(
    tx: &mut Tx,
    actor: &OrgRef,
    (id, name, etag): (&PartnershipId, &str, &str),
) -> Result<Partnership> {
    let p = tx
        .partnership(&actor.id, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("partnership {name:?}")))?;
    check_etag(etag, p.revision, name)?;
    Ok(p)
}

/// Applies `action` by the caller's organization to partnership `id` (named `name`,
/// read at `etag`) for `reason`, and tells both parties.
pub async fn transition(
    tx: &mut Tx,
    caller: &Caller,
    (id, name, etag): (&PartnershipId, &str, &str),
    action: PartnershipAction,
    reason: Reason,
) -> Result<Partnership> {
    let actor = caller.organization()?;
    let mut p = to_change(tx, actor, (id, name, etag)).await?;
    p.apply(actor, action, reason, now())?;
    if !tx.update_partnership_state(&mut p).await? {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    let event_type = match action {
        PartnershipAction::Accept => EventType::PartnershipAccepted,
        PartnershipAction::Decline => EventType::PartnershipDeclined,
        PartnershipAction::Suspend => EventType::PartnershipSuspended,
        PartnershipAction::Resume => EventType::PartnershipResumed,
        PartnershipAction::End => EventType::PartnershipEnded,
    };
    partnership_event(tx, event_type, &p);
    if action == PartnershipAction::End {
        let (a, b) = (&p.proposer.id, &p.recipient.id);
        super::mapping::end_with_partnership(tx, actor, (a, b)).await?;
    }
    Ok(p)
}

/// Sets the reporting time zone of partnership `id` (named `name`, read at `etag`,
/// which may be empty) by the caller's organization, and tells both parties.
pub async fn update(
    tx: &mut Tx,
    caller: &Caller,
    (id, name, etag): (&PartnershipId, &str, &str),
    zone: Zone,
) -> Result<Partnership> {
    let actor = caller.organization()?;
    let mut p = to_change(tx, actor, (id, name, etag)).await?;
    if p.reporting_time_zone == zone {
        return Ok(p);
    }
    p.reporting_time_zone = zone;
    p.update_time = now();
    if !tx.update_partnership_settings(&mut p).await? {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    partnership_event(tx, EventType::PartnershipUpdated, &p);
    Ok(p)
}
