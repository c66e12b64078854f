//! Webhooks end to end: a real HTTP receiver on 127.0.0.1 checks each delivery with an
//! independent Standard Webhooks implementation (the `standardwebhooks` crate).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use liaison::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Code;

use crate::customers::{create, person};
use crate::helpers::*;

crate::on_both_backends!(
    deliveries_are_signed_retried_until_accepted_and_filtered,
    gone_disables_the_endpoint,
    unsafe_destinations_are_refused,
);

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    headers: http::HeaderMap,
    body: Vec<u8>,
}

/// A minimal HTTP/1.1 server that answers each request with the next scripted status
/// (the last one repeats) and records what it got.
#[derive(Clone)]
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(vec![]));
        let script = Arc::new(Mutex::new(statuses.to_vec()));
        let log = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (log, script) = (log.clone(), script.clone());
                tokio::spawn(async move {
                    let mut buf = vec![];
                    let mut chunk = [0u8; 8192];
                    let (head_len, content_length) = loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
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
                            return;
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
                    let body = buf[head_len..head_len + content_length].to_vec();
                    log.lock().unwrap().push(Received { headers, body });
                    let status = {
                        let mut s = script.lock().unwrap();
                        if s.len() > 1 { s.remove(0) } else { s[0] }
                    };
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { url, received }
    }

    /// Waits until `n` requests have arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..400 {
            let got = self.received.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "expected {n} requests, got {}",
            self.received.lock().unwrap().len()
        );
    }
}

fn test_webhooks(config: &mut liaison::config::Config) {
    config.webhooks.allow_http = true;
    config.webhooks.allow_private_networks = true;
    config.webhooks.retry_schedule_secs = vec![0, 1, 1, 1];
}

async fn create_endpoint(
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
    assert_eq!(body["sequence"], "1");
    assert_eq!(body["id"], got[1].headers["webhook-id"].to_str().unwrap());
    assert_eq!(body["customer"]["emails"][0]["address"], "ada@example.com");

    // The endpoint's health shows the success.
    let mut healthy = false;
    for _ in 0..100 {
        let e = app
            .webhooks(&vendor.read_key)
            .get_webhook_endpoint(pb::GetWebhookEndpointRequest {
                name: endpoint.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if e.last_success_time.is_some() && e.consecutive_failures == 0 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(healthy, "the success is recorded");

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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = receiver.received.lock().unwrap().clone();
    assert_eq!(got_all.len(), 3, "only the customer events arrive");
    let last: serde_json::Value = serde_json::from_slice(&got[2].body).unwrap();
    assert_eq!(last["type"], "customer.updated");
    assert_eq!(last["sequence"], "3");
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
    let mut disabled = None;
    for _ in 0..100 {
        let e = app
            .webhooks(&vendor.read_key)
            .get_webhook_endpoint(pb::GetWebhookEndpointRequest {
                name: endpoint.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if e.enabled == Some(false) {
            disabled = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = disabled.expect("410 disables the endpoint");
    assert!(e.disabled_reason.contains("410"), "{e:?}");
    // Nothing more is sent to it.
    create(&app, &vendor, person("Grace", "Hopper", "")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received.lock().unwrap().len(), 1);
}

async fn unsafe_destinations_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    for (url, why) in [
        ("http://example.com/hooks", "https"),
        ("https://127.0.0.1/hooks", "private"),
        ("https://[::1]/hooks", "private"),
        ("https://169.254.169.254/latest", "private"),
        ("https://user:pw@example.com/", "credentials"),
    ] {
        let status = assert_error(
            create_endpoint(&app, &vendor, url, &[]).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(violated_fields(&status), ["webhook_endpoint.url"], "{url}");
        assert!(status.message().contains(why), "{url}: {status:?}");
    }
    let status = assert_error(
        create_endpoint(&app, &vendor, "https://example.com/", &["customer.changed"]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        violated_fields(&status),
        ["webhook_endpoint.event_types[0]"]
    );
    // Another organization's endpoint does not exist for the caller.
    let other = app
        .create_org("other", pb::OrganizationKind::Retailer)
        .await;
    let mine = create_endpoint(&app, &vendor, "https://example.com/", &[])
        .await
        .unwrap();
    let result = app
        .webhooks(&other.admin_key)
        .get_webhook_endpoint(pb::GetWebhookEndpointRequest { name: mine.name })
        .await;
    assert_error(result, Code::NotFound, "NOT_FOUND");
}
