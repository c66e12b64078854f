//! The PostgreSQL sequencer, which numbers events after their transactions commit
//! (src/store/events/sequence.rs). Each test makes the interleaving it needs happen
//! for certain: a trigger in the test's own database parks one transaction on an
//! advisory lock the test holds, at the exact point that matters.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use liaison::pb;
use sqlx::Connection;

use crate::helpers::*;

/// The advisory lock the parked transaction waits on (the test holds it).
const PARK: i64 = 4_242;

/// A customer of `org`, created through `app`; returns its name.
async fn customer(app: &TestApp, org: &Org, given_name: &str) -> String {
    app.customers(&org.admin_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(pb::Customer {
                kind: pb::CustomerKind::Person as i32,
                given_name: given_name.into(),
                family_name: "Sequence".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create customer")
        .into_inner()
        .name
}

fn rename(name: &str, given_name: &str) -> pb::UpdateCustomerRequest {
    pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            name: name.into(),
            given_name: given_name.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["given_name".into()],
        }),
        request_id: uuid::Uuid::new_v4().to_string(),
    }
}

/// The organization's whole feed, checked gapless from 1 and free of repeats.
async fn whole_feed(app: &TestApp, key: &str) -> Vec<pb::Event> {
    let events = crate::events::feed(app, key).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as i64 + 1, "the feed has a gap or a repeat");
    }
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "an event appears twice");
    events
}

/// The given names the feed's `customer.updated` events carry, in feed order.
fn renames(events: &[pb::Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.r#type == "customer.updated")
        .filter_map(|e| match &e.payload {
            Some(pb::event::Payload::Customer(c)) => Some(c.given_name.clone()),
            _ => None,
        })
        .collect()
}

async fn connect(app: &TestApp) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&app.config.database.url)
        .await
        .expect("connect to the test database")
}

/// Installs `trigger` on `table`: the first row (or statement) it fires for, among
/// sessions whose application_name is `who` (any if empty), waits on [`PARK`].
async fn park_first(conn: &mut sqlx::PgConnection, table: &str, each: &str, who: &str) {
    sqlx::raw_sql(&format!(
        "CREATE SEQUENCE park_once; \
         CREATE FUNCTION park() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF ('{who}' = '' OR current_setting('application_name') = '{who}') \
              AND nextval('park_once') = 1 THEN \
             PERFORM pg_advisory_xact_lock_shared({PARK}); \
           END IF; \
           RETURN NULL; \
         END $$; \
         CREATE TRIGGER park AFTER INSERT ON {table} FOR EACH {each} EXECUTE FUNCTION park();"
    ))
    .execute(conn)
    .await
    .expect("install the parking trigger");
}

/// Waits until a session (named `who`, if given) waits on [`PARK`].
async fn until_parked(conn: &mut sqlx::PgConnection, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE l.locktype = 'advisory' AND l.objid = $1 AND NOT l.granted \
             AND ($2 = '' OR a.application_name = $2)",
        )
        .bind(PARK)
        .bind(who)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "nothing parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes (or lets go of) [`PARK`] on the test's own connection.
async fn hold_park(conn: &mut sqlx::PgConnection, hold: bool) {
    let call = if hold {
        "pg_advisory_lock"
    } else {
        "pg_advisory_unlock"
    };
    sqlx::query(&format!("SELECT {call}($1)"))
        .bind(PARK)
        .execute(conn)
        .await
        .unwrap();
}

async fn inbox_rows(conn: &mut sqlx::PgConnection) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM event_inbox")
        .fetch_one(conn)
        .await
        .unwrap();
    n
}

