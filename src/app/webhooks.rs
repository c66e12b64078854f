//! Webhook endpoints an organization registers, their secrets, test events, the log
//! of delivery attempts and redelivery. An organization reaches its own endpoints
//! only (not even the operator reaches another's); any other reads as NOT_FOUND.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use super::check_etag;
use crate::domain::caller::Caller;
use crate::domain::error::{Error, Result};
use crate::domain::event::{EventType, TEST_EVENT_TYPE};
use crate::domain::ids::EndpointId;
use crate::domain::names;
use crate::domain::webhook::WebhookSecret;
use crate::domain::{Organization, Slug, now};
use crate::feed::configuration::endpoint_event;
use crate::feed::draft::test_event;
use crate::outbound::webhooks::Sender;
use crate::store::{
    Attempt, AttemptQuery, AttemptRecord, ClaimedDelivery, Delivery, Endpoint, Page, Store, Tx,
};

/// Endpoints per organization.
const MAX_ENDPOINTS: usize = 50;

/// The organization `slug` (named `name` by the caller) if the caller speaks for it,
/// else NOT_FOUND.
pub async fn organization(
    store: &Store,
    caller: &Caller,
    slug: &Slug,
    name: &str,
) -> Result<Organization> {
    match store.organization(slug).await? {
        Some(org) if caller.organization().is_ok_and(|o| o.id == org.id) => Ok(org),
        _ => Err(Error::NotFound(format!("{name:?}"))),
    }
}

/// The endpoint `name` of the caller's organization.
pub async fn endpoint(
    store: &Store,
    caller: &Caller,
    name: &str,
) -> Result<(Organization, Endpoint)> {
    let (slug, id) = names::parse_webhook_endpoint(name).map_err(|v| v.under("name"))?;
    let org = organization(store, caller, &slug, name).await?;
    let endpoint = store
        .endpoint(&org.id, &id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("webhook endpoint {name:?}")))?;
    Ok((org, endpoint))
}

/// The endpoint `name`, which must be enabled for what the caller asks.
pub async fn enabled_endpoint(
    store: &Store,
    caller: &Caller,
    name: &str,
) -> Result<(Organization, Endpoint)> {
    let (org, endpoint) = endpoint(store, caller, name).await?;
    if !endpoint.enabled {
        return Err(Error::failed_precondition(
            "ENDPOINT_DISABLED",
            format!(
                "webhook endpoint {name:?} is disabled ({}); enable it first",
                endpoint.disabled_reason
            ),
        ));
    }
    Ok((org, endpoint))
}

/// Deliveries waiting to be sent to each of the endpoints `ids`.
pub async fn pending(store: &Store, ids: &[&str]) -> Result<HashMap<String, i64>> {
    store.pending_deliveries(ids).await
}

/// The settable fields of an endpoint a request sets, checked; `None` leaves a field
/// as it is (or at its default, on create).
#[derive(Default)]
pub struct EndpointFields {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub rate_limit_per_second: Option<i64>,
    pub ordered: Option<bool>,
}

/// A new endpoint of `org`, not yet stored, with a fresh secret: its id is chosen
/// once, so a retried create writes the same endpoint.
pub fn new_endpoint(org: &Organization, fields: EndpointFields) -> Endpoint {
    let at = now();
    Endpoint {
        id: Uuid::now_v7().to_string(),
        organization_id: org.id.clone(),
        url: fields.url.unwrap_or_default(),
        description: fields.description.unwrap_or_default(),
        event_types: fields.event_types.unwrap_or_default(),
        enabled: fields.enabled.unwrap_or(true),
        disabled_reason: if fields.enabled == Some(false) {
            "created disabled".into()
        } else {
            String::new()
        },
        secret: WebhookSecret::generate().expose(),
        previous_secret: String::new(),
        previous_secret_expire_time: None,
        ordered: fields.ordered.unwrap_or(false),
        rate_limit_per_second: fields.rate_limit_per_second.unwrap_or(0),
        consecutive_failures: 0,
        last_success_time: None,
        failing_since: None,
        create_time: at,
        update_time: at,
        revision: 1,
    }
}

