//! Segments and sharing rules: saved filters with live membership, and rules that
//! share a segment (or every customer) with one partner or every partner of a
//! relationship, evaluated at every read.

use liaison::pb;
use tonic::{Code, Status};

use crate::customers::{create, list, names_of, person};
use crate::events::feed;
use crate::helpers::*;
use crate::sharing::{get, grant, update};

crate::on_both_backends!(
    segments_count_and_list_their_members_as_they_change,
    a_rule_shares_its_segment_at_every_read_and_stops_at_once,
    a_relationship_rule_reaches_every_partner_of_that_relationship_now_and_later,
    rules_and_grants_page_as_one_list_and_odd_segments_share_nothing,
    segments_on_interactions_follow_each_purchase,
    a_merge_that_moves_a_customer_out_of_a_shared_segment_tells_the_partner,
    segments_on_open_cases_and_the_owners_overlay_follow_them,
);

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn tagged(given: &str, tags: &[&str]) -> pb::Customer {
    let mut c = person(
        given,
        "Doe",
        &format!("{}@example.com", given.to_lowercase()),
    );
    c.tags = tags.iter().map(|t| t.to_string()).collect();
    c
}

pub(crate) async fn create_segment(
    app: &TestApp,
    org: &Org,
    display_name: &str,
    filter: &str,
) -> Result<pb::Segment, Status> {
    app.sharing(&org.admin_key)
        .create_segment(pb::CreateSegmentRequest {
            parent: org.name.clone(),
            segment: Some(pb::Segment {
                display_name: display_name.into(),
                filter: filter.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

pub(crate) async fn count(app: &TestApp, key: &str, segment: &str) -> Result<i64, Status> {
    app.sharing(key)
        .count_segment_members(pb::CountSegmentMembersRequest {
            name: segment.into(),
        })
        .await
        .map(|r| r.into_inner().count)
}

/// Every member, `page_size` at a time.
async fn members(app: &TestApp, key: &str, segment: &str, page_size: i32) -> Vec<String> {
    let mut names = vec![];
    let mut page_token = String::new();
    loop {
        let page = app
            .sharing(key)
            .list_segment_members(pb::ListSegmentMembersRequest {
                name: segment.into(),
                page_size,
                page_token,
            })
            .await
            .expect("list members")
            .into_inner();
        names.extend(names_of(&page.customers));
        if page.next_page_token.is_empty() {
            return names;
        }
        page_token = page.next_page_token;
    }
}

fn set_tags(name: &str, tags: &[&str]) -> pb::Customer {
    pb::Customer {
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

async fn segments_count_and_list_their_members_as_they_change(backend: Backend) {
    use pb::AccessLevel::Read;
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&dist, &acme).await;
    let ann = create(&app, &acme, tagged("Ann", &["nordics"])).await;
    let bob = create(&app, &acme, tagged("Bob", &["nordics", "vip"])).await;
    let mut firm = tagged("Firm", &["nordics"]);
    firm.kind = pb::CustomerKind::Company as i32;
    firm.given_name.clear();
    firm.family_name.clear();
    firm.legal_name = "Firm AB".into();
    let firm = create(&app, &acme, firm).await;
    create(&app, &acme, tagged("Cy", &["dach"])).await;
    // A customer of the distributor's, shared with acme with its tags: acme sees it,
    // so it may be a member of acme's segments.
    let theirs = create(&app, &dist, tagged("Dee", &["nordics"])).await;
    grant(
        &app,
        &dist,
        &theirs.name,
        &acme,
        Read,
        &["display_name", "tags"],
    )
    .await
    .unwrap();
    // And one shared without its tags: a filter on tags never matches it for acme.
    let hidden = create(&app, &dist, tagged("Eve", &["nordics"])).await;
    grant(&app, &dist, &hidden.name, &acme, Read, &["display_name"])
        .await
        .unwrap();

    // Checked as they are made: a filter of the ListCustomers language, at least one
    // comparison, not on external ids.
    for (display_name, filter, fields) in [
        ("", "tag = nordics", vec!["segment.display_name"]),
        ("Empty", "", vec!["segment.filter"]),
        ("Ids", "external_id = C-1", vec!["segment.filter"]),
        ("Or", "tag = a OR tag = b", vec!["segment.filter"]),
        ("Shoe", "shoe_size = 42", vec!["segment.filter"]),
    ] {
        let bad = create_segment(&app, &acme, display_name, filter)
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{filter}");
        assert_eq!(violated_fields(&bad), fields, "{filter}");
    }
    // Kept in canonical form: a phone in E.164, whatever region it was read in.
    let by_phone = create_segment(&app, &acme, "By phone", "phone = \"+1 650-253-0000\"")
        .await
        .unwrap();
    assert_eq!(by_phone.filter, r#"phone = "+16502530000""#);

    let nordics = create_segment(&app, &acme, "Nordics", "tag:nordics")
        .await
        .unwrap();
    assert!(nordics.name.starts_with("organizations/acme/segments/"));
    assert_eq!(nordics.filter, r#"tag = "nordics""#);
    let expected = vec![
        ann.name.clone(),
        bob.name.clone(),
        firm.name.clone(),
        theirs.name.clone(),
    ];
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(count(&app, &acme.read_key, &nordics.name).await.unwrap(), 4);
    let mut listed = members(&app, &acme.read_key, &nordics.name, 1).await;
    listed.sort();
    assert_eq!(listed, sorted, "paged one at a time, each member once");
    // The same members ListCustomers finds with the same filter.
    let mut same = names_of(&list(&app, &acme.read_key, "tag = nordics").await);
    same.sort();
    assert_eq!(same, sorted);

    // Membership is live: a customer leaves when its tags change, another enters.
    update(
        &app,
        &acme.admin_key,
        set_tags(&bob.name, &["vip"]),
        &["tags"],
    )
    .await
    .unwrap();
    assert_eq!(count(&app, &acme.read_key, &nordics.name).await.unwrap(), 3);
    let eve = create(&app, &acme, tagged("Eve", &["nordics"])).await;
    assert_eq!(count(&app, &acme.read_key, &nordics.name).await.unwrap(), 4);
    assert!(
        members(&app, &acme.read_key, &nordics.name, 50)
            .await
            .contains(&eve.name)
    );
    // A grant revoked takes the partner's customer out at once.
    let grants = app
        .sharing(&dist.read_key)
        .list_grants(pb::ListGrantsRequest {
            parent: theirs.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    app.sharing(&dist.admin_key)
        .revoke_grant(pb::RevokeGrantRequest {
            name: grants[0].name.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(count(&app, &acme.read_key, &nordics.name).await.unwrap(), 3);

    // A change of filter changes the members; a stale etag is refused.
    let companies = app
        .sharing(&acme.admin_key)
        .update_segment(pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                name: nordics.name.clone(),
                filter: "tag = nordics AND kind = COMPANY".into(),
                etag: nordics.etag.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["filter"]),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(companies.etag, nordics.etag);
    assert_eq!(
        members(&app, &acme.read_key, &nordics.name, 10).await,
        std::slice::from_ref(&firm.name)
    );
    let stale = app
        .sharing(&acme.admin_key)
        .update_segment(pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                name: nordics.name.clone(),
                display_name: "Late".into(),
                etag: nordics.etag.clone(),
                ..Default::default()
            }),
            update_mask: None,
            request_id: String::new(),
        })
        .await;
    assert_eq!(stale.unwrap_err().code(), Code::Aborted);

    // The owner's alone: another organization cannot tell it from one that does not
    // exist, nor count it.
    let ghost = format!(
        "{}/segments/00000000-0000-7000-8000-000000000000",
        acme.name
    );
    for name in [&nordics.name, &ghost] {
        let got = app
            .sharing(&dist.read_key)
            .get_segment(pb::GetSegmentRequest { name: name.clone() })
            .await;
        assert_eq!(got.unwrap_err().code(), Code::NotFound);
        assert_eq!(
            count(&app, &dist.read_key, name).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let listed = app
        .sharing(&acme.read_key)
        .list_segments(pb::ListSegmentsRequest {
            parent: acme.name.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.segments.len(), 1);
    assert!(
        !listed.next_page_token.is_empty(),
        "two segments, one a page"
    );
    app.sharing(&acme.admin_key)
        .delete_segment(pb::DeleteSegmentRequest {
            name: by_phone.name.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let gone = app
        .sharing(&acme.read_key)
        .get_segment(pb::GetSegmentRequest {
            name: by_phone.name.clone(),
        })
        .await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
}

async fn create_rule(
    app: &TestApp,
    owner: &Org,
    rule: pb::SharingRule,
) -> Result<pb::SharingRule, Status> {
    app.sharing(&owner.admin_key)
        .create_sharing_rule(pb::CreateSharingRuleRequest {
            parent: owner.name.clone(),
            sharing_rule: Some(rule),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

/// A READ rule of `owner` sharing `segment` (empty: every customer) with `grantee`,
/// with `fields`.
async fn share(
    app: &TestApp,
    owner: &Org,
    (display_name, segment): (&str, &str),
    grantee: &Org,
    fields: &[&str],
) -> pb::SharingRule {
    create_rule(
        app,
        owner,
        pb::SharingRule {
            display_name: display_name.into(),
            segment: segment.into(),
            grantee: grantee.name.clone(),
            level: pb::AccessLevel::Read as i32,
            fields: fields.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        },
    )
    .await
    .expect("create rule")
}

/// What `events` after the first `heads` are: type, resource and changed fields.
fn since(events: &[pb::Event], heads: usize) -> Vec<(&str, &str, Vec<String>)> {
    events[heads..]
        .iter()
        .map(|e| {
            (
                e.r#type.as_str(),
                e.resource.as_str(),
                e.changed_fields.clone(),
            )
        })
        .collect()
}

fn events_of<'a>(events: &'a [pb::Event], kind: &str) -> Vec<&'a pb::Event> {
    events.iter().filter(|e| e.r#type == kind).collect()
}

async fn update_rule(
    app: &TestApp,
    owner: &Org,
    rule: pb::SharingRule,
    paths: &[&str],
) -> Result<pb::SharingRule, Status> {
    app.sharing(&owner.admin_key)
        .update_sharing_rule(pb::UpdateSharingRuleRequest {
            sharing_rule: Some(rule),
            update_mask: mask(paths),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn a_rule_shares_its_segment_at_every_read_and_stops_at_once(backend: Backend) {
    use pb::AccessLevel::{Read, ReadWrite};
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let stranger = app
        .create_org("stranger", pb::OrganizationKind::Retailer)
        .await;
    let with_dist = app.partner(&acme, &dist).await;
    app.partner(&acme, &shop).await;
    let mut ann = tagged("Ann", &["nordics"]);
    ann.phones = vec![pb::PhoneContact {
        number: "+4930901820".into(),
        ..Default::default()
    }];
    let ann = create(&app, &acme, ann).await;
    let bob = create(&app, &acme, tagged("Bob", &["nordics"])).await;
    let cy = create(&app, &acme, tagged("Cy", &["dach"])).await;
    let nordics = create_segment(&app, &acme, "Nordics", "tag = nordics")
        .await
        .unwrap();

    // Checked as it is made.
    let rule = |grantee: &Org| pb::SharingRule {
        display_name: "Nordics to dist".into(),
        segment: nordics.name.clone(),
        grantee: grantee.name.clone(),
        level: Read as i32,
        fields: vec!["display_name".into(), "emails".into()],
        ..Default::default()
    };
    let bad = create_rule(
        &app,
        &acme,
        pb::SharingRule {
            display_name: String::new(),
            grantee: String::new(),
            level: 0,
            fields: vec!["shoe_size".into()],
            expire_time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        violated_fields(&bad),
        [
            "sharing_rule.display_name",
            "sharing_rule.level",
            "sharing_rule.fields",
            "sharing_rule.grantee"
        ]
    );
    let past = pb::SharingRule {
        expire_time: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        }),
        ..rule(&dist)
    };
    let bad = create_rule(&app, &acme, past).await.unwrap_err();
    assert_eq!(violated_fields(&bad), ["sharing_rule.expire_time"]);
    let theirs = create_segment(&app, &dist, "Theirs", "tag = x")
        .await
        .unwrap();
    let bad = create_rule(
        &app,
        &acme,
        pb::SharingRule {
            segment: theirs.name.clone(),
            ..rule(&dist)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&bad), ["sharing_rule.segment"]);
    assert_error(
        create_rule(&app, &acme, rule(&stranger)).await,
        Code::FailedPrecondition,
        "NO_ACTIVE_PARTNERSHIP",
    );

    let heads = feed(&app, &dist.read_key).await.len();
    let made = create_rule(&app, &acme, rule(&dist)).await.unwrap();
    assert!(made.name.starts_with("organizations/acme/sharingRules/"));
    assert_eq!(made.state, pb::sharing_rule::State::Active as i32);
    assert_eq!(made.segment_display_name, "Nordics");

    // One event for the partner, naming the rule and the segment, not one per
    // customer; none for a partner it does not reach.
    let news = feed(&app, &dist.read_key).await;
    assert_eq!(news.len() - heads, 1, "{news:#?}");
    let created = events_of(&news, "sharing_rule.created");
    let seen_rule = match &created[0].payload {
        Some(pb::event::Payload::SharingRule(r)) => r.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(seen_rule.name, made.name);
    assert_eq!(seen_rule.segment_display_name, "Nordics");
    assert!(
        seen_rule.etag.is_empty(),
        "the owner's etag stays the owner's"
    );
    assert!(events_of(&feed(&app, &shop.read_key).await, "sharing_rule.created").is_empty());

    // The partner reads the segment's customers through the rule's fields.
    let seen = get(&app, &dist.read_key, &ann.name).await.unwrap();
    assert_eq!(seen.display_name, "Ann Doe");
    assert_eq!(seen.emails.len(), 1);
    assert!(seen.phones.is_empty() && seen.tags.is_empty());
    assert_eq!(seen.access, pb::AccessLevel::Read as i32);
    assert_eq!(
        get(&app, &dist.read_key, &cy.name)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        get(&app, &shop.read_key, &ann.name)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let mut listed = names_of(&list(&app, &dist.read_key, "").await);
    listed.sort();
    let mut expected = vec![ann.name.clone(), bob.name.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    // A filter on a field the rule hides finds nothing through it.
    assert!(list(&app, &dist.read_key, "tag = nordics").await.is_empty());
    assert_eq!(
        names_of(&list(&app, &dist.read_key, "email = ann@example.com").await),
        std::slice::from_ref(&ann.name)
    );
    // A READ rule changes nothing.
    let mut change = set_tags(&ann.name, &[]);
    change.emails = vec![pb::EmailContact {
        address: "mole@example.com".into(),
        ..Default::default()
    }];
    assert_eq!(
        update(&app, &dist.admin_key, change, &["emails"])
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    // The grantee sees the rule, not the segment's filter; others cannot find it.
    let got = app
        .sharing(&dist.read_key)
        .get_sharing_rule(pb::GetSharingRuleRequest {
            name: made.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, seen_rule);
    let listed_rules = app
        .sharing(&dist.read_key)
        .list_sharing_rules(pb::ListSharingRulesRequest {
            parent: acme.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sharing_rules;
    assert_eq!(listed_rules, std::slice::from_ref(&seen_rule));
    let not_yours = app
        .sharing(&shop.read_key)
        .get_sharing_rule(pb::GetSharingRuleRequest {
            name: made.name.clone(),
        })
        .await;
    assert_eq!(not_yours.unwrap_err().code(), Code::NotFound);

    // Customers enter as they are created or changed into the segment, and leave as
    // they change out of it: one event for that customer.
    let heads = feed(&app, &dist.read_key).await.len();
    let dee = create(&app, &acme, tagged("Dee", &["nordics"])).await;
    update(
        &app,
        &acme.admin_key,
        set_tags(&cy.name, &["nordics"]),
        &["tags"],
    )
    .await
    .unwrap();
    update(
        &app,
        &acme.admin_key,
        set_tags(&bob.name, &["dach"]),
        &["tags"],
    )
    .await
    .unwrap();
    let news = feed(&app, &dist.read_key).await;
    let news = &news[heads..];
    let about: Vec<(&str, &str)> = news
        .iter()
        .map(|e| (e.r#type.as_str(), e.resource.as_str()))
        .collect();
    assert_eq!(
        about,
        [
            ("customer.created", dee.name.as_str()),
            ("customer.updated", cy.name.as_str()),
            ("customer.updated", bob.name.as_str()),
        ]
    );
    match &news[2].payload {
        Some(pb::event::Payload::Customer(c)) => {
            assert!(c.display_name.is_empty() && c.emails.is_empty(), "{c:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(get(&app, &dist.read_key, &dee.name).await.is_ok());
    assert!(get(&app, &dist.read_key, &cy.name).await.is_ok());
    assert_eq!(
        get(&app, &dist.read_key, &bob.name)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // A grant beside the rule adds up: the union of fields; writable only where a
    // READ_WRITE source shows the field.
    grant(&app, &acme, &ann.name, &dist, ReadWrite, &["phones"])
        .await
        .unwrap();
    let seen = get(&app, &dist.read_key, &ann.name).await.unwrap();
    assert_eq!((seen.emails.len(), seen.phones.len()), (1, 1));
    assert_eq!(seen.access, pb::AccessLevel::ReadWrite as i32);
    let mut phones = set_tags(&ann.name, &[]);
    phones.phones = vec![pb::PhoneContact {
        number: "+4930901821".into(),
        ..Default::default()
    }];
    update(&app, &dist.admin_key, phones, &["phones"])
        .await
        .expect("the grant lets dist change phones");
    let mut emails = set_tags(&ann.name, &[]);
    emails.emails = vec![pb::EmailContact {
        address: "mole@example.com".into(),
        ..Default::default()
    }];
    assert_error(
        update(&app, &dist.admin_key, emails, &["emails"]).await,
        Code::PermissionDenied,
        "FIELD_NOT_WRITABLE",
    );

    // A change of the rule reaches every customer at once, with one event.
    let heads = feed(&app, &dist.read_key).await.len();
    let wider = update_rule(
        &app,
        &acme,
        pb::SharingRule {
            name: made.name.clone(),
            fields: vec!["display_name".into(), "emails".into(), "tags".into()],
            etag: made.etag.clone(),
            ..Default::default()
        },
        &["fields"],
    )
    .await
    .unwrap();
    assert_eq!(feed(&app, &dist.read_key).await.len() - heads, 1);
    assert_eq!(
        get(&app, &dist.read_key, &dee.name).await.unwrap().tags,
        ["nordics"]
    );
    let stale = update_rule(
        &app,
        &acme,
        pb::SharingRule {
            name: made.name.clone(),
            display_name: "Late".into(),
            etag: made.etag.clone(),
            ..Default::default()
        },
        &["display_name"],
    )
    .await;
    assert_eq!(stale.unwrap_err().code(), Code::Aborted);

    // A suspended partnership ends access at once, and resuming restores it.
    let suspend = app
        .partnerships(&acme.admin_key)
        .suspend_partnership(pb::SuspendPartnershipRequest {
            name: with_dist.name.clone(),
            reason: "audit".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        get(&app, &dist.read_key, &dee.name)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert!(list(&app, &dist.read_key, "").await.is_empty());
    app.partnerships(&acme.admin_key)
        .resume_partnership(pb::ResumePartnershipRequest {
            name: suspend.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(get(&app, &dist.read_key, &dee.name).await.is_ok());

    // An expiry ends it when it comes.
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(1500);
    update_rule(
        &app,
        &acme,
        pb::SharingRule {
            name: made.name.clone(),
            expire_time: Some(prost_types::Timestamp {
                seconds: soon.as_second(),
                nanos: soon.subsec_nanosecond(),
            }),
            etag: wider.etag.clone(),
            ..Default::default()
        },
        &["expire_time"],
    )
    .await
    .unwrap();
    assert!(get(&app, &dist.read_key, &dee.name).await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    assert_eq!(
        get(&app, &dist.read_key, &dee.name)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // Ann stays visible through the grant alone, with the grant's fields.
    let seen = get(&app, &dist.read_key, &ann.name).await.unwrap();
    assert!(seen.emails.is_empty() && seen.phones.len() == 1);
    let current = app
        .sharing(&acme.read_key)
        .get_sharing_rule(pb::GetSharingRuleRequest {
            name: made.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    update_rule(
        &app,
        &acme,
        pb::SharingRule {
            name: made.name.clone(),
            etag: current.etag.clone(),
            ..Default::default()
        },
        &["expire_time"],
    )
    .await
    .expect("the expiry removed");
    assert!(get(&app, &dist.read_key, &dee.name).await.is_ok());

    // A segment a live rule shares cannot be deleted; a revocation ends the rule at
    // once, with one event, and frees the segment.
    assert_error(
        app.sharing(&acme.admin_key)
            .delete_segment(pb::DeleteSegmentRequest {
                name: nordics.name.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "SEGMENT_IN_USE",
    );
    let heads = feed(&app, &dist.read_key).await.len();
    let revoked = app
        .sharing(&acme.admin_key)
        .revoke_sharing_rule(pb::RevokeSharingRuleRequest {
            name: made.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.state, pb::sharing_rule::State::Revoked as i32);
    let news = feed(&app, &dist.read_key).await;
    assert_eq!(
        news[heads..]
            .iter()
            .map(|e| e.r#type.as_str())
            .collect::<Vec<_>>(),
        ["sharing_rule.revoked"]
    );
    assert_eq!(
        get(&app, &dist.read_key, &dee.name)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        names_of(&list(&app, &dist.read_key, "").await),
        std::slice::from_ref(&ann.name)
    );
    assert_error(
        update_rule(
            &app,
            &acme,
            pb::SharingRule {
                name: made.name.clone(),
                display_name: "Again".into(),
                ..Default::default()
            },
            &["display_name"],
        )
        .await,
        Code::FailedPrecondition,
        "RULE_REVOKED",
    );
    app.sharing(&acme.admin_key)
        .delete_segment(pb::DeleteSegmentRequest {
            name: nordics.name.clone(),
            ..Default::default()
        })
        .await
        .expect("no live rule shares it");
}

async fn a_relationship_rule_reaches_every_partner_of_that_relationship_now_and_later(
    backend: Backend,
) {
    use pb::AccessLevel::Read;
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let late = app.create_org("late", pb::OrganizationKind::Retailer).await;
    let other = app
        .create_org("other", pb::OrganizationKind::Retailer)
        .await;
    // acme SUPPLIES dist and shop; `other` services acme.
    app.partner(&acme, &dist).await;
    app.partner(&acme, &shop).await;
    let services = app
        .partnerships(&other.admin_key)
        .propose_partnership(pb::ProposePartnershipRequest {
            partnership: Some(pb::Partnership {
                recipient: acme.name.clone(),
                relationship: pb::Relationship::ServicesFor as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    app.partnerships(&acme.admin_key)
        .accept_partnership(pb::AcceptPartnershipRequest {
            name: services.name,
            ..Default::default()
        })
        .await
        .unwrap();
    let ann = create(&app, &acme, tagged("Ann", &[])).await;

    let both = pb::SharingRule {
        display_name: "Every customer to every customer of ours".into(),
        grantee: dist.name.clone(),
        relationship: pb::Relationship::Supplies as i32,
        level: Read as i32,
        ..Default::default()
    };
    let bad = create_rule(&app, &acme, both.clone()).await.unwrap_err();
    assert_eq!(violated_fields(&bad), ["sharing_rule.relationship"]);
    let made = create_rule(
        &app,
        &acme,
        pb::SharingRule {
            grantee: String::new(),
            fields: vec!["display_name".into()],
            ..both
        },
    )
    .await
    .unwrap();
    assert_eq!(made.relationship, pb::Relationship::Supplies as i32);
    assert!(made.segment.is_empty());
    for org in [&dist, &shop] {
        let events = feed(&app, &org.read_key).await;
        assert_eq!(events_of(&events, "sharing_rule.created").len(), 1);
        assert_eq!(
            get(&app, &org.read_key, &ann.name)
                .await
                .unwrap()
                .display_name,
            "Ann Doe"
        );
    }
    for org in [&other, &late] {
        assert!(events_of(&feed(&app, &org.read_key).await, "sharing_rule.created").is_empty());
        assert_eq!(
            get(&app, &org.read_key, &ann.name)
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
    }
    // A partner of that relationship from later is reached too, at once.
    app.partner(&acme, &late).await;
    assert_eq!(
        get(&app, &late.read_key, &ann.name)
            .await
            .unwrap()
            .display_name,
        "Ann Doe"
    );
    // Counting through a rule: acme's partner sees its customers in its own segment.
    let mine = create_segment(&app, &late, "Acme's", "owner = organizations/acme")
        .await
        .unwrap();
    assert_eq!(count(&app, &late.read_key, &mine.name).await.unwrap(), 1);
    assert_eq!(
        members(&app, &late.read_key, &mine.name, 10).await,
        std::slice::from_ref(&ann.name)
    );
}

/// Every page of `order_by` for `key`, `page_size` 1: the names in order.
async fn ordered(app: &TestApp, key: &str, order_by: &str) -> Vec<String> {
    let mut names = vec![];
    let mut page_token = String::new();
    loop {
        let page = app
            .customers(key)
            .list_customers(pb::ListCustomersRequest {
                page_size: 1,
                page_token,
                order_by: order_by.into(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        names.extend(page.customers.iter().map(|c| c.display_name.clone()));
        if page.next_page_token.is_empty() {
            return names;
        }
        page_token = page.next_page_token;
    }
}

async fn rules_and_grants_page_as_one_list_and_odd_segments_share_nothing(backend: Backend) {
    use pb::AccessLevel::Read;
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    let other = app
        .create_org("other", pb::OrganizationKind::Retailer)
        .await;
    app.partner(&acme, &dist).await;
    app.partner(&other, &acme).await;
    let mut made = vec![];
    for given in ["Dan", "Bea", "Eli", "Abe", "Cal"] {
        made.push(create(&app, &acme, tagged(given, &["x"])).await);
    }
    // Names shown by grants on two of them; a rule shares all five, emails only.
    for c in &made[..2] {
        grant(&app, &acme, &c.name, &dist, Read, &["display_name"])
            .await
            .unwrap();
    }
    let all = create_rule(
        &app,
        &acme,
        pb::SharingRule {
            display_name: "All, emails".into(),
            grantee: dist.name.clone(),
            level: Read as i32,
            fields: vec!["emails".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // By display name, one a page: hidden names (empty) first, each record once.
    let names = ordered(&app, &dist.read_key, "display_name").await;
    assert_eq!(names, ["", "", "", "Bea Doe", "Dan Doe"]);
    let names = ordered(&app, &dist.read_key, "display_name desc").await;
    assert_eq!(names, ["Dan Doe", "Bea Doe", "", "", ""]);
    assert_eq!(ordered(&app, &dist.read_key, "update_time").await.len(), 5);
    // A rule that shows the name too: every name, in order.
    let named = create_rule(
        &app,
        &acme,
        pb::SharingRule {
            display_name: "Names of x".into(),
            grantee: dist.name.clone(),
            level: Read as i32,
            fields: vec!["display_name".into()],
            segment: create_segment(&app, &acme, "x", "tag = x")
                .await
                .unwrap()
                .name,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        ordered(&app, &dist.read_key, "display_name").await,
        ["Abe Doe", "Bea Doe", "Cal Doe", "Dan Doe", "Eli Doe"]
    );
    // A change that brings a field into view lists it as changed.
    let heads = feed(&app, &dist.read_key).await.len();
    update_rule(
        &app,
        &acme,
        pb::SharingRule {
            name: named.name.clone(),
            etag: named.etag.clone(),
            segment: create_segment(&app, &acme, "y", "tag = y")
                .await
                .unwrap()
                .name,
            ..Default::default()
        },
        &["segment"],
    )
    .await
    .unwrap();
    update(
        &app,
        &acme.admin_key,
        set_tags(&made[2].name, &["y"]),
        &["tags"],
    )
    .await
    .unwrap();
    let news = feed(&app, &dist.read_key).await;
    let entered = news[heads..]
        .iter()
        .find(|e| e.r#type == "customer.updated")
        .expect("Eli's update reached dist");
    assert_eq!(entered.resource, made[2].name);
    assert_eq!(entered.changed_fields, ["display_name"], "{entered:?}");
    // Leaving that segment while another rule still shows the record: the name it no
    // longer sees is listed as changed, and is empty.
    let heads = feed(&app, &dist.read_key).await.len();
    update(
        &app,
        &acme.admin_key,
        set_tags(&made[2].name, &["x"]),
        &["tags"],
    )
    .await
    .unwrap();
    let news = feed(&app, &dist.read_key).await;
    let narrowed: Vec<&pb::Event> = news[heads..]
        .iter()
        .filter(|e| e.resource == made[2].name)
        .collect();
    assert_eq!(narrowed.len(), 1, "{narrowed:?}");
    assert_eq!(narrowed[0].changed_fields, ["display_name"]);
    match &narrowed[0].payload {
        Some(pb::event::Payload::Customer(c)) => {
            assert!(c.display_name.is_empty() && c.emails.len() == 1, "{c:?}")
        }
        other => panic!("{other:?}"),
    }

    // A segment of what partners granted the owner holds nothing of the owner's own:
    // a rule sharing it shares nothing, and counts say so.
    revoke(&app, &acme, &all.name).await;
    revoke(&app, &acme, &named.name).await;
    let granted = create_segment(&app, &acme, "Granted to us", "granted = true")
        .await
        .unwrap();
    share(&app, &acme, ("Odd", &granted.name), &dist, &["emails"]).await;
    let probe = create_segment(&app, &dist, "Probe", "kind = PERSON")
        .await
        .unwrap();
    // Dist sees the two granted records, and nothing through the odd rule.
    assert_eq!(count(&app, &dist.read_key, &probe.name).await.unwrap(), 2);
    assert_eq!(list(&app, &dist.read_key, "").await.len(), 2);

    // A relationship rule reaches those the owner stands in it to, not those who
    // stand in it to the owner: `other` supplies acme, acme does not supply it.
    create_rule(
        &app,
        &acme,
        pb::SharingRule {
            display_name: "To those we supply".into(),
            relationship: pb::Relationship::Supplies as i32,
            level: Read as i32,
            fields: vec!["display_name".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(list(&app, &dist.read_key, "").await.len(), 5);
    assert!(list(&app, &other.read_key, "").await.is_empty());
    assert!(events_of(&feed(&app, &other.read_key).await, "sharing_rule.created").is_empty());

    // A deleted segment is still named by the revoked rules that shared it.
    let gone = app
        .sharing(&acme.admin_key)
        .get_sharing_rule(pb::GetSharingRuleRequest {
            name: named.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let segment = gone.segment.clone();
    app.sharing(&acme.admin_key)
        .delete_segment(pb::DeleteSegmentRequest {
            name: segment.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let after = app
        .sharing(&acme.admin_key)
        .get_sharing_rule(pb::GetSharingRuleRequest {
            name: named.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (after.segment, after.segment_display_name),
        (segment, "y".to_owned())
    );
}

async fn revoke(app: &TestApp, owner: &Org, name: &str) {
    app.sharing(&owner.admin_key)
        .revoke_sharing_rule(pb::RevokeSharingRuleRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .expect("revoke");
}

/// Logs an interaction of `kind` on `customer` `days_ago` days back.
async fn interact(
    app: &TestApp,
    org: &Org,
    customer: &str,
    kind: pb::InteractionType,
    visibility: pb::InteractionVisibility,
    days_ago: i64,
) {
    let at = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days_ago);
    app.interactions(&org.admin_key)
        .log_interaction(pb::LogInteractionRequest {
            parent: customer.into(),
            interaction: Some(pb::Interaction {
                r#type: kind as i32,
                occur_time: Some(prost_types::Timestamp {
                    seconds: at.as_second(),
                    nanos: 0,
                }),
                summary: format!("{kind:?} {days_ago} days ago"),
                visibility: visibility as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("log interaction");
}

async fn segments_on_interactions_follow_each_purchase(backend: Backend) {
    use pb::InteractionType::{Call, Purchase};
    use pb::InteractionVisibility::{Organization, Shared};
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&acme, &dist).await;
    let ann = create(&app, &acme, tagged("Ann", &[])).await;
    let bob = create(&app, &acme, tagged("Bob", &[])).await;
    let cy = create(&app, &acme, tagged("Cy", &[])).await;
    interact(&app, &acme, &ann.name, Purchase, Organization, 10).await;
    interact(&app, &acme, &bob.name, Purchase, Shared, 200).await;
    interact(&app, &acme, &cy.name, Call, Shared, 1).await;

    // Bought in the past 90 days, as acme sees its interactions.
    let recent = create_segment(
        &app,
        &acme,
        "Recent buyers",
        "last_purchase_time >= now-90d",
    )
    .await
    .unwrap();
    assert_eq!(recent.filter, r#"last_purchase_time >= "now-90d""#);
    assert_eq!(count(&app, &acme.read_key, &recent.name).await.unwrap(), 1);
    assert_eq!(
        members(&app, &acme.read_key, &recent.name, 10).await,
        std::slice::from_ref(&ann.name)
    );
    assert_eq!(
        names_of(&list(&app, &acme.read_key, "last_interaction_time > now-2d").await),
        std::slice::from_ref(&cy.name)
    );
    share(
        &app,
        &acme,
        ("Recent buyers", &recent.name),
        &dist,
        &["display_name"],
    )
    .await;
    // The rule reads acme's interactions, private ones included; dist sees Ann.
    assert!(get(&app, &dist.read_key, &ann.name).await.is_ok());
    assert_eq!(
        get(&app, &dist.read_key, &bob.name)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        names_of(&list(&app, &dist.read_key, "").await),
        std::slice::from_ref(&ann.name)
    );
    // Dist's own filter on interactions reads them as dist sees them: Ann's purchase
    // is acme's own, so dist knows of none.
    assert!(
        list(&app, &dist.read_key, "last_purchase_time > now-90d")
            .await
            .is_empty()
    );

    // A purchase brings Bob into the segment: dist hears of Bob once, with every
    // field it sees, and then of the (shared) purchase.
    let heads = feed(&app, &dist.read_key).await.len();
    interact(&app, &acme, &bob.name, Purchase, Shared, 0).await;
    let news = feed(&app, &dist.read_key).await;
    let about = since(&news, heads);
    assert_eq!(about.len(), 2, "{about:?}");
    assert_eq!(
        about[0],
        (
            "customer.updated",
            bob.name.as_str(),
            vec!["display_name".to_owned()]
        )
    );
    assert_eq!(about[1].0, "interaction.logged");
    assert!(get(&app, &dist.read_key, &bob.name).await.is_ok());
    assert_eq!(count(&app, &acme.read_key, &recent.name).await.unwrap(), 2);
    let mut listed = names_of(&list(&app, &dist.read_key, "").await);
    listed.sort();
    let mut expected = vec![ann.name.clone(), bob.name.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(
        ordered(&app, &dist.read_key, "display_name").await,
        ["Ann Doe", "Bob Doe"]
    );
    // Now dist sees a purchase of Bob's (a shared one) in the past 90 days.
    assert_eq!(
        names_of(&list(&app, &dist.read_key, "last_purchase_time > now-90d").await),
        std::slice::from_ref(&bob.name)
    );

    // An interaction that widens what a partner already sees (through a grant) tells
    // it of the fields that came into view, once.
    grant(
        &app,
        &acme,
        &cy.name,
        &dist,
        pb::AccessLevel::Read,
        &["phones"],
    )
    .await
    .unwrap();
    share(
        &app,
        &acme,
        ("Recent buyers' emails", &recent.name),
        &dist,
        &["emails"],
    )
    .await;
    let heads = feed(&app, &dist.read_key).await.len();
    interact(&app, &acme, &cy.name, Purchase, Organization, 0).await;
    let news = feed(&app, &dist.read_key).await;
    let about = since(&news, heads);
    assert_eq!(
        about,
        [(
            "customer.updated",
            cy.name.as_str(),
            vec!["display_name".to_owned(), "emails".to_owned()]
        )]
    );
}

async fn a_merge_that_moves_a_customer_out_of_a_shared_segment_tells_the_partner(backend: Backend) {
    use pb::InteractionType::Call;
    use pb::InteractionVisibility::Organization;
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&acme, &dist).await;
    let quiet = create(&app, &acme, tagged("Quinn", &[])).await;
    let busy = create(&app, &acme, tagged("Quinn", &[])).await;
    interact(&app, &acme, &quiet.name, Call, Organization, 400).await;
    interact(&app, &acme, &busy.name, Call, Organization, 1).await;
    let dormant = create_segment(&app, &acme, "Dormant", "last_interaction_time < now-365d")
        .await
        .unwrap();
    share(
        &app,
        &acme,
        ("Dormant, to win back", &dormant.name),
        &dist,
        &["display_name"],
    )
    .await;
    assert!(get(&app, &dist.read_key, &quiet.name).await.is_ok());

    // Merging the busy record into the quiet one brings its recent call along: the
    // survivor leaves the segment, and dist hears so.
    let heads = feed(&app, &dist.read_key).await.len();
    app.customers(&acme.admin_key)
        .merge_customers(pb::MergeCustomersRequest {
            name: quiet.name.clone(),
            merged: vec![busy.name.clone()],
            ..Default::default()
        })
        .await
        .expect("merge");
    assert_eq!(
        get(&app, &dist.read_key, &quiet.name)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let news = feed(&app, &dist.read_key).await;
    let last: Vec<&pb::Event> = news[heads..]
        .iter()
        .filter(|e| e.resource == quiet.name)
        .collect();
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(last[0].r#type, "customer.merged");
    match &last[0].payload {
        Some(pb::event::Payload::Customer(c)) => assert!(c.display_name.is_empty(), "{c:?}"),
        other => panic!("{other:?}"),
    }
}

/// What an owner alone knows of a customer: the open cases on it it takes part in, and
/// its overlay. A rule on "escalated" customers shares a customer while a case on it is
/// open, and the partner hears of it coming and going; the overlay's status reads the
/// reader's own overlay.
async fn segments_on_open_cases_and_the_owners_overlay_follow_them(backend: Backend) {
    use crate::cases::{fire, open};
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&acme, &dist).await;
    let ann = create(&app, &acme, tagged("Ann", &[])).await;
    let bob = create(&app, &acme, tagged("Bob", &[])).await;
    let escalated = create_segment(&app, &acme, "Escalated", "open_cases >= 1")
        .await
        .unwrap();
    let key = create_segment(&app, &acme, "Key", r#"status = "Key account""#)
        .await
        .unwrap();
    assert_eq!(
        violated_fields(
            &create_segment(&app, &acme, "Bad", "open_cases > lots")
                .await
                .unwrap_err()
        ),
        ["segment.filter"]
    );
    share(
        &app,
        &acme,
        ("Escalated to dist", &escalated.name),
        &dist,
        &["display_name"],
    )
    .await;
    assert_eq!(
        count(&app, &acme.read_key, &escalated.name).await.unwrap(),
        0
    );
    assert_error(
        get(&app, &dist.read_key, &ann.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );

    // A case opened on Ann: she is escalated, and the partner sees her at once.
    let heads = feed(&app, &dist.read_key).await.len();
    let who = [(&acme, "vendor"), (&dist, "reseller")];
    let case = open(
        &app,
        &acme,
        "deal_registration",
        &ann.name,
        &who,
        pb::CasePriority::Normal,
        &[
            ("expiry_date", "2099-12-31"),
            ("product_line", "Blenders"),
            ("expected_close_date", "2099-06-30"),
        ],
    )
    .await
    .expect("open a case");
    assert_eq!(
        count(&app, &acme.read_key, &escalated.name).await.unwrap(),
        1
    );
    assert_eq!(
        get(&app, &dist.read_key, &ann.name)
            .await
            .unwrap()
            .display_name,
        "Ann Doe"
    );
    let events = feed(&app, &dist.read_key).await;
    assert!(
        since(&events, heads)
            .iter()
            .any(|(kind, resource, fields)| *kind == "customer.updated"
                && *resource == ann.name
                && fields.contains(&"display_name".to_owned())),
        "{:?}",
        since(&events, heads)
    );

    // Rejected: the case is closed, Ann is no longer escalated, and the partner's
    // last event on her is a bare one.
    let heads = feed(&app, &dist.read_key).await.len();
    fire(
        &app,
        &acme,
        &case.name,
        "reject",
        &[("rejection_reason", "Outside the program")],
    )
    .await
    .expect("reject");
    assert_eq!(
        count(&app, &acme.read_key, &escalated.name).await.unwrap(),
        0
    );
    assert_error(
        get(&app, &dist.read_key, &ann.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let events = feed(&app, &dist.read_key).await;
    assert!(
        since(&events, heads)
            .iter()
            .any(|(kind, resource, _)| *kind == "customer.updated" && *resource == ann.name),
        "{:?}",
        since(&events, heads)
    );

    // The overlay: Acme's status on Bob puts him in "Key"; a partner's filter on
    // `status` reads its own overlay, not Acme's.
    app.customers(&acme.admin_key)
        .update_customer_overlay(pb::UpdateCustomerOverlayRequest {
            overlay: Some(pb::CustomerOverlay {
                name: format!("{}/overlay", bob.name),
                status: "Key account".into(),
                ..Default::default()
            }),
            update_mask: mask(&["status"]),
            request_id: String::new(),
        })
        .await
        .expect("set the status");
    assert_eq!(count(&app, &acme.read_key, &key.name).await.unwrap(), 1);
    assert_eq!(
        names_of(&list(&app, &acme.read_key, r#"status = "Key account""#).await),
        vec![bob.name.clone()]
    );
    assert_eq!(
        names_of(&list(&app, &acme.read_key, "open_cases = 0").await),
        [ann.name.clone(), bob.name.clone()]
    );
    assert!(
        list(&app, &dist.read_key, r#"status = "Key account""#)
            .await
            .is_empty()
    );
}
