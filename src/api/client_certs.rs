//! The client-certificate methods of `AdminService`: registrations that let a mutual
//! TLS connection authenticate as an organization.

use tonic::Request;

use super::admin::scopes_from_pb;
use super::write::idempotent;
use super::{AdminApi, caller_of};
use crate::app::organizations as app;
use crate::domain::Scope;
use crate::domain::client_cert::CertificateMatch;
use crate::domain::error::{Result, Violations};
use crate::domain::names;
use crate::domain::text::{self, MAX_DISPLAY_NAME_CHARS};
use crate::feed::render::certificate_to_pb;
use crate::pb;
use crate::store::Page;

/// How a registration matches presented certificates: exactly one of a SHA-256
/// fingerprint and a subject common name.
fn match_from_pb(v: &mut Violations, input: &pb::ClientCertificate) -> Option<CertificateMatch> {
    use pb::client_certificate::Match;
    match &input.r#match {
        Some(Match::FingerprintSha256(f)) => v.check(
            "client_certificate.fingerprint_sha256",
            CertificateMatch::fingerprint(f),
        ),
        Some(Match::SubjectCommonName(s)) => v.check(
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
    }
}

impl AdminApi {
    pub(super) async fn register_certificate(
        &self,
        request: Request<pb::RegisterClientCertificateRequest>,
    ) -> Result<pb::ClientCertificate> {
        let caller = caller_of(&request)?;
        caller.require_operator()?;
        let r = request.into_inner();
        let input = r.client_certificate.clone().unwrap_or_default();
        let mut v = Violations::new();
        let matches = match_from_pb(&mut v, &input);
        let scopes = v.check("client_certificate.scopes", scopes_from_pb(&input.scopes));
        // Optional, unlike an organization's or a member's display name.
        let display_name = v
            .check(
                "client_certificate.display_name",
                text::line(&input.display_name, MAX_DISPLAY_NAME_CHARS),
            )
            .unwrap_or_default();
        let organization =
            app::certificate_owner(&self.hub().store, &caller, "parent", &r.parent).await;
        let (Some(matches), Some(scopes)) = (matches, scopes) else {
            return Err(v.into_error());
        };
        v.finish()?;
        let certificate = app::new_certificate(organization?, matches, display_name, scopes);
        let response = idempotent(self.hub(), &caller, &r, async |tx| {
            app::register_certificate(tx, &certificate).await?;
            Ok(certificate_to_pb(&certificate))
        })
        .await?;
        tracing::info!(certificate = %response.name, "client certificate registered");
        Ok(response)
    }

    pub(super) async fn list_certificates(
        &self,
        request: Request<pb::ListClientCertificatesRequest>,
    ) -> Result<pb::ListClientCertificatesResponse> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let owner = app::certificate_owner(&self.hub().store, &caller, "parent", &r.parent).await?;
        let query = format!("clientCertificates:{}:{}", r.parent, r.show_revoked);
        let page = self
            .hub()
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page {
            items: found,
            next_after: next,
        } = app::certificates(&self.hub().store, &owner, r.show_revoked, at).await?;
        Ok(pb::ListClientCertificatesResponse {
            client_certificates: found.iter().map(certificate_to_pb).collect(),
            next_page_token: page.next_token(next),
        })
    }

    pub(super) async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeClientCertificateRequest>,
    ) -> Result<pb::ClientCertificate> {
        let caller = caller_of(&request)?;
        caller.require_operator()?;
        let r = request.into_inner();
        let (slug, id) = names::parse_client_certificate(&r.name).map_err(|v| v.under("name"))?;
        let parent = names::organization(&slug);
        let owner = app::certificate_owner(&self.hub().store, &caller, "name", &parent).await?;
        let response = idempotent(self.hub(), &caller, &r, async |tx| {
            Ok(certificate_to_pb(
                &app::revoke_certificate(tx, &owner, &id, &r.name).await?,
            ))
        })
        .await?;
        self.hub().auth.forget_all();
        tracing::info!(certificate = %response.name, "client certificate revoked");
        Ok(response)
    }
}
