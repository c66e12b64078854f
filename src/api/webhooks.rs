//! `liaison.v1.WebhookService`: an organization's webhook endpoints.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use uuid::Uuid;

use jiff::{SignedDuration, Timestamp};

use super::convert::{check_etag, parse_timestamp, update_paths};
use super::write::idempotent;
use super::{Caller, Hub};
use crate::config::WebhooksConfig;
use crate::domain::error::{Error, Result, Violations};
use crate::domain::event::{TEST_EVENT_TYPE, parse_type_filter};
use crate::domain::names;
use crate::domain::webhook::{WebhookSecret, parse_url, refused_literal_host};
use crate::domain::{Organization, Scope, Slug, now};
use crate::feed::render::{endpoint_to_pb, timestamp};
use crate::outbound::webhooks::Sender;
use crate::pb::{self, webhook_service_server::WebhookService};
use crate::store::{Attempt, AttemptQuery, AttemptRecord, Delivery, Endpoint};

/// Longest endpoint description.
const MAX_DESCRIPTION_CHARS: usize = 500;
/// Endpoints per organization.
const MAX_ENDPOINTS: usize = 50;
/// Highest per-endpoint rate limit, requests per second.
const MAX_RATE_LIMIT: i32 = 10_000;
/// Longest overlap of a rotated-out secret.
const MAX_OVERLAP: SignedDuration = SignedDuration::from_hours(7 * 24);
/// What UpdateWebhookEndpoint may change.
const UPDATABLE: &[&str] = &[
    "url",
    "description",
    "event_types",
    "enabled",
    "rate_limit_per_second",
    "ordered",
];

#[derive(Clone)]
pub struct WebhookApi {
    hub: Hub,
    config: Arc<WebhooksConfig>,
    sender: Arc<Sender>,
}

/// The caller-settable fields of an endpoint a request sets, checked.
#[derive(Default)]
struct EndpointFields {
    url: Option<String>,
    description: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
    rate_limit_per_second: Option<i64>,
    ordered: Option<bool>,
}

impl EndpointFields {
    /// Checks the fields named in `paths`; violations name `webhook_endpoint.<field>`.
    fn parse(input: &pb::WebhookEndpoint, paths: &[&str], config: &WebhooksConfig) -> Result<Self> {
        let mut v = Violations::new();
        let mut out = EndpointFields::default();
        for path in paths {
            let field = format!("webhook_endpoint.{path}");
            match *path {
                "url" => {
                    let url = v.check(&field, parse_url(&input.url, config.allow_http));
                    if let Some(why) = url
                        .as_ref()
                        .and_then(|u| refused_literal_host(u, config.allow_private_networks))
                    {
                        v.push(
                            crate::domain::error::FieldViolation::new(&field, why)
                                .because("UNSAFE_DESTINATION"),
                        );
                    }
                    out.url = url.map(|u| u.to_string());
                }
                "description" => {
                    out.description = v.check(
                        &field,
                        crate::domain::text::paragraph(&input.description, MAX_DESCRIPTION_CHARS),
                    );
                }
                "event_types" => match parse_type_filter(&input.event_types) {
                    Ok(t) => out.event_types = Some(t),
                    Err(list) => {
                        for x in list {
                            v.add(format!("{field}{}", x.field), x.description);
                        }
                    }
                },
                "enabled" => out.enabled = Some(input.enabled.unwrap_or(true)),
                "rate_limit_per_second" => {
                    if !(0..=MAX_RATE_LIMIT).contains(&input.rate_limit_per_second) {
                        v.add(
                            &field,
                            format!("must be 0 (no limit) to {MAX_RATE_LIMIT} requests per second"),
                        );
                    }
                    out.rate_limit_per_second = Some(i64::from(input.rate_limit_per_second));
                }
                _ => out.ordered = Some(input.ordered),
            }
        }
        v.finish()?;
        Ok(out)
    }
}

