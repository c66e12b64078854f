//! Deal registration as partner programs run it: a product line and an expected close
//! date; two resellers' open registrations of one customer and product line flagged
//! to the vendor alone, with both side by side (or the later one turned down, first
//! come first served); expiry after 90 days without a change; events, webhooks and
//! email.

use jiff::SignedDuration;
use liaison::pb;
use tonic::Code;

use crate::cases::{fire, open};
use crate::customers::{create, person};
use crate::email::member;
use crate::events::{feed, types};
use crate::helpers::{
    Backend, Org, TestApp, assert_error, spawn_app_with, tamper, violated_fields,
};
use crate::sharing::grant;
use crate::webhooks::{Receiver, create_endpoint, eventually, test_webhooks};

/// A vendor, two resellers of its and a third reseller of another vendor's, and a
/// customer the vendor owns and shares (its name) with all three.
struct Program {
    vendor: Org,
    other_vendor: Org,
    alpha: Org,
    beta: Org,
    gamma: Org,
    customer: pb::Customer,
}

async fn program(app: &TestApp) -> Program {
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let other_vendor = app
        .create_org("other-vendor", pb::OrganizationKind::Vendor)
        .await;
    let alpha = app
        .create_org("alpha", pb::OrganizationKind::Retailer)
        .await;
    let beta = app.create_org("beta", pb::OrganizationKind::Retailer).await;
    let gamma = app
        .create_org("gamma", pb::OrganizationKind::Retailer)
        .await;
    for reseller in [&alpha, &beta] {
        app.partner(&vendor, reseller).await;
    }
    app.partner(&other_vendor, &gamma).await;
    app.partner(&vendor, &gamma).await;
    let customer = create(
        app,
        &vendor,
        person("Grace", "Hopper", "grace@navy.example"),
    )
    .await;
    for reseller in [&alpha, &beta, &gamma] {
        grant(
            app,
            &vendor,
            &customer.name,
            reseller,
            pb::AccessLevel::Read,
            &["given_name", "family_name"],
        )
        .await
        .expect("grant");
    }
    Program {
        vendor,
        other_vendor,
        alpha,
        beta,
        gamma,
        customer,
    }
}

/// `reseller` registers a deal on the program's customer with `vendor`.
async fn register(
    app: &TestApp,
    p: &Program,
    reseller: &Org,
    vendor: &Org,
    product_line: &str,
) -> pb::Case {
    open(
        app,
        reseller,
        "deal_registration",
        &p.customer.name,
        &[(reseller, "reseller"), (vendor, "vendor")],
        pb::CasePriority::Normal,
        &[
            ("product_line", product_line),
            ("expected_close_date", "2027-03-31"),
            ("deal_value", "EUR 120000"),
        ],
    )
    .await
    .expect("register a deal")
}

async fn seen_by(app: &TestApp, org: &Org, name: &str) -> pb::Case {
    app.cases(&org.read_key)
        .get_case(pb::GetCaseRequest { name: name.into() })
        .await
        .expect("get case")
        .into_inner()
}

