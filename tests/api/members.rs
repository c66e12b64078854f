use liaison::pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::helpers::*;

crate::on_both_backends!(
    an_admin_manages_its_members,
    invalid_members_are_refused_field_by_field,
    a_members_email_is_unique_in_its_organization,
    another_organizations_members_are_not_found,
    stale_etags_are_rejected_on_update_and_delete,
    members_are_listed_page_by_page,
);

fn jane() -> pb::Member {
    pb::Member {
        display_name: "Jane Doe".into(),
        email: " Jane.Doe@ACME.example ".into(),
        role: pb::MemberRole::Coordinator as i32,
        time_zone: "Europe/Berlin".into(),
        ..Default::default()
    }
}

async fn create(app: &TestApp, org: &Org, member: pb::Member) -> Result<pb::Member, tonic::Status> {
    app.members(&org.admin_key)
        .create_member(pb::CreateMemberRequest {
            parent: org.name.clone(),
            member: Some(member),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn an_admin_manages_its_members(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let member = create(&app, &acme, jane()).await.unwrap();
    assert!(member.name.starts_with("organizations/acme/members/"));
    assert_eq!(member.email, "jane.doe@acme.example");

    let got = app
        .members(&acme.read_key)
        .get_member(pb::GetMemberRequest {
            name: member.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, member);

    let updated = app
        .members(&acme.admin_key)
        .update_member(pb::UpdateMemberRequest {
            member: Some(pb::Member {
                name: member.name.clone(),
                role: pb::MemberRole::Manager as i32,
                time_zone: "America/New_York".into(),
                etag: member.etag.clone(),
                ..Default::default()
            }),
            update_mask: None, // AIP-134: no mask means the fields that are set.
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // The two fields set change; everything else is as created.
    let expected = pb::Member {
        role: pb::MemberRole::Manager as i32,
        time_zone: "America/New_York".into(),
        etag: updated.etag.clone(),
        update_time: updated.update_time,
        ..member.clone()
    };
    assert_eq!(updated, expected);
    assert_ne!(updated.etag, member.etag);
    assert_ne!(updated.update_time, member.update_time);
    // And that is what the hub stored: Get and List read it back.
    let got = app
        .members(&acme.read_key)
        .get_member(pb::GetMemberRequest {
            name: member.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, expected);
    let listed = app
        .members(&acme.read_key)
        .list_members(pb::ListMembersRequest {
            parent: acme.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.members, [expected]);

    app.members(&acme.admin_key)
        .delete_member(pb::DeleteMemberRequest {
            name: member.name.clone(),
            etag: updated.etag,
            request_id: String::new(),
        })
        .await
        .unwrap();
    let gone = app
        .members(&acme.read_key)
        .get_member(pb::GetMemberRequest {
            name: member.name.clone(),
        })
        .await;
    assert_error(gone, Code::NotFound, "NOT_FOUND");
}

async fn invalid_members_are_refused_field_by_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let bad = pb::Member {
        display_name: " ".into(),
        email: "jane@@example".into(),
        role: 42,
        time_zone: "Mars/Olympus".into(),
        ..Default::default()
    };
    let status = assert_error(
        create(&app, &acme, bad).await,
        Code::InvalidArgument,
        "FIELD_REQUIRED",
    );
    assert_eq!(
        violated_fields(&status),
        [
            "member.display_name",
            "member.email",
            "member.role",
            "member.time_zone"
        ]
    );
    assert!(
        status.message().contains("time zone"),
        "{}",
        status.message()
    );

    let listed = app
        .members(&acme.read_key)
        .list_members(pb::ListMembersRequest {
            parent: acme.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.members.is_empty());
}

async fn a_members_email_is_unique_in_its_organization(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    create(&app, &acme, jane()).await.unwrap();
    let mut same = jane();
    same.email = "JANE.DOE@acme.example".into();
    assert_error(
        create(&app, &acme, same.clone()).await,
        Code::AlreadyExists,
        "MEMBER_EMAIL_TAKEN",
    );
    // Another organization may have its own Jane with the same address.
    create(&app, &shop, same)
        .await
        .expect("unique per organization only");

    // Changing an email to a taken one is refused as well.
    let mut john = jane();
    john.email = "john@acme.example".into();
    let john = create(&app, &acme, john).await.unwrap();
    let clash = app
        .members(&acme.admin_key)
        .update_member(pb::UpdateMemberRequest {
            member: Some(pb::Member {
                name: john.name.clone(),
                email: "jane.doe@acme.example".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["email".into()],
            }),
            request_id: String::new(),
        })
        .await;
    assert_error(clash, Code::AlreadyExists, "MEMBER_EMAIL_TAKEN");
    let unchanged = app
        .members(&acme.read_key)
        .get_member(pb::GetMemberRequest { name: john.name })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged.email, "john@acme.example");
    assert_eq!(
        unchanged.etag, john.etag,
        "the refused update wrote nothing"
    );
}

async fn another_organizations_members_are_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let member = create(&app, &acme, jane()).await.unwrap();

    let theirs = app
        .members(&shop.admin_key)
        .get_member(pb::GetMemberRequest {
            name: member.name.clone(),
        })
        .await;
    let status_theirs = assert_error(theirs, Code::NotFound, "NOT_FOUND");
    let missing_name = format!("organizations/acme/members/{}", uuid::Uuid::now_v7());
    let missing = app
        .members(&shop.admin_key)
        .get_member(pb::GetMemberRequest {
            name: missing_name.clone(),
        })
        .await;
    let status_missing = assert_error(missing, Code::NotFound, "NOT_FOUND");
    // Indistinguishable but for the name the caller sent.
    assert_eq!(
        status_theirs.message().replace(&member.name, "X"),
        status_missing.message().replace(&missing_name, "X")
    );

    let list = app
        .members(&shop.read_key)
        .list_members(pb::ListMembersRequest {
            parent: acme.name.clone(),
            ..Default::default()
        })
        .await;
    assert_error(list, Code::NotFound, "NOT_FOUND");
    let delete = app
        .members(&shop.admin_key)
        .delete_member(pb::DeleteMemberRequest {
            name: member.name.clone(),
            ..Default::default()
        })
        .await;
    assert_error(delete, Code::NotFound, "NOT_FOUND");
    app.members(&acme.read_key)
        .get_member(pb::GetMemberRequest { name: member.name })
        .await
        .expect("still there");
}

async fn stale_etags_are_rejected_on_update_and_delete(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let member = create(&app, &acme, jane()).await.unwrap();
    let rename = |name: &str, etag: &str| pb::UpdateMemberRequest {
        member: Some(pb::Member {
            name: member.name.clone(),
            display_name: name.into(),
            etag: etag.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["display_name".into()],
        }),
        request_id: String::new(),
    };
    app.members(&acme.admin_key)
        .update_member(rename("Jane D.", &member.etag))
        .await
        .unwrap();
    let stale = app
        .members(&acme.admin_key)
        .update_member(rename("Jane X.", &member.etag))
        .await;
    assert_error(stale, Code::Aborted, "STALE_ETAG");
    let stale_delete = app
        .members(&acme.admin_key)
        .delete_member(pb::DeleteMemberRequest {
            name: member.name.clone(),
            etag: member.etag.clone(),
            request_id: String::new(),
        })
        .await;
    assert_error(stale_delete, Code::Aborted, "STALE_ETAG");
    let now = app
        .members(&acme.read_key)
        .get_member(pb::GetMemberRequest {
            name: member.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.display_name, "Jane D.");
}

async fn members_are_listed_page_by_page(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let mut created = vec![];
    for i in 0..5 {
        let mut m = jane();
        m.email = format!("person{i}@acme.example");
        created.push(create(&app, &acme, m).await.unwrap().name);
    }
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let page = app
            .members(&acme.read_key)
            .list_members(pb::ListMembersRequest {
                parent: acme.name.clone(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.members.into_iter().map(|m| m.name));
        if page.next_page_token.is_empty() {
            break;
        }
        // A token is bound to its parent.
        let elsewhere = app
            .members(&app.operator_key)
            .list_members(pb::ListMembersRequest {
                parent: "organizations/other".into(),
                page_size: 2,
                page_token: page.next_page_token.clone(),
            })
            .await;
        assert_error(elsewhere, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
        token = page.next_page_token;
    }
    assert_eq!(seen, created);
}