/// `organizations/{org}/webhookEndpoints/{endpoint}`, or `…/webhookEndpoints/-` for
/// all of them (`None`).
fn parse_attempts_parent(name: &str) -> Result<(Slug, Option<String>)> {
    if let Some(org) = name.strip_suffix("/webhookEndpoints/-") {
        let slug = names::parse_organization(org).map_err(|v| v.under("parent"))?;
        return Ok((slug, None));
    }
    let (slug, id) = names::parse_webhook_endpoint(name).map_err(|v| v.under("parent"))?;
    Ok((slug, Some(id)))
}

/// A UUID the caller sent as an event id, in canonical form.
fn parse_event_id(raw: &str, field: &str) -> Result<String> {
    Uuid::parse_str(raw)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Error::invalid(field, "must be an event id (a UUID)"))
}

fn attempt_to_pb(org: &Slug, a: &Attempt) -> pb::WebhookAttempt {
    use pb::webhook_attempt::Outcome;
    pb::WebhookAttempt {
        name: format!(
            "{}/attempts/{}",
            names::webhook_endpoint(org, &a.endpoint_id),
            a.id
        ),
        event_id: a.event_id.clone(),
        event_type: a.event_type.clone(),
        attempt_time: Timestamp::from_microsecond(a.attempt_time)
            .ok()
            .and_then(timestamp),
        http_status: a.status as i32,
        latency: Some(prost_types::Duration {
            seconds: a.latency_micros / 1_000_000,
            nanos: (a.latency_micros % 1_000_000) as i32 * 1000,
        }),
        response_body_excerpt: a.response_excerpt.clone(),
        error: a.error.clone(),
        outcome: match a.outcome.as_str() {
            "succeeded" => Outcome::Succeeded,
            "retrying" => Outcome::Retrying,
            _ => Outcome::Failed,
        } as i32,
    }
}

fn delivery_to_pb(org: &Slug, d: &Delivery) -> pb::WebhookDelivery {
    use pb::webhook_delivery::State;
    pb::WebhookDelivery {
        endpoint: names::webhook_endpoint(org, &d.endpoint_id),
        event_id: d.event_id.clone(),
        event_type: d.event_type.clone(),
        state: match d.state.as_str() {
            "pending" => State::Pending,
            "succeeded" => State::Succeeded,
            _ => State::Failed,
        } as i32,
        attempts: d.attempts,
        next_attempt_time: (d.state == "pending")
            .then(|| Timestamp::from_microsecond(d.next_attempt_time).ok())
            .flatten()
            .and_then(timestamp),
    }
}

fn secret_to_pb(e: &Endpoint) -> pb::WebhookEndpointSecret {
    let active = e.signing_secrets(now()).len() > 1;
    pb::WebhookEndpointSecret {
        secret: e.secret.clone(),
        previous_secret: if active {
            e.previous_secret.clone()
        } else {
            String::new()
        },
        previous_secret_expire_time: if active {
            e.previous_secret_expire_time.and_then(timestamp)
        } else {
            None
        },
    }
}

impl WebhookApi {
    pub fn new(hub: Hub, config: WebhooksConfig, sender: Arc<Sender>) -> Self {
        Self {
            hub,
            config: Arc::new(config),
            sender,
        }
    }

    /// The endpoint as the API shows it, with its pending deliveries counted.
    async fn present(&self, org: &Slug, e: &Endpoint) -> Result<pb::WebhookEndpoint> {
        let mut pb = endpoint_to_pb(org, e);
        pb.pending_deliveries = self.pending(&e.id).await?;
        Ok(pb)
    }

    /// Deliveries waiting to be sent to the endpoint `id`.
    async fn pending(&self, id: &str) -> Result<i64> {
        let counts = self.hub.store.pending_deliveries(&[id]).await?;
        Ok(counts.get(id).copied().unwrap_or(0))
    }

