use std::time::{Duration, Instant};

use liaison::pb;
use prost_types::FieldMask;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::helpers::*;

crate::on_both_backends!(
    the_operator_creates_gets_and_lists_organizations,
    invalid_organizations_are_refused_field_by_field,
    a_duplicate_slug_is_refused,
    a_retried_request_id_returns_the_first_result,
    concurrent_retries_create_exactly_once,
    updates_honour_the_mask_and_the_etag,
    listing_pages_through_every_organization_once,
    an_organization_admin_manages_only_its_own_keys,
    a_key_or_certificate_revoked_on_one_replica_is_refused_on_another_promptly,
);

fn new_org(slug: &str, name: &str, kind: pb::OrganizationKind) -> pb::Organization {
    pb::Organization {
        slug: slug.into(),
        display_name: name.into(),
        kind: kind as i32,
        ..Default::default()
    }
}

async fn the_operator_creates_gets_and_lists_organizations(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .operator()
        .create_organization(pb::CreateOrganizationRequest {
            organization: Some(new_org(
                "bigshop",
                "  Big Shop AG ",
                pb::OrganizationKind::Retailer,
            )),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, "organizations/bigshop");
    assert_eq!(created.display_name, "Big Shop AG");
    assert_eq!(created.state, pb::organization::State::Active as i32);
    assert!(created.create_time.is_some() && !created.etag.is_empty());

    let got = app
        .operator()
        .get_organization(pb::GetOrganizationRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    let listed = app
        .operator()
        .list_organizations(pb::ListOrganizationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.organizations, vec![created]);
    assert!(listed.next_page_token.is_empty());

    let missing = app
        .operator()
        .get_organization(pb::GetOrganizationRequest {
            name: "organizations/nobody".into(),
        })
        .await;
    assert_error(missing, Code::NotFound, "NOT_FOUND");
}

async fn invalid_organizations_are_refused_field_by_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let result = app
        .operator()
        .create_organization(pb::CreateOrganizationRequest {
            organization: Some(new_org("Bad_Slug", "", pb::OrganizationKind::Unspecified)),
            request_id: String::new(),
        })
        .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(
        violated_fields(&status),
        [
            "organization.slug",
            "organization.display_name",
            "organization.kind"
        ]
    );

    let result = app
        .operator()
        .create_organization(pb::CreateOrganizationRequest::default())
        .await;
    let status = assert_error(result, Code::InvalidArgument, "FIELD_REQUIRED");
    assert!(violated_fields(&status).contains(&"organization.slug".to_owned()));

    let result = app
        .operator()
        .get_organization(pb::GetOrganizationRequest {
            name: "orgs/acme".into(),
        })
        .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_RESOURCE_NAME");
    assert_eq!(violated_fields(&status), ["name"]);

    // Nothing was written by any of these.
    let listed = app
        .operator()
        .list_organizations(pb::ListOrganizationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.organizations.is_empty());
}

async fn a_duplicate_slug_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let result = app
        .operator()
        .create_organization(pb::CreateOrganizationRequest {
            organization: Some(new_org(
                "acme",
                "Another Acme",
                pb::OrganizationKind::Distributor,
            )),
            request_id: String::new(),
        })
        .await;
    assert_error(result, Code::AlreadyExists, "SLUG_TAKEN");
}

