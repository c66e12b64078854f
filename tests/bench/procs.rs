//! The processes a run starts: a database, `liaison serve` (release build) and the
//! echo server, each a child killed when the run ends.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The hub binary cargo built for this bench, with the bench's (release) profile.
pub const HUB: &str = env!("CARGO_BIN_EXE_liaison");

/// A database made for one run, dropped at the end.
pub enum Database {
    Sqlite { dir: tempfile::TempDir },
    Postgres { server: String, name: String },
}

impl Database {
    pub async fn create(postgres: Option<&str>) -> anyhow::Result<Self> {
        match postgres {
            None => Ok(Database::Sqlite {
                dir: tempfile::tempdir()?,
            }),
            Some(server) => {
                let name = format!("liaison_bench_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(server)
                    .await
                    .with_context(|| format!("PostgreSQL at {server}"))?;
                sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await?;
                Ok(Database::Postgres {
                    server: server.to_owned(),
                    name,
                })
            }
        }
    }

    pub fn url(&self) -> String {
        match self {
            Database::Sqlite { dir } => format!("sqlite://{}", dir.path().join("hub.db").display()),
            Database::Postgres { server, name } => {
                let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
                format!("{base}/{name}")
            }
        }
    }

    pub fn dir(&self) -> Option<PathBuf> {
        match self {
            Database::Sqlite { dir } => Some(dir.path().to_owned()),
            Database::Postgres { .. } => None,
        }
    }

    pub async fn drop_now(self) {
        if let Database::Postgres { server, name } = self
            && let Ok(mut conn) = sqlx::PgConnection::connect(&server).await
        {
            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
    }
}

/// Runs `liaison migrate` and `liaison admin bootstrap` on `url`; returns the operator key.
pub async fn bootstrap(url: &str) -> anyhow::Result<String> {
    let migrated = Command::new(HUB)
        .args(["migrate", "--database-url", url])
        .env("LIAISON_LOG", "warn")
        .output()
        .await?;
    if !migrated.status.success() {
        bail!(
            "liaison migrate failed: {}",
            String::from_utf8_lossy(&migrated.stderr)
        );
    }
    let out = Command::new(HUB)
        .args(["admin", "bootstrap", "--database-url", url])
        .env("LIAISON_LOG", "warn")
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "liaison admin bootstrap failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8(out.stdout)?;
    Ok(stdout.lines().last().unwrap_or_default().trim().to_owned())
}

/// The settings every benchmarked hub runs with: request limits off (the load
/// generator is one client), room for the streams scenario, webhooks to loopback.
pub const HUB_ENV: &[(&str, &str)] = &[
    ("LIAISON_LIMITS_KEY_REQUESTS_PER_SECOND", "0"),
    ("LIAISON_LIMITS_ORGANIZATION_REQUESTS_PER_SECOND", "0"),
    ("LIAISON_EVENTS_MAX_STREAMS_PER_ORGANIZATION", "5000"),
    ("LIAISON_EVENTS_MAX_STREAMS", "20000"),
    ("LIAISON_WEBHOOKS_ALLOW_HTTP", "true"),
    ("LIAISON_WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "true"),
];

/// A running `liaison serve`.
pub struct Hub {
    pub child: Child,
    pub addr: String,
    pub pid: u32,
}

impl Hub {
    /// Starts `liaison serve` on `url` and waits until it is ready; its log (JSON, at
    /// `level`) goes to `log`.
    pub async fn start(
        url: &str,
        level: &str,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Hub> {
        let mut child = Command::new(HUB)
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", url])
            .args(["--log-format", "json"])
            // `hub ready` (which carries the address) is logged at info by startup.
            .env("LIAISON_LOG", format!("{level},liaison::startup=info"))
            .envs(HUB_ENV.iter().copied())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start liaison serve")?;
        let pid = child.id().context("hub pid")?;
        let mut lines = BufReader::new(child.stderr.take().context("hub stderr")?).lines();
        let mut file = tokio::fs::File::create(&log).await?;
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                file.write_all(line.as_bytes()).await?;
                file.write_all(b"\n").await?;
                let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if entry["message"] == "hub ready" {
                    return Ok::<_, anyhow::Error>(
                        entry["listen"].as_str().unwrap_or_default().to_owned(),
                    );
                }
            }
            bail!("the hub exited before it was ready; see {}", log.display())
        })
        .await
        .context("the hub did not get ready within 60 s")??;
        // Keep draining the log so the hub never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = file.write_all(line.as_bytes()).await;
                let _ = file.write_all(b"\n").await;
            }
        });
        Ok(Hub { child, addr, pid })
    }

    /// SIGTERM, then wait for the graceful shutdown.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// This bench binary again, as the echo server (`--serve-echo`); returns it with the
/// address it printed.
pub async fn start_echo() -> anyhow::Result<(Child, String, u32)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve-echo")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("echo pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("echo stdout")?).lines();
    let addr = lines
        .next_line()
        .await?
        .context("the echo server printed no address")?;
    Ok((child, addr, pid))
}
