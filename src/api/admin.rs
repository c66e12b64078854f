//! `liaison.v1.AdminService`: organizations and API keys.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{
    check_etag, kind_from_pb, kind_to_pb, parse_timestamp, scope_from_pb, scope_to_pb, update_paths,
};
use super::write::{Target, idempotent};
use super::{Caller, Hub};
use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::names;
use crate::domain::text::{self, MAX_DISPLAY_NAME_CHARS};
use crate::domain::{
    ApiKey, ApiKeySecret, DisplayName, OrgRef, Organization, OrganizationState, Principal, Reason,
    Scope, Scopes, Slug, now,
};
use crate::feed::render::{etag, timestamp};
use crate::pb::{self, admin_service_server::AdminService};

#[derive(Clone)]
pub struct AdminApi {
    hub: Hub,
}

impl AdminApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }

    pub(super) fn hub(&self) -> &Hub {
        &self.hub
    }
}

pub(super) fn organization_to_pb(o: &Organization) -> pb::Organization {
    let (state, suspend_reason) = match &o.state {
        OrganizationState::Active => (pb::organization::State::Active, String::new()),
        OrganizationState::Suspended { reason } => {
            (pb::organization::State::Suspended, reason.clone())
        }
    };
    pb::Organization {
        name: names::organization(&o.slug),
        slug: o.slug.to_string(),
        display_name: o.display_name.as_str().to_owned(),
        kind: kind_to_pb(o.kind) as i32,
        state: state as i32,
        suspend_reason,
        create_time: timestamp(o.create_time),
        update_time: timestamp(o.update_time),
        etag: etag(o.revision),
    }
}

fn key_to_pb(k: &ApiKey) -> pb::ApiKey {
    let owner = match &k.principal {
        Principal::Operator => None,
        Principal::Organization(org) => Some(&org.slug),
    };
    pb::ApiKey {
        name: names::api_key(owner, &k.id),
        display_name: k.display_name.clone(),
        scopes: k.scopes.iter().map(|s| scope_to_pb(s) as i32).collect(),
        prefix: k.prefix.clone(),
        create_time: timestamp(k.create_time),
        expire_time: k.expire_time.and_then(timestamp),
        revoke_time: k.revoke_time.and_then(timestamp),
    }
}

pub(super) fn scopes_from_pb(raw: &[i32]) -> Result<Scopes, FieldViolation> {
    let scopes = raw
        .iter()
        .map(|&s| scope_from_pb(s))
        .collect::<Result<Vec<_>, _>>()?;
    Scopes::new(scopes).ok_or_else(|| FieldViolation::new("", "at least one scope is required"))
}

impl AdminApi {
    /// The organization named `name` if the caller may act for it; otherwise
    /// NOT_FOUND, exactly as if it did not exist.
    pub(super) async fn visible_organization(
        &self,
        caller: &Caller,
        field: &str,
        name: &str,
    ) -> Result<Organization> {
        let slug = names::parse_organization(name).map_err(|v| v.under(field))?;
        match self.hub.store.organization(&slug).await? {
            Some(org) if caller.may_act_for(&org.id) => Ok(org),
            _ => Err(Error::NotFound(format!("organization {name:?}"))),
        }
    }

