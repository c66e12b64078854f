//! The client-certificate methods of `AdminService`: registrations that let a mutual
//! TLS connection authenticate as an organization.

use tonic::Request;
use uuid::Uuid;

use super::convert::scope_to_pb;
use super::write::idempotent;
use super::{AdminApi, Caller};
use crate::domain::client_cert::{CertificateMatch, ClientCertificate};
use crate::domain::error::{Error, Result, Violations};
use crate::domain::names;
use crate::domain::text::{self, MAX_DISPLAY_NAME_CHARS};
use crate::domain::{OrgRef, Scope, now};
use crate::feed::render::timestamp;
use crate::pb;

fn to_pb(c: &ClientCertificate) -> pb::ClientCertificate {
    let r#match = match &c.matches {
        CertificateMatch::Fingerprint(f) => {
            pb::client_certificate::Match::FingerprintSha256(f.clone())
        }
        CertificateMatch::Subject(s) => pb::client_certificate::Match::SubjectCommonName(s.clone()),
    };
    pb::ClientCertificate {
        name: names::client_certificate(&c.organization.slug, &c.id),
        display_name: c.display_name.clone(),
        r#match: Some(r#match),
        scopes: c.scopes.iter().map(|s| scope_to_pb(s) as i32).collect(),
        create_time: timestamp(c.create_time),
        revoke_time: c.revoke_time.and_then(timestamp),
    }
}

impl AdminApi {
    async fn certificate_owner(
        &self,
        caller: &Caller,
        field: &str,
        parent: &str,
    ) -> Result<OrgRef> {
        let org = self.visible_organization(caller, field, parent).await?;
        Ok(OrgRef {
            id: org.id,
            slug: org.slug,
        })
    }

    pub(super) async fn register_certificate(
        &self,
        request: Request<pb::RegisterClientCertificateRequest>,
    ) -> Result<pb::ClientCertificate> {
        let caller = Caller::of(&request)?;
        caller.require_operator()?;
        let request = request.into_inner();
        let input = request.client_certificate.clone().unwrap_or_default();
        let mut v = Violations::new();
        let matches = match &input.r#match {
            Some(pb::client_certificate::Match::FingerprintSha256(f)) => v.check(
                "client_certificate.fingerprint_sha256",
                CertificateMatch::fingerprint(f),
            ),
            Some(pb::client_certificate::Match::SubjectCommonName(s)) => v.check(
                "client_certificate.subject_common_name",
                CertificateMatch::subject(s),
            ),
            None => {
                v.add(
                    "client_certificate.fingerprint_sha256",
                    "set this or subject_common_name",
                );
                None
            }
        };
        let scopes = v.check(
            "client_certificate.scopes",
            super::admin::scopes_from_pb(&input.scopes),
        );
        // Optional, unlike an organization's or a member's display name.
        let display_name = v
            .check(
                "client_certificate.display_name",
                text::line(&input.display_name, MAX_DISPLAY_NAME_CHARS),
            )
            .unwrap_or_default();
        let organization = self
            .certificate_owner(&caller, "parent", &request.parent)
            .await;
        let (Some(matches), Some(scopes)) = (matches, scopes) else {
            return Err(v.into_error());
        };
        v.finish()?;
        let certificate = ClientCertificate {
            id: Uuid::now_v7().to_string(),
            organization: organization?,
            matches,
            display_name,
            scopes,
            create_time: now(),
            revoke_time: None,
        };
        let response = idempotent(
            self.hub(),
            &caller,
            "RegisterClientCertificate",
            &request.request_id,
            &request,
            async |tx| {
                tx.insert_client_certificate(&certificate).await?;
                Ok(to_pb(&certificate))
            },
        )
        .await?;
        tracing::info!(certificate = %response.name, "client certificate registered");
        Ok(response)
    }

    pub(super) async fn list_certificates(
        &self,
        request: Request<pb::ListClientCertificatesRequest>,
    ) -> Result<pb::ListClientCertificatesResponse> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let request = request.into_inner();
        let owner = self
            .certificate_owner(&caller, "parent", &request.parent)
            .await?;
        let query = format!(
            "clientCertificates:{}:{}",
            request.parent, request.show_revoked
        );
        let page = self
            .hub()
            .pages
            .open(&caller, request.page_size, &request.page_token, &query)
            .await?;
        let found = self
            .hub()
            .store
            .client_certificates(
                &owner.id,
                request.show_revoked,
                page.after.as_deref(),
                page.size,
            )
            .await?;
        Ok(pb::ListClientCertificatesResponse {
            client_certificates: found.items.iter().map(to_pb).collect(),
            next_page_token: page.next_token(found.next_after),
        })
    }

    pub(super) async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeClientCertificateRequest>,
    ) -> Result<pb::ClientCertificate> {
        let caller = Caller::of(&request)?;
        caller.require_operator()?;
        let request = request.into_inner();
        let (slug, id) =
            names::parse_client_certificate(&request.name).map_err(|v| v.under("name"))?;
        let owner = self
            .certificate_owner(&caller, "name", &names::organization(&slug))
            .await?;
        let name = request.name.clone();
        let response = idempotent(
            self.hub(),
            &caller,
            "RevokeClientCertificate",
            &request.request_id,
            &request,
            async |tx| {
                let mut certificate = tx
                    .client_certificate(&owner.id, &id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("client certificate {name:?}")))?;
                if certificate.revoke_time.is_none() {
                    let now = now();
                    tx.revoke_client_certificate(&certificate.id, now).await?;
                    certificate.revoke_time = Some(now);
                }
                Ok(to_pb(&certificate))
            },
        )
        .await?;
        self.hub().auth.forget_all();
        tracing::info!(certificate = %response.name, "client certificate revoked");
        Ok(response)
    }
}
