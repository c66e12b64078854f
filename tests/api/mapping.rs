//! Account mapping: two partners learn how many customers their segments share (counts
//! under the threshold shown as bounds), never which; the comparison runs as a
//! long-running operation (`google.longrunning.Operations`); access to the overlap is
//! asked for and answered in bulk.

use std::time::{Duration, Instant};

use jiff::SignedDuration;
use liaison::google::longrunning::{
    self as lro, CancelOperationRequest, DeleteOperationRequest, GetOperationRequest,
    ListOperationsRequest, Operation, WaitOperationRequest,
};
use liaison::pb;
use pb::account_mapping::State;
use pb::mapping_count::Bound;
use prost::Message;
use tonic::{Code, Status};

use crate::customers::{list, person};
use crate::events::feed;
use crate::helpers::*;
use crate::rules::{count, create_segment};
use crate::sharing::{get, grant, update};
use crate::webhooks::eventually;

crate::on_both_backends!(
    a_mapping_reports_overlap_counts_and_never_identities,
    small_overlaps_show_as_fewer_than_and_small_segments_cannot_take_part,
    refresh_waits_an_hour_and_for_more_than_the_threshold_of_change,
    overlap_access_requests_are_made_in_bulk_and_answered_at_once,
    either_side_ends_a_mapping_and_outsiders_see_nothing,
    operations_can_be_listed_cancelled_and_deleted,
    the_cli_waits_for_an_operation_and_names_an_unknown_one,
    lopsided_overlaps_are_small_and_only_the_owners_records_are_asked_for,
    ending_the_partnership_ends_the_mapping_and_a_cancelled_comparison_frees_it,
    members_changed_in_place_count_towards_a_refresh,
);

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

/// A person tagged `tag`: `family` tells whose records it is, `email` and `phone`
/// (either may be empty) are its match keys.
fn client(family: &str, email: &str, phone: &str, tag: &str) -> pb::Customer {
    let mut c = person("Client", family, email);
    if !phone.is_empty() {
        c.phones = vec![pb::PhoneContact {
            number: phone.into(),
            ..Default::default()
        }];
    }
    c.tags = vec![tag.into()];
    c
}

/// A company tagged `tag` with one email.
fn company(legal_name: &str, email: &str, tag: &str) -> pb::Customer {
    pb::Customer {
        kind: pb::CustomerKind::Company as i32,
        legal_name: legal_name.into(),
        emails: vec![pb::EmailContact {
            address: email.into(),
            label: "work".into(),
            primary: true,
        }],
        tags: vec![tag.into()],
        ..Default::default()
    }
}

/// Adds `customers` to `org` in one batch (one transaction, so no look of the hub's
/// sees half of them); returns them as created, in order.
async fn add(app: &TestApp, org: &Org, customers: Vec<pb::Customer>) -> Vec<pb::Customer> {
    let customers = customers
        .into_iter()
        .map(|mut c| {
            c.external_id = format!("map-{}", uuid::Uuid::new_v4().simple());
            c
        })
        .collect();
    app.customers(&org.admin_key)
        .batch_upsert_customers(pb::BatchUpsertCustomersRequest {
            customers,
            request_id: String::new(),
        })
        .await
        .expect("add customers")
        .into_inner()
        .customers
}

/// A segment of `org`'s customers tagged `tag`, checked to hold `members` now.
async fn segment(
    app: &TestApp,
    org: &Org,
    display_name: &str,
    tag: &str,
    members: i64,
) -> pb::Segment {
    let made = create_segment(app, org, display_name, &format!("tag = {tag}"))
        .await
        .expect("create segment");
    assert_eq!(
        count(app, &org.read_key, &made.name).await.unwrap(),
        members,
        "members of {display_name}"
    );
    made
}

fn mapping_segments(names: &[&str]) -> Vec<pb::MappingSegment> {
    names
        .iter()
        .map(|name| pb::MappingSegment {
            segment: name.to_string(),
            ..Default::default()
        })
        .collect()
}

/// Each segment of a mapping as shown: name, display name, left out as too small.
fn shown(segments: &[pb::MappingSegment]) -> Vec<(String, String, bool)> {
    segments
        .iter()
        .map(|s| (s.segment.clone(), s.display_name.clone(), s.too_small))
        .collect()
}

