//! Where a webhook may go: addresses the hub does not call are refused at create and
//! update; a name is checked when the hub connects, and one that resolves only to
//! private addresses is not called; a receiver's certificate must chain to a CA the hub
//! trusts (`webhooks.extra_ca_file` for a private PKI); no redirect is followed.

use std::sync::Arc;

use liaison::pb;
use liaison::startup::Application;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::Code;

use crate::customers::{create, person};
use crate::helpers::*;
use crate::tls::{Ca, Leaf, write};
use crate::webhooks::{
    Receiver, Reply, attempts, create_endpoint, eventually, get_endpoint, reply, secret_of,
    test_webhooks, verifies,
};

crate::on_both_backends!(
    unsafe_destinations_are_refused,
    a_name_resolving_only_to_loopback_is_accepted_but_never_called,
    redirects_are_not_followed_and_a_kib_of_the_answer_is_kept,
    a_receiver_is_called_only_if_its_certificate_chains_to_a_trusted_ca,
);

/// Addresses are judged at create and update; another organization's endpoint is
/// not found.
async fn unsafe_destinations_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    for (url, why, reason) in [
        ("http://example.com/hooks", "https", "INVALID_FIELD_VALUE"),
        (
            "https://user:pw@example.com/",
            "credentials",
            "INVALID_FIELD_VALUE",
        ),
        ("https://127.0.0.1/hooks", "loopback", "UNSAFE_DESTINATION"),
        ("https://[::1]/hooks", "loopback", "UNSAFE_DESTINATION"),
        (
            "https://169.254.169.254/latest",
            "link local",
            "UNSAFE_DESTINATION",
        ),
        // IPv4-compatible, NAT64 and 6to4 forms of private addresses.
        (
            "https://[::127.0.0.1]/",
            "IPv4-compatible",
            "UNSAFE_DESTINATION",
        ),
        (
            "https://[64:ff9b::a00:1]/",
            "private use",
            "UNSAFE_DESTINATION",
        ),
        (
            "https://[64:ff9b:1::1]/",
            "translation",
            "UNSAFE_DESTINATION",
        ),
        (
            "https://[2002:c0a8:101::1]/",
            "private use",
            "UNSAFE_DESTINATION",
        ),
        (
            "https://[2001:0:4136:e378::1]/",
            "Teredo",
            "UNSAFE_DESTINATION",
        ),
        ("https://[fec0::1]/", "site local", "UNSAFE_DESTINATION"),
        ("https://198.18.0.1/", "benchmarking", "UNSAFE_DESTINATION"),
        ("https://192.0.0.8/", "IETF", "UNSAFE_DESTINATION"),
        ("https://240.0.0.1/", "reserved", "UNSAFE_DESTINATION"),
        ("https://192.0.2.1/", "documentation", "UNSAFE_DESTINATION"),
    ] {
        let status = assert_error(
            create_endpoint(&app, &vendor, url, &[]).await,
            Code::InvalidArgument,
            reason,
        );
        assert_eq!(violated_fields(&status), ["webhook_endpoint.url"], "{url}");
        assert!(status.message().contains(why), "{url}: {status:?}");
    }
    let status = assert_error(
        create_endpoint(&app, &vendor, "https://example.com/", &["customer.changed"]).await,
        Code::InvalidArgument,
        "INVALID_FIELD_VALUE",
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
    // An update is held to the same rule.
    let moved = app
        .webhooks(&vendor.admin_key)
        .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
            webhook_endpoint: Some(pb::WebhookEndpoint {
                name: mine.name.clone(),
                url: "https://[64:ff9b::c0a8:101]/".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["url".into()],
            }),
            request_id: String::new(),
        })
        .await;
    assert_error(moved, Code::InvalidArgument, "UNSAFE_DESTINATION");
    let result = app
        .webhooks(&other.admin_key)
        .get_webhook_endpoint(pb::GetWebhookEndpointRequest { name: mine.name })
        .await;
    assert_error(result, Code::NotFound, "NOT_FOUND");
}

