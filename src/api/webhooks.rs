//! `liaison.v1.WebhookService`: an organization's webhook endpoints.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{parse_timestamp, update_paths};
use super::write::idempotent;
use super::{Hub, caller_of};
use crate::app::webhooks::{self as app, AttemptsOf, EndpointFields};
use crate::config::WebhooksConfig;
use crate::domain::Scope;
use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::event::parse_type_filter;
use crate::domain::ids::EndpointId;
use crate::domain::names;
use crate::domain::webhook::{parse_url, refused_literal_host};
use crate::domain::{Slug, now};
use crate::feed::render::{endpoint_to_pb, timestamp};
use crate::outbound::webhooks::Sender;
use crate::pb::{self, webhook_service_server::WebhookService};
use crate::store::{Attempt, Delivery, Endpoint, Page};

/// Longest endpoint description.
const MAX_DESCRIPTION_CHARS: usize = 500;
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

/// The endpoint fields named in `paths`, checked; violations name
/// `webhook_endpoint.<field>`.
fn endpoint_fields(
    input: &pb::WebhookEndpoint,
    paths: &[&str],
    config: &WebhooksConfig,
) -> Result<EndpointFields> {
    {
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
                        v.push(FieldViolation::new(&field, why).because("UNSAFE_DESTINATION"));
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
fn parse_attempts_parent(name: &str) -> Result<(Slug, Option<EndpointId>)> {
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

    /// The endpoints as the API shows them, with their pending deliveries counted.
    async fn present(
        &self,
        org: &Slug,
        endpoints: &[Endpoint],
    ) -> Result<Vec<pb::WebhookEndpoint>> {
        let ids: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        let pending = app::pending(&self.hub.store, &ids).await?;
        Ok(endpoints
            .iter()
            .map(|e| {
                let mut pb = endpoint_to_pb(org, e);
                pb.pending_deliveries = pending.get(&e.id).copied().unwrap_or(0);
                pb
            })
            .collect())
    }

    /// One endpoint as the API shows it.
    async fn present_one(&self, org: &Slug, e: &Endpoint) -> Result<pb::WebhookEndpoint> {
        let mut shown = self.present(org, std::slice::from_ref(e)).await?;
        Ok(shown.remove(0))
    }
}

/// The endpoint fields an update request populates, for an update without a mask.
fn endpoint_populated(input: &pb::WebhookEndpoint) -> Vec<&'static str> {
    [
        ("url", !input.url.is_empty()),
        ("description", !input.description.is_empty()),
        ("event_types", !input.event_types.is_empty()),
        ("enabled", input.enabled.is_some()),
        ("rate_limit_per_second", input.rate_limit_per_second != 0),
        ("ordered", input.ordered),
    ]
    .into_iter()
    .filter_map(|(f, set)| set.then_some(f))
    .collect()
}

/// The overlap a rotation asks for: the configured one if unset, at most 7 days.
fn overlap_from_pb(
    overlap: Option<&prost_types::Duration>,
    config: &WebhooksConfig,
) -> Result<SignedDuration> {
    match overlap {
        None => Ok(SignedDuration::from_secs(config.secret_overlap_secs as i64)),
        Some(d) => {
            let overlap = SignedDuration::new(d.seconds, d.nanos);
            if overlap.is_negative() || overlap > MAX_OVERLAP {
                return Err(Error::invalid("overlap", "must be between 0 and 7 days"));
            }
            Ok(overlap)
        }
    }
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let input = r.webhook_endpoint.clone().unwrap_or_default();
        let mut v = Violations::new();
        let slug = v.check("parent", names::parse_organization(&r.parent));
        let fields = match endpoint_fields(&input, UPDATABLE, &self.config) {
            Ok(f) => Some(f),
            Err(Error::InvalidArgument(list)) => {
                // As they are: each keeps its own reason (INVALID_TEXT, …).
                list.into_iter().for_each(|x| v.push(x));
                None
            }
            Err(e) => return Err(e.into()),
        };
        let (Some(slug), Some(fields)) = (slug, fields) else {
            return Err(v.into_error().into());
        };
        let org = app::organization(&self.hub.store, &caller, &slug, &r.parent).await?;
        let endpoint = app::new_endpoint(&org, fields);
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            app::create(tx, &org, &endpoint).await?;
            Ok(endpoint_to_pb(&org.slug, &endpoint))
        })
        .await?;
        tracing::info!(endpoint = %response.name, "webhook endpoint created");
        Ok(Response::new(response))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<pb::GetWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let (org, endpoint) =
            app::endpoint(&self.hub.store, &caller, &request.get_ref().name).await?;
        Ok(Response::new(self.present_one(&org.slug, &endpoint).await?))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let r = request.get_ref();
        let slug = names::parse_organization(&r.parent).map_err(|v| v.under("parent"))?;
        let org = app::organization(&self.hub.store, &caller, &slug, &r.parent).await?;
        let query = format!("endpoints:{}", org.id);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page {
            items: found,
            next_after: next,
        } = app::list(&self.hub.store, &org, at).await?;
        Ok(Response::new(pb::ListWebhookEndpointsResponse {
            webhook_endpoints: self.present(&org.slug, &found).await?,
            next_page_token: page.next_token(next),
        }))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<pb::DeleteWebhookEndpointResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let (org, endpoint) = app::endpoint(&self.hub.store, &caller, &r.name).await?;
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            app::delete(tx, &org, &endpoint, &r.name).await?;
            Ok(pb::DeleteWebhookEndpointResponse {})
        })
        .await?;
        tracing::info!(endpoint = %r.name, "webhook endpoint deleted");
        Ok(Response::new(response))
    }

    async fn get_webhook_endpoint_secret(
        &self,
        request: Request<pb::GetWebhookEndpointSecretRequest>,
    ) -> Result<Response<pb::WebhookEndpointSecret>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let (_, endpoint) =
            app::endpoint(&self.hub.store, &caller, &request.get_ref().name).await?;
        Ok(Response::new(secret_to_pb(&endpoint)))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let input = r.webhook_endpoint.clone().unwrap_or_default();
        let name = &input.name;
        let (slug, id) =
            names::parse_webhook_endpoint(name).map_err(|v| v.under("webhook_endpoint.name"))?;
        let paths = update_paths(
            r.update_mask.as_ref(),
            UPDATABLE,
            &endpoint_populated(&input),
        )?;
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let fields = endpoint_fields(&input, &paths, &self.config)?;
        let org = app::organization(&self.hub.store, &caller, &slug, name).await?;
        let target = (&id, name.as_str(), input.etag.as_str());
        let e = idempotent(&self.hub, &caller, &r, async |tx| {
            Ok(endpoint_to_pb(
                &org.slug,
                &app::update(tx, &org, target, &fields).await?,
            ))
        })
        .await?;
        tracing::info!(endpoint = %e.name, fields = ?paths, "webhook endpoint updated");
        let pending = app::pending(&self.hub.store, &[&id]).await?;
        let pending_deliveries = pending.get(id.as_str()).copied().unwrap_or(0);
        Ok(Response::new(pb::WebhookEndpoint {
            pending_deliveries,
            ..e
        }))
    }

    async fn rotate_webhook_endpoint_secret(
        &self,
        request: Request<pb::RotateWebhookEndpointSecretRequest>,
    ) -> Result<Response<pb::WebhookEndpointSecret>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let overlap = overlap_from_pb(r.overlap.as_ref(), &self.config)?;
        let (org, endpoint) = app::endpoint(&self.hub.store, &caller, &r.name).await?;
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            let e = app::rotate_secret(tx, &org, (&endpoint, &r.name), overlap).await?;
            Ok(secret_to_pb(&e))
        })
        .await?;
        tracing::info!(endpoint = %r.name, overlap_secs = overlap.as_secs(), "webhook secret rotated");
        Ok(Response::new(response))
    }

    async fn send_test_webhook_event(
        &self,
        request: Request<pb::SendTestWebhookEventRequest>,
    ) -> Result<Response<pb::WebhookAttempt>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let name = request.into_inner().name;
        let (org, attempt) = app::send_test(&self.hub.store, &self.sender, &caller, &name).await?;
        Ok(Response::new(attempt_to_pb(&org.slug, &attempt)))
    }

    async fn list_webhook_attempts(
        &self,
        request: Request<pb::ListWebhookAttemptsRequest>,
    ) -> Result<Response<pb::ListWebhookAttemptsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let r = request.get_ref();
        let (slug, endpoint_id) = parse_attempts_parent(&r.parent)?;
        let event_id = match r.event_id.as_str() {
            "" => None,
            raw => Some(parse_event_id(raw, "event_id")?),
        };
        let (endpoint_id, event_id) = (endpoint_id.as_ref(), event_id.as_deref());
        let of = AttemptsOf {
            slug: &slug,
            endpoint_id,
            event_id,
            parent: &r.parent,
        };
        let org = app::attempts_owner(&self.hub.store, &caller, &of).await?;
        let query = format!("attempts:{}:{}", r.parent, r.event_id);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page {
            items: found,
            next_after: next,
        } = app::attempts(&self.hub.store, &org, &of, at).await?;
        Ok(Response::new(pb::ListWebhookAttemptsResponse {
            webhook_attempts: found.iter().map(|a| attempt_to_pb(&org.slug, a)).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn redeliver_webhook_event(
        &self,
        request: Request<pb::RedeliverWebhookEventRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let r = request.into_inner();
        let event_id = parse_event_id(&r.event_id, "event_id")?;
        let (org, endpoint) = app::enabled_endpoint(&self.hub.store, &caller, &r.name).await?;
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            let delivery = app::redeliver(tx, &org, &endpoint, &event_id).await?;
            Ok(delivery_to_pb(&org.slug, &delivery))
        })
        .await?;
        tracing::info!(endpoint = %r.name, event = %event_id, "webhook event queued again");
        Ok(Response::new(response))
    }

    async fn redeliver_failed_webhook_deliveries(
        &self,
        request: Request<pb::RedeliverFailedWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::RedeliverFailedWebhookDeliveriesResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let r = request.into_inner();
        let since = match &r.since {
            None => return Err(FieldViolation::required("since").into()),
            Some(t) => parse_timestamp(t).map_err(|v| v.under("since"))?,
        };
        let (_, endpoint) = app::enabled_endpoint(&self.hub.store, &caller, &r.name).await?;
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            let redelivered = app::redeliver_failed(tx, &endpoint, since).await? as i64;
            Ok(pb::RedeliverFailedWebhookDeliveriesResponse { redelivered })
        })
        .await?;
        tracing::info!(endpoint = %r.name, redelivered = response.redelivered, "failed webhook deliveries queued again");
        Ok(Response::new(response))
    }
}
