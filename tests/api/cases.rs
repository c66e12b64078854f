//! Coordination workflows end to end: cases across a retailer, a distributor and a
//! vendor; every built-in template walked with every illegal transition tried; roles,
//! comments and tasks; SLA clocks moved by the hub's clock (never by sleeping),
//! with pauses, business hours over a DST change, escalation by email, timers that
//! survive a restart and fire once across replicas.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};
use liaison::pb;
use tonic::{Code, Status};

use crate::customers::{create, person};
use crate::email::{member, set_preferences};
use crate::events::{feed, types};
use crate::helpers::{
    Backend, Org, TestApp, assert_error, spawn_app, spawn_app_with, violated_fields,
};
use crate::sharing::grant;
use crate::webhooks::eventually;

/// The supply chain of these tests, and one partner of the retailer that is not on
/// the cases.
struct Chain {
    retailer: Org,
    distributor: Org,
    vendor: Org,
    stranger: Org,
    /// Owned by the retailer; the distributor sees its name only, the vendor nothing.
    customer: pb::Customer,
}

async fn chain(app: &TestApp) -> Chain {
    let retailer = app
        .create_org("retailer", pb::OrganizationKind::Retailer)
        .await;
    let distributor = app
        .create_org("distributor", pb::OrganizationKind::Distributor)
        .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let stranger = app
        .create_org("stranger", pb::OrganizationKind::Retailer)
        .await;
    for other in [&distributor, &vendor, &stranger] {
        app.partner(&retailer, other).await;
    }
    let customer = create(app, &retailer, person("Ada", "Lovelace", "ada@example.com")).await;
    grant(
        app,
        &retailer,
        &customer.name,
        &distributor,
        pb::AccessLevel::Read,
        &["given_name"],
    )
    .await
    .expect("grant");
    Chain {
        retailer,
        distributor,
        vendor,
        stranger,
        customer,
    }
}