    /// Reads, changes and writes an organization in one transaction, honouring `etag`.
    async fn change_organization(
        &self,
        caller: &Caller,
        target: Target<'_>,
        request: &impl prost::Message,
        change: impl FnOnce(&mut Organization) -> Result<()>,
    ) -> Result<pb::Organization> {
        caller.require_operator()?;
        let Target {
            method,
            name,
            etag: sent_etag,
            request_id,
        } = target;
        let slug = names::parse_organization(name).map_err(|v| v.under("name"))?;
        let response = idempotent(&self.hub, caller, method, request_id, request, async |tx| {
            let mut org = tx
                .organization(&slug)
                .await?
                .ok_or_else(|| Error::NotFound(format!("organization {name:?}")))?;
            check_etag(sent_etag, org.revision, name)?;
            change(&mut org)?;
            org.update_time = now();
            if !tx.update_organization(&mut org).await? {
                return Err(Error::StaleEtag(name.to_owned()));
            }
            Ok(organization_to_pb(&org))
        })
        .await?;
        // A suspension must stop the organization's keys now, not when the cache expires.
        self.hub.auth.forget_all();
        Ok(response)
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_organization(
        &self,
        request: Request<pb::CreateOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_operator()?;
        let request = request.into_inner();
        let input = request.organization.clone().unwrap_or_default();
        let mut v = Violations::new();
        let slug = v.check("organization.slug", Slug::parse(&input.slug));
        let display_name = v.check(
            "organization.display_name",
            DisplayName::parse(&input.display_name),
        );
        let kind = v.check("organization.kind", kind_from_pb(input.kind));
        let (Some(slug), Some(display_name), Some(kind)) = (slug, display_name, kind) else {
            return Err(v.into_error().into());
        };
        let now = now();
        let org = Organization {
            id: Uuid::now_v7().to_string(),
            slug,
            display_name,
            kind,
            state: OrganizationState::Active,
            create_time: now,
            update_time: now,
            revision: 1,
        };
        let response = idempotent(
            &self.hub,
            &caller,
            "CreateOrganization",
            &request.request_id,
            &request,
            async |tx| {
                tx.insert_organization(&org).await?;
                Ok(organization_to_pb(&org))
            },
        )
        .await?;
        tracing::info!(organization = %response.slug, "organization created");
        Ok(Response::new(response))
    }

    async fn get_organization(
        &self,
        request: Request<pb::GetOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = self
            .visible_organization(&caller, "name", &request.get_ref().name)
            .await?;
        Ok(Response::new(organization_to_pb(&org)))
    }

    async fn list_organizations(
        &self,
        request: Request<pb::ListOrganizationsRequest>,
    ) -> Result<Response<pb::ListOrganizationsResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_operator()?;
        let request = request.into_inner();
        let page = self
            .hub
            .pages
            .open(
                &caller,
                request.page_size,
                &request.page_token,
                "organizations",
            )
            .await?;
        let found = self
            .hub
            .store
            .organizations(page.after.as_deref(), page.size)
            .await?;
        Ok(Response::new(pb::ListOrganizationsResponse {
            organizations: found.items.iter().map(organization_to_pb).collect(),
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn update_organization(
        &self,
        request: Request<pb::UpdateOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let input = request.organization.clone().unwrap_or_default();
        let mut populated = vec![];
        if !input.display_name.is_empty() {
            populated.push("display_name");
        }
        if input.kind != 0 {
            populated.push("kind");
        }
        let paths = update_paths(
            request.update_mask.as_ref(),
            &["display_name", "kind"],
            &populated,
        )?;
        let mut v = Violations::new();
        let display_name = paths
            .iter()
            .any(|p| p == "display_name")
            .then(|| {
                v.check(
                    "organization.display_name",
                    DisplayName::parse(&input.display_name),
                )
            })
            .flatten();
        let kind = paths
            .iter()
            .any(|p| p == "kind")
            .then(|| v.check("organization.kind", kind_from_pb(input.kind)))
            .flatten();
        v.finish()?;
        let response = self
            .change_organization(
                &caller,
                Target {
                    method: "UpdateOrganization",
                    name: &input.name,
                    etag: &input.etag,
                    request_id: &request.request_id,
                },
                &request,
                |org| {
                    if let Some(name) = display_name {
                        org.display_name = name;
                    }
                    if let Some(kind) = kind {
                        org.kind = kind;
                    }
                    Ok(())
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn suspend_organization(
        &self,
        request: Request<pb::SuspendOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let reason = Reason::parse_required(&request.reason).map_err(|v| v.under("reason"))?;
        let response = self
            .change_organization(
                &caller,
                Target {
                    method: "SuspendOrganization",
                    name: &request.name,
                    etag: &request.etag,
                    request_id: &request.request_id,
                },
                &request,
                |org| {
                    if !org.is_active() {
                        return Err(Error::failed_precondition(
                            "ORGANIZATION_SUSPENDED",
                            "the organization is already suspended",
                        ));
                    }
                    org.state = OrganizationState::Suspended {
                        reason: reason.as_str().to_owned(),
                    };
                    Ok(())
                },
            )
            .await?;
        tracing::info!(organization = %response.slug, "organization suspended");
        Ok(Response::new(response))
    }

    async fn reactivate_organization(
        &self,
        request: Request<pb::ReactivateOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let response = self
            .change_organization(
                &caller,
                Target {
                    method: "ReactivateOrganization",
                    name: &request.name,
                    etag: &request.etag,
                    request_id: &request.request_id,
                },
                &request,
                |org| {
                    if org.is_active() {
                        return Err(Error::failed_precondition(
                            "ORGANIZATION_ACTIVE",
                            "the organization is not suspended",
                        ));
                    }
                    org.state = OrganizationState::Active;
                    Ok(())
                },
            )
            .await?;
        tracing::info!(organization = %response.slug, "organization reactivated");
        Ok(Response::new(response))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let request = request.into_inner();
        let principal = self.key_owner(&caller, &request.parent).await?;
        let input = request.api_key.clone().unwrap_or_default();
        let now = now();
        let mut v = Violations::new();
        let scopes = v.check("api_key.scopes", scopes_from_pb(&input.scopes));
        // Optional, unlike an organization's or a member's display name.
        let display_name = v
            .check(
                "api_key.display_name",
                text::line(&input.display_name, MAX_DISPLAY_NAME_CHARS),
            )
            .unwrap_or_default();
        let expire_time = match &input.expire_time {
            None => None,
            Some(t) => match parse_timestamp(t) {
                Ok(t) if t > now => Some(t),
                Ok(_) => {
                    v.add("api_key.expire_time", "must be in the future");
                    None
                }
                Err(e) => {
                    v.check::<()>("api_key.expire_time", Err(e));
                    None
                }
            },
        };
        let Some(scopes) = scopes else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let secret = ApiKeySecret::generate();
        let key = ApiKey {
            id: Uuid::now_v7().to_string(),
            principal,
            display_name,
            scopes,
            prefix: secret.visible_prefix(),
            create_time: now,
            expire_time,
            revoke_time: None,
        };
        let response = idempotent(
            &self.hub,
            &caller,
            "CreateApiKey",
            &request.request_id,
            &request,
            async |tx| {
                tx.insert_api_key(&key, &secret.hash()).await?;
                Ok(pb::CreateApiKeyResponse {
                    api_key: Some(key_to_pb(&key)),
                    key: secret.expose().to_owned(),
                })
            },
        )
        .await?;
        tracing::info!(key = %response.api_key.as_ref().map(|k| k.name.as_str()).unwrap_or(""), "API key created");
        Ok(Response::new(response))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let request = request.into_inner();
        let owner = self.key_owner(&caller, &request.parent).await?;
        let query = format!("apiKeys:{}:{}", request.parent, request.show_revoked);
        let page = self
            .hub
            .pages
            .open(&caller, request.page_size, &request.page_token, &query)
            .await?;
        let found = self
            .hub
            .store
            .api_keys(
                &owner,
                request.show_revoked,
                page.after.as_deref(),
                page.size,
            )
            .await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: found.items.iter().map(key_to_pb).collect(),
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let request = request.into_inner();
        let (owner_slug, id) = names::parse_api_key(&request.name).map_err(|v| v.under("name"))?;
        let parent = owner_slug
            .as_ref()
            .map_or("operator".to_owned(), names::organization);
        let owner = self
            .key_owner(&caller, &parent)
            .await
            .map_err(|e| match e {
                // Whose keys the caller may not manage stays as unknown as a missing key.
                Error::NotFound(_) | Error::PermissionDenied { .. } => {
                    Error::NotFound(format!("API key {:?}", request.name))
                }
                other => other,
            })?;
        let name = request.name.clone();
        let response = idempotent(
            &self.hub,
            &caller,
            "RevokeApiKey",
            &request.request_id,
            &request,
            async |tx| {
                let mut key = tx
                    .api_key(&owner, &id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("API key {name:?}")))?;
                if key.revoke_time.is_none() {
                    let now = now();
                    tx.revoke_api_key(&key.id, now).await?;
                    key.revoke_time = Some(now);
                }
                Ok(key_to_pb(&key))
            },
        )
        .await?;
        self.hub.auth.forget_all();
        tracing::info!(key = %response.name, "API key revoked");
        Ok(Response::new(response))
    }

    async fn register_client_certificate(
        &self,
        request: Request<pb::RegisterClientCertificateRequest>,
    ) -> Result<Response<pb::ClientCertificate>, Status> {
        Ok(Response::new(self.register_certificate(request).await?))
    }

    async fn list_client_certificates(
        &self,
        request: Request<pb::ListClientCertificatesRequest>,
    ) -> Result<Response<pb::ListClientCertificatesResponse>, Status> {
        Ok(Response::new(self.list_certificates(request).await?))
    }

    async fn revoke_client_certificate(
        &self,
        request: Request<pb::RevokeClientCertificateRequest>,
    ) -> Result<Response<pb::ClientCertificate>, Status> {
        Ok(Response::new(self.revoke_certificate(request).await?))
    }
}

impl AdminApi {
    /// Whose keys `parent` names (`organizations/{org}` or `operator`), if the caller
    /// may manage them: the operator manages all, an organization's admin its own.
    async fn key_owner(&self, caller: &Caller, parent: &str) -> Result<Principal> {
        if parent == "operator" {
            caller.require_operator()?;
            return Ok(Principal::Operator);
        }
        let org = self.visible_organization(caller, "parent", parent).await?;
        Ok(Principal::Organization(OrgRef {
            id: org.id,
            slug: org.slug,
        }))
    }
}
