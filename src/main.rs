//! The `liaison` command: a thin CLI over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use liaison::api::convert::{kind_to_pb, scope_to_pb};
use liaison::api::{AdminApi, Caller, Hub};
use liaison::config::{Config, LogFormat, Overrides};
use liaison::domain::{OrganizationKind, Scope};
use liaison::pb::{self, admin_service_server::AdminService};
use liaison::startup::{Application, shutdown_signal};
use liaison::store::Store;
use liaison::telemetry;

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
        format: Option<liaison::import::Format>,
        /// The hub's gRPC address.
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
        /// The hub's gRPC address.
        #[arg(long, env = "LIAISON_SERVER", default_value = "http://127.0.0.1:50051")]
        server: String,
        /// PEM CA certificate to trust, for a hub that speaks TLS (`https://…`).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// A service name to ask about instead of the whole server.
        #[arg(long, default_value = "")]
        service: String,
    },
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

#[derive(Subcommand)]
enum AdminCommand {
    /// Creates the operator's first admin key and prints it, alone, on the last line.
    Bootstrap {
        /// Issue another operator key even if one is live.
        #[arg(long)]
        force: bool,
    },
    /// Creates an organization; prints its resource name.
    CreateOrg {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        display_name: String,
        /// vendor, distributor, retailer or other.
        #[arg(long)]
        kind: String,
    },
    /// Lists organizations: name, kind, state, display name (tab-separated).
    ListOrgs,
    /// Shows one organization.
    GetOrg { slug: String },
    /// Suspends an organization: its keys stop working.
    SuspendOrg {
        slug: String,
        #[arg(long)]
        reason: String,
    },
    /// Lifts a suspension.
    ReactivateOrg { slug: String },
    /// Issues an API key for an organization (or `operator`); prints it on the last line.
    CreateKey {
        /// Organization slug, or `operator`.
        #[arg(long)]
        org: String,
        /// read, write or admin; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long, default_value = "")]
        display_name: String,
        /// Expiry as an RFC 3339 time, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Lists API keys: name, prefix, scopes, state (tab-separated).
    ListKeys {
        /// Organization slug, or `operator`.
        #[arg(long)]
        org: String,
        #[arg(long)]
        show_revoked: bool,
    },
    /// Revokes an API key by resource name.
    RevokeKey { name: String },
    /// Takes a consistent copy of the SQLite database into PATH (`VACUUM INTO`) while
    /// the hub keeps serving. PATH must not exist.
    Backup { path: PathBuf },
    /// Seals new page tokens with a fresh key kept in the database; tokens sealed with
    /// the previous keys keep working for a day. Not for keys given in the config.
    RotatePageTokenKey,
}

fn load(common: &Common, listen: Option<String>) -> anyhow::Result<Config> {
    let overrides = Overrides {
        listen,
        database_url: common.database_url.clone(),
        log_format: common.log_format,
    };
    Config::load(common.config.as_deref(), std::env::vars(), &overrides)
}

#[tokio::main]
async fn main() -> ExitCode {
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
        } => health(&server, ca.as_deref(), service).await,
        Command::Email {
            common,
            command: EmailCommand::Test { to },
        } => {
            let config = load(&common, None)?;
            telemetry::init(config.log_format, &config.telemetry)?;
            let said =
                liaison::outbound::email::send_test(&config.email, &config.smtp, &to).await?;
            println!("sent: {said}");
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
            use liaison::domain::webhook::{WebhookSecret, verify};
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
            let format = format.unwrap_or_else(|| liaison::import::Format::guess(&file));
            let totals = liaison::import::run(liaison::import::ImportOptions {
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
            let store = Store::connect(&config.store_options()).await?;
            store.migrate().await?;
            let hub = Hub::build(store.clone(), &config).await?;
            let result = match command {
                AdminCommand::Backup { path } => store.backup(&path).await.map(|()| {
                    println!("backed up into {}", path.display());
                }),
                AdminCommand::RotatePageTokenKey => {
                    if config.server.page_token_keys.0.is_empty() {
                        liaison::api::paging::rotate_stored_key(&store)
                            .await
                            .map(|()| println!("page tokens are sealed with a new key"))
                    } else {
                        Err(anyhow::anyhow!(
                            "the page-token keys are given in the config \
                             (server.page_token_keys): rotate them there"
                        ))
                    }
                }
                command => admin(AdminApi::new(hub), &store, command).await,
            };
            store.close().await;
            result
        }
    }
}

/// A request as the operator, for calling the service in-process.
fn as_operator<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(Caller::operator());
    request
}

/// Explains a failed call the way a person at a terminal needs it.
fn explain(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut text = status.message().to_owned();
    if let Some(bad) = status.get_details_bad_request() {
        text = bad
            .field_violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
    }
    anyhow::anyhow!("{text} ({:?})", status.code())
}

fn org_name(slug: &str) -> String {
    if slug == "operator" {
        "operator".into()
    } else {
        format!("organizations/{slug}")
    }
}

fn print_org(o: &pb::Organization) {
    let kind = pb::OrganizationKind::try_from(o.kind)
        .map(|k| k.as_str_name())
        .unwrap_or("?");
    let state = pb::organization::State::try_from(o.state)
        .map(|s| s.as_str_name())
        .unwrap_or("?");
    println!("{}\t{kind}\t{state}\t{}", o.name, o.display_name);
}

