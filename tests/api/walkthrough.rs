//! The README's first ten minutes and the examples, run as a user would run them:
//! the README's `first-ten-minutes` blocks in an empty directory with the test
//! build's `liaison` on PATH, and `examples/` against a live hub. They need Python
//! with the examples' packages (`LIAISON_TEST_EXAMPLES_PYTHON`, set by `.ci/run`)
//! and PyPI; without it they are reported as ignored.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use liaison::pb;

use crate::helpers::*;

/// The README's walk-through should take seconds; this is far more than enough.
const PATIENCE: Duration = Duration::from_secs(240);

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples_python() -> String {
    std::env::var("LIAISON_TEST_EXAMPLES_PYTHON")
        .expect("LIAISON_TEST_EXAMPLES_PYTHON names a Python with the examples' packages")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shell blocks of `markdown` tagged `tag`, in order.
fn blocks(markdown: &str, tag: &str) -> Vec<String> {
    let (mut found, mut current) = (vec![], None::<String>);
    for line in markdown.lines() {
        match &mut current {
            None if line.trim() == format!("```sh {tag}") => current = Some(String::new()),
            None => {}
            Some(block) if line.trim() == "```" => {
                found.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    found
}

/// Runs `command` within [`PATIENCE`]; its status, stdout and stderr.
async fn run(mut command: tokio::process::Command) -> (bool, String, String) {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("spawn");
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("finished in time")
        .expect("ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(liaison_example_tests),
    ignore = "LIAISON_TEST_EXAMPLES_PYTHON is not set"
)]
async fn the_readme_first_ten_minutes_run_as_written() {
    let readme = std::fs::read_to_string(repository().join("README.md")).unwrap();
    let steps = blocks(&readme, "first-ten-minutes");
    assert!(steps.len() >= 8, "found {} blocks", steps.len());
    let text = steps.join("\n");
    for needed in [
        "liaison serve",
        "liaison admin bootstrap",
        "/v1/organizations",
        "/apiKeys",
        "/v1/customers",
        "/v1/partnerships",
        "/grants",
        "/interactions",
        "events:watch",
        "webhook_receiver.py",
        "aiosmtpd",
    ] {
        assert!(
            text.contains(needed),
            "the walk-through lost its `{needed}` step"
        );
    }
    // Ports of their own, so the run meets nothing else on the machine.
    let (hub, smtp, hooks) = (free_port(), free_port(), free_port());
    let text = text
        .replace("localhost:50051", &format!("localhost:{hub}"))
        .replace("2525", &smtp.to_string())
        .replace("8080", &hooks.to_string());
    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT\n{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_liaison"));
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = tokio::process::Command::new("bash");
    command
        .args(["-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("EXAMPLES", repository().join("examples"))
        .env("LIAISON_LISTEN", format!("127.0.0.1:{hub}"))
        .env("LIAISON_LOG", "info");
    let (ok, stdout, stderr) = run(command).await;
    let demo = dir.path().join("liaison-demo");
    assert!(
        ok,
        "the walk-through failed:\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- hub.log\n{}",
        read(&demo.join("hub.log"))
    );
    // What it printed is what the README says it prints.
    let jane = stdout
        .lines()
        .find(|l| l.contains("\"visibleFields\"") && l.contains("\"displayName\":\"Jane Doe\""))
        .unwrap_or_else(|| panic!("no view of Jane in\n{stdout}"));
    let jane: serde_json::Value = serde_json::from_str(jane).unwrap();
    assert_eq!(jane.get("phones"), None, "{jane}");
    let events = read(&demo.join("events.txt"));
    for kind in [
        "partnership.accepted",
        "grant.created",
        "interaction.logged",
    ] {
        assert!(
            events.contains(&format!("event: {kind}")),
            "{kind} not in\n{events}"
        );
    }
    let hooks = read(&demo.join("hooks.txt"));
    assert!(!hooks.contains("refused"), "{hooks}");
    assert!(
        hooks
            .lines()
            .any(|l| l.starts_with("ok ") && l.contains("interaction.logged")),
        "{hooks}"
    );
    let mail = read(&demo.join("mail.txt"));
    assert!(mail.contains("sam@bigshop.example"), "{mail}");
    assert!(
        !read(&demo.join("hub.log")).contains('\u{1b}'),
        "colour codes in a log file"
    );
}

/// A hub and an organization's admin key for an example.
async fn hub_and_key() -> (TestApp, Org) {
    let app = spawn_app(Backend::Sqlite).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    (app, acme)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(liaison_example_tests),
    ignore = "LIAISON_TEST_EXAMPLES_PYTHON is not set"
)]
async fn the_python_grpc_client_example_runs() {
    let (app, acme) = hub_and_key().await;
    let generated = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(examples_python());
    command
        .arg(repository().join("examples/python/client.py"))
        .env("LIAISON_HUB", app.addr.to_string())
        .env("LIAISON_API_KEY", &acme.admin_key)
        .env("LIAISON_GENERATED_DIR", generated.path());
    let (ok, stdout, stderr) = run(command).await;
    assert!(ok, "--- stdout\n{stdout}\n--- stderr\n{stderr}");
    for said in [
        "created customers/",
        "updated customers/",
        "tags ['vip']",
        "listed 1 customers",
        "logged customers/",
        "refused INVALID_ARGUMENT [('customer.given_name'",
        "events customer.created customer.updated",
    ] {
        assert!(stdout.contains(said), "`{said}` not in\n{stdout}");
    }
    // What it did is there over gRPC from Rust too.
    let listed = app
        .customers(&acme.read_key)
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.customers[0].tags, vec!["vip"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(liaison_example_tests),
    ignore = "LIAISON_TEST_EXAMPLES_PYTHON is not set"
)]
async fn the_curl_session_example_runs() {
    let (app, acme) = hub_and_key().await;
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(repository().join("examples/curl_session.sh"))
        .env("LIAISON_HTTP", format!("http://{}", app.http_addr))
        .env("LIAISON_API_KEY", &acme.admin_key);
    let (ok, stdout, stderr) = run(command).await;
    assert!(ok, "--- stdout\n{stdout}\n--- stderr\n{stderr}");
    for said in [
        "created customers/",
        "updated tags: [\"customer\"]",
        "stale etag: 409 ABORTED",
        "bad field: 400 INVALID_ARGUMENT",
        "listed 1 customers",
        "logged customers/",
        "customer.created",
        "interaction.logged",
    ] {
        assert!(stdout.contains(said), "`{said}` not in\n{stdout}");
    }
}