    /// The endpoint `name`, which must be enabled for what the caller asks.
    async fn enabled_endpoint(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(Organization, Endpoint)> {
        let (org, endpoint) = self.endpoint(caller, name).await?;
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

    /// The organization `slug` if the caller speaks for it, else NOT_FOUND.
    async fn organization(&self, caller: &Caller, slug: &Slug, name: &str) -> Result<Organization> {
        match self.hub.store.organization(slug).await? {
            Some(org) if caller.organization().is_ok_and(|o| o.id == org.id) => Ok(org),
            _ => Err(Error::NotFound(format!("{name:?}"))),
        }
    }

    async fn endpoint(&self, caller: &Caller, name: &str) -> Result<(Organization, Endpoint)> {
        let (slug, id) = names::parse_webhook_endpoint(name).map_err(|v| v.under("name"))?;
        let org = self.organization(caller, &slug, name).await?;
        let endpoint = self
            .hub
            .store
            .endpoint(&org.id, &id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("webhook endpoint {name:?}")))?;
        Ok((org, endpoint))
    }
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let input = r.webhook_endpoint.clone().unwrap_or_default();
        let mut v = Violations::new();
        let slug = v.check("parent", names::parse_organization(&r.parent));
        let fields = match EndpointFields::parse(&input, UPDATABLE, &self.config) {
            Ok(f) => Some(f),
            Err(Error::InvalidArgument(list)) => {
                // As they are: each keeps its own reason (INVALID_TEXT, …).
                for x in list {
                    v.push(x);
                }
                None
            }
            Err(e) => return Err(e.into()),
        };
        let (Some(slug), Some(fields)) = (slug, fields) else {
            return Err(v.into_error().into());
        };
        let org = self.organization(&caller, &slug, &r.parent).await?;
        let at = now();
        let endpoint = Endpoint {
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
            ordered: input.ordered,
            rate_limit_per_second: fields.rate_limit_per_second.unwrap_or(0),
            consecutive_failures: 0,
            last_success_time: None,
            failing_since: None,
            create_time: at,
            update_time: at,
            revision: 1,
        };
        let response = idempotent(
            &self.hub,
            &caller,
            "CreateWebhookEndpoint",
            &r.request_id,
            &r,
            async |tx| {
                if tx.count_endpoints_for_insert(&org.id).await? >= MAX_ENDPOINTS {
                    return Err(Error::failed_precondition(
                        "TOO_MANY_ENDPOINTS",
                        format!(
                            "an organization may have at most {MAX_ENDPOINTS} webhook endpoints"
                        ),
                    ));
                }
                tx.insert_endpoint(&endpoint).await?;
                Ok(endpoint_to_pb(&org.slug, &endpoint))
            },
        )
        .await?;
        tracing::info!(endpoint = %response.name, "webhook endpoint created");
        Ok(Response::new(response))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<pb::GetWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let (org, endpoint) = self.endpoint(&caller, &request.get_ref().name).await?;
        Ok(Response::new(self.present(&org.slug, &endpoint).await?))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let r = request.get_ref();
        let slug = names::parse_organization(&r.parent).map_err(|v| v.under("parent"))?;
        let org = self.organization(&caller, &slug, &r.parent).await?;
        let page = self
            .hub
            .pages
            .open(
                &caller,
                r.page_size,
                &r.page_token,
                &format!("endpoints:{}", org.id),
            )
            .await?;
        let found = self
            .hub
            .store
            .endpoints(&org.id, page.after.as_deref(), page.size)
            .await?;
        let ids: Vec<&str> = found.items.iter().map(|e| e.id.as_str()).collect();
        let pending = self.hub.store.pending_deliveries(&ids).await?;
        Ok(Response::new(pb::ListWebhookEndpointsResponse {
            webhook_endpoints: found
                .items
                .iter()
                .map(|e| {
                    let mut pb = endpoint_to_pb(&org.slug, e);
                    pb.pending_deliveries = pending.get(&e.id).copied().unwrap_or(0);
                    pb
                })
                .collect(),
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<pb::DeleteWebhookEndpointResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let (org, endpoint) = self.endpoint(&caller, &r.name).await?;
        let response = idempotent(
            &self.hub,
            &caller,
            "DeleteWebhookEndpoint",
            &r.request_id,
            &r,
            async |tx| {
                if !tx.delete_endpoint(&org.id, &endpoint.id).await? {
                    return Err(Error::NotFound(format!("webhook endpoint {:?}", r.name)));
                }
                Ok(pb::DeleteWebhookEndpointResponse {})
            },
        )
        .await?;
        tracing::info!(endpoint = %r.name, "webhook endpoint deleted");
        Ok(Response::new(response))
    }

    async fn get_webhook_endpoint_secret(
        &self,
        request: Request<pb::GetWebhookEndpointSecretRequest>,
    ) -> Result<Response<pb::WebhookEndpointSecret>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let (_, endpoint) = self.endpoint(&caller, &request.get_ref().name).await?;
        Ok(Response::new(secret_to_pb(&endpoint)))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let input = r.webhook_endpoint.clone().unwrap_or_default();
        let name = input.name.clone();
        let (slug, id) =
            names::parse_webhook_endpoint(&name).map_err(|v| v.under("webhook_endpoint.name"))?;
        let populated: Vec<&str> = [
            ("url", !input.url.is_empty()),
            ("description", !input.description.is_empty()),
            ("event_types", !input.event_types.is_empty()),
            ("enabled", input.enabled.is_some()),
            ("rate_limit_per_second", input.rate_limit_per_second != 0),
            ("ordered", input.ordered),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect();
        let paths = update_paths(r.update_mask.as_ref(), UPDATABLE, &populated)?;
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let fields = EndpointFields::parse(&input, &paths, &self.config)?;
        let org = self.organization(&caller, &slug, &name).await?;
        let response = idempotent(
            &self.hub,
            &caller,
            "UpdateWebhookEndpoint",
            &r.request_id,
            &r,
            async |tx| {
                let mut e = tx
                    .endpoint(&org.id, &id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("webhook endpoint {name:?}")))?;
                check_etag(&input.etag, e.revision, &name)?;
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
                        // A fresh start: the failure record belongs to the old trouble.
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
                    return Err(Error::StaleEtag(name.clone()));
                }
                Ok(endpoint_to_pb(&org.slug, &e))
            },
        )
        .await?;
        tracing::info!(endpoint = %response.name, fields = ?paths, "webhook endpoint updated");
        let mut response = response;
        response.pending_deliveries = self.pending(&id).await?;
        Ok(Response::new(response))
    }

    async fn rotate_webhook_endpoint_secret(
        &self,
        request: Request<pb::RotateWebhookEndpointSecretRequest>,
    ) -> Result<Response<pb::WebhookEndpointSecret>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let overlap = match &r.overlap {
            None => SignedDuration::from_secs(self.config.secret_overlap_secs as i64),
            Some(d) => {
                let overlap = SignedDuration::new(d.seconds, d.nanos);
                if overlap.is_negative() || overlap > MAX_OVERLAP {
                    return Err(Error::invalid("overlap", "must be between 0 and 7 days").into());
                }
                overlap
            }
        };
        let (org, endpoint) = self.endpoint(&caller, &r.name).await?;
        let response = idempotent(
            &self.hub,
            &caller,
            "RotateWebhookEndpointSecret",
            &r.request_id,
            &r,
            async |tx| {
                let mut e = tx
                    .endpoint(&org.id, &endpoint.id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("webhook endpoint {:?}", r.name)))?;
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
                    return Err(Error::StaleEtag(r.name.clone()));
                }
                Ok(secret_to_pb(&e))
            },
        )
        .await?;
        tracing::info!(endpoint = %r.name, overlap_secs = overlap.as_secs(), "webhook secret rotated");
        Ok(Response::new(response))
    }

    async fn send_test_webhook_event(
        &self,
        request: Request<pb::SendTestWebhookEventRequest>,
    ) -> Result<Response<pb::WebhookAttempt>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let name = request.into_inner().name;
        let (org, endpoint) = self.enabled_endpoint(&caller, &name).await?;
        let id = Uuid::now_v7().to_string();
        let event = pb::Event {
            id: id.clone(),
            sequence: 0,
            r#type: TEST_EVENT_TYPE.into(),
            create_time: timestamp(now()),
            actor: Some(pb::Actor {
                organization: names::organization(&org.slug),
                api_key: names::api_key(Some(&org.slug), &caller.key_id),
                member: String::new(),
            }),
            request_id: String::new(),
            resource: name.clone(),
            changed_fields: vec![],
            merged_customers: vec![],
            payload: Some(pb::event::Payload::WebhookEndpoint(endpoint_to_pb(
                &org.slug, &endpoint,
            ))),
        };
        let mut tx = self.hub.store.begin().await?;
        let delivery = tx
            .insert_test_delivery(
                &endpoint,
                &id,
                TEST_EVENT_TYPE,
                &prost::Message::encode_to_vec(&event),
                now() + self.sender.lease(),
            )
            .await?;
        tx.commit().await?;
        let record = self.sender.deliver(&delivery).await?;
        Ok(Response::new(attempt_to_pb(
            &org.slug,
            &record_to_attempt(&delivery, &record),
        )))
    }

    async fn list_webhook_attempts(
        &self,
        request: Request<pb::ListWebhookAttemptsRequest>,
    ) -> Result<Response<pb::ListWebhookAttemptsResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let r = request.get_ref();
        let (slug, endpoint_id) = parse_attempts_parent(&r.parent)?;
        let event_id = match r.event_id.as_str() {
            "" => None,
            raw => Some(parse_event_id(raw, "event_id")?),
        };
        let org = self.organization(&caller, &slug, &r.parent).await?;
        if let Some(id) = &endpoint_id
            && self.hub.store.endpoint(&org.id, id).await?.is_none()
        {
            return Err(Error::NotFound(format!("webhook endpoint {:?}", r.parent)).into());
        }
        let page = self
            .hub
            .pages
            .open(
                &caller,
                r.page_size,
                &r.page_token,
                &format!("attempts:{}:{}", r.parent, r.event_id),
            )
            .await?;
        let found = self
            .hub
            .store
            .attempts(&AttemptQuery {
                organization_id: &org.id,
                endpoint_id: endpoint_id.as_deref(),
                event_id: event_id.as_deref(),
                before: page.after.as_deref(),
                limit: page.size,
            })
            .await?;
        Ok(Response::new(pb::ListWebhookAttemptsResponse {
            webhook_attempts: found
                .items
                .iter()
                .map(|a| attempt_to_pb(&org.slug, a))
                .collect(),
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn redeliver_webhook_event(
        &self,
        request: Request<pb::RedeliverWebhookEventRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let r = request.into_inner();
        let event_id = parse_event_id(&r.event_id, "event_id")?;
        let (org, endpoint) = self.enabled_endpoint(&caller, &r.name).await?;
        let response = idempotent(
            &self.hub,
            &caller,
            "RedeliverWebhookEvent",
            &r.request_id,
            &r,
            async |tx| {
                let delivery =
                    tx.redeliver_event(&endpoint, &event_id)
                        .await?
                        .ok_or_else(|| {
                            Error::NotFound(format!(
                                "event {event_id:?} in the feed of {:?} (it may have been pruned)",
                                names::organization(&org.slug)
                            ))
                        })?;
                Ok(delivery_to_pb(&org.slug, &delivery))
            },
        )
        .await?;
        tracing::info!(endpoint = %r.name, event = %event_id, "webhook event queued again");
        Ok(Response::new(response))
    }

    async fn redeliver_failed_webhook_deliveries(
        &self,
        request: Request<pb::RedeliverFailedWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::RedeliverFailedWebhookDeliveriesResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let r = request.into_inner();
        let since = match &r.since {
            None => return Err(crate::domain::error::FieldViolation::required("since").into()),
            Some(t) => parse_timestamp(t).map_err(|v| v.under("since"))?,
        };
        let (_, endpoint) = self.enabled_endpoint(&caller, &r.name).await?;
        let response = idempotent(
            &self.hub,
            &caller,
            "RedeliverFailedWebhookDeliveries",
            &r.request_id,
            &r,
            async |tx| {
                Ok(pb::RedeliverFailedWebhookDeliveriesResponse {
                    redelivered: tx.redeliver_failed(&endpoint.id, since).await? as i64,
                })
            },
        )
        .await?;
        tracing::info!(endpoint = %r.name, redelivered = response.redelivered, "failed webhook deliveries queued again");
        Ok(Response::new(response))
    }
}

/// An attempt just made, as it was stored.
fn record_to_attempt(d: &crate::store::ClaimedDelivery, a: &AttemptRecord) -> Attempt {
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
