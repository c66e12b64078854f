//! Organizations and their credentials: API keys and client certificates.
//!
//! The hub operator creates, changes, suspends and reactivates organizations and
//! registers certificates; an organization's administrators manage its own keys. An
//! organization the caller may not act for reads as NOT_FOUND, exactly as if it did
//! not exist.

use jiff::Timestamp;
use uuid::Uuid;

use super::check_etag;
use crate::domain::caller::Caller;
use crate::domain::client_cert::{CertificateMatch, ClientCertificate};
use crate::domain::error::{Error, Result};
use crate::domain::event::EventType;
use crate::domain::ids::{ApiKeyId, CertificateId};
use crate::domain::names;
use crate::domain::{
    ApiKey, ApiKeySecret, DisplayName, OrgRef, Organization, OrganizationKind, OrganizationState,
    Principal, Reason, Scopes, Slug, now,
};
use crate::feed::configuration::{certificate_event, key_event};
use crate::store::{Page, Store, Tx};

/// A new organization, not yet stored: its id is chosen once, so a retried create
/// writes the same organization.
pub fn new_organization(
    slug: Slug,
    display_name: DisplayName,
    kind: OrganizationKind,
) -> Organization {
    let now = now();
    Organization {
        id: Uuid::now_v7().to_string(),
        slug,
        display_name,
        kind,
        state: OrganizationState::Active,
        reporting_currency: String::new(),
        create_time: now,
        update_time: now,
        revision: 1,
    }
}

/// Stores `org` (from [`new_organization`]).
pub async fn create(tx: &mut Tx, org: &Organization) -> Result<()> {
    tx.insert_organization(org).await
}

/// The organization `slug` (named `name`) if the caller may act for it; otherwise
/// NOT_FOUND.
pub async fn visible(
    store: &Store,
    caller: &Caller,
    slug: &Slug,
    name: &str,
) -> Result<Organization> {
    match store.organization(slug).await? {
        Some(org) if caller.may_act_for(&org.id) => Ok(org),
        _ => Err(Error::NotFound(format!("organization {name:?}"))),
    }
}

/// Every organization; a page of `size` after `after`. For the operator.
pub async fn list(
    store: &Store,
    caller: &Caller,
    (after, size): (Option<&str>, usize),
) -> Result<Page<Organization>> {
    caller.require_operator()?;
    let found = store.organizations(after, size).await?;
    Ok(found)
}

