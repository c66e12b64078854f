//! The tenant wall where it is easiest to breach: page tokens, filters and order on
//! fields a grant hides, history a viewer may not read.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::time::Duration;

use liaison::pb;
use sqlx::Connection;
use tonic::Code;
use tonic_types::StatusExt;

use crate::customers::{create, person};
use crate::helpers::*;
use crate::sharing::grant;

crate::on_both_backends!(
    page_tokens_are_sealed_and_bound_to_caller_and_query,
    filters_and_order_on_hidden_fields_tell_nothing,
    opposite_merges_at_once_end_in_one_merge_and_a_precondition,
    a_request_that_does_not_decode_is_the_clients_mistake,
    history_pages_are_full_and_end_on_entries_the_caller_sees,
    revocation_ends_streams_on_every_replica_without_waiting_for_a_heartbeat,
    an_oversized_header_fails_its_request_and_spares_the_connection,
    a_suspended_partnership_stops_feeds_carrying_the_owners_records_at_once,
    a_rotated_page_token_key_keeps_opening_its_tokens,
    a_call_past_its_deadline_ends_with_deadline_exceeded_and_writes_nothing,
);

/// Pool saturation needs a lock only PostgreSQL offers from outside the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(liaison_postgres_tests),
    ignore = "LIAISON_TEST_POSTGRES_URL is not set"
)]
async fn a_saturated_pool_answers_unavailable_on_postgres() {
    let backend = Backend::postgres().expect("LIAISON_TEST_POSTGRES_URL");
    a_saturated_pool_answers_unavailable(backend).await
}

