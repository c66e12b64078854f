//! The `liaison` binary as an operator uses it.

use std::process::Command;
use std::time::Duration;

use liaison::pb;
use tonic::Code;

use crate::helpers::*;

pub(crate) fn liaison(database_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(args)
        .env("LIAISON_DATABASE_URL", database_url)
        .env("LIAISON_LOG", "warn")
        .output()
        .expect("run liaison")
}

pub(crate) fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

crate::on_both_backends!(
    bootstrap_prints_a_working_key_on_its_last_line,
    admin_commands_manage_organizations_and_keys,
    import_loads_a_file_in_batches_and_names_bad_lines,
    replicas_started_at_once_on_a_fresh_database_migrate_it_once_and_all_serve,
    the_cli_takes_a_bare_address_and_says_why_it_cannot_reach_a_hub,
);

#[test]
fn admin_commands_refuse_a_database_that_is_not_there_and_say_which_they_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere.db");
    let url = format!("sqlite://{}", path.display());
    let out = liaison(&url, &["admin", "list-orgs"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("there is no database at {}", path.display())),
        "{said}"
    );
    assert!(!path.exists(), "a refused command created the database");
    // Bootstrap too: its key would be in a database no hub serves.
    let out = liaison(&url, &["admin", "bootstrap"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(said.contains("liaison migrate"), "{said}");
    assert!(!path.exists(), "a refused bootstrap created the database");
    // Once the database is made, bootstrap works, and every command names it.
    stdout(&liaison(&url, &["migrate"]));
    stdout(&liaison(&url, &["admin", "bootstrap"]));
    let out = liaison(&url, &["admin", "list-orgs"]);
    stdout(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&format!("database: {url}")), "{said}");
}

fn import(
    app: &TestApp,
    key: &str,
    file: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_liaison"))
        .arg("import")
        .arg(file)
        .args([
            "--server",
            &format!("http://{}", app.addr),
            "--batch-size",
            "2",
        ])
        .args(extra)
        .env("LIAISON_API_KEY", key)
        .output()
        .expect("run liaison import")
}

