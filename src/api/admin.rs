//! `liaison.v1.AdminService`: organizations and API keys.

use jiff::Timestamp;
use tonic::{Request, Response, Status};

use super::convert::{
    org_kind_from_pb, org_kind_to_pb, parse_timestamp, scope_from_pb, update_paths,
};
use super::write::{Retryable, idempotent};
use super::{Caller, Hub, caller_of};
use crate::app::organizations as app;
use crate::domain::error::{FieldViolation, Result, Violations};
use crate::domain::names;
use crate::domain::text::{self, MAX_DISPLAY_NAME_CHARS};
use crate::domain::{
    DisplayName, Organization, OrganizationKind, OrganizationState, Reason, Scope, Scopes, Slug,
    now,
};
use crate::feed::render::{api_key_to_pb, etag, timestamp};
use crate::pb::{self, admin_service_server::AdminService};
use crate::store::Page;

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
        kind: org_kind_to_pb(o.kind) as i32,
        state: state as i32,
        suspend_reason,
        create_time: timestamp(o.create_time),
        update_time: timestamp(o.update_time),
        etag: etag(o.revision),
        reporting_currency: o.reporting_currency.clone(),
    }
}

pub(super) fn scopes_from_pb(raw: &[i32]) -> Result<Scopes, FieldViolation> {
    let scopes = raw
        .iter()
        .map(|&s| scope_from_pb(s))
        .collect::<Result<Vec<_>, _>>()?;
    Scopes::new(scopes).ok_or_else(|| FieldViolation::new("", "at least one scope is required"))
}

/// The fields of an organization an update names in `paths`, checked.
/// What an UpdateOrganization request changes: display name, kind, reporting
/// currency (`Some("")` clears it).
type OrganizationChange = (
    Option<DisplayName>,
    Option<OrganizationKind>,
    Option<String>,
);

fn organization_change(input: &pb::Organization, paths: &[String]) -> Result<OrganizationChange> {
    let wants = |f: &str| paths.iter().any(|p| p == f);
    let mut v = Violations::new();
    let display_name = wants("display_name")
        .then(|| {
            v.check(
                "organization.display_name",
                DisplayName::parse(&input.display_name),
            )
        })
        .flatten();
    let kind = wants("kind")
        .then(|| v.check("organization.kind", org_kind_from_pb(input.kind)))
        .flatten();
    let currency = wants("reporting_currency")
        .then(|| match input.reporting_currency.trim() {
            "" => Some(String::new()),
            code => v.check(
                "organization.reporting_currency",
                crate::domain::interaction::Money::new(code, 0, 0)
                    .map(|m| m.currency)
                    .map_err(|e| FieldViolation::new("", e.description)),
            ),
        })
        .flatten();
    v.finish()?;
    Ok((display_name, kind, currency))
}

/// The display name, scopes and expiry a CreateApiKey request carries, checked; the
/// expiry must be after `now`.
fn key_from_pb(input: &pb::ApiKey, now: Timestamp) -> Result<(String, Scopes, Option<Timestamp>)> {
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
        return Err(v.into_error());
    };
    v.finish()?;
    Ok((display_name, scopes, expire_time))
}

impl AdminApi {
    /// The organization named `name` (under `field` in errors) if the caller may act
    /// for it; otherwise NOT_FOUND, exactly as if it did not exist.
    pub(super) async fn visible_organization(
        &self,
        caller: &Caller,
        field: &str,
        name: &str,
    ) -> Result<Organization> {
        let slug = names::parse_organization(name).map_err(|v| v.under(field))?;
        app::visible(&self.hub.store, caller, &slug, name).await
    }

    /// Update, Suspend or ReactivateOrganization: reads, changes and writes the
    /// organization `name` in one transaction, honouring `etag`.
    async fn change_organization(
        &self,
        caller: &Caller,
        (name, etag): (&str, &str),
        request: &impl Retryable,
        change: impl FnOnce(&mut Organization) -> Result<()>,
    ) -> Result<pb::Organization> {
        self.change_organization_as(caller, (name, etag), request, false, change)
            .await
    }