fn participants(orgs: &[(&Org, &str)]) -> Vec<pb::CaseParticipant> {
    orgs.iter()
        .map(|(o, role)| pb::CaseParticipant {
            organization: o.name.clone(),
            role: role.to_string(),
        })
        .collect()
}

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) async fn open(
    app: &TestApp,
    by: &Org,
    template: &str,
    customer: &str,
    who: &[(&Org, &str)],
    priority: pb::CasePriority,
    case_fields: &[(&str, &str)],
) -> Result<pb::Case, Status> {
    app.cases(&by.admin_key)
        .open_case(pb::OpenCaseRequest {
            case: Some(pb::Case {
                template: format!("workflowTemplates/{template}"),
                customer: customer.into(),
                title: "Blender arrived broken".into(),
                description: "The jar is cracked.".into(),
                priority: priority as i32,
                participants: participants(who),
                fields: fields(case_fields),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn get(app: &TestApp, org: &Org, name: &str) -> Result<pb::Case, Status> {
    app.cases(&org.read_key)
        .get_case(pb::GetCaseRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

/// Fires `transition` as `org`, with the etag `org` reads now.
pub(crate) async fn fire(
    app: &TestApp,
    org: &Org,
    case: &str,
    transition: &str,
    with: &[(&str, &str)],
) -> Result<pb::Case, Status> {
    let current = get(app, org, case).await?;
    app.cases(&org.admin_key)
        .transition_case(pb::TransitionCaseRequest {
            name: case.into(),
            transition: transition.into(),
            etag: current.etag,
            fields: fields(with),
            comment: String::new(),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn history(
    app: &TestApp,
    org: &Org,
    case: &str,
) -> Result<Vec<pb::CaseHistoryEntry>, Status> {
    app.cases(&org.read_key)
        .list_case_history(pb::ListCaseHistoryRequest {
            name: case.into(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .map(|r| r.into_inner().entries)
}

fn kinds(entries: &[pb::CaseHistoryEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.kind.as_str()).collect()
}

fn ts(t: &Option<prost_types::Timestamp>) -> Timestamp {
    let t = t.as_ref().expect("a time");
    Timestamp::new(t.seconds, t.nanos).unwrap()
}

fn clock<'a>(case: &'a pb::Case, policy: &str) -> &'a pb::SlaClock {
    case.sla_clocks
        .iter()
        .find(|c| c.policy == policy)
        .unwrap_or_else(|| panic!("no {policy} clock on {case:?}"))
}

/// Moves the hub's clock forward; its workers look again by the new time.
fn advance(app: &TestApp, by: SignedDuration) {
    app.advance(by);
}

/// Moves the hub's clock to `at`.
fn advance_to(app: &TestApp, at: Timestamp) {
    app.advance(at.duration_since(app.store.clock().now()));
}

/// How far before a due time [`nothing_before`] looks: room for the moments the hub's
/// clock runs on (it follows the system clock) while the workers settle.
const JUST_BEFORE: SignedDuration = SignedDuration::from_secs(5);

/// Moves the hub's clock to just before `at` and waits until every worker has looked
/// by it and found nothing due; returns the feed of `org` then.
async fn nothing_before(app: &TestApp, org: &Org, at: Timestamp) -> Vec<pb::Event> {
    advance_to(app, at - JUST_BEFORE);
    app.settle().await;
    feed(app, &org.read_key).await
}

/// Moves the hub's clock to 1.5 s before `at`, then waits, without waking the timer
/// worker again, for the `n`th event of `event_type` about `case`: the worker must
/// wake by itself when `at` comes (it sleeps until the next timer falls due; a sleep
/// of the 30 s idle recheck would miss the deadline). Returns that event.
async fn on_its_own_schedule(
    app: &TestApp,
    org: &Org,
    event_type: &str,
    case: &str,
    n: usize,
    at: Timestamp,
) -> pb::Event {
    advance_to(app, at - SignedDuration::from_millis(1500));
    eventually(event_type, async || {
        let events = feed(app, &org.read_key).await;
        (count(&events, event_type, case) == n).then(|| {
            events
                .into_iter()
                .rfind(|e| e.r#type == event_type && e.resource == case)
                .unwrap()
        })
    })
    .await
}

/// Waits until the feed of `org` holds an event of `event_type` about `resource`.
async fn event_about(app: &TestApp, org: &Org, event_type: &str, resource: &str) -> pb::Event {
    eventually(event_type, async || {
        feed(app, &org.read_key)
            .await
            .into_iter()
            .find(|e| e.r#type == event_type && e.resource.starts_with(resource))
    })
    .await
}

fn count(events: &[pb::Event], event_type: &str, resource: &str) -> usize {
    events
        .iter()
        .filter(|e| e.r#type == event_type && e.resource == resource)
        .count()
}

fn case_of(event: &pb::Event) -> &pb::Case {
    match &event.payload {
        Some(pb::event::Payload::Case(c)) => c,
        other => panic!("not a case event: {other:?}"),
    }
}

/// Walks a template's happy path; before every step (and at the end) tries every
/// transition that cannot fire from the current state, as an organization whose
/// role could otherwise fire it, and expects TRANSITION_NOT_ALLOWED.
async fn walk(
    app: &TestApp,
    c: &Chain,
    template: &str,
    roles: [&str; 3],
    open_fields: &[(&str, &str)],
    path: &[(&str, &[(&str, &str)])],
    end: &str,
) {
    let orgs = [&c.retailer, &c.distributor, &c.vendor];
    let tpl = app
        .cases(&c.retailer.read_key)
        .get_workflow_template(pb::GetWorkflowTemplateRequest {
            name: format!("workflowTemplates/{template}"),
        })
        .await
        .expect("template")
        .into_inner();
    let who: Vec<(&Org, &str)> = orgs.iter().copied().zip(roles).collect();
    let case = open(
        app,
        &c.retailer,
        template,
        &c.customer.name,
        &who,
        pb::CasePriority::Normal,
        open_fields,
    )
    .await
    .expect("open");
    assert_eq!(case.state, tpl.initial_state);
    let able = |t: &pb::WorkflowTransition| -> &Org {
        let i = roles
            .iter()
            .position(|r| t.roles.iter().any(|x| x == r))
            .expect("some participant may fire it");
        orgs[i]
    };
    let mut illegal_tried = 0;
    for step in 0..=path.len() {
        let now = get(app, &c.retailer, &case.name).await.unwrap();
        for t in tpl
            .transitions
            .iter()
            .filter(|t| !t.from.contains(&now.state))
        {
            let refused = fire(app, able(t), &case.name, &t.name, &[]).await;
            let status = assert_error(refused, Code::FailedPrecondition, "TRANSITION_NOT_ALLOWED");
            assert!(
                status.message().contains(&format!("state {:?}", now.state)),
                "{status:?}"
            );
            // The transitions that can fire now, as PreconditionFailure violations.
            let failure = tonic_types::StatusExt::get_details_precondition_failure(&status)
                .expect("PreconditionFailure");
            assert!(failure.violations.iter().all(|v| v.subject == case.name));
            let allowed: Vec<&str> = failure
                .violations
                .iter()
                .filter(|v| v.r#type == "ALLOWED_NOW")
                .map(|v| v.description.as_str())
                .collect();
            for a in &allowed {
                let fires_here = tpl
                    .transitions
                    .iter()
                    .any(|x| x.name == *a && x.from.contains(&now.state));
                assert!(fires_here, "{a} is listed as allowed in {:?}", now.state);
            }
            illegal_tried += 1;
        }
        let Some((name, with)) = path.get(step) else {
            break;
        };
        let t = tpl.transitions.iter().find(|t| t.name == *name).unwrap();
        let after = fire(app, able(t), &case.name, name, with)
            .await
            .unwrap_or_else(|e| panic!("{template}: {name} from {}: {e:?}", now.state));
        assert_eq!(after.state, t.to, "{template}: {name}");
    }
    let last = get(app, &c.retailer, &case.name).await.unwrap();
    assert_eq!(last.state, end);
    assert!(last.closed, "{template} ends closed");
    assert!(last.allowed_transitions.is_empty());
    assert!(
        illegal_tried > path.len(),
        "{template}: tried {illegal_tried}"
    );
    let h = history(app, &c.vendor, &case.name).await.unwrap();
    assert_eq!(h.len(), path.len() + 1, "{template}: {:?}", kinds(&h));
}

async fn every_built_in_template_runs_its_happy_path_and_refuses_every_illegal_transition(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let c = chain(&app).await;
    let templates = app
        .cases(&c.vendor.read_key)
        .list_workflow_templates(pb::ListWorkflowTemplatesRequest {})
        .await
        .unwrap()
        .into_inner()
        .templates;
    let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "workflowTemplates/deal_registration",
            "workflowTemplates/return_authorization",
            "workflowTemplates/service_case"
        ]
    );
    walk(
        &app,
        &c,
        "service_case",
        ["retailer", "distributor", "vendor"],
        &[],
        &[
            ("triage", &[]),
            ("start", &[]),
            ("wait_on_partner", &[]),
            ("resume", &[]),
            ("wait_on_customer", &[]),
            ("resume", &[]),
            ("resolve", &[("resolution_code", "replaced")]),
            ("reopen", &[]),
            ("resolve", &[]),
            ("close", &[]),
        ],
        "closed",
    )
    .await;
    walk(
        &app,
        &c,
        "deal_registration",
        ["reseller", "distributor", "vendor"],
        &[
            ("product_line", "Blenders"),
            ("expected_close_date", "2099-06-30"),
            ("expiry_date", "2099-12-31"),
            ("deal_value", "EUR 120000"),
        ],
        &[("approve", &[]), ("win", &[])],
        "won",
    )
    .await;
    walk(
        &app,
        &c,
        "return_authorization",
        ["retailer", "distributor", "vendor"],
        &[],
        &[
            ("approve", &[("rma_number", "RMA-7")]),
            ("ship", &[("tracking_number", "1Z999")]),
            ("receive", &[]),
            ("refund", &[]),
        ],
        "refunded",
    )
    .await;
}

async fn participants_see_the_case_by_their_share_and_roles_fields_and_etags_are_enforced(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let c = chain(&app).await;
    let case = open(
        &app,
        &c.retailer,
        "service_case",
        &c.customer.name,
        &[
            (&c.retailer, "retailer"),
            (&c.distributor, "distributor"),
            (&c.vendor, "vendor"),
        ],
        pb::CasePriority::High,
        &[("product", "Blender 3000")],
    )
    .await
    .unwrap();
    assert_eq!(case.state, "new");
    assert_eq!(case.allowed_transitions, ["triage"]);
    assert_eq!(case.opened_by, c.retailer.name);
    // The customer through the visibility function: the owner sees everything, the
    // distributor its granted field, the vendor (no grant) the case but no customer.
    let own = case.customer_view.as_ref().unwrap();
    assert_eq!(own.emails.len(), 1);
    let d = get(&app, &c.distributor, &case.name).await.unwrap();
    let dv = d
        .customer_view
        .as_ref()
        .expect("the distributor has a grant");
    assert_eq!(dv.given_name, "Ada");
    assert!(dv.emails.is_empty() && dv.family_name.is_empty());
    assert_eq!(d.allowed_transitions, ["triage"]);
    let v = get(&app, &c.vendor, &case.name).await.unwrap();
    assert!(v.customer_view.is_none());
    assert_eq!(v.customer, c.customer.name);
    assert!(v.allowed_transitions.is_empty());
    // Non-participants: as if it did not exist.
    for denied in [
        get(&app, &c.stranger, &case.name).await.map(|_| ()),
        history(&app, &c.stranger, &case.name).await.map(|_| ()),
        app.cases(&c.stranger.read_key)
            .list_tasks(pb::ListTasksRequest {
                parent: case.name.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        fire(&app, &c.stranger, &case.name, "triage", &[])
            .await
            .map(|_| ()),
    ] {
        assert_error(denied, Code::NotFound, "NOT_FOUND");
    }
    let listed = |org: &Org, filter: &str| {
        let (app, key, filter) = (&app, org.read_key.clone(), filter.to_owned());
        async move {
            app.cases(&key)
                .list_cases(pb::ListCasesRequest {
                    filter,
                    page_size: 50,
                    page_token: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .cases
                .len()
        }
    };
    assert_eq!(listed(&c.stranger, "").await, 0);
    assert_eq!(listed(&c.vendor, "").await, 1);
    assert_eq!(
        listed(
            &c.vendor,
            &format!(
                "state = \"new\" AND template = \"service_case\" AND priority = HIGH AND \
                 participant = \"{}\" AND breached = false AND closed = false AND \
                 customer = \"{}\"",
                c.distributor.name, c.customer.name
            )
        )
        .await,
        1
    );
    assert_eq!(listed(&c.vendor, "state = \"closed\"").await, 0);
    assert_eq!(
        listed(&c.vendor, &format!("participant = \"{}\"", c.stranger.name)).await,
        0
    );
    let bad = app
        .cases(&c.vendor.read_key)
        .list_cases(pb::ListCasesRequest {
            filter: "colour = \"red\"".into(),
            ..Default::default()
        })
        .await;
    assert_error(bad, Code::InvalidArgument, "INVALID_FILTER");

    // Roles: the retailer may not start work; the vendor may not triage.
    let denied = fire(&app, &c.vendor, &case.name, "triage", &[]).await;
    let status = assert_error(denied, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    assert!(
        status.message().contains("retailer, distributor"),
        "{status:?}"
    );
    fire(&app, &c.distributor, &case.name, "triage", &[])
        .await
        .unwrap();
    let denied = fire(&app, &c.retailer, &case.name, "start", &[]).await;
    assert_error(denied, Code::PermissionDenied, "ROLE_NOT_ALLOWED");
    let unknown = fire(&app, &c.vendor, &case.name, "teleport", &[]).await;
    assert_eq!(violated_fields(&unknown.unwrap_err()), ["transition"]);
    fire(&app, &c.vendor, &case.name, "start", &[])
        .await
        .unwrap();

    // Required and checked fields.
    let missing = fire(&app, &c.vendor, &case.name, "resolve", &[]).await;
    let status = assert_error(missing, Code::InvalidArgument, "FIELD_REQUIRED");
    assert_eq!(violated_fields(&status), ["fields.resolution_code"]);
    let wrong = fire(
        &app,
        &c.vendor,
        &case.name,
        "resolve",
        &[("resolution_code", "magic"), ("colour", "red")],
    )
    .await;
    let mut bad_fields = violated_fields(&wrong.unwrap_err());
    bad_fields.sort();
    assert_eq!(bad_fields, ["fields.colour", "fields.resolution_code"]);

    // Etags: required, and a stale one is refused.
    let stale = get(&app, &c.vendor, &case.name).await.unwrap().etag;
    fire(&app, &c.vendor, &case.name, "wait_on_partner", &[])
        .await
        .unwrap();
    let request = |etag: &str, request_id: &str| pb::TransitionCaseRequest {
        name: case.name.clone(),
        transition: "resume".into(),
        etag: etag.into(),
        comment: "Parts arrived".into(),
        request_id: request_id.into(),
        ..Default::default()
    };
    let aborted = app
        .cases(&c.vendor.admin_key)
        .transition_case(request(&stale, ""))
        .await;
    assert_error(aborted, Code::Aborted, "STALE_ETAG");
    let no_etag = app
        .cases(&c.vendor.admin_key)
        .transition_case(request("", ""))
        .await;
    assert_eq!(violated_fields(&no_etag.unwrap_err()), ["etag"]);
    // A retried request gets the first answer and does not fire twice.
    let etag = get(&app, &c.vendor, &case.name).await.unwrap().etag;
    let first = app
        .cases(&c.vendor.admin_key)
        .transition_case(request(&etag, "resume-1"))
        .await
        .unwrap()
        .into_inner();
    let again = app
        .cases(&c.vendor.admin_key)
        .transition_case(request(&etag, "resume-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(first.state, "in_progress");

    // Every participant hears each change, with its own view of the customer.
    let vendor_feed = feed(&app, &c.vendor.read_key).await;
    let vendor_types: Vec<&str> = types(&vendor_feed)
        .into_iter()
        .filter(|t| t.starts_with("case."))
        .collect();
    assert_eq!(
        vendor_types,
        [
            "case.opened",
            "case.transitioned",
            "case.transitioned",
            "case.transitioned",
            "case.transitioned"
        ]
    );
    assert!(
        vendor_feed
            .iter()
            .filter(|e| e.r#type.starts_with("case."))
            .all(|e| case_of(e).customer_view.is_none())
    );
    let distributor_feed = feed(&app, &c.distributor.read_key).await;
    let opened = distributor_feed
        .iter()
        .find(|e| e.r#type == "case.opened")
        .unwrap();
    assert_eq!(
        case_of(opened).customer_view.as_ref().unwrap().given_name,
        "Ada"
    );
    let h = history(&app, &c.distributor, &case.name).await.unwrap();
    let resume = h.iter().rfind(|e| e.transition == "resume").unwrap();
    assert_eq!(
        (resume.from_state.as_str(), resume.to_state.as_str()),
        ("waiting_on_partner", "in_progress")
    );
    assert_eq!(resume.body, "Parts arrived");
    assert_eq!(resume.organization, c.vendor.name);
}

async fn comments_follow_their_visibility_and_participants_come_and_go(backend: Backend) {
    let app = spawn_app(backend).await;
    let c = chain(&app).await;
    let case = open(
        &app,
        &c.retailer,
        "service_case",
        &c.customer.name,
        &[(&c.retailer, "retailer"), (&c.vendor, "vendor")],
        pb::CasePriority::Normal,
        &[],
    )
    .await
    .unwrap();
    let comment = |org: &Org, body: &str, visibility: pb::CommentVisibility| {
        let (app, key, name, body) = (
            &app,
            org.admin_key.clone(),
            case.name.clone(),
            body.to_owned(),
        );
        async move {
            app.cases(&key)
                .comment_on_case(pb::CommentOnCaseRequest {
                    name,
                    body,
                    visibility: visibility as i32,
                    member: String::new(),
                    request_id: String::new(),
                })
                .await
        }
    };
    comment(
        &c.retailer,
        "Customer is upset",
        pb::CommentVisibility::AllParticipants,
    )
    .await
    .unwrap();
    comment(
        &c.retailer,
        "Offer a voucher if needed",
        pb::CommentVisibility::OwnOrganization,
    )
    .await
    .unwrap();
    let bad = comment(&c.vendor, "  ", pb::CommentVisibility::Unspecified).await;
    let mut bad_fields = violated_fields(&bad.unwrap_err());
    bad_fields.sort();
    assert_eq!(bad_fields, ["body", "visibility"]);
    let bodies = |entries: Vec<pb::CaseHistoryEntry>| -> Vec<String> {
        entries
            .into_iter()
            .filter(|e| e.kind == "case.commented")
            .map(|e| e.body)
            .collect()
    };
    assert_eq!(
        bodies(history(&app, &c.retailer, &case.name).await.unwrap()),
        ["Customer is upset", "Offer a voucher if needed"]
    );
    assert_eq!(
        bodies(history(&app, &c.vendor, &case.name).await.unwrap()),
        ["Customer is upset"]
    );
    let vendor_feed = feed(&app, &c.vendor.read_key).await;
    assert_eq!(count(&vendor_feed, "case.commented", &case.name), 1);
    assert_eq!(
        count(
            &feed(&app, &c.retailer.read_key).await,
            "case.commented",
            &case.name
        ),
        2
    );

    // Participants: only partners of the caller join; the opener removes others, an
    // organization removes itself; the last one stays.
    let add = |by: &Org, who: &Org, role: &str| {
        let (app, key, name) = (&app, by.admin_key.clone(), case.name.clone());
        let participant = pb::CaseParticipant {
            organization: who.name.clone(),
            role: role.into(),
        };
        async move {
            app.cases(&key)
                .add_case_participant(pb::AddCaseParticipantRequest {
                    name,
                    participant: Some(participant),
                    request_id: String::new(),
                })
                .await
        }
    };
    let not_partners = add(&c.vendor, &c.stranger, "retailer").await;
    assert_error(not_partners, Code::FailedPrecondition, "NOT_PARTNERS");
    let bad_role = add(&c.retailer, &c.stranger, "pirate").await;
    assert_eq!(
        violated_fields(&bad_role.unwrap_err()),
        ["participant.role"]
    );
    let joined = add(&c.retailer, &c.stranger, "distributor")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.participants.len(), 3);
    let twice = add(&c.retailer, &c.stranger, "distributor").await;
    assert_error(twice, Code::AlreadyExists, "ALREADY_A_PARTICIPANT");
    assert_eq!(
        history(&app, &c.stranger, &case.name).await.unwrap().len(),
        3,
        "a newcomer reads the history so far, except others' private comments"
    );
    event_about(&app, &c.stranger, "case.participant_added", &case.name).await;
    let remove = |by: &Org, who: &Org| {
        let (app, key, name, org) = (
            &app,
            by.admin_key.clone(),
            case.name.clone(),
            who.name.clone(),
        );
        async move {
            app.cases(&key)
                .remove_case_participant(pb::RemoveCaseParticipantRequest {
                    name,
                    organization: org,
                    request_id: String::new(),
                })
                .await
        }
    };
    let denied = remove(&c.vendor, &c.stranger).await;
    assert_error(denied, Code::PermissionDenied, "PERMISSION_DENIED");
    remove(&c.retailer, &c.stranger).await.unwrap();
    event_about(&app, &c.stranger, "case.participant_removed", &case.name).await;
    assert_error(
        get(&app, &c.stranger, &case.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    remove(&c.vendor, &c.vendor).await.unwrap();
    let last = remove(&c.retailer, &c.retailer).await;
    assert_error(last, Code::FailedPrecondition, "LAST_PARTICIPANT");
}

async fn tasks_are_accepted_declined_completed_and_fall_overdue(backend: Backend) {
    let app = spawn_app(backend).await;
    let c = chain(&app).await;
    let case = open(
        &app,
        &c.retailer,
        "service_case",
        &c.customer.name,
        &[
            (&c.retailer, "retailer"),
            (&c.distributor, "distributor"),
            (&c.vendor, "vendor"),
        ],
        pb::CasePriority::Normal,
        &[],
    )
    .await
    .unwrap();
    let dora = member(
        &app,
        &c.distributor,
        "Dora",
        "dora@distributor.example",
        "UTC",
    )
    .await;
    let now = app.store.clock().now();
    let assign = |to: &Org, title: &str, due: Option<Timestamp>, member: &str| {
        let (app, key, parent) = (&app, c.retailer.admin_key.clone(), case.name.clone());
        let task = pb::CaseTask {
            title: title.into(),
            assignee: to.name.clone(),
            assignee_member: member.into(),
            due_time: due.map(|t| prost_types::Timestamp {
                seconds: t.as_second(),
                nanos: t.subsec_nanosecond(),
            }),
            ..Default::default()
        };
        async move {
            app.cases(&key)
                .assign_task(pb::AssignTaskRequest {
                    parent,
                    task: Some(task),
                    request_id: String::new(),
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let bad = assign(
        &c.stranger,
        "",
        Some(now - SignedDuration::from_hours(1)),
        "",
    )
    .await;
    let mut bad_fields = violated_fields(&bad.unwrap_err());
    bad_fields.sort();
    assert_eq!(bad_fields, ["task.due_time", "task.title"]);
    let outsider = assign(&c.stranger, "Look", None, "").await;
    assert_eq!(violated_fields(&outsider.unwrap_err()), ["task.assignee"]);

    let swap = assign(
        &c.distributor,
        "Swap the unit",
        Some(now + SignedDuration::from_hours(4)),
        &dora.name,
    )
    .await
    .unwrap();
    assert_eq!(swap.state, pb::TaskState::Assigned as i32);
    assert_eq!(swap.assignee_member, dora.name);
    let act = |org: &Org, what: &str, name: &str, text: &str| {
        let (app, key, name, text, what) = (
            &app,
            org.admin_key.clone(),
            name.to_owned(),
            text.to_owned(),
            what.to_owned(),
        );
        async move {
            let mut client = app.cases(&key);
            match what.as_str() {
                "accept" => {
                    client
                        .accept_task(pb::AcceptTaskRequest {
                            name,
                            request_id: String::new(),
                        })
                        .await
                }
                "decline" => {
                    client
                        .decline_task(pb::DeclineTaskRequest {
                            name,
                            reason: text,
                            request_id: String::new(),
                        })
                        .await
                }
                _ => {
                    client
                        .complete_task(pb::CompleteTaskRequest {
                            name,
                            note: text,
                            request_id: String::new(),
                        })
                        .await
                }
            }
            .map(|r| r.into_inner())
        }
    };
    let not_yours = act(&c.vendor, "accept", &swap.name, "").await;
    assert_error(not_yours, Code::PermissionDenied, "NOT_THE_ASSIGNEE");
    act(&c.distributor, "accept", &swap.name, "").await.unwrap();
    let twice = act(&c.distributor, "accept", &swap.name, "").await;
    assert_error(twice, Code::FailedPrecondition, "TASK_NOT_OPEN");
    let done = act(&c.distributor, "complete", &swap.name, "Swapped on site")
        .await
        .unwrap();
    assert_eq!(done.state, pb::TaskState::Completed as i32);
    assert_eq!(done.completion_note, "Swapped on site");

    let firmware = assign(&c.vendor, "Check the firmware", None, "")
        .await
        .unwrap();
    let no_reason = act(&c.vendor, "decline", &firmware.name, " ").await;
    assert_eq!(violated_fields(&no_reason.unwrap_err()), ["reason"]);
    let declined = act(&c.vendor, "decline", &firmware.name, "Not a firmware fault")
        .await
        .unwrap();
    assert_eq!(declined.decline_reason, "Not a firmware fault");

    let call = assign(
        &c.distributor,
        "Call the customer",
        Some(now + SignedDuration::from_hours(2)),
        "",
    )
    .await
    .unwrap();
    // The first task was completed before its due time: it never falls overdue.
    advance(&app, SignedDuration::from_hours(5));
    let overdue = event_about(&app, &c.vendor, "task.overdue", &call.name).await;
    match overdue.payload {
        Some(pb::event::Payload::Task(t)) => assert!(t.overdue),
        other => panic!("{other:?}"),
    }
    app.settle().await;
    let all = feed(&app, &c.vendor.read_key).await;
    assert_eq!(count(&all, "task.overdue", &call.name), 1);
    assert_eq!(count(&all, "task.overdue", &swap.name), 0);
    let task_events: Vec<&str> = types(&all)
        .into_iter()
        .filter(|t| t.starts_with("task."))
        .collect();
    assert_eq!(
        task_events,
        [
            "task.assigned",
            "task.accepted",
            "task.completed",
            "task.assigned",
            "task.declined",
            "task.assigned",
            "task.overdue"
        ]
    );
    let tasks = app
        .cases(&c.vendor.read_key)
        .list_tasks(pb::ListTasksRequest {
            parent: case.name.clone(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tasks.tasks.len(), 2);
    assert!(!tasks.next_page_token.is_empty());
}

/// A service case at HIGH priority: first response in 4 h (warning at 75 %),
/// resolution in 24 h (warning at 80 %), both in calendar hours; waiting on the
/// customer pauses the clocks. A breach alerts the case's escalation contact by email
/// even though the organization turned SLA mail off.
async fn sla_clocks_warn_breach_pause_and_escalate_at_the_right_moments(backend: Backend) {
    let outbox = tempfile::tempdir().unwrap();
    let dir = outbox.path().to_owned();
    let app = spawn_app_with(backend, |cfg| {
        cfg.email.outbox_dir = dir.display().to_string();
    })
    .await;
    let c = chain(&app).await;
    let dora = member(
        &app,
        &c.distributor,
        "Dora",
        "dora@distributor.example",
        "UTC",
    )
    .await;
    member(
        &app,
        &c.distributor,
        "Dan",
        "dan@distributor.example",
        "UTC",
    )
    .await;
    set_preferences(
        &app,
        &c.distributor,
        pb::NotificationPreferences {
            name: format!("{}/notificationPreferences", c.distributor.name),
            sla: pb::NotificationMode::Off as i32,
            work_for_my_organization: pb::NotificationMode::Off as i32,
            ..Default::default()
        },
        &["sla", "work_for_my_organization"],
    )
    .await
    .unwrap();
    let case = app
        .cases(&c.retailer.admin_key)
        .open_case(pb::OpenCaseRequest {
            case: Some(pb::Case {
                template: "workflowTemplates/service_case".into(),
                customer: c.customer.name.clone(),
                title: "Fridge not cooling".into(),
                priority: pb::CasePriority::High as i32,
                participants: participants(&[
                    (&c.retailer, "retailer"),
                    (&c.distributor, "distributor"),
                ]),
                escalation_contacts: vec![dora.name.clone()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let t0 = ts(&case.create_time);
    let h = SignedDuration::from_hours;
    let first = clock(&case, "first_response");
    assert_eq!(first.state, pb::SlaClockState::Running as i32);
    assert_eq!(ts(&first.warn_time), t0 + h(3));
    assert_eq!(ts(&first.due_time), t0 + h(4));
    assert_eq!(ts(&clock(&case, "resolution").due_time), t0 + h(24));

    // Nothing before its time; then the warning, with no nudge after the last move
    // of the clock.
    let early = nothing_before(&app, &c.distributor, t0 + h(3)).await;
    assert_eq!(count(&early, "case.sla_warning", &case.name), 0);
    let warned = on_its_own_schedule(
        &app,
        &c.distributor,
        "case.sla_warning",
        &case.name,
        1,
        t0 + h(3),
    )
    .await;
    assert_eq!(
        ts(&clock(case_of(&warned), "first_response").warn_time),
        t0 + h(3)
    );
    let early = nothing_before(&app, &c.retailer, t0 + h(4)).await;
    assert_eq!(count(&early, "case.sla_breached", &case.name), 0);
    advance_to(&app, t0 + h(4) + SignedDuration::from_secs(1));
    let breached = event_about(&app, &c.retailer, "case.sla_breached", &case.name).await;
    let breached = case_of(&breached);
    assert!(breached.breached);
    assert_eq!(
        ts(&clock(breached, "first_response").breach_time),
        t0 + h(4)
    );
    assert!(
        get(&app, &c.distributor, &case.name)
            .await
            .unwrap()
            .breached
    );

    // The escalation contact hears of the breach by email; Dan, with SLA mail off,
    // does not (once every worker has nothing due, no mail to him is on its way).
    advance(&app, SignedDuration::from_secs(10));
    let sent = || -> Vec<String> {
        let Ok(files) = std::fs::read_dir(outbox.path()) else {
            return vec![];
        };
        files
            .flatten()
            .filter_map(|f| std::fs::read_to_string(f.path()).ok())
            .collect()
    };
    eventually("an email to the escalation contact", async || {
        sent()
            .iter()
            .any(|t| t.contains("dora@distributor.example"))
            .then_some(())
    })
    .await;
    app.settle().await;
    let to_dora = sent();
    let breach_mail = to_dora
        .iter()
        .find(|t| t.contains("dora@distributor.example"))
        .unwrap();
    let parsed = mail_parser::MessageParser::default()
        .parse(breach_mail.as_bytes())
        .unwrap();
    let subject = parsed.subject().unwrap();
    assert!(subject.contains("Case: Fridge not cooling"), "{subject}");
    assert!(parsed.body_text(0).unwrap().contains("SLA breached"));
    assert!(
        !to_dora
            .iter()
            .any(|t| t.contains("dan@distributor.example"))
    );

    // Triage meets the first response (late); waiting on the customer pauses the
    // resolution clock, which then falls due later by exactly the paused time.
    fire(&app, &c.distributor, &case.name, "triage", &[])
        .await
        .unwrap();
    let met = fire(&app, &c.distributor, &case.name, "start", &[])
        .await
        .unwrap();
    assert_eq!(
        clock(&met, "first_response").state,
        pb::SlaClockState::Met as i32
    );
    let paused = fire(&app, &c.distributor, &case.name, "wait_on_customer", &[])
        .await
        .unwrap();
    let p0 = ts(&paused.state_time);
    assert_eq!(
        clock(&paused, "resolution").state,
        pb::SlaClockState::Paused as i32
    );
    assert!(clock(&paused, "resolution").due_time.is_none());
    // Well past the resolution's warning and due times had it run on: once every
    // worker has looked by then, only the first response's warning and breach are
    // there, and the clock still shows paused.
    advance(&app, h(30));
    app.settle().await;
    let events = feed(&app, &c.retailer.read_key).await;
    assert_eq!(
        (
            count(&events, "case.sla_warning", &case.name),
            count(&events, "case.sla_breached", &case.name)
        ),
        (1, 1),
        "a paused clock neither warns nor breaches"
    );
    let still = clock(
        &get(&app, &c.retailer, &case.name).await.unwrap(),
        "resolution",
    )
    .clone();
    assert_eq!(still.state, pb::SlaClockState::Paused as i32);
    assert!(
        still.warn_time.is_none() && still.breach_time.is_none(),
        "{still:?}"
    );
    let resumed = fire(&app, &c.distributor, &case.name, "resume", &[])
        .await
        .unwrap();
    let p1 = ts(&resumed.state_time);
    let resolution = clock(&resumed, "resolution");
    assert_eq!(ts(&resolution.due_time), t0 + h(24) + (p1 - p0));
    assert_eq!(
        ts(&resolution.warn_time),
        t0 + SignedDuration::from_mins(19 * 60 + 12) + (p1 - p0)
    );
    // Resumed, it warns and breaches at the moved times, not before.
    let (warn, due) = (ts(&resolution.warn_time), ts(&resolution.due_time));
    let early = nothing_before(&app, &c.retailer, warn).await;
    assert_eq!(count(&early, "case.sla_warning", &case.name), 1);
    advance_to(&app, warn + SignedDuration::from_secs(1));
    eventually("the resolution warning", async || {
        let events = feed(&app, &c.retailer.read_key).await;
        (count(&events, "case.sla_warning", &case.name) == 2).then_some(())
    })
    .await;
    let early = nothing_before(&app, &c.retailer, due).await;
    assert_eq!(count(&early, "case.sla_breached", &case.name), 1);
    let breach =
        on_its_own_schedule(&app, &c.retailer, "case.sla_breached", &case.name, 2, due).await;
    assert_eq!(ts(&clock(case_of(&breach), "resolution").breach_time), due);
    app.settle().await;
    let events = feed(&app, &c.retailer.read_key).await;
    assert_eq!(count(&events, "case.sla_warning", &case.name), 2);
    assert_eq!(count(&events, "case.sla_breached", &case.name), 2);
    let h = history(&app, &c.retailer, &case.name).await.unwrap();
    let sla: Vec<(&str, &str)> = h
        .iter()
        .filter(|e| e.kind.starts_with("case.sla_"))
        .map(|e| (e.kind.as_str(), e.subject.as_str()))
        .collect();
    assert_eq!(
        sla,
        [
            ("case.sla_warning", "first_response"),
            ("case.sla_breached", "first_response"),
            ("case.sla_warning", "resolution"),
            ("case.sla_breached", "resolution"),
        ]
    );
    assert!(
        h.iter()
            .all(|e| !e.kind.starts_with("case.sla_") || e.organization.is_empty())
    );
}

const OFFICE_TEMPLATE: &str = r#"
name = "office_case"
title = "Office-hours case"
roles = ["retailer", "vendor"]
initial = "open"
[[states]]
name = "open"
[[states]]
name = "done"
final = true
[[transitions]]
name = "finish"
from = ["open"]
to = "done"
roles = ["vendor"]
[calendars.berlin_office]
time_zone = "Europe/Berlin"
days = ["mon", "tue", "wed", "thu", "fri"]
open = "09:00"
close = "17:00"
[[sla]]
name = "resolution"
calendar = "berlin_office"
target_hours = { normal = 8 }
warn_at_percent = 50
stop_states = ["done"]
"#;

/// An operator's template (loaded from a file) counts business hours in Berlin. Opened
/// on Friday 27 March 2026 at 13:00 CET, the weekend on which the clocks go forward:
/// 4 h are left on Friday, the other 4 h run from Monday 09:00 CEST (07:00 UTC).
async fn business_hours_skip_the_weekend_and_follow_the_dst_change(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("office_case.toml");
    std::fs::write(&file, OFFICE_TEMPLATE).unwrap();
    let path = file.display().to_string();
    let app = spawn_app_with(backend, |cfg| cfg.workflows.templates = vec![path]).await;
    let c = chain(&app).await;
    let office = app
        .cases(&c.vendor.read_key)
        .get_workflow_template(pb::GetWorkflowTemplateRequest {
            name: "workflowTemplates/office_case".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!office.built_in);
    assert_eq!(office.sla_policies[0].calendar, "berlin_office");
    // Set the hub's clock to Friday noon UTC.
    let friday: Timestamp = "2026-03-27T12:00:00Z".parse().unwrap();
    app.store
        .clock()
        .advance(friday.duration_since(app.store.clock().now()));
    let case = open(
        &app,
        &c.retailer,
        "office_case",
        &c.customer.name,
        &[(&c.retailer, "retailer"), (&c.vendor, "vendor")],
        pb::CasePriority::Normal,
        &[],
    )
    .await
    .unwrap();
    // The few milliseconds between setting the clock and opening shift every due
    // time by the same amount (both fall inside working windows).
    let drift = ts(&case.create_time).duration_since(friday);
    assert!(drift < SignedDuration::from_secs(60), "{drift:?}");
    let clock = clock(&case, "resolution");
    assert_eq!(clock.calendar, "berlin_office");
    let at = |s: &str| s.parse::<Timestamp>().unwrap() + drift;
    assert_eq!(ts(&clock.warn_time), at("2026-03-30T07:00:00Z"));
    assert_eq!(ts(&clock.due_time), at("2026-03-30T11:00:00Z"));
    // Saturday noon, and Monday just before the office opens: nothing has fired.
    let to = |app: &TestApp, s: &str| advance_to(app, at(s));
    to(&app, "2026-03-28T12:00:00Z");
    app.settle().await;
    let saturday = feed(&app, &c.vendor.read_key).await;
    assert_eq!(count(&saturday, "case.sla_warning", &case.name), 0);
    let monday = nothing_before(&app, &c.vendor, at("2026-03-30T07:00:00Z")).await;
    assert_eq!(count(&monday, "case.sla_warning", &case.name), 0);
    to(&app, "2026-03-30T07:00:01Z");
    event_about(&app, &c.vendor, "case.sla_warning", &case.name).await;
    let noon = nothing_before(&app, &c.vendor, at("2026-03-30T11:00:00Z")).await;
    assert_eq!(count(&noon, "case.sla_breached", &case.name), 0);
    to(&app, "2026-03-30T11:00:01Z");
    let breach = event_about(&app, &c.vendor, "case.sla_breached", &case.name).await;
    assert_eq!(
        ts(&clock_of(case_of(&breach)).breach_time),
        at("2026-03-30T11:00:00Z")
    );
}

fn clock_of(case: &pb::Case) -> &pb::SlaClock {
    &case.sla_clocks[0]
}

/// Timers are rows: a hub that was down while they fell due fires them as it starts;
/// with two replicas looking, each fires once.
async fn timers_survive_a_restart_and_fire_once_across_replicas(backend: Backend) {
    let app = spawn_app(backend).await;
    let c = chain(&app).await;
    let case = open(
        &app,
        &c.retailer,
        "service_case",
        &c.customer.name,
        &[(&c.retailer, "retailer"), (&c.vendor, "vendor")],
        pb::CasePriority::Urgent,
        &[],
    )
    .await
    .unwrap();
    // Urgent: first response in 1 h, resolution in 8 h (warning at 6 h 24 min).
    let app = app.restart(SignedDuration::from_hours(2)).await;
    eventually("the first-response breach after the restart", async || {
        let events = feed(&app, &c.vendor.read_key).await;
        (count(&events, "case.sla_breached", &case.name) == 1).then_some(())
    })
    .await;
    // Both replicas' clocks pass the resolution warning (each hub keeps a clock of
    // its own), so both find it due and race for it.
    let replica = app.replica().await;
    let warn = ts(&case.create_time) + SignedDuration::from_mins(6 * 60 + 24);
    for hub in [&app, &replica] {
        advance_to(hub, warn + SignedDuration::from_secs(1));
    }
    eventually("the resolution warning", async || {
        let events = feed(&app, &c.vendor.read_key).await;
        (count(&events, "case.sla_warning", &case.name) == 2).then_some(())
    })
    .await;
    app.settle().await;
    replica.settle().await;
    for org in [&c.vendor, &c.retailer] {
        let events = feed(&app, &org.read_key).await;
        assert_eq!(count(&events, "case.sla_warning", &case.name), 2);
        assert_eq!(count(&events, "case.sla_breached", &case.name), 1);
    }
}

/// A deal registration expires by itself the day after its expiry date.
async fn a_deal_expires_on_its_date_and_open_checks_every_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let c = chain(&app).await;
    let who = [(&c.retailer, "reseller"), (&c.vendor, "vendor")];
    let missing = open(
        &app,
        &c.retailer,
        "deal_registration",
        &c.customer.name,
        &who,
        pb::CasePriority::Normal,
        &[],
    )
    .await;
    let mut missing = violated_fields(&missing.unwrap_err());
    missing.sort();
    assert_eq!(
        missing,
        [
            "case.fields.expected_close_date",
            "case.fields.product_line"
        ]
    );
    let today = app
        .store
        .clock()
        .now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    let deal = open(
        &app,
        &c.retailer,
        "deal_registration",
        &c.customer.name,
        &who,
        pb::CasePriority::Normal,
        &[
            ("expiry_date", &today),
            ("product_line", "Blenders"),
            ("expected_close_date", &today),
        ],
    )
    .await
    .unwrap();
    assert_eq!(deal.state, "submitted");
    advance(&app, SignedDuration::from_hours(48));
    let expired = event_about(&app, &c.vendor, "case.transitioned", &deal.name).await;
    assert_eq!(case_of(&expired).state, "expired");
    assert!(
        expired.actor.as_ref().unwrap().organization.is_empty(),
        "the hub fired it"
    );
    assert!(case_of(&expired).closed);

    // Every bad field of an open is named at once.
    let bad = app
        .cases(&c.retailer.admin_key)
        .open_case(pb::OpenCaseRequest {
            case: Some(pb::Case {
                template: "workflowTemplates/nonsense".into(),
                customer: "customers/42".into(),
                title: String::new(),
                priority: 0,
                participants: participants(&[(&c.vendor, "vendor")]),
                escalation_contacts: vec!["someone".into()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await;
    let mut bad_fields = violated_fields(&bad.unwrap_err());
    bad_fields.sort();
    assert_eq!(
        bad_fields,
        [
            "case.customer",
            "case.escalation_contacts[0]",
            "case.participants",
            "case.priority",
            "case.template",
            "case.title"
        ]
    );
    let bad_role = open(
        &app,
        &c.retailer,
        "service_case",
        &c.customer.name,
        &[(&c.retailer, "pirate")],
        pb::CasePriority::Low,
        &[("colour", "red")],
    )
    .await;
    let mut bad_fields = violated_fields(&bad_role.unwrap_err());
    bad_fields.sort();
    assert_eq!(
        bad_fields,
        ["case.fields.colour", "case.participants[0].role"]
    );
    // Participants must be partners of the opener; the customer must be visible.
    let invisible = open(
        &app,
        &c.vendor,
        "service_case",
        &c.customer.name,
        &[(&c.vendor, "vendor"), (&c.distributor, "distributor")],
        pb::CasePriority::Low,
        &[],
    )
    .await;
    assert_error(invisible, Code::NotFound, "NOT_FOUND");
    let other = create(&app, &c.vendor, person("Grace", "Hopper", "")).await;
    let not_partners = open(
        &app,
        &c.vendor,
        "service_case",
        &other.name,
        &[(&c.vendor, "vendor"), (&c.distributor, "distributor")],
        pb::CasePriority::Low,
        &[],
    )
    .await;
    assert_error(not_partners, Code::FailedPrecondition, "NOT_PARTNERS");
}

crate::on_both_backends!(
    every_built_in_template_runs_its_happy_path_and_refuses_every_illegal_transition,
    participants_see_the_case_by_their_share_and_roles_fields_and_etags_are_enforced,
    comments_follow_their_visibility_and_participants_come_and_go,
    tasks_are_accepted_declined_completed_and_fall_overdue,
    sla_clocks_warn_breach_pause_and_escalate_at_the_right_moments,
    business_hours_skip_the_weekend_and_follow_the_dst_change,
    timers_survive_a_restart_and_fire_once_across_replicas,
    a_deal_expires_on_its_date_and_open_checks_every_field,
);

/// A template file with mistakes stops the hub at start, naming the file and each
/// mistake.
#[tokio::test]
async fn an_invalid_template_file_stops_the_hub_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        OFFICE_TEMPLATE.replace("from = [\"open\"]", "from = [\"opne\"]"),
    )
    .unwrap();
    let mut config = crate::helpers::test_config(format!(
        "sqlite://{}",
        dir.path().join("liaison.db").display()
    ));
    config.workflows.templates = vec![file.display().to_string()];
    let error = match liaison::startup::Application::build(config.clone()).await {
        Ok(_) => panic!("a broken template must stop the hub"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("broken.toml"), "{error}");
    assert!(
        error.contains("from state \"opne\" is not declared"),
        "{error}"
    );
    assert!(
        error.contains("state \"done\" cannot be reached"),
        "{error}"
    );
    let checked = config.validate().unwrap_err().to_string();
    assert!(checked.contains("workflows.templates"), "{checked}");
}