async fn list_page(
    app: &TestApp,
    key: &str,
    filter: &str,
    order_by: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListCustomersResponse, tonic::Status> {
    app.customers(key)
        .list_customers(pb::ListCustomersRequest {
            filter: filter.into(),
            order_by: order_by.into(),
            page_size,
            page_token: page_token.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Acme owns four customers and shares them with Shop: emails only for the first
/// three, names too for the last.
async fn vendor_and_retailer(app: &TestApp) -> (Org, Org, Vec<pb::Customer>) {
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&acme, &shop).await;
    let mut customers = vec![];
    for (given, family, email, fields) in [
        ("Zelda", "Hidden", "zelda@example.com", &["emails"][..]),
        ("Alma", "Hidden", "alma@example.com", &["emails"][..]),
        ("Alba", "Hidden", "alba@example.com", &["emails"][..]),
        (
            "Olga",
            "Shown",
            "olga@example.com",
            &["display_name", "emails"][..],
        ),
    ] {
        let c = create(app, &acme, person(given, family, email)).await;
        grant(app, &acme, &c.name, &shop, pb::AccessLevel::Read, fields)
            .await
            .expect("grant");
        customers.push(c);
    }
    (acme, shop, customers)
}

async fn page_tokens_are_sealed_and_bound_to_caller_and_query(backend: Backend) {
    let app = spawn_app(backend).await;
    let (acme, shop, _) = vendor_and_retailer(&app).await;
    let other = app
        .create_org("other", pb::OrganizationKind::Retailer)
        .await;

    // Shop pages by display name; the token after "Alba"/"Alma" must hold nothing of
    // the names (hidden from Shop) or anything else readable.
    let first = list_page(&app, &shop.read_key, "", "display_name", 1, "")
        .await
        .unwrap();
    assert_eq!(first.customers.len(), 1);
    let token = first.next_page_token;
    assert!(!token.is_empty());
    let bytes = URL_SAFE_NO_PAD
        .decode(&token)
        .expect("tokens are base64url");
    let text = String::from_utf8_lossy(&bytes).to_lowercase();
    for secret in [
        "zelda",
        "alma",
        "alba",
        "hidden",
        "customers",
        "display_name",
    ] {
        assert!(!text.contains(secret), "{secret:?} readable in the token");
    }
    // The owner's own token, with the names it may see, is as opaque.
    let owner = list_page(&app, &acme.read_key, "", "display_name", 1, "")
        .await
        .unwrap();
    let owner_bytes = URL_SAFE_NO_PAD.decode(&owner.next_page_token).unwrap();
    assert!(
        !String::from_utf8_lossy(&owner_bytes)
            .to_lowercase()
            .contains("alba")
    );

    // The token continues Shop's query, and only that.
    let second = list_page(&app, &shop.read_key, "", "display_name", 1, &token)
        .await
        .unwrap();
    assert_eq!(second.customers.len(), 1);
    assert_ne!(second.customers[0].name, first.customers[0].name);
    let refused = |result: Result<pb::ListCustomersResponse, tonic::Status>, why: &str| {
        let status = assert_error(result, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
        assert!(status.message().contains(why), "{status:?}");
        assert_eq!(violated_fields(&status), ["page_token"]);
    };
    // Another organization replays it.
    refused(
        list_page(&app, &other.read_key, "", "display_name", 1, &token).await,
        "another caller",
    );
    // Same organization, another key: the token is the organization's.
    list_page(&app, &shop.admin_key, "", "display_name", 1, &token)
        .await
        .expect("another key of the same organization continues");
    // Another filter or order.
    refused(
        list_page(
            &app,
            &shop.read_key,
            "kind = PERSON",
            "display_name",
            1,
            &token,
        )
        .await,
        "different query",
    );
    refused(
        list_page(&app, &shop.read_key, "", "update_time", 1, &token).await,
        "different query",
    );
    // Another list altogether (members of Shop, same caller).
    let members = app
        .members(&shop.read_key)
        .list_members(pb::ListMembersRequest {
            parent: shop.name.clone(),
            page_token: token.clone(),
            ..Default::default()
        })
        .await;
    assert_error(members, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    // Tampered with: one bit flipped.
    let mut forged = bytes.clone();
    forged[bytes.len() / 2] ^= 0x01;
    refused(
        list_page(
            &app,
            &shop.read_key,
            "",
            "display_name",
            1,
            &URL_SAFE_NO_PAD.encode(forged),
        )
        .await,
        "not a token this list returned",
    );
}

async fn filters_and_order_on_hidden_fields_tell_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (acme, shop, customers) = vendor_and_retailer(&app).await;

    // Two hidden names start with "al". Shop learns nothing from asking: no customer,
    // and no token hinting at more, whatever the page size.
    for size in [1, 2, 50] {
        let page = list_page(&app, &shop.read_key, "display_name = \"al*\"", "", size, "")
            .await
            .unwrap();
        assert!(page.customers.is_empty(), "{page:?}");
        assert!(
            page.next_page_token.is_empty(),
            "a token leaks a hidden match"
        );
    }
    // The owner, who sees the names, finds both.
    let own = list_page(&app, &acme.read_key, "display_name = \"al*\"", "", 50, "")
        .await
        .unwrap();
    assert_eq!(own.customers.len(), 2);
    // A shown name still matches for Shop.
    let shown = list_page(&app, &shop.read_key, "display_name = \"olga*\"", "", 50, "")
        .await
        .unwrap();
    assert_eq!(shown.customers.len(), 1);
    assert_eq!(shown.customers[0].name, customers[3].name);

    // Sorting by a hidden name sorts it as empty: Shop gets the hidden ones in creation
    // order (Zelda, Alma, Alba), before Olga, never in the order of their names. Pages
    // of one are full and the walk visits each customer once.
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let page = list_page(&app, &shop.read_key, "", "display_name", 1, &token)
            .await
            .unwrap();
        assert!(
            page.customers.len() == 1 || page.next_page_token.is_empty(),
            "a short page in the middle: {page:?}"
        );
        seen.extend(page.customers.into_iter().map(|c| c.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = customers.iter().map(|c| c.name.clone()).collect();
    assert_eq!(seen, expected);

    // A filter on the emails Shop sees matches; pages of one are full.
    let page = list_page(
        &app,
        &shop.read_key,
        "email = \"alma@example.com\"",
        "",
        1,
        "",
    )
    .await
    .unwrap();
    assert_eq!(page.customers.len(), 1);
    assert_eq!(page.customers[0].name, customers[1].name);
}

async fn opposite_merges_at_once_end_in_one_merge_and_a_precondition(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    for round in 0..8 {
        let a = create(&app, &acme, person("Ann", &format!("A{round}"), "")).await;
        let b = create(&app, &acme, person("Ann", &format!("B{round}"), "")).await;
        let merge = |survivor: String, merged: String| {
            let mut client = app.customers(&acme.admin_key);
            async move {
                client
                    .merge_customers(pb::MergeCustomersRequest {
                        name: survivor,
                        merged: vec![merged],
                        ..Default::default()
                    })
                    .await
            }
        };
        let (ab, ba) = tokio::join!(
            merge(a.name.clone(), b.name.clone()),
            merge(b.name.clone(), a.name.clone())
        );
        let (won, lost) = match (ab, ba) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won.into_inner(), lost),
            other => panic!("round {round}: exactly one merge must win: {other:?}"),
        };
        let info = lost.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            lost.code(),
            Code::FailedPrecondition,
            "round {round}: {lost:?}"
        );
        assert_eq!(info.reason, "CUSTOMER_MERGED", "round {round}");
        assert!(lost.message().contains(&won.name), "{lost:?}");
        // The survivor is whole; the other record is merged into it.
        let other = if won.name == a.name { &b.name } else { &a.name };
        let gone = app
            .customers(&acme.read_key)
            .get_customer(pb::GetCustomerRequest {
                name: other.clone(),
            })
            .await;
        assert_error(gone, Code::NotFound, "CUSTOMER_MERGED");
    }
}

/// A message of another shape on a real method: the wire types do not match.
#[derive(Clone, PartialEq, prost::Message)]
struct NotAGetCustomerRequest {
    #[prost(int64, tag = "1")]
    name: i64,
}

async fn a_request_that_does_not_decode_is_the_clients_mistake(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(NotAGetCustomerRequest { name: 42 });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", acme.read_key).parse().unwrap(),
    );
    let result: Result<tonic::Response<pb::Customer>, _> = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static("/liaison.v1.CustomerService/GetCustomer"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let status = assert_error(result, Code::InvalidArgument, "UNDECODABLE_REQUEST");
    assert!(
        status.message().contains("GetCustomerRequest"),
        "{status:?}"
    );
}

async fn history_pages_are_full_and_end_on_entries_the_caller_sees(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&acme, &shop).await;
    let mut customer = create(&app, &acme, person("Hedda", "Gabler", "hedda@example.com")).await;
    grant(
        &app,
        &acme,
        &customer.name,
        &shop,
        pb::AccessLevel::Read,
        &["emails"],
    )
    .await
    .expect("grant");
    // Five changes Shop cannot see (the family name), then one it can (the email).
    for i in 0..5 {
        customer.family_name = format!("Gabler {i}");
        customer = crate::sharing::update(&app, &acme.admin_key, customer, &["family_name"])
            .await
            .unwrap();
    }
    customer.emails[0].address = "hedda@new.example".into();
    crate::sharing::update(&app, &acme.admin_key, customer.clone(), &["emails"])
        .await
        .unwrap();
    let page = |token: String| {
        let mut client = app.customers(&shop.read_key);
        let parent = customer.name.clone();
        async move {
            client
                .list_customer_history(pb::ListCustomerHistoryRequest {
                    parent,
                    page_size: 1,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    // Newest first: the email change; then, skipping the five hidden updates, the
    // creation; then nothing.
    let first = page(String::new()).await;
    assert_eq!(first.entries.len(), 1);
    assert_eq!(first.entries[0].changes[0].field, "emails");
    assert!(!first.next_page_token.is_empty());
    let second = page(first.next_page_token).await;
    assert_eq!(second.entries.len(), 1, "{second:?}");
    assert_eq!(
        second.entries[0].action,
        pb::customer_history_entry::Action::Created as i32
    );
    if !second.next_page_token.is_empty() {
        let third = page(second.next_page_token).await;
        assert!(third.entries.is_empty() && third.next_page_token.is_empty());
    }
}

async fn a_saturated_pool_answers_unavailable(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.database.max_connections = 2;
        c.database.acquire_timeout_secs = 1;
    })
    .await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let c = create(&app, &acme, person("Pia", "Pool", "")).await;
    // Another client holds the customers table; the hub's connections queue behind it.
    let mut blocker = sqlx::PgConnection::connect(&app.config.database.url)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut client = app.customers(&acme.read_key);
            let name = c.name.clone();
            tokio::spawn(async move { client.get_customer(pb::GetCustomerRequest { name }).await })
        })
        .collect();
    // Held until a call has given up: while the table is locked no call can succeed, so
    // one that is done waited past the acquire timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !calls.iter().any(|c| c.is_finished()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no call gave up while the table was locked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::raw_sql("COMMIT").execute(&mut blocker).await.unwrap();
    let mut busy = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(found) => assert_eq!(found.into_inner().name, c.name),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                let info = status.get_details_error_info().unwrap();
                assert_eq!(info.reason, "DATABASE_BUSY");
                assert!(status.get_details_retry_info().is_some(), "{status:?}");
                busy += 1;
            }
        }
    }
    assert!(busy >= 1, "no call waited past the acquire timeout");
}

