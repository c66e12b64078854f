//! Customer metrics: each organization's from the interactions it sees, kept as
//! interactions arrive, moved by a merge and gone with an erasure; the owner's shown
//! to a partner only through a grant; usable in filters and segments; checked and
//! repaired against the interactions.

use liaison::pb;
use tonic::Code;

use crate::customers::{create, person};
use crate::helpers::{Backend, Org, TestApp, spawn_app, spawn_app_with, tamper, violated_fields};
use crate::rules::{count, create_segment};
use crate::sharing::grant;
use crate::webhooks::eventually;

crate::on_both_backends!(
    rfm_scores_rank_each_organizations_buyers_in_fifths_of_its_own,
    each_organization_counts_what_it_sees_and_the_owners_metrics_need_a_grant,
    metrics_filter_and_segment_customers_and_follow_merges_and_erasure,
    the_repair_command_finds_and_mends_totals_that_drifted,
);

/// A moment in 2026, `day` days into it.
fn day(day: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_767_225_600 + day * 86_400,
        nanos: 0,
    }
}

fn money(currency: &str, units: i64, nanos: i32) -> pb::Money {
    pb::Money {
        currency_code: currency.into(),
        units,
        nanos,
    }
}

/// Logs one interaction by `org` on `customer`.
async fn log(
    app: &TestApp,
    org: &Org,
    customer: &str,
    (kind, shared): (pb::InteractionType, bool),
    amount: Option<pb::Money>,
    on: i64,
) {
    let visibility = if shared {
        pb::InteractionVisibility::Shared
    } else {
        pb::InteractionVisibility::Organization
    };
    app.interactions(&org.admin_key)
        .log_interaction(pb::LogInteractionRequest {
            parent: customer.into(),
            interaction: Some(pb::Interaction {
                r#type: kind as i32,
                occur_time: Some(day(on)),
                summary: format!("{kind:?} on day {on}"),
                visibility: visibility as i32,
                amount,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("log interaction");
}

async fn read(app: &TestApp, org: &Org, name: &str) -> pb::Customer {
    app.customers(&org.read_key)
        .get_customer(pb::GetCustomerRequest { name: name.into() })
        .await
        .expect("get customer")
        .into_inner()
}

async fn listed(app: &TestApp, org: &Org, filter: &str) -> Result<Vec<String>, tonic::Status> {
    app.customers(&org.read_key)
        .list_customers(pb::ListCustomersRequest {
            filter: filter.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .map(|r| {
            r.into_inner()
                .customers
                .into_iter()
                .map(|c| c.name)
                .collect()
        })
}

fn values(list: &[pb::Money]) -> Vec<(String, i64, i32)> {
    list.iter()
        .map(|m| (m.currency_code.clone(), m.units, m.nanos))
        .collect()
}

fn span(m: &pb::CustomerMetrics, kind: pb::InteractionType) -> Option<&pb::InteractionSpan> {
    m.interactions.iter().find(|s| s.r#type == kind as i32)
}

use pb::InteractionType::{Call, Complaint, Meeting, Purchase};

/// The owner logs shared and private purchases in two currencies, a credit on a
/// complaint and a private call; the partner a private purchase and a shared meeting.
async fn history(app: &TestApp, owner: &Org, partner: &Org, customer: &str) {
    let steps = [
        (owner, Purchase, true, Some(money("EUR", 100, 0)), 10),
        (
            owner,
            Purchase,
            false,
            Some(money("EUR", 50, 250_000_000)),
            20,
        ),
        (owner, Purchase, true, Some(money("usd", 20, 0)), 30),
        (owner, Complaint, true, Some(money("EUR", -10, 0)), 40),
        (owner, Call, false, None, 5),
        (partner, Purchase, false, Some(money("EUR", 30, 0)), 50),
        (partner, Meeting, true, None, 60),
    ];
    for (org, kind, shared, amount, on) in steps {
        log(app, org, customer, (kind, shared), amount, on).await;
    }
}

async fn each_organization_counts_what_it_sees_and_the_owners_metrics_need_a_grant(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let owner = app.create_org("owner", pb::OrganizationKind::Vendor).await;
    let partner = app
        .create_org("partner", pb::OrganizationKind::Retailer)
        .await;
    app.partner(&owner, &partner).await;
    let customer = create(&app, &owner, person("Ada", "Lovelace", "ada@example.com")).await;
    let fresh = read(&app, &owner, &customer.name).await;
    let empty = fresh.metrics.expect("metrics, if empty");
    assert_eq!(empty.purchase_count, 0);
    assert!(empty.interactions.is_empty() && empty.purchase_value.is_empty());
    // Every field of the record (an empty list), which is not the owner's metrics.
    let first = grant(
        &app,
        &owner,
        &customer.name,
        &partner,
        pb::AccessLevel::Read,
        &[],
    )
    .await
    .expect("grant");
    history(&app, &owner, &partner, &customer.name).await;

    // The owner: its own purchases (shared and private) and the partner's shared
    // meeting, never the partner's private purchase.
    let seen = read(&app, &owner, &customer.name).await;
    let m = seen.metrics.clone().unwrap();
    assert_eq!(m.purchase_count, 3);
    assert_eq!(
        values(&m.purchase_value),
        [("EUR".into(), 150, 250_000_000), ("USD".into(), 20, 0)]
    );
    assert_eq!(
        values(&m.lifetime_value),
        [("EUR".into(), 140, 250_000_000), ("USD".into(), 20, 0)]
    );
    let purchases = span(&m, Purchase).unwrap();
    assert_eq!(
        (purchases.count, purchases.first_time, purchases.last_time),
        (3, Some(day(10)), Some(day(30)))
    );
    assert_eq!(span(&m, Call).unwrap().count, 1);
    assert_eq!(span(&m, Meeting).unwrap().last_time, Some(day(60)));
    assert_eq!(
        seen.owner_metrics,
        Some(m.clone()),
        "the owner's are its own"
    );

    // The partner: the shared ones and its own private purchase, never the owner's
    // private purchase or call; and not the owner's metrics, which its grant does not
    // name.
    let theirs = read(&app, &partner, &customer.name).await;
    let p = theirs.metrics.clone().unwrap();
    assert_eq!(p.purchase_count, 3);
    assert_eq!(
        values(&p.purchase_value),
        [("EUR".into(), 130, 0), ("USD".into(), 20, 0)]
    );
    assert_eq!(
        values(&p.lifetime_value),
        [("EUR".into(), 120, 0), ("USD".into(), 20, 0)]
    );
    assert!(span(&p, Call).is_none());
    assert_eq!(span(&p, Purchase).unwrap().first_time, Some(day(10)));
    assert_eq!(span(&p, Purchase).unwrap().last_time, Some(day(50)));
    assert!(theirs.owner_metrics.is_none());
    assert!(!theirs.visible_fields.contains(&"owner_metrics".to_owned()));

    // A grant that names `owner_metrics` shows them, as the owner has them.
    app.sharing(&owner.admin_key)
        .revoke_grant(pb::RevokeGrantRequest {
            name: first.name,
            request_id: String::new(),
        })
        .await
        .expect("revoke");
    grant(
        &app,
        &owner,
        &customer.name,
        &partner,
        pb::AccessLevel::Read,
        &["given_name", "owner_metrics"],
    )
    .await
    .expect("grant the owner's metrics");
    let granted = read(&app, &partner, &customer.name).await;
    assert_eq!(granted.owner_metrics, Some(m));
    assert_eq!(granted.metrics, Some(p), "its own stay its own");
    assert!(granted.visible_fields.contains(&"owner_metrics".to_owned()));
    // Lists carry them too.
    let page = app
        .customers(&partner.read_key)
        .list_customers(pb::ListCustomersRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.customers[0].owner_metrics, granted.owner_metrics);
    assert_eq!(page.customers[0].metrics, granted.metrics);
}

async fn metrics_filter_and_segment_customers_and_follow_merges_and_erasure(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.create_org("owner", pb::OrganizationKind::Vendor).await;
    let partner = app
        .create_org("partner", pb::OrganizationKind::Retailer)
        .await;
    app.partner(&owner, &partner).await;
    let ada = create(&app, &owner, person("Ada", "Lovelace", "ada@example.com")).await;
    let bob = create(&app, &owner, person("Bob", "Babbage", "bob@example.com")).await;
    grant(
        &app,
        &owner,
        &ada.name,
        &partner,
        pb::AccessLevel::Read,
        &[],
    )
    .await
    .unwrap();
    history(&app, &owner, &partner, &ada.name).await;
    log(
        &app,
        &owner,
        &bob.name,
        (Purchase, true),
        Some(money("EUR", 5, 0)),
        70,
    )
    .await;

    // Filters read the caller's own metrics.
    for (org, filter, expected) in [
        (&owner, "purchase_value.EUR >= 150.25", vec![&ada.name]),
        (&owner, "purchase_value.EUR > 150.25", vec![]),
        (
            &owner,
            "purchase_value.eur < 100 AND purchase_count >= 1",
            vec![&bob.name],
        ),
        (&owner, "lifetime_value.EUR = 140.25", vec![&ada.name]),
        (&owner, "purchase_count >= 1", vec![&bob.name, &ada.name]),
        (&owner, "purchase_count = 3", vec![&ada.name]),
        (
            &owner,
            "first_call_time <= \"2026-01-06T00:00:00Z\"",
            vec![&ada.name],
        ),
        (
            &owner,
            "first_purchase_time > \"2026-02-01T00:00:00Z\"",
            vec![&bob.name],
        ),
        (
            &owner,
            "last_purchase_time >= \"2026-03-01T00:00:00Z\"",
            vec![&bob.name],
        ),
        (&partner, "purchase_value.EUR >= 150.25", vec![]),
        (&partner, "purchase_value.EUR = 130", vec![&ada.name]),
        (&partner, "first_call_time < now", vec![]),
        (
            &partner,
            "purchase_count = 3 AND lifetime_value.USD = 20",
            vec![&ada.name],
        ),
    ] {
        let mut got = listed(&app, org, filter).await.unwrap();
        got.sort();
        let mut want: Vec<String> = expected.into_iter().cloned().collect();
        want.sort();
        assert_eq!(got, want, "{} {filter}", org.name);
    }
    for bad in [
        "purchase_value.XYZ > 1",
        "purchase_value > 1",
        "purchase_value.EUR > 1.0000000001",
        "purchase_value.EUR > lots",
        "purchase_count > -1",
        "purchase_count : 2",
        "first_party_time < now",
    ] {
        let refused = listed(&app, &owner, bad).await.expect_err(bad);
        assert_eq!(refused.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(violated_fields(&refused), ["filter"], "{bad}");
    }

    // Ordered by the caller's purchase count, a page at a time.
    let cy = create(&app, &owner, person("Cy", "Young", "cy@example.com")).await;
    let mut ordered = vec![];
    let mut page_token = String::new();
    loop {
        let page = app
            .customers(&owner.read_key)
            .list_customers(pb::ListCustomersRequest {
                order_by: "purchase_count desc".into(),
                page_size: 1,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list by purchase count")
            .into_inner();
        ordered.extend(page.customers.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        ordered,
        [ada.name.clone(), bob.name.clone(), cy.name.clone()]
    );

    // A segment on metrics follows new interactions.
    let big = create_segment(&app, &owner, "Big spenders", "purchase_count >= 2")
        .await
        .expect("segment");
    assert_eq!(count(&app, &owner.read_key, &big.name).await.unwrap(), 1);
    log(&app, &owner, &bob.name, (Purchase, false), None, 80).await;
    assert_eq!(count(&app, &owner.read_key, &big.name).await.unwrap(), 2);

    // A merge adds the merged record's totals; an erasure takes them away.
    app.customers(&owner.admin_key)
        .merge_customers(pb::MergeCustomersRequest {
            name: ada.name.clone(),
            merged: vec![bob.name.clone()],
            ..Default::default()
        })
        .await
        .expect("merge");
    let merged = read(&app, &owner, &ada.name).await.metrics.unwrap();
    assert_eq!(merged.purchase_count, 5);
    assert_eq!(
        values(&merged.purchase_value),
        [("EUR".into(), 155, 250_000_000), ("USD".into(), 20, 0)]
    );
    let check = app.store.check_totals(false).await.unwrap();
    assert_eq!(check.customers_differing, 0, "{:?}", check.differences);
    app.customers(&owner.admin_key)
        .erase_customer(pb::EraseCustomerRequest {
            name: ada.name.clone(),
            ..Default::default()
        })
        .await
        .expect("erase");
    assert!(
        listed(&app, &owner, "purchase_count >= 1")
            .await
            .unwrap()
            .is_empty()
    );
    let check = app.store.check_totals(false).await.unwrap();
    assert_eq!(check.customers_differing, 0, "{:?}", check.differences);
}

async fn the_repair_command_finds_and_mends_totals_that_drifted(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.create_org("owner", pb::OrganizationKind::Vendor).await;
    let partner = app
        .create_org("partner", pb::OrganizationKind::Retailer)
        .await;
    app.partner(&owner, &partner).await;
    let ada = create(&app, &owner, person("Ada", "Lovelace", "ada@example.com")).await;
    grant(
        &app,
        &owner,
        &ada.name,
        &partner,
        pb::AccessLevel::Read,
        &[],
    )
    .await
    .unwrap();
    history(&app, &owner, &partner, &ada.name).await;
    let before = read(&app, &owner, &ada.name).await.metrics;
    let clean = app.store.check_totals(false).await.unwrap();
    assert_eq!((clean.customers, clean.customers_differing), (1, 0));

    // Someone with database access changes a count, removes a row and adds one.
    tamper(
        &app,
        "UPDATE interaction_totals SET count = count + 5 WHERE type = 'call'; \
         DELETE FROM interaction_totals WHERE type = 'meeting'; \
         INSERT INTO interaction_totals VALUES \
         ((SELECT id FROM customers LIMIT 1), '', 'note', '', 1, 0, 0, 0, 0)",
    )
    .await;
    assert_ne!(read(&app, &owner, &ada.name).await.metrics, before);
    let found = app.store.check_totals(false).await.unwrap();
    assert_eq!(found.customers_differing, 1);
    let mut kinds: Vec<(&str, bool, bool)> = found
        .differences
        .iter()
        .map(|d| {
            let any = d.stored.as_ref().or(d.recomputed.as_ref()).unwrap();
            (
                any.kind.as_str(),
                d.stored.is_some(),
                d.recomputed.is_some(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("call", true, true),
            ("meeting", false, true),
            ("note", true, false)
        ]
    );
    // A check changes nothing; a repair mends it.
    assert_eq!(
        app.store
            .check_totals(false)
            .await
            .unwrap()
            .customers_differing,
        1
    );
    let repaired = app.store.check_totals(true).await.unwrap();
    assert_eq!(repaired.customers_differing, 1);
    assert_eq!(
        app.store
            .check_totals(false)
            .await
            .unwrap()
            .customers_differing,
        0
    );
    assert_eq!(read(&app, &owner, &ada.name).await.metrics, before);
}

async fn set_currency(
    app: &TestApp,
    key: &str,
    org: &Org,
    code: &str,
) -> Result<pb::Organization, tonic::Status> {
    app.admin(key)
        .update_organization(pb::UpdateOrganizationRequest {
            organization: Some(pb::Organization {
                name: org.name.clone(),
                reporting_currency: code.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["reporting_currency".into()],
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn rfm_scores_rank_each_organizations_buyers_in_fifths_of_its_own(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.customers.rfm_interval_secs = 1).await;
    let owner = app.create_org("owner", pb::OrganizationKind::Vendor).await;
    let partner = app
        .create_org("partner", pb::OrganizationKind::Retailer)
        .await;
    app.partner(&owner, &partner).await;
    // The organization sets its own reporting currency; nothing else of itself.
    let set = set_currency(&app, &owner.admin_key, &owner, "eur")
        .await
        .unwrap();
    assert_eq!(set.reporting_currency, "EUR");
    let bad = set_currency(&app, &owner.admin_key, &owner, "EURO")
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), ["organization.reporting_currency"]);
    let theirs = set_currency(&app, &partner.admin_key, &owner, "USD").await;
    assert_eq!(theirs.unwrap_err().code(), Code::PermissionDenied);
    let renamed = app
        .admin(&owner.admin_key)
        .update_organization(pb::UpdateOrganizationRequest {
            organization: Some(pb::Organization {
                name: owner.name.clone(),
                display_name: "Renamed".into(),
                reporting_currency: "EUR".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into(), "reporting_currency".into()],
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(renamed.unwrap_err().code(), Code::PermissionDenied);

    // Customer i buys i times, EUR 10·i each, the last on day 10·i; one more buys
    // once in dollars; one never.
    let mut buyers = vec![];
    for i in 1..=10_i64 {
        let c = create(
            &app,
            &owner,
            person(&format!("Buyer{i}"), "Doe", &format!("b{i}@example.com")),
        )
        .await;
        for k in 1..=i {
            log(
                &app,
                &owner,
                &c.name,
                (Purchase, true),
                Some(money("EUR", 10 * i, 0)),
                10 * i - k + 1,
            )
            .await;
        }
        buyers.push(c);
    }
    let dollars = create(&app, &owner, person("Dollar", "Doe", "usd@example.com")).await;
    log(
        &app,
        &owner,
        &dollars.name,
        (Purchase, true),
        Some(money("USD", 99, 0)),
        1,
    )
    .await;
    let never = create(&app, &owner, person("Never", "Doe", "never@example.com")).await;
    for c in [&buyers[0], &buyers[9]] {
        grant(&app, &owner, &c.name, &partner, pb::AccessLevel::Read, &[])
            .await
            .unwrap();
    }

    // The job (every second here) computes the owner's quintiles over its 11 buyers
    // once all have bought; a round that ran meanwhile saw fewer.
    let expected = [
        (&buyers[9], (5, 5, 5)),
        (&buyers[0], (1, 1, 1)),
        (&buyers[4], (3, 3, 3)),
        // No euros; never bought.
        (&dollars, (1, 1, 0)),
        (&never, (0, 0, 0)),
    ];
    all_scored(&app, &owner, &expected).await;
    // Scores filter lists (not segments).
    let mut top = listed(&app, &owner, "rfm_frequency >= 5").await.unwrap();
    top.sort();
    let mut want: Vec<String> = buyers[7..].iter().map(|c| c.name.clone()).collect();
    want.sort();
    assert_eq!(top, want);
    let mut lowest = listed(&app, &owner, "rfm_monetary = 1").await.unwrap();
    lowest.sort();
    let mut want: Vec<String> = buyers[..2].iter().map(|c| c.name.clone()).collect();
    want.sort();
    assert_eq!(lowest, want, "EUR 10 and 40, under the first boundary (90)");
    let refused = create_segment(&app, &owner, "Champions", "rfm_recency >= 4").await;
    assert_eq!(violated_fields(&refused.unwrap_err()), ["segment.filter"]);
    for bad in ["rfm_recency >= 6", "rfm_recency >= 0", "rfm_loyalty = 3"] {
        let refused = listed(&app, &owner, bad).await.expect_err(bad);
        assert_eq!(violated_fields(&refused), ["filter"], "{bad}");
    }

    // The partner ranks the two customers it sees among themselves, without a
    // reporting currency.
    all_scored(
        &app,
        &partner,
        &[(&buyers[9], (5, 5, 0)), (&buyers[0], (3, 3, 0))],
    )
    .await;
}

/// Waits until `org` reads each customer's expected RFM scores.
async fn all_scored(app: &TestApp, org: &Org, expected: &[(&pb::Customer, (i32, i32, i32))]) {
    eventually("the expected RFM scores", async || {
        for (c, want) in expected {
            if rfm(app, org, c.name.clone()).await != Some(*want) {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// The RFM scores `org` reads on customer `name`.
async fn rfm(app: &TestApp, org: &Org, name: String) -> Option<(i32, i32, i32)> {
    read(app, org, &name)
        .await
        .metrics
        .and_then(|m| m.rfm)
        .map(|s| (s.recency, s.frequency, s.monetary))
}