async fn admin(api: AdminApi, store: &Store, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Bootstrap { force } => {
            if !force && store.operator_has_live_key(jiff::Timestamp::now()).await? {
                anyhow::bail!("the operator already has a live key; use --force to issue another");
            }
            let request = pb::CreateApiKeyRequest {
                parent: "operator".into(),
                api_key: Some(pb::ApiKey {
                    display_name: "bootstrap".into(),
                    scopes: vec![pb::ApiKeyScope::Admin as i32],
                    ..Default::default()
                }),
                request_id: String::new(),
            };
            let created = api
                .create_api_key(as_operator(request))
                .await
                .map_err(explain)?
                .into_inner();
            let name = created.api_key.map(|k| k.name).unwrap_or_default();
            println!("Created the operator key {name}. It is shown only now; keep it secret:");
            println!("{}", created.key);
        }
        AdminCommand::CreateOrg {
            slug,
            display_name,
            kind,
        } => {
            let kind = OrganizationKind::parse(&kind)
                .map_err(|v| anyhow::anyhow!("--kind {}", v.description))?;
            let kind = kind_to_pb(kind);
            let request = pb::CreateOrganizationRequest {
                organization: Some(pb::Organization {
                    slug,
                    display_name,
                    kind: kind as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            };
            print_org(
                &api.create_organization(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner(),
            );
        }
        AdminCommand::ListOrgs => {
            let mut page_token = String::new();
            loop {
                let request = pb::ListOrganizationsRequest {
                    page_size: 1000,
                    page_token,
                };
                let page = api
                    .list_organizations(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner();
                page.organizations.iter().for_each(print_org);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        AdminCommand::GetOrg { slug } => {
            let request = pb::GetOrganizationRequest {
                name: org_name(&slug),
            };
            print_org(
                &api.get_organization(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner(),
            );
        }
        AdminCommand::SuspendOrg { slug, reason } => {
            let request = pb::SuspendOrganizationRequest {
                name: org_name(&slug),
                reason,
                ..Default::default()
            };
            print_org(
                &api.suspend_organization(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner(),
            );
        }
        AdminCommand::ReactivateOrg { slug } => {
            let request = pb::ReactivateOrganizationRequest {
                name: org_name(&slug),
                ..Default::default()
            };
            print_org(
                &api.reactivate_organization(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner(),
            );
        }
        AdminCommand::CreateKey {
            org,
            scopes,
            display_name,
            expires,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| Scope::parse(s).map(|scope| scope_to_pb(scope) as i32))
                .collect::<Option<Vec<_>>>()
                .context("--scope must be read, write or admin")?;
            let expire_time = expires
                .map(|e| {
                    e.parse::<jiff::Timestamp>()
                        .map(|t| prost_types::Timestamp {
                            seconds: t.as_second(),
                            nanos: t.subsec_nanosecond(),
                        })
                        .with_context(|| format!("--expires {e:?} is not an RFC 3339 time"))
                })
                .transpose()?;
            let request = pb::CreateApiKeyRequest {
                parent: org_name(&org),
                api_key: Some(pb::ApiKey {
                    display_name,
                    scopes,
                    expire_time,
                    ..Default::default()
                }),
                request_id: String::new(),
            };
            let created = api
                .create_api_key(as_operator(request))
                .await
                .map_err(explain)?
                .into_inner();
            let name = created.api_key.map(|k| k.name).unwrap_or_default();
            println!("Created {name}. The key is shown only now:");
            println!("{}", created.key);
        }
        AdminCommand::ListKeys { org, show_revoked } => {
            let mut page_token = String::new();
            loop {
                let request = pb::ListApiKeysRequest {
                    parent: org_name(&org),
                    page_size: 1000,
                    page_token,
                    show_revoked,
                };
                let page = api
                    .list_api_keys(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner();
                for key in &page.api_keys {
                    let scopes: Vec<&str> = key
                        .scopes
                        .iter()
                        .map(|&s| {
                            pb::ApiKeyScope::try_from(s)
                                .map(|s| s.as_str_name())
                                .unwrap_or("?")
                        })
                        .collect();
                    let state = if key.revoke_time.is_some() {
                        "REVOKED"
                    } else {
                        "ACTIVE"
                    };
                    println!(
                        "{}\t{}\t{}\t{state}\t{}",
                        key.name,
                        key.prefix,
                        scopes.join(","),
                        key.display_name
                    );
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        AdminCommand::RevokeKey { name } => {
            let request = pb::RevokeApiKeyRequest {
                name,
                request_id: String::new(),
            };
            let key = api
                .revoke_api_key(as_operator(request))
                .await
                .map_err(explain)?
                .into_inner();
            println!("{}\tREVOKED", key.name);
        }
        AdminCommand::Backup { .. } | AdminCommand::RotatePageTokenKey => {
            unreachable!("handled before the admin API is needed")
        }
    }
    Ok(())
}

/// One `grpc.health.v1.Health/Check`; an error unless the answer is SERVING.
async fn health(server: &str, ca: Option<&std::path::Path>, service: String) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut endpoint = tonic::transport::Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("--server {server:?} is not a URL"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(5));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
            .context("--ca")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await
        .map_err(explain)?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        anyhow::bail!("the hub is not serving");
    }
    Ok(())
}