async fn a_retried_request_id_returns_the_first_result(backend: Backend) {
    let app = spawn_app(backend).await;
    let request = pb::CreateOrganizationRequest {
        organization: Some(new_org("acme", "Acme", pb::OrganizationKind::Vendor)),
        request_id: "6f1c1d2e-0d8c-4c52-9a49-3f0d1f0a0001".into(),
    };
    let first = app
        .operator()
        .create_organization(request.clone())
        .await
        .unwrap()
        .into_inner();
    let retry = app
        .operator()
        .create_organization(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, retry);
    let listed = app
        .operator()
        .list_organizations(pb::ListOrganizationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.organizations.len(), 1);

    // The same id for a different request is a client bug, not a retry.
    let mut different = request.clone();
    different.organization.as_mut().unwrap().slug = "other".into();
    let status = assert_error(
        app.operator().create_organization(different).await,
        Code::InvalidArgument,
        "INVALID_REQUEST_ID",
    );
    assert_eq!(violated_fields(&status), ["request_id"]);

    // A retried key creation answers with the key's metadata but never the secret again.
    let key_request = pb::CreateApiKeyRequest {
        parent: first.name.clone(),
        api_key: Some(pb::ApiKey {
            scopes: vec![pb::ApiKeyScope::Read as i32],
            ..Default::default()
        }),
        request_id: "key-1".into(),
    };
    let key = app
        .operator()
        .create_api_key(key_request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = app
        .operator()
        .create_api_key(key_request)
        .await
        .unwrap()
        .into_inner();
    assert!(key.key.starts_with("lsk_"));
    assert_eq!(again.api_key, key.api_key);
    assert!(again.key.is_empty());
    let keys = app
        .operator()
        .list_api_keys(pb::ListApiKeysRequest {
            parent: first.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.api_keys.len(), 1);
}

async fn concurrent_retries_create_exactly_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let request = pb::CreateOrganizationRequest {
        organization: Some(new_org("racer", "Racer", pb::OrganizationKind::Other)),
        request_id: "race-1".into(),
    };
    let attempts = (0..8).map(|_| {
        let mut client = app.operator();
        let request = request.clone();
        tokio::spawn(async move {
            client
                .create_organization(request)
                .await
                .map(|r| r.into_inner())
        })
    });
    let mut answers = vec![];
    for attempt in attempts {
        answers.push(attempt.await.unwrap().expect("every retry succeeds"));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let listed = app
        .operator()
        .list_organizations(pb::ListOrganizationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.organizations.len(), 1);
}

async fn updates_honour_the_mask_and_the_etag(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let current = app
        .operator()
        .get_organization(pb::GetOrganizationRequest {
            name: org.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    let update = |display_name: &str, kind: pb::OrganizationKind, etag: &str, paths: &[&str]| {
        pb::UpdateOrganizationRequest {
            organization: Some(pb::Organization {
                name: org.name.clone(),
                display_name: display_name.into(),
                kind: kind as i32,
                etag: etag.into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            request_id: String::new(),
        }
    };
    // Only masked fields change: the kind in the request is ignored.
    let updated = app
        .operator()
        .update_organization(update(
            "Acme Europe",
            pb::OrganizationKind::Retailer,
            &current.etag,
            &["display_name"],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Acme Europe");
    assert_eq!(updated.kind, pb::OrganizationKind::Vendor as i32);
    assert_ne!(updated.etag, current.etag);

    // The etag read before that update is stale now.
    let stale = app
        .operator()
        .update_organization(update(
            "Acme Asia",
            pb::OrganizationKind::Vendor,
            &current.etag,
            &["display_name"],
        ))
        .await;
    assert_error(stale, Code::Aborted, "STALE_ETAG");

    let slug = app
        .operator()
        .update_organization(update("x", pb::OrganizationKind::Vendor, "", &["slug"]))
        .await;
    let status = assert_error(slug, Code::InvalidArgument, "INVALID_UPDATE_MASK");
    assert_eq!(violated_fields(&status), ["update_mask"]);

    let after = app
        .operator()
        .get_organization(pb::GetOrganizationRequest {
            name: org.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.display_name, "Acme Europe");
}

async fn listing_pages_through_every_organization_once(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..7 {
        app.operator()
            .create_organization(pb::CreateOrganizationRequest {
                organization: Some(new_org(
                    &format!("org-{i}"),
                    "Org",
                    pb::OrganizationKind::Other,
                )),
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
    let mut seen = vec![];
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .operator()
            .list_organizations(pb::ListOrganizationsRequest {
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.organizations.len() <= 3);
        seen.extend(page.organizations.into_iter().map(|o| o.slug));
        // An organization created mid-listing still shows up, since pages go by creation order.
        if pages == 1 {
            app.create_org("late-comer", pb::OrganizationKind::Other)
                .await;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = (0..7).map(|i| format!("org-{i}")).collect();
    expected.push("late-comer".into());
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);

    let bad = app
        .operator()
        .list_organizations(pb::ListOrganizationsRequest {
            page_size: 3,
            page_token: "bogus".into(),
        })
        .await;
    assert_eq!(
        violated_fields(&assert_error(
            bad,
            Code::InvalidArgument,
            "INVALID_PAGE_TOKEN"
        )),
        ["page_token"]
    );
    let negative = app
        .operator()
        .list_organizations(pb::ListOrganizationsRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await;
    assert_eq!(
        violated_fields(&assert_error(
            negative,
            Code::InvalidArgument,
            "INVALID_PAGE_SIZE"
        )),
        ["page_size"]
    );
}

async fn an_organization_admin_manages_only_its_own_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;

    let own = app
        .admin(&acme.admin_key)
        .create_api_key(pb::CreateApiKeyRequest {
            parent: acme.name.clone(),
            api_key: Some(pb::ApiKey {
                display_name: "ERP".into(),
                scopes: vec![pb::ApiKeyScope::Write as i32],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        own.api_key
            .unwrap()
            .name
            .starts_with("organizations/acme/apiKeys/")
    );

    // Another organization's keys are invisible: NOT_FOUND, as if it did not exist.
    let theirs = app
        .admin(&acme.admin_key)
        .list_api_keys(pb::ListApiKeysRequest {
            parent: shop.name.clone(),
            ..Default::default()
        })
        .await;
    assert_error(theirs, Code::NotFound, "NOT_FOUND");
    let nobody = app
        .admin(&acme.admin_key)
        .list_api_keys(pb::ListApiKeysRequest {
            parent: "organizations/nobody".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        assert_error(nobody, Code::NotFound, "NOT_FOUND").code(),
        Code::NotFound
    );
    let shop_keys = app
        .operator()
        .list_api_keys(pb::ListApiKeysRequest {
            parent: shop.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let revoke = app
        .admin(&acme.admin_key)
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: shop_keys.api_keys[0].name.clone(),
            request_id: String::new(),
        })
        .await;
    assert_error(revoke, Code::NotFound, "NOT_FOUND");
    let get = app
        .admin(&acme.read_key)
        .get_organization(pb::GetOrganizationRequest {
            name: shop.name.clone(),
        })
        .await;
    assert_error(get, Code::NotFound, "NOT_FOUND");
}

/// How soon a revocation on one replica must be refused on another. The README
/// promises a second (the generation is read every 250 ms); twice that leaves room for
/// a loaded machine and stays well under the 5 s a cached credential would otherwise
/// be trusted, so only the credential generation can make it in time.
const REVOCATION_REACHES_REPLICAS: Duration = Duration::from_secs(2);

/// Calls `check` until it fails, at most [`REVOCATION_REACHES_REPLICAS`] after now;
/// returns the failure.
async fn refused_promptly<T>(mut check: impl AsyncFnMut() -> Result<T, Status>) -> Status {
    let revoked = Instant::now();
    loop {
        match check().await {
            Err(status) => return status,
            Ok(_) => assert!(
                revoked.elapsed() < REVOCATION_REACHES_REPLICAS,
                "still accepted on the other replica {:?} after the revocation",
                revoked.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn a_key_or_certificate_revoked_on_one_replica_is_refused_on_another_promptly(
    backend: Backend,
) {
    use crate::tls::{Ca, tls_channel, write};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Liaison Test CA");
    let server = ca.server();
    let (cert, key, client_ca) = (
        write(dir.path(), "server.pem", &server.cert),
        write(dir.path(), "server.key", &server.key),
        write(dir.path(), "ca.pem", &ca.pem()),
    );
    let one = spawn_app_with(backend, |c| {
        c.tls.cert = cert;
        c.tls.key = key;
        c.tls.client_ca = client_ca;
    })
    .await;
    // Two hubs on one database, as behind a load balancer (SQLite files are shared
    // by processes too).
    let two = one.replica().await;
    let tls = async |app: &TestApp, client: Option<&crate::tls::Leaf>| -> Channel {
        tls_channel(app.addr.port(), &ca.pem(), client)
            .await
            .expect("TLS connection")
    };
    let (one_channel, two_channel) = (tls(&one, None).await, tls(&two, None).await);
    let authed = |channel: &Channel, key: &str| {
        AdminServiceClient::with_interceptor(channel.clone(), Bearer(key.to_owned()))
    };
    let operator = authed(&one_channel, &one.operator_key);
    let acme = operator
        .clone()
        .create_organization(new_organization("acme", pb::OrganizationKind::Vendor))
        .await
        .unwrap()
        .into_inner();
    let get = || pb::GetOrganizationRequest {
        name: acme.name.clone(),
    };

    // A key, used on the second hub just before the first revokes it: it sits in the
    // second hub's cache.
    let issued = operator
        .clone()
        .create_api_key(new_api_key(&acme.name, &[pb::ApiKeyScope::Read]))
        .await
        .unwrap()
        .into_inner();
    let mut by_key = authed(&two_channel, &issued.key);
    by_key.get_organization(get()).await.expect("the key works");
    operator
        .clone()
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: issued.api_key.unwrap().name,
            request_id: String::new(),
        })
        .await
        .unwrap();
    let refused = refused_promptly(async || by_key.get_organization(get()).await).await;
    assert_error(Err::<(), _>(refused), Code::Unauthenticated, "KEY_REVOKED");

    // The same for a client certificate, on a connection to the second hub that
    // stays open across the revocation.
    let erp = ca.client("erp.acme.example", false);
    let registration = operator
        .clone()
        .register_client_certificate(pb::RegisterClientCertificateRequest {
            parent: acme.name.clone(),
            client_certificate: Some(pb::ClientCertificate {
                display_name: "ERP".into(),
                r#match: Some(pb::client_certificate::Match::SubjectCommonName(
                    "erp.acme.example".into(),
                )),
                scopes: vec![pb::ApiKeyScope::Read as i32],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut by_certificate = AdminServiceClient::new(tls(&two, Some(&erp)).await);
    by_certificate
        .get_organization(get())
        .await
        .expect("the certificate works");
    operator
        .clone()
        .revoke_client_certificate(pb::RevokeClientCertificateRequest {
            name: registration.name,
            request_id: String::new(),
        })
        .await
        .unwrap();
    let refused = refused_promptly(async || by_certificate.get_organization(get()).await).await;
    assert_error(
        Err::<(), _>(refused),
        Code::Unauthenticated,
        "UNKNOWN_CERTIFICATE",
    );
}
