//! Partner scorecards: what a vendor and its reseller did for each other in a day,
//! counted by hand from a scripted day and recomputed from the raw rows by queries
//! written here (not the hub's); both sides see the same figures, an outsider nothing;
//! closed days are kept and outlive the raw rows; the reporting time zone moves the
//! days.

use std::collections::BTreeMap;

use jiff::SignedDuration;
use liaison::pb;
use tonic::{Code, Status};

use crate::cases::{fire, open};
use crate::customers::{create, person};
use crate::events::{feed, types};
use crate::helpers::{
    Backend, Org, TestApp, assert_error, spawn_app_with, tamper, violated_fields,
};
use crate::sharing::{grant, log};
use crate::webhooks::{Receiver, create_endpoint, eventually, reply, test_webhooks};

crate::on_both_backends!(
    a_day_between_two_partners_matches_its_raw_rows_for_both_sides,
    closed_days_are_kept_by_the_job_and_outlive_the_raw_rows,
    the_reporting_time_zone_is_either_sides_setting_and_moves_the_days,
    a_read_leaves_a_backlog_of_closed_days_to_the_job,
);

/// The relative error the hub states for its medians and percentiles.
const BOUND: f64 = 0.01;

async fn scorecard(
    app: &TestApp,
    key: &str,
    partnership: &str,
    period: pb::ScorecardPeriod,
    date: &str,
) -> Result<pb::PartnershipScorecard, Status> {
    app.partnerships(key)
        .get_partnership_scorecard(pb::GetPartnershipScorecardRequest {
            name: partnership.into(),
            period: period as i32,
            date: date.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Rows of `sql` (three columns: text, text, bigint), read from the database
/// directly.
async fn rows(app: &TestApp, sql: &str) -> Vec<(String, String, i64)> {
    use sqlx::Connection;
    let url = &app.config.database.url;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
    }
}

async fn org_id(app: &TestApp, org: &Org) -> String {
    let slug = org.name.trim_start_matches("organizations/");
    let found = rows(
        app,
        &format!("SELECT id, slug, CAST(0 AS BIGINT) FROM organizations WHERE slug = '{slug}'"),
    )
    .await;
    found[0].0.clone()
}

fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("a time");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

fn seconds(d: &Option<prost_types::Duration>) -> f64 {
    let d = d.as_ref().expect("a duration");
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}

/// One side's figures as recomputed here; durations in seconds, unsorted.
#[derive(Debug, Default)]
struct Expected {
    cases_received: i64,
    cases_resolved: i64,
    first_response: Vec<f64>,
    resolution: Vec<f64>,
    sla: BTreeMap<String, (i64, i64)>,
    tasks_overdue: i64,
    interactions_logged: i64,
    customers_shared: i64,
    time_to_answer: Vec<f64>,
    webhook_attempts: i64,
    webhook_succeeded: i64,
    webhook_latency: Vec<f64>,
    deals: [i64; 4],
}

/// The figures of the two sides `(a, b)` (organization ids) of `partnership_id` in
/// `[start, end)` (microseconds), straight from the raw rows.
async fn recompute(
    app: &TestApp,
    (a, b): (&str, &str),
    partnership_id: &str,
    (start, end): (i64, i64),
) -> BTreeMap<String, Expected> {
    let mut out: BTreeMap<String, Expected> = BTreeMap::new();
    out.insert(a.into(), Expected::default());
    out.insert(b.into(), Expected::default());
    let other = |x: &str| if x == a { b.to_owned() } else { a.to_owned() };
    let within = |col: &str| format!("{col} >= {start} AND {col} < {end}");
    let pair = format!(
        "EXISTS (SELECT 1 FROM case_participants x WHERE x.case_id = c.id AND x.organization_id = '{a}') \
         AND EXISTS (SELECT 1 FROM case_participants y WHERE y.case_id = c.id AND y.organization_id = '{b}') \
         AND c.opened_by IN ('{a}', '{b}')"
    );
    for (opener, template, _) in rows(
        app,
        &format!(
            "SELECT c.opened_by, c.template, CAST(0 AS BIGINT) FROM cases c WHERE {} AND {pair}",
            within("c.create_time")
        ),
    )
    .await
    {
        out.get_mut(&other(&opener)).unwrap().cases_received += 1;
        if template == "deal_registration" {
            out.get_mut(&opener).unwrap().deals[0] += 1;
        }
    }
    // Final states of the built-in templates these tests use.
    for (opener, to, took) in rows(
        app,
        &format!(
            "SELECT c.opened_by, h.to_state, h.create_time - c.create_time FROM case_history h \
             JOIN cases c ON c.id = h.case_id WHERE h.kind = 'case.transitioned' AND {} AND {pair}",
            within("h.create_time")
        ),
    )
    .await
    {
        let handler = out.get_mut(&other(&opener)).unwrap();
        if ["closed", "rejected", "won", "lost", "expired"].contains(&to.as_str()) {
            handler.cases_resolved += 1;
            handler.resolution.push(took as f64 / 1e6);
        }
        let deal = out.get_mut(&opener).unwrap();
        match to.as_str() {
            "approved" => deal.deals[1] += 1,
            "won" => deal.deals[2] += 1,
            "lost" => deal.deals[3] += 1,
            _ => {}
        }
    }
    // A first response: the other side's earliest comment to everyone or transition.
    for (opener, responder, took) in rows(
        app,
        &format!(
            "SELECT c.opened_by, h.organization_id, MIN(h.create_time) - c.create_time \
             FROM case_history h JOIN cases c ON c.id = h.case_id \
             WHERE h.kind IN ('case.commented', 'case.transitioned') AND h.visibility = 'participants' \
             AND h.organization_id IS NOT NULL AND h.organization_id <> c.opened_by AND {pair} \
             GROUP BY c.id, c.opened_by, c.create_time, h.organization_id \
             HAVING MIN(h.create_time) >= {start} AND MIN(h.create_time) < {end}"
        ),
    )
    .await
    {
        if responder == other(&opener) {
            out.get_mut(&responder).unwrap().first_response.push(took as f64 / 1e6);
        }
    }
    // SLA clocks, from the clocks themselves.
    for (opener, policy, _) in rows(
        app,
        &format!(
            "SELECT c.opened_by, k.policy, CAST(0 AS BIGINT) FROM case_sla_clocks k JOIN cases c \
             ON c.id = k.case_id WHERE k.phase = 'met' AND k.breach_time IS NULL AND {} AND {pair}",
            within("k.phase_time")
        ),
    )
    .await
    {
        let h = out.get_mut(&other(&opener)).unwrap();
        h.sla.entry(policy).or_default().0 += 1;
    }
    // Breaches, when the hub recorded them.
    for (opener, policy, _) in rows(
        app,
        &format!(
            "SELECT c.opened_by, h.subject, CAST(0 AS BIGINT) FROM case_history h JOIN cases c \
             ON c.id = h.case_id WHERE h.kind = 'case.sla_breached' AND {} AND {pair}",
            within("h.create_time")
        ),
    )
    .await
    {
        let h = out.get_mut(&other(&opener)).unwrap();
        h.sla.entry(policy).or_default().1 += 1;
    }
    // Tasks gone overdue: the hub marks them when their due time passes.
    for (assignee, _, _) in rows(
        app,
        &format!(
            "SELECT t.assignee_id, '', CAST(0 AS BIGINT) FROM case_tasks t JOIN cases c \
             ON c.id = t.case_id WHERE t.overdue = 1 AND {} AND {pair}",
            within("t.due_time")
        ),
    )
    .await
    {
        if let Some(x) = out.get_mut(&assignee) {
            x.tasks_overdue += 1;
        }
    }
    // Shared interactions on customers the other side owns or holds a grant to.
    for (author, _, n) in rows(
        app,
        &format!(
            "SELECT i.org_id, '', COUNT(*) FROM interactions i JOIN customers cu ON cu.id = i.customer_id \
             WHERE i.visibility = 'shared' AND i.org_id IN ('{a}', '{b}') AND {} \
             AND (cu.owner_id = CASE WHEN i.org_id = '{a}' THEN '{b}' ELSE '{a}' END \
               OR EXISTS (SELECT 1 FROM customer_grants g WHERE g.customer_id = cu.id \
                 AND g.revoke_time IS NULL \
                 AND g.grantee_id = CASE WHEN i.org_id = '{a}' THEN '{b}' ELSE '{a}' END)) \
             GROUP BY i.org_id",
            within("i.create_time")
        ),
    )
    .await
    {
        out.get_mut(&author).unwrap().interactions_logged += n;
    }
    for (owner, _, n) in rows(
        app,
        &format!(
            "SELECT cu.owner_id, '', COUNT(DISTINCT g.customer_id) FROM customer_grants g \
             JOIN customers cu ON cu.id = g.customer_id WHERE g.partnership_id = '{partnership_id}' \
             AND {} GROUP BY cu.owner_id",
            within("g.create_time")
        ),
    )
    .await
    {
        out.get_mut(&owner).unwrap().customers_shared += n;
    }
    for (owner, _, took) in rows(
        app,
        &format!(
            "SELECT owner_id, state, decide_time - create_time FROM access_requests \
             WHERE owner_id IN ('{a}', '{b}') AND requester_id IN ('{a}', '{b}') \
             AND state IN ('approved', 'declined') AND {}",
            within("decide_time")
        ),
    )
    .await
    {
        out.get_mut(&owner)
            .unwrap()
            .time_to_answer
            .push(took as f64 / 1e6);
    }
    // Webhook attempts of either side, for events about their shared cases or their
    // partnership.
    let shared: Vec<String> = rows(
        app,
        &format!("SELECT 'cases/' || c.id, '', CAST(0 AS BIGINT) FROM cases c WHERE {pair}"),
    )
    .await
    .into_iter()
    .map(|r| r.0)
    .chain([format!("partnerships/{partnership_id}")])
    .collect();
    let attempts: Vec<(String, String, i64)> = rows(
        app,
        &format!(
            "SELECT w.organization_id || ' ' || w.outcome, e.resource, w.latency_micros \
             FROM webhook_attempts w JOIN events e ON e.id = w.event_id \
             WHERE w.organization_id IN ('{a}', '{b}') AND {}",
            within("w.attempt_time")
        ),
    )
    .await;
    for (who, resource, latency) in attempts {
        let about = resource.split('/').take(2).collect::<Vec<_>>().join("/");
        if !shared.contains(&about) {
            continue;
        }
        let (org, outcome) = who.split_once(' ').unwrap();
        let x = out.get_mut(org).unwrap();
        x.webhook_attempts += 1;
        x.webhook_succeeded += i64::from(outcome == "succeeded");
        x.webhook_latency.push(latency as f64 / 1e6);
    }
    out
}

/// Checks a sketch's summary against the exact values: the same count, and each
/// quantile within the stated bound of the value of rank floor(q × (n − 1)).
fn check_summary(what: &str, got: &Option<pb::DurationSummary>, values: &[f64]) {
    let got = got.as_ref().expect(what);
    assert_eq!(got.count, values.len() as i64, "{what}: count");
    if values.is_empty() {
        assert!(got.median.is_none() && got.p90.is_none(), "{what}: empty");
        return;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let exact = |q: f64| sorted[(q * (sorted.len() as f64 - 1.0)) as usize];
    for (q, d) in [(0.5, &got.median), (0.9, &got.p90), (0.95, &got.p95)] {
        let (g, want) = (seconds(d), exact(q));
        // A microsecond of rounding on top of the sketch's bound.
        assert!(
            (g - want).abs() <= want * BOUND + 1e-6,
            "{what} q{q}: {g} s against {want} s"
        );
    }
}

/// Checks `card` against the raw rows of its window.
async fn matches_raw_rows(
    app: &TestApp,
    card: &pb::PartnershipScorecard,
    ids: &BTreeMap<String, String>,
) {
    let pid = card.partnership.trim_start_matches("partnerships/");
    let (a, b) = (
        &ids[&card.parties[0].organization],
        &ids[&card.parties[1].organization],
    );
    let window = (micros(&card.start_time), micros(&card.end_time));
    let want = recompute(app, (a, b), pid, window).await;
    for party in &card.parties {
        let w = &want[&ids[&party.organization]];
        let who = &party.organization;
        assert_eq!(
            (
                party.cases_received,
                party.cases_resolved,
                party.tasks_overdue,
                party.interactions_logged,
                party.customers_shared,
                party.access_requests_answered,
                party.webhook_attempts,
                party.webhook_succeeded,
            ),
            (
                w.cases_received,
                w.cases_resolved,
                w.tasks_overdue,
                w.interactions_logged,
                w.customers_shared,
                w.time_to_answer.len() as i64,
                w.webhook_attempts,
                w.webhook_succeeded,
            ),
            "{who}: counts"
        );
        assert_eq!(
            [
                party.deals_submitted,
                party.deals_approved,
                party.deals_won,
                party.deals_lost
            ],
            w.deals,
            "{who}: deals"
        );
        let sla: BTreeMap<String, (i64, i64)> = party
            .sla_clocks
            .iter()
            .map(|c| (c.policy.clone(), (c.met, c.breached)))
            .collect();
        assert_eq!(sla, w.sla, "{who}: SLA clocks");
        check_summary("first response", &party.first_response, &w.first_response);
        check_summary("resolution", &party.resolution, &w.resolution);
        check_summary("time to answer", &party.time_to_answer, &w.time_to_answer);
        check_summary(
            "webhook latency",
            &party.webhook_latency,
            &w.webhook_latency,
        );
    }
}

/// A vendor, its reseller, and an outsider partnered with the vendor alone.
struct Scene {
    vendor: Org,
    reseller: Org,
    outsider: Org,
    partnership: String,
    /// Organization resource names to ids.
    ids: BTreeMap<String, String>,
}

async fn scene(app: &TestApp) -> Scene {
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let reseller = app
        .create_org("reseller", pb::OrganizationKind::Retailer)
        .await;
    let outsider = app
        .create_org("outsider", pb::OrganizationKind::Retailer)
        .await;
    let partnership = app.partner(&vendor, &reseller).await.name;
    app.partner(&vendor, &outsider).await;
    let mut ids = BTreeMap::new();
    for o in [&vendor, &reseller, &outsider] {
        ids.insert(o.name.clone(), org_id(app, o).await);
    }
    Scene {
        vendor,
        reseller,
        outsider,
        partnership,
        ids,
    }
}

/// The reseller's day with the vendor, scripted: returns the local dates it spanned
/// (one, or two if it ran across midnight UTC).
async fn script_a_day(
    app: &TestApp,
    s: &Scene,
    receiver: &Receiver,
    (endpoint_types, triage_second): (&[&str], bool),
) -> Vec<String> {
    let today = || {
        app.store
            .clock()
            .now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date()
            .to_string()
    };
    let began = today();
    let (vendor, reseller, outsider) = (&s.vendor, &s.reseller, &s.outsider);
    // The reseller's endpoint hears of everything (webhook health).
    create_endpoint(app, reseller, &receiver.url, endpoint_types)
        .await
        .expect("endpoint");
    // A vendor customer shared with the reseller (and the outsider, another partnership).
    let shared = create(app, vendor, person("Grace", "Hopper", "grace@navy.example")).await;
    for to in [reseller, outsider] {
        grant(
            app,
            vendor,
            &shared.name,
            to,
            pb::AccessLevel::Read,
            &["given_name"],
        )
        .await
        .expect("grant");
    }
    // Shared later the same day, on the reseller's request.
    let unshared = create(app, vendor, person("Alan", "Turing", "alan@example.com")).await;
    let never = create(app, vendor, person("Ada", "Lovelace", "ada@example.com")).await;
    // Two service cases from the reseller: the vendor starts, resolves, and the
    // reseller closes the first; the vendor comments on the second.
    async fn service(app: &TestApp, by: &Org, vendor: &Org, customer: &str) -> pb::Case {
        open(
            app,
            by,
            "service_case",
            customer,
            &[(by, "retailer"), (vendor, "vendor")],
            pb::CasePriority::Normal,
            &[],
        )
        .await
        .expect("open a service case")
    }
    let first = service(app, reseller, vendor, &shared.name).await;
    let second = service(app, reseller, vendor, &shared.name).await;
    fire(app, reseller, &first.name, "triage", &[])
        .await
        .unwrap();
    fire(app, vendor, &first.name, "start", &[]).await.unwrap();
    fire(
        app,
        vendor,
        &first.name,
        "resolve",
        &[("resolution_code", "replaced")],
    )
    .await
    .unwrap();
    fire(app, reseller, &first.name, "close", &[])
        .await
        .unwrap();
    // Triaged, the second's first-response clock stops (met) before it could breach.
    if triage_second {
        fire(app, reseller, &second.name, "triage", &[])
            .await
            .unwrap();
    }
    for (visibility, body) in [
        (
            pb::CommentVisibility::OwnOrganization,
            "internal: check stock",
        ),
        (pb::CommentVisibility::AllParticipants, "We are on it"),
        (pb::CommentVisibility::AllParticipants, "Still on it"),
    ] {
        app.cases(&vendor.admin_key)
            .comment_on_case(pb::CommentOnCaseRequest {
                name: second.name.clone(),
                body: body.into(),
                visibility: visibility as i32,
                member: String::new(),
                request_id: String::new(),
            })
            .await
            .expect("comment");
    }
    // The outsider's case with the vendor is no business of this partnership.
    service(app, outsider, vendor, &shared.name).await;
    // Two deal registrations: one approved and won, one rejected.
    let deal = async |line: &str| {
        open(
            app,
            reseller,
            "deal_registration",
            &shared.name,
            &[(reseller, "reseller"), (vendor, "vendor")],
            pb::CasePriority::Normal,
            &[
                ("product_line", line),
                ("expected_close_date", "2027-03-31"),
            ],
        )
        .await
        .expect("register a deal")
    };
    let won = deal("blenders").await;
    let rejected = deal("toasters").await;
    fire(app, vendor, &won.name, "approve", &[]).await.unwrap();
    fire(app, reseller, &won.name, "win", &[]).await.unwrap();
    fire(
        app,
        vendor,
        &rejected.name,
        "reject",
        &[("rejection_reason", "not in territory")],
    )
    .await
    .unwrap();
    // A task for the reseller, due in a second: it goes overdue.
    let due = app.store.clock().now() + SignedDuration::from_secs(1);
    app.cases(&vendor.admin_key)
        .assign_task(pb::AssignTaskRequest {
            parent: second.name.clone(),
            task: Some(pb::CaseTask {
                title: "Send the serial number".into(),
                assignee: reseller.name.clone(),
                due_time: Some(prost_types::Timestamp {
                    seconds: due.as_second(),
                    nanos: due.subsec_nanosecond(),
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("assign a task");
    eventually("the task to go overdue", async || {
        types(&feed(app, &reseller.read_key).await)
            .contains(&"task.overdue")
            .then_some(())
    })
    .await;
    // Interactions: shared ones on customers the other side sees by the day's end
    // count for their author; a private one, one on a customer the reseller never
    // sees, and the outsider's do not.
    use pb::InteractionType::{Call, Meeting};
    use pb::InteractionVisibility::{Organization, Shared};
    log(
        app,
        reseller,
        &shared.name,
        Call,
        Shared,
        "Asked about the warranty",
    )
    .await;
    log(
        app,
        reseller,
        &shared.name,
        Meeting,
        Shared,
        "Demo in the shop",
    )
    .await;
    log(
        app,
        reseller,
        &shared.name,
        Call,
        Organization,
        "Our own note",
    )
    .await;
    log(
        app,
        vendor,
        &shared.name,
        Call,
        Shared,
        "Warranty confirmed",
    )
    .await;
    log(app, vendor, &unshared.name, Call, Shared, "Quote sent").await;
    log(
        app,
        vendor,
        &never.name,
        Call,
        Shared,
        "Not the reseller's business",
    )
    .await;
    log(
        app,
        outsider,
        &shared.name,
        Call,
        Shared,
        "Another partner's call",
    )
    .await;
    // The reseller finds the unshared customer and asks; the vendor approves.
    let matches = app
        .sharing(&reseller.read_key)
        .match_customer(pb::MatchCustomerRequest {
            email: "alan@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("match")
        .into_inner()
        .matches;
    let asked = app
        .sharing(&reseller.admin_key)
        .create_access_request(pb::CreateAccessRequestRequest {
            access_request: Some(pb::AccessRequest {
                r#match: matches[0].r#match.clone(),
                level: pb::AccessLevel::Read as i32,
                fields: vec!["display_name".into()],
                reason: "He asked us for a quote".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("ask")
        .into_inner();
    app.sharing(&vendor.admin_key)
        .approve_access_request(pb::ApproveAccessRequestRequest {
            name: asked.name,
            request_id: String::new(),
        })
        .await
        .expect("approve");
    // Every delivery to the reseller's endpoint has been answered.
    eventually("deliveries to settle", async || {
        let pending = rows(
            app,
            "SELECT '', '', COUNT(*) FROM webhook_deliveries WHERE state = 'pending'",
        )
        .await;
        (pending[0].2 == 0).then_some(())
    })
    .await;
    let mut dates = vec![began];
    let ended = today();
    if !dates.contains(&ended) {
        dates.push(ended);
    }
    dates
}

/// The sum of the days' figures for the side named `org` (counts only).
fn counts(cards: &[pb::PartnershipScorecard], org: &str) -> [i64; 12] {
    let mut sum = [0; 12];
    for card in cards {
        let p = card.parties.iter().find(|p| p.organization == org).unwrap();
        let each = [
            p.cases_received,
            p.cases_resolved,
            p.first_response.as_ref().unwrap().count,
            p.resolution.as_ref().unwrap().count,
            p.tasks_overdue,
            p.interactions_logged,
            p.customers_shared,
            p.access_requests_answered,
            p.deals_submitted,
            p.deals_approved,
            p.deals_won,
            p.deals_lost,
        ];
        for (s, e) in sum.iter_mut().zip(each) {
            *s += e;
        }
    }
    sum
}

async fn a_day_between_two_partners_matches_its_raw_rows_for_both_sides(backend: Backend) {
    let app = spawn_app_with(backend, test_webhooks).await;
    let s = scene(&app).await;
    let receiver = Receiver::start(&[200]).await;
    let dates = script_a_day(&app, &s, &receiver, (&[], true)).await;

    let mut cards = vec![];
    for date in &dates {
        let by_vendor = scorecard(
            &app,
            &s.vendor.read_key,
            &s.partnership,
            pb::ScorecardPeriod::Day,
            date,
        )
        .await
        .expect("the vendor's scorecard");
        let by_reseller = scorecard(
            &app,
            &s.reseller.read_key,
            &s.partnership,
            pb::ScorecardPeriod::Day,
            date,
        )
        .await
        .expect("the reseller's scorecard");
        // Both sides see the same figures, the proposer first (as of when each asked:
        // the running day ends now).
        let until_now = |c: &pb::PartnershipScorecard| pb::PartnershipScorecard {
            end_time: None,
            ..c.clone()
        };
        assert_eq!(until_now(&by_vendor), until_now(&by_reseller));
        assert_eq!(by_vendor.parties[0].organization, s.vendor.name);
        assert_eq!(
            (by_vendor.first_date.as_str(), by_vendor.time_zone.as_str()),
            (date.as_str(), "UTC")
        );
        assert!(!by_vendor.closed, "today is running");
        assert_eq!(by_vendor.relative_error, BOUND);
        matches_raw_rows(&app, &by_vendor, &s.ids).await;
        cards.push(by_vendor);
    }
    // Counted by hand: the vendor received 2 service cases and 2 deals, answered
    // each (start, a comment, approve, reject) and saw 3 reach a final state
    // (closed, won, rejected); it shared 2 customers (a grant, an approved request)
    // and logged 2 interactions the reseller sees. The reseller submitted 2 deals,
    // 1 approved and won; its task went overdue; it logged 2 shared interactions.
    assert_eq!(
        counts(&cards, &s.vendor.name),
        [4, 3, 4, 3, 0, 2, 2, 1, 0, 0, 0, 0]
    );
    assert_eq!(
        counts(&cards, &s.reseller.name),
        [0, 0, 0, 0, 1, 2, 0, 0, 2, 1, 1, 0]
    );
    let reseller = |c: &pb::PartnershipScorecard| {
        c.parties
            .iter()
            .find(|p| p.organization == s.reseller.name)
            .unwrap()
            .clone()
    };
    let attempts: i64 = cards.iter().map(|c| reseller(c).webhook_attempts).sum();
    assert!(attempts > 0, "the reseller's endpoint was called");
    let vendor_clocks: BTreeMap<String, i64> = cards
        .iter()
        .flat_map(|c| c.parties[0].sla_clocks.clone())
        .fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c.policy).or_default() += c.met;
            m
        });
    // First response (triaged) on both service cases, resolution (resolved) on the
    // first; the decision on both deals.
    assert_eq!(
        vendor_clocks,
        BTreeMap::from([
            ("decision".to_owned(), 2),
            ("first_response".to_owned(), 2),
            ("resolution".to_owned(), 1)
        ])
    );
    // Longer periods hold the day.
    let quarter = scorecard(
        &app,
        &s.reseller.read_key,
        &s.partnership,
        pb::ScorecardPeriod::Quarter,
        &dates[0],
    )
    .await
    .unwrap();
    assert!(quarter.first_date <= dates[0] && dates[0] <= quarter.last_date);
    assert!(
        counts(std::slice::from_ref(&quarter), &s.vendor.name)[0]
            >= counts(&cards[..1], &s.vendor.name)[0]
    );
    matches_raw_rows(&app, &quarter, &s.ids).await;

    // The walls: an outsider, even the vendor's other partner, finds nothing.
    for key in [&s.outsider.read_key, &s.outsider.admin_key] {
        let result = scorecard(&app, key, &s.partnership, pb::ScorecardPeriod::Day, "").await;
        assert_error(result, Code::NotFound, "NOT_FOUND");
    }
    let result = scorecard(
        &app,
        &s.vendor.read_key,
        "partnerships/01900000-0000-7000-8000-000000000000",
        pb::ScorecardPeriod::Day,
        "",
    )
    .await;
    assert_error(result, Code::NotFound, "NOT_FOUND");
    // Bad input names its fields.
    let result = scorecard(
        &app,
        &s.vendor.read_key,
        &s.partnership,
        pb::ScorecardPeriod::Unspecified,
        "2026-13-01",
    )
    .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, ["date", "period"]);
    let result = scorecard(
        &app,
        &s.vendor.read_key,
        "customers/x",
        pb::ScorecardPeriod::Day,
        "",
    )
    .await;
    assert_eq!(
        violated_fields(&assert_error(
            result,
            Code::InvalidArgument,
            "INVALID_RESOURCE_NAME"
        )),
        ["name"]
    );
    for far in ["9999-12-31", "1900-01-01"] {
        let result = scorecard(
            &app,
            &s.vendor.read_key,
            &s.partnership,
            pb::ScorecardPeriod::Quarter,
            far,
        )
        .await;
        let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
        assert_eq!(violated_fields(&status), ["date"]);
    }

    // The CSV export: one row per period and side, the same figures.
    let export = |key: &str, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
            .args(["export", "scorecards", &s.partnership, "--period", "day"])
            .args(["--server", &format!("http://{}", app.addr)])
            .args(extra)
            .env("LIAISON_API_KEY", key)
            .output()
            .expect("run liaison export scorecards")
    };
    let (from, to) = (&dates[0], dates.last().unwrap());
    let out = export(&s.reseller.read_key, &["--from", from, "--to", to]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut csv = csv::Reader::from_reader(out.stdout.as_slice());
    let header = csv.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let records: Vec<csv::StringRecord> = csv.records().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), 2 * dates.len());
    let received: i64 = records
        .iter()
        .filter(|r| r[column("organization")] == s.vendor.name)
        .map(|r| r[column("cases_received")].parse::<i64>().unwrap())
        .sum();
    assert_eq!(received, 4);
    let clocks = &records[0][column("sla_clocks")];
    assert!(clocks.contains("decision=2/0"), "{clocks}");
    // Refusals say why and exit non-zero.
    let out = export(&s.outsider.read_key, &["--from", from]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = export(&s.reseller.read_key, &["--from", to, "--to", "2000-01-01"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("is before first_date"), "{said}");
    app.stop().await.unwrap();
}

async fn closed_days_are_kept_by_the_job_and_outlive_the_raw_rows(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        test_webhooks(c);
        c.scorecards.aggregate_interval_secs = 1;
    })
    .await;
    let s = scene(&app).await;
    // The receiver turns down the first delivery of the first case opened (it is
    // retried), so the kept day holds a failure among its successes.
    let receiver = Receiver::scripted(|got| {
        let opened = got
            .iter()
            .filter(|r| r.json()["type"] == "case.opened")
            .count();
        let last_opened = got
            .last()
            .is_some_and(|r| r.json()["type"] == "case.opened");
        reply(if last_opened && opened == 1 { 500 } else { 200 })
    })
    .await;
    // The second case is left to breach its first-response clock once the hub's clock
    // moves on; the endpoint is not told of SLA events, so no delivery made after
    // the move (stamped by the system clock) lands in the day kept.
    let types = [
        "case.opened",
        "case.transitioned",
        "case.commented",
        "task.*",
        "customer.*",
        "grant.*",
        "interaction.*",
        "access_request.*",
    ];
    let dates = script_a_day(&app, &s, &receiver, (&types, false)).await;
    let pid = s.partnership.trim_start_matches("partnerships/").to_owned();
    let kept = async || {
        rows(
            &app,
            &format!("SELECT day, time_zone, CAST(0 AS BIGINT) FROM scorecard_days WHERE partnership_id = '{pid}' ORDER BY day"),
        )
        .await
    };
    assert!(kept().await.is_empty(), "no day has closed");
    // A day and a few minutes later, the job keeps the day (and none beyond it).
    app.advance(SignedDuration::from_hours(24) + SignedDuration::from_mins(5));
    let days = eventually("the job to keep the days", async || {
        let days = kept().await;
        days.iter()
            .any(|d| Some(&d.0) == dates.last())
            .then_some(days)
    })
    .await;
    assert!(days.iter().all(|d| d.1 == "UTC"));
    let mut cards = vec![];
    for date in &dates {
        let card = scorecard(
            &app,
            &s.vendor.read_key,
            &s.partnership,
            pb::ScorecardPeriod::Day,
            date,
        )
        .await
        .unwrap();
        assert!(card.closed, "{date} has closed");
        matches_raw_rows(&app, &card, &s.ids).await;
        cards.push(card);
    }
    // Kept days count the customers each side sees of the other's, as its own
    // ListCustomers does: the vendor's two the reseller was granted, none the other way.
    let seen = crate::customers::list(
        &app,
        &s.reseller.read_key,
        "owner = \"organizations/vendor\"",
    )
    .await;
    assert_eq!(seen.len(), 2);
    let last = cards.last().unwrap();
    assert_eq!(
        (
            last.parties[0].customers_visible,
            last.parties[1].customers_visible
        ),
        (Some(2), Some(0))
    );
    let reseller_attempts = |cards: &[pb::PartnershipScorecard]| {
        cards
            .iter()
            .map(|c| {
                let p = &c.parties[1];
                (
                    p.webhook_attempts,
                    p.webhook_succeeded,
                    p.webhook_success_rate,
                )
            })
            .collect::<Vec<_>>()
    };
    let (attempts, succeeded, _) = reseller_attempts(&cards)
        .into_iter()
        .fold((0, 0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1, 0.0));
    assert!(
        attempts > succeeded && succeeded > 0,
        "a failure, then successes: {attempts} {succeeded}"
    );

    // The second case's first-response clock breached once the hub's clock moved on:
    // it counts on the day the hub recorded it, the running one.
    let running = eventually("the breach to count", async || {
        let card = scorecard(
            &app,
            &s.vendor.read_key,
            &s.partnership,
            pb::ScorecardPeriod::Day,
            "",
        )
        .await
        .unwrap();
        let breached: i64 = card.parties[0]
            .sla_clocks
            .iter()
            .filter(|c| c.policy == "first_response")
            .map(|c| c.breached)
            .sum();
        (breached == 1).then_some(card)
    })
    .await;
    assert!(!dates.contains(&running.first_date));
    matches_raw_rows(&app, &running, &s.ids).await;

    // The raw rows go (retention, an operator's cleanup): the kept days stay.
    tamper(
        &app,
        "DELETE FROM webhook_attempts; DELETE FROM case_history; DELETE FROM case_sla_clocks;",
    )
    .await;
    let mut again = vec![];
    for date in &dates {
        again.push(
            scorecard(
                &app,
                &s.reseller.read_key,
                &s.partnership,
                pb::ScorecardPeriod::Day,
                date,
            )
            .await
            .unwrap(),
        );
    }
    assert_eq!(again, cards);
    assert_eq!(
        counts(&again, &s.vendor.name),
        [4, 3, 4, 3, 0, 2, 2, 1, 0, 0, 0, 0]
    );
    // The week holding the day merges it with the days around it, kept too.
    let week = scorecard(
        &app,
        &s.vendor.read_key,
        &s.partnership,
        pb::ScorecardPeriod::Week,
        &dates[0],
    )
    .await
    .unwrap();
    assert!(counts(std::slice::from_ref(&week), &s.vendor.name)[0] >= 4);
    app.stop().await.unwrap();
}

async fn the_reporting_time_zone_is_either_sides_setting_and_moves_the_days(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let s = scene(&app).await;
    let update = |key: &str, zone: &str, etag: &str, mask: &[&str]| {
        let (key, zone, etag) = (key.to_owned(), zone.to_owned(), etag.to_owned());
        let name = s.partnership.clone();
        let mask = prost_types::FieldMask {
            paths: mask.iter().map(|p| p.to_string()).collect(),
        };
        let app = &app;
        async move {
            app.partnerships(&key)
                .update_partnership(pb::UpdatePartnershipRequest {
                    partnership: Some(pb::Partnership {
                        name,
                        reporting_time_zone: zone,
                        etag,
                        ..Default::default()
                    }),
                    update_mask: Some(mask),
                    request_id: String::new(),
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let before = app
        .partnerships(&s.reseller.read_key)
        .get_partnership(pb::GetPartnershipRequest {
            name: s.partnership.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.reporting_time_zone, "UTC");
    // Bad input, a read key, an outsider and a stale etag are refused.
    let status = assert_error(
        update(
            &s.reseller.admin_key,
            "Mars/Olympus_Mons",
            "",
            &["reporting_time_zone"],
        )
        .await,
        Code::InvalidArgument,
        "INVALID_FIELD_VALUE",
    );
    assert_eq!(
        violated_fields(&status),
        ["partnership.reporting_time_zone"]
    );
    let status = assert_error(
        update(&s.reseller.admin_key, "UTC", "", &["relationship"]).await,
        Code::InvalidArgument,
        "INVALID_UPDATE_MASK",
    );
    assert_eq!(violated_fields(&status), ["update_mask"]);
    assert_error(
        update(
            &s.reseller.read_key,
            "Pacific/Auckland",
            "",
            &["reporting_time_zone"],
        )
        .await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
    );
    assert_error(
        update(
            &s.outsider.admin_key,
            "Pacific/Auckland",
            "",
            &["reporting_time_zone"],
        )
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_error(
        update(
            &s.reseller.admin_key,
            "Pacific/Auckland",
            "\"99\"",
            &["reporting_time_zone"],
        )
        .await,
        Code::Aborted,
        "STALE_ETAG",
    );
    // Either side may set it; both hear of it.
    let updated = update(
        &s.reseller.admin_key,
        "Pacific/Auckland",
        &before.etag,
        &["reporting_time_zone"],
    )
    .await
    .expect("update");
    assert_eq!(updated.reporting_time_zone, "Pacific/Auckland");
    assert_ne!(updated.etag, before.etag);
    for org in [&s.vendor, &s.reseller] {
        let events = feed(&app, &org.read_key).await;
        let last = events
            .iter()
            .rfind(|e| e.r#type == "partnership.updated")
            .expect("told");
        match &last.payload {
            Some(pb::event::Payload::Partnership(p)) => {
                assert_eq!(p.reporting_time_zone, "Pacific/Auckland")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!types(&feed(&app, &s.outsider.read_key).await).contains(&"partnership.updated"));
    // The days are Auckland's now: today there, from its midnight.
    let zone = jiff::tz::TimeZone::get("Pacific/Auckland").unwrap();
    let now = app.store.clock().now();
    let today = now.to_zoned(zone.clone()).date();
    let card = scorecard(
        &app,
        &s.vendor.read_key,
        &s.partnership,
        pb::ScorecardPeriod::Month,
        "",
    )
    .await
    .unwrap();
    assert_eq!(card.time_zone, "Pacific/Auckland");
    assert_eq!(card.first_date, today.first_of_month().to_string());
    let midnight = today
        .first_of_month()
        .to_zoned(zone)
        .unwrap()
        .start_of_day()
        .unwrap();
    assert_eq!(
        micros(&card.start_time),
        midnight.timestamp().as_microsecond()
    );
    assert!(!card.closed);
    app.stop().await.unwrap();
}

async fn a_read_leaves_a_backlog_of_closed_days_to_the_job(backend: Backend) {
    // The job runs as the hub starts, then not for a day.
    let app = spawn_app_with(backend, |c| c.scorecards.aggregate_interval_secs = 86_400).await;
    let s = scene(&app).await;
    let pid = s.partnership.trim_start_matches("partnerships/").to_owned();
    // A partnership from 12 days ago (before scorecards were kept, say).
    let ago = app.store.clock().now() - SignedDuration::from_hours(12 * 24);
    tamper(
        &app,
        &format!(
            "UPDATE partnerships SET create_time = {} WHERE id = '{pid}'",
            ago.as_microsecond()
        ),
    )
    .await;
    // A week that has closed, with at least 5 of its days after the partnership began.
    let week_ago = (app.store.clock().now() - SignedDuration::from_hours(8 * 24))
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    // A read computes no more than a few closed days from the raw rows: the rest is
    // the job's, and the caller is told to come back.
    let result = scorecard(
        &app,
        &s.vendor.read_key,
        &s.partnership,
        pb::ScorecardPeriod::Week,
        &week_ago,
    )
    .await;
    let status = result.expect_err("a week of days nobody kept");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("still being aggregated"),
        "{}",
        status.message()
    );
    // The next hub's job keeps every closed day from the partnership's first, in order.
    let app = app.restart(SignedDuration::ZERO).await;
    // (Waited for generously: the whole suite shares two cores.)
    let mut kept = 0;
    for _ in 0..240 {
        kept = rows(
            &app,
            &format!("SELECT '', '', COUNT(*) FROM scorecard_days WHERE partnership_id = '{pid}'"),
        )
        .await[0]
            .2;
        if kept >= 12 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!((12..=13).contains(&kept), "{kept} days kept for 12 days");
    let card = scorecard(
        &app,
        &s.vendor.read_key,
        &s.partnership,
        pb::ScorecardPeriod::Week,
        &week_ago,
    )
    .await
    .expect("kept days are read");
    assert!(card.closed);
    app.stop().await.unwrap();
}