async fn propose(
    app: &TestApp,
    requester: &Org,
    partner: &str,
    segments: &[&str],
) -> Result<pb::AccountMapping, Status> {
    app.mappings(&requester.admin_key)
        .create_account_mapping(pb::CreateAccountMappingRequest {
            account_mapping: Some(pb::AccountMapping {
                partner: partner.into(),
                requester_segments: mapping_segments(segments),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn accept(
    app: &TestApp,
    key: &str,
    name: &str,
    segments: &[&str],
) -> Result<Operation, Status> {
    app.mappings(key)
        .accept_account_mapping(pb::AcceptAccountMappingRequest {
            name: name.into(),
            segments: segments.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn decline(app: &TestApp, key: &str, name: &str) -> Result<pb::AccountMapping, Status> {
    app.mappings(key)
        .decline_account_mapping(pb::DeclineAccountMappingRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn get_mapping(app: &TestApp, key: &str, name: &str) -> Result<pb::AccountMapping, Status> {
    app.mappings(key)
        .get_account_mapping(pb::GetAccountMappingRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

async fn refresh(app: &TestApp, key: &str, name: &str) -> Result<Operation, Status> {
    refresh_as(app, key, name, "").await
}

async fn refresh_as(
    app: &TestApp,
    key: &str,
    name: &str,
    request_id: &str,
) -> Result<Operation, Status> {
    app.mappings(key)
        .refresh_account_mapping(pb::RefreshAccountMappingRequest {
            name: name.into(),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn end(app: &TestApp, key: &str, name: &str) -> Result<pb::AccountMapping, Status> {
    app.mappings(key)
        .end_account_mapping(pb::EndAccountMappingRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// `side`'s segments of the mapping become `segments` (`path`: `requester_segments`
/// or `partner_segments`).
async fn update_segments(
    app: &TestApp,
    key: &str,
    name: &str,
    path: &str,
    segments: &[&str],
) -> Result<pb::AccountMapping, Status> {
    let mut mapping = pb::AccountMapping {
        name: name.into(),
        ..Default::default()
    };
    if path == "partner_segments" {
        mapping.partner_segments = mapping_segments(segments);
    } else {
        mapping.requester_segments = mapping_segments(segments);
    }
    app.mappings(key)
        .update_account_mapping(pb::UpdateAccountMappingRequest {
            account_mapping: Some(mapping),
            update_mask: mask(&[path]),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn list_mappings(
    app: &TestApp,
    key: &str,
    filter: &str,
) -> Result<Vec<pb::AccountMapping>, Status> {
    app.mappings(key)
        .list_account_mappings(pb::ListAccountMappingsRequest {
            filter: filter.into(),
            page_size: 50,
            page_token: String::new(),
        })
        .await
        .map(|r| r.into_inner().account_mappings)
}

fn names_of_mappings(mappings: &[pb::AccountMapping]) -> Vec<String> {
    mappings.iter().map(|m| m.name.clone()).collect()
}

/// Asks, as `org`, for access to the records of `partner_segment` that matched
/// `segment`: READ on display name and emails.
async fn ask_overlap(
    app: &TestApp,
    org: &Org,
    name: &str,
    segment: &str,
    partner_segment: &str,
) -> Result<pb::RequestOverlapAccessResponse, Status> {
    app.mappings(&org.admin_key)
        .request_overlap_access(pb::RequestOverlapAccessRequest {
            name: name.into(),
            segment: segment.into(),
            partner_segment: partner_segment.into(),
            level: pb::AccessLevel::Read as i32,
            fields: vec!["display_name".into(), "emails".into()],
            reason: "Joint account planning".into(),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn answer_overlap(
    app: &TestApp,
    org: &Org,
    name: &str,
    approve: bool,
    reason: &str,
) -> Result<pb::AnswerOverlapAccessResponse, Status> {
    app.mappings(&org.admin_key)
        .answer_overlap_access(pb::AnswerOverlapAccessRequest {
            name: name.into(),
            approve,
            reason: reason.into(),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The access requests of the organization behind `key`: those it made (`outgoing`)
/// or those made to it.
async fn access_requests(app: &TestApp, key: &str, outgoing: bool) -> Vec<pb::AccessRequest> {
    use pb::list_access_requests_request::Direction;
    let direction = if outgoing {
        Direction::Outgoing
    } else {
        Direction::Incoming
    };
    app.sharing(key)
        .list_access_requests(pb::ListAccessRequestsRequest {
            direction: direction as i32,
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list access requests")
        .into_inner()
        .access_requests
}

async fn get_operation(app: &TestApp, key: &str, name: &str) -> Result<Operation, Status> {
    app.operations(key)
        .get_operation(GetOperationRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

async fn list_operations(app: &TestApp, key: &str, filter: &str) -> Result<Vec<Operation>, Status> {
    app.operations(key)
        .list_operations(ListOperationsRequest {
            name: "operations".into(),
            filter: filter.into(),
            page_size: 50,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().operations)
}

fn operation_names(operations: &[Operation]) -> Vec<String> {
    operations.iter().map(|o| o.name.clone()).collect()
}

/// Waits for `operation` with WaitOperation, a few seconds a call, a minute at most.
pub(crate) async fn finish(app: &TestApp, key: &str, mut operation: Operation) -> Operation {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !operation.done {
        assert!(
            Instant::now() < deadline,
            "not done in a minute: {operation:?}"
        );
        operation = app
            .operations(key)
            .wait_operation(WaitOperationRequest {
                name: operation.name.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
            })
            .await
            .expect("wait for the operation")
            .into_inner();
    }
    operation
}

/// The mapping a finished comparison answers with.
pub(crate) fn mapping_of(operation: &Operation) -> pb::AccountMapping {
    match &operation.result {
        Some(lro::operation::Result::Response(any)) => {
            assert!(
                any.type_url.ends_with("liaison.v1.AccountMapping"),
                "{}",
                any.type_url
            );
            pb::AccountMapping::decode(any.value.as_slice()).expect("an AccountMapping")
        }
        other => panic!("expected a response, got {other:?} in {operation:?}"),
    }
}

fn metadata_of(operation: &Operation) -> pb::OperationMetadata {
    let any = operation
        .metadata
        .as_ref()
        .unwrap_or_else(|| panic!("no metadata in {operation:?}"));
    assert!(
        any.type_url.ends_with("liaison.v1.OperationMetadata"),
        "{}",
        any.type_url
    );
    pb::OperationMetadata::decode(any.value.as_slice()).expect("an OperationMetadata")
}

/// Checks a finished comparison of `mapping` and returns the mapping it answers with.
fn compared(operation: &Operation, mapping: &str) -> pb::AccountMapping {
    assert!(operation.done, "{operation:?}");
    let meta = metadata_of(operation);
    assert_eq!(meta.target, mapping);
    assert_eq!(meta.verb, "compare_accounts");
    assert!(meta.total > 0 && meta.done == meta.total, "{meta:?}");
    assert!(
        !meta.cancel_requested && meta.end_time.is_some(),
        "{meta:?}"
    );
    let answer = mapping_of(operation);
    assert_eq!(answer.name, mapping);
    answer
}

fn at(time: &Option<prost_types::Timestamp>) -> (i64, i32) {
    time.as_ref().map_or((0, 0), |t| (t.seconds, t.nanos))
}

fn figure(value: i64, bound: Bound) -> Option<pb::MappingCount> {
    Some(pb::MappingCount {
        value,
        bound: bound as i32,
    })
}

fn exact(n: i64) -> Option<pb::MappingCount> {
    figure(n, Bound::Exact)
}

fn fewer_than(n: i64) -> Option<pb::MappingCount> {
    figure(n, Bound::FewerThan)
}

fn more_than(n: i64) -> Option<pb::MappingCount> {
    figure(n, Bound::MoreThan)
}

fn overlap(
    requester_segment: &str,
    partner_segment: &str,
    both: Option<pb::MappingCount>,
    only_requester: Option<pb::MappingCount>,
    only_partner: Option<pb::MappingCount>,
) -> pb::SegmentOverlap {
    pb::SegmentOverlap {
        requester_segment: requester_segment.into(),
        partner_segment: partner_segment.into(),
        both,
        only_requester,
        only_partner,
    }
}

/// The `account_mapping.*` events of the feed behind `key` after its first `heads`
/// events: type and resource.
async fn mapping_events(app: &TestApp, key: &str, heads: usize) -> Vec<(String, String)> {
    feed(app, key).await[heads..]
        .iter()
        .filter(|e| e.r#type.starts_with("account_mapping."))
        .map(|e| (e.r#type.clone(), e.resource.clone()))
        .collect()
}

/// Events of one `kind` about `name` in (`pairs`).
fn kinds(kind: &str, name: &str, n: usize) -> Vec<(String, String)> {
    vec![(kind.to_owned(), name.to_owned()); n]
}

/// Refreshes `name` as `org` and waits for the comparison. The hub's own look (once a
/// minute) may have started it first, then the call answers with that operation; or
/// finished it first, then the call is refused as fresh and the mapping shows a newer
/// comparison than `last`.
async fn refreshed(
    app: &TestApp,
    org: &Org,
    name: &str,
    last: &Option<prost_types::Timestamp>,
) -> pb::AccountMapping {
    let request_id = uuid::Uuid::new_v4().to_string();
    match refresh_as(app, &org.admin_key, name, &request_id).await {
        Ok(operation) => {
            let done = compared(&finish(app, &org.read_key, operation.clone()).await, name);
            // Retried after the comparison made the mapping fresh: the first answer,
            // not MAPPING_FRESH.
            let again = refresh_as(app, &org.admin_key, name, &request_id)
                .await
                .expect("a retry replays");
            assert_eq!(again.name, operation.name);
            done
        }
        Err(status) => {
            let now = get_mapping(app, &org.read_key, name).await.unwrap();
            assert!(
                at(&now.compare_time) > at(last),
                "refused, and not compared since: {status:?}"
            );
            assert_error(
                Err::<(), _>(status),
                Code::FailedPrecondition,
                "MAPPING_FRESH",
            );
            now
        }
    }
}

/// Lower-cased `Debug` of `value`.
fn text(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}").to_lowercase()
}

/// The id part of each customer's name.
fn ids(customers: &[pb::Customer]) -> Vec<String> {
    customers
        .iter()
        .map(|c| c.name.rsplit('/').next().unwrap().to_owned())
        .collect()
}

async fn a_mapping_reports_overlap_counts_and_never_identities(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let d = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&v, &d).await;

    // Nordics (vendor, 8) and North (dist, 9) share 6 customers by email, written
    // differently; Enterprise (vendor, 10) and Big (dist, 11) share 5 by phone, written
    // differently. Neither pair shares anything with the other; the persons of one
    // email domain (corp.example) are not matched by it.
    let mut ours = vec![];
    for i in 0..8 {
        let email = match i {
            0..6 => format!("shared{i}@people.example"),
            _ => format!("vendoronly{i}@people.example"),
        };
        ours.push(client("Vendorside", &email, "", "nordics"));
    }
    for i in 0..10 {
        let phone = match i {
            0..5 => format!("+14155550{}", 110 + i),
            _ => format!("+14155550{}", 130 + i),
        };
        let email = format!("vendorbig{i}@corp.example");
        ours.push(client("Vendorside", &email, &phone, "ent"));
    }
    let ours = add(&app, &v, ours).await;
    let mut theirs = vec![];
    for i in 0..9 {
        let email = match i {
            0..6 => format!("SHARED{i}@People.Example"),
            _ => format!("distonly{i}@people.example"),
        };
        theirs.push(client("Distside", &email, "", "north"));
    }
    for i in 0..11 {
        let phone = match i {
            0..5 => format!("+1 415-555-0{}", 110 + i),
            _ => format!("+14155550{}", 150 + i),
        };
        let email = format!("distbig{i}@corp.example");
        theirs.push(client("Distside", &email, &phone, "big"));
    }
    let theirs = add(&app, &d, theirs).await;
    let nordics = segment(&app, &v, "Nordics", "nordics", 8).await;
    let enterprise = segment(&app, &v, "Enterprise", "ent", 10).await;
    let north = segment(&app, &d, "North", "north", 9).await;
    let big = segment(&app, &d, "Big", "big", 11).await;

    let v_heads = feed(&app, &v.read_key).await.len();
    let d_heads = feed(&app, &d.read_key).await.len();
    let proposed = propose(&app, &v, &d.name, &[&nordics.name, &enterprise.name])
        .await
        .expect("propose");
    let name = proposed.name.clone();
    assert!(name.starts_with("accountMappings/"), "{proposed:?}");
    assert_eq!(proposed.state, State::Proposed as i32);
    assert_eq!(
        (proposed.requester.as_str(), proposed.partner.as_str()),
        (v.name.as_str(), d.name.as_str())
    );
    assert_eq!(proposed.threshold, 5);
    assert_eq!(
        shown(&proposed.requester_segments),
        vec![
            (nordics.name.clone(), "Nordics".to_owned(), false),
            (enterprise.name.clone(), "Enterprise".to_owned(), false),
        ]
    );
    assert!(proposed.partner_segments.is_empty() && proposed.overlaps.is_empty());
    assert!(proposed.compare_time.is_none(), "{proposed:?}");
    // The partner sees the proposal, segments named, filters not.
    let asked = get_mapping(&app, &d.read_key, &name).await.unwrap();
    assert_eq!(asked.state, State::Proposed as i32);
    assert_eq!(
        shown(&asked.requester_segments),
        shown(&proposed.requester_segments)
    );
    assert!(!text(&asked).contains("tag ="), "no filter: {asked:?}");

    let operation = accept(&app, &d.admin_key, &name, &[&north.name, &big.name])
        .await
        .expect("accept");
    assert!(operation.name.starts_with("operations/"), "{operation:?}");
    let started = metadata_of(&operation);
    assert_eq!(
        (started.target.as_str(), started.verb.as_str()),
        (name.as_str(), "compare_accounts")
    );
    let operation = finish(&app, &d.read_key, operation).await;
    let answer = compared(&operation, &name);
    let expected = vec![
        overlap(
            &nordics.name,
            &north.name,
            exact(6),
            fewer_than(5),
            fewer_than(5),
        ),
        overlap(
            &nordics.name,
            &big.name,
            fewer_than(5),
            more_than(3),
            more_than(6),
        ),
        overlap(
            &enterprise.name,
            &north.name,
            fewer_than(5),
            more_than(5),
            more_than(4),
        ),
        overlap(&enterprise.name, &big.name, exact(5), exact(5), exact(6)),
    ];
    assert_eq!(answer.overlaps, expected);
    assert_eq!(answer.state, State::Active as i32);
    assert_eq!(
        shown(&answer.partner_segments),
        vec![
            (north.name.clone(), "North".to_owned(), false),
            (big.name.clone(), "Big".to_owned(), false),
        ]
    );
    let (compare_time, next_refresh) = (at(&answer.compare_time), at(&answer.next_refresh_time));
    assert!(compare_time.0 > 0, "{answer:?}");
    assert_eq!(next_refresh.0 - compare_time.0, 3600, "an hour later");

    // Both sides read the same figures, and the operation.
    for key in [&v.read_key, &d.read_key] {
        let got = get_mapping(&app, key, &name).await.unwrap();
        assert_eq!(got.overlaps, expected);
        assert_eq!(got.state, State::Active as i32);
        assert_eq!(at(&got.compare_time), compare_time);
        assert!(got.operation.is_empty(), "none runs: {got:?}");
        let again = get_operation(&app, key, &operation.name).await.unwrap();
        assert_eq!(again.result, operation.result);
    }

    // Both feeds: asked, accepted, compared (with the figures).
    let mut texts = vec![];
    for (org, heads) in [(&v, v_heads), (&d, d_heads)] {
        let events = eventually("the comparison in both feeds", async || {
            let events: Vec<pb::Event> = feed(&app, &org.read_key).await[heads..]
                .iter()
                .filter(|e| e.r#type.starts_with("account_mapping."))
                .cloned()
                .collect();
            (events.len() >= 3).then_some(events)
        })
        .await;
        let about: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.r#type.as_str(), e.resource.as_str()))
            .collect();
        assert_eq!(
            about,
            [
                ("account_mapping.requested", name.as_str()),
                ("account_mapping.accepted", name.as_str()),
                ("account_mapping.compared", name.as_str()),
            ]
        );
        match &events[2].payload {
            Some(pb::event::Payload::AccountMapping(m)) => assert_eq!(m.overlaps, expected),
            other => panic!("{other:?}"),
        }
        texts.push(text(&events));
    }
    texts.push(text(&get_mapping(&app, &v.read_key, &name).await.unwrap()));
    texts.push(text(&get_mapping(&app, &d.read_key, &name).await.unwrap()));
    texts.push(text(&operation));
    texts.push(text(&answer));
    // Counts only: no record, name, email or phone of either side.
    for t in &texts {
        assert!(!t.contains('@'), "an email: {t}");
        for needle in ["vendorside", "distside", "client", "4155550", "customers/"] {
            assert!(!t.contains(needle), "{needle} in {t}");
        }
        for id in ids(&ours).iter().chain(ids(&theirs).iter()) {
            assert!(!t.contains(id.as_str()), "a customer's id in {t}");
        }
    }
}

async fn small_overlaps_show_as_fewer_than_and_small_segments_cannot_take_part(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let d = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&v, &d).await;

    // P (vendor, 7) and Q (dist, 8) share 2 persons by email. R (vendor, 8) and S
    // (dist, 9) share 5: four persons by phone and one company by its email's domain;
    // two companies on gmail.com and two persons of one firm's domain do not match.
    // T (vendor) has 5 members, Four and DFour 4 each.
    let mut ours = vec![];
    for i in 0..7 {
        let email = match i {
            0..2 => format!("pair{i}@small.example"),
            _ => format!("vsmall{i}@small.example"),
        };
        ours.push(client("Vendorside", &email, "", "pp"));
    }
    for i in 0..4 {
        let phone = format!("+14155550{}", 170 + i);
        ours.push(client(
            "Vendorside",
            &format!("vr{i}@big.example"),
            &phone,
            "rr",
        ));
    }
    ours.push(company("Acme Corp", "ops@acme.example", "rr"));
    ours.push(company("Solo Gmail", "solo.one@gmail.com", "rr"));
    ours.push(client("Vendorside", "anna@samefirm.example", "", "rr"));
    ours.push(client("Vendorside", "vextra@big.example", "", "rr"));
    for i in 0..5 {
        ours.push(client(
            "Vendorside",
            &format!("t{i}@tiny.example"),
            "",
            "tt",
        ));
    }
    for i in 0..4 {
        ours.push(client(
            "Vendorside",
            &format!("f{i}@tiny.example"),
            "",
            "four",
        ));
    }
    let ours = add(&app, &v, ours).await;
    let mut theirs = vec![];
    for i in 0..8 {
        let email = match i {
            0..2 => format!("pair{i}@small.example"),
            _ => format!("dsmall{i}@small.example"),
        };
        theirs.push(client("Distside", &email, "", "qq"));
    }
    for i in 0..4 {
        let phone = format!("+14155550{}", 170 + i);
        theirs.push(client(
            "Distside",
            &format!("dr{i}@big.example"),
            &phone,
            "ss",
        ));
    }
    theirs.push(company("Acme Corporation", "sales@acme.example", "ss"));
    theirs.push(company("Solo Trader", "solo.two@gmail.com", "ss"));
    theirs.push(client("Distside", "bert@samefirm.example", "", "ss"));
    theirs.push(client("Distside", "dextra1@big.example", "", "ss"));
    theirs.push(client("Distside", "dextra2@big.example", "", "ss"));
    for i in 0..4 {
        theirs.push(client(
            "Distside",
            &format!("g{i}@tiny.example"),
            "",
            "dfour",
        ));
    }
    add(&app, &d, theirs).await;
    let p = segment(&app, &v, "P", "pp", 7).await;
    let r = segment(&app, &v, "R", "rr", 8).await;
    let t = segment(&app, &v, "T", "tt", 5).await;
    let four = segment(&app, &v, "Four", "four", 4).await;
    let q = segment(&app, &d, "Q", "qq", 8).await;
    let s = segment(&app, &d, "S", "ss", 9).await;
    let dfour = segment(&app, &d, "DFour", "dfour", 4).await;

    // Under the threshold, a segment cannot take part: asked or accepted.
    assert_error(
        propose(&app, &v, &d.name, &[&p.name, &four.name]).await,
        Code::FailedPrecondition,
        "SEGMENT_TOO_SMALL",
    );
    let proposed = propose(&app, &v, &d.name, &[&p.name, &r.name, &t.name])
        .await
        .expect("propose");
    let name = proposed.name.clone();
    assert_error(
        accept(&app, &d.admin_key, &name, &[&q.name, &dfour.name]).await,
        Code::FailedPrecondition,
        "SEGMENT_TOO_SMALL",
    );
    assert_eq!(
        get_mapping(&app, &d.read_key, &name).await.unwrap().state,
        State::Proposed as i32,
        "a refused acceptance changes nothing"
    );
    // T shrinks under the threshold before the comparison: it is left out of it.
    let leaving = ours.iter().find(|c| c.tags == ["tt"]).unwrap();
    let retagged = pb::Customer {
        name: leaving.name.clone(),
        tags: vec!["gone".into()],
        ..Default::default()
    };
    update(&app, &v.admin_key, retagged, &["tags"])
        .await
        .unwrap();
    assert_eq!(count(&app, &v.read_key, &t.name).await.unwrap(), 4);

    let operation = accept(&app, &d.admin_key, &name, &[&q.name, &s.name])
        .await
        .expect("accept");
    let answer = compared(&finish(&app, &d.read_key, operation).await, &name);
    assert_eq!(
        answer.overlaps,
        [
            // 2 in both: shown as fewer than 5, and so the one-sided counts as bounds
            // (7 - 5 and 8 - 5) that do not give it away.
            overlap(&p.name, &q.name, fewer_than(5), more_than(2), more_than(3)),
            overlap(&p.name, &s.name, fewer_than(5), more_than(2), more_than(4)),
            overlap(&r.name, &q.name, fewer_than(5), more_than(3), more_than(3)),
            // 5 in both (a gmail.com or a person's domain would make it 6); 3 and 4 alone.
            overlap(&r.name, &s.name, exact(5), fewer_than(5), fewer_than(5)),
        ]
    );
    assert_eq!(
        shown(&answer.requester_segments),
        vec![
            (p.name.clone(), "P".to_owned(), false),
            (r.name.clone(), "R".to_owned(), false),
            (t.name.clone(), "T".to_owned(), true),
        ]
    );
    assert_eq!(
        shown(&answer.partner_segments),
        vec![
            (q.name.clone(), "Q".to_owned(), false),
            (s.name.clone(), "S".to_owned(), false),
        ]
    );
    assert_eq!(
        get_mapping(&app, &v.read_key, &name)
            .await
            .unwrap()
            .overlaps,
        answer.overlaps
    );
}

async fn refresh_waits_an_hour_and_for_more_than_the_threshold_of_change(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let d = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&v, &d).await;
    let email = |i: usize| format!("c{i}@refresh.example");
    add(
        &app,
        &v,
        (1..=6)
            .map(|i| client("Vendorside", &email(i), "", "aa"))
            .collect(),
    )
    .await;
    let mut first: Vec<pb::Customer> = (1..=5)
        .map(|i| client("Distside", &email(i), "", "xx"))
        .collect();
    first.push(client("Distside", "donly6@refresh.example", "", "xx"));
    add(&app, &d, first).await;
    let a = segment(&app, &v, "A", "aa", 6).await;
    let x = segment(&app, &d, "X", "xx", 6).await;
    let v_heads = feed(&app, &v.read_key).await.len();
    let d_heads = feed(&app, &d.read_key).await.len();
    let name = propose(&app, &v, &d.name, &[&a.name])
        .await
        .expect("propose")
        .name;
    let operation = accept(&app, &d.admin_key, &name, &[&x.name])
        .await
        .expect("accept");
    let first = compared(&finish(&app, &v.read_key, operation).await, &name);
    assert_eq!(
        first.overlaps,
        [overlap(
            &a.name,
            &x.name,
            exact(5),
            fewer_than(5),
            fewer_than(5)
        )]
    );

    // Just compared: refused, by either side.
    for org in [&v, &d] {
        assert_error(
            refresh(&app, &org.admin_key, &name).await,
            Code::FailedPrecondition,
            "MAPPING_FRESH",
        );
    }
    // One more matching record, and two hours later: one change is not more than the
    // threshold (5). The hub's own look, woken by the clock, does not compare either.
    add(&app, &d, vec![client("Distside", &email(6), "", "xx")]).await;
    app.advance(SignedDuration::from_hours(2));
    assert_error(
        refresh(&app, &d.admin_key, &name).await,
        Code::FailedPrecondition,
        "MAPPING_FRESH",
    );
    let unchanged = get_mapping(&app, &v.read_key, &name).await.unwrap();
    assert_eq!(at(&unchanged.compare_time), at(&first.compare_time));
    assert_eq!(unchanged.overlaps, first.overlaps);

    // Six more at once: it compares again, and shows the new figures. Vendor's 6 all
    // match now; 6 of dist's 13 match, so 7 are dist's alone.
    let more = (1..=6)
        .map(|i| client("Distside", &format!("dnew{i}@refresh.example"), "", "xx"))
        .collect();
    add(&app, &d, more).await;
    let second = refreshed(&app, &v, &name, &first.compare_time).await;
    assert_eq!(
        second.overlaps,
        [overlap(&a.name, &x.name, exact(6), fewer_than(5), exact(7))]
    );
    assert!(at(&second.compare_time) > at(&first.compare_time));

    // Just compared again: however much changes, it waits for the interval.
    let matching = (1..=6)
        .map(|i| client("Vendorside", &format!("dnew{i}@refresh.example"), "", "aa"))
        .collect();
    add(&app, &v, matching).await;
    assert_error(
        refresh(&app, &v.admin_key, &name).await,
        Code::FailedPrecondition,
        "MAPPING_FRESH",
    );
    // Two hours on, the hub compares by itself (it looks every minute): 12 of 12 and
    // 12 of 13 match.
    app.advance(SignedDuration::from_hours(2));
    let deadline = Instant::now() + Duration::from_secs(90);
    let third = loop {
        let now = get_mapping(&app, &v.read_key, &name).await.unwrap();
        if at(&now.compare_time) > at(&second.compare_time) && now.operation.is_empty() {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the hub did not refresh by itself: {now:?}"
        );
        app.advance(SignedDuration::from_secs(61));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        third.overlaps,
        [overlap(
            &a.name,
            &x.name,
            exact(12),
            fewer_than(5),
            fewer_than(5)
        )]
    );

    // Each comparison told both sides once.
    for (org, heads) in [(&v, v_heads), (&d, d_heads)] {
        let compares = eventually("three comparisons in the feed", async || {
            let compares: Vec<(String, String)> = mapping_events(&app, &org.read_key, heads)
                .await
                .into_iter()
                .filter(|(kind, _)| kind == "account_mapping.compared")
                .collect();
            (compares.len() >= 3).then_some(compares)
        })
        .await;
        assert_eq!(compares, kinds("account_mapping.compared", &name, 3));
    }
}

async fn overlap_access_requests_are_made_in_bulk_and_answered_at_once(backend: Backend) {
    use pb::access_request::State::{Approved, Declined, Pending};
    let app = spawn_app(backend).await;
    let v = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let d = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&v, &d).await;
    // Want (vendor, 6) and Have (dist, 7) share 5; Few (vendor, 5) shares 2 with Have.
    let mut ours = vec![];
    for i in 0..5 {
        ours.push(client(
            "Vendorside",
            &format!("s{i}@access.example"),
            "",
            "want",
        ));
    }
    ours.push(client("Vendorside", "vonly@access.example", "", "want"));
    for i in 0..5 {
        let email = match i {
            0..2 => format!("t{i}@access.example"),
            _ => format!("wonly{i}@access.example"),
        };
        ours.push(client("Vendorside", &email, "", "few"));
    }
    let ours = add(&app, &v, ours).await;
    let mut theirs = vec![];
    for i in 0..5 {
        let phone = format!("+14155550{}", 180 + i);
        theirs.push(client(
            "Distside",
            &format!("s{i}@access.example"),
            &phone,
            "have",
        ));
    }
    for i in 0..2 {
        theirs.push(client(
            "Distside",
            &format!("t{i}@access.example"),
            "",
            "have",
        ));
    }
    let theirs = add(&app, &d, theirs).await;
    let want = segment(&app, &v, "Want", "want", 6).await;
    let few = segment(&app, &v, "Few", "few", 5).await;
    let have = segment(&app, &d, "Have", "have", 7).await;
    let name = propose(&app, &v, &d.name, &[&want.name, &few.name])
        .await
        .expect("propose")
        .name;
    let operation = accept(&app, &d.admin_key, &name, &[&have.name])
        .await
        .expect("accept");
    let answer = compared(&finish(&app, &v.read_key, operation).await, &name);
    assert_eq!(
        answer.overlaps,
        [
            overlap(
                &want.name,
                &have.name,
                exact(5),
                fewer_than(5),
                fewer_than(5)
            ),
            overlap(
                &few.name,
                &have.name,
                fewer_than(5),
                more_than(0),
                more_than(2)
            ),
        ]
    );
    let mut matched: Vec<String> = theirs[..5].iter().map(|c| c.name.clone()).collect();
    matched.sort();

    // One call asks for the 5 matched records of dist's: one request each, one event
    // for each side.
    let v_heads = feed(&app, &v.read_key).await.len();
    let d_heads = feed(&app, &d.read_key).await.len();
    let asked = ask_overlap(&app, &v, &name, &want.name, &have.name)
        .await
        .expect("ask for the overlap");
    assert_eq!((asked.requested, asked.remaining), (5, 0));
    for (org, heads) in [(&v, v_heads), (&d, d_heads)] {
        assert_eq!(
            mapping_events(&app, &org.read_key, heads).await,
            kinds("account_mapping.access_requested", &name, 1)
        );
    }
    // Vendor does not learn which records until they are approved.
    let outgoing = access_requests(&app, &v.read_key, true).await;
    assert_eq!(outgoing.len(), 5, "{outgoing:?}");
    for r in &outgoing {
        assert_eq!(r.state, Pending as i32);
        assert_eq!(r.account_mapping, name);
        assert!(r.customer.is_empty() && r.r#match.is_empty(), "{r:?}");
        assert_eq!(
            (r.requester.as_str(), r.owner.as_str()),
            (v.name.as_str(), d.name.as_str())
        );
        assert_eq!(r.level, pb::AccessLevel::Read as i32);
        assert_eq!(r.fields, ["display_name", "emails"]);
        assert_eq!(r.reason, "Joint account planning");
    }
    let outgoing_text = text(&outgoing);
    for id in ids(&theirs) {
        assert!(
            !outgoing_text.contains(&id),
            "a record named: {outgoing_text}"
        );
    }
    // Dist, the owner, sees which.
    let incoming = access_requests(&app, &d.read_key, false).await;
    let mut asked_for: Vec<String> = incoming.iter().map(|r| r.customer.clone()).collect();
    asked_for.sort();
    assert_eq!(asked_for, matched);
    assert!(incoming.iter().all(|r| r.account_mapping == name));
    // Again: nothing more to ask for.
    let again = ask_overlap(&app, &v, &name, &want.name, &have.name)
        .await
        .expect("ask again");
    assert_eq!((again.requested, again.remaining), (0, 0));
    assert_eq!(access_requests(&app, &v.read_key, true).await.len(), 5);
    // A pair under the threshold cannot be asked for, from either side.
    assert_error(
        ask_overlap(&app, &v, &name, &few.name, &have.name).await,
        Code::FailedPrecondition,
        "OVERLAP_TOO_SMALL",
    );
    assert_error(
        ask_overlap(&app, &d, &name, &have.name, &few.name).await,
        Code::FailedPrecondition,
        "OVERLAP_TOO_SMALL",
    );

    // The other way: dist asks for vendor's 5, vendor declines them at once. Only the
    // requests to vendor are answered, not those vendor made.
    let reverse = ask_overlap(&app, &d, &name, &have.name, &want.name)
        .await
        .expect("dist asks");
    assert_eq!((reverse.requested, reverse.remaining), (5, 0));
    let v_heads = feed(&app, &v.read_key).await.len();
    let d_heads = feed(&app, &d.read_key).await.len();
    let declined = answer_overlap(&app, &v, &name, false, "Not before the contract")
        .await
        .expect("decline all");
    assert_eq!((declined.answered, declined.remaining), (5, 0));
    for (org, heads) in [(&v, v_heads), (&d, d_heads)] {
        assert_eq!(
            mapping_events(&app, &org.read_key, heads).await,
            kinds("account_mapping.access_answered", &name, 1)
        );
    }
    let dists = access_requests(&app, &d.read_key, true).await;
    assert_eq!(dists.len(), 5);
    for r in &dists {
        assert_eq!(r.state, Declined as i32);
        assert_eq!(r.decision_reason, "Not before the contract");
        assert!(r.customer.is_empty(), "{r:?}");
    }
    for c in &ours[..5] {
        assert_error(
            get(&app, &d.read_key, &c.name).await,
            Code::NotFound,
            "NOT_FOUND",
        );
    }
    assert!(
        access_requests(&app, &v.read_key, true)
            .await
            .iter()
            .all(|r| r.state == Pending as i32)
    );

    // Dist declines one by itself, then approves the rest at once.
    let refused = incoming[0].clone();
    app.sharing(&d.admin_key)
        .decline_access_request(pb::DeclineAccessRequestRequest {
            name: refused.name.clone(),
            reason: "Not this one".into(),
            request_id: String::new(),
        })
        .await
        .expect("decline one");
    let approved = answer_overlap(&app, &d, &name, true, "")
        .await
        .expect("approve the rest");
    assert_eq!((approved.answered, approved.remaining), (4, 0));
    let again = answer_overlap(&app, &d, &name, true, "")
        .await
        .expect("nothing left");
    assert_eq!((again.answered, again.remaining), (0, 0));
    let outgoing = access_requests(&app, &v.read_key, true).await;
    let granted: Vec<&pb::AccessRequest> = outgoing
        .iter()
        .filter(|r| r.state == Approved as i32)
        .collect();
    assert_eq!(granted.len(), 4, "{outgoing:?}");
    let mut visible = vec![];
    for r in &granted {
        assert!(!r.grant.is_empty(), "{r:?}");
        let seen = get(&app, &v.read_key, &r.customer)
            .await
            .expect("approved, so vendor sees it");
        assert_eq!(seen.visible_fields, ["display_name", "emails"]);
        assert!(seen.phones.is_empty(), "{seen:?}");
        visible.push(r.customer.clone());
    }
    let no: Vec<&pb::AccessRequest> = outgoing
        .iter()
        .filter(|r| r.state == Declined as i32)
        .collect();
    assert_eq!(no.len(), 1, "{outgoing:?}");
    assert_eq!(no[0].decision_reason, "Not this one");
    assert!(no[0].customer.is_empty(), "{:?}", no[0]);
    assert_error(
        get(&app, &v.read_key, &refused.customer).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    visible.sort();
    let mut all = visible.clone();
    all.push(refused.customer.clone());
    all.sort();
    assert_eq!(all, matched);
    // Vendor's list holds those four of dist's, and no other.
    let mut listed: Vec<String> = list(&app, &v.read_key, "")
        .await
        .into_iter()
        .map(|c| c.name)
        .filter(|n| theirs.iter().any(|c| &c.name == n))
        .collect();
    listed.sort();
    assert_eq!(listed, visible);
}

async fn either_side_ends_a_mapping_and_outsiders_see_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let d = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    let r = app
        .create_org("rival", pb::OrganizationKind::Retailer)
        .await;
    let s = app
        .create_org("stranger", pb::OrganizationKind::Retailer)
        .await;
    app.partner(&v, &d).await;
    app.partner(&v, &r).await;
    app.partner(&d, &r).await;
    for (org, family, tag) in [
        (&v, "Vendorside", "mine"),
        (&d, "Distside", "theirs"),
        (&r, "Rivalside", "rivals"),
        (&s, "Strangerside", "strangers"),
    ] {
        let customers = (0..5)
            .map(|i| client(family, &format!("e{i}@ends.example"), "", tag))
            .collect();
        add(&app, org, customers).await;
    }
    let mine = segment(&app, &v, "Mine", "mine", 5).await;
    let theirs = segment(&app, &d, "Theirs", "theirs", 5).await;
    let rivals = segment(&app, &r, "Rivals", "rivals", 5).await;
    let strangers = segment(&app, &s, "Strangers", "strangers", 5).await;

    // Asked for rightly or not at all.
    let bad = propose(&app, &v, &v.name, &[&mine.name]).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert_eq!(violated_fields(&bad), ["account_mapping.partner"]);
    assert_error(
        propose(&app, &v, "organizations/nosuch", &[&mine.name]).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_error(
        propose(&app, &v, &s.name, &[&mine.name]).await,
        Code::FailedPrecondition,
        "NO_ACTIVE_PARTNERSHIP",
    );
    assert_error(
        propose(&app, &s, &v.name, &[&strangers.name]).await,
        Code::FailedPrecondition,
        "NO_ACTIVE_PARTNERSHIP",
    );
    let mut eleven = vec![mine.name.clone()];
    for i in 1..11 {
        eleven.push(
            create_segment(&app, &v, &format!("Mine {i}"), "tag = mine")
                .await
                .unwrap()
                .name,
        );
    }
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    let none: [&str; 0] = [];
    let twice = [mine.name.as_str(), mine.name.as_str()];
    for segments in [&none[..], &twice[..], &eleven[..]] {
        let bad = propose(&app, &v, &d.name, segments).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{segments:?}: {bad:?}");
        let fields = violated_fields(&bad);
        assert!(
            !fields.is_empty()
                && fields
                    .iter()
                    .all(|f| f.starts_with("account_mapping.requester_segments")),
            "{segments:?}: {fields:?}"
        );
    }
    // Another organization's segment is not the caller's to name.
    assert_error(
        propose(&app, &v, &d.name, &[&theirs.name]).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    // A read key reads, and changes nothing.
    let read_only = Org {
        name: v.name.clone(),
        admin_key: v.read_key.clone(),
        read_key: v.read_key.clone(),
    };
    assert_error(
        propose(&app, &read_only, &d.name, &[&mine.name]).await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
    );

    // A proposal: only the partner answers it, and there is one open mapping per pair,
    // whoever asks.
    let first = propose(&app, &v, &d.name, &[&mine.name])
        .await
        .expect("propose");
    assert_error(
        accept(&app, &v.admin_key, &first.name, &[&mine.name]).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let again = propose(&app, &v, &d.name, &[&mine.name]).await;
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists);
    let reverse = propose(&app, &d, &v.name, &[&theirs.name]).await;
    assert_eq!(reverse.unwrap_err().code(), Code::AlreadyExists);
    let empty = accept(&app, &d.admin_key, &first.name, &[])
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&empty), ["segments"]);
    assert_error(
        accept(&app, &d.admin_key, &first.name, &[&mine.name]).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    // The outsider cannot tell it from one that does not exist.
    assert_error(
        get_mapping(&app, &r.read_key, &first.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_error(
        accept(&app, &r.admin_key, &first.name, &[&rivals.name]).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_error(
        decline(&app, &r.admin_key, &first.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let v_heads = feed(&app, &v.read_key).await.len();
    let d_heads = feed(&app, &d.read_key).await.len();
    let declined = decline(&app, &d.admin_key, &first.name)
        .await
        .expect("decline");
    assert_eq!(declined.state, State::Declined as i32);
    assert_eq!(declined.ended_by, d.name);
    for (org, heads) in [(&v, v_heads), (&d, d_heads)] {
        assert_eq!(
            mapping_events(&app, &org.read_key, heads).await,
            kinds("account_mapping.declined", &first.name, 1)
        );
    }
    assert_eq!(
        decline(&app, &d.admin_key, &first.name)
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    assert_error(
        accept(&app, &d.admin_key, &first.name, &[&theirs.name]).await,
        Code::FailedPrecondition,
        "MAPPING_NOT_PROPOSED",
    );

    // Declined, it is no longer open: another may be asked for, and compared.
    let second = propose(&app, &v, &d.name, &[&mine.name])
        .await
        .expect("propose again");
    let name = second.name.clone();
    let operation = accept(&app, &d.admin_key, &name, &[&theirs.name])
        .await
        .expect("accept");
    let operation = finish(&app, &d.read_key, operation).await;
    let answer = compared(&operation, &name);
    let figures = vec![overlap(
        &mine.name,
        &theirs.name,
        exact(5),
        fewer_than(5),
        fewer_than(5),
    )];
    assert_eq!(answer.overlaps, figures);
    // Both sides read the operation; the outsider reads neither it nor the mapping,
    // and changes nothing.
    for key in [&v.read_key, &d.read_key] {
        assert!(
            get_operation(&app, key, &operation.name)
                .await
                .unwrap()
                .done
        );
    }
    let rivals_view = [
        get_mapping(&app, &r.read_key, &name).await.map(|_| ()),
        accept(&app, &r.admin_key, &name, &[&rivals.name])
            .await
            .map(|_| ()),
        decline(&app, &r.admin_key, &name).await.map(|_| ()),
        update_segments(
            &app,
            &r.admin_key,
            &name,
            "partner_segments",
            &[&rivals.name],
        )
        .await
        .map(|_| ()),
        refresh(&app, &r.admin_key, &name).await.map(|_| ()),
        ask_overlap(&app, &r, &name, &rivals.name, &theirs.name)
            .await
            .map(|_| ()),
        answer_overlap(&app, &r, &name, true, "").await.map(|_| ()),
        end(&app, &r.admin_key, &name).await.map(|_| ()),
        get_operation(&app, &r.read_key, &operation.name)
            .await
            .map(|_| ()),
        app.operations(&r.read_key)
            .wait_operation(WaitOperationRequest {
                name: operation.name.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            })
            .await
            .map(|_| ()),
        app.operations(&r.admin_key)
            .cancel_operation(CancelOperationRequest {
                name: operation.name.clone(),
            })
            .await
            .map(|_| ()),
        app.operations(&r.admin_key)
            .delete_operation(DeleteOperationRequest {
                name: operation.name.clone(),
            })
            .await
            .map(|_| ()),
    ];
    for (i, result) in rivals_view.into_iter().enumerate() {
        let status = result.expect_err(&format!("call {i} of the outsider's must fail"));
        assert_eq!(status.code(), Code::NotFound, "call {i}: {status:?}");
    }
    assert!(
        list_mappings(&app, &r.read_key, "")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        list_operations(&app, &r.read_key, "")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        get_mapping(&app, &d.read_key, &name)
            .await
            .unwrap()
            .overlaps,
        figures,
        "the outsider's calls changed nothing"
    );

    // Each side changes only its own segments.
    let wrong = update_segments(&app, &v.admin_key, &name, "partner_segments", &[&mine.name]).await;
    let status = assert_error(wrong, Code::InvalidArgument, "INVALID_UPDATE_MASK");
    assert_eq!(violated_fields(&status), ["update_mask"]);
    let wrong = update_segments(
        &app,
        &d.admin_key,
        &name,
        "requester_segments",
        &[&theirs.name],
    )
    .await;
    let status = assert_error(wrong, Code::InvalidArgument, "INVALID_UPDATE_MASK");
    assert_eq!(violated_fields(&status), ["update_mask"]);
    let v_heads = feed(&app, &v.read_key).await.len();
    let d_heads = feed(&app, &d.read_key).await.len();
    let updated = update_segments(
        &app,
        &v.admin_key,
        &name,
        "requester_segments",
        &[&mine.name, eleven[1]],
    )
    .await
    .expect("update own segments");
    assert_eq!(
        shown(&updated.requester_segments),
        vec![
            (mine.name.clone(), "Mine".to_owned(), false),
            (eleven[1].to_owned(), "Mine 1".to_owned(), false),
        ]
    );
    assert_eq!(updated.overlaps, figures, "until the next comparison");
    for (org, heads) in [(&v, v_heads), (&d, d_heads)] {
        assert_eq!(
            mapping_events(&app, &org.read_key, heads).await,
            kinds("account_mapping.updated", &name, 1)
        );
    }

    // Listed for both sides, newest first; by state; a page at a time.
    assert_eq!(
        names_of_mappings(&list_mappings(&app, &v.read_key, "").await.unwrap()),
        [name.clone(), first.name.clone()]
    );
    assert_eq!(
        names_of_mappings(&list_mappings(&app, &d.read_key, "").await.unwrap()),
        [name.clone(), first.name.clone()]
    );
    assert_eq!(
        names_of_mappings(
            &list_mappings(&app, &v.read_key, "state = DECLINED")
                .await
                .unwrap()
        ),
        vec![first.name.clone()]
    );
    assert_eq!(
        names_of_mappings(
            &list_mappings(&app, &d.read_key, "state = ACTIVE")
                .await
                .unwrap()
        ),
        vec![name.clone()]
    );
    assert_error(
        list_mappings(&app, &v.read_key, "partner = dist").await,
        Code::InvalidArgument,
        "INVALID_FILTER",
    );
    let page = app
        .mappings(&v.read_key)
        .list_account_mappings(pb::ListAccountMappingsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        names_of_mappings(&page.account_mappings),
        vec![name.clone()]
    );
    assert!(!page.next_page_token.is_empty());
    let rest = app
        .mappings(&v.read_key)
        .list_account_mappings(pb::ListAccountMappingsRequest {
            page_size: 1,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        names_of_mappings(&rest.account_mappings),
        vec![first.name.clone()]
    );
    assert!(rest.next_page_token.is_empty());

    // Vendor ends it: both hear, the figures stay, nothing more can happen to it.
    let v_heads = feed(&app, &v.read_key).await.len();
    let d_heads = feed(&app, &d.read_key).await.len();
    let ended = end(&app, &v.admin_key, &name).await.expect("end");
    assert_eq!(ended.state, State::Ended as i32);
    assert_eq!(ended.ended_by, v.name);
    assert!(ended.end_time.is_some(), "{ended:?}");
    assert_eq!(ended.overlaps, figures);
    for (org, heads) in [(&v, v_heads), (&d, d_heads)] {
        assert_eq!(
            mapping_events(&app, &org.read_key, heads).await,
            kinds("account_mapping.ended", &name, 1)
        );
    }
    let seen = get_mapping(&app, &d.read_key, &name).await.unwrap();
    assert_eq!(seen.state, State::Ended as i32);
    assert_eq!(seen.ended_by, v.name);
    assert_error(
        refresh(&app, &d.admin_key, &name).await,
        Code::FailedPrecondition,
        "MAPPING_NOT_ACTIVE",
    );
    assert_error(
        end(&app, &d.admin_key, &name).await,
        Code::FailedPrecondition,
        "MAPPING_ENDED",
    );
    assert_error(
        update_segments(
            &app,
            &v.admin_key,
            &name,
            "requester_segments",
            &[&mine.name],
        )
        .await,
        Code::FailedPrecondition,
        "MAPPING_ENDED",
    );
    assert_eq!(
        ask_overlap(&app, &v, &name, &mine.name, &theirs.name)
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    // Ended, the pair may map again, either way round.
    let third = propose(&app, &d, &v.name, &[&theirs.name])
        .await
        .expect("a new proposal");
    assert_eq!(third.state, State::Proposed as i32);
    assert_eq!(third.requester, d.name);
}

async fn operations_can_be_listed_cancelled_and_deleted(backend: Backend) {
    // A hub whose threshold is 3: a segment of 3 takes part, and 3 in both is shown.
    let app = spawn_app_with(backend, |config| config.mapping.threshold = 3).await;
    let v = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let d = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&v, &d).await;
    let mut ours: Vec<pb::Customer> = (0..3)
        .map(|i| client("Vendorside", &format!("o{i}@ops.example"), "", "ops"))
        .collect();
    ours.push(client("Vendorside", "vonly@ops.example", "", "ops"));
    add(&app, &v, ours).await;
    let theirs = (0..3)
        .map(|i| client("Distside", &format!("o{i}@ops.example"), "", "ops"))
        .collect();
    add(&app, &d, theirs).await;
    let ours = segment(&app, &v, "Ours", "ops", 4).await;
    let theirs = segment(&app, &d, "Theirs", "ops", 3).await;
    let mapping = propose(&app, &v, &d.name, &[&ours.name])
        .await
        .expect("propose");
    assert_eq!(mapping.threshold, 3);
    let name = mapping.name.clone();
    let operation = accept(&app, &d.admin_key, &name, &[&theirs.name])
        .await
        .expect("accept");
    let operation = finish(&app, &v.read_key, operation).await;
    let answer = compared(&operation, &name);
    let figures = vec![overlap(
        &ours.name,
        &theirs.name,
        exact(3),
        fewer_than(3),
        fewer_than(3),
    )];
    assert_eq!(answer.overlaps, figures);
    assert_eq!(answer.threshold, 3);

    // Both sides list it, done; with a read key.
    for key in [&v.read_key, &d.read_key] {
        let listed = list_operations(&app, key, "").await.unwrap();
        assert_eq!(operation_names(&listed), vec![operation.name.clone()]);
        assert_eq!(listed[0], operation);
        assert_eq!(
            operation_names(&list_operations(&app, key, "done = true").await.unwrap()),
            vec![operation.name.clone()]
        );
        assert!(
            list_operations(&app, key, "done = false")
                .await
                .unwrap()
                .is_empty()
        );
        let bare = app
            .operations(key)
            .list_operations(ListOperationsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .operations;
        assert_eq!(operation_names(&bare), vec![operation.name.clone()]);
    }
    assert_error(
        list_operations(&app, &v.read_key, "target = x").await,
        Code::InvalidArgument,
        "INVALID_FILTER",
    );
    // A finished operation is answered at once, without a timeout.
    let started = Instant::now();
    let waited = app
        .operations(&d.read_key)
        .wait_operation(WaitOperationRequest {
            name: operation.name.clone(),
            timeout: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(waited, operation);

    // Cancelling and deleting need a write key; a finished operation cannot be
    // cancelled; deleted, it is gone for both sides, and the mapping keeps its figures.
    assert_error(
        app.operations(&v.read_key)
            .cancel_operation(CancelOperationRequest {
                name: operation.name.clone(),
            })
            .await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
    );
    assert_error(
        app.operations(&v.read_key)
            .delete_operation(DeleteOperationRequest {
                name: operation.name.clone(),
            })
            .await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
    );
    let cancel = app
        .operations(&v.admin_key)
        .cancel_operation(CancelOperationRequest {
            name: operation.name.clone(),
        })
        .await;
    assert_eq!(cancel.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(
        get_operation(&app, &v.read_key, &operation.name)
            .await
            .unwrap(),
        operation,
        "a refused cancel changes nothing"
    );
    app.operations(&d.admin_key)
        .delete_operation(DeleteOperationRequest {
            name: operation.name.clone(),
        })
        .await
        .expect("delete");
    for key in [&v.read_key, &d.read_key] {
        assert_error(
            get_operation(&app, key, &operation.name).await,
            Code::NotFound,
            "NOT_FOUND",
        );
        assert!(list_operations(&app, key, "").await.unwrap().is_empty());
    }
    assert_error(
        app.operations(&v.admin_key)
            .delete_operation(DeleteOperationRequest {
                name: operation.name.clone(),
            })
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let kept = get_mapping(&app, &v.read_key, &name).await.unwrap();
    assert_eq!(kept.overlaps, figures);
    assert_eq!(at(&kept.compare_time), at(&answer.compare_time));
}

/// `liaison operations ARGS --server SERVER`, with `key` in `LIAISON_API_KEY` (none if
/// empty).
async fn operations_cli(server: &str, args: &[&str], key: &str) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_liaison"));
    command
        .arg("operations")
        .args(args)
        .args(["--server", server])
        .env("LIAISON_LOG", "warn");
    if key.is_empty() {
        command.env_remove("LIAISON_API_KEY");
    } else {
        command.env("LIAISON_API_KEY", key);
    }
    command.output().await.expect("run liaison operations")
}

async fn the_cli_waits_for_an_operation_and_names_an_unknown_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let d = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    let r = app
        .create_org("rival", pb::OrganizationKind::Retailer)
        .await;
    app.partner(&v, &d).await;
    for (org, family) in [(&v, "Vendorside"), (&d, "Distside")] {
        let customers = (0..5)
            .map(|i| client(family, &format!("k{i}@cli.example"), "", "cli"))
            .collect();
        add(&app, org, customers).await;
    }
    let ours = segment(&app, &v, "Ours", "cli", 5).await;
    let theirs = segment(&app, &d, "Theirs", "cli", 5).await;
    let name = propose(&app, &v, &d.name, &[&ours.name])
        .await
        .expect("propose")
        .name;
    let operation = accept(&app, &d.admin_key, &name, &[&theirs.name])
        .await
        .expect("accept");
    let operation = finish(&app, &v.read_key, operation).await;
    compared(&operation, &name);

    let server = format!("http://{}", app.addr);
    let both = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .to_lowercase()
    };

    // Finished: exit 0, saying so (the key as a flag).
    let out = operations_cli(
        &server,
        &[
            "wait",
            operation.name.as_str(),
            "--key",
            v.read_key.as_str(),
        ],
        "",
    )
    .await;
    assert!(out.status.success(), "{}", both(&out));
    assert!(both(&out).contains("done"), "{}", both(&out));
    // `get` prints the operation as JSON (the key from the environment).
    let out = operations_cli(&server, &["get", operation.name.as_str()], &d.read_key).await;
    assert!(out.status.success(), "{}", both(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("JSON on stdout ({e}): {}", both(&out)));
    assert_eq!(json["name"], operation.name);
    assert_eq!(json["done"], true);

    // Unknown, or another organization's: nonzero, "not found".
    let ghost = format!("operations/{}", uuid::Uuid::now_v7());
    for (name, key) in [(&ghost, &v.read_key), (&operation.name, &r.read_key)] {
        let out = operations_cli(&server, &["wait", name.as_str()], key).await;
        assert!(!out.status.success(), "{name}: {}", both(&out));
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(stderr.contains("not found"), "{name}: {stderr}");
    }
}

/// `both` counts the requester's records: six of the vendor's companies at one domain
/// match a single company of the distributor's. Shown exactly, that would test one
/// record of the partner's; the pair is small on the partner's side, so it shows as
/// small and no access may be asked from it. And a record a third organization shares
/// with the partner matches, but is never the partner's to be asked for or to grant.
async fn lopsided_overlaps_are_small_and_only_the_owners_records_are_asked_for(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let d = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    let c = app.create_org("third", pb::OrganizationKind::Vendor).await;
    app.partner(&v, &d).await;
    app.partner(&c, &d).await;

    let mut ours = vec![];
    for i in 0..6 {
        ours.push(company(
            &format!("Target {i}"),
            &format!("buyer{i}@target.example"),
            "many",
        ));
    }
    for i in 0..6 {
        ours.push(client(
            "Vendorside",
            &format!("shared{i}@both.example"),
            "",
            "six",
        ));
    }
    add(&app, &v, ours).await;
    let mut theirs = vec![company("Target HQ", "boss@target.example", "one")];
    for i in 0..4 {
        theirs.push(client(
            "Distside",
            &format!("other{i}@else.example"),
            "",
            "one",
        ));
    }
    for i in 0..5 {
        theirs.push(client(
            "Distside",
            &format!("shared{i}@both.example"),
            "",
            "shared",
        ));
    }
    let theirs = add(&app, &d, theirs).await;
    // The sixth shared customer is the third organization's, granted to the
    // distributor whole.
    let foreign = add(
        &app,
        &c,
        vec![client("Thirdside", "shared5@both.example", "", "shared")],
    )
    .await
    .remove(0);
    grant(&app, &c, &foreign.name, &d, pb::AccessLevel::Read, &[])
        .await
        .expect("grant to the distributor");

    let many = segment(&app, &v, "Many", "many", 6).await;
    let six = segment(&app, &v, "Six", "six", 6).await;
    let one = segment(&app, &d, "One", "one", 5).await;
    let shared = segment(&app, &d, "Shared", "shared", 6).await;
    let proposed = propose(&app, &v, &d.name, &[&many.name, &six.name])
        .await
        .expect("propose");
    let name = proposed.name.clone();
    let op = accept(&app, &d.admin_key, &name, &[&one.name, &shared.name])
        .await
        .expect("accept");
    let mapping = compared(&finish(&app, &v.read_key, op).await, &name);
    assert_eq!(
        mapping.overlaps,
        vec![
            // Six of ours match one of theirs: small, whatever `both` is.
            overlap(
                &many.name,
                &one.name,
                fewer_than(5),
                more_than(1),
                more_than(0)
            ),
            overlap(
                &many.name,
                &shared.name,
                fewer_than(5),
                more_than(1),
                more_than(1)
            ),
            overlap(
                &six.name,
                &one.name,
                fewer_than(5),
                more_than(1),
                more_than(0)
            ),
            // All six match, the third organization's record among them.
            overlap(
                &six.name,
                &shared.name,
                exact(6),
                fewer_than(5),
                fewer_than(5)
            ),
        ]
    );
    assert_error(
        ask_overlap(&app, &v, &name, &many.name, &one.name).await,
        Code::FailedPrecondition,
        "OVERLAP_TOO_SMALL",
    );
    // Five requests, not six: the record the distributor sees but does not own is
    // not its to be asked for.
    let asked = ask_overlap(&app, &v, &name, &six.name, &shared.name)
        .await
        .expect("ask");
    assert_eq!((asked.requested, asked.remaining), (5, 0));
    let incoming = access_requests(&app, &d.read_key, false).await;
    let mut asked_for: Vec<String> = incoming.iter().map(|r| r.customer.clone()).collect();
    asked_for.sort();
    let mut owned: Vec<String> = theirs
        .iter()
        .filter(|c| c.tags == ["shared"])
        .map(|c| c.name.clone())
        .collect();
    owned.sort();
    assert_eq!(asked_for, owned);
    let answered = answer_overlap(&app, &d, &name, true, "")
        .await
        .expect("answer");
    assert_eq!((answered.answered, answered.remaining), (5, 0));
    for customer in &owned {
        get(&app, &v.read_key, customer)
            .await
            .expect("granted through the mapping");
    }
    assert_error(
        get(&app, &v.read_key, &foreign.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

/// A mapping needs a partnership, as sharing does: ending the last one between the two
/// ends the mapping. And a comparison cancelled as soon as it is asked for leaves the
/// mapping free: it names no operation once that one has ended.
async fn ending_the_partnership_ends_the_mapping_and_a_cancelled_comparison_frees_it(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let v = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let d = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    let partnership = app.partner(&v, &d).await;
    let mut ours = vec![];
    let mut theirs = vec![];
    for i in 0..5 {
        ours.push(client(
            "Vendorside",
            &format!("both{i}@x.example"),
            "",
            "ours",
        ));
        theirs.push(client(
            "Distside",
            &format!("both{i}@x.example"),
            "",
            "theirs",
        ));
    }
    add(&app, &v, ours).await;
    add(&app, &d, theirs).await;
    let a = segment(&app, &v, "Ours", "ours", 5).await;
    let b = segment(&app, &d, "Theirs", "theirs", 5).await;
    let name = propose(&app, &v, &d.name, &[&a.name])
        .await
        .expect("propose")
        .name;
    let op = accept(&app, &d.admin_key, &name, &[&b.name])
        .await
        .expect("accept");
    let cancelled = app
        .operations(&v.admin_key)
        .cancel_operation(CancelOperationRequest {
            name: op.name.clone(),
        })
        .await;
    let ended = finish(&app, &v.read_key, op).await;
    match (&cancelled, &ended.result) {
        // Cancelled in time: it ends as CANCELLED.
        (Ok(_), Some(lro::operation::Result::Error(e))) => {
            assert_eq!(e.code, Code::Cancelled as i32)
        }
        // Or the comparison was quicker than the cancellation.
        (Ok(_), Some(lro::operation::Result::Response(_))) => {}
        (Err(status), _) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        other => panic!("unexpected: {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = get_mapping(&app, &v.read_key, &name).await.unwrap();
        if m.operation.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the mapping still names {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Ending the partnership ends the mapping, for both, with an event each.
    let heads = mapping_events(&app, &v.read_key, 0).await.len();
    app.partnerships(&d.admin_key)
        .end_partnership(pb::EndPartnershipRequest {
            name: partnership.name.clone(),
            reason: "Contract over".into(),
            ..Default::default()
        })
        .await
        .expect("end the partnership");
    for key in [&v.read_key, &d.read_key] {
        let m = get_mapping(&app, key, &name).await.unwrap();
        assert_eq!(m.state, State::Ended as i32);
        assert_eq!(m.ended_by, d.name);
    }
    let events = mapping_events(&app, &v.read_key, 0).await;
    assert_eq!(events[heads..], kinds("account_mapping.ended", &name, 1));
    assert_error(
        refresh(&app, &v.admin_key, &name).await,
        Code::FailedPrecondition,
        "MAPPING_NOT_ACTIVE",
    );
    assert_error(
        ask_overlap(&app, &v, &name, &a.name, &b.name).await,
        Code::FailedPrecondition,
        "MAPPING_NOT_ACTIVE",
    );
}

/// With no interval to wait, what decides a refresh is how much changed: members
/// edited in place (the segments keep their sizes) count, one at a time they do not
/// reach the threshold, six do, and the hub compares by itself.
async fn members_changed_in_place_count_towards_a_refresh(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.mapping.refresh_interval_secs = 0).await;
    let v = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let d = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&v, &d).await;
    let mut ours = vec![];
    let mut theirs = vec![];
    for i in 0..8 {
        ours.push(client("Vendorside", &format!("m{i}@x.example"), "", "ours"));
        theirs.push(client("Distside", &format!("m{i}@x.example"), "", "theirs"));
    }
    let ours = add(&app, &v, ours).await;
    add(&app, &d, theirs).await;
    let a = segment(&app, &v, "Ours", "ours", 8).await;
    let b = segment(&app, &d, "Theirs", "theirs", 8).await;
    let name = propose(&app, &v, &d.name, &[&a.name])
        .await
        .expect("propose")
        .name;
    let op = accept(&app, &d.admin_key, &name, &[&b.name])
        .await
        .expect("accept");
    let first = compared(&finish(&app, &v.read_key, op).await, &name);
    let rename = async |c: &pb::Customer, given: &str| {
        let renamed = pb::Customer {
            name: c.name.clone(),
            given_name: given.into(),
            ..Default::default()
        };
        update(&app, &v.admin_key, renamed, &["given_name"])
            .await
            .expect("rename");
    };
    // One edit: the hub looks (every second here) and leaves the mapping be.
    rename(&ours[0], "Once").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.settle().await;
    let unchanged = get_mapping(&app, &v.read_key, &name).await.unwrap();
    assert_eq!(at(&unchanged.compare_time), at(&first.compare_time));
    assert_error(
        refresh(&app, &v.admin_key, &name).await,
        Code::FailedPrecondition,
        "MAPPING_FRESH",
    );
    // Five more: six edits, more than the threshold, and the sizes unchanged.
    for c in &ours[1..6] {
        rename(c, "Again").await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = get_mapping(&app, &v.read_key, &name).await.unwrap();
        if at(&now.compare_time) > at(&first.compare_time) && now.operation.is_empty() {
            assert_eq!(now.overlaps, first.overlaps);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hub did not compare again: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