    /// [`Self::change_organization`]; with `own_setting`, an admin key of the
    /// organization itself may make the change too (its own business settings).
    async fn change_organization_as(
        &self,
        caller: &Caller,
        (name, etag): (&str, &str),
        request: &impl Retryable,
        own_setting: bool,
        change: impl FnOnce(&mut Organization) -> Result<()>,
    ) -> Result<pb::Organization> {
        let slug = names::parse_organization(name).map_err(|v| v.under("name"))?;
        let own = own_setting
            && caller
                .organization()
                .is_ok_and(|o| o.slug == slug && caller.require(Scope::Admin).is_ok());
        if !own {
            caller.require_operator()?;
        }
        let response = idempotent(&self.hub, caller, request, async |tx| {
            Ok(organization_to_pb(
                &app::change(tx, (&slug, name, etag), change).await?,
            ))
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
        let caller = caller_of(&request)?;
        caller.require_operator()?;
        let request = request.into_inner();
        let input = request.organization.clone().unwrap_or_default();
        let mut v = Violations::new();
        let slug = v.check("organization.slug", Slug::parse(&input.slug));
        let display_name = v.check(
            "organization.display_name",
            DisplayName::parse(&input.display_name),
        );
        let kind = v.check("organization.kind", org_kind_from_pb(input.kind));
        let (Some(slug), Some(display_name), Some(kind)) = (slug, display_name, kind) else {
            return Err(v.into_error().into());
        };
        let org = app::new_organization(slug, display_name, kind);
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            app::create(tx, &org).await?;
            Ok(organization_to_pb(&org))
        })
        .await?;
        tracing::info!(organization = %response.slug, "organization created");
        Ok(Response::new(response))
    }

    async fn get_organization(
        &self,
        request: Request<pb::GetOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let name = &request.get_ref().name;
        let org = self.visible_organization(&caller, "name", name).await?;
        Ok(Response::new(organization_to_pb(&org)))
    }

    async fn list_organizations(
        &self,
        request: Request<pb::ListOrganizationsRequest>,
    ) -> Result<Response<pb::ListOrganizationsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require_operator()?;
        let r = request.into_inner();
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, "organizations")
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page {
            items: found,
            next_after: next,
        } = app::list(&self.hub.store, &caller, at).await?;
        Ok(Response::new(pb::ListOrganizationsResponse {
            organizations: found.iter().map(organization_to_pb).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn update_organization(
        &self,
        request: Request<pb::UpdateOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let input = r.organization.clone().unwrap_or_default();
        let populated: Vec<&str> = [
            ("display_name", !input.display_name.is_empty()),
            ("kind", input.kind != 0),
            ("reporting_currency", !input.reporting_currency.is_empty()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect();
        let paths = update_paths(
            r.update_mask.as_ref(),
            &["display_name", "kind", "reporting_currency"],
            &populated,
        )?;
        let (display_name, kind, currency) = organization_change(&input, &paths)?;
        // The reporting currency is the organization's own to choose.
        let own_setting = paths.iter().all(|p| p == "reporting_currency");
        let target = (input.name.as_str(), input.etag.as_str());
        let response = self
            .change_organization_as(&caller, target, &r, own_setting, |org| {
                if let Some(name) = display_name {
                    org.display_name = name;
                }
                if let Some(kind) = kind {
                    org.kind = kind;
                }
                if let Some(currency) = currency {
                    org.reporting_currency = currency;
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn suspend_organization(
        &self,
        request: Request<pb::SuspendOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let reason = Reason::parse_required(&r.reason).map_err(|v| v.under("reason"))?;
        let target = (r.name.as_str(), r.etag.as_str());
        let response = self
            .change_organization(&caller, target, &r, |org| app::suspend(org, &reason))
            .await?;
        tracing::info!(organization = %response.slug, "organization suspended");
        Ok(Response::new(response))
    }

    async fn reactivate_organization(
        &self,
        request: Request<pb::ReactivateOrganizationRequest>,
    ) -> Result<Response<pb::Organization>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let target = (r.name.as_str(), r.etag.as_str());
        let response = self
            .change_organization(&caller, target, &r, app::reactivate)
            .await?;
        tracing::info!(organization = %response.slug, "organization reactivated");
        Ok(Response::new(response))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let owner = app::key_owner(&self.hub.store, &caller, &r.parent).await?;
        let (display_name, scopes, expire_time) =
            key_from_pb(&r.api_key.clone().unwrap_or_default(), now())?;
        let (key, secret) = app::new_key(owner, display_name, scopes, expire_time);
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            app::create_key(tx, &key, &secret).await?;
            let (api_key, key) = (Some(api_key_to_pb(&key)), secret.expose().to_owned());
            Ok(pb::CreateApiKeyResponse { api_key, key })
        })
        .await?;
        let name = response
            .api_key
            .as_ref()
            .map(|k| k.name.as_str())
            .unwrap_or("");
        tracing::info!(key = %name, "API key created");
        Ok(Response::new(response))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let owner = app::key_owner(&self.hub.store, &caller, &r.parent).await?;
        let query = format!("apiKeys:{}:{}", r.parent, r.show_revoked);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page {
            items: found,
            next_after: next,
        } = app::keys(&self.hub.store, &owner, r.show_revoked, at).await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: found.iter().map(api_key_to_pb).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let (owner_slug, id) = names::parse_api_key(&r.name).map_err(|v| v.under("name"))?;
        let owner =
            app::revocable_key_owner(&self.hub.store, &caller, owner_slug.as_ref(), &r.name)
                .await?;
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            Ok(api_key_to_pb(
                &app::revoke_key(tx, &owner, &id, &r.name).await?,
            ))
        })
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