async fn conflicted(app: &TestApp, org: &Org) -> Vec<String> {
    app.cases(&org.read_key)
        .list_cases(pb::ListCasesRequest {
            filter: "conflicted = true".into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list conflicted cases")
        .into_inner()
        .cases
        .into_iter()
        .map(|c| c.name)
        .collect()
}

fn conflict_of(event: &pb::Event) -> &pb::CaseConflict {
    match &event.payload {
        Some(pb::event::Payload::CaseConflict(k)) => k,
        other => panic!("not a conflict: {other:?}"),
    }
}

fn conflicts(events: &[pb::Event]) -> Vec<&pb::Event> {
    events
        .iter()
        .filter(|e| e.r#type == "case.conflict_detected")
        .collect()
}

async fn a_second_resellers_registration_is_flagged_to_the_vendor_alone(backend: Backend) {
    let outbox = tempfile::tempdir().unwrap();
    let dir = outbox.path().to_owned();
    let app = spawn_app_with(backend, |cfg| {
        test_webhooks(cfg);
        cfg.email.outbox_dir = dir.display().to_string();
    })
    .await;
    let p = program(&app).await;
    member(&app, &p.vendor, "Vera", "vera@vendor.example", "UTC").await;
    let receiver = Receiver::start(&[200]).await;
    create_endpoint(&app, &p.vendor, &receiver.url, &["case.conflict_detected"])
        .await
        .expect("endpoint");

    // The template says what a registration needs and how conflicts are settled.
    let template = app
        .cases(&p.alpha.read_key)
        .get_workflow_template(pb::GetWorkflowTemplateRequest {
            name: "workflowTemplates/deal_registration".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let rule = template.conflict_rule.as_ref().expect("a conflict rule");
    assert_eq!(
        (
            rule.fields.as_slice(),
            rule.judge.as_str(),
            rule.policy.as_str()
        ),
        (&["product_line".to_owned()][..], "vendor", "judge_decides")
    );
    let expire = template
        .transitions
        .iter()
        .find(|t| t.name == "expire")
        .unwrap();
    assert_eq!(expire.automatic_after_idle_days, 90);

    let first = register(&app, &p, &p.alpha, &p.vendor, "Mainframes").await;
    assert!(first.conflicting_cases.is_empty());
    // Another product line, or the same reseller again, or a registration with another
    // vendor: no conflict.
    register(&app, &p, &p.beta, &p.vendor, "Printers").await;
    register(&app, &p, &p.gamma, &p.other_vendor, "Mainframes").await;
    // The second reseller's registration of the same customer and product line
    // (compared regardless of case and spacing) conflicts.
    let second = register(&app, &p, &p.beta, &p.vendor, " mainframes").await;
    assert_eq!(second.state, "submitted", "the vendor decides");
    assert!(
        second.conflicting_cases.is_empty(),
        "the reseller is not told of the other's registration"
    );

    // The vendor sees both side by side, in its feed, its webhook and its email.
    let vendor_feed = feed(&app, &p.vendor.read_key).await;
    let flagged = conflicts(&vendor_feed);
    assert_eq!(flagged.len(), 1, "{:?}", types(&vendor_feed));
    let k = conflict_of(flagged[0]);
    assert_eq!(flagged[0].resource, second.name);
    assert_eq!(k.case.as_ref().unwrap().name, second.name);
    assert_eq!(k.conflicting_case.as_ref().unwrap().name, first.name);
    assert_eq!(k.case.as_ref().unwrap().opened_by, p.beta.name);
    assert_eq!(k.conflicting_case.as_ref().unwrap().opened_by, p.alpha.name);
    assert_eq!(k.fields, ["product_line"]);
    assert_eq!(k.policy, "judge_decides");
    assert_eq!(
        k.case.as_ref().unwrap().conflicting_cases,
        std::slice::from_ref(&first.name)
    );
    assert_eq!(
        seen_by(&app, &p.vendor, &first.name)
            .await
            .conflicting_cases,
        std::slice::from_ref(&second.name)
    );
    let mut listed = conflicted(&app, &p.vendor).await;
    listed.sort();
    let mut both = vec![first.name.clone(), second.name.clone()];
    both.sort();
    assert_eq!(listed, both);
    // Neither reseller hears of it, sees it on a case or can list by it; the other
    // vendor's reseller neither.
    for reseller in [&p.alpha, &p.beta, &p.gamma] {
        let events = feed(&app, &reseller.read_key).await;
        assert!(conflicts(&events).is_empty(), "{:?}", types(&events));
        assert!(conflicted(&app, reseller).await.is_empty());
    }
    assert!(
        seen_by(&app, &p.alpha, &first.name)
            .await
            .conflicting_cases
            .is_empty()
    );
    assert!(
        seen_by(&app, &p.beta, &second.name)
            .await
            .conflicting_cases
            .is_empty()
    );
    assert!(conflicts(&feed(&app, &p.other_vendor.read_key).await).is_empty());

    let delivered = receiver.wait_for(1).await;
    let body = delivered[0].json();
    assert_eq!(body["type"], "case.conflict_detected");
    assert_eq!(body["caseConflict"]["case"]["name"], second.name.as_str());
    assert_eq!(
        body["caseConflict"]["conflictingCase"]["name"],
        first.name.as_str()
    );
    let mail = eventually("the vendor's email about the conflict", async || {
        std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .filter_map(|f| std::fs::read_to_string(f.path()).ok())
            .find(|t| t.contains("vera@vendor.example") && t.contains("Conflicting registration"))
    })
    .await;
    let parsed = mail_parser::MessageParser::default()
        .parse(mail.as_bytes())
        .unwrap();
    let text = parsed.body_text(0).unwrap();
    assert!(text.contains("for you to decide"), "{text}");
    assert!(
        text.contains(&first.name) && text.contains(&second.name),
        "{text}"
    );
    assert!(text.contains("product line mainframes"), "{text}");

    // The product line is fixed once open: moving onto (or off) another's ground
    // would escape the check.
    let moved = fire(
        &app,
        &p.vendor,
        &second.name,
        "approve",
        &[("product_line", "Printers")],
    )
    .await;
    let status = assert_error(moved, Code::InvalidArgument, "FIELD_FIXED");
    assert_eq!(violated_fields(&status), ["fields.product_line"]);
    // Restating the same value is no change.
    fire(
        &app,
        &p.vendor,
        &first.name,
        "approve",
        &[("product_line", "Mainframes")],
    )
    .await
    .expect("approve the first");

    // The vendor turns the second down: the conflict is settled on both.
    fire(
        &app,
        &p.vendor,
        &second.name,
        "reject",
        &[("rejection_reason", "Alpha registered it first")],
    )
    .await
    .expect("reject the second");
    assert!(conflicted(&app, &p.vendor).await.is_empty());
    assert!(
        seen_by(&app, &p.vendor, &first.name)
            .await
            .conflicting_cases
            .is_empty()
    );
    // A closed registration conflicts with nothing: a third one conflicts with the
    // first only.
    let third = register(&app, &p, &p.gamma, &p.vendor, "MAINFRAMES").await;
    let third_seen = seen_by(&app, &p.vendor, &third.name).await;
    assert_eq!(
        third_seen.conflicting_cases,
        std::slice::from_ref(&first.name)
    );

    // A registration the vendor joins later is weighed when it joins, and no longer
    // once it leaves.
    let quiet = open(
        &app,
        &p.alpha,
        "deal_registration",
        &p.customer.name,
        &[(&p.alpha, "reseller")],
        pb::CasePriority::Normal,
        &[
            ("product_line", "Storage"),
            ("expected_close_date", "2027-03-31"),
        ],
    )
    .await
    .expect("a registration without the vendor");
    let loud = register(&app, &p, &p.beta, &p.vendor, "Storage").await;
    assert!(
        seen_by(&app, &p.vendor, &loud.name)
            .await
            .conflicting_cases
            .is_empty()
    );
    let before = conflicts(&feed(&app, &p.vendor.read_key).await).len();
    app.cases(&p.alpha.admin_key)
        .add_case_participant(pb::AddCaseParticipantRequest {
            name: quiet.name.clone(),
            participant: Some(pb::CaseParticipant {
                organization: p.vendor.name.clone(),
                role: "vendor".into(),
            }),
            request_id: String::new(),
        })
        .await
        .expect("add the vendor");
    let vendor_feed = feed(&app, &p.vendor.read_key).await;
    assert_eq!(conflicts(&vendor_feed).len(), before + 1);
    assert_eq!(
        seen_by(&app, &p.vendor, &loud.name).await.conflicting_cases,
        std::slice::from_ref(&quiet.name)
    );
    app.cases(&p.alpha.admin_key)
        .remove_case_participant(pb::RemoveCaseParticipantRequest {
            name: quiet.name.clone(),
            organization: p.vendor.name.clone(),
            ..Default::default()
        })
        .await
        .expect("remove the vendor");
    assert!(
        seen_by(&app, &p.vendor, &loud.name)
            .await
            .conflicting_cases
            .is_empty()
    );
}

/// Two resellers registering the same deal at the same moment: the customer's lock
/// queues the second, which sees the first; one conflict, recorded on both.
async fn registrations_opened_at_once_still_conflict_once(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let p = program(&app).await;
    let (a, b) = tokio::join!(
        register(&app, &p, &p.alpha, &p.vendor, "Storage"),
        register(&app, &p, &p.beta, &p.vendor, "Storage"),
    );
    let vendor_feed = feed(&app, &p.vendor.read_key).await;
    assert_eq!(
        conflicts(&vendor_feed).len(),
        1,
        "{:?}",
        types(&vendor_feed)
    );
    assert_eq!(
        seen_by(&app, &p.vendor, &a.name).await.conflicting_cases,
        std::slice::from_ref(&b.name)
    );
    assert_eq!(
        seen_by(&app, &p.vendor, &b.name).await.conflicting_cases,
        std::slice::from_ref(&a.name)
    );
}

/// The built-in template with first come, first served.
fn first_come_template() -> String {
    include_str!("../../src/domain/case/workflows/deal_registration.toml")
        .replace("policy = \"judge_decides\"", "policy = \"first_come\"")
}

async fn first_come_turns_the_later_registration_down_without_naming_the_first(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deal_registration.toml");
    std::fs::write(&file, first_come_template()).unwrap();
    let app = spawn_app_with(backend, |cfg| {
        cfg.workflows.templates = vec![file.display().to_string()];
    })
    .await;
    let p = program(&app).await;
    let first = register(&app, &p, &p.alpha, &p.vendor, "Mainframes").await;
    let later = register(&app, &p, &p.beta, &p.vendor, "Mainframes").await;
    assert_eq!(later.state, "rejected");
    assert!(later.closed);
    let reason = &later.fields["rejection_reason"];
    assert_eq!(
        reason,
        "another organization's open registration for this customer and product_line \
         came first"
    );
    assert!(!reason.contains("alpha"));
    // The reseller's feed: opened, then turned down by the hub.
    let beta_feed = feed(&app, &p.beta.read_key).await;
    let about: Vec<&pb::Event> = beta_feed
        .iter()
        .filter(|e| e.resource == later.name)
        .collect();
    let kinds: Vec<&str> = about.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(kinds, ["case.opened", "case.transitioned"]);
    assert!(about[1].actor.as_ref().unwrap().organization.is_empty());
    // The vendor is told, with the rejection already made; the first stands alone.
    let vendor_feed = feed(&app, &p.vendor.read_key).await;
    let flagged = conflicts(&vendor_feed);
    assert_eq!(flagged.len(), 1);
    let k = conflict_of(flagged[0]);
    assert_eq!(k.policy, "first_come");
    assert_eq!(k.case.as_ref().unwrap().state, "rejected");
    assert_eq!(k.conflicting_case.as_ref().unwrap().name, first.name);
    assert!(
        seen_by(&app, &p.vendor, &first.name)
            .await
            .conflicting_cases
            .is_empty()
    );
    assert_eq!(
        seen_by(&app, &p.alpha, &first.name).await.state,
        "submitted"
    );
}

async fn a_registration_expires_after_ninety_days_without_a_change(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let p = program(&app).await;
    let deal = register(&app, &p, &p.alpha, &p.vendor, "Mainframes").await;
    let expired = |events: &[pb::Event]| {
        events
            .iter()
            .filter(|e| e.r#type == "case.transitioned" && e.resource == deal.name)
            .filter(|e| match &e.payload {
                Some(pb::event::Payload::Case(c)) => c.state == "expired",
                _ => false,
            })
            .count()
    };
    // 89 days on, the vendor approves: a change, so the 90 days start again.
    app.advance(SignedDuration::from_hours(89 * 24));
    app.settle().await;
    assert_eq!(seen_by(&app, &p.alpha, &deal.name).await.state, "submitted");
    fire(&app, &p.vendor, &deal.name, "approve", &[])
        .await
        .expect("approve");
    app.advance(SignedDuration::from_hours(89 * 24));
    app.settle().await;
    assert_eq!(expired(&feed(&app, &p.alpha.read_key).await), 0);
    assert_eq!(seen_by(&app, &p.alpha, &deal.name).await.state, "approved");
    // Two more days without a change: the hub expires it.
    app.advance(SignedDuration::from_hours(2 * 24));
    let event = eventually("the idle deal expires", async || {
        let events = feed(&app, &p.alpha.read_key).await;
        (expired(&events) == 1).then(|| {
            events
                .into_iter()
                .rfind(|e| e.resource == deal.name)
                .unwrap()
        })
    })
    .await;
    assert!(event.actor.as_ref().unwrap().organization.is_empty());
    let now = seen_by(&app, &p.vendor, &deal.name).await;
    assert_eq!((now.state.as_str(), now.closed), ("expired", true));
}

/// A registration opened before its template expired idle deals has no such timer;
/// the hub gives it one at start, counted from its last change.
async fn an_older_registration_gets_its_idle_expiry_when_the_hub_starts(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let p = program(&app).await;
    let deal = register(&app, &p, &p.alpha, &p.vendor, "Mainframes").await;
    // Its only timers gone (the SLA timer's firing would reschedule it otherwise).
    tamper(&app, "DELETE FROM case_timers").await;
    // Down for 91 days: at start the hub sets the timer, which falls due at once.
    let app = app.restart(SignedDuration::from_hours(91 * 24)).await;
    let expired = eventually("the older deal expires", async || {
        let now = seen_by(&app, &p.vendor, &deal.name).await;
        (now.state == "expired").then_some(now)
    })
    .await;
    assert!(expired.closed);
}

crate::on_both_backends!(
    an_older_registration_gets_its_idle_expiry_when_the_hub_starts,
    a_second_resellers_registration_is_flagged_to_the_vendor_alone,
    registrations_opened_at_once_still_conflict_once,
    first_come_turns_the_later_registration_down_without_naming_the_first,
    a_registration_expires_after_ninety_days_without_a_change,
);
