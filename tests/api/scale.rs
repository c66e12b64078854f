//! How Get and List behave at a million customers. Run by hand; it prints figures
//! rather than asserting times:
//!
//! ```text
//! cargo test --release --test api -- --ignored --nocapture million_customers
//! ```
//!
//! `LIAISON_SCALE_CUSTOMERS` changes the count (default 1,000,000).

use std::time::Instant;

use liaison::pb;

use crate::helpers::*;

// A measurement run by hand (`--ignored`), so not through `on_both_backends!`, which
// would ignore the PostgreSQL copy a second time when the server is not named.
mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn million_customers() {
        super::million_customers(crate::helpers::Backend::Sqlite).await
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn million_customers() {
        let backend = crate::helpers::Backend::postgres()
            .expect("LIAISON_TEST_POSTGRES_URL names the PostgreSQL server to measure on");
        super::million_customers(backend).await
    }
}

fn seeded(i: usize) -> pb::Customer {
    pb::Customer {
        kind: pb::CustomerKind::Person as i32,
        external_id: format!("S-{i}"),
        given_name: format!("Given{}", i % 5000),
        family_name: format!("Family{i}"),
        emails: vec![pb::EmailContact {
            address: format!("person{i}@example.com"),
            label: String::new(),
            primary: true,
        }],
        phones: vec![pb::PhoneContact {
            number: format!("+1650253{:04}", i % 10_000),
            label: String::new(),
            primary: true,
        }],
        tags: if i.is_multiple_of(100) {
            vec!["vip".into()]
        } else {
            vec![]
        },
        ..Default::default()
    }
}

async fn timed<T>(label: &str, runs: u32, mut f: impl AsyncFnMut() -> T) -> T {
    let mut last = None;
    let mut samples = vec![];
    for _ in 0..runs {
        let start = Instant::now();
        last = Some(f().await);
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{label:<55} median {:>8.2} ms   max {:>8.2} ms",
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
    last.unwrap()
}

async fn million_customers(backend: Backend) {
    let total: usize = std::env::var("LIAISON_SCALE_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let app = spawn_app(backend.clone()).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let start = Instant::now();
    let mut tasks = vec![];
    for worker in 0..2 {
        let mut client = app.customers(&acme.admin_key);
        tasks.push(tokio::spawn(async move {
            for batch in (worker..total.div_ceil(1000)).step_by(2) {
                let customers = (batch * 1000..((batch + 1) * 1000).min(total))
                    .map(seeded)
                    .collect();
                client
                    .batch_upsert_customers(pb::BatchUpsertCustomersRequest {
                        customers,
                        request_id: String::new(),
                    })
                    .await
                    .expect("seed");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "\n{backend:?}: seeded {total} customers in {secs:.0} s ({:.0}/s through BatchUpsertCustomers)",
        total as f64 / secs
    );

    let mut client = app.customers(&acme.read_key);
    let list = |filter: &str, order_by: &str| pb::ListCustomersRequest {
        filter: filter.into(),
        order_by: order_by.into(),
        page_size: 50,
        ..Default::default()
    };
    let first = client
        .list_customers(list("", ""))
        .await
        .unwrap()
        .into_inner();
    let name = first.customers[0].name.clone();
    timed("GetCustomer", 200, async || {
        client
            .get_customer(pb::GetCustomerRequest { name: name.clone() })
            .await
            .unwrap()
    })
    .await;
    let middle = total / 2;
    for (label, filter, order_by, expect_some) in [
        ("ListCustomers, first page of 50", String::new(), "", true),
        (
            "ListCustomers order_by update_time desc",
            String::new(),
            "update_time desc",
            true,
        ),
        (
            "ListCustomers order_by display_name",
            String::new(),
            "display_name",
            true,
        ),
        (
            "ListCustomers email = (one match)",
            format!("email = \"person{middle}@example.com\""),
            "",
            true,
        ),
        (
            "ListCustomers phone = (1 in 10,000)",
            format!("phone = \"+1650253{:04}\"", middle % 10_000),
            "",
            true,
        ),
        (
            "ListCustomers external_id = (one match)",
            format!("external_id = \"S-{middle}\""),
            "",
            true,
        ),
        (
            "ListCustomers tag = vip (1 in 100)",
            "tag = vip".into(),
            "",
            true,
        ),
        (
            "ListCustomers display_name prefix",
            "display_name = \"given42 family42*\"".into(),
            "",
            true,
        ),
        (
            "ListCustomers email = (no match)",
            "email = \"nobody@example.com\"".into(),
            "",
            false,
        ),
    ] {
        let page = timed(label, 50, async || {
            client
                .list_customers(list(&filter, order_by))
                .await
                .unwrap()
                .into_inner()
        })
        .await;
        assert_eq!(!page.customers.is_empty(), expect_some, "{label}");
    }
    // Deep paging: the 100th page costs what the first does.
    let mut token = String::new();
    for _ in 0..99 {
        token = client
            .list_customers(pb::ListCustomersRequest {
                page_size: 50,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .next_page_token;
    }
    timed("ListCustomers, page 100 (keyset)", 50, async || {
        client
            .list_customers(pb::ListCustomersRequest {
                page_size: 50,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
    })
    .await;
}
