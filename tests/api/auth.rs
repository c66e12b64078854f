use jiff::{SignedDuration, Timestamp};
use liaison::domain::{ApiKey, ApiKeySecret, Principal, Scope, Scopes};
use liaison::pb;
use tonic::Code;

use crate::helpers::*;

crate::on_both_backends!(
    calls_without_a_key_are_unauthenticated,
    unknown_and_malformed_keys_are_unauthenticated,
    a_revoked_key_stops_working_at_once,
    an_expired_key_is_rejected,
    a_suspended_organizations_keys_stop_working_until_reactivated,
    a_key_without_the_needed_scope_is_denied,
);

async fn calls_without_a_key_are_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let result = app
        .admin("")
        .list_organizations(pb::ListOrganizationsRequest::default())
        .await;
    assert_error(result, Code::Unauthenticated, "MISSING_CREDENTIALS");
}

async fn unknown_and_malformed_keys_are_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let unknown = ApiKeySecret::generate();
    let result = app
        .admin(unknown.expose())
        .list_organizations(pb::ListOrganizationsRequest::default())
        .await;
    assert_error(result, Code::Unauthenticated, "INVALID_KEY");
    let result = app
        .admin("lsk_nonsense")
        .list_organizations(pb::ListOrganizationsRequest::default())
        .await;
    assert_error(result, Code::Unauthenticated, "INVALID_KEY");

    let mut request = tonic::Request::new(pb::ListOrganizationsRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Basic {}", app.operator_key).parse().unwrap(),
    );
    let result = AdminServiceClient::new(app.channel.clone())
        .list_organizations(request)
        .await;
    assert_error(result, Code::Unauthenticated, "MALFORMED_CREDENTIALS");
}

async fn a_revoked_key_stops_working_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let get = || pb::GetOrganizationRequest {
        name: org.name.clone(),
    };
    app.admin(&org.read_key)
        .get_organization(get())
        .await
        .expect("the key works");

    let keys = app
        .operator()
        .list_api_keys(pb::ListApiKeysRequest {
            parent: org.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    let read_key = keys
        .iter()
        .find(|k| org.read_key.starts_with(&k.prefix) && k.scopes == [pb::ApiKeyScope::Read as i32])
        .unwrap();
    let revoked = app
        .operator()
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: read_key.name.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoke_time.is_some());

    // The key was just used, so it sits in the cache: revocation must clear it.
    assert_error(
        app.admin(&org.read_key).get_organization(get()).await,
        Code::Unauthenticated,
        "KEY_REVOKED",
    );
    // Revoked keys are listed only on request.
    let live = app
        .operator()
        .list_api_keys(pb::ListApiKeysRequest {
            parent: org.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(live.len(), 1);
    let all = app
        .operator()
        .list_api_keys(pb::ListApiKeysRequest {
            parent: org.name.clone(),
            show_revoked: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(all.len(), 2);
}

async fn an_expired_key_is_rejected(backend: Backend) {
    let app = spawn_app(backend).await;
    // The API refuses to issue a key that is already expired, so write one directly.
    let secret = ApiKeySecret::generate();
    let now = Timestamp::now();
    let key = ApiKey {
        id: uuid::Uuid::now_v7().to_string(),
        principal: Principal::Operator,
        display_name: "old".into(),
        scopes: Scopes::new(vec![Scope::Admin]).unwrap(),
        prefix: secret.visible_prefix(),
        create_time: now - SignedDuration::from_hours(2),
        expire_time: Some(now - SignedDuration::from_hours(1)),
        revoke_time: None,
    };
    let mut tx = app.store.begin().await.unwrap();
    tx.insert_api_key(&key, &secret.hash()).await.unwrap();
    tx.commit().await.unwrap();
    let result = app
        .admin(secret.expose())
        .list_organizations(pb::ListOrganizationsRequest::default())
        .await;
    assert_error(result, Code::Unauthenticated, "KEY_EXPIRED");

    let past = pb::ApiKey {
        scopes: vec![pb::ApiKeyScope::Read as i32],
        expire_time: Some(prost_types::Timestamp {
            seconds: now.as_second() - 60,
            nanos: 0,
        }),
        ..Default::default()
    };
    let result = app
        .operator()
        .create_api_key(pb::CreateApiKeyRequest {
            parent: "operator".into(),
            api_key: Some(past),
            request_id: String::new(),
        })
        .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(violated_fields(&status), ["api_key.expire_time"]);
}

async fn a_suspended_organizations_keys_stop_working_until_reactivated(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let get = || pb::GetOrganizationRequest {
        name: org.name.clone(),
    };
    app.admin(&org.read_key)
        .get_organization(get())
        .await
        .expect("works before");

    let suspended = app
        .operator()
        .suspend_organization(pb::SuspendOrganizationRequest {
            name: org.name.clone(),
            reason: "unpaid".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.state, pb::organization::State::Suspended as i32);
    assert_eq!(suspended.suspend_reason, "unpaid");
    assert_error(
        app.admin(&org.read_key).get_organization(get()).await,
        Code::Unauthenticated,
        "ORGANIZATION_SUSPENDED",
    );

    let again = app
        .operator()
        .suspend_organization(pb::SuspendOrganizationRequest {
            name: org.name.clone(),
            reason: "x".into(),
            ..Default::default()
        })
        .await;
    assert_error(again, Code::FailedPrecondition, "ORGANIZATION_SUSPENDED");
    let no_reason = app
        .operator()
        .suspend_organization(pb::SuspendOrganizationRequest {
            name: org.name.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        violated_fields(&assert_error(
            no_reason,
            Code::InvalidArgument,
            "FIELD_REQUIRED"
        )),
        ["reason"]
    );

    app.operator()
        .reactivate_organization(pb::ReactivateOrganizationRequest {
            name: org.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    app.admin(&org.read_key)
        .get_organization(get())
        .await
        .expect("works again");
}

async fn a_key_without_the_needed_scope_is_denied(backend: Backend) {
    let app = spawn_app(backend).await;
    let org = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let member = pb::CreateMemberRequest {
        parent: org.name.clone(),
        member: Some(pb::Member {
            display_name: "Jane".into(),
            email: "jane@acme.example".into(),
            role: pb::MemberRole::Coordinator as i32,
            time_zone: "Europe/Berlin".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let result = app
        .members(&org.read_key)
        .create_member(member.clone())
        .await;
    assert_error(result, Code::PermissionDenied, "INSUFFICIENT_SCOPE");
    app.members(&org.admin_key)
        .create_member(member)
        .await
        .expect("admin may");

    // An organization's admin is not the operator.
    let result = app
        .admin(&org.admin_key)
        .create_organization(pb::CreateOrganizationRequest {
            organization: Some(pb::Organization {
                slug: "rogue".into(),
                display_name: "Rogue".into(),
                kind: pb::OrganizationKind::Other as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    assert_error(result, Code::PermissionDenied, "PERMISSION_DENIED");
    // The operator is not an organization.
    let result = app
        .partnerships(&app.operator_key)
        .list_partnerships(pb::ListPartnershipsRequest::default())
        .await;
    assert_error(result, Code::PermissionDenied, "PERMISSION_DENIED");
}