async fn import_loads_a_file_in_batches_and_names_bad_lines(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("customers.csv");
    std::fs::write(
        &csv,
        "external_id,kind,given_name,family_name,legal_name,email,phone,tags,attr.tier\n\
         C-1,person,Jane,Doe,,jane@example.com,+4930901820,vip,gold\n\
         C-2,person,John,Roe,,john@example.com,,,\n\
         C-3,company,,,Roe Ltd,,,,\n",
    )
    .unwrap();
    let out = import(&app, &acme.admin_key, &csv, &[]);
    let text = stdout(&out);
    assert!(text.contains("imported 3 rows: 3 created"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("100%"),
        "a progress bar"
    );
    // Running it again (as after an interruption) replays the batches that landed:
    // the same answer, and no duplicates.
    let again = stdout(&import(&app, &acme.admin_key, &csv, &["--quiet"]));
    assert_eq!(again, text);
    let listed = app
        .customers(&acme.read_key)
        .list_customers(pb::ListCustomersRequest {
            filter: "external_id = \"C-1\"".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .customers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].display_name, "Jane Doe");
    assert_eq!(listed[0].attributes["tier"], "gold");

    // JSON lines; a bad row is reported by its line, and its batch is not written.
    let jsonl = dir.path().join("more.jsonl");
    std::fs::write(
        &jsonl,
        "{\"external_id\":\"J-1\",\"given_name\":\"Ann\"}\n\
         {\"external_id\":\"J-2\",\"given_name\":\"Bo\",\"email\":\"broken\"}\n",
    )
    .unwrap();
    let out = import(&app, &acme.admin_key, &jsonl, &["--quiet"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: emails[0].address"), "{err}");
    let all = app
        .customers(&acme.read_key)
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .customers;
    assert_eq!(all.len(), 3, "J-1 shared the refused batch");

    // A read key cannot import.
    let out = import(&app, &acme.read_key, &csv, &["--quiet"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"));
}

async fn bootstrap_prints_a_working_key_on_its_last_line(backend: Backend) {
    let (_db, url) = TestDatabase::create(&backend).await;
    let out = stdout(&liaison(&url, &["migrate"]));
    assert!(out.contains("up to date"));
    let out = stdout(&liaison(&url, &["admin", "bootstrap"]));
    let key = out.lines().last().unwrap().to_owned();
    assert!(key.starts_with("lsk_"), "{out}");

    // A second bootstrap would hand out another operator key by accident.
    let again = liaison(&url, &["admin", "bootstrap"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    // The key works against a hub started from the same binary and database.
    let (mut server, addr, mut lines) = serve_process(&url, &[]).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminServiceClient::with_interceptor(channel.clone(), Bearer(key));
    admin
        .list_organizations(pb::ListOrganizationsRequest::default())
        .await
        .expect("the bootstrap key is an operator key");
    let denied = AdminServiceClient::new(channel)
        .list_organizations(pb::ListOrganizationsRequest::default())
        .await;
    assert_eq!(denied.unwrap_err().code(), Code::Unauthenticated);

    // Every RPC is logged once with its method, organization and code.
    let logged = tokio::time::timeout(Duration::from_secs(5), async {
        let mut seen = vec![];
        while let Some(line) = lines.next_line().await.unwrap() {
            let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
            if entry["message"] == "rpc finished" {
                seen.push(entry);
                if seen.len() == 2 {
                    return seen;
                }
            }
        }
        seen
    })
    .await
    .expect("log lines in time");
    assert_eq!(logged[0]["organization"], "operator");
    assert_eq!(logged[0]["code"], "Ok");
    assert_eq!(
        logged[0]["span"]["method"],
        "/liaison.v1.AdminService/ListOrganizations"
    );
    assert_eq!(logged[1]["code"], "Unauthenticated");
    assert!(logged[0]["latency_ms"].is_f64());

    // SIGTERM: a graceful stop, exit code 0.
    sigterm(&server);
    let status = tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

async fn admin_commands_manage_organizations_and_keys(backend: Backend) {
    let (_db, url) = TestDatabase::create(&backend).await;
    // Admin commands work on an existing database (`migrate` makes one).
    stdout(&liaison(&url, &["migrate"]));
    let out = stdout(&liaison(
        &url,
        &[
            "admin",
            "create-org",
            "--slug",
            "acme",
            "--display-name",
            "Acme GmbH",
            "--kind",
            "vendor",
        ],
    ));
    assert_eq!(out, "organizations/acme\tVENDOR\tACTIVE\tAcme GmbH\n");
    let bad = liaison(
        &url,
        &[
            "admin",
            "create-org",
            "--slug",
            "Acme!",
            "--display-name",
            "",
            "--kind",
            "vendor",
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("organization.slug") && err.contains("organization.display_name"),
        "{err}"
    );

    let out = stdout(&liaison(
        &url,
        &[
            "admin",
            "create-key",
            "--org",
            "acme",
            "--scope",
            "read",
            "--scope",
            "write",
            "--display-name",
            "shop",
        ],
    ));
    assert!(out.lines().last().unwrap().starts_with("lsk_"));
    let listed = stdout(&liaison(&url, &["admin", "list-keys", "--org", "acme"]));
    let key_name = listed.split('\t').next().unwrap().to_owned();
    assert!(listed.contains("READ,WRITE\tACTIVE\tshop"), "{listed}");
    stdout(&liaison(&url, &["admin", "revoke-key", &key_name]));
    assert_eq!(
        stdout(&liaison(&url, &["admin", "list-keys", "--org", "acme"])),
        ""
    );

    let out = stdout(&liaison(
        &url,
        &["admin", "suspend-org", "acme", "--reason", "unpaid"],
    ));
    assert!(out.contains("SUSPENDED"));
    let out = stdout(&liaison(&url, &["admin", "reactivate-org", "acme"]));
    assert!(out.contains("ACTIVE"));
    assert_eq!(
        stdout(&liaison(&url, &["admin", "list-orgs"]))
            .lines()
            .count(),
        1
    );
    let missing = liaison(&url, &["admin", "get-org", "nobody"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

/// `liaison serve` processes started at the same moment on `database_url`, once each
/// logs "hub ready", with their addresses; a process that exits first fails the test
/// with what it wrote.
async fn serve_at_once(database_url: &str, n: usize) -> Vec<(tokio::process::Child, String)> {
    use tokio::io::AsyncBufReadExt;
    // All are started before any is waited for, so their migrations overlap.
    let mut started = vec![];
    for _ in 0..n {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .env("LIAISON_DATABASE_URL", database_url)
            .env("LIAISON_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start liaison serve");
        let stderr = child.stderr.take().unwrap();
        started.push((child, tokio::io::BufReader::new(stderr).lines()));
    }
    let ready = started.into_iter().map(async |(child, mut lines)| {
        let mut said = vec![];
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if entry["message"] == "hub ready" {
                    return Some(entry["listen"].as_str().unwrap().to_owned());
                }
                said.push(line);
            }
            None
        })
        .await
        .expect("ready in time");
        let addr = addr
            .unwrap_or_else(|| panic!("a hub exited before it was ready:\n{}", said.join("\n")));
        // Keep draining the log, so the hub never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (child, addr)
    });
    futures_util::future::join_all(ready).await
}

/// Replicas behind a load balancer start together, each migrating the database first.
/// Exactly one applies each migration; the others wait for it (an advisory lock on
/// PostgreSQL) or find it done, and every replica serves afterwards.
async fn replicas_started_at_once_on_a_fresh_database_migrate_it_once_and_all_serve(
    backend: Backend,
) {
    let (_db, url) = TestDatabase::create(&backend).await;
    let hubs = serve_at_once(&url, 3).await;

    // Every migration recorded once, whole, and as the binary has it.
    let (expected, applied): (sqlx::migrate::Migrator, Vec<(i64, bool, Vec<u8>)>) = {
        use sqlx::Connection;
        let query = "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version";
        match backend {
            Backend::Sqlite => (
                sqlx::migrate!("migrations/sqlite"),
                sqlx::query_as(query)
                    .fetch_all(&mut sqlx::SqliteConnection::connect(&url).await.unwrap())
                    .await
                    .unwrap(),
            ),
            Backend::Postgres(_) => (
                sqlx::migrate!("migrations/postgres"),
                sqlx::query_as(query)
                    .fetch_all(&mut sqlx::PgConnection::connect(&url).await.unwrap())
                    .await
                    .unwrap(),
            ),
        }
    };
    let expected: Vec<(i64, bool, Vec<u8>)> = expected
        .iter()
        .map(|m| (m.version, true, m.checksum.to_vec()))
        .collect();
    assert_eq!(
        applied, expected,
        "each migration applied once, successfully"
    );

    // The schema works: what one replica writes, each reads.
    let key = bootstrap_operator(&url);
    let channel = async |addr: &str| {
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let operator = async |addr: &str| {
        AdminServiceClient::with_interceptor(channel(addr).await, Bearer(key.clone()))
    };
    operator(&hubs[0].1)
        .await
        .create_organization(new_organization("acme", pb::OrganizationKind::Vendor))
        .await
        .expect("the first replica writes");
    for (_, addr) in &hubs {
        let got = operator(addr)
            .await
            .get_organization(pb::GetOrganizationRequest {
                name: "organizations/acme".into(),
            })
            .await
            .expect("every replica reads")
            .into_inner();
        assert_eq!(got.slug, "acme");
    }
}

async fn the_cli_takes_a_bare_address_and_says_why_it_cannot_reach_a_hub(backend: Backend) {
    let app = spawn_app(backend).await;
    let health = |server: &str| {
        Command::new(env!("CARGO_BIN_EXE_liaison"))
            .args(["health", "--server", server])
            .output()
            .expect("run liaison health")
    };
    // host:port, no scheme: plain HTTP/2.
    let out = health(&app.addr.to_string());
    assert_eq!(stdout(&out).trim(), "SERVING");
    // Nothing listening there: the message names the address and what to check.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = free.local_addr().unwrap().to_string();
    drop(free);
    let out = health(&nobody);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("cannot reach the hub at http://{nobody}"))
            && said.contains("is `liaison serve` running there"),
        "{said}"
    );
    // Not an address at all.
    for bad in ["http://", "ftp://hub.example:21", "two words:1"] {
        let out = health(bad);
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("is not an address such as 127.0.0.1:50051"),
            "{bad}: {said}"
        );
    }
    // A hub logging to a pipe (a file, a journal) writes no colour codes.
    use tokio::io::AsyncBufReadExt;
    let mut hub = tokio::process::Command::new(env!("CARGO_BIN_EXE_liaison"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url"])
        .arg(&app.config.database.url)
        .args(["--log-format", "text"])
        .env("LIAISON_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start liaison serve");
    let mut lines = tokio::io::BufReader::new(hub.stderr.take().unwrap()).lines();
    let log = tokio::time::timeout(Duration::from_secs(30), async {
        let mut log = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            if line.contains("hub ready") {
                return log;
            }
        }
        panic!("the hub exited before it was ready: {log}");
    })
    .await
    .expect("ready in time");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
    assert!(log.contains(" INFO "), "{log}");
    let _ = hub.kill().await;
    app.stop().await.unwrap();
}
