//! Webhooks end to end: a real HTTP receiver on 127.0.0.1 checks each delivery with an
//! independent Standard Webhooks implementation (the `standardwebhooks` crate).

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use liaison::pb;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Code;

use crate::customers::{create, person};
use crate::helpers::*;

crate::on_both_backends!(
    deliveries_are_signed_retried_until_accepted_and_filtered,
    gone_disables_the_endpoint,
    timeouts_and_retry_after_are_retried_and_logged,
    a_dead_endpoint_does_not_hold_up_a_healthy_one,
    ordered_endpoints_keep_sequence_order_under_retries,
    rotated_secrets_sign_alongside_until_the_overlap_ends,
    test_events_updates_and_redelivery,
    endpoints_failing_for_the_period_are_disabled_and_announced,
    rate_limits_space_the_requests,
    two_replicas_deliver_a_burst_once,
    a_killed_hub_delivers_everything_after_restart,
    sigterm_cuts_a_slow_attempt_short_and_the_restarted_hub_completes_it_once,
    a_worker_that_lost_its_lease_cannot_overwrite_the_result,
    a_released_delivery_behind_later_ones_is_still_sent_and_a_sent_one_can_be_sent_again,
    a_grantees_endpoint_gets_only_the_fields_its_grant_shows,
    events_over_the_payload_limit_are_not_sent_and_the_attempt_says_why,
    an_organization_has_at_most_50_endpoints,
    a_deleted_endpoint_is_gone_and_only_its_organization_may_delete_it,
);

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Vec<u8>,
    pub(crate) at: Instant,
}

impl Received {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub(crate) fn id(&self) -> String {
        self.headers["webhook-id"].to_str().unwrap().to_owned()
    }

    fn sequence(&self) -> i64 {
        self.json()["sequence"].as_str().unwrap().parse().unwrap()
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) delay: Duration,
    pub(crate) retry_after: Option<u64>,
    /// A `location` header (a redirect's target).
    pub(crate) location: Option<String>,
    pub(crate) body: String,
}

pub(crate) fn reply(status: u16) -> Reply {
    Reply {
        status,
        delay: Duration::ZERO,
        retry_after: None,
        location: None,
        body: "ok".into(),
    }
}

/// Decides the reply to a request, given the requests so far (this one last).
pub(crate) type Script = Arc<dyn Fn(&[Received]) -> Reply + Send + Sync>;

/// A minimal HTTP/1.1 server that answers as its script says and records what it got
/// (each request as it arrives, before the reply).
#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) url: String,
    received: Arc<Mutex<Vec<Received>>>,
    /// Most requests it was ever answering at once.
    max_in_flight: Arc<AtomicUsize>,
}

impl Receiver {
    /// Answers each request with the next of `statuses` (the last one repeats).
    pub(crate) async fn start(statuses: &[u16]) -> Self {
        let statuses = statuses.to_vec();
        Self::scripted(move |got| reply(statuses[(got.len() - 1).min(statuses.len() - 1)])).await
    }

    /// Plain HTTP on 127.0.0.1.
    pub(crate) async fn scripted(
        script: impl Fn(&[Received]) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::serve(None, Arc::new(script)).await
    }

    /// HTTPS on 127.0.0.1: each connection is accepted by `tls` first; one whose
    /// handshake fails never becomes a request.
    pub(crate) async fn over_tls(
        tls: tokio_rustls::TlsAcceptor,
        script: impl Fn(&[Received]) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::serve(Some(tls), Arc::new(script)).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>, script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/hooks", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(vec![]));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (log, max) = (received.clone(), max_in_flight.clone());
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (log, script, max, in_flight, tls) = (
                    log.clone(),
                    script.clone(),
                    max.clone(),
                    in_flight.clone(),
                    tls.clone(),
                );
                tokio::spawn(async move {
                    let exchange = Exchange {
                        log,
                        script,
                        max,
                        in_flight,
                    };
                    match tls {
                        None => exchange.answer(socket).await,
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(socket).await {
                                exchange.answer(stream).await
                            }
                        }
                    }
                });
            }
        });
        Self {
            url,
            received,
            max_in_flight,
        }
    }

    pub(crate) fn got(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived.
    pub(crate) async fn wait_for(&self, n: usize) -> Vec<Received> {
        self.wait_for_within(n, Duration::from_secs(10)).await
    }

    async fn wait_for_within(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("expected {n} requests, got {}", self.got().len());
    }
}

/// What one connection of a receiver shares with the others.
struct Exchange {
    log: Arc<Mutex<Vec<Received>>>,
    script: Script,
    max: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
}

impl Exchange {
    /// Reads one request, logs it and answers as the script says.
    async fn answer(self, mut socket: impl AsyncRead + AsyncWrite + Unpin) {
        let Some((headers, body)) = read_request(&mut socket).await else {
            return;
        };
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        let answer = {
            let mut log = self.log.lock().unwrap();
            log.push(Received {
                headers,
                body,
                at: Instant::now(),
            });
            (self.script)(&log)
        };
        tokio::time::sleep(answer.delay).await;
        let mut extra = String::new();
        if let Some(s) = answer.retry_after {
            extra += &format!("retry-after: {s}\r\n");
        }
        if let Some(to) = &answer.location {
            extra += &format!("location: {to}\r\n");
        }
        let reply = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{}",
            answer.status,
            answer.body.len(),
            answer.body
        );
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let _ = socket.write_all(reply.as_bytes()).await;
        let _ = socket.shutdown().await;
    }
}

/// Reads one HTTP/1.1 request with a content-length body.
async fn read_request(socket: &mut (impl AsyncRead + Unpin)) -> Option<(http::HeaderMap, Vec<u8>)> {
    let mut buf = vec![];
    let mut chunk = [0u8; 8192];
    let (head_len, content_length) = loop {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buf.len() < head_len + content_length {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
    let mut headers = http::HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            )
        {
            headers.insert(k, v);
        }
    }
    Some((headers, buf[head_len..head_len + content_length].to_vec()))
}

/// Polls `check` until it yields a value (10 s at most).
pub(crate) async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

pub(crate) fn test_webhooks(config: &mut liaison::config::Config) {
    config.webhooks.allow_http = true;
    config.webhooks.allow_private_networks = true;
    config.webhooks.retry_schedule_secs = vec![0, 1, 1, 1];
}