/// Stores `endpoint` (from [`new_endpoint`]) unless its organization has as many as
/// it may.
pub async fn create(tx: &mut Tx, org: &Organization, endpoint: &Endpoint) -> Result<()> {
    if tx
        .count_endpoints_for_insert(&endpoint.organization_id)
        .await?
        >= MAX_ENDPOINTS
    {
        return Err(Error::failed_precondition(
            "TOO_MANY_ENDPOINTS",
            format!("an organization may have at most {MAX_ENDPOINTS} webhook endpoints"),
        ));
    }
    tx.insert_endpoint(endpoint).await?;
    endpoint_event(
        tx,
        EventType::WebhookEndpointCreated,
        &org.slug,
        endpoint,
        vec![],
    );
    Ok(())
}

/// The endpoints of `org` (as [`organization`] found it); a page of `size` after
/// `after`.
pub async fn list(
    store: &Store,
    org: &Organization,
    (after, size): (Option<&str>, usize),
) -> Result<Page<Endpoint>> {
    let found = store.endpoints(&org.id, after, size).await?;
    Ok(found)
}

/// Deletes endpoint `endpoint` of `org` (named `name`).
pub async fn delete(
    tx: &mut Tx,
    org: &Organization,
    endpoint: &Endpoint,
    name: &str,
) -> Result<()> {
    if !tx.delete_endpoint(&org.id, &endpoint.id).await? {
        return Err(Error::NotFound(format!("webhook endpoint {name:?}")));
    }
    endpoint_event(
        tx,
        EventType::WebhookEndpointDeleted,
        &org.slug,
        endpoint,
        vec![],
    );
    Ok(())
}

/// Sets `fields` on endpoint `id` of `org` (named `name`, read at `etag`). Enabling a
/// disabled endpoint starts it afresh: its failure record belongs to the old trouble.
pub async fn update(
    tx: &mut Tx,
    org: &Organization,
    (id, name, etag): (&EndpointId, &str, &str),
    fields: &EndpointFields,
) -> Result<Endpoint> {
    let mut e = tx
        .endpoint(&org.id, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("webhook endpoint {name:?}")))?;
    check_etag(etag, e.revision, name)?;
    let before = e.clone();
    if let Some(v) = &fields.url {
        e.url = v.clone();
    }
    if let Some(v) = &fields.description {
        e.description = v.clone();
    }
    if let Some(v) = &fields.event_types {
        e.event_types = v.clone();
    }
    if let Some(v) = fields.rate_limit_per_second {
        e.rate_limit_per_second = v;
    }
    if let Some(v) = fields.ordered {
        e.ordered = v;
    }
    match fields.enabled {
        Some(true) if !e.enabled => {
            e.enabled = true;
            e.disabled_reason.clear();
            e.consecutive_failures = 0;
            e.failing_since = None;
        }
        Some(false) if e.enabled => {
            e.enabled = false;
            e.disabled_reason = "disabled by an administrator".into();
        }
        _ => {}
    }
    e.update_time = now();
    if !tx.update_endpoint(&mut e).await? {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    let changed = changed_fields(&before, &e);
    endpoint_event(
        tx,
        EventType::WebhookEndpointUpdated,
        &org.slug,
        &e,
        changed,
    );
    Ok(e)
}

