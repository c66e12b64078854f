//! The `liaison` command line: argument parsing and printing only. Each command
//! calls the library (the server, the admin use cases, the importer) and prints what
//! it returns.

mod admin;
mod audit;
mod export;
mod health;
pub mod import;
mod operations;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use self::admin::AdminCommand;
use crate::api::{AdminApi, Hub};
use crate::config::{Config, LogFormat, Overrides};
use crate::startup::{Application, shutdown_signal};
use crate::store::Store;
use crate::telemetry;

#[derive(Parser)]
#[command(
    name = "liaison",
    version = env!("HUB_BUILD_INFO"),
    about = "Collaborative-CRM integration hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Common {
    /// TOML configuration file.
    #[arg(long, env = "LIAISON_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB` [default: sqlite://liaison.db]
    #[arg(long, env = "LIAISON_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Log format.
    #[arg(long, env = "LIAISON_LOG_FORMAT", value_enum, global = true)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the hub: migrates the database, then serves gRPC until SIGINT/SIGTERM.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on [default: 127.0.0.1:50051]
        #[arg(long, env = "LIAISON_LISTEN")]
        listen: Option<String>,
    },
    /// Brings the database schema up to date and exits.
    Migrate {
        #[command(flatten)]
        common: Common,
    },
    /// Loads customers from a CSV or JSON-lines file into a running hub, in batches
    /// keyed by the caller's external ids; safe to run again after an interruption.
    Import {
        /// The file; `.jsonl`/`.ndjson` are read as JSON lines, anything else as CSV.
        file: PathBuf,
        /// Overrides the format guessed from the file name.
        #[arg(long, value_enum)]
        format: Option<import::Format>,
        /// The hub's address: `host:port` (plain HTTP/2) or a URL (`https://…` for TLS).
        #[arg(long, env = "LIAISON_SERVER", default_value = "http://127.0.0.1:50051")]
        server: String,
        /// An API key with the write scope of the importing organization.
        #[arg(long, env = "LIAISON_API_KEY", hide_env_values = true)]
        key: String,
        /// Customers per BatchUpsertCustomers call (1 to 1000).
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Email checks.
    Email {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: EmailCommand,
    },
    /// Configuration checks.
    Config {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Asks a running hub's `grpc.health.v1` service; exits 0 if it is SERVING (for
    /// container health checks).
    Health {
        /// The hub's address: `host:port` (plain HTTP/2) or a URL (`https://…` for TLS).
        #[arg(long, env = "LIAISON_SERVER", default_value = "http://127.0.0.1:50051")]
        server: String,
        /// PEM CA certificate to trust, for a hub that speaks TLS (`https://…`).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// A service name to ask about instead of the whole server.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// The audit log: a checkpoint signing key, and an organization's log exported
    /// from a running hub and verified offline.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Exports what an organization sees (customers, interactions, scorecards) as CSV
    /// or JSON lines, with a progress bar on a terminal.
    Export {
        #[command(subcommand)]
        command: export::ExportCommand,
    },
    /// Long-running operations of a running hub (account mapping comparisons).
    Operations {
        #[command(subcommand)]
        command: operations::OperationsCommand,
    },
    /// Prints the OpenAPI 3.1 description of the HTTP/JSON API (as the hub serves it at
    /// `/openapi.json`).
    Openapi,
    /// Tools for partners writing a webhook receiver.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Operator tasks, run directly against the database.
    Admin {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum EmailCommand {
    /// Sends a test message through the configured transport (SMTP, or `.eml` files)
    /// and prints what the server answered.
    Test {
        /// The recipient.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Loads the configuration (defaults, file, environment, flags) the way `serve`
    /// does, checks it, and prints the effective configuration with secrets masked.
    /// Exits 1 naming the first problem.
    Check,
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Checks a received webhook (its body and Standard Webhooks headers) against the
    /// endpoint's signing secret. Exits 0 if it verifies, 1 with the reason if not.
    Verify {
        /// The endpoint's secret, `whsec_…`.
        #[arg(long, env = "LIAISON_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// The `webhook-id` header.
        #[arg(long)]
        id: String,
        /// The `webhook-timestamp` header (unix seconds).
        #[arg(long)]
        timestamp: String,
        /// The `webhook-signature` header (`v1,…`, several separated by spaces).
        #[arg(long)]
        signature: String,
        /// The file holding the exact body received; `-` (the default) reads stdin.
        #[arg(long, default_value = "-")]
        body: PathBuf,
        /// Accept a timestamp more than 5 minutes from now (checking an old payload).
        #[arg(long)]
        ignore_timestamp: bool,
    },
}

fn load(common: &Common, listen: Option<String>) -> anyhow::Result<Config> {
    let overrides = Overrides {
        listen,
        database_url: common.database_url.clone(),
        log_format: common.log_format,
    };
    Config::load(common.config.as_deref(), std::env::vars(), &overrides)
}

/// Runs the command line: parses the arguments, runs the command, reports an error.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { common, listen } => {
            let config = load(&common, listen)?;
            telemetry::init(config.log_format, &config.telemetry)?;
            let app = Application::build(config).await?;
            let result = app.run_until_stopped(shutdown_signal()).await;
            telemetry::shutdown();
            result
        }
        Command::Config {
            common,
            command: ConfigCommand::Check,
        } => {
            let config = load(&common, None)?;
            print!("{}", config.to_masked_toml()?);
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Health {
            server,
            ca,
            service,
        } => health::health(&server, ca.as_deref(), service).await,
        Command::Operations { command } => operations::run(command).await,
        Command::Export { command } => export::run(command).await,
        Command::Audit { command } => audit::run(command).await,
        Command::Email {
            common,
            command: EmailCommand::Test { to },
        } => {
            let config = load(&common, None)?;
            telemetry::init(config.log_format, &config.telemetry)?;
            let said = crate::outbound::email::send_test(&config.email, &config.smtp, &to).await?;
            println!("sent: {said}");
            Ok(())
        }
        Command::Openapi => {
            print!("{}", crate::api::http::OPENAPI_DOCUMENT);
            Ok(())
        }
        Command::Webhook {
            command:
                WebhookCommand::Verify {
                    secret,
                    id,
                    timestamp,
                    signature,
                    body,
                    ignore_timestamp,
                },
        } => {
            use crate::domain::webhook::{WebhookSecret, verify};
            use std::io::Read;
            let secret = WebhookSecret::parse(secret.trim())
                .map_err(|v| anyhow::anyhow!("--secret {}", v.description))?;
            let payload = if body.as_os_str() == "-" {
                let mut buf = vec![];
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("cannot read the body from stdin")?;
                buf
            } else {
                std::fs::read(&body)
                    .with_context(|| format!("cannot read the body from {}", body.display()))?
            };
            let now = match (ignore_timestamp, timestamp.trim().parse::<i64>()) {
                (true, Ok(sent)) => sent,
                _ => jiff::Timestamp::now().as_second(),
            };
            verify(&secret, &id, &timestamp, &signature, &payload, now)
                .map_err(|e| anyhow::anyhow!("the webhook does not verify: {e}"))?;
            println!("valid: webhook {id} was signed with this secret");
            Ok(())
        }
        Command::Migrate { common } => {
            let config = load(&common, None)?;
            telemetry::init(config.log_format, &config.telemetry)?;
            let store = Store::connect(&config.store_options()).await?;
            store.migrate().await?;
            store.close().await;
            println!("database is up to date");
            Ok(())
        }
        Command::Import {
            file,
            format,
            server,
            key,
            batch_size,
            quiet,
        } => {
            let format = format.unwrap_or_else(|| import::Format::guess(&file));
            let totals = import::run(import::ImportOptions {
                server,
                key,
                path: file,
                format,
                batch_size,
                progress: !quiet,
            })
            .await?;
            println!(
                "imported {} rows: {} created, {} updated, {} unchanged",
                totals.rows, totals.created, totals.updated, totals.unchanged
            );
            Ok(())
        }
        Command::Admin { common, command } => {
            let config = load(&common, None)?;
            telemetry::init(config.log_format, &config.telemetry)?;
            let url = &config.database.url;
            // An operator in the wrong directory, or without the server's config,
            // would otherwise work on a new empty database and wonder where
            // everything went.
            // Bootstrap too: an operator key in a database no hub serves is no use.
            if let Some(path) = sqlite_file(url).filter(|p| !p.exists()) {
                let at = std::path::absolute(&path).unwrap_or(path);
                anyhow::bail!(
                    "there is no database at {} ({url}); run this where the hub keeps its \
                     database, or pass the server's --database-url or --config (a new hub's \
                     database is made by `liaison serve` or `liaison migrate`)",
                    at.display()
                );
            }
            eprintln!("database: {}", crate::config::redact_url(url));
            let store = Store::connect(&config.store_options()).await?;
            store.migrate().await?;
            let hub = Hub::build(store.clone(), &config).await?;
            let result = match command {
                AdminCommand::Backup { path } => store.backup(&path).await.map(|()| {
                    println!("backed up into {}", path.display());
                }),
                AdminCommand::RotatePageTokenKey => {
                    if config.server.page_token_keys.0.is_empty() {
                        crate::api::paging::rotate_stored_key(&store)
                            .await
                            .map(|()| println!("page tokens are sealed with a new key"))
                    } else {
                        Err(anyhow::anyhow!(
                            "the page-token keys are given in the config \
                             (server.page_token_keys): rotate them there"
                        ))
                    }
                }
                AdminCommand::Audit { command } => audit::admin(&store, &hub.audit, command).await,
                AdminCommand::Metrics { command } => {
                    admin::metrics(&store, &hub.customers, command).await
                }
                command => admin::admin(AdminApi::new(hub), &store, command).await,
            };
            store.close().await;
            result
        }
    }
}

/// A progress bar of 30 cells and the percentage: `[#####.....]  50%`.
fn bar(fraction: f64) -> String {
    let width = 30;
    let fraction = fraction.clamp(0.0, 1.0);
    let filled = (fraction * width as f64) as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        ".".repeat(width - filled),
        fraction * 100.0
    )
}

/// The hub's address as `--server` gives it, `http://` added when it names no scheme
/// (`127.0.0.1:50051`), with the connect timeout the commands use; the message says
/// what a good address looks like.
pub(crate) fn hub_endpoint(server: &str) -> anyhow::Result<(String, tonic::transport::Endpoint)> {
    let url = if server.contains("://") {
        server.trim().to_owned()
    } else {
        format!("http://{}", server.trim())
    };
    let bad = || {
        anyhow::anyhow!(
            "--server {server:?} is not an address such as 127.0.0.1:50051 or \
             https://hub.example.com"
        )
    };
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|_| bad())?;
    if uri.host().is_none_or(str::is_empty) || !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad());
    }
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|_| bad())?
        .connect_timeout(std::time::Duration::from_secs(5));
    Ok((url, endpoint))
}

/// Connects to the hub at `url`, saying plainly when nothing answers there.
pub(crate) async fn connect_hub(
    url: &str,
    endpoint: tonic::transport::Endpoint,
) -> anyhow::Result<tonic::transport::Channel> {
    endpoint.connect().await.map_err(|e| {
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        anyhow::anyhow!(
            "cannot reach the hub at {url} ({cause}); is `liaison serve` running there, \
             on that port?"
        )
    })
}

/// The file a SQLite database URL names (`sqlite://liaison.db`, `sqlite:data/hub.db`,
/// options after `?` left out); `None` for an in-memory database or another backend.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}
