//! Event feeds: fan-out by visibility, the transactional outbox, gapless ordered
//! streams under concurrent writers, resuming, replicas, retention and limits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use liaison::pb;
use pb::watch_events_response::Message as Out;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

use crate::customers::{create, person};
use crate::helpers::*;
use crate::sharing::{grant, log, update};

crate::on_both_backends!(
    each_organization_hears_exactly_what_it_may_see,
    a_failed_transaction_leaves_no_event,
    merges_and_erasures_reach_those_who_saw_the_records,
    watchers_see_every_event_once_in_order_under_concurrent_writers,
    pruned_positions_are_out_of_range,
    streams_are_limited_and_idle_ones_hear_a_heartbeat,
    a_hub_serves_at_most_max_streams_and_a_closed_stream_frees_a_place,
);

/// Waits at most this long for any one stream message.
const PATIENCE: Duration = Duration::from_secs(20);

/// The whole feed of the organization behind `key`, page by page.
pub(crate) async fn feed(app: &TestApp, key: &str) -> Vec<pb::Event> {
    let mut out: Vec<pb::Event> = vec![];
    let mut after = 0;
    loop {
        let page = app
            .events(key)
            .list_events(pb::ListEventsRequest {
                after_sequence: after,
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("list events")
            .into_inner();
        out.extend(page.events);
        if page.next_after_sequence >= page.head_sequence {
            return out;
        }
        after = page.next_after_sequence;
    }
}

/// Events of `feed` after position `after`.
fn since(feed: &[pb::Event], after: i64) -> Vec<pb::Event> {
    feed.iter()
        .filter(|e| e.sequence > after)
        .cloned()
        .collect()
}

pub(crate) fn types(events: &[pb::Event]) -> Vec<&str> {
    events.iter().map(|e| e.r#type.as_str()).collect()
}

fn customer_of(event: &pb::Event) -> &pb::Customer {
    match &event.payload {
        Some(pb::event::Payload::Customer(c)) => c,
        other => panic!("expected a customer payload, got {other:?}"),
    }
}

/// A stream on a connection of its own, as each partner system has: a consumer that
/// stops reading then holds up only its own connection.
async fn watch(
    app: &TestApp,
    key: &str,
    after: i64,
    event_types: &[&str],
) -> Streaming<pb::WatchEventsResponse> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    EventServiceClient::with_interceptor(channel, Bearer(key.to_owned()))
        .watch_events(pb::WatchEventsRequest {
            after_sequence: after,
            event_types: event_types.iter().map(|t| t.to_string()).collect(),
        })
        .await
        .expect("watch events")
        .into_inner()
}

/// The next event of `stream`, skipping progress messages.
async fn next_event(stream: &mut Streaming<pb::WatchEventsResponse>) -> pb::Event {
    loop {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("an event in time")
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        if let Some(Out::Event(event)) = message.message {
            return event;
        }
    }
}

async fn update_tags(app: &TestApp, key: &str, name: &str, tags: &[&str], request_id: &str) {
    app.customers(key)
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                name: name.into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["tags".into()],
            }),
            request_id: request_id.into(),
        })
        .await
        .expect("update tags");
}

fn assert_gapless(events: &[pb::Event]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.sequence,
            i as i64 + 1,
            "sequence {i} of {:?}",
            types(events)
        );
    }
}