/// A transaction draws its inbox id and then commits late, after later ids have
/// been numbered and the sequencer has made several passes: its events are still
/// numbered (after the others), and the others did not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(liaison_postgres_tests),
    ignore = "LIAISON_TEST_POSTGRES_URL is not set"
)]
async fn a_transaction_that_commits_late_is_numbered_after_the_others_not_skipped() {
    let app = spawn_app(Backend::postgres().expect("LIAISON_TEST_POSTGRES_URL")).await;
    let org = app.create_org("late", pb::OrganizationKind::Vendor).await;
    let slow = customer(&app, &org, "Slow").await;
    let quick = customer(&app, &org, "Quick").await;
    let before = whole_feed(&app, &org.read_key).await.len();

    let mut test = connect(&app).await;
    hold_park(&mut test, true).await;
    park_first(&mut test, "event_inbox", "ROW", "").await;

    // The slow write draws the next inbox id, then waits before its commit.
    let mut customers = app.customers(&org.admin_key);
    let late = tokio::spawn(async move {
        customers
            .update_customer(rename(&slow, "Slow-late"))
            .await
            .expect("the late write succeeds")
    });
    until_parked(&mut test, "").await;
    // A pass while it is the newest transaction and nothing else has ended since it
    // began: nothing tells the sequencer about it but its own transaction id.
    app.store.flush_events().await.expect("a sequencer pass");

    // Later writes draw larger ids, commit, and are numbered while it waits.
    for i in 1..=5 {
        app.customers(&org.admin_key)
            .update_customer(rename(&quick, &format!("Quick-{i}")))
            .await
            .expect("update");
        app.store.flush_events().await.expect("a sequencer pass");
    }
    let meanwhile = whole_feed(&app, &org.read_key).await;
    assert_eq!(meanwhile.len(), before + 5);
    assert_eq!(
        renames(&meanwhile),
        ["Quick-1", "Quick-2", "Quick-3", "Quick-4", "Quick-5"]
    );
    assert!(
        !late.is_finished(),
        "the late write is still waiting to commit"
    );

    // It commits: its event follows, nothing skipped, nothing twice.
    hold_park(&mut test, false).await;
    late.await.unwrap();
    let after = whole_feed(&app, &org.read_key).await;
    assert_eq!(after.len(), before + 6);
    assert_eq!(
        renames(&after),
        [
            "Quick-1",
            "Quick-2",
            "Quick-3",
            "Quick-4",
            "Quick-5",
            "Slow-late"
        ]
    );
    assert_eq!(inbox_rows(&mut test).await, 0);
}

/// The replica running a sequencer batch is killed with SIGKILL while the batch is
/// half written (its events inserted, its inbox rows not yet deleted, nothing
/// committed). Another replica takes over, and every committed write's event is in
/// the feed exactly once, in a gapless feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(liaison_postgres_tests),
    ignore = "LIAISON_TEST_POSTGRES_URL is not set"
)]
async fn killing_the_sequencer_mid_batch_loses_nothing() {
    // The survivor runs in this process; the victim is a separate process.
    let app = spawn_app(Backend::postgres().expect("LIAISON_TEST_POSTGRES_URL")).await;
    let org = app.create_org("killed", pb::OrganizationKind::Vendor).await;
    let mut names = vec![];
    for i in 0..5 {
        names.push(customer(&app, &org, &format!("Before{i}")).await);
    }
    let before = whole_feed(&app, &org.read_key).await.len();

    let url = &app.config.database.url;
    let sep = if url.contains('?') { '&' } else { '?' };
    let victim_url = format!("{url}{sep}application_name=victim");
    let (mut victim, addr, mut log) = serve_process(&victim_url, &[]).await;
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // The victim's first sequencer batch stops inside its INSERT into events.
    let mut test = connect(&app).await;
    hold_park(&mut test, true).await;
    park_first(&mut test, "events", "STATEMENT", "victim").await;

    // Five writes through the victim: each commits, then waits for its numbering.
    let mut writes = vec![];
    for (i, name) in names.iter().enumerate() {
        let mut client = pb::customer_service_client::CustomerServiceClient::with_interceptor(
            channel.clone(),
            Bearer(org.admin_key.clone()),
        );
        let request = rename(name, &format!("After{i}"));
        writes.push(tokio::spawn(async move {
            client.update_customer(request).await
        }));
    }
    until_parked(&mut test, "victim").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (committed,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM customers WHERE profile LIKE '%\"After%'")
                .fetch_one(&mut test)
                .await
                .unwrap();
        if committed == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the writes did not all commit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    victim.start_kill().unwrap();
    victim.wait().await.unwrap();
    // The victim's session ends with its batch rolled back once it is let go.
    hold_park(&mut test, false).await;
    for write in writes {
        // Cut off by the kill: committed, but the answer never came.
        assert!(write.await.unwrap().is_err());
    }

    // The survivor's sequencer takes over within a few passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let feed = loop {
        let feed = whole_feed(&app, &org.read_key).await;
        if feed.len() >= before + 5 {
            break feed;
        }
        assert!(Instant::now() < deadline, "the survivor did not take over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(feed.len(), before + 5);
    let mut after = renames(&feed);
    after.sort();
    assert_eq!(after, ["After0", "After1", "After2", "After3", "After4"]);
    assert_eq!(inbox_rows(&mut test).await, 0);

    // And the feed goes on from there.
    app.customers(&org.admin_key)
        .update_customer(rename(&names[0], "Later"))
        .await
        .unwrap();
    let feed = whole_feed(&app, &org.read_key).await;
    assert_eq!(renames(&feed).last().map(String::as_str), Some("Later"));
}