/// A TLS server side presenting `leaf`.
fn acceptor(leaf: &Leaf) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der.clone())],
            PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
        )
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// README, Webhooks, TLS: "A certificate that does not [chain] is a failed attempt
/// (retried), whose error names the certificate problem."
async fn a_receiver_is_called_only_if_its_certificate_chains_to_a_trusted_ca(backend: Backend) {
    let ours = Ca::new("Receivers CA");
    let theirs = Ca::new("Unknown CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "receivers-ca.pem", &ours.pem());
    // https only (allow_http stays off); 127.0.0.1 is allowed.
    let app = spawn_app_with(backend, |c| {
        c.webhooks.allow_private_networks = true;
        c.webhooks.retry_schedule_secs = vec![0, 1, 1, 1];
        c.webhooks.extra_ca_file = ca_file;
    })
    .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let trusted = Receiver::over_tls(acceptor(&ours.server()), |_| reply(200)).await;
    let untrusted = Receiver::over_tls(acceptor(&theirs.server()), |_| reply(200)).await;
    assert!(trusted.url.starts_with("https://127.0.0.1:"));
    // Filtered, so the good one is not told of the bad one's creation.
    let good = create_endpoint(&app, &vendor, &trusted.url, &["customer.*"])
        .await
        .unwrap();
    let bad = create_endpoint(&app, &vendor, &untrusted.url, &[])
        .await
        .unwrap();
    let secret = secret_of(&app, &vendor, &good.name).await.secret;
    let c = create(&app, &vendor, person("Ada", "Lovelace", "")).await;

    // Chains to the CA in the file: delivered, signed.
    let got = trusted.wait_for(1).await;
    assert!(verifies(&secret, &got[0]));
    assert_eq!(got[0].json()["resource"], c.name);

    // Chains to no trusted CA: the handshake fails, so no request is made; the
    // attempt says what is wrong with the certificate, and is retried.
    let names_the_problem = |a: &pb::WebhookAttempt| {
        a.http_status == 0 && a.error.contains("invalid peer certificate: UnknownIssuer")
    };
    let first = eventually("an attempt at the untrusted receiver", async || {
        attempts(&app, &vendor, &bad.name, "").await.pop()
    })
    .await;
    assert!(untrusted.got().is_empty(), "no request was made");
    assert!(names_the_problem(&first), "{first:?}");
    assert_eq!(
        first.outcome,
        pb::webhook_attempt::Outcome::Retrying as i32,
        "{first:?}"
    );
    let retry = eventually("the retry", async || {
        let log = attempts(&app, &vendor, &bad.name, "").await;
        (log.len() >= 2).then(|| log[0].clone())
    })
    .await;
    assert!(names_the_problem(&retry), "{retry:?}");
    assert_eq!(retry.event_id, first.event_id, "the same event again");
    assert!(untrusted.got().is_empty());
}

/// `webhooks.extra_ca_file` is read when the hub starts: a file it cannot use stops
/// the hub with an error naming the setting and the file, rather than a hub that
/// would fail every delivery to a private-PKI receiver. (Configuration, the same on
/// either database: SQLite only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_extra_ca_file_stops_the_hub_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let not_pem = write(dir.path(), "notes.txt", "trust me\n");
    let broken = write(
        dir.path(),
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n%%% not base64 %%%\n-----END CERTIFICATE-----\n",
    );
    for (file, why) in [
        (missing, "cannot read webhooks.extra_ca_file"),
        (not_pem.clone(), "holds no certificate"),
        (broken.clone(), "is not PEM certificates"),
    ] {
        let (_db, url) = TestDatabase::create(&Backend::Sqlite).await;
        let mut config = test_config(url);
        config.webhooks.extra_ca_file = file.clone();
        // Refused while building, before the hub serves anything.
        let error = match Application::build(config).await {
            Err(error) => format!("{error:#}"),
            Ok(_) => panic!("the hub starts with {file}"),
        };
        assert!(
            error.contains("webhooks.extra_ca_file") && error.contains(&file),
            "{error}"
        );
        assert!(error.contains(why), "{error}");
    }
}