async fn each_organization_hears_exactly_what_it_may_see(backend: Backend) {
    let app = spawn_app(backend).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&vendor, &dist).await;
    app.partner(&vendor, &shop).await;
    let partnership_events = feed(&app, &dist.read_key).await;
    assert_eq!(
        types(&partnership_events),
        [
            "api_key.created",
            "api_key.created",
            "partnership.proposed",
            "partnership.accepted"
        ]
    );

    let mut input = person("Ada", "Lovelace", "ada@example.com");
    input.phones = vec![pb::PhoneContact {
        number: "+14155550100".into(),
        label: "mobile".into(),
        primary: true,
    }];
    let c = create(&app, &vendor, input).await;
    // dist sees only the given name; shop has no grant at all.
    grant(
        &app,
        &vendor,
        &c.name,
        &dist,
        pb::AccessLevel::Read,
        &["given_name"],
    )
    .await
    .expect("grant");
    update_tags(&app, &vendor.admin_key, &c.name, &["vip"], "req-tags").await;
    let mut renamed = c.clone();
    renamed.given_name = "Augusta".into();
    renamed.etag.clear();
    update(&app, &vendor.admin_key, renamed, &["given_name"])
        .await
        .expect("rename");
    for (visibility, summary) in [
        (pb::InteractionVisibility::Shared, "shared call"),
        (pb::InteractionVisibility::Organization, "private note"),
    ] {
        log(
            &app,
            &vendor,
            &c.name,
            pb::InteractionType::Call,
            visibility,
            summary,
        )
        .await;
    }

    let owner_feed = feed(&app, &vendor.read_key).await;
    assert_gapless(&owner_feed);
    let about_c: Vec<pb::Event> = owner_feed
        .iter()
        .filter(|e| e.resource.starts_with(&c.name))
        .cloned()
        .collect();
    assert_eq!(
        types(&about_c),
        [
            "customer.created",
            "grant.created",
            "customer.updated",
            "customer.updated",
            "interaction.logged",
            "interaction.logged"
        ]
    );
    let created = &about_c[0];
    assert_eq!(created.actor.as_ref().unwrap().organization, vendor.name);
    assert!(
        created
            .actor
            .as_ref()
            .unwrap()
            .api_key
            .starts_with(&format!("{}/apiKeys/", vendor.name))
    );
    assert_eq!(customer_of(created).emails.len(), 1);
    assert!(created.changed_fields.contains(&"emails".to_owned()));
    assert_eq!(about_c[2].changed_fields, ["tags"]);
    assert_eq!(about_c[2].request_id, "req-tags");
    assert_eq!(about_c[3].changed_fields, ["display_name", "given_name"]);

    // The grantee: the grant, the rename (within its mask), the shared interaction.
    // Not the tag change, not the private note, and never a hidden field.
    let dist_feed = feed(&app, &dist.read_key).await;
    assert_gapless(&dist_feed);
    let dist_about_c: Vec<pb::Event> = dist_feed
        .iter()
        .filter(|e| e.resource.starts_with(&c.name))
        .cloned()
        .collect();
    assert_eq!(
        types(&dist_about_c),
        ["grant.created", "customer.updated", "interaction.logged"]
    );
    let seen = customer_of(&dist_about_c[1]);
    assert_eq!(dist_about_c[1].changed_fields, ["given_name"]);
    assert_eq!(seen.given_name, "Augusta");
    assert!(
        seen.family_name.is_empty()
            && seen.emails.is_empty()
            && seen.phones.is_empty()
            && seen.tags.is_empty()
    );
    assert_eq!(seen.visible_fields, ["given_name"]);

    // No grant, no events about the customer.
    let shop_feed = feed(&app, &shop.read_key).await;
    assert!(
        shop_feed
            .iter()
            .all(|e| e.resource.starts_with("partnerships/")
                || e.resource.starts_with("organizations/shop/apiKeys/")),
        "{:?}",
        types(&shop_feed)
    );

    // Revoking ends the grantee's events with a last grant.revoked.
    let g = &dist_about_c[0];
    let grant_name = g.resource.clone();
    app.sharing(&vendor.admin_key)
        .revoke_grant(pb::RevokeGrantRequest {
            name: grant_name.clone(),
            request_id: String::new(),
        })
        .await
        .expect("revoke");
    let mut again = c.clone();
    again.given_name = "Ada".into();
    again.etag.clear();
    update(&app, &vendor.admin_key, again, &["given_name"])
        .await
        .expect("rename back");
    let after_revoke = since(
        &feed(&app, &dist.read_key).await,
        dist_feed.last().unwrap().sequence,
    );
    assert_eq!(types(&after_revoke), ["grant.revoked"]);
    assert_eq!(after_revoke[0].resource, grant_name);

    // A full grant: deletion reaches the grantee as a last event with the state only.
    grant(&app, &vendor, &c.name, &shop, pb::AccessLevel::Read, &[])
        .await
        .expect("grant");
    let before_delete = feed(&app, &shop.read_key).await.len();
    app.customers(&vendor.admin_key)
        .delete_customer(pb::DeleteCustomerRequest {
            name: c.name.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let shop_feed = feed(&app, &shop.read_key).await;
    let last = &shop_feed[before_delete..];
    assert_eq!(types(last), ["customer.deleted"]);
    let bare = customer_of(&last[0]);
    assert_eq!(bare.state, pb::customer::State::Deleted as i32);
    assert!(bare.given_name.is_empty() && bare.emails.is_empty());
    let owner_last = feed(&app, &vendor.read_key).await.pop().unwrap();
    assert_eq!(owner_last.r#type, "customer.deleted");
    assert_eq!(
        customer_of(&owner_last).family_name,
        "Lovelace",
        "the owner sees its tombstone"
    );

    // Members are the organization's own business.
    app.members(&vendor.admin_key)
        .create_member(pb::CreateMemberRequest {
            parent: vendor.name.clone(),
            member: Some(pb::Member {
                display_name: "Grace".into(),
                email: "grace@vendor.example".into(),
                role: pb::MemberRole::Coordinator as i32,
                time_zone: "Europe/London".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create member");
    assert_eq!(
        feed(&app, &vendor.read_key).await.pop().unwrap().r#type,
        "member.created"
    );
    assert!(!types(&feed(&app, &dist.read_key).await).contains(&"member.created"));

    // Filters select by type and resource; bad types are named.
    let only = app
        .events(&vendor.read_key)
        .list_events(pb::ListEventsRequest {
            event_types: vec!["interaction.*".into()],
            resource: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        types(&only.events),
        ["interaction.logged", "interaction.logged"]
    );
    let by_resource = app
        .events(&vendor.read_key)
        .list_events(pb::ListEventsRequest {
            resource: c.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(by_resource.events.iter().all(|e| e.resource == c.name));
    assert_eq!(by_resource.events.len(), 5);
    let status = assert_error(
        app.events(&vendor.read_key)
            .list_events(pb::ListEventsRequest {
                event_types: vec!["customer.updated".into(), "customer.changed".into()],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD_VALUE",
    );
    assert_eq!(violated_fields(&status), ["event_types[1]"]);
}

async fn merges_and_erasures_reach_those_who_saw_the_records(backend: Backend) {
    let app = spawn_app(backend).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&vendor, &dist).await;
    let survivor = create(&app, &vendor, person("Ada", "Lovelace", "ada@example.com")).await;
    let loser = create(&app, &vendor, person("Ada", "King", "ada@example.com")).await;
    grant(
        &app,
        &vendor,
        &loser.name,
        &dist,
        pb::AccessLevel::Read,
        &["family_name"],
    )
    .await
    .expect("grant");
    let seen = feed(&app, &dist.read_key).await.len();

    // The loser's grant moves to the survivor, so dist hears of the merge.
    app.customers(&vendor.admin_key)
        .merge_customers(pb::MergeCustomersRequest {
            name: survivor.name.clone(),
            merged: vec![loser.name.clone()],
            ..Default::default()
        })
        .await
        .expect("merge");
    let dist_feed = feed(&app, &dist.read_key).await;
    let merged = &dist_feed[seen..];
    assert_eq!(types(merged), ["customer.merged"]);
    assert_eq!(merged[0].resource, survivor.name);
    assert_eq!(
        merged[0].merged_customers,
        std::slice::from_ref(&loser.name)
    );
    let c = customer_of(&merged[0]);
    assert_eq!(c.family_name, "Lovelace");
    assert!(c.given_name.is_empty() && c.emails.is_empty());
    let owner_merge = feed(&app, &vendor.read_key).await.pop().unwrap();
    assert_eq!(owner_merge.r#type, "customer.merged");

    // Erasure: the owner and the grantee that saw it get customer.erased, with no data.
    app.customers(&vendor.admin_key)
        .erase_customer(pb::EraseCustomerRequest {
            name: survivor.name.clone(),
            reason: "GDPR article 17 request".into(),
            ..Default::default()
        })
        .await
        .expect("erase");
    for key in [&vendor.read_key, &dist.read_key] {
        let last = feed(&app, key).await.pop().unwrap();
        assert_eq!(last.r#type, "customer.erased");
        let c = customer_of(&last);
        assert_eq!(c.state, pb::customer::State::Erased as i32);
        assert!(c.family_name.is_empty() && c.emails.is_empty());
    }
}

async fn a_failed_transaction_leaves_no_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let c = create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    let head = feed(&app, &vendor.read_key).await.len();
    assert_eq!(head as i64, KEY_EVENTS + 1);

    // A stale etag: refused, nothing emitted.
    let mut stale = c.clone();
    stale.etag = "\"0\"".into();
    stale.given_name = "Augusta".into();
    let result = app
        .customers(&vendor.admin_key)
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(stale),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["given_name".into()],
            }),
            request_id: String::new(),
        })
        .await;
    assert_error(result, Code::Aborted, "STALE_ETAG");

    // A batch whose first item is created and whose second fails inside the same
    // transaction: the creation's event goes with it.
    let mut first = person("Grace", "Hopper", "");
    first.external_id = "g-1".into();
    let mut second = pb::Customer {
        kind: pb::CustomerKind::Company as i32,
        legal_name: "Lovelace Ltd".into(),
        external_id: "a-1".into(),
        ..Default::default()
    };
    app.customers(&vendor.admin_key)
        .update_customer_overlay(pb::UpdateCustomerOverlayRequest {
            overlay: Some(pb::CustomerOverlay {
                name: format!("{}/overlay", c.name),
                external_id: "a-1".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["external_id".into()],
            }),
            request_id: String::new(),
        })
        .await
        .expect("set external id");
    let head = feed(&app, &vendor.read_key).await.len();
    second.kind = pb::CustomerKind::Company as i32;
    let result = app
        .customers(&vendor.admin_key)
        .batch_upsert_customers(pb::BatchUpsertCustomersRequest {
            customers: vec![first, second],
            request_id: String::new(),
        })
        .await;
    let status = assert_error(result, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(violated_fields(&status), ["customers[1].kind"]);
    let events = feed(&app, &vendor.read_key).await;
    assert_eq!(
        events.len(),
        head,
        "the rolled-back batch left events: {:?}",
        types(&events)
    );
    // The next committed change continues the sequence with no gap.
    update_tags(&app, &vendor.admin_key, &c.name, &["after"], "").await;
    let events = feed(&app, &vendor.read_key).await;
    assert_gapless(&events);
    assert_eq!(events.len(), head + 1);
}

/// Reads `stream` until it has delivered an event with sequence `through`
/// (or, filtered, until its position passes it).
async fn collect(mut stream: Streaming<pb::WatchEventsResponse>, through: i64) -> Vec<pb::Event> {
    let mut out = vec![];
    loop {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a message in time")
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        match message.message {
            Some(Out::Event(e)) => {
                let done = e.sequence >= through;
                out.push(e);
                if done {
                    return out;
                }
            }
            Some(Out::Progress(p)) if p.sequence >= through => return out,
            _ => {}
        }
    }
}

async fn watchers_see_every_event_once_in_order_under_concurrent_writers(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.events.heartbeat_secs = 1).await;
    let a = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let b = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&a, &b).await;
    let mut shared = vec![];
    for i in 0..5 {
        let c = create(&app, &a, person("Shared", &format!("Customer{i}"), "")).await;
        grant(&app, &a, &c.name, &b, pb::AccessLevel::Read, &[])
            .await
            .expect("grant");
        shared.push(c.name);
    }
    let start_a = feed(&app, &a.read_key).await.len() as i64;
    let start_b = feed(&app, &b.read_key).await.len() as i64;

    // Watchers from the start, one filtered, and one that never reads until the end.
    let all_a = watch(&app, &a.read_key, 0, &[]).await;
    let updates_a = watch(&app, &a.read_key, 0, &["customer.updated"]).await;
    let all_b = watch(&app, &b.read_key, 0, &[]).await;
    let slow_a = watch(&app, &a.read_key, 0, &[]).await;

    // 10,000 changes: 8,000 + 1,500 batch-upserted, 500 single updates of shared
    // customers (each also in b's feed), from four concurrent writers.
    let batch_writer = |org: &Org, prefix: &'static str, batches: usize| {
        let client = app.customers(&org.admin_key);
        async move {
            let mut client = client;
            for n in 0..batches {
                let customers = (0..100)
                    .map(|i| {
                        let mut c = person("Bulk", &format!("{prefix}{n}x{i}"), "");
                        c.external_id = format!("{prefix}-{n}-{i}");
                        c
                    })
                    .collect();
                client
                    .batch_upsert_customers(pb::BatchUpsertCustomersRequest {
                        customers,
                        request_id: String::new(),
                    })
                    .await
                    .expect("batch upsert");
            }
        }
    };
    let updater = async {
        for i in 0..500 {
            let name = &shared[i % shared.len()];
            update_tags(
                &app,
                &a.admin_key,
                name,
                &[&format!("t{i}")],
                &format!("u{i}"),
            )
            .await;
        }
    };
    // Meanwhile a consumer reads a while, drops the stream, and resumes where it was.
    let resumer = async {
        let mut got: Vec<pb::Event> = vec![];
        let mut last = 0;
        let target = start_a + 8_000 + 500;
        while last < target {
            let mut stream = watch(&app, &a.read_key, last, &[]).await;
            for _ in 0..777 {
                let e = next_event(&mut stream).await;
                last = e.sequence;
                got.push(e);
                if last >= target {
                    break;
                }
            }
        }
        got
    };
    let began = Instant::now();
    let ((), (), (), (), resumed) = tokio::join!(
        batch_writer(&a, "a", 40),
        batch_writer(&a, "z", 40),
        batch_writer(&b, "b", 15),
        updater,
        resumer,
    );
    eprintln!(
        "10,000 changes written and resumed through in {:?}",
        began.elapsed()
    );

    let truth_a = feed(&app, &a.read_key).await;
    let truth_b = feed(&app, &b.read_key).await;
    assert_gapless(&truth_a);
    assert_gapless(&truth_b);
    assert_eq!(truth_a.len() as i64, start_a + 8_000 + 500);
    assert_eq!(truth_b.len() as i64, start_b + 1_500 + 500);
    let ids = |events: &[pb::Event]| {
        events
            .iter()
            .map(|e| (e.sequence, e.id.clone()))
            .collect::<Vec<_>>()
    };
    let head_a = truth_a.len() as i64;
    let head_b = truth_b.len() as i64;

    assert_eq!(ids(&collect(all_a, head_a).await), ids(&truth_a));
    assert_eq!(ids(&collect(all_b, head_b).await), ids(&truth_b));
    assert_eq!(ids(&collect(slow_a, head_a).await), ids(&truth_a));
    let only_updates: Vec<pb::Event> = truth_a
        .iter()
        .filter(|e| e.r#type == "customer.updated")
        .cloned()
        .collect();
    assert_eq!(only_updates.len(), 500);
    assert_eq!(ids(&collect(updates_a, head_a).await), ids(&only_updates));
    assert_eq!(ids(&resumed), ids(&truth_a[..resumed.len()]));
    assert_eq!(resumed.len() as i64, head_a);

    // The updates' request ids come through, so a partner can skip its own writes.
    let mut by_request: HashMap<&str, usize> = HashMap::new();
    for e in &truth_b {
        *by_request.entry(e.request_id.as_str()).or_default() += 1;
    }
    assert_eq!(by_request.get("u499"), Some(&1));
}

async fn pruned_positions_are_out_of_range(backend: Backend) {
    let app = spawn_app(backend).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    for i in 0..3 {
        create(&app, &vendor, person("Old", &format!("Customer{i}"), "")).await;
    }
    for i in 0..2 {
        create(&app, &vendor, person("New", &format!("Customer{i}"), "")).await;
    }
    // The cutoff is the first new event's own time: older events go, it stays.
    let time = |e: &pb::Event| {
        let t = e.create_time.expect("events carry their time");
        jiff::Timestamp::new(t.seconds, t.nanos).unwrap()
    };
    let all = feed(&app, &vendor.read_key).await;
    let k = KEY_EVENTS as usize;
    let cutoff = time(&all[k + 3]);
    assert!(
        time(&all[k + 2]) < cutoff,
        "two writes a round trip apart have distinct times"
    );
    assert_eq!(
        app.store.prune_events(cutoff).await.unwrap(),
        KEY_EVENTS as u64 + 3
    );

    let kept = feed(&app, &vendor.read_key).await;
    assert_eq!(
        kept.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [KEY_EVENTS + 4, KEY_EVENTS + 5]
    );
    // Resuming right at the edge works; before it, the answer names the oldest kept.
    let page = app
        .events(&vendor.read_key)
        .list_events(pb::ListEventsRequest {
            after_sequence: KEY_EVENTS + 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 2);
    for after in 1..KEY_EVENTS + 3 {
        let status = assert_error(
            app.events(&vendor.read_key)
                .list_events(pb::ListEventsRequest {
                    after_sequence: after,
                    ..Default::default()
                })
                .await,
            Code::OutOfRange,
            "EVENTS_PRUNED",
        );
        assert_eq!(
            status.get_details_error_info().unwrap().metadata["oldest_sequence"],
            (KEY_EVENTS + 4).to_string()
        );
    }
    let watch = app
        .events(&vendor.read_key)
        .watch_events(pb::WatchEventsRequest {
            after_sequence: 1,
            event_types: vec![],
        })
        .await;
    assert_error(watch, Code::OutOfRange, "EVENTS_PRUNED");
    let ahead = app
        .events(&vendor.read_key)
        .list_events(pb::ListEventsRequest {
            after_sequence: 99,
            ..Default::default()
        })
        .await;
    assert_error(ahead, Code::OutOfRange, "SEQUENCE_AHEAD_OF_FEED");
    let negative = app
        .events(&vendor.read_key)
        .list_events(pb::ListEventsRequest {
            after_sequence: -1,
            ..Default::default()
        })
        .await;
    assert_error(negative, Code::InvalidArgument, "INVALID_FIELD_VALUE");
}

async fn streams_are_limited_and_idle_ones_hear_a_heartbeat(backend: Backend) {
    let mut app = spawn_app_with(backend, |c| {
        c.events.heartbeat_secs = 1;
        c.events.max_streams_per_organization = 2;
    })
    .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    create(&app, &vendor, person("Ada", "Lovelace", "")).await;

    // A filtered idle stream still learns how far the feed has gone.
    let mut first = watch(&app, &vendor.read_key, 0, &["grant.*"]).await;
    let message = tokio::time::timeout(PATIENCE, first.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match message.message {
        Some(Out::Progress(p)) => assert_eq!(p.sequence, KEY_EVENTS + 1),
        other => panic!("expected progress, got {other:?}"),
    }
    let second = watch(&app, &vendor.read_key, 0, &[]).await;
    let third = app
        .events(&vendor.read_key)
        .watch_events(pb::WatchEventsRequest::default())
        .await;
    assert_error(
        third,
        Code::ResourceExhausted,
        "TOO_MANY_STREAMS_FOR_ORGANIZATION",
    );
    // Other organizations are not affected.
    let mut other = watch(&app, &dist.read_key, 0, &[]).await;
    // Closing a stream frees its place (the hub notices the reset promptly).
    drop(second);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match app
            .events(&vendor.read_key)
            .watch_events(pb::WatchEventsRequest::default())
            .await
        {
            Ok(_) => break,
            Err(status)
                if status.code() == Code::ResourceExhausted && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("the freed place was not reusable: {status:?}"),
        }
    }
    // A suspended organization's streams end at the next check of their key.
    app.operator()
        .suspend_organization(pb::SuspendOrganizationRequest {
            name: dist.name.clone(),
            reason: "unpaid invoices".into(),
            ..Default::default()
        })
        .await
        .expect("suspend");
    let ended = loop {
        match tokio::time::timeout(PATIENCE, other.message())
            .await
            .expect("stream ends in time")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = ended.expect_err("the stream ends with an error");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Shutdown ends open streams with UNAVAILABLE, naming where to resume.
    app.trigger_shutdown();
    let ended = loop {
        match tokio::time::timeout(PATIENCE, first.message())
            .await
            .expect("stream ends in time")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = ended.expect_err("the stream ends with an error");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("after_sequence {}", KEY_EVENTS + 1)),
        "{status:?}"
    );
}

/// `events.max_streams` caps a hub's open streams whoever opens them: each of three
/// organizations stays far below its own cap, so only the hub-wide one can refuse.
async fn a_hub_serves_at_most_max_streams_and_a_closed_stream_frees_a_place(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.events.max_streams = 2).await;
    let mut orgs = vec![];
    for slug in ["vendor", "dist", "shop"] {
        orgs.push(app.create_org(slug, pb::OrganizationKind::Vendor).await);
    }
    let open = async |org: &Org| {
        app.events(&org.read_key)
            .watch_events(pb::WatchEventsRequest::default())
            .await
    };
    let first = watch(&app, &orgs[0].read_key, 0, &[]).await;
    let _second = watch(&app, &orgs[1].read_key, 0, &[]).await;
    let refused = open(&orgs[2]).await;
    assert_error(refused, Code::ResourceExhausted, "TOO_MANY_STREAMS");

    // Closing a stream frees its place (the hub notices the reset promptly); the
    // refused attempt took none.
    drop(first);
    let deadline = Instant::now() + PATIENCE;
    let _third = loop {
        match open(&orgs[2]).await {
            Ok(stream) => break stream,
            Err(status)
                if status.code() == Code::ResourceExhausted && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("the freed place was not reusable: {status:?}"),
        }
    };
    // Full again: the place went to that stream, not to everyone.
    let refused = open(&orgs[0]).await;
    assert_error(refused, Code::ResourceExhausted, "TOO_MANY_STREAMS");
}

/// Two hubs on one PostgreSQL: a write through one reaches a stream on the other by
/// LISTEN/NOTIFY. The heartbeat is set far beyond the test's patience, so only a push
/// can deliver in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(liaison_postgres_tests),
    ignore = "LIAISON_TEST_POSTGRES_URL is not set"
)]
async fn a_watcher_on_one_replica_sees_writes_through_another() {
    let backend = Backend::postgres().expect("LIAISON_TEST_POSTGRES_URL");
    let one = spawn_app_with(backend, |c| c.events.heartbeat_secs = 3600).await;
    let two = one.replica().await;
    let vendor = one.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let mut stream = watch(&two, &vendor.read_key, KEY_EVENTS, &[]).await;
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let began = Instant::now();
        let c = create(&one, &vendor, person("Ada", &format!("Lovelace{i}"), "")).await;
        let event = next_event(&mut stream).await;
        worst = worst.max(began.elapsed());
        assert_eq!(event.resource, c.name);
        assert_eq!(event.sequence, KEY_EVENTS + i + 1);
    }
    eprintln!("slowest write-to-other-replica delivery of 20: {worst:?}");
}