/// Waits for a stream to end; what it ended with.
async fn end_of(mut stream: tonic::Streaming<pb::WatchEventsResponse>) -> tonic::Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => return status,
        }
    }
}

async fn revocation_ends_streams_on_every_replica_without_waiting_for_a_heartbeat(
    backend: Backend,
) {
    let on_postgres = matches!(backend, Backend::Postgres(_));
    // An hour between heartbeats: only the revocation path can end a stream here.
    let app = spawn_app_with(backend, |c| c.events.heartbeat_secs = 3600).await;
    // Streams live on a second replica where there can be one; revocations go through
    // the first hub and through `liaison admin` in a process of its own.
    let other = if on_postgres {
        Some(app.replica().await)
    } else {
        None
    };
    let streams_on = other.as_ref().unwrap_or(&app);
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let new_key = async |org: &Org| {
        app.operator()
            .create_api_key(new_api_key(&org.name, &[pb::ApiKeyScope::Read]))
            .await
            .unwrap()
            .into_inner()
    };
    let by_rpc = new_key(&acme).await;
    let by_cli = new_key(&acme).await;
    let open = async |key: &str| {
        streams_on
            .events(key)
            .watch_events(pb::WatchEventsRequest::default())
            .await
            .expect("stream opens")
            .into_inner()
    };
    let rpc_stream = open(&by_rpc.key).await;
    let cli_stream = open(&by_cli.key).await;
    let shop_stream = open(&shop.read_key).await;
    let untouched = open(&acme.read_key).await;

    app.operator()
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: by_rpc.api_key.as_ref().unwrap().name.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let status = end_of(rpc_stream).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "KEY_REVOKED"
    );

    // Another process revokes, straight on the database.
    let name = by_cli.api_key.as_ref().unwrap().name.clone();
    let url = app.config.database.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        crate::cli::liaison(&url, &["admin", "revoke-key", &name])
    })
    .await
    .unwrap();
    crate::cli::stdout(&out);
    let status = end_of(cli_stream).await;
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "KEY_REVOKED"
    );

    app.operator()
        .suspend_organization(pb::SuspendOrganizationRequest {
            name: shop.name.clone(),
            reason: "unpaid".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let status = end_of(shop_stream).await;
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "ORGANIZATION_SUSPENDED"
    );

    // A stream whose key nobody touched carries on: it hears the next change.
    let mut untouched = untouched;
    crate::customers::create(&app, &acme, person("Still", "Here", "")).await;
    let next = tokio::time::timeout(Duration::from_secs(20), untouched.message())
        .await
        .expect("the untouched stream carries on")
        .expect("no error")
        .expect("a message");
    assert!(matches!(
        next.message,
        Some(pb::watch_events_response::Message::Event(_))
    ));
}

