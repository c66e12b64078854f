//! `liaison.v1.WebhookService`: an organization's webhook endpoints.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{etag, timestamp};
use super::paging::PageRequest;
use super::write::idempotent;
use super::{Caller, Hub, names};
use crate::config::WebhooksConfig;
use crate::domain::event::parse_type_filter;
use crate::domain::webhook::{WebhookSecret, parse_url, refused_literal_host};
use crate::domain::{Organization, Scope, Slug, now};
use crate::error::{Error, Result, Violations};
use crate::pb::{self, webhook_service_server::WebhookService};
use crate::store::Endpoint;

/// Longest endpoint description.
const MAX_DESCRIPTION_CHARS: usize = 500;
/// Endpoints per organization.
const MAX_ENDPOINTS: usize = 50;

#[derive(Clone)]
pub struct WebhookApi {
    hub: Hub,
    config: Arc<WebhooksConfig>,
}

impl WebhookApi {
    pub fn new(hub: Hub, config: WebhooksConfig) -> Self {
        Self {
            hub,
            config: Arc::new(config),
        }
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

/// The filter as the caller wrote it: stored prefixes `customer.` read `customer.*`.
fn filter_to_pb(types: &[String]) -> Vec<String> {
    types
        .iter()
        .map(|t| match t.strip_suffix('.') {
            Some(prefix) => format!("{prefix}.*"),
            None => t.clone(),
        })
        .collect()
}

fn endpoint_to_pb(org: &Slug, e: &Endpoint) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        name: names::webhook_endpoint(org, &e.id),
        url: e.url.clone(),
        description: e.description.clone(),
        event_types: filter_to_pb(&e.event_types),
        enabled: e.enabled,
        disabled_reason: e.disabled_reason.clone(),
        consecutive_failures: e.consecutive_failures,
        last_success_time: e.last_success_time.and_then(timestamp),
        create_time: timestamp(e.create_time),
        update_time: timestamp(e.update_time),
        etag: etag(e.revision),
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
        let url = v.check(
            "webhook_endpoint.url",
            parse_url(&input.url, self.config.allow_http),
        );
        if let Some(why) = url
            .as_ref()
            .and_then(|u| refused_literal_host(u, self.config.allow_private_networks))
        {
            v.add("webhook_endpoint.url", why);
        }
        if input.description.chars().count() > MAX_DESCRIPTION_CHARS {
            v.add(
                "webhook_endpoint.description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            );
        }
        let types = match parse_type_filter(&input.event_types) {
            Ok(t) => t,
            Err(list) => {
                for x in list {
                    v.add(
                        format!("webhook_endpoint.event_types{}", x.field),
                        x.description,
                    );
                }
                vec![]
            }
        };
        let (Some(slug), Some(url)) = (slug, url) else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let org = self.organization(&caller, &slug, &r.parent).await?;
        let existing = self
            .hub
            .store
            .endpoints(&org.id, None, MAX_ENDPOINTS)
            .await?;
        if existing.items.len() >= MAX_ENDPOINTS {
            return Err(Error::failed_precondition(
                "TOO_MANY_ENDPOINTS",
                format!("an organization may have at most {MAX_ENDPOINTS} webhook endpoints"),
            )
            .into());
        }
        let at = now();
        let endpoint = Endpoint {
            id: Uuid::now_v7().to_string(),
            organization_id: org.id.clone(),
            url: url.to_string(),
            description: input.description.clone(),
            event_types: types,
            enabled: true,
            disabled_reason: String::new(),
            secret: WebhookSecret::generate().expose(),
            consecutive_failures: 0,
            last_success_time: None,
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
        Ok(Response::new(endpoint_to_pb(&org.slug, &endpoint)))
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
        let page =
            PageRequest::parse(r.page_size, &r.page_token, &format!("endpoints:{}", org.id))?;
        let found = self
            .hub
            .store
            .endpoints(&org.id, page.after.as_deref(), page.size)
            .await?;
        Ok(Response::new(pb::ListWebhookEndpointsResponse {
            webhook_endpoints: found
                .items
                .iter()
                .map(|e| endpoint_to_pb(&org.slug, e))
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
        Ok(Response::new(pb::WebhookEndpointSecret {
            secret: endpoint.secret,
        }))
    }
}