pub(crate) async fn create_endpoint(
    app: &TestApp,
    org: &Org,
    url: &str,
    types: &[&str],
) -> Result<pb::WebhookEndpoint, tonic::Status> {
    app.webhooks(&org.admin_key)
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            parent: org.name.clone(),
            webhook_endpoint: Some(pb::WebhookEndpoint {
                url: url.into(),
                description: "ERP".into(),
                event_types: types.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn deliveries_are_signed_retried_until_accepted_and_filtered(backend: Backend) {
    let app = spawn_app_with(backend, test_webhooks).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let receiver = Receiver::start(&[500, 200]).await;
    let endpoint = create_endpoint(&app, &vendor, &receiver.url, &["customer.*"])
        .await
        .expect("create endpoint");
    assert_eq!(endpoint.event_types, ["customer.*"]);
    assert_eq!(endpoint.enabled, Some(true));
    let secret = app
        .webhooks(&vendor.admin_key)
        .get_webhook_endpoint_secret(pb::GetWebhookEndpointSecretRequest {
            name: endpoint.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    assert!(secret.starts_with("whsec_"));
    // A read key may look but not see the secret.
    let denied = app
        .webhooks(&vendor.read_key)
        .get_webhook_endpoint_secret(pb::GetWebhookEndpointSecretRequest {
            name: endpoint.name.clone(),
        })
        .await;
    assert_error(denied, Code::PermissionDenied, "INSUFFICIENT_SCOPE");

    let c = create(&app, &vendor, person("Ada", "Lovelace", "ada@example.com")).await;
    // Refused once (500), then accepted: the same event twice, the same webhook-id.
    let got = receiver.wait_for(2).await;
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    for r in &got {
        verifier
            .verify(&r.body, &r.headers)
            .expect("a valid signature");
        assert_eq!(r.headers["content-type"], "application/json");
    }
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
    let body: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(body["type"], "customer.created");
    assert_eq!(body["resource"], c.name);
    // After the keys' events and the endpoint's own creation (not sent to it).
    assert_eq!(body["sequence"], (KEY_EVENTS + 2).to_string());
    assert_eq!(body["id"], got[1].headers["webhook-id"].to_str().unwrap());
    assert_eq!(body["customer"]["emails"][0]["address"], "ada@example.com");

    // The endpoint's health shows the success.
    eventually("the success recorded", async || {
        let e = get_endpoint(&app, &vendor, &endpoint.name).await;
        (e.last_success_time.is_some() && e.consecutive_failures == 0).then_some(())
    })
    .await;

    // Filtered out: a member event is not sent.
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
        .expect("member");
    let mut renamed = c.clone();
    renamed.etag.clear();
    renamed.given_name = "Augusta".into();
    app.customers(&vendor.admin_key)
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(renamed),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["given_name".into()],
            }),
            request_id: String::new(),
        })
        .await
        .expect("update");
    let got = receiver.wait_for(3).await;
    // The member event would be due at once: once the worker has nothing due, it
    // has had its chance.
    app.settle().await;
    assert_eq!(receiver.got().len(), 3, "only the customer events arrive");
    let last: serde_json::Value = serde_json::from_slice(&got[2].body).unwrap();
    assert_eq!(last["type"], "customer.updated");
    assert_eq!(last["sequence"], (KEY_EVENTS + 4).to_string());
}

async fn gone_disables_the_endpoint(backend: Backend) {
    let app = spawn_app_with(backend, test_webhooks).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let receiver = Receiver::start(&[410]).await;
    let endpoint = create_endpoint(&app, &vendor, &receiver.url, &[])
        .await
        .unwrap();
    create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    receiver.wait_for(1).await;
    let e = eventually("410 disables the endpoint", async || {
        let e = get_endpoint(&app, &vendor, &endpoint.name).await;
        (e.enabled == Some(false)).then_some(e)
    })
    .await;
    assert!(e.disabled_reason.contains("410"), "{e:?}");
    // Nothing more is sent to it.
    create(&app, &vendor, person("Grace", "Hopper", "")).await;
    app.settle().await;
    assert_eq!(receiver.received.lock().unwrap().len(), 1);
}

pub(crate) async fn get_endpoint(app: &TestApp, org: &Org, name: &str) -> pb::WebhookEndpoint {
    app.webhooks(&org.read_key)
        .get_webhook_endpoint(pb::GetWebhookEndpointRequest { name: name.into() })
        .await
        .expect("get endpoint")
        .into_inner()
}

pub(crate) async fn secret_of(app: &TestApp, org: &Org, name: &str) -> pb::WebhookEndpointSecret {
    app.webhooks(&org.admin_key)
        .get_webhook_endpoint_secret(pb::GetWebhookEndpointSecretRequest { name: name.into() })
        .await
        .expect("get secret")
        .into_inner()
}

pub(crate) async fn attempts(
    app: &TestApp,
    org: &Org,
    parent: &str,
    event_id: &str,
) -> Vec<pb::WebhookAttempt> {
    app.webhooks(&org.read_key)
        .list_webhook_attempts(pb::ListWebhookAttemptsRequest {
            parent: parent.into(),
            event_id: event_id.into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .expect("list attempts")
        .into_inner()
        .webhook_attempts
}

pub(crate) fn verifies(secret: &str, r: &Received) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .is_ok()
}

async fn timeouts_and_retry_after_are_retried_and_logged(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        test_webhooks(c);
        c.webhooks.timeout_secs = 1;
    })
    .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    // No answer within the timeout; then 429 with Retry-After: 2; then accepted.
    let receiver = Receiver::scripted(|got| match got.len() {
        1 => Reply {
            delay: Duration::from_millis(2500),
            ..reply(200)
        },
        2 => Reply {
            retry_after: Some(2),
            ..reply(429)
        },
        _ => reply(200),
    })
    .await;
    let endpoint = create_endpoint(&app, &vendor, &receiver.url, &[])
        .await
        .unwrap();
    create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    let got = receiver.wait_for(3).await;
    let id = got[0].id();
    assert!(got.iter().all(|r| r.id() == id), "one event, retried");
    // The schedule says 1 s (±10%); the receiver asked for 2.
    let waited = got[2].at - got[1].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "Retry-After honoured: {waited:?}"
    );

    let log = eventually("three attempts logged", async || {
        let log = attempts(&app, &vendor, &endpoint.name, "").await;
        (log.len() == 3).then_some(log)
    })
    .await;
    use pb::webhook_attempt::Outcome;
    // Newest first.
    assert_eq!(log[0].outcome, Outcome::Succeeded as i32);
    assert_eq!(
        (log[0].http_status, log[0].response_body_excerpt.as_str()),
        (200, "ok")
    );
    assert_eq!(
        (log[1].outcome, log[1].http_status),
        (Outcome::Retrying as i32, 429)
    );
    assert_eq!(
        (log[2].outcome, log[2].http_status),
        (Outcome::Retrying as i32, 0)
    );
    assert!(log[2].error.contains("timed out"), "{:?}", log[2].error);
    assert!(log[2].latency.unwrap().seconds >= 1);
    assert!(
        log.iter()
            .all(|a| a.event_id == id && a.event_type == "customer.created")
    );
    assert!(
        log[0]
            .name
            .starts_with(&format!("{}/attempts/", endpoint.name))
    );

    // Across the organization's endpoints, narrowed to the event; paged.
    let all = format!("{}/webhookEndpoints/-", vendor.name);
    assert_eq!(attempts(&app, &vendor, &all, &id).await, log);
    let mut client = app.webhooks(&vendor.read_key);
    let first = client
        .list_webhook_attempts(pb::ListWebhookAttemptsRequest {
            parent: all.clone(),
            event_id: id.clone(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.webhook_attempts, log[..2]);
    let second = client
        .list_webhook_attempts(pb::ListWebhookAttemptsRequest {
            parent: all.clone(),
            event_id: id.clone(),
            page_size: 2,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.webhook_attempts, log[2..]);
    assert!(second.next_page_token.is_empty());
    let bad = client
        .list_webhook_attempts(pb::ListWebhookAttemptsRequest {
            parent: all,
            event_id: "nope".into(),
            ..Default::default()
        })
        .await;
    let status = assert_error(bad, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(violated_fields(&status), ["event_id"]);

    let health = get_endpoint(&app, &vendor, &endpoint.name).await;
    assert_eq!(health.consecutive_failures, 0);
    assert!(health.last_success_time.is_some() && health.failing_since_time.is_none());
    assert_eq!(health.pending_deliveries, 0);
}

async fn a_dead_endpoint_does_not_hold_up_a_healthy_one(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        test_webhooks(c);
        c.webhooks.timeout_secs = 30;
        c.webhooks.concurrency = 6;
        c.webhooks.max_in_flight_per_endpoint = 3;
    })
    .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    // Accepts connections and never answers (within the test).
    let dead = Receiver::scripted(|_| Reply {
        delay: Duration::from_secs(120),
        ..reply(200)
    })
    .await;
    let healthy = Receiver::start(&[200]).await;
    // Filtered, so the dead one is not also told of the healthy one's creation.
    let dead_endpoint = create_endpoint(&app, &vendor, &dead.url, &["customer.*"])
        .await
        .unwrap();
    create_endpoint(&app, &vendor, &healthy.url, &["customer.*"])
        .await
        .unwrap();
    for i in 0..20 {
        create(&app, &vendor, person(&format!("P{i}"), "Hopper", "")).await;
    }
    let got = healthy.wait_for(20).await;
    let ids: std::collections::HashSet<String> = got.iter().map(Received::id).collect();
    assert_eq!(ids.len(), 20, "every event reached the healthy endpoint");
    // The dead endpoint holds no more than its share of the worker.
    assert!(
        dead.got().len() <= 3,
        "{} requests in flight to one endpoint",
        dead.got().len()
    );
    let stuck = get_endpoint(&app, &vendor, &dead_endpoint.name).await;
    assert_eq!(stuck.pending_deliveries, 20);
}

async fn ordered_endpoints_keep_sequence_order_under_retries(backend: Backend) {
    let app = spawn_app_with(backend, test_webhooks).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    // The customers' events follow the keys' and the endpoint's own creation (which is
    // not sent to it): the 2nd and 4th are refused the first time; every answer takes
    // a moment, so overlapping requests would be seen.
    const B: i64 = KEY_EVENTS + 1;
    let receiver = Receiver::scripted(|got| {
        let last = got.last().unwrap().sequence();
        let first_time = got.iter().filter(|r| r.sequence() == last).count() == 1;
        Reply {
            delay: Duration::from_millis(20),
            ..reply(if first_time && (last == B + 2 || last == B + 4) {
                500
            } else {
                200
            })
        }
    })
    .await;
    let endpoint = app
        .webhooks(&vendor.admin_key)
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            parent: vendor.name.clone(),
            webhook_endpoint: Some(pb::WebhookEndpoint {
                url: receiver.url.clone(),
                ordered: true,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(endpoint.ordered);
    for i in 0..6 {
        create(&app, &vendor, person(&format!("P{i}"), "Hopper", "")).await;
    }
    let got = receiver.wait_for(8).await;
    let order: Vec<i64> = got.iter().map(Received::sequence).collect();
    assert_eq!(order, [1, 2, 2, 3, 4, 4, 5, 6].map(|s| B + s));
    assert_eq!(
        receiver.max_in_flight.load(Ordering::SeqCst),
        1,
        "one at a time"
    );
}

async fn rotated_secrets_sign_alongside_until_the_overlap_ends(backend: Backend) {
    let app = spawn_app_with(backend, test_webhooks).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let receiver = Receiver::start(&[200]).await;
    let endpoint = create_endpoint(&app, &vendor, &receiver.url, &[])
        .await
        .unwrap();
    let first = secret_of(&app, &vendor, &endpoint.name).await;
    assert!(first.previous_secret.is_empty());
    create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    let got = receiver.wait_for(1).await;
    assert!(
        !got[0].headers["webhook-signature"]
            .to_str()
            .unwrap()
            .contains(' ')
    );
    assert!(verifies(&first.secret, &got[0]));

    let rotate = |overlap: Option<prost_types::Duration>, request_id: &str| {
        let mut client = app.webhooks(&vendor.admin_key);
        let request = pb::RotateWebhookEndpointSecretRequest {
            name: endpoint.name.clone(),
            overlap,
            request_id: request_id.into(),
        };
        async move { client.rotate_webhook_endpoint_secret(request).await }
    };
    // The default overlap: both secrets sign.
    let second = rotate(None, "").await.unwrap().into_inner();
    assert_ne!(second.secret, first.secret);
    assert_eq!(second.previous_secret, first.secret);
    let expires = second.previous_secret_expire_time.unwrap().seconds;
    let in_a_day = jiff::Timestamp::now().as_second() + 24 * 3600;
    assert!((expires - in_a_day).abs() < 60, "24 h overlap");
    assert_eq!(secret_of(&app, &vendor, &endpoint.name).await, second);
    create(&app, &vendor, person("Grace", "Hopper", "")).await;
    let got = receiver.wait_for(2).await;
    let signatures = got[1].headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    assert!(
        verifies(&first.secret, &got[1]),
        "the old secret still verifies"
    );
    assert!(verifies(&second.secret, &got[1]), "the new secret verifies");

    // No overlap: the old secret stops at once.
    let zero = Some(prost_types::Duration {
        seconds: 0,
        nanos: 0,
    });
    let third = rotate(zero, "rotate-3").await.unwrap().into_inner();
    assert!(third.previous_secret.is_empty() && third.previous_secret_expire_time.is_none());
    // A retried rotation does not rotate again, and does not replay the secret.
    let replay = rotate(zero, "rotate-3").await.unwrap().into_inner();
    assert_eq!(replay, pb::WebhookEndpointSecret::default());
    assert_eq!(
        secret_of(&app, &vendor, &endpoint.name).await.secret,
        third.secret
    );
    create(&app, &vendor, person("Alan", "Turing", "")).await;
    let got = receiver.wait_for(3).await;
    assert!(verifies(&third.secret, &got[2]));
    assert!(!verifies(&second.secret, &got[2]));

    let week = Some(prost_types::Duration {
        seconds: 8 * 24 * 3600,
        nanos: 0,
    });
    let status = assert_error(
        rotate(week, "").await,
        Code::InvalidArgument,
        "INVALID_FIELD_VALUE",
    );
    assert_eq!(violated_fields(&status), ["overlap"]);
    let denied = app
        .webhooks(&vendor.read_key)
        .rotate_webhook_endpoint_secret(pb::RotateWebhookEndpointSecretRequest {
            name: endpoint.name.clone(),
            ..Default::default()
        })
        .await;
    assert_error(denied, Code::PermissionDenied, "INSUFFICIENT_SCOPE");
}

async fn test_events_updates_and_redelivery(backend: Backend) {
    let app = spawn_app_with(backend, test_webhooks).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let status = Arc::new(AtomicU16::new(200));
    let answer = status.clone();
    let receiver = Receiver::scripted(move |_| reply(answer.load(Ordering::SeqCst))).await;
    let endpoint = create_endpoint(&app, &vendor, &receiver.url, &["customer.created"])
        .await
        .unwrap();
    let secret = secret_of(&app, &vendor, &endpoint.name).await.secret;
    let mut admin = app.webhooks(&vendor.admin_key);

    // A test event, sent now; the answer is the attempt.
    let attempt = admin
        .send_test_webhook_event(pb::SendTestWebhookEventRequest {
            name: endpoint.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        attempt.outcome,
        pb::webhook_attempt::Outcome::Succeeded as i32
    );
    assert_eq!(
        (attempt.http_status, attempt.event_type.as_str()),
        (200, "webhook.test")
    );
    let got = receiver.wait_for(1).await;
    assert!(verifies(&secret, &got[0]));
    let test = got[0].json();
    assert_eq!(test["type"], "webhook.test");
    assert_eq!(test["webhookEndpoint"]["name"], endpoint.name);
    assert_eq!(test["id"], attempt.event_id);
    assert_eq!(
        attempts(&app, &vendor, &endpoint.name, "").await,
        std::slice::from_ref(&attempt)
    );
    // A test event that succeeded can be sent again: its delivery keeps the body,
    // which is in no feed.
    let again = admin
        .redeliver_webhook_event(pb::RedeliverWebhookEventRequest {
            name: endpoint.name.clone(),
            event_id: attempt.event_id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state, pb::webhook_delivery::State::Pending as i32);
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].id(), attempt.event_id);
    assert_eq!(got[1].json()["type"], "webhook.test");

    // Updates: checked field by field, etag-guarded.
    let update = |e: pb::WebhookEndpoint, paths: &[&str]| {
        let mut client = app.webhooks(&vendor.admin_key);
        let request = pb::UpdateWebhookEndpointRequest {
            webhook_endpoint: Some(e),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            request_id: String::new(),
        };
        async move {
            client
                .update_webhook_endpoint(request)
                .await
                .map(|r| r.into_inner())
        }
    };
    let bad = update(
        pb::WebhookEndpoint {
            name: endpoint.name.clone(),
            rate_limit_per_second: 20_000,
            url: "ftp://example.com".into(),
            ..Default::default()
        },
        &["rate_limit_per_second", "url"],
    )
    .await;
    let status_ = assert_error(bad, Code::InvalidArgument, "INVALID_FIELD_VALUE");
    assert_eq!(
        violated_fields(&status_),
        [
            "webhook_endpoint.rate_limit_per_second",
            "webhook_endpoint.url"
        ]
    );
    let updated = update(
        pb::WebhookEndpoint {
            name: endpoint.name.clone(),
            description: "ERP v2".into(),
            event_types: vec!["customer.*".into()],
            etag: endpoint.etag.clone(),
            ..Default::default()
        },
        &[],
    )
    .await
    .unwrap();
    assert_eq!(updated.description, "ERP v2");
    assert_eq!(updated.event_types, ["customer.*"]);
    assert_ne!(updated.etag, endpoint.etag);
    // Stored, not only echoed: Get and List read the new filter back. (Whether it
    // governs deliveries is checked at the end, with an event only it lets through.)
    let read = get_endpoint(&app, &vendor, &endpoint.name).await;
    assert_eq!(
        (
            read.description.as_str(),
            read.event_types.as_slice(),
            read.etag.as_str()
        ),
        (
            "ERP v2",
            &["customer.*".to_owned()][..],
            updated.etag.as_str()
        )
    );
    let listed = app
        .webhooks(&vendor.read_key)
        .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {
            parent: vendor.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .webhook_endpoints;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].event_types, ["customer.*"]);
    let stale = update(
        pb::WebhookEndpoint {
            name: endpoint.name.clone(),
            description: "ERP v3".into(),
            etag: endpoint.etag.clone(),
            ..Default::default()
        },
        &["description"],
    )
    .await;
    assert_error(stale, Code::Aborted, "STALE_ETAG");

    // A refusal (400) fails the delivery at once; redelivering the failed ones sends it.
    status.store(400, Ordering::SeqCst);
    let ada = create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    let got = receiver.wait_for(3).await;
    let event_id = got[2].id();
    let failed = eventually("the failure logged", async || {
        let log = attempts(&app, &vendor, &endpoint.name, &event_id).await;
        (log.len() == 1).then_some(log)
    })
    .await;
    assert_eq!(
        failed[0].outcome,
        pb::webhook_attempt::Outcome::Failed as i32
    );
    assert_eq!(failed[0].http_status, 400);
    // The outbox backlog (a metrics series) counts it among the dead.
    let counts = app
        .store
        .operational_counts(jiff::Timestamp::now())
        .await
        .unwrap();
    assert!(
        counts.backlog.contains(&("webhook", "dead".to_owned(), 1)),
        "{:?}",
        counts.backlog
    );
    status.store(200, Ordering::SeqCst);
    let since = prost_types::Timestamp {
        seconds: jiff::Timestamp::now().as_second() - 60,
        nanos: 0,
    };
    let redone = admin
        .redeliver_failed_webhook_deliveries(pb::RedeliverFailedWebhookDeliveriesRequest {
            name: endpoint.name.clone(),
            since: Some(since),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redone.redelivered, 1);
    let got = receiver.wait_for(4).await;
    assert_eq!(got[3].id(), event_id);

    // One event again, on request.
    let delivery = admin
        .redeliver_webhook_event(pb::RedeliverWebhookEventRequest {
            name: endpoint.name.clone(),
            event_id: event_id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(delivery.state, pb::webhook_delivery::State::Pending as i32);
    assert_eq!(
        (delivery.event_type.as_str(), delivery.endpoint.as_str()),
        ("customer.created", endpoint.name.as_str())
    );
    let got = receiver.wait_for(5).await;
    assert_eq!(got[4].id(), event_id);
    let unknown = admin
        .redeliver_webhook_event(pb::RedeliverWebhookEventRequest {
            name: endpoint.name.clone(),
            event_id: uuid::Uuid::now_v7().to_string(),
            request_id: String::new(),
        })
        .await;
    assert_error(unknown, Code::NotFound, "NOT_FOUND");
    let no_since = admin
        .redeliver_failed_webhook_deliveries(pb::RedeliverFailedWebhookDeliveriesRequest {
            name: endpoint.name.clone(),
            ..Default::default()
        })
        .await;
    let status_ = assert_error(no_since, Code::InvalidArgument, "FIELD_REQUIRED");
    assert_eq!(violated_fields(&status_), ["since"]);

    // Disabled by an admin: nothing is sent or queued until it is enabled again.
    let off = update(
        pb::WebhookEndpoint {
            name: endpoint.name.clone(),
            enabled: Some(false),
            ..Default::default()
        },
        &["enabled"],
    )
    .await
    .unwrap();
    assert_eq!(off.enabled, Some(false));
    assert_eq!(off.disabled_reason, "disabled by an administrator");
    let refused = admin
        .send_test_webhook_event(pb::SendTestWebhookEventRequest {
            name: endpoint.name.clone(),
        })
        .await;
    assert_error(refused, Code::FailedPrecondition, "ENDPOINT_DISABLED");
    create(&app, &vendor, person("Grace", "Hopper", "")).await;
    app.settle().await;
    assert_eq!(receiver.got().len(), 5);
    let on = update(
        pb::WebhookEndpoint {
            name: endpoint.name.clone(),
            enabled: Some(true),
            ..Default::default()
        },
        &["enabled"],
    )
    .await
    .unwrap();
    assert_eq!((on.enabled, on.disabled_reason.as_str()), (Some(true), ""));

    // The updated filter governs: `customer.updated` passes `customer.*`, which the
    // filter the endpoint was created with (`customer.created`) would have stopped.
    // Grace's event, from while it was disabled, is not sent now either.
    let mut renamed = ada.clone();
    renamed.etag.clear();
    renamed.given_name = "Augusta".into();
    crate::sharing::update(&app, &vendor.admin_key, renamed, &["given_name"])
        .await
        .expect("rename");
    let got = receiver.wait_for(6).await;
    let body = got[5].json();
    assert_eq!(
        (body["type"].as_str(), body["resource"].as_str()),
        (Some("customer.updated"), Some(ada.name.as_str()))
    );
    app.settle().await;
    assert_eq!(receiver.got().len(), 6);
}

async fn endpoints_failing_for_the_period_are_disabled_and_announced(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        test_webhooks(c);
        c.webhooks.retry_schedule_secs = vec![0, 1, 1, 1, 1, 1];
        c.webhooks.disable_after_failing_secs = 1;
    })
    .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let failing = Receiver::start(&[500]).await;
    let watcher = Receiver::start(&[200]).await;
    let broken = create_endpoint(&app, &vendor, &failing.url, &["customer.*"])
        .await
        .unwrap();
    create_endpoint(&app, &vendor, &watcher.url, &["webhook_endpoint.*"])
        .await
        .unwrap();
    create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    let got = watcher.wait_for(1).await;
    let announced = got[0].json();
    assert_eq!(announced["type"], "webhook_endpoint.disabled");
    assert_eq!(announced["webhookEndpoint"]["name"], broken.name);
    assert_eq!(announced["webhookEndpoint"]["enabled"], false);
    let e = get_endpoint(&app, &vendor, &broken.name).await;
    assert_eq!(e.enabled, Some(false));
    assert!(e.disabled_reason.contains("failed since"), "{e:?}");
    assert!(e.consecutive_failures >= 2 && e.failing_since_time.is_some());
    let tries = failing.got().len();
    assert!(tries >= 2, "{tries}");
    // In the feed too, for streams and batch readers.
    let feed = app
        .events(&vendor.read_key)
        .list_events(pb::ListEventsRequest {
            event_types: vec!["webhook_endpoint.disabled".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(feed.events.len(), 1);
    // Nothing more goes to it: nothing of it is left to send, now or later.
    app.settle().await;
    assert_eq!(failing.got().len(), tries);
    let e = get_endpoint(&app, &vendor, &broken.name).await;
    assert_eq!(e.pending_deliveries, 0, "{e:?}");
}

async fn rate_limits_space_the_requests(backend: Backend) {
    let app = spawn_app_with(backend, test_webhooks).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let receiver = Receiver::start(&[200]).await;
    let endpoint = app
        .webhooks(&vendor.admin_key)
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            parent: vendor.name.clone(),
            webhook_endpoint: Some(pb::WebhookEndpoint {
                url: receiver.url.clone(),
                rate_limit_per_second: 5,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(endpoint.rate_limit_per_second, 5);
    for i in 0..8 {
        create(&app, &vendor, person(&format!("P{i}"), "Hopper", "")).await;
    }
    let got = receiver.wait_for(8).await;
    // Seven intervals of 200 ms at least (the first request may itself be late).
    let span = got[7].at - got[0].at;
    assert!(
        span >= Duration::from_millis(1200),
        "8 requests in {span:?}"
    );
    let ids: std::collections::HashSet<String> = got.iter().map(Received::id).collect();
    assert_eq!(ids.len(), 8, "each event once");
}

async fn two_replicas_deliver_a_burst_once(backend: Backend) {
    let app = spawn_app_with(backend, test_webhooks).await;
    let replica = app.replica().await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let receiver = Receiver::start(&[200]).await;
    create_endpoint(&app, &vendor, &receiver.url, &[])
        .await
        .unwrap();
    let writes = (0..100).map(|i| {
        let hub = if i % 2 == 0 { &app } else { &replica };
        create(hub, &vendor, person(&format!("P{i}"), "Hopper", ""))
    });
    futures_util::future::join_all(writes).await;
    receiver.wait_for(100).await;
    // A second send would be due at once, on either hub.
    app.settle().await;
    replica.settle().await;
    let got = receiver.got();
    let ids: std::collections::HashSet<String> = got.iter().map(Received::id).collect();
    assert_eq!(ids.len(), 100, "none missed");
    assert_eq!(got.len(), 100, "none sent twice");
}

/// `liaison serve` as a separate process, so it can be killed outright.
async fn serve(url: &str) -> (tokio::process::Child, tonic::transport::Channel) {
    serve_with(url, &[("LIAISON_WEBHOOKS_TIMEOUT_SECS", "1")]).await
}

async fn serve_with(
    url: &str,
    extra: &[(&str, &str)],
) -> (tokio::process::Child, tonic::transport::Channel) {
    let mut env = vec![
        ("LIAISON_WEBHOOKS_ALLOW_HTTP", "true"),
        ("LIAISON_WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "true"),
        ("LIAISON_WEBHOOKS_RETRY_SCHEDULE_SECS", "0,1,1,1"),
    ];
    env.extend_from_slice(extra);
    let (server, addr, mut lines) = serve_process(url, &env).await;
    // Keep draining the log so the hub never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (server, channel)
}

/// Through a process hub's `channel`: a vendor, its admin key and an endpoint at `url`.
async fn vendor_with_endpoint(
    channel: &tonic::transport::Channel,
    operator: String,
    url: &str,
) -> (String, pb::WebhookEndpoint) {
    use liaison::pb::admin_service_client::AdminServiceClient;
    use liaison::pb::webhook_service_client::WebhookServiceClient;

    let mut admin = AdminServiceClient::with_interceptor(channel.clone(), Bearer(operator));
    let org = admin
        .create_organization(new_organization("vendor", pb::OrganizationKind::Vendor))
        .await
        .unwrap()
        .into_inner();
    let key = admin
        .create_api_key(new_api_key(&org.name, &[pb::ApiKeyScope::Admin]))
        .await
        .unwrap()
        .into_inner()
        .key;
    let endpoint = WebhookServiceClient::with_interceptor(channel.clone(), Bearer(key.clone()))
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            parent: org.name,
            webhook_endpoint: Some(pb::WebhookEndpoint {
                url: url.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    (key, endpoint)
}

async fn a_killed_hub_delivers_everything_after_restart(backend: Backend) {
    use liaison::pb::customer_service_client::CustomerServiceClient;
    use liaison::pb::webhook_service_client::WebhookServiceClient;

    let (_db, url) = TestDatabase::create(&backend).await;
    let operator = bootstrap_operator(&url);
    // Slow answers, so that deliveries are in flight when the hub dies.
    let receiver = Receiver::scripted(|_| Reply {
        delay: Duration::from_millis(300),
        ..reply(200)
    })
    .await;

    let (mut hub, channel) = serve(&url).await;
    let (key, endpoint) = vendor_with_endpoint(&channel, operator, &receiver.url).await;
    let mut webhooks = WebhookServiceClient::with_interceptor(channel.clone(), Bearer(key.clone()));
    let secret = webhooks
        .get_webhook_endpoint_secret(pb::GetWebhookEndpointSecretRequest {
            name: endpoint.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let mut customers = CustomerServiceClient::with_interceptor(channel, Bearer(key.clone()));
    for i in 0..30 {
        customers
            .create_customer(pb::CreateCustomerRequest {
                customer: Some(person(&format!("P{i}"), "Hopper", "")),
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
    // Some delivered, the rest queued or in flight: SIGKILL.
    receiver.wait_for(3).await;
    let pid = hub.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    hub.wait().await.unwrap();
    let before = receiver.got().len();
    assert!(
        before < 30,
        "the kill came before the end ({before} delivered)"
    );

    // Restarted: queued deliveries go at once, the killed ones once their lease ends.
    let (_hub, _channel) = serve(&url).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = receiver.got();
        let ids: std::collections::HashSet<String> = got.iter().map(Received::id).collect();
        if ids.len() == 30 {
            assert!(got.iter().all(|r| verifies(&secret, r)));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 30 events delivered",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `liaison webhook verify` against the Standard Webhooks reference vector.
#[test]
fn the_cli_verifies_a_received_webhook() {
    let verify = |body: &str, extra: &[&str]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
            .args(["webhook", "verify", "--id", "msg_p5jXN8AQM9LWM0D4loKWxJek"])
            .args(["--timestamp", "1614265330"])
            .args([
                "--signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ])
            .args(extra)
            .env(
                "LIAISON_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let body = r#"{"test": 2432232314}"#;
    let (ok, text) = verify(body, &["--ignore-timestamp"]);
    assert!(ok && text.contains("valid"), "{text}");
    // The reference timestamp is years old: refused unless told otherwise.
    let (ok, text) = verify(body, &[]);
    assert!(!ok && text.contains("5 minutes"), "{text}");
    let (ok, text) = verify(r#"{"test": 2432232315}"#, &["--ignore-timestamp"]);
    assert!(!ok && text.contains("no v1 signature"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, body).unwrap();
    let (ok, text) = verify(
        "",
        &["--ignore-timestamp", "--body", file.to_str().unwrap()],
    );
    assert!(ok, "{text}");
}

async fn sigterm_cuts_a_slow_attempt_short_and_the_restarted_hub_completes_it_once(
    backend: Backend,
) {
    use liaison::pb::customer_service_client::CustomerServiceClient;
    use liaison::pb::webhook_service_client::WebhookServiceClient;

    let (_db, url) = TestDatabase::create(&backend).await;
    let operator = bootstrap_operator(&url);
    // The first request hangs far past the grace; later ones are answered at once.
    let receiver = Receiver::scripted(|got| Reply {
        delay: if got.len() == 1 {
            Duration::from_secs(120)
        } else {
            Duration::ZERO
        },
        ..reply(200)
    })
    .await;
    // A lease of a minute and more: only a released lease lets the restarted hub send
    // again within the test's patience.
    let settings = [
        ("LIAISON_WEBHOOKS_TIMEOUT_SECS", "30"),
        ("LIAISON_SERVER_SHUTDOWN_GRACE_SECS", "1"),
    ];
    let (mut hub, channel) = serve_with(&url, &settings).await;
    let (key, endpoint) = vendor_with_endpoint(&channel, operator, &receiver.url).await;
    CustomerServiceClient::with_interceptor(channel, Bearer(key.clone()))
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(person("Slow", "Receiver", "")),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let first = receiver.wait_for(1).await[0].clone();

    // SIGTERM while the attempt hangs: the hub waits out the grace, cuts the attempt
    // short and exits 0.
    sigterm(&hub);
    let status = tokio::time::timeout(Duration::from_secs(20), hub.wait())
        .await
        .expect("the hub exits after its grace")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    // Restarted, the hub sends the delivery again at once (its lease was released),
    // with the same id, and records exactly one attempt: the cut-short one left none.
    let (_hub, channel) = serve_with(&url, &settings).await;
    let got = receiver.wait_for_within(2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].id(), first.id());
    let mut webhooks = WebhookServiceClient::with_interceptor(channel, Bearer(key));
    let recorded = eventually("the completed attempt is recorded", async || {
        let attempts = webhooks
            .list_webhook_attempts(pb::ListWebhookAttemptsRequest {
                parent: endpoint.name.clone(),
                event_id: first.id(),
                page_size: 100,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .webhook_attempts;
        (!attempts.is_empty()).then_some(attempts)
    })
    .await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].http_status, 200);
}

async fn a_worker_that_lost_its_lease_cannot_overwrite_the_result(backend: Backend) {
    use liaison::store::AttemptRecord;

    let app = spawn_app_with(backend, |c| {
        test_webhooks(c);
        c.webhooks.timeout_secs = 10;
    })
    .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    // The hub's worker gets its answer (a failure) only after three seconds...
    let receiver = Receiver::scripted(|_| Reply {
        delay: Duration::from_secs(3),
        ..reply(500)
    })
    .await;
    let endpoint = create_endpoint(&app, &vendor, &receiver.url, &[])
        .await
        .unwrap();
    create(&app, &vendor, person("Late", "Worker", "")).await;
    let first = receiver.wait_for(1).await[0].clone();
    let late_before = late_results("webhooks");

    // ...by which time its lease has (as far as another worker can tell) run out, and
    // that other worker took the delivery over and succeeded.
    let (later, taken) = claim_five_minutes_later(&app).await;
    assert_eq!(taken.len(), 1, "the expired lease is claimable");
    let mut tx = app.store.begin().await.unwrap();
    tx.record_attempt(
        &taken[0],
        &AttemptRecord {
            id: uuid::Uuid::now_v7().to_string(),
            time: later,
            status: 200,
            latency_micros: 1,
            response_excerpt: "ok".into(),
            error: String::new(),
            retry_at: None,
            succeeded: true,
            disable: None,
        },
        jiff::SignedDuration::from_hours(1),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // The first worker's failure arrives late and is dropped, counted.
    eventually("the late result is counted", async || {
        (late_results("webhooks") > late_before).then_some(())
    })
    .await;
    let recorded = attempts(&app, &vendor, &endpoint.name, &first.id()).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].http_status, 200, "the taker's success stands");
}

/// The queue keeps only work not done, and each endpoint's fresh deliveries are read
/// from a cursor past the finished ones: a delivery held (leased) while later ones
/// succeed must not fall behind that cursor when it is given back, and one that
/// succeeded (so left the queue) is sent again on request.
async fn a_released_delivery_behind_later_ones_is_still_sent_and_a_sent_one_can_be_sent_again(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |c| {
        test_webhooks(c);
        c.webhooks.timeout_secs = 10;
    })
    .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    // The first request is answered (a failure) only after three seconds; the rest at
    // once.
    let receiver = Receiver::scripted(|got| match got.len() {
        1 => Reply {
            delay: Duration::from_secs(3),
            ..reply(500)
        },
        _ => reply(204),
    })
    .await;
    let endpoint = create_endpoint(&app, &vendor, &receiver.url, &[])
        .await
        .unwrap();
    create(&app, &vendor, person("First", "Held", "")).await;
    let first = receiver.wait_for(1).await[0].clone();
    // A second worker, whose clock says the first one's lease has run out, takes the
    // delivery over and gives it back unattempted (as a stopping hub does).
    let (_, taken) = claim_five_minutes_later(&app).await;
    assert_eq!(taken.len(), 1, "the expired lease is claimable");
    assert_eq!(taken[0].event_id, first.id());
    // Meanwhile later deliveries are claimed, sent and leave the queue, moving the
    // endpoint's cursor past what is done.
    for name in ["Second", "Third", "Fourth"] {
        create(&app, &vendor, person(name, "Later", "")).await;
    }
    let got = receiver.wait_for(4).await;
    assert!(got[1..].iter().all(|r| r.id() != first.id()));
    let mut tx = app.store.begin().await.unwrap();
    tx.release_delivery(&taken[0]).await.unwrap();
    tx.commit().await.unwrap();
    // Given back behind them, it is still sent, and succeeds.
    let again = eventually("the released delivery to be sent again", async || {
        let got = receiver.got();
        (got.iter().filter(|r| r.id() == first.id()).count() >= 2).then_some(got)
    })
    .await;
    assert_eq!(again.iter().filter(|r| r.id() == first.id()).count(), 2);
    eventually("the queue to be empty", async || {
        let pending = app
            .store
            .pending_deliveries(&[endpoint.name.rsplit('/').next().unwrap()])
            .await
            .unwrap();
        pending.is_empty().then_some(())
    })
    .await;
    // Its attempts are the record of what happened to it.
    let recorded = attempts(&app, &vendor, &endpoint.name, &first.id()).await;
    assert!(
        recorded.iter().any(|a| a.http_status == 204),
        "{recorded:?}"
    );

    // A delivery that succeeded is no longer queued, and is queued again on request.
    let second = got[1].id();
    let delivery = app
        .webhooks(&vendor.admin_key)
        .redeliver_webhook_event(pb::RedeliverWebhookEventRequest {
            name: endpoint.name.clone(),
            event_id: second.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(delivery.state, pb::webhook_delivery::State::Pending as i32);
    eventually("the delivered event to be sent again", async || {
        (receiver.got().iter().filter(|r| r.id() == second).count() == 2).then_some(())
    })
    .await;
}

/// Claims what is due as another worker whose clock is five minutes ahead (to which
/// the hub's leases have run out) would; returns that worker's time and its claim.
async fn claim_five_minutes_later(
    app: &TestApp,
) -> (jiff::Timestamp, Vec<liaison::store::ClaimedDelivery>) {
    let later = liaison::domain::now() + jiff::SignedDuration::from_mins(5);
    let taken = app
        .store
        .claim_deliveries(
            later,
            later + jiff::SignedDuration::from_mins(1),
            liaison::store::ClaimLimits {
                total: 10,
                per_endpoint: 10,
                busy: &Default::default(),
            },
        )
        .await
        .unwrap();
    (later, taken)
}

/// The hub's count of results dropped for a lost lease on `queue`.
fn late_results(queue: &'static str) -> u64 {
    liaison::metrics::metrics()
        .late_results
        .get_or_create(&liaison::metrics::QueueLabels { queue })
        .get()
}

/// A grantee's endpoint gets the customer as the grantee's feed has it: the fields its
/// grant shows, nothing of the others, not even in `changedFields`.
async fn a_grantees_endpoint_gets_only_the_fields_its_grant_shows(backend: Backend) {
    let app = spawn_app_with(backend, test_webhooks).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let dist = app
        .create_org("dist", pb::OrganizationKind::Distributor)
        .await;
    app.partner(&vendor, &dist).await;
    let owner_side = Receiver::start(&[200]).await;
    let grantee_side = Receiver::start(&[200]).await;
    create_endpoint(&app, &vendor, &owner_side.url, &["customer.*"])
        .await
        .unwrap();
    let dist_endpoint = create_endpoint(&app, &dist, &grantee_side.url, &["customer.*"])
        .await
        .unwrap();
    let dist_secret = secret_of(&app, &dist, &dist_endpoint.name).await.secret;

    let mut input = person("Ada", "Lovelace", "ada@example.com");
    input.phones = vec![pb::PhoneContact {
        number: "+14155550100".into(),
        label: "mobile".into(),
        primary: true,
    }];
    let c = create(&app, &vendor, input).await;
    crate::sharing::grant(
        &app,
        &vendor,
        &c.name,
        &dist,
        pb::AccessLevel::Read,
        &["given_name"],
    )
    .await
    .expect("grant");
    // One change to a shown field and two hidden ones.
    let mut changed = c.clone();
    changed.etag.clear();
    changed.given_name = "Augusta".into();
    changed.emails[0].address = "augusta@example.com".into();
    changed.phones[0].number = "+14155550199".into();
    crate::sharing::update(
        &app,
        &vendor.admin_key,
        changed,
        &["given_name", "emails", "phones"],
    )
    .await
    .expect("update");

    // The owner's endpoint gets the whole change (so the hidden fields were in it)...
    let owner_got = owner_side.wait_for(2).await;
    let full = owner_got
        .iter()
        .map(Received::json)
        .find(|b| b["type"] == "customer.updated")
        .expect("the owner's customer.updated");
    assert_eq!(
        full["customer"]["emails"][0]["address"],
        "augusta@example.com"
    );
    // ...the grantee's only what its grant shows.
    let got = grantee_side.wait_for(1).await;
    assert!(
        verifies(&dist_secret, &got[0]),
        "signed for dist's endpoint"
    );
    let body = got[0].json();
    assert_eq!(body["type"], "customer.updated");
    assert_eq!(body["resource"], c.name);
    assert_eq!(body["customer"]["givenName"], "Augusta");
    assert_eq!(
        body["customer"]["visibleFields"],
        serde_json::json!(["given_name"])
    );
    assert_eq!(body["changedFields"], serde_json::json!(["given_name"]));
    for hidden in ["emails", "phones", "familyName", "displayName", "tags"] {
        assert!(body["customer"].get(hidden).is_none(), "{hidden} in {body}");
    }
    let text = String::from_utf8_lossy(&got[0].body);
    for secret in ["example.com", "4155550", "Lovelace"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    // Nothing else: not the creation, which came before the grant.
    app.settle().await;
    assert_eq!(grantee_side.got().len(), 1);
}

/// `webhooks.max_payload_bytes`: a larger event is not sent, and its attempt says why;
/// a smaller one to the same endpoint is.
async fn events_over_the_payload_limit_are_not_sent_and_the_attempt_says_why(backend: Backend) {
    const LIMIT: u64 = 4096;
    let app = spawn_app_with(backend, |c| {
        test_webhooks(c);
        c.webhooks.max_payload_bytes = LIMIT;
    })
    .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let receiver = Receiver::start(&[200]).await;
    let endpoint = create_endpoint(&app, &vendor, &receiver.url, &[])
        .await
        .unwrap();
    // About 9 KB as JSON, then well under 1 KB.
    let mut big = person("Big", "Payload", "");
    big.attributes = (0..10)
        .map(|i| (format!("note{i}"), "x".repeat(900)))
        .collect();
    let big = create(&app, &vendor, big).await;
    let small = create(&app, &vendor, person("Small", "Payload", "")).await;

    let got = receiver.wait_for(1).await;
    let log = eventually("both attempts recorded", async || {
        let log = attempts(&app, &vendor, &endpoint.name, "").await;
        (log.len() == 2).then_some(log)
    })
    .await;
    app.settle().await;
    assert_eq!(receiver.got().len(), 1, "only the small event is sent");
    assert_eq!(got[0].json()["resource"], small.name);
    assert!(got[0].body.len() as u64 <= LIMIT);

    let big_event = app
        .events(&vendor.read_key)
        .list_events(pb::ListEventsRequest {
            event_types: vec!["customer.created".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .find(|e| e.resource == big.name)
        .expect("the big event is in the feed");
    let refused = log
        .iter()
        .find(|a| a.event_id == big_event.id)
        .expect("an attempt at the big event");
    assert_eq!(
        (refused.outcome, refused.http_status),
        (pb::webhook_attempt::Outcome::Failed as i32, 0),
        "refused for good, not retried: {refused:?}"
    );
    let size: u64 = refused
        .error
        .strip_prefix("the event is ")
        .and_then(|rest| rest.strip_suffix(" bytes as JSON, more than webhooks.max_payload_bytes"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the error says why: {:?}", refused.error));
    assert!(size > LIMIT, "{size}");
}

/// At most 50 endpoints per organization (README, Webhooks); deleting one makes room,
/// and another organization's count is its own.
async fn an_organization_has_at_most_50_endpoints(backend: Backend) {
    let app = spawn_app(backend).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let other = app
        .create_org("other", pb::OrganizationKind::Retailer)
        .await;
    // Names, never resolved: no event matches the filter.
    let url = |i: usize| format!("https://hooks{i}.example.com/");
    let mut made = vec![];
    for i in 0..50 {
        made.push(
            create_endpoint(&app, &vendor, &url(i), &["customer.merged"])
                .await
                .unwrap_or_else(|e| panic!("endpoint {i}: {e:?}")),
        );
    }
    let status = assert_error(
        create_endpoint(&app, &vendor, &url(50), &["customer.merged"]).await,
        Code::FailedPrecondition,
        "TOO_MANY_ENDPOINTS",
    );
    assert!(status.message().contains("50"), "{status:?}");
    create_endpoint(&app, &other, &url(0), &["customer.merged"])
        .await
        .expect("another organization has room of its own");
    delete_endpoint(&app, &vendor, &made[0].name)
        .await
        .expect("delete");
    create_endpoint(&app, &vendor, &url(50), &["customer.merged"])
        .await
        .expect("room again after a delete");
    // One place free and sixteen creates racing for it, each in a task of its own:
    // exactly one gets it. Rounds, since a race is not lost every time.
    for (round, freed) in (1..=4).zip(&made[1..]) {
        delete_endpoint(&app, &vendor, &freed.name)
            .await
            .expect("delete");
        let racing = (0..16).map(|i| {
            let channel = app.channel.clone();
            let (key, parent) = (vendor.admin_key.clone(), vendor.name.clone());
            async move {
                let mut client = WebhookServiceClient::with_interceptor(channel, Bearer(key));
                let endpoint = pb::WebhookEndpoint {
                    url: url(100 * round + i),
                    event_types: vec!["customer.merged".into()],
                    ..Default::default()
                };
                client
                    .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                        parent,
                        webhook_endpoint: Some(endpoint),
                        ..Default::default()
                    })
                    .await
            }
        });
        let results = futures_util::future::join_all(racing.map(tokio::spawn)).await;
        let results: Vec<_> = results.into_iter().map(|r| r.unwrap()).collect();
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        for lost in results.into_iter().filter(|r| r.is_err()) {
            assert_error(lost, Code::FailedPrecondition, "TOO_MANY_ENDPOINTS");
        }
    }
    let listed = app
        .webhooks(&vendor.read_key)
        .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {
            parent: vendor.name.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.webhook_endpoints.len(), 50);
}

async fn delete_endpoint(
    app: &TestApp,
    org: &Org,
    name: &str,
) -> Result<pb::DeleteWebhookEndpointResponse, tonic::Status> {
    app.webhooks(&org.admin_key)
        .delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest {
            name: name.into(),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

/// A deleted endpoint is gone and gets nothing more; another organization cannot
/// delete it, and is told exactly what it would be told of one that never existed.
async fn a_deleted_endpoint_is_gone_and_only_its_organization_may_delete_it(backend: Backend) {
    let app = spawn_app_with(backend, test_webhooks).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let other = app
        .create_org("other", pb::OrganizationKind::Retailer)
        .await;
    let doomed = Receiver::start(&[200]).await;
    let kept = Receiver::start(&[200]).await;
    // Filtered, so neither hears of the other's creation or deletion.
    let endpoint = create_endpoint(&app, &vendor, &doomed.url, &["customer.*"])
        .await
        .unwrap();
    create_endpoint(&app, &vendor, &kept.url, &["customer.*"])
        .await
        .unwrap();
    create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    doomed.wait_for(1).await;

    // The wall: NOT_FOUND, word for word as for a name that never existed.
    let theirs = assert_error(
        delete_endpoint(&app, &other, &endpoint.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    let never = format!("{}/webhookEndpoints/{}", vendor.name, uuid::Uuid::now_v7());
    let none = assert_error(
        delete_endpoint(&app, &other, &never).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_eq!(
        theirs.message().replace(&endpoint.name, "NAME"),
        none.message().replace(&never, "NAME")
    );
    // A read key may not delete either.
    let denied = app
        .webhooks(&vendor.read_key)
        .delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest {
            name: endpoint.name.clone(),
            request_id: String::new(),
        })
        .await;
    assert_error(denied, Code::PermissionDenied, "INSUFFICIENT_SCOPE");
    assert_eq!(
        get_endpoint(&app, &vendor, &endpoint.name).await.url,
        doomed.url,
        "still there"
    );

    delete_endpoint(&app, &vendor, &endpoint.name)
        .await
        .expect("the owner deletes it");
    let gone = app
        .webhooks(&vendor.read_key)
        .get_webhook_endpoint(pb::GetWebhookEndpointRequest {
            name: endpoint.name.clone(),
        })
        .await;
    assert_error(gone, Code::NotFound, "NOT_FOUND");
    let listed = app
        .webhooks(&vendor.read_key)
        .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {
            parent: vendor.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .webhook_endpoints;
    assert_eq!(listed.len(), 1);
    assert_ne!(listed[0].name, endpoint.name);
    assert_error(
        delete_endpoint(&app, &vendor, &endpoint.name).await,
        Code::NotFound,
        "NOT_FOUND",
    );

    // A later event reaches the endpoint that is left, and not the deleted one.
    create(&app, &vendor, person("Grace", "Hopper", "")).await;
    kept.wait_for(2).await;
    app.settle().await;
    assert_eq!(doomed.got().len(), 1);
}