/// The connect-time guard that every other delivery test turns off
/// (`allow_private_networks`): a host name is not judged at create, since what it
/// resolves to may change, but when it resolves only to loopback nothing is sent.
async fn a_name_resolving_only_to_loopback_is_accepted_but_never_called(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.webhooks.allow_http = true;
        c.webhooks.allow_private_networks = false;
        // One attempt, so its failure is final and there is no retry to wait out.
        c.webhooks.retry_schedule_secs = vec![0];
    })
    .await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let receiver = Receiver::start(&[200]).await;
    // The address itself is refused at create; the name for it is not.
    assert_error(
        create_endpoint(&app, &vendor, &receiver.url, &[]).await,
        Code::InvalidArgument,
        "UNSAFE_DESTINATION",
    );
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let endpoint = create_endpoint(&app, &vendor, &by_name, &[])
        .await
        .expect("a host name is checked when it is resolved, not at create");
    assert_eq!(endpoint.url, by_name);

    create(&app, &vendor, person("Ada", "Lovelace", "")).await;
    let log = eventually("the attempt recorded", async || {
        let log = attempts(&app, &vendor, &endpoint.name, "").await;
        (!log.is_empty()).then_some(log)
    })
    .await;
    app.settle().await;
    assert!(receiver.got().is_empty(), "no request reached the receiver");
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0].outcome, log[0].http_status),
        (pb::webhook_attempt::Outcome::Failed as i32, 0)
    );
    assert!(
        log[0]
            .error
            .contains("localhost resolves only to private or special-purpose addresses"),
        "{:?}",
        log[0].error
    );
    let e = get_endpoint(&app, &vendor, &endpoint.name).await;
    assert_eq!((e.consecutive_failures, e.pending_deliveries), (1, 0));
}

/// What the hub does with a receiver's answer: no redirect is followed (3xx is a
/// refusal, not retried), and only the first KiB of the body is kept.
async fn redirects_are_not_followed_and_a_kib_of_the_answer_is_kept(backend: Backend) {
    let app = spawn_app_with(backend, test_webhooks).await;
    let vendor = app.create_org("vendor", pb::OrganizationKind::Vendor).await;
    let elsewhere = Receiver::start(&[200]).await;
    // 10 KiB that differ along their length, so a wrong cut shows.
    let long: String = (0..10 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (target, answer) = (elsewhere.url.clone(), long.clone());
    // Each customer's given name says how its event is answered.
    let receiver = Receiver::scripted(move |got| {
        let name = got.last().unwrap().json()["customer"]["givenName"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match name.parse::<u16>() {
            Ok(status) => Reply {
                location: Some(target.clone()),
                ..reply(status)
            },
            Err(_) => Reply {
                body: answer.clone(),
                ..reply(200)
            },
        }
    })
    .await;
    let endpoint = create_endpoint(&app, &vendor, &receiver.url, &[])
        .await
        .unwrap();
    for name in ["Long", "301", "302", "307"] {
        create(&app, &vendor, person(name, "Answer", "")).await;
    }
    let got = receiver.wait_for(4).await;
    let log = eventually("four attempts recorded", async || {
        let log = attempts(&app, &vendor, &endpoint.name, "").await;
        (log.len() == 4).then_some(log)
    })
    .await;
    app.settle().await;
    assert!(elsewhere.got().is_empty(), "no redirect was followed");
    assert_eq!(receiver.got().len(), 4, "a redirect is not retried");

    let of = |given: &str| {
        let id = got
            .iter()
            .find(|r| r.json()["customer"]["givenName"] == given)
            .unwrap()
            .id();
        log.iter().find(|a| a.event_id == id).unwrap().clone()
    };
    use pb::webhook_attempt::Outcome;
    let kept = of("Long");
    assert_eq!(kept.outcome, Outcome::Succeeded as i32);
    assert_eq!(kept.response_body_excerpt, long[..1024]);
    for status in ["301", "302", "307"] {
        let a = of(status);
        assert_eq!(
            (a.outcome, a.http_status.to_string()),
            (Outcome::Failed as i32, status.to_owned()),
            "{a:?}"
        );
        assert!(
            a.error
                .starts_with(&format!("the receiver answered {status} "))
                && a.error.ends_with("; not retried"),
            "{:?}",
            a.error
        );
    }
}
