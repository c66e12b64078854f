//! What an operator relies on: rate limits, per-organization request and stream
//! limits, the metrics endpoint, request ids, online backups, `liaison config check`,
//! `--version`, and deploy files that only use configuration the binary knows.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use liaison::config::{Config, OrganizationLimits, Overrides};
use liaison::pb;
use sqlx::Connection;
use tonic::Code;
use tonic_types::StatusExt;

use crate::customers::person;
use crate::helpers::*;

crate::on_both_backends!(
    bursts_beyond_the_bucket_are_throttled_with_a_retry_delay,
    organizations_have_their_own_request_size_and_stream_limits,
    the_metrics_endpoint_shows_counters_moving,
);

fn limited(slug: &str, limits: OrganizationLimits) -> BTreeMap<String, OrganizationLimits> {
    BTreeMap::from([(slug.to_owned(), limits)])
}

async fn get_org(app: &TestApp, key: &str, name: &str) -> Result<pb::Organization, tonic::Status> {
    app.admin(key)
        .get_organization(pb::GetOrganizationRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

async fn bursts_beyond_the_bucket_are_throttled_with_a_retry_delay(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        // One token per 100 s for each of acme's keys: the burst is all a test sees.
        c.limits.organizations = limited(
            "acme",
            OrganizationLimits {
                key_requests_per_second: Some(0.01),
                key_burst: Some(3),
                organization_requests_per_second: Some(0.01),
                organization_burst: Some(5),
                ..Default::default()
            },
        );
    })
    .await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app
        .create_org("bigshop", pb::OrganizationKind::Retailer)
        .await;
    for _ in 0..3 {
        get_org(&app, &acme.admin_key, &acme.name).await.unwrap();
    }
    let refused = get_org(&app, &acme.admin_key, &acme.name).await;
    let status = assert_error(refused, Code::ResourceExhausted, "RATE_LIMITED");
    let retry = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo says when to retry");
    assert!(
        retry > Duration::from_secs(50) && retry <= Duration::from_secs(100),
        "{retry:?}"
    );
    assert!(status.message().contains("key"), "{}", status.message());

    // Another key of acme has its own bucket, but the organization's runs dry too.
    get_org(&app, &acme.read_key, &acme.name).await.unwrap();
    get_org(&app, &acme.read_key, &acme.name).await.unwrap();
    let refused = get_org(&app, &acme.read_key, &acme.name).await;
    let status = assert_error(refused, Code::ResourceExhausted, "RATE_LIMITED");
    assert!(
        status.message().contains("organization"),
        "{}",
        status.message()
    );

    // Other organizations are unaffected.
    for _ in 0..10 {
        get_org(&app, &shop.admin_key, &shop.name).await.unwrap();
    }
}

async fn organizations_have_their_own_request_size_and_stream_limits(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.limits.organizations = limited(
            "acme",
            OrganizationLimits {
                max_request_bytes: Some(2048),
                max_streams: Some(1),
                ..Default::default()
            },
        );
    })
    .await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app
        .create_org("bigshop", pb::OrganizationKind::Retailer)
        .await;
    let mut big = person("Jane", "Doe", "jane@example.com");
    big.attributes.insert("notes".into(), "x".repeat(1000));
    big.attributes.insert("more".into(), "y".repeat(1000));
    big.attributes.insert("again".into(), "z".repeat(1000));
    let create = |key: &str| {
        let mut client = app.customers(key);
        let customer = big.clone();
        async move {
            client
                .create_customer(pb::CreateCustomerRequest {
                    customer: Some(customer),
                    request_id: String::new(),
                })
                .await
        }
    };
    let refused = create(&acme.admin_key).await;
    assert_error(refused, Code::ResourceExhausted, "REQUEST_TOO_LARGE");
    create(&shop.admin_key)
        .await
        .expect("bigshop has the default limit");
    // A small request from acme passes, and nothing was half-written.
    let small = app
        .customers(&acme.admin_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(person("Jo", "Roe", "jo@example.com")),
            request_id: String::new(),
        })
        .await
        .unwrap();
    drop(small);
    let listed = app
        .customers(&acme.admin_key)
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.customers.len(), 1);

    let watch = |key: &str| {
        let mut client = app.events(key);
        async move {
            client
                .watch_events(pb::WatchEventsRequest::default())
                .await
                .map(|r| r.into_inner())
        }
    };
    let _first = watch(&acme.read_key).await.expect("one stream is allowed");
    let second = watch(&acme.admin_key).await;
    assert_error(
        second,
        Code::ResourceExhausted,
        "TOO_MANY_STREAMS_FOR_ORGANIZATION",
    );
    let _a = watch(&shop.read_key).await.unwrap();
    let _b = watch(&shop.admin_key).await.unwrap();
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(app: &TestApp) -> String {
    let addr = app.metrics_addr.expect("metrics are on");
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    response.text().await.unwrap()
}