async fn an_oversized_header_fails_its_request_and_spares_the_connection(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    // One HTTP/2 connection carries a stream and the requests below.
    let mut stream = app
        .events(&acme.read_key)
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut request = tonic::Request::new(pb::ListCustomersRequest::default());
    request
        .metadata_mut()
        .insert("x-padding", "a".repeat(64 * 1024).parse().unwrap());
    let refused = app.customers(&acme.read_key).list_customers(request).await;
    let status = assert_error(refused, Code::ResourceExhausted, "METADATA_TOO_LARGE");
    assert!(status.message().contains("at most 16384"), "{status:?}");
    // The same connection carries on: a normal request, and the open stream hears
    // the next change.
    create(&app, &acme, person("Nora", "Helmer", "")).await;
    let next = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("the stream carries on")
        .expect("no error on the stream")
        .expect("a message");
    assert!(matches!(
        next.message,
        Some(pb::watch_events_response::Message::Event(_))
    ));
}

/// The types of every event in `key`'s feed, in order.
async fn feed_types(app: &TestApp, key: &str) -> Vec<(String, String)> {
    app.events(key)
        .list_events(pb::ListEventsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| (e.r#type, e.resource))
        .collect()
}

async fn a_suspended_partnership_stops_feeds_carrying_the_owners_records_at_once(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.events.heartbeat_secs = 3600).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    let partnership = app.partner(&acme, &shop).await;
    let mut customer = create(
        &app,
        &acme,
        person("Nils", "Holgersson", "nils@example.com"),
    )
    .await;
    grant(
        &app,
        &acme,
        &customer.name,
        &shop,
        pb::AccessLevel::Read,
        &["display_name", "emails"],
    )
    .await
    .unwrap();
    customer.emails[0].address = "nils@goose.example".into();
    customer = crate::sharing::update(&app, &acme.admin_key, customer, &["emails"])
        .await
        .unwrap();
    let customer_name = customer.name.clone();
    let is_customer = |(_, r): &(String, String)| r.starts_with(&customer_name);
    // Shop's feed carries the customer while the partnership is active.
    let before = feed_types(&app, &shop.read_key).await;
    assert!(
        before.iter().filter(|e| is_customer(e)).count() >= 2,
        "{before:?}"
    );

    // A backlog of changes, and a stream of Shop's that has read none of it: the hub
    // has pushed what the connection's buffers hold and waits with the rest.
    const CHANGES: usize = 600;
    for i in 0..CHANGES {
        customer.emails[0].address = format!("nils{i}@goose.example");
        customer = crate::sharing::update(&app, &acme.admin_key, customer, &["emails"])
            .await
            .unwrap();
    }
    // HTTP/2's smallest windows, so the transport holds little of it.
    let small = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut stream = EventServiceClient::with_interceptor(small, Bearer(shop.read_key.clone()))
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // The stream is under way (its first message came), so the suspension cuts a
    // replay in progress rather than one that has not begun.
    let next = async |stream: &mut tonic::Streaming<pb::WatchEventsResponse>| {
        tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the stream carries on")
            .expect("no error")
            .expect("a message")
    };
    let mut message = next(&mut stream).await;
    app.partnerships(&acme.admin_key)
        .suspend_partnership(pb::SuspendPartnershipRequest {
            name: partnership.name.clone(),
            reason: "audit".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // From now on nothing of Acme's customer is carried, events already in the feed
    // included; the stream stays open and carries the partnership's own news.
    let after = feed_types(&app, &shop.read_key).await;
    assert!(!after.iter().any(is_customer), "{after:?}");
    assert!(after.iter().any(|(t, _)| t == "partnership.suspended"));
    let mut carried = 0;
    loop {
        if let Some(pb::watch_events_response::Message::Event(e)) = message.message {
            if e.resource.starts_with(&customer_name) {
                carried += 1;
            }
            if e.r#type == "partnership.suspended" {
                break;
            }
        }
        message = next(&mut stream).await;
    }
    // What was already on its way (the send buffer and the connection's window) is
    // gone; the rest of the backlog never left the hub.
    assert!(
        carried < CHANGES,
        "the whole backlog was carried after the suspension"
    );
    // Resumed: the records are Shop's to read again.
    app.partnerships(&acme.admin_key)
        .resume_partnership(pb::ResumePartnershipRequest {
            name: partnership.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let resumed = feed_types(&app, &shop.read_key).await;
    assert!(
        resumed.iter().filter(|e| is_customer(e)).count() >= 2,
        "{resumed:?}"
    );
}

async fn a_rotated_page_token_key_keeps_opening_its_tokens(backend: Backend) {
    use liaison::api::paging::{PageTokens, rotate_stored_key};
    use std::sync::Arc;

    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    for i in 0..3 {
        create(&app, &acme, person("Page", &format!("P{i}"), "")).await;
    }
    let first = list_page(&app, &acme.read_key, "", "", 1, "")
        .await
        .unwrap();
    assert!(!first.next_page_token.is_empty());

    // The operator rotates (as `liaison admin rotate-page-token-key` does); a hub that
    // loads the keys now seals with the new one and still opens the old one's tokens.
    rotate_stored_key(&app.store).await.unwrap();
    let reloaded = Arc::new(PageTokens::load(&app.store, &[]).await.unwrap());
    let org = app
        .store
        .organization(&liaison::domain::Slug::parse("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    let caller = liaison::api::Caller {
        key_id: "k".into(),
        principal: liaison::domain::Principal::Organization(liaison::domain::OrgRef {
            id: org.id.clone(),
            slug: org.slug.clone(),
        }),
        scopes: liaison::domain::Scopes::new(vec![liaison::domain::Scope::Read]).unwrap(),
    };
    // The running hub's token (sealed with the old key) opens on the reloaded keys...
    let query = "customers:::false";
    let page = reloaded
        .open(&caller, 1, &first.next_page_token, query)
        .await
        .expect("a token of the retired key opens");
    // ...what they seal now is sealed with the new key, and opens too.
    let fresh = page.next_token(page.after.clone());
    let key_id = |t: &str| URL_SAFE_NO_PAD.decode(t).unwrap()[1..5].to_vec();
    assert_ne!(key_id(&fresh), key_id(&first.next_page_token));
    reloaded
        .open(&caller, 1, &fresh, query)
        .await
        .expect("a token of the new key opens");
}

async fn a_call_past_its_deadline_ends_with_deadline_exceeded_and_writes_nothing(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.server.request_timeout_secs = 1).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    // Another client holds the database, so the hub's write waits past its deadline.
    let blocker = hold_database(&app).await;
    let late = app
        .customers(&acme.admin_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(person("Too", "Late", "")),
            request_id: "late-1".into(),
        })
        .await;
    let status = assert_error(late, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(status.message().contains("rolled back"), "{status:?}");
    // Released: the write was abandoned, nothing of it remains, and the retry with
    // the same request id creates the customer once.
    // (Reads wait for the lock to go, if it is not gone yet.)
    drop(blocker);
    let listed = list_page(&app, &acme.read_key, "", "", 50, "")
        .await
        .unwrap();
    assert!(listed.customers.is_empty(), "{listed:?}");
    app.customers(&acme.admin_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(person("Too", "Late", "")),
            request_id: "late-1".into(),
        })
        .await
        .expect("the retry succeeds");
    let listed = list_page(&app, &acme.read_key, "", "", 50, "")
        .await
        .unwrap();
    assert_eq!(listed.customers.len(), 1);
}