/// The fields of an endpoint an update changed, by their API names.
fn changed_fields(before: &Endpoint, after: &Endpoint) -> Vec<String> {
    [
        ("url", before.url != after.url),
        ("description", before.description != after.description),
        ("event_types", before.event_types != after.event_types),
        (
            "rate_limit_per_second",
            before.rate_limit_per_second != after.rate_limit_per_second,
        ),
        ("ordered", before.ordered != after.ordered),
        ("enabled", before.enabled != after.enabled),
        (
            "disabled_reason",
            before.disabled_reason != after.disabled_reason,
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(field, _)| field.to_owned())
    .collect()
}

/// Gives endpoint `endpoint` of `org` (named `name`) a new secret; the old one keeps
/// signing alongside for `overlap` (none if zero).
pub async fn rotate_secret(
    tx: &mut Tx,
    org: &Organization,
    (endpoint, name): (&Endpoint, &str),
    overlap: SignedDuration,
) -> Result<Endpoint> {
    let mut e = tx
        .endpoint(&org.id, &endpoint.id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("webhook endpoint {name:?}")))?;
    let at = now();
    if overlap.is_zero() {
        e.previous_secret.clear();
        e.previous_secret_expire_time = None;
    } else {
        e.previous_secret = std::mem::take(&mut e.secret);
        e.previous_secret_expire_time = Some(at + overlap);
    }
    e.secret = WebhookSecret::generate().expose();
    e.update_time = at;
    if !tx.update_endpoint(&mut e).await? {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    endpoint_event(
        tx,
        EventType::WebhookEndpointSecretRotated,
        &org.slug,
        &e,
        vec![],
    );
    Ok(e)
}

/// Sends a test event to the enabled endpoint `name` now, outside its queue, and
/// returns the attempt as it was stored.
pub async fn send_test(
    store: &Store,
    sender: &Sender,
    caller: &Caller,
    name: &str,
) -> Result<(Organization, Attempt)> {
    let (org, endpoint) = enabled_endpoint(store, caller, name).await?;
    let id = Uuid::now_v7().to_string();
    let body = test_event(&id, (&org.slug, &caller.key_id), &endpoint, name);
    let mut tx = store.begin().await?;
    let delivery = tx
        .insert_test_delivery(
            &endpoint,
            &id,
            TEST_EVENT_TYPE,
            &body,
            now() + sender.lease(),
        )
        .await?;
    tx.commit().await?;
    let record = sender.deliver(&delivery).await?;
    Ok((org, record_to_attempt(&delivery, &record)))
}

/// An attempt just made, as it was stored.
fn record_to_attempt(d: &ClaimedDelivery, a: &AttemptRecord) -> Attempt {
    Attempt {
        id: a.id.clone(),
        endpoint_id: d.endpoint_id.clone(),
        event_id: d.event_id.clone(),
        event_type: d.event_type.clone(),
        attempt_time: a.time.as_microsecond(),
        status: i64::from(a.status),
        latency_micros: a.latency_micros,
        response_excerpt: a.response_excerpt.clone(),
        error: a.error.clone(),
        outcome: a.outcome().to_owned(),
    }
}

/// Which attempts to list: those of one endpoint (or all of `slug`'s, `endpoint_id`
/// `None`), optionally of one event.
pub struct AttemptsOf<'a> {
    pub slug: &'a Slug,
    pub endpoint_id: Option<&'a EndpointId>,
    pub event_id: Option<&'a str>,
    /// The parent's resource name as the caller wrote it.
    pub parent: &'a str,
}

/// The organization whose attempts `of` asks for; NOT_FOUND if the caller may not
/// see it or the endpoint does not exist.
pub async fn attempts_owner(
    store: &Store,
    caller: &Caller,
    of: &AttemptsOf<'_>,
) -> Result<Organization> {
    let org = organization(store, caller, of.slug, of.parent).await?;
    if let Some(id) = of.endpoint_id
        && store.endpoint(&org.id, id).await?.is_none()
    {
        return Err(Error::NotFound(format!("webhook endpoint {:?}", of.parent)));
    }
    Ok(org)
}

/// Attempts of [`attempts_owner`]'s `org`, newest first; a page of `size` before
/// `before`.
pub async fn attempts(
    store: &Store,
    org: &Organization,
    of: &AttemptsOf<'_>,
    (before, size): (Option<&str>, usize),
) -> Result<Page<Attempt>> {
    let found = store
        .attempts(&AttemptQuery {
            organization_id: &org.id,
            endpoint_id: of.endpoint_id.map(EndpointId::as_str),
            event_id: of.event_id,
            before,
            limit: size,
        })
        .await?;
    Ok(found)
}

/// Queues event `event_id` of `org`'s feed again for `endpoint`.
pub async fn redeliver(
    tx: &mut Tx,
    org: &Organization,
    endpoint: &Endpoint,
    event_id: &str,
) -> Result<Delivery> {
    tx.redeliver_event(endpoint, event_id)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!(
                "event {event_id:?} in the feed of {:?} (it may have been pruned)",
                names::organization(&org.slug)
            ))
        })
}

/// Queues again every delivery to `endpoint` that failed for good since `since`;
/// how many.
pub async fn redeliver_failed(tx: &mut Tx, endpoint: &Endpoint, since: Timestamp) -> Result<u64> {
    tx.redeliver_failed(&endpoint.id, since).await
}
