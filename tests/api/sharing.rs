//! Sharing customers across partnerships: the authorization matrix, access requests,
//! overlays, interactions, duplicates and merge, erasure.

use liaison::pb;
use pb::customer_history_entry::Action;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::customers::{create, list, names_of, person};
use crate::helpers::*;

crate::on_both_backends!(
    every_customer_rpc_shows_each_caller_exactly_its_share,
    a_partner_finds_a_holder_and_asks_for_access,
    overlays_and_organization_interactions_stay_private,
    duplicates_are_found_and_merged_into_a_survivor,
    erasure_removes_personal_data_everywhere,
    grants_are_created_and_revoked_in_batches_all_or_none,
    a_field_preset_shares_its_fields_and_a_change_reaches_every_grant_with_one_event_each,
    a_preset_change_racing_grants_through_it_leaves_none_with_old_fields,
);

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

pub(crate) async fn grant(
    app: &TestApp,
    owner: &Org,
    customer: &str,
    grantee: &Org,
    level: pb::AccessLevel,
    fields: &[&str],
) -> Result<pb::Grant, Status> {
    app.sharing(&owner.admin_key)
        .create_grant(grant_request(customer, grantee, level, fields))
        .await
        .map(|r| r.into_inner())
}

pub(crate) async fn get(app: &TestApp, key: &str, name: &str) -> Result<pb::Customer, Status> {
    app.customers(key)
        .get_customer(pb::GetCustomerRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

pub(crate) async fn update(
    app: &TestApp,
    key: &str,
    customer: pb::Customer,
    paths: &[&str],
) -> Result<pb::Customer, Status> {
    app.customers(key)
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(customer),
            update_mask: mask(paths),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn history(
    app: &TestApp,
    key: &str,
    name: &str,
) -> Result<Vec<pb::CustomerHistoryEntry>, Status> {
    app.customers(key)
        .list_customer_history(pb::ListCustomerHistoryRequest {
            parent: name.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().entries)
}

async fn interactions(
    app: &TestApp,
    key: &str,
    name: &str,
    filter: &str,
) -> Result<Vec<pb::Interaction>, Status> {
    app.interactions(key)
        .list_interactions(pb::ListInteractionsRequest {
            parent: name.into(),
            filter: filter.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().interactions)
}

pub(crate) async fn log(
    app: &TestApp,
    org: &Org,
    customer: &str,
    kind: pb::InteractionType,
    visibility: pb::InteractionVisibility,
    summary: &str,
) -> pb::Interaction {
    app.interactions(&org.admin_key)
        .log_interaction(pb::LogInteractionRequest {
            parent: customer.into(),
            interaction: Some(pb::Interaction {
                r#type: kind as i32,
                occur_time: Some(prost_types::Timestamp {
                    seconds: 1_790_000_000 + summary.len() as i64,
                    nanos: 0,
                }),
                summary: summary.into(),
                visibility: visibility as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("log interaction")
        .into_inner()
}

fn jane() -> pb::Customer {
    let mut c = person("Jane", "Doe", "jane@example.com");
    c.phones = vec![pb::PhoneContact {
        number: "+16502530000".into(),
        ..Default::default()
    }];
    c.tags = vec!["vip".into()];
    c
}

/// The owner `acme` and one partner per kind of access; `stranger` has no grant,
/// `paused` a grant through a partnership that is then suspended.
async fn every_customer_rpc_shows_each_caller_exactly_its_share(backend: Backend) {
    use pb::AccessLevel::{Read, ReadWrite};
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let reader = app
        .create_org("reader", pb::OrganizationKind::Retailer)
        .await;
    let masked = app
        .create_org("masked", pb::OrganizationKind::Retailer)
        .await;
    let writer = app
        .create_org("writer", pb::OrganizationKind::Distributor)
        .await;
    let paused = app
        .create_org("paused", pb::OrganizationKind::Retailer)
        .await;
    let stranger = app
        .create_org("stranger", pb::OrganizationKind::Retailer)
        .await;
    for partner in [&reader, &masked, &writer, &stranger] {
        app.partner(&acme, partner).await;
    }
    let paused_partnership = app.partner(&acme, &paused).await;
    let c = create(&app, &acme, jane()).await;
    grant(&app, &acme, &c.name, &reader, Read, &[])
        .await
        .unwrap();
    grant(
        &app,
        &acme,
        &c.name,
        &masked,
        Read,
        &["display_name", "emails"],
    )
    .await
    .unwrap();
    grant(
        &app,
        &acme,
        &c.name,
        &writer,
        ReadWrite,
        &["given_name", "family_name", "display_name", "emails"],
    )
    .await
    .unwrap();
    grant(&app, &acme, &c.name, &paused, Read, &[])
        .await
        .unwrap();
    app.partnerships(&paused.admin_key)
        .suspend_partnership(pb::SuspendPartnershipRequest {
            name: paused_partnership.name.clone(),
            reason: "audit".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    log(
        &app,
        &acme,
        &c.name,
        pb::InteractionType::Call,
        pb::InteractionVisibility::Shared,
        "shared call",
    )
    .await;
    log(
        &app,
        &acme,
        &c.name,
        pb::InteractionType::Note,
        pb::InteractionVisibility::Organization,
        "acme only",
    )
    .await;

    // --- Get and List: who sees what.
    let full = get(&app, &acme.read_key, &c.name).await.unwrap();
    assert_eq!(full.phones.len(), 1);
    let r = get(&app, &reader.read_key, &c.name).await.unwrap();
    assert_eq!(r.access, Read as i32);
    assert_eq!((r.emails.len(), r.phones.len(), r.tags.len()), (1, 1, 1));
    let m = get(&app, &masked.read_key, &c.name).await.unwrap();
    assert_eq!(m.display_name, "Jane Doe");
    assert_eq!(m.emails.len(), 1);
    assert!(m.phones.is_empty() && m.tags.is_empty() && m.given_name.is_empty());
    assert_eq!(m.visible_fields, vec!["display_name", "emails"]);
    let w = get(&app, &writer.read_key, &c.name).await.unwrap();
    assert_eq!(w.access, ReadWrite as i32);
    assert!(w.phones.is_empty());
    for outsider in [&paused, &stranger] {
        let result = get(&app, &outsider.read_key, &c.name).await;
        let status = assert_error(result, Code::NotFound, "NOT_FOUND");
        // The same answer as for a customer that never existed.
        let missing = get(
            &app,
            &outsider.read_key,
            "customers/00000000-0000-7000-8000-000000000000",
        )
        .await;
        assert_eq!(
            status.message().replace(&c.name, "X"),
            missing
                .unwrap_err()
                .message()
                .replace("customers/00000000-0000-7000-8000-000000000000", "X")
        );
        assert!(list(&app, &outsider.read_key, "").await.is_empty());
        assert!(
            list(&app, &outsider.read_key, "email = \"jane@example.com\"")
                .await
                .is_empty()
        );
    }
    assert_eq!(
        names_of(&list(&app, &reader.read_key, "granted = true").await),
        vec![c.name.clone()]
    );
    assert!(
        list(&app, &reader.read_key, "granted = false")
            .await
            .is_empty()
    );
    // Filters match only what the caller may see: no probing hidden phones or tags.
    assert_eq!(
        list(&app, &reader.read_key, "phone = \"+16502530000\"")
            .await
            .len(),
        1
    );
    assert!(
        list(&app, &masked.read_key, "phone = \"+16502530000\"")
            .await
            .is_empty()
    );
    assert!(list(&app, &masked.read_key, "tag = vip").await.is_empty());
    assert_eq!(
        list(&app, &masked.read_key, "email = \"jane@example.com\"")
            .await
            .len(),
        1
    );
    let listed = list(&app, &masked.read_key, "").await;
    assert_eq!(listed, vec![m.clone()], "List shows what Get shows");

    // --- Update: only the owner and a READ_WRITE grantee, and only granted fields.
    let rename = pb::Customer {
        name: c.name.clone(),
        family_name: "Smith".into(),
        ..Default::default()
    };
    let result = update(&app, &reader.admin_key, rename.clone(), &["family_name"]).await;
    assert_error(result, Code::PermissionDenied, "FIELD_NOT_WRITABLE");
    let result = update(&app, &masked.admin_key, rename.clone(), &["family_name"]).await;
    assert_error(result, Code::PermissionDenied, "FIELD_NOT_WRITABLE");
    let result = update(
        &app,
        &writer.admin_key,
        pb::Customer {
            name: c.name.clone(),
            ..Default::default()
        },
        &["phones"],
    )
    .await;
    assert_error(result, Code::PermissionDenied, "FIELD_NOT_WRITABLE");
    for outsider in [&paused, &stranger] {
        let result = update(&app, &outsider.admin_key, rename.clone(), &["family_name"]).await;
        assert_error(result, Code::NotFound, "NOT_FOUND");
    }
    let by_writer = update(&app, &writer.admin_key, rename, &["family_name"])
        .await
        .unwrap();
    assert_eq!(by_writer.display_name, "Jane Smith");
    assert!(by_writer.phones.is_empty(), "the answer is masked too");
    let owner_view = get(&app, &acme.read_key, &c.name).await.unwrap();
    assert_eq!(owner_view.family_name, "Smith");
    assert_eq!(owner_view.phones, full.phones, "nothing else changed");

    // --- Delete, erase, merge, duplicates, grants: the owner's alone.
    for partner in [&reader, &writer] {
        let result = app
            .customers(&partner.admin_key)
            .delete_customer(pb::DeleteCustomerRequest {
                name: c.name.clone(),
                ..Default::default()
            })
            .await;
        assert_error(result, Code::PermissionDenied, "NOT_CUSTOMER_OWNER");
        let result = app
            .customers(&partner.admin_key)
            .erase_customer(pb::EraseCustomerRequest {
                name: c.name.clone(),
                ..Default::default()
            })
            .await;
        assert_error(result, Code::PermissionDenied, "NOT_CUSTOMER_OWNER");
        let result = app
            .customers(&partner.read_key)
            .find_duplicate_customers(pb::FindDuplicateCustomersRequest {
                name: c.name.clone(),
            })
            .await;
        assert_error(result, Code::PermissionDenied, "NOT_CUSTOMER_OWNER");
        let result = grant(&app, partner, &c.name, &masked, Read, &[]).await;
        assert_error(result, Code::PermissionDenied, "NOT_CUSTOMER_OWNER");
    }
    for outsider in [&paused, &stranger] {
        let result = app
            .customers(&outsider.admin_key)
            .delete_customer(pb::DeleteCustomerRequest {
                name: c.name.clone(),
                ..Default::default()
            })
            .await;
        assert_error(result, Code::NotFound, "NOT_FOUND");
        let result = app
            .sharing(&outsider.read_key)
            .list_grants(pb::ListGrantsRequest {
                parent: c.name.clone(),
                ..Default::default()
            })
            .await;
        assert_error(result, Code::NotFound, "NOT_FOUND");
    }
    // The owner lists every grant; a grantee only its own.
    let all = app
        .sharing(&acme.read_key)
        .list_grants(pb::ListGrantsRequest {
            parent: c.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(all.len(), 4);
    let paused_grant = all.iter().find(|g| g.grantee == paused.name).unwrap();
    assert!(
        !paused_grant.effective,
        "a suspended partnership's grant does not work"
    );
    let own = app
        .sharing(&masked.read_key)
        .list_grants(pb::ListGrantsRequest {
            parent: c.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].fields, vec!["display_name", "emails"]);

    // --- History: entries about fields the caller cannot see are left out.
    let fields = |e: &pb::CustomerHistoryEntry| -> Vec<String> {
        e.changes.iter().map(|ch| ch.field.clone()).collect()
    };
    let owners = history(&app, &acme.read_key, &c.name).await.unwrap();
    let actions: Vec<i32> = owners.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [Action::Updated as i32, Action::Created as i32],
        "{owners:?}"
    );
    assert_eq!(
        fields(&owners[1]),
        ["given_name", "family_name", "emails", "phones", "tags"]
    );
    let h = history(&app, &masked.read_key, &c.name).await.unwrap();
    // The creation stays, cut down to the granted fields; the update of family_name
    // (not granted) is left out altogether.
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0].action, Action::Created as i32);
    assert_eq!(fields(&h[0]), ["emails"]);
    let h = history(&app, &writer.read_key, &c.name).await.unwrap();
    assert_eq!(h[0].action, Action::Updated as i32);
    assert_eq!(h[0].organization, writer.name);
    for outsider in [&paused, &stranger] {
        assert_error(
            history(&app, &outsider.read_key, &c.name).await,
            Code::NotFound,
            "NOT_FOUND",
        );
        assert_error(
            interactions(&app, &outsider.read_key, &c.name, "").await,
            Code::NotFound,
            "NOT_FOUND",
        );
    }

    // --- Interactions: shared ones reach every grantee, organization ones stay home.
    let seen = interactions(&app, &reader.read_key, &c.name, "")
        .await
        .unwrap();
    assert_eq!(
        seen.iter().map(|i| i.summary.as_str()).collect::<Vec<_>>(),
        vec!["shared call"]
    );
    let seen = interactions(&app, &acme.read_key, &c.name, "")
        .await
        .unwrap();
    assert_eq!(seen.len(), 2);

    // --- Resuming the partnership brings the grant back; revoking ends it.
    app.partnerships(&paused.admin_key)
        .resume_partnership(pb::ResumePartnershipRequest {
            name: paused_partnership.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    get(&app, &paused.read_key, &c.name).await.unwrap();
    app.sharing(&acme.admin_key)
        .revoke_grant(pb::RevokeGrantRequest {
            name: paused_grant.name.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert_error(
        get(&app, &paused.read_key, &c.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );

    // --- Grants need an active partnership and a real grantee.
    let loner = app.create_org("loner", pb::OrganizationKind::Other).await;
    let result = grant(&app, &acme, &c.name, &loner, Read, &[]).await;
    assert_error(result, Code::FailedPrecondition, "NO_ACTIVE_PARTNERSHIP");
    let result = grant(&app, &acme, &c.name, &reader, Read, &[]).await;
    assert_error(result, Code::AlreadyExists, "GRANT_EXISTS");
    let result = grant(&app, &acme, &c.name, &masked, Read, &["phone"]).await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(violated_fields(&status), vec!["grant.fields"]);
}

async fn a_partner_finds_a_holder_and_asks_for_access(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let loner = app
        .create_org("loner", pb::OrganizationKind::Retailer)
        .await;
    app.partner(&acme, &shop).await;
    let c = create(&app, &acme, jane()).await;

    let ask = |key: String, email: &str| {
        let mut client = app.sharing(&key);
        let email = email.to_owned();
        async move {
            client
                .match_customer(pb::MatchCustomerRequest {
                    email,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .matches
        }
    };
    // No partnership, no answer; an unknown email, no answer.
    assert!(
        ask(loner.read_key.clone(), "jane@example.com")
            .await
            .is_empty()
    );
    assert!(
        ask(shop.read_key.clone(), "nobody@example.com")
            .await
            .is_empty()
    );
    let matches = ask(shop.read_key.clone(), "JANE@example.com").await;
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0].organization, acme.name);
    assert_eq!(matches[0].rule, pb::MatchRule::SameEmail as i32);
    assert!(
        !matches[0].r#match.contains(&c.name),
        "the record is not named"
    );
    let by_phone = app
        .sharing(&shop.read_key)
        .match_customer(pb::MatchCustomerRequest {
            phone: "650 253 0000".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .matches;
    assert_eq!(by_phone[0].rule, pb::MatchRule::SamePhone as i32);

    let result = app
        .sharing(&shop.read_key)
        .match_customer(pb::MatchCustomerRequest::default())
        .await;
    assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");

    let request = |reason: &str| pb::CreateAccessRequestRequest {
        access_request: Some(pb::AccessRequest {
            r#match: matches[0].r#match.clone(),
            level: pb::AccessLevel::Read as i32,
            fields: vec!["display_name".into(), "emails".into()],
            reason: reason.into(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let result = app
        .sharing(&shop.admin_key)
        .create_access_request(request(""))
        .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(violated_fields(&status), vec!["access_request.reason"]);
    // A handle is only good for the organization it was given to.
    let result = app
        .sharing(&loner.admin_key)
        .create_access_request(request("mine"))
        .await;
    assert_error(result, Code::NotFound, "NOT_FOUND");
    let asked = app
        .sharing(&shop.admin_key)
        .create_access_request(request("She called our store about a warranty"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(asked.state, pb::access_request::State::Pending as i32);
    assert!(
        asked.customer.is_empty(),
        "the requester does not learn the record yet"
    );
    let result = app
        .sharing(&shop.admin_key)
        .create_access_request(request("again"))
        .await;
    assert_error(result, Code::AlreadyExists, "ACCESS_REQUEST_PENDING");

    let incoming = app
        .sharing(&acme.read_key)
        .list_access_requests(pb::ListAccessRequestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .access_requests;
    assert_eq!(incoming.len(), 1);
    assert_eq!(incoming[0].customer, c.name, "the owner sees which record");
    // Only the owner decides.
    let result = app
        .sharing(&shop.admin_key)
        .approve_access_request(pb::ApproveAccessRequestRequest {
            name: asked.name.clone(),
            request_id: String::new(),
        })
        .await;
    assert_error(result, Code::PermissionDenied, "PERMISSION_DENIED");
    let approved = app
        .sharing(&acme.admin_key)
        .approve_access_request(pb::ApproveAccessRequestRequest {
            name: asked.name.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.state, pb::access_request::State::Approved as i32);
    assert!(approved.grant.starts_with(&c.name));
    let seen = get(&app, &shop.read_key, &c.name).await.unwrap();
    assert_eq!(seen.visible_fields, vec!["display_name", "emails"]);
    assert!(seen.phones.is_empty());
    let outgoing = app
        .sharing(&shop.read_key)
        .list_access_requests(pb::ListAccessRequestsRequest {
            direction: pb::list_access_requests_request::Direction::Outgoing as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_requests;
    assert_eq!(outgoing[0].customer, c.name, "named once approved");
    let result = app
        .sharing(&acme.admin_key)
        .decline_access_request(pb::DeclineAccessRequestRequest {
            name: asked.name.clone(),
            ..Default::default()
        })
        .await;
    assert_error(result, Code::FailedPrecondition, "ACCESS_REQUEST_DECIDED");

    // A declined request grants nothing.
    let other = create(&app, &acme, person("Max", "Moe", "max@example.com")).await;
    let m = ask(shop.read_key.clone(), "max@example.com").await;
    let asked = app
        .sharing(&shop.admin_key)
        .create_access_request(pb::CreateAccessRequestRequest {
            access_request: Some(pb::AccessRequest {
                r#match: m[0].r#match.clone(),
                level: pb::AccessLevel::Read as i32,
                reason: "please".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let declined = app
        .sharing(&acme.admin_key)
        .decline_access_request(pb::DeclineAccessRequestRequest {
            name: asked.name.clone(),
            reason: "not your customer".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(declined.decision_reason, "not your customer");
    assert_error(
        get(&app, &shop.read_key, &other.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn overlays_and_organization_interactions_stay_private(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&acme, &shop).await;
    let c = create(&app, &acme, jane()).await;
    grant(
        &app,
        &acme,
        &c.name,
        &shop,
        pb::AccessLevel::Read,
        &["display_name"],
    )
    .await
    .unwrap();
    let overlay_name = format!("{}/overlay", c.name);
    let written = app
        .customers(&shop.admin_key)
        .update_customer_overlay(pb::UpdateCustomerOverlayRequest {
            overlay: Some(pb::CustomerOverlay {
                name: overlay_name.clone(),
                external_id: "SHOP-77".into(),
                account_number: "A-1".into(),
                notes: "prefers email".into(),
                attributes: [("store".to_owned(), "berlin".to_owned())].into(),
                ..Default::default()
            }),
            update_mask: None,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(written.external_id, "SHOP-77");
    // The partner finds the customer by its own external id; the owner does not.
    assert_eq!(
        list(&app, &shop.read_key, "external_id = \"SHOP-77\"")
            .await
            .len(),
        1
    );
    assert!(
        list(&app, &acme.read_key, "external_id = \"SHOP-77\"")
            .await
            .is_empty()
    );
    assert_eq!(
        get(&app, &shop.read_key, &c.name)
            .await
            .unwrap()
            .external_id,
        "SHOP-77"
    );
    let owners = app
        .customers(&acme.read_key)
        .get_customer_overlay(pb::GetCustomerOverlayRequest {
            name: overlay_name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(owners.notes.is_empty() && owners.external_id.is_empty());
    // Overlay history is the partner's alone.
    let h = history(&app, &shop.read_key, &c.name).await.unwrap();
    assert_eq!(h[0].action, Action::OverlayUpdated as i32);
    assert!(h[0].changes.iter().any(|ch| ch.field == "overlay.notes"));
    let h = history(&app, &acme.read_key, &c.name).await.unwrap();
    let actions: Vec<i32> = h.iter().map(|e| e.action).collect();
    assert_eq!(actions, [Action::Created as i32], "{h:?}");
    // Stale overlay etag.
    let result = app
        .customers(&shop.admin_key)
        .update_customer_overlay(pb::UpdateCustomerOverlayRequest {
            overlay: Some(pb::CustomerOverlay {
                name: overlay_name.clone(),
                status: "key account".into(),
                etag: "\"0\"".into(),
                ..Default::default()
            }),
            update_mask: None,
            request_id: String::new(),
        })
        .await;
    assert_error(result, Code::Aborted, "STALE_ETAG");

    // Interactions: validation, privacy, order and filters.
    let result = app
        .interactions(&shop.admin_key)
        .log_interaction(pb::LogInteractionRequest {
            parent: c.name.clone(),
            interaction: Some(pb::Interaction {
                r#type: pb::InteractionType::Purchase as i32,
                occur_time: Some(prost_types::Timestamp {
                    seconds: 1_790_000_000,
                    nanos: 0,
                }),
                summary: "bought a kettle".into(),
                amount: Some(pb::Money {
                    currency_code: "EURO".into(),
                    units: 30,
                    nanos: 0,
                }),
                visibility: pb::InteractionVisibility::Shared as i32,
                member: "organizations/acme/members/00000000-0000-7000-8000-000000000000".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        vec!["interaction.amount.currency_code", "interaction.member"]
    );

    let call = log(
        &app,
        &shop,
        &c.name,
        pb::InteractionType::Call,
        pb::InteractionVisibility::Organization,
        "private call",
    )
    .await;
    log(
        &app,
        &shop,
        &c.name,
        pb::InteractionType::Purchase,
        pb::InteractionVisibility::Shared,
        "a shared purchase",
    )
    .await;
    log(
        &app,
        &acme,
        &c.name,
        pb::InteractionType::Complaint,
        pb::InteractionVisibility::Shared,
        "complaint",
    )
    .await;
    let shop_sees = interactions(&app, &shop.read_key, &c.name, "")
        .await
        .unwrap();
    assert_eq!(
        shop_sees
            .iter()
            .map(|i| i.summary.as_str())
            .collect::<Vec<_>>(),
        vec!["a shared purchase", "private call", "complaint"],
        "newest first"
    );
    let acme_sees = interactions(&app, &acme.read_key, &c.name, "")
        .await
        .unwrap();
    assert_eq!(acme_sees.len(), 2);
    let result = app
        .interactions(&acme.read_key)
        .get_interaction(pb::GetInteractionRequest {
            name: call.name.clone(),
        })
        .await;
    assert_error(result, Code::NotFound, "NOT_FOUND");
    let purchases = interactions(&app, &shop.read_key, &c.name, "type = PURCHASE")
        .await
        .unwrap();
    assert_eq!(purchases.len(), 1);
    let late = interactions(
        &app,
        &shop.read_key,
        &c.name,
        "occur_time >= \"2026-09-21T14:13:32Z\"",
    )
    .await
    .unwrap();
    assert_eq!(late.len(), 2, "{late:?}");
    assert_error(
        interactions(&app, &shop.read_key, &c.name, "summary = x").await,
        Code::InvalidArgument,
        "INVALID_FILTER",
    );
}

async fn duplicates_are_found_and_merged_into_a_survivor(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&acme, &shop).await;
    let mut survivor = person("Jane", "Doe", "jane@example.com");
    survivor.addresses = vec![pb::PostalAddress {
        postal_code: "10115".into(),
        country_code: "DE".into(),
        ..Default::default()
    }];
    survivor.external_id = "S-1".into();
    let survivor = create(&app, &acme, survivor).await;
    let mut by_email = person("J.", "Doe", "JANE@example.com");
    by_email.phones = vec![pb::PhoneContact {
        number: "+4930901820".into(),
        ..Default::default()
    }];
    by_email.external_id = "L-1".into();
    let by_email = create(&app, &acme, by_email).await;
    let mut by_address = person("jane", "DOE", "");
    by_address.addresses = vec![pb::PostalAddress {
        postal_code: "10 115".into(),
        country_code: "DE".into(),
        ..Default::default()
    }];
    let by_address = create(&app, &acme, by_address).await;
    create(&app, &acme, person("Someone", "Else", "else@example.com")).await;

    let found = app
        .customers(&acme.read_key)
        .find_duplicate_customers(pb::FindDuplicateCustomersRequest {
            name: survivor.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .candidates;
    let summary: Vec<(String, Vec<i32>)> = found
        .iter()
        .map(|d| (d.customer.as_ref().unwrap().name.clone(), d.rules.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (by_email.name.clone(), vec![pb::MatchRule::SameEmail as i32]),
            (
                by_address.name.clone(),
                vec![pb::MatchRule::SameNameAndPostalCode as i32]
            ),
        ]
    );

    grant(
        &app,
        &acme,
        &by_email.name,
        &shop,
        pb::AccessLevel::Read,
        &[],
    )
    .await
    .unwrap();
    log(
        &app,
        &shop,
        &by_email.name,
        pb::InteractionType::Call,
        pb::InteractionVisibility::Shared,
        "call on the duplicate",
    )
    .await;

    let merged = app
        .customers(&acme.admin_key)
        .merge_customers(pb::MergeCustomersRequest {
            name: survivor.name.clone(),
            merged: vec![by_email.name.clone(), by_address.name.clone()],
            etag: survivor.etag.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.given_name, "Jane", "the survivor's values win");
    assert_eq!(merged.emails.len(), 1);
    assert_eq!(merged.phones.len(), 1, "contact points move over");
    assert_eq!(merged.external_id, "S-1");

    // The merged ids answer NOT_FOUND naming the survivor, to those who may see it.
    for key in [&acme.read_key, &shop.read_key] {
        let status = get(&app, key, &by_email.name).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "CUSTOMER_MERGED");
        assert_eq!(info.metadata.get("survivor"), Some(&survivor.name));
    }
    // The grant and the interaction moved with the record.
    let shared = get(&app, &shop.read_key, &survivor.name).await.unwrap();
    assert_eq!(shared.access, pb::AccessLevel::Read as i32);
    let moved = interactions(&app, &acme.read_key, &survivor.name, "")
        .await
        .unwrap();
    assert_eq!(moved.len(), 1);
    assert!(moved[0].name.starts_with(&survivor.name));
    // The loser's external id is dropped where the survivor has one of its own.
    assert_eq!(
        list(&app, &acme.read_key, "external_id = \"L-1\"")
            .await
            .len(),
        0
    );
    assert_eq!(list(&app, &acme.read_key, "").await.len(), 2);
    let h = history(&app, &acme.read_key, &survivor.name).await.unwrap();
    assert_eq!(h[0].action, Action::Merged as i32);
    assert!(h[0].note.contains(&by_email.name));
    // A merged record cannot be merged again: the merge that took it won.
    let result = app
        .customers(&acme.admin_key)
        .merge_customers(pb::MergeCustomersRequest {
            name: survivor.name.clone(),
            merged: vec![by_email.name.clone()],
            ..Default::default()
        })
        .await;
    assert_error(result, Code::FailedPrecondition, "CUSTOMER_MERGED");
}

async fn erasure_removes_personal_data_everywhere(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&acme, &shop).await;
    let mut input = jane();
    input.external_id = "E-1".into();
    let c = create(&app, &acme, input).await;
    grant(&app, &acme, &c.name, &shop, pb::AccessLevel::Read, &[])
        .await
        .unwrap();
    log(
        &app,
        &acme,
        &c.name,
        pb::InteractionType::Complaint,
        pb::InteractionVisibility::Shared,
        "broken kettle",
    )
    .await;
    app.customers(&shop.admin_key)
        .update_customer_overlay(pb::UpdateCustomerOverlayRequest {
            overlay: Some(pb::CustomerOverlay {
                name: format!("{}/overlay", c.name),
                notes: "lives next door".into(),
                ..Default::default()
            }),
            update_mask: None,
            request_id: String::new(),
        })
        .await
        .unwrap();

    let erased = app
        .customers(&acme.admin_key)
        .erase_customer(pb::EraseCustomerRequest {
            name: c.name.clone(),
            reason: "GDPR art. 17 request".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.state, pb::customer::State::Erased as i32);
    assert!(erased.display_name.is_empty() && erased.emails.is_empty() && erased.phones.is_empty());
    assert!(erased.external_id.is_empty());

    assert_error(
        get(&app, &shop.read_key, &c.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let owner_view = get(&app, &acme.read_key, &c.name).await.unwrap();
    assert_eq!(owner_view.state, pb::customer::State::Erased as i32);
    assert!(owner_view.given_name.is_empty());
    let h = history(&app, &acme.read_key, &c.name).await.unwrap();
    assert_eq!(h.len(), 1, "only the fact of erasure remains: {h:?}");
    assert_eq!(h[0].action, Action::Erased as i32);
    assert!(h[0].changes.is_empty());
    assert!(
        interactions(&app, &acme.read_key, &c.name, "")
            .await
            .unwrap()
            .is_empty()
    );
    let grants = app
        .sharing(&acme.read_key)
        .list_grants(pb::ListGrantsRequest {
            parent: c.name.clone(),
            show_revoked: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(grants.len(), 1, "the grant to shop: {grants:?}");
    assert_eq!(grants[0].state, pb::grant::State::Revoked as i32);
    // Nothing finds it any more: not filters, not matching, not its external id.
    assert!(
        list(&app, &acme.read_key, "email = \"jane@example.com\"")
            .await
            .is_empty()
    );
    assert!(
        list(&app, &acme.read_key, "external_id = \"E-1\"")
            .await
            .is_empty()
    );
    let matches = app
        .sharing(&shop.read_key)
        .match_customer(pb::MatchCustomerRequest {
            email: "jane@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .matches;
    assert!(matches.is_empty());
    // Erased records cannot be changed.
    let result = update(
        &app,
        &acme.admin_key,
        pb::Customer {
            name: c.name.clone(),
            given_name: "X".into(),
            ..Default::default()
        },
        &["given_name"],
    )
    .await;
    assert_error(result, Code::FailedPrecondition, "CUSTOMER_ERASED");
}

fn grant_request(
    parent: &str,
    grantee: &Org,
    level: pb::AccessLevel,
    fields: &[&str],
) -> pb::CreateGrantRequest {
    pb::CreateGrantRequest {
        parent: parent.into(),
        grant: Some(pb::Grant {
            grantee: grantee.name.clone(),
            level: level as i32,
            fields: fields.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

async fn batch_grant(
    app: &TestApp,
    owner: &Org,
    requests: Vec<pb::CreateGrantRequest>,
    request_id: &str,
) -> Result<Vec<pb::Grant>, Status> {
    app.sharing(&owner.admin_key)
        .batch_create_grants(pb::BatchCreateGrantsRequest {
            parent: String::new(),
            requests,
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().grants)
}

async fn batch_revoke(
    app: &TestApp,
    key: &str,
    names: &[&str],
    request_id: &str,
) -> Result<Vec<pb::Grant>, Status> {
    app.sharing(key)
        .batch_revoke_grants(pb::BatchRevokeGrantsRequest {
            parent: String::new(),
            names: names.iter().map(|n| n.to_string()).collect(),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().grants)
}

fn grant_events(events: &[pb::Event]) -> usize {
    events
        .iter()
        .filter(|e| e.r#type.starts_with("grant."))
        .count()
}

/// A vendor, a distributor, a retailer and another retailer, no partnerships yet.
async fn network(app: &TestApp) -> [Org; 4] {
    [
        app.create_org("acme", pb::OrganizationKind::Vendor).await,
        app.create_org("dist", pb::OrganizationKind::Distributor)
            .await,
        app.create_org("shop", pb::OrganizationKind::Retailer).await,
        app.create_org("stranger", pb::OrganizationKind::Retailer)
            .await,
    ]
}

async fn grants_are_created_and_revoked_in_batches_all_or_none(backend: Backend) {
    use crate::events::feed;
    use pb::AccessLevel::{Read, ReadWrite};
    let app = spawn_app(backend).await;
    let [acme, dist, shop, stranger] = network(&app).await;
    let rival = app.create_org("rival", pb::OrganizationKind::Vendor).await;
    app.partner(&acme, &dist).await;
    app.partner(&acme, &shop).await;
    app.partner(&rival, &dist).await;
    let c1 = create(&app, &acme, person("Ann", "One", "ann@example.com")).await;
    let c2 = create(&app, &acme, person("Bob", "Two", "bob@example.com")).await;
    let c3 = create(&app, &acme, person("Cy", "Three", "cy@example.com")).await;
    let theirs = create(&app, &rival, person("Di", "Four", "di@example.com")).await;

    // Three grants in one call, answered in order; each works as a single grant would.
    let requests = vec![
        grant_request(&c1.name, &dist, Read, &["display_name"]),
        grant_request(&c2.name, &dist, ReadWrite, &[]),
        grant_request(&c3.name, &shop, Read, &[]),
    ];
    let made = batch_grant(&app, &acme, requests.clone(), "batch-1")
        .await
        .expect("batch create");
    assert_eq!(made.len(), 3);
    assert!(made[0].name.starts_with(&format!("{}/grants/", c1.name)));
    assert_eq!(
        (made[1].grantee.as_str(), made[1].level),
        (dist.name.as_str(), ReadWrite as i32)
    );
    assert_eq!(made[2].grantee, shop.name);
    let seen = get(&app, &dist.read_key, &c1.name).await.expect("granted");
    assert_eq!(seen.given_name, "", "only display_name was granted");
    get(&app, &shop.read_key, &c3.name).await.expect("granted");
    get(&app, &shop.read_key, &c1.name)
        .await
        .expect_err("not granted to shop");
    assert_eq!(grant_events(&feed(&app, &dist.read_key).await), 2);
    // The same request id replays the answer and grants nothing more.
    let again = batch_grant(&app, &acme, requests, "batch-1")
        .await
        .expect("replay");
    assert_eq!(again, made);
    assert_eq!(grant_events(&feed(&app, &dist.read_key).await), 2);

    // All or none: the second request fails (no partnership), so the first, valid on
    // its own, is not made either; the failure names the request.
    let before = feed(&app, &acme.read_key).await.len();
    let failed = batch_grant(
        &app,
        &acme,
        vec![
            grant_request(&c1.name, &shop, Read, &[]),
            grant_request(&c2.name, &stranger, Read, &[]),
        ],
        "",
    )
    .await;
    let status = assert_error(failed, Code::FailedPrecondition, "NO_ACTIVE_PARTNERSHIP");
    assert!(status.message().starts_with("requests[1]: "), "{status:?}");
    get(&app, &shop.read_key, &c1.name)
        .await
        .expect_err("the batch was rolled back");
    assert_eq!(feed(&app, &acme.read_key).await.len(), before, "no events");

    // The walls: another owner's customer reads as a customer that does not exist, and
    // a partner with READ_WRITE may not grant what it was granted.
    let foreign = batch_grant(
        &app,
        &acme,
        vec![grant_request(&theirs.name, &dist, Read, &[])],
        "",
    )
    .await;
    let ghost = batch_grant(
        &app,
        &acme,
        vec![grant_request(
            "customers/00000000-0000-7000-8000-000000000000",
            &dist,
            Read,
            &[],
        )],
        "",
    )
    .await;
    let (foreign, ghost) = (foreign.unwrap_err(), ghost.unwrap_err());
    assert_eq!(
        (foreign.code(), ghost.code()),
        (Code::NotFound, Code::NotFound)
    );
    assert!(
        foreign.message().starts_with("requests[0]: "),
        "{foreign:?}"
    );
    let regrant = app
        .sharing(&dist.admin_key)
        .batch_create_grants(pb::BatchCreateGrantsRequest {
            requests: vec![grant_request(&c2.name, &shop, Read, &[])],
            ..Default::default()
        })
        .await;
    assert_error(regrant, Code::PermissionDenied, "NOT_CUSTOMER_OWNER");

    // Bad input: every violation, each named by its item; nothing is written.
    let mut with_id = grant_request(&c1.name, &shop, Read, &[]);
    with_id.request_id = "inner".into();
    let mut bad_level = grant_request("", &dist, Read, &[]);
    bad_level.grant.as_mut().unwrap().level = 0;
    let invalid = app
        .sharing(&acme.admin_key)
        .batch_create_grants(pb::BatchCreateGrantsRequest {
            parent: c1.name.clone(),
            requests: vec![
                with_id,
                bad_level,
                grant_request(&c2.name, &shop, Read, &[]),
                grant_request("", &shop, Read, &[]),
            ],
            request_id: String::new(),
        })
        .await
        .expect_err("invalid");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&invalid),
        [
            "requests[0].request_id",
            "requests[1].grant.level",
            "requests[2].parent",
            "requests[3].grant.grantee"
        ],
        "{invalid:?}"
    );
    for requests in [
        vec![],
        vec![grant_request(&c1.name, &shop, Read, &[]); 1001],
    ] {
        let status = batch_grant(&app, &acme, requests, "")
            .await
            .expect_err("out of bounds");
        assert_eq!(violated_fields(&status), ["requests"]);
    }

    // Revoking in a batch: all or none too.
    let names = [made[0].name.as_str(), made[1].name.as_str()];
    let revoked = batch_revoke(&app, &acme.admin_key, &names, "revoke-1")
        .await
        .expect("batch revoke");
    assert_eq!(revoked.len(), 2);
    assert!(
        revoked
            .iter()
            .all(|g| g.state == pb::grant::State::Revoked as i32)
    );
    get(&app, &dist.read_key, &c1.name)
        .await
        .expect_err("revoked");
    let replay = batch_revoke(&app, &acme.admin_key, &names, "revoke-1")
        .await
        .expect("replay");
    assert_eq!(replay, revoked);
    let half = batch_revoke(
        &app,
        &acme.admin_key,
        &[made[2].name.as_str(), made[0].name.as_str()],
        "",
    )
    .await;
    let status = assert_error(half, Code::FailedPrecondition, "GRANT_REVOKED");
    assert!(status.message().starts_with("names[1]: "), "{status:?}");
    get(&app, &shop.read_key, &c3.name)
        .await
        .expect("the live grant was not revoked: the batch rolled back");
    let twice = batch_revoke(
        &app,
        &acme.admin_key,
        &[made[2].name.as_str(), made[2].name.as_str(), "customers/x"],
        "",
    )
    .await
    .expect_err("invalid");
    assert_eq!(violated_fields(&twice), ["names[1]", "names[2]"]);
    let not_owner = batch_revoke(&app, &shop.admin_key, &[made[2].name.as_str()], "").await;
    assert_error(not_owner, Code::PermissionDenied, "NOT_CUSTOMER_OWNER");

    // The most a call carries: 1,000 customers granted at once.
    let many: Vec<pb::Customer> = (0..1000)
        .map(|i| {
            let mut c = person("Many", &format!("M{i}"), "");
            c.external_id = format!("m-{i}");
            c
        })
        .collect();
    let listed = app
        .customers(&acme.admin_key)
        .batch_upsert_customers(pb::BatchUpsertCustomersRequest {
            customers: many,
            request_id: String::new(),
        })
        .await
        .expect("upsert 1,000")
        .into_inner()
        .customers;
    assert_eq!(listed.len(), 1000);
    let requests = listed
        .iter()
        .map(|c| grant_request(&c.name, &shop, Read, &["display_name"]))
        .collect();
    let made = batch_grant(&app, &acme, requests, "")
        .await
        .expect("1,000 grants");
    assert_eq!(made.len(), 1000);
    get(&app, &shop.read_key, &listed[999].name)
        .await
        .expect("the last one granted");
}

async fn create_preset(
    app: &TestApp,
    org: &Org,
    display_name: &str,
    fields: &[&str],
) -> Result<pb::FieldPreset, Status> {
    app.sharing(&org.admin_key)
        .create_field_preset(pb::CreateFieldPresetRequest {
            parent: org.name.clone(),
            field_preset: Some(pb::FieldPreset {
                display_name: display_name.into(),
                fields: fields.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

fn through(parent: &str, grantee: &Org, preset: &str) -> pb::CreateGrantRequest {
    let mut r = grant_request(parent, grantee, pb::AccessLevel::Read, &[]);
    r.grant.as_mut().unwrap().preset = preset.into();
    r
}

fn preset_events(events: &[pb::Event]) -> Vec<&pb::Event> {
    events
        .iter()
        .filter(|e| e.r#type == "field_preset.updated")
        .collect()
}

async fn a_field_preset_shares_its_fields_and_a_change_reaches_every_grant_with_one_event_each(
    backend: Backend,
) {
    use crate::events::feed;
    use pb::AccessLevel::Read;
    let app = spawn_app(backend).await;
    let [acme, dist, shop, stranger] = network(&app).await;
    app.partner(&acme, &dist).await;
    app.partner(&acme, &shop).await;
    let suspended = app.partner(&acme, &stranger).await;
    let mut customers = vec![];
    for (given, email) in [
        ("Ann", "ann@example.com"),
        ("Bob", "bob@example.com"),
        ("Cy", "cy@example.com"),
    ] {
        customers.push(create(&app, &acme, person(given, "Doe", email)).await);
    }

    // Presets are checked as they are made, and are their owner's alone.
    let contact = create_preset(&app, &acme, "Contact only", &["display_name", "emails"])
        .await
        .expect("create");
    assert!(contact.name.starts_with("organizations/acme/fieldPresets/"));
    assert_eq!(contact.fields, ["display_name", "emails"]);
    let bad = create_preset(&app, &acme, " ", &[]).await.unwrap_err();
    assert_eq!(
        violated_fields(&bad),
        ["field_preset.display_name", "field_preset.fields"]
    );
    let bad = create_preset(&app, &acme, "Odd", &["shoe_size"])
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["field_preset.fields"]);
    let elsewhere = app
        .sharing(&dist.admin_key)
        .create_field_preset(pb::CreateFieldPresetRequest {
            parent: acme.name.clone(),
            field_preset: Some(pb::FieldPreset {
                display_name: "Mole".into(),
                fields: vec!["emails".into()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    assert_error(elsewhere, Code::NotFound, "NOT_FOUND");
    let get = async |key: &str| {
        app.sharing(key)
            .get_field_preset(pb::GetFieldPresetRequest {
                name: contact.name.clone(),
            })
            .await
    };
    assert_eq!(get(&acme.read_key).await.unwrap().into_inner(), contact);
    assert_eq!(
        get(&dist.read_key).await.unwrap_err().code(),
        Code::NotFound
    );
    let listed = app
        .sharing(&acme.read_key)
        .list_field_presets(pb::ListFieldPresetsRequest {
            parent: acme.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .field_presets;
    assert_eq!(listed, std::slice::from_ref(&contact));

    // Grants through it share its fields; a preset is named instead of fields, and
    // must be the owner's.
    let theirs = create_preset(&app, &dist, "Dist's", &["emails"])
        .await
        .unwrap();
    let mut both = through(&customers[0].name, &dist, &contact.name);
    both.grant.as_mut().unwrap().fields = vec!["emails".into()];
    let invalid = batch_grant(
        &app,
        &acme,
        vec![both, through(&customers[1].name, &dist, &theirs.name)],
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(
        violated_fields(&invalid),
        ["requests[0].grant.fields", "requests[1].grant.preset"]
    );
    let ghost = format!(
        "{}/fieldPresets/00000000-0000-7000-8000-000000000000",
        acme.name
    );
    let missing = batch_grant(
        &app,
        &acme,
        vec![through(&customers[0].name, &dist, &ghost)],
        "",
    )
    .await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    let made = batch_grant(
        &app,
        &acme,
        vec![
            through(&customers[0].name, &dist, &contact.name),
            through(&customers[1].name, &dist, &contact.name),
            through(&customers[2].name, &dist, &contact.name),
            through(&customers[0].name, &shop, &contact.name),
            through(&customers[1].name, &stranger, &contact.name),
        ],
        "",
    )
    .await
    .expect("grants through the preset");
    assert!(made.iter().all(|g| g.preset == contact.name));
    assert_eq!(made[0].fields, ["display_name", "emails"]);
    // An explicit grant beside them is left alone by the preset's changes.
    grant(
        &app,
        &acme,
        &customers[1].name,
        &shop,
        Read,
        &["display_name", "emails"],
    )
    .await
    .unwrap();
    let seen = get_customer(&app, &dist.read_key, &customers[0].name).await;
    assert_eq!((seen.given_name.as_str(), seen.emails.len()), ("", 1));
    // A partner whose partnership is suspended hears nothing of the owner's.
    app.partnerships(&stranger.admin_key)
        .suspend_partnership(pb::SuspendPartnershipRequest {
            name: suspended.name.clone(),
            reason: "audit".into(),
            ..Default::default()
        })
        .await
        .expect("suspend");

    // A change reaches every grant at once, with one event per organization that
    // holds grants through it (and its owner), not one per customer.
    let heads: Vec<usize> = {
        let mut v = vec![];
        for org in [&acme, &dist, &shop, &stranger] {
            v.push(preset_events(&feed(&app, &org.read_key).await).len());
        }
        v
    };
    assert_eq!(heads, [0, 0, 0, 0]);
    let update = async |etag: &str| {
        app.sharing(&acme.admin_key)
            .update_field_preset(pb::UpdateFieldPresetRequest {
                field_preset: Some(pb::FieldPreset {
                    name: contact.name.clone(),
                    fields: vec!["display_name".into(), "given_name".into()],
                    etag: etag.into(),
                    ..Default::default()
                }),
                update_mask: mask(&["fields"]),
                request_id: String::new(),
            })
            .await
    };
    let changed = update(&contact.etag).await.expect("update").into_inner();
    assert_eq!(changed.fields, ["display_name", "given_name"]);
    assert_ne!(changed.etag, contact.etag);
    assert_eq!(
        update(&contact.etag).await.unwrap_err().code(),
        Code::Aborted,
        "a stale etag"
    );
    for c in &customers {
        let seen = get_customer(&app, &dist.read_key, &c.name).await;
        assert_eq!(
            (seen.given_name.as_str(), seen.emails.len()),
            (c.given_name.as_str(), 0),
            "the preset's new fields, at once"
        );
    }
    let seen = get_customer(&app, &shop.read_key, &customers[1].name).await;
    assert_eq!(seen.emails.len(), 1, "the explicit grant kept its fields");
    assert_eq!(seen.given_name, "");
    for (org, expected) in [(&acme, 1), (&dist, 1), (&shop, 1), (&stranger, 0)] {
        let events = feed(&app, &org.read_key).await;
        let heard = preset_events(&events);
        assert_eq!(heard.len(), expected, "{}", org.name);
        if let Some(e) = heard.first() {
            match &e.payload {
                Some(pb::event::Payload::FieldPreset(p)) => {
                    assert_eq!(
                        (p.name.as_str(), p.fields.len()),
                        (contact.name.as_str(), 2)
                    );
                    // A grantee learns the fields, not the owner's label for them.
                    let label = if org.name == acme.name {
                        "Contact only"
                    } else {
                        ""
                    };
                    assert_eq!(p.display_name, label, "{}", org.name);
                }
                other => panic!("expected the preset, got {other:?}"),
            }
        }
    }
    // A new label alone is the owner's business.
    app.sharing(&acme.admin_key)
        .update_field_preset(pb::UpdateFieldPresetRequest {
            field_preset: Some(pb::FieldPreset {
                name: contact.name.clone(),
                display_name: "Partners being phased out".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
            request_id: String::new(),
        })
        .await
        .expect("relabel");
    for (org, expected) in [(&acme, 2), (&dist, 1), (&shop, 1)] {
        let events = feed(&app, &org.read_key).await;
        assert_eq!(preset_events(&events).len(), expected, "{}", org.name);
    }

    // In use, it cannot be deleted; once its grants are revoked, it can.
    let delete = async || {
        app.sharing(&acme.admin_key)
            .delete_field_preset(pb::DeleteFieldPresetRequest {
                name: contact.name.clone(),
                ..Default::default()
            })
            .await
    };
    assert_error(delete().await, Code::FailedPrecondition, "PRESET_IN_USE");
    let names: Vec<&str> = made.iter().map(|g| g.name.as_str()).collect();
    batch_revoke(&app, &acme.admin_key, &names, "")
        .await
        .expect("revoke");
    delete().await.expect("delete");
    assert_eq!(
        get(&acme.read_key).await.unwrap_err().code(),
        Code::NotFound
    );
}

async fn get_customer(app: &TestApp, key: &str, name: &str) -> pb::Customer {
    get(app, key, name).await.expect("visible")
}

/// Grants made through a preset while its fields change: whichever commits first, no
/// live grant is left with the fields the preset had before (on PostgreSQL the grant's
/// read of the preset waits for the change, or the change waits for the grant).
async fn a_preset_change_racing_grants_through_it_leaves_none_with_old_fields(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&acme, &dist).await;
    let preset = create_preset(&app, &acme, "Rotating", &["display_name"])
        .await
        .unwrap();
    let choices = [
        vec!["display_name", "emails"],
        vec!["display_name", "phones"],
    ];
    let mut all = vec![];
    for round in 0..12 {
        let mut batch = vec![];
        for i in 0..4 {
            let c = create(&app, &acme, person("Race", &format!("R{round}x{i}"), "")).await;
            batch.push(through(&c.name, &dist, &preset.name));
            all.push(c.name);
        }
        let fields = &choices[round % 2];
        let mut client = app.sharing(&acme.admin_key);
        let change = client.update_field_preset(pb::UpdateFieldPresetRequest {
            field_preset: Some(pb::FieldPreset {
                name: preset.name.clone(),
                fields: fields.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            }),
            update_mask: mask(&["fields"]),
            request_id: String::new(),
        });
        let (changed, granted) = tokio::join!(change, batch_grant(&app, &acme, batch, ""));
        changed.expect("change");
        granted.expect("grants");
    }
    let now = app
        .sharing(&acme.read_key)
        .get_field_preset(pb::GetFieldPresetRequest {
            name: preset.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .fields;
    for name in &all {
        let grants = app
            .sharing(&acme.read_key)
            .list_grants(pb::ListGrantsRequest {
                parent: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .grants;
        assert_eq!(grants.len(), 1);
        assert_eq!(
            grants[0].fields, now,
            "{name} kept fields the preset no longer has"
        );
    }
}