async fn the_metrics_endpoint_shows_counters_moving(backend: Backend) {
    let app = spawn_app_with(backend, |c| {
        c.metrics.listen = "127.0.0.1:0".into();
        c.limits.organizations = limited(
            "acme",
            OrganizationLimits {
                key_requests_per_second: Some(0.01),
                key_burst: Some(4),
                ..Default::default()
            },
        );
    })
    .await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    const GET: &str = r#"method="liaison.v1.AdminService/GetOrganization""#;
    let before = scrape(&app).await;
    for _ in 0..3 {
        get_org(&app, &acme.admin_key, &acme.name).await.unwrap();
    }
    get_org(&app, &acme.admin_key, "organizations/nobody")
        .await
        .unwrap_err();
    get_org(&app, &acme.admin_key, &acme.name)
        .await
        .unwrap_err();
    let _stream = app
        .events(&acme.read_key)
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let after = scrape(&app).await;

    let moved = |labels: &[&str]| {
        sample(&after, "liaison_rpcs_total", labels) - sample(&before, "liaison_rpcs_total", labels)
    };
    assert!(moved(&[GET, r#"code="Ok""#]) >= 3.0, "{after}");
    assert!(moved(&[GET, r#"code="NotFound""#]) >= 1.0, "{after}");
    assert!(
        moved(&[GET, r#"code="ResourceExhausted""#]) >= 1.0,
        "{after}"
    );
    assert!(
        sample(&after, "liaison_rpc_duration_seconds_count", &[GET])
            - sample(&before, "liaison_rpc_duration_seconds_count", &[GET])
            >= 5.0
    );
    assert!(
        sample(&after, "liaison_rate_limited_total", &[])
            > sample(&before, "liaison_rate_limited_total", &[])
    );
    assert!(sample(&after, "liaison_event_streams_open", &[]) >= 1.0);
    for series in [
        r#"liaison_outbox_backlog{channel="webhook",state="pending"}"#,
        r#"liaison_outbox_backlog{channel="email",state="dead"}"#,
        r#"liaison_outbox_backlog{channel="notification",state="pending"}"#,
        r#"liaison_webhook_endpoints{state="disabled"}"#,
        r#"liaison_database_connections{state="idle"}"#,
        "liaison_case_timers_due ",
        "# TYPE liaison_webhook_attempts_total counter",
        "# TYPE liaison_smtp_sends_total counter",
        "# TYPE liaison_event_feed_lag_seconds histogram",
    ] {
        assert!(after.contains(series), "{series} missing from:\n{after}");
    }
    // Every series the Grafana dashboard charts exists.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana-dashboard.json"),
    )
    .unwrap();
    let mut rest = dashboard.as_str();
    while let Some(at) = rest.find("liaison_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        assert!(
            after.contains(&name),
            "the dashboard charts {name}, which is not served"
        );
        rest = &rest[at + name.len()..];
    }
    // Nothing secret or unbounded in labels.
    for secret in [&acme.admin_key, &acme.read_key, &app.operator_key] {
        assert!(!after.contains(secret.as_str()));
    }
    assert!(!after.contains("organizations/"));
    let addr = app.metrics_addr.unwrap();
    let missing = reqwest::get(format!("http://{addr}/other")).await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_a_request_id_in_and_out() {
    let app = spawn_app(Backend::Sqlite).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let mut request = tonic::Request::new(pb::GetOrganizationRequest {
        name: acme.name.clone(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "partner-trace-42".parse().unwrap());
    let response = app
        .admin(&acme.admin_key)
        .get_organization(request)
        .await
        .unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "partner-trace-42"
    );
    // Without one (or with an unusable one) the hub makes one up.
    let mut request = tonic::Request::new(pb::GetOrganizationRequest {
        name: acme.name.clone(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "has spaces".parse().unwrap());
    let response = app
        .admin(&acme.admin_key)
        .get_organization(request)
        .await
        .unwrap();
    let made = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(made.len(), 32, "{made}");
    // Errors carry it too.
    let refused = app
        .admin("lsk_nonsense")
        .get_organization(pb::GetOrganizationRequest { name: acme.name })
        .await
        .unwrap_err();
    assert!(refused.metadata().get("x-request-id").is_some());
}

/// A backup taken with `liaison admin backup` while a client keeps writing: the
/// writes go on while it runs, and the copy passes `PRAGMA integrity_check`, holds
/// exactly the writes committed before some moment during the backup (each whole),
/// and a hub started on it serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_under_writes_is_consistent() {
    let app = spawn_app(Backend::Sqlite).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    // Ballast the hub never reads: 64 MiB make the copy take a good fraction of a
    // second, long enough to watch it grow and for writes to commit meanwhile.
    const BALLAST: u64 = 64 << 20;
    {
        let mut side = sqlx::SqliteConnection::connect(&app.config.database.url)
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE test_ballast (b BLOB NOT NULL); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 64) \
             INSERT INTO test_ballast SELECT randomblob(1048576) FROM n",
        )
        .execute(&mut side)
        .await
        .unwrap();
    }
    // One writer, one customer at a time (Doe0, Doe1, ...), reporting each commit
    // and going on until told to stop.
    let (committed_tx, mut committed) = tokio::sync::watch::channel(0_i64);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let writer = {
        let mut client = app.customers(&acme.admin_key);
        tokio::spawn(async move {
            let mut written = 0;
            while stopped.try_recv().is_err() {
                client
                    .create_customer(pb::CreateCustomerRequest {
                        customer: Some(person("Jane", &format!("Doe{written}"), "")),
                        request_id: String::new(),
                    })
                    .await
                    .expect("writes go on during the backup");
                written += 1;
                committed_tx.send_replace(written);
            }
        })
    };
    committed.wait_for(|&n| n >= 20).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("backup.db");
    let before = *committed.borrow();
    let mut backup = tokio::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["admin", "backup"])
        .arg(&target)
        .args(["--database-url", &app.config.database.url])
        .env("LIAISON_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the copy holds half the ballast the backup is well under way: the writes
    // committed by then, with the backup still running, went on alongside it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let during = loop {
        let copied = std::fs::metadata(&target).map_or(0, |m| m.len());
        if copied >= BALLAST / 2 {
            let during = *committed.borrow();
            assert!(
                backup.try_wait().unwrap().is_none(),
                "the backup was still running when the writes were counted"
            );
            break during;
        }
        assert!(
            backup.try_wait().unwrap().is_none(),
            "the backup finished before it was seen under way"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backup is stuck"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let output = backup.wait_with_output().await.unwrap();
    stop.send(()).unwrap();
    writer.await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let url = format!("sqlite://{}", target.display());
    let mut copy = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut copy)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let in_copy: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM customers")
        .fetch_one(&mut copy)
        .await
        .unwrap();
    // All that was committed before the backup started is in it, and writes committed
    // after its snapshot while it was still running: they did not wait for it.
    assert!(
        before <= in_copy,
        "{before} committed, {in_copy} in the copy"
    );
    assert!(
        in_copy < during,
        "no write committed while the backup ran ({in_copy} in the copy, {during} by then)"
    );
    // Every customer in the copy has its creation event: one transaction, whole.
    let events: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE type = 'customer.created'")
            .fetch_one(&mut copy)
            .await
            .unwrap();
    assert_eq!(events, in_copy);
    copy.close().await.unwrap();

    // Restored: a hub on the copy serves exactly the first writes, keys and all.
    let (restored, addr, _log) = serve_process(&url, &[]).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let served = CustomerServiceClient::with_interceptor(channel, Bearer(acme.read_key.clone()))
        .list_customers(pb::ListCustomersRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("the restored hub knows acme's key")
        .into_inner()
        .customers;
    let mut served: Vec<String> = served.into_iter().map(|c| c.family_name).collect();
    served.sort_unstable();
    let mut first: Vec<String> = (0..in_copy).map(|i| format!("Doe{i}")).collect();
    first.sort_unstable();
    assert_eq!(served, first);
    drop(restored);

    // Never over an existing file.
    let again = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["admin", "backup"])
        .arg(&target)
        .args(["--database-url", &app.config.database.url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("liaison.toml");
    std::fs::write(
        &file,
        "[smtp]\nurl = \"smtp://mail.example:587?tls=required\"\nusername = \"hub\"\n\
         [limits.organizations.acme]\nkey_requests_per_second = 50\n",
    )
    .unwrap();
    let run = |env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_liaison"))
            .args(["config", "check", "--config"])
            .arg(&file)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let output = run(&[
        ("LIAISON_SMTP_PASSWORD", "hunter2-secret"),
        (
            "LIAISON_DATABASE_URL",
            "postgres://app:db-secret@db/liaison",
        ),
        ("LIAISON_CUSTOMERS_MATCH_SECRET", &"A".repeat(44)),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown = String::from_utf8(output.stdout).unwrap();
    assert!(shown.contains("postgres://app:***@db/liaison"), "{shown}");
    assert!(shown.contains("key_requests_per_second = 50"), "{shown}");
    for secret in ["hunter2-secret", "db-secret", &"A".repeat(44)] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    // What it prints is a configuration file again (with the secrets given anew).
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &shown).unwrap();
    let secret = ("LIAISON_CUSTOMERS_MATCH_SECRET".to_owned(), "B".repeat(44));
    let reloaded = Config::load(Some(&printed), vec![secret], &Overrides::default())
        .expect("printed config loads");
    assert_eq!(
        reloaded.limits.organizations["acme"].key_requests_per_second,
        Some(50.0)
    );

    let bad = run(&[("LIAISON_LIMITS_KEY_BURST", "0")]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("limits.key_burst"));
    let bad = run(&[("LIAISON_TLS_CERT", "/nonexistent/cert.pem")]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tls.key"));

    let version = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    assert!(
        version.starts_with(&format!("liaison {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(version.contains("rustc"), "{version}");
}

/// Every `LIAISON_*` variable the deploy files set is one the binary reads, and every
/// TOML configuration they carry loads.
#[test]
fn deploy_files_use_only_configuration_the_binary_knows() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut known = liaison::config::known_env_names();
    known.extend(
        [
            "LIAISON_CONFIG",
            "LIAISON_LOG",
            "LIAISON_SERVER",
            "LIAISON_BUILD_COMMIT",
        ]
        .map(String::from),
    );
    let mut files = vec![];
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 8, "deploy/ holds the files: {files:?}");
    let mut configs = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("LIAISON_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            assert!(
                known.contains(&name),
                "{} uses {name}, which the binary does not read",
                path.display()
            );
            rest = &rest[at + name.len()..];
        }
        // TOML files, and TOML embedded in a ConfigMap after `liaison.toml: |`.
        let toml_text = if path.extension().is_some_and(|e| e == "toml") {
            Some(text.clone())
        } else {
            text.split_once("liaison.toml: |\n").map(|(_, block)| {
                block
                    .lines()
                    .take_while(|l| l.starts_with("    ") || l.is_empty())
                    .map(|l| l.get(4..).unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        };
        if let Some(toml_text) = toml_text {
            let file = std::env::temp_dir().join(format!("liaison-deploy-{}.toml", configs));
            std::fs::write(&file, &toml_text).unwrap();
            // Paths to certificates exist only where the files are deployed.
            let mut table: toml::Table =
                toml::from_str(&toml_text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            table.remove("tls");
            table.remove("workflows");
            std::fs::write(&file, toml::to_string(&table).unwrap()).unwrap();
            Config::load(Some(&file), vec![], &Overrides::default())
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            configs += 1;
        }
    }
    assert!(
        configs >= 2,
        "the example config and the ConfigMap are checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liaison_health_reports_serving() {
    let app = spawn_app(Backend::Sqlite).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["health", "--server", &format!("http://{}", app.addr)])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "SERVING");
    drop(app);
    let nobody = tokio::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["health", "--server", "http://127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert!(!nobody.status.success());
}

/// API keys, the SMTP password and database passwords appear in no log line, however
/// the hub is used, and not in the CLI's errors either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("liaison.db").display());
    let migrated = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(migrated.status.success());
    let bootstrap = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["admin", "bootstrap", "--database-url", &url])
        .output()
        .unwrap();
    let operator = String::from_utf8(bootstrap.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let smtp = [
        ("LIAISON_SMTP_URL", "smtp://hub:url-secret-7@127.0.0.1:1"),
        ("LIAISON_SMTP_PASSWORD", "smtp-secret-42"),
        ("LIAISON_LOG", "info,liaison=debug"),
    ];
    let (mut server, addr, mut log) = serve_process(&url, &smtp).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminServiceClient::with_interceptor(channel.clone(), Bearer(operator.clone()));
    admin
        .create_organization(new_organization("acme", pb::OrganizationKind::Vendor))
        .await
        .unwrap();
    let created = admin
        .create_api_key(new_api_key("organizations/acme", &[pb::ApiKeyScope::Admin]))
        .await
        .unwrap()
        .into_inner();
    let guessed = format!("lsk_{}", "Q".repeat(43));
    let refused = AdminServiceClient::with_interceptor(channel, Bearer(guessed.clone()))
        .get_organization(pb::GetOrganizationRequest {
            name: "organizations/acme".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(!refused.message().contains(&guessed));

    server.start_kill().unwrap();
    let mut lines = vec![];
    while let Ok(Some(line)) = log.next_line().await {
        lines.push(line);
    }
    let log = lines.join("\n");
    assert!(log.contains("rpc finished"), "{log}");
    for secret in [
        operator.as_str(),
        created.key.as_str(),
        guessed.as_str(),
        "url-secret-7",
        "smtp-secret-42",
    ] {
        assert!(!log.contains(secret), "a secret reached the log:\n{log}");
    }

    // `liaison email test` fails (nothing listens there) without naming the secrets.
    let failed = Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args([
            "email",
            "test",
            "--to",
            "ops@example.com",
            "--database-url",
            &url,
        ])
        .envs(smtp)
        .output()
        .unwrap();
    assert!(!failed.status.success());
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !said.contains("url-secret-7") && !said.contains("smtp-secret-42"),
        "{said}"
    );
}