/// Reads organization `slug` (named `name`, read at `etag`), applies `change` and
/// writes it.
pub async fn change(
    tx: &mut Tx,
    (slug, name, etag): (&Slug, &str, &str),
    change: impl FnOnce(&mut Organization) -> Result<()>,
) -> Result<Organization> {
    let mut org = tx
        .organization(slug)
        .await?
        .ok_or_else(|| Error::NotFound(format!("organization {name:?}")))?;
    check_etag(etag, org.revision, name)?;
    change(&mut org)?;
    org.update_time = now();
    if !tx.update_organization(&mut org).await? {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    Ok(org)
}

/// Suspends an active organization for `reason` (a [`change`]).
pub fn suspend(org: &mut Organization, reason: &Reason) -> Result<()> {
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
}

/// Reactivates a suspended organization (a [`change`]).
pub fn reactivate(org: &mut Organization) -> Result<()> {
    if org.is_active() {
        return Err(Error::failed_precondition(
            "ORGANIZATION_ACTIVE",
            "the organization is not suspended",
        ));
    }
    org.state = OrganizationState::Active;
    Ok(())
}

/// Whose keys `parent` names (`organizations/{org}` or `operator`), if the caller
/// may manage them: the operator manages all, an organization's admin its own.
pub async fn key_owner(store: &Store, caller: &Caller, parent: &str) -> Result<Principal> {
    if parent == "operator" {
        caller.require_operator()?;
        return Ok(Principal::Operator);
    }
    let slug = names::parse_organization(parent).map_err(|v| v.under("parent"))?;
    let org = visible(store, caller, &slug, parent).await?;
    Ok(Principal::Organization(OrgRef {
        id: org.id,
        slug: org.slug,
    }))
}

/// A new key of `owner` with a fresh secret, not yet stored: the secret is shown
/// once, in the answer to its creation.
pub fn new_key(
    owner: Principal,
    display_name: String,
    scopes: Scopes,
    expire_time: Option<Timestamp>,
) -> (ApiKey, ApiKeySecret) {
    let secret = ApiKeySecret::generate();
    let key = ApiKey {
        id: Uuid::now_v7().to_string(),
        principal: owner,
        display_name,
        scopes,
        prefix: secret.visible_prefix(),
        create_time: now(),
        expire_time,
        revoke_time: None,
    };
    (key, secret)
}

/// Stores `key` (from [`new_key`]) by the hash of its secret.
pub async fn create_key(tx: &mut Tx, key: &ApiKey, secret: &ApiKeySecret) -> Result<()> {
    tx.insert_api_key(key, &secret.hash()).await?;
    key_event(tx, EventType::ApiKeyCreated, key);
    Ok(())
}

/// The keys of `owner` (from [`key_owner`]); a page of `size` after `after`.
pub async fn keys(
    store: &Store,
    owner: &Principal,
    show_revoked: bool,
    (after, size): (Option<&str>, usize),
) -> Result<Page<ApiKey>> {
    let found = store.api_keys(owner, show_revoked, after, size).await?;
    Ok(found)
}

/// The owner of the key named `name` (`owner_slug` `None` for the operator's), if
/// the caller may manage its keys; NOT_FOUND otherwise, as for a missing key.
pub async fn revocable_key_owner(
    store: &Store,
    caller: &Caller,
    owner_slug: Option<&Slug>,
    name: &str,
) -> Result<Principal> {
    let parent = owner_slug.map_or("operator".to_owned(), names::organization);
    key_owner(store, caller, &parent)
        .await
        .map_err(|e| match e {
            // Whose keys the caller may not manage stays as unknown as a missing key.
            Error::NotFound(_) | Error::PermissionDenied { .. } => {
                Error::NotFound(format!("API key {name:?}"))
            }
            other => other,
        })
}

/// Revokes key `id` of `owner` (named `name`); revoking twice changes nothing.
pub async fn revoke_key(
    tx: &mut Tx,
    owner: &Principal,
    id: &ApiKeyId,
    name: &str,
) -> Result<ApiKey> {
    let mut key = tx
        .api_key(owner, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("API key {name:?}")))?;
    if key.revoke_time.is_none() {
        let now = now();
        tx.revoke_api_key(&key.id, now).await?;
        key.revoke_time = Some(now);
        key_event(tx, EventType::ApiKeyRevoked, &key);
    }
    Ok(key)
}

/// The organization named `name` (under `field` in errors) whose certificates the
/// caller manages.
pub async fn certificate_owner(
    store: &Store,
    caller: &Caller,
    field: &str,
    name: &str,
) -> Result<OrgRef> {
    let slug = names::parse_organization(name).map_err(|v| v.under(field))?;
    let org = visible(store, caller, &slug, name).await?;
    Ok(OrgRef {
        id: org.id,
        slug: org.slug,
    })
}

/// A new certificate registration of `organization`, not yet stored.
pub fn new_certificate(
    organization: OrgRef,
    matches: CertificateMatch,
    display_name: String,
    scopes: Scopes,
) -> ClientCertificate {
    ClientCertificate {
        id: Uuid::now_v7().to_string(),
        organization,
        matches,
        display_name,
        scopes,
        create_time: now(),
        revoke_time: None,
    }
}

/// Stores `certificate` (from [`new_certificate`]).
pub async fn register_certificate(tx: &mut Tx, certificate: &ClientCertificate) -> Result<()> {
    tx.insert_client_certificate(certificate).await?;
    certificate_event(tx, EventType::ClientCertificateRegistered, certificate);
    Ok(())
}

/// The certificates of `owner`; a page of `size` after `after`.
pub async fn certificates(
    store: &Store,
    owner: &OrgRef,
    show_revoked: bool,
    (after, size): (Option<&str>, usize),
) -> Result<Page<ClientCertificate>> {
    let found = store
        .client_certificates(&owner.id, show_revoked, after, size)
        .await?;
    Ok(found)
}

/// Revokes certificate `id` of `owner` (named `name`); revoking twice changes
/// nothing.
pub async fn revoke_certificate(
    tx: &mut Tx,
    owner: &OrgRef,
    id: &CertificateId,
    name: &str,
) -> Result<ClientCertificate> {
    let mut certificate = tx
        .client_certificate(&owner.id, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("client certificate {name:?}")))?;
    if certificate.revoke_time.is_none() {
        let now = now();
        tx.revoke_client_certificate(&certificate.id, now).await?;
        certificate.revoke_time = Some(now);
        certificate_event(tx, EventType::ClientCertificateRevoked, &certificate);
    }
    Ok(certificate)
}
