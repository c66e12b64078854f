use liaison::pb;
use pb::partnership::State;
use tonic::Code;

use crate::helpers::*;

crate::on_both_backends!(
    a_proposal_accepted_by_the_recipient_becomes_active,
    only_the_recipient_may_accept_or_decline,
    only_the_side_that_suspended_may_resume,
    outsiders_cannot_see_or_touch_a_partnership,
    bad_proposals_are_refused,
    retried_transitions_return_the_first_answer,
    request_ids_are_remembered_for_a_week_then_forgotten,
);

fn proposal(to: &Org, relationship: pb::Relationship) -> pb::ProposePartnershipRequest {
    pb::ProposePartnershipRequest {
        partnership: Some(pb::Partnership {
            recipient: to.name.clone(),
            relationship: relationship as i32,
            message: "Let's share service cases".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

async fn propose(app: &TestApp, from: &Org, to: &Org) -> pb::Partnership {
    app.partnerships(&from.admin_key)
        .propose_partnership(proposal(to, pb::Relationship::Supplies))
        .await
        .unwrap()
        .into_inner()
}

fn name_req<T: Default>(f: impl FnOnce(&mut T)) -> T {
    let mut t = T::default();
    f(&mut t);
    t
}

async fn a_proposal_accepted_by_the_recipient_becomes_active(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let proposed = propose(&app, &acme, &shop).await;
    assert_eq!(proposed.state, State::Proposed as i32);
    assert_eq!(proposed.proposer, "organizations/acme");
    assert_eq!(proposed.recipient, "organizations/shop");

    // The recipient sees it among its proposals.
    let incoming = app
        .partnerships(&shop.read_key)
        .list_partnerships(pb::ListPartnershipsRequest {
            state: State::Proposed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(incoming.partnerships, vec![proposed.clone()]);

    let accepted = app
        .partnerships(&shop.admin_key)
        .accept_partnership(pb::AcceptPartnershipRequest {
            name: proposed.name.clone(),
            etag: proposed.etag.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state, State::Active as i32);
    assert_eq!(accepted.state_changed_by, "organizations/shop");

    let seen_by_acme = app
        .partnerships(&acme.read_key)
        .get_partnership(pb::GetPartnershipRequest {
            name: proposed.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen_by_acme, accepted);
    let proposed_now = app
        .partnerships(&shop.read_key)
        .list_partnerships(pb::ListPartnershipsRequest {
            state: State::Proposed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(proposed_now.partnerships.is_empty());

    let ended = app
        .partnerships(&acme.admin_key)
        .end_partnership(name_req(|r: &mut pb::EndPartnershipRequest| {
            r.name = proposed.name.clone();
            r.reason = "contract over".into();
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.state, State::Ended as i32);
    assert_eq!(ended.state_reason, "contract over");
    // Ended is final; a new proposal for the same relationship is possible again.
    propose(&app, &acme, &shop).await;
}

async fn only_the_recipient_may_accept_or_decline(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let proposed = propose(&app, &acme, &shop).await;

    let self_accept = app
        .partnerships(&acme.admin_key)
        .accept_partnership(name_req(|r: &mut pb::AcceptPartnershipRequest| {
            r.name = proposed.name.clone()
        }))
        .await;
    let status = assert_error(
        self_accept,
        Code::FailedPrecondition,
        "PARTNERSHIP_TRANSITION_NOT_ALLOWED",
    );
    assert!(
        status.message().contains("allowed now: end"),
        "{}",
        status.message()
    );
    let failure = tonic_types::StatusExt::get_details_precondition_failure(&status)
        .expect("PreconditionFailure");
    let allowed: Vec<&str> = failure
        .violations
        .iter()
        .filter(|v| v.r#type == "ALLOWED_NOW")
        .map(|v| v.description.as_str())
        .collect();
    assert_eq!(allowed, ["end"]);

    let declined = app
        .partnerships(&shop.admin_key)
        .decline_partnership(name_req(|r: &mut pb::DeclinePartnershipRequest| {
            r.name = proposed.name.clone();
            r.reason = "not now".into();
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(declined.state, State::Declined as i32);
    let late = app
        .partnerships(&shop.admin_key)
        .accept_partnership(name_req(|r: &mut pb::AcceptPartnershipRequest| {
            r.name = proposed.name.clone()
        }))
        .await;
    let status = assert_error(
        late,
        Code::FailedPrecondition,
        "PARTNERSHIP_TRANSITION_NOT_ALLOWED",
    );
    assert!(
        status.message().contains("allowed now: none"),
        "{}",
        status.message()
    );

    // A read key cannot change partnerships.
    let read_only = app
        .partnerships(&shop.read_key)
        .end_partnership(name_req(|r: &mut pb::EndPartnershipRequest| {
            r.name = proposed.name.clone()
        }))
        .await;
    assert_error(read_only, Code::PermissionDenied, "INSUFFICIENT_SCOPE");
}

async fn only_the_side_that_suspended_may_resume(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let p = propose(&app, &acme, &shop).await;
    app.partnerships(&shop.admin_key)
        .accept_partnership(name_req(|r: &mut pb::AcceptPartnershipRequest| {
            r.name = p.name.clone()
        }))
        .await
        .unwrap();
    let suspended = app
        .partnerships(&acme.admin_key)
        .suspend_partnership(name_req(|r: &mut pb::SuspendPartnershipRequest| {
            r.name = p.name.clone();
            r.reason = "audit".into();
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.state, State::Suspended as i32);
    assert_eq!(suspended.state_changed_by, "organizations/acme");

    let by_other = app
        .partnerships(&shop.admin_key)
        .resume_partnership(name_req(|r: &mut pb::ResumePartnershipRequest| {
            r.name = p.name.clone()
        }))
        .await;
    assert_error(
        by_other,
        Code::FailedPrecondition,
        "PARTNERSHIP_TRANSITION_NOT_ALLOWED",
    );
    // A stale etag is refused before the transition is even considered.
    let stale = app
        .partnerships(&acme.admin_key)
        .resume_partnership(pb::ResumePartnershipRequest {
            name: p.name.clone(),
            etag: p.etag.clone(),
            request_id: String::new(),
        })
        .await;
    assert_error(stale, Code::Aborted, "STALE_ETAG");
    let resumed = app
        .partnerships(&acme.admin_key)
        .resume_partnership(pb::ResumePartnershipRequest {
            name: p.name.clone(),
            etag: suspended.etag,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.state, State::Active as i32);
}

async fn outsiders_cannot_see_or_touch_a_partnership(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let nosy = app.create_org("nosy", pb::OrganizationKind::Other).await;
    let p = propose(&app, &acme, &shop).await;

    let get = app
        .partnerships(&nosy.read_key)
        .get_partnership(pb::GetPartnershipRequest {
            name: p.name.clone(),
        })
        .await;
    assert_error(get, Code::NotFound, "NOT_FOUND");
    let accept = app
        .partnerships(&nosy.admin_key)
        .accept_partnership(name_req(|r: &mut pb::AcceptPartnershipRequest| {
            r.name = p.name.clone()
        }))
        .await;
    assert_error(accept, Code::NotFound, "NOT_FOUND");
    let listed = app
        .partnerships(&nosy.read_key)
        .list_partnerships(pb::ListPartnershipsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.partnerships.is_empty());
}

async fn bad_proposals_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;

    let to_self = app
        .partnerships(&acme.admin_key)
        .propose_partnership(proposal(&acme, pb::Relationship::Supplies))
        .await;
    assert_eq!(
        violated_fields(&assert_error(
            to_self,
            Code::InvalidArgument,
            "INVALID_FIELD_VALUE"
        )),
        ["partnership.recipient"]
    );

    let unspecified = app
        .partnerships(&acme.admin_key)
        .propose_partnership(proposal(&shop, pb::Relationship::Unspecified))
        .await;
    assert_eq!(
        violated_fields(&assert_error(
            unspecified,
            Code::InvalidArgument,
            "FIELD_REQUIRED"
        )),
        ["partnership.relationship"]
    );

    let mut unknown = proposal(&shop, pb::Relationship::Supplies);
    unknown.partnership.as_mut().unwrap().recipient = "organizations/nobody".into();
    assert_error(
        app.partnerships(&acme.admin_key)
            .propose_partnership(unknown)
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );

    propose(&app, &acme, &shop).await;
    let twice = app
        .partnerships(&acme.admin_key)
        .propose_partnership(proposal(&shop, pb::Relationship::Supplies))
        .await;
    assert_error(twice, Code::AlreadyExists, "PARTNERSHIP_EXISTS");
    // A different relationship between the same two is a partnership of its own.
    app.partnerships(&acme.admin_key)
        .propose_partnership(proposal(&shop, pb::Relationship::ServicesFor))
        .await
        .expect("another relationship");

    app.operator()
        .suspend_organization(pb::SuspendOrganizationRequest {
            name: shop.name.clone(),
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let to_suspended = app
        .partnerships(&acme.admin_key)
        .propose_partnership(proposal(&shop, pb::Relationship::SellsFor))
        .await;
    assert_error(
        to_suspended,
        Code::FailedPrecondition,
        "ORGANIZATION_SUSPENDED",
    );
}

async fn retried_transitions_return_the_first_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let mut request = proposal(&shop, pb::Relationship::DistributesFor);
    request.request_id = "proposal-1".into();
    let first = app
        .partnerships(&acme.admin_key)
        .propose_partnership(request.clone())
        .await
        .unwrap()
        .into_inner();
    let retry = app
        .partnerships(&acme.admin_key)
        .propose_partnership(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, retry);

    let accept = pb::AcceptPartnershipRequest {
        name: first.name.clone(),
        etag: String::new(),
        request_id: "accept-1".into(),
    };
    let accepted = app
        .partnerships(&shop.admin_key)
        .accept_partnership(accept.clone())
        .await
        .unwrap()
        .into_inner();
    // Without the request id this would fail: an active partnership cannot be accepted.
    let again = app
        .partnerships(&shop.admin_key)
        .accept_partnership(accept)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted, again);

    // Request ids are per organization: another one sending the very same request
    // under the same id makes a partnership of its own. Were ids shared across
    // organizations, it would get acme's partnership back (a leak) instead.
    let depot = app.create_org("depot", pb::OrganizationKind::Other).await;
    let mut same = proposal(&shop, pb::Relationship::DistributesFor);
    same.request_id = "proposal-1".into();
    let by_depot = app
        .partnerships(&depot.admin_key)
        .propose_partnership(same)
        .await
        .expect("a new request, not a replay or a clash with acme's")
        .into_inner();
    assert_ne!(by_depot.name, first.name);
    assert_eq!(by_depot.proposer, depot.name);
    assert_eq!(by_depot.state, State::Proposed as i32);
    let listed = app
        .partnerships(&shop.read_key)
        .list_partnerships(pb::ListPartnershipsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<&str> = listed
        .partnerships
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    names.sort_unstable();
    let mut expected = vec![first.name.as_str(), by_depot.name.as_str()];
    expected.sort_unstable();
    assert_eq!(names, expected, "both partnerships exist, once each");
    // And acme's own retry still gets acme's answer, not depot's.
    let mut retry = proposal(&shop, pb::Relationship::DistributesFor);
    retry.request_id = "proposal-1".into();
    let replayed = app
        .partnerships(&acme.admin_key)
        .propose_partnership(retry)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed, first);
}

/// How long the hub remembers a request id (`REQUEST_ID_RETENTION`, src/store/idempotency.rs).
const REMEMBERED: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);

/// Makes the record of `request_id` look `by` older than it is. The hub judges a
/// record's age by the wall clock (not the clock `TestApp::advance` moves), so a
/// test can only age the record itself.
async fn age_request_id(app: &TestApp, request_id: &str, by: jiff::SignedDuration) {
    use sqlx::Connection;
    let url = &app.config.database.url;
    let sql = "UPDATE idempotency_records SET create_time = create_time - $1 WHERE request_id = $2";
    let micros = by.as_micros() as i64;
    let aged = if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql)
            .bind(micros)
            .bind(request_id)
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected()
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sql)
            .bind(micros)
            .bind(request_id)
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected()
    };
    assert_eq!(aged, 1, "one record of {request_id}");
}

async fn request_ids_are_remembered_for_a_week_then_forgotten(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let request = |relationship, request_id: &str| {
        let mut request = proposal(&shop, relationship);
        request.request_id = request_id.into();
        request
    };
    let propose = |request: pb::ProposePartnershipRequest| {
        let mut client = app.partnerships(&acme.admin_key);
        async move {
            client
                .propose_partnership(request)
                .await
                .map(|r| r.into_inner())
        }
    };
    let old = propose(request(pb::Relationship::Supplies, "old"))
        .await
        .unwrap();
    let recent = propose(request(pb::Relationship::ServicesFor, "recent"))
        .await
        .unwrap();
    // Declined, so a request that is new again can propose the same relationship.
    for p in [&old, &recent] {
        app.partnerships(&shop.admin_key)
            .decline_partnership(name_req(|r: &mut pb::DeclinePartnershipRequest| {
                r.name = p.name.clone()
            }))
            .await
            .unwrap();
    }
    assert_eq!(
        propose(request(pb::Relationship::Supplies, "old"))
            .await
            .unwrap(),
        old,
        "remembered: the retry gets the first answer"
    );

    // One just past the retention, one just within it. No sweep has run (it is
    // hourly): an id past its retention is forgotten at once all the same.
    let hour = jiff::SignedDuration::from_hours(1);
    age_request_id(&app, "old", REMEMBERED + hour).await;
    age_request_id(&app, "recent", REMEMBERED - hour).await;
    let renewed = propose(request(pb::Relationship::Supplies, "old"))
        .await
        .unwrap();
    assert_ne!(renewed.name, old.name, "past its retention, a new request");
    // And the new answer is the one remembered from now on.
    assert_eq!(
        propose(request(pb::Relationship::Supplies, "old"))
            .await
            .unwrap(),
        renewed
    );
    assert_eq!(renewed.state, State::Proposed as i32);
    assert_eq!(renewed.proposer, acme.name);
    // The same sweep kept the one still within its retention.
    assert_eq!(
        propose(request(pb::Relationship::ServicesFor, "recent"))
            .await
            .unwrap(),
        recent,
        "a request id within its retention is still remembered"
    );
}
