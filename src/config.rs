//! Configuration in layers: built-in defaults, then a TOML file, then `LIAISON_*`
//! environment variables, then command-line flags. Validated once, at start.
//!
//! Every key has an environment variable: the key's path joined by `_` and upper-cased
//! behind `LIAISON_` (`database.url` → `LIAISON_DATABASE_URL`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub use crate::tls::TlsConfig;

/// Environment variables are read with this prefix.
pub const ENV_PREFIX: &str = "LIAISON_";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen: String,
    /// `text` (human) or `json` (one object per line).
    pub log_format: LogFormat,
    pub database: DatabaseConfig,
    pub server: ServerConfig,
    pub customers: CustomersConfig,
    pub events: EventsConfig,
    pub webhooks: WebhooksConfig,
    pub email: EmailConfig,
    pub smtp: SmtpConfig,
    pub workflows: WorkflowsConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub telemetry: TelemetryConfig,
}

/// Token buckets per API key and per organization, on each replica. A rate of 0
/// turns that bucket off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second one API key (or client certificate) may sustain.
    pub key_requests_per_second: f64,
    /// Requests one key may make at once after a quiet spell.
    pub key_burst: u64,
    /// Requests per second all keys of one organization may sustain together.
    pub organization_requests_per_second: f64,
    pub organization_burst: u64,
    /// Overrides for single organizations, by slug (`[limits.organizations.acme]`).
    pub organizations: BTreeMap<String, OrganizationLimits>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            key_requests_per_second: 500.0,
            key_burst: 1000,
            organization_requests_per_second: 1000.0,
            organization_burst: 2000,
            organizations: BTreeMap::new(),
        }
    }
}

/// One organization's own limits; what is not set follows the defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OrganizationLimits {
    pub key_requests_per_second: Option<f64>,
    pub key_burst: Option<u64>,
    pub organization_requests_per_second: Option<f64>,
    pub organization_burst: Option<u64>,
    /// Open WatchEvents streams (instead of `events.max_streams_per_organization`).
    pub max_streams: Option<u64>,
    /// Largest request message (at most `server.max_message_bytes`).
    pub max_request_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint (`GET /metrics`). Empty: off.
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector for trace export (`http://127.0.0.1:4317`; plaintext only).
    /// Needs the `otlp` feature (on by default). Empty: off.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "liaison".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowsConfig {
    /// TOML files of workflow templates, loaded beside the built-in ones (a file that
    /// names a built-in template replaces it). Invalid files stop the hub at start.
    pub templates: Vec<String>,
}

impl WorkflowsConfig {
    /// The built-in templates and those of the files in `templates`; every problem of
    /// every file in one error.
    pub fn load(&self) -> anyhow::Result<crate::domain::case::workflow::Workflows> {
        let files = self
            .templates
            .iter()
            .map(|path| (path.clone(), std::fs::read_to_string(path)))
            .collect();
        crate::domain::case::workflow::Workflows::with_files(files)
            .map_err(|e| anyhow::anyhow!("workflows.templates: {e}"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// The sender of every email: `Name <address>` or an address.
    pub from: String,
    /// Without `smtp.url`, each email is written here as an `.eml` file.
    pub outbox_dir: String,
    /// A directory whose templates (same names as the built-in ones) replace them.
    pub templates_dir: String,
    /// Events about one case or customer within this window become one email.
    pub coalesce_secs: u64,
    /// Emails sent per second at most, per replica.
    pub max_per_second: u64,
    /// Seconds before each attempt; SMTP 4xx and connection failures retry, 5xx fail
    /// at once (a bounce, shown on the member).
    pub retry_schedule_secs: Vec<u64>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            from: "Liaison <liaison@localhost>".into(),
            outbox_dir: "mail".into(),
            templates_dir: String::new(),
            coalesce_secs: 120,
            max_per_second: 10,
            retry_schedule_secs: vec![0, 60, 300, 1800, 7200, 21600],
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtps://host[:465]` (TLS), `smtp://host:587?tls=required` (STARTTLS required)
    /// or `smtp://host[:25]` (plain, for a local relay). Empty: write `.eml` files.
    pub url: String,
    pub username: String,
    pub password: String,
    /// Pooled connections to the server.
    pub max_connections: u32,
    /// A PEM file of CA certificates trusted for the server's certificate, besides
    /// the public web roots (a private PKI). Needs a TLS `url`.
    pub extra_ca_file: String,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: String::new(),
            password: String::new(),
            max_connections: 4,
            extra_ca_file: String::new(),
        }
    }
}

/// Debug output masks the password.
impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("max_connections", &self.max_connections)
            .field("extra_ca_file", &self.extra_ca_file)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Allow `http://` endpoint URLs (otherwise `https://` only).
    pub allow_http: bool,
    /// Allow endpoints on loopback, private, link-local, CGNAT and multicast addresses.
    pub allow_private_networks: bool,
    /// An attempt without a response in this time fails and is retried.
    pub timeout_secs: u64,
    /// Seconds before each attempt: the first, then each retry. After the last, a
    /// delivery is dead (it can still be redelivered).
    pub retry_schedule_secs: Vec<u64>,
    /// Events larger than this as JSON are not sent (the attempt records why).
    pub max_payload_bytes: u64,
    /// Deliveries in flight at once on this replica.
    pub concurrency: u64,
    /// Deliveries in flight at once to one endpoint, per replica (an `ordered`
    /// endpoint has one in all).
    pub max_in_flight_per_endpoint: u64,
    /// How long a rotated-out secret keeps signing, unless the rotation says otherwise.
    pub secret_overlap_secs: u64,
    /// An endpoint whose attempts have all failed for this long is disabled.
    pub disable_after_failing_secs: u64,
    /// A PEM file of CA certificates trusted for receivers' certificates, besides the
    /// public web roots (receivers under a private PKI).
    pub extra_ca_file: String,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_http: false,
            allow_private_networks: false,
            timeout_secs: 15,
            // Immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
            retry_schedule_secs: vec![0, 5, 300, 1800, 7200, 18000, 36000, 36000],
            max_payload_bytes: 256 * 1024,
            concurrency: 256,
            max_in_flight_per_endpoint: 8,
            secret_overlap_secs: 24 * 3600,
            disable_after_failing_secs: 5 * 24 * 3600,
            extra_ca_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Events older than this many days are pruned from the feeds.
    pub retention_days: u64,
    /// An idle WatchEvents stream sends a progress message this often.
    pub heartbeat_secs: u64,
    /// Open WatchEvents streams per organization, and on this replica in all.
    pub max_streams_per_organization: u64,
    pub max_streams: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            heartbeat_secs: 15,
            max_streams_per_organization: 100,
            max_streams: 10_000,
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CustomersConfig {
    /// ISO 3166-1 region for phone numbers written without a country code.
    pub default_phone_region: String,
    /// Key of the match-key HMACs, base64 (at least 32 bytes). Empty: the hub generates
    /// one on first start and keeps it in the database. Replicas must share it.
    pub match_secret: String,
}

impl Default for CustomersConfig {
    fn default() -> Self {
        Self {
            default_phone_region: "US".into(),
            match_secret: String::new(),
        }
    }
}

/// Debug output masks the match secret.
impl std::fmt::Debug for CustomersConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.match_secret.is_empty() {
            ""
        } else {
            "***"
        };
        f.debug_struct("CustomersConfig")
            .field("default_phone_region", &self.default_phone_region)
            .field("match_secret", &secret)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DB`.
    pub url: String,
    /// PostgreSQL pool size per replica.
    pub max_connections: u32,
    /// How long a request waits for a free connection before failing.
    pub acquire_timeout_secs: u64,
}

/// Debug output masks the password in `url`, so a logged config leaks no secret.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_secs", &self.acquire_timeout_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Concurrent requests served on one HTTP/2 connection.
    pub concurrency_per_connection: usize,
    /// A unary request running longer than this is cancelled with DEADLINE_EXCEEDED.
    pub request_timeout_secs: u64,
    /// HTTP/2 keepalive ping interval; a peer that does not answer within
    /// `keepalive_timeout_secs` is disconnected.
    pub keepalive_interval_secs: u64,
    pub keepalive_timeout_secs: u64,
    /// On SIGINT/SIGTERM, in-flight requests get this long to finish.
    pub shutdown_grace_secs: u64,
    /// Largest header list (names and values) of one request; a request over it fails
    /// alone (other streams on its connection carry on).
    pub max_header_list_bytes: u32,
    /// Keys that seal page tokens (base64, 32 bytes each; the first seals, all open, so
    /// a rotation lists the new key first and keeps the old one for an hour). Empty:
    /// keys kept in the database, shared by every replica
    /// (`liaison admin rotate-page-token-key`).
    pub page_token_keys: SecretList,
}

/// A list of secrets; debug output shows how many, not what.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct SecretList(pub Vec<String>);

impl std::fmt::Debug for SecretList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} secret(s)]", self.0.len())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            log_format: LogFormat::Text,
            database: DatabaseConfig::default(),
            server: ServerConfig::default(),
            customers: CustomersConfig::default(),
            events: EventsConfig::default(),
            webhooks: WebhooksConfig::default(),
            email: EmailConfig::default(),
            smtp: SmtpConfig::default(),
            workflows: WorkflowsConfig::default(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://liaison.db".into(),
            max_connections: 16,
            acquire_timeout_secs: 5,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            // 4 MiB: gRPC's customary default, ample for a 1,000-record batch.
            max_message_bytes: 4 * 1024 * 1024,
            concurrency_per_connection: 256,
            request_timeout_secs: 30,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            shutdown_grace_secs: 30,
            // 16 KiB: what HTTP/2 peers commonly advertise; metadata beyond it is abuse.
            max_header_list_bytes: 16 * 1024,
            page_token_keys: SecretList::default(),
        }
    }
}

/// Values given as flags; each overrides everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Loads defaults < `file` < environment (`env` yields `(name, value)` pairs) <
    /// `overrides`, then validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> anyhow::Result<Self> {
        let defaults =
            toml::Table::try_from(Config::default()).context("Failed to encode the defaults")?;
        let mut table = defaults.clone();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("Failed to read the config file {}", path.display()))?;
            let from_file: toml::Table = toml::from_str(&text)
                .with_context(|| format!("{} is not valid TOML", path.display()))?;
            merge(&mut table, from_file);
        }
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let known = leaf_paths(&defaults);
        for (name, value) in &env {
            if name == "LIAISON_CONFIG"
                || name.starts_with("LIAISON_TEST_")
                // Read by the benchmark harness (`cargo bench --bench hub`), whose
                // environment the hub it starts inherits.
                || name.starts_with("LIAISON_BENCH_")
                || name == "LIAISON_LOG"
                // Read by the build script only (`liaison --version`).
                || name == "LIAISON_BUILD_COMMIT"
                // Read by `liaison import`, a client of the hub.
                || name == "LIAISON_SERVER"
                || name == "LIAISON_API_KEY"
            {
                continue;
            }
            let Some(path) = known.iter().find(|p| env_name(p) == *name) else {
                bail!(
                    "unknown environment variable {name}; known: {}",
                    known
                        .iter()
                        .map(|p| env_name(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            let like = lookup(&defaults, path).expect("known paths come from the defaults");
            set(&mut table, path, value, like)
                .with_context(|| format!("environment variable {name}"))?;
        }
        let text = toml::Value::String(String::new());
        if let Some(listen) = &overrides.listen {
            set(&mut table, "listen", listen, &text)?;
        }
        if let Some(url) = &overrides.database_url {
            set(&mut table, "database.url", url, &text)?;
        }
        if let Some(format) = overrides.log_format {
            set(
                &mut table,
                "log_format",
                if format == LogFormat::Json {
                    "json"
                } else {
                    "text"
                },
                &text,
            )?;
        }
        let config: Config = table.try_into().context("Invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot; every message names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        self.workflows.load()?;
        crate::store::Dialect::of_url(&self.database.url).context("database.url")?;
        if self.webhooks.retry_schedule_secs.is_empty()
            || self.webhooks.retry_schedule_secs.len() > 20
            || self
                .webhooks
                .retry_schedule_secs
                .iter()
                .any(|s| *s > 7 * 24 * 3600)
        {
            bail!("webhooks.retry_schedule_secs must hold 1 to 20 delays of at most a week");
        }
        if self.email.retry_schedule_secs.is_empty()
            || self.email.retry_schedule_secs.len() > 20
            || self
                .email
                .retry_schedule_secs
                .iter()
                .any(|s| *s > 7 * 24 * 3600)
        {
            bail!("email.retry_schedule_secs must hold 1 to 20 delays of at most a week");
        }
        self.email
            .from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| anyhow::anyhow!("email.from is not an address: {e}"))?;
        if !self.smtp.url.is_empty()
            && !["smtp://", "smtps://"]
                .iter()
                .any(|p| self.smtp.url.starts_with(p))
        {
            bail!("smtp.url must start with smtp:// or smtps://");
        }
        if self.smtp.url.is_empty() && self.email.outbox_dir.is_empty() {
            bail!("email.outbox_dir is required when smtp.url is not set");
        }
        let ranges: [(&str, u64, u64, u64); 20] = [
            (
                "server.max_header_list_bytes",
                self.server.max_header_list_bytes.into(),
                1024,
                1024 * 1024,
            ),
            (
                "email.coalesce_secs",
                self.email.coalesce_secs,
                0,
                24 * 3600,
            ),
            ("email.max_per_second", self.email.max_per_second, 1, 10_000),
            ("webhooks.timeout_secs", self.webhooks.timeout_secs, 1, 300),
            (
                "webhooks.max_payload_bytes",
                self.webhooks.max_payload_bytes,
                1024,
                16 * 1024 * 1024,
            ),
            ("webhooks.concurrency", self.webhooks.concurrency, 1, 10_000),
            (
                "webhooks.max_in_flight_per_endpoint",
                self.webhooks.max_in_flight_per_endpoint,
                1,
                1000,
            ),
            (
                "webhooks.secret_overlap_secs",
                self.webhooks.secret_overlap_secs,
                0,
                7 * 24 * 3600,
            ),
            (
                "webhooks.disable_after_failing_secs",
                self.webhooks.disable_after_failing_secs,
                1,
                365 * 24 * 3600,
            ),
            ("events.retention_days", self.events.retention_days, 1, 3650),
            ("events.heartbeat_secs", self.events.heartbeat_secs, 1, 3600),
            (
                "events.max_streams_per_organization",
                self.events.max_streams_per_organization,
                1,
                1_000_000,
            ),
            ("events.max_streams", self.events.max_streams, 1, 1_000_000),
            (
                "database.max_connections",
                self.database.max_connections.into(),
                1,
                1000,
            ),
            (
                "database.acquire_timeout_secs",
                self.database.acquire_timeout_secs,
                1,
                600,
            ),
            (
                "server.max_message_bytes",
                self.server.max_message_bytes as u64,
                1024,
                256 * 1024 * 1024,
            ),
            (
                "server.concurrency_per_connection",
                self.server.concurrency_per_connection as u64,
                1,
                100_000,
            ),
            (
                "server.request_timeout_secs",
                self.server.request_timeout_secs,
                1,
                3600,
            ),
            (
                "server.keepalive_interval_secs",
                self.server.keepalive_interval_secs,
                1,
                3600,
            ),
            (
                "server.keepalive_timeout_secs",
                self.server.keepalive_timeout_secs,
                1,
                3600,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                bail!("{key} must be between {min} and {max} (got {value})");
            }
        }
        self.validate_operations()?;
        if self.server.shutdown_grace_secs > 3600 {
            bail!("server.shutdown_grace_secs must be at most 3600");
        }
        crate::domain::customer::PhoneRegion::parse(&self.customers.default_phone_region)
            .map_err(|v| anyhow::anyhow!("customers.default_phone_region: {}", v.description))?;
        for (i, key) in self.server.page_token_keys.0.iter().enumerate() {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD.decode(key.trim());
            if bytes.map(|b| b.len()) != Ok(32) {
                bail!(
                    "server.page_token_keys: key {} must be 32 bytes in base64",
                    i + 1
                );
            }
        }
        if !self.customers.match_secret.is_empty() {
            crate::domain::match_key::MatchSecret::decode(&self.customers.match_secret)
                .context("customers.match_secret")?;
        }
        Ok(())
    }

    /// TLS, limits, metrics and telemetry.
    fn validate_operations(&self) -> anyhow::Result<()> {
        let tls = &self.tls;
        if tls.cert.is_empty() != tls.key.is_empty() {
            bail!("tls.cert and tls.key must be set together");
        }
        if tls.cert.is_empty() && (!tls.client_ca.is_empty() || tls.require_client_cert) {
            bail!("tls.client_ca and tls.require_client_cert need tls.cert and tls.key");
        }
        if tls.require_client_cert && tls.client_ca.is_empty() {
            bail!("tls.require_client_cert needs tls.client_ca");
        }
        if !(1..=300).contains(&tls.handshake_timeout_secs) {
            bail!(
                "tls.handshake_timeout_secs must be between 1 and 300 (got {})",
                tls.handshake_timeout_secs
            );
        }
        if !tls.cert.is_empty() {
            crate::tls::server_config(tls).context("tls")?;
        }
        let limits = &self.limits;
        check_rate(
            "limits.key_requests_per_second",
            limits.key_requests_per_second,
        )?;
        check_rate(
            "limits.organization_requests_per_second",
            limits.organization_requests_per_second,
        )?;
        check_burst("limits.key_burst", limits.key_burst)?;
        check_burst("limits.organization_burst", limits.organization_burst)?;
        for (slug, o) in &limits.organizations {
            let at = |key: &str| format!("limits.organizations.{slug}.{key}");
            crate::domain::Slug::parse(slug)
                .map_err(|v| anyhow::anyhow!("limits.organizations.{slug}: {}", v.description))?;
            if let Some(rate) = o.key_requests_per_second {
                check_rate(&at("key_requests_per_second"), rate)?;
            }
            if let Some(rate) = o.organization_requests_per_second {
                check_rate(&at("organization_requests_per_second"), rate)?;
            }
            if let Some(burst) = o.key_burst {
                check_burst(&at("key_burst"), burst)?;
            }
            if let Some(burst) = o.organization_burst {
                check_burst(&at("organization_burst"), burst)?;
            }
            if o.max_streams.is_some_and(|n| !(1..=1_000_000).contains(&n)) {
                bail!("{} must be between 1 and 1000000", at("max_streams"));
            }
            let max = self.server.max_message_bytes as u64;
            if o.max_request_bytes
                .is_some_and(|n| !(1024..=max).contains(&n))
            {
                bail!(
                    "{} must be between 1024 and server.max_message_bytes ({max})",
                    at("max_request_bytes")
                );
            }
        }
        if !self.metrics.listen.is_empty() {
            self.metrics.listen.parse::<SocketAddr>().with_context(|| {
                format!(
                    "metrics.listen must be an address such as 127.0.0.1:9090 (got {:?})",
                    self.metrics.listen
                )
            })?;
        }
        let otlp = &self.telemetry.otlp_endpoint;
        if !otlp.is_empty() {
            // The exporter is built without TLS: an https:// collector would fail at
            // the first export with a less helpful message.
            if !otlp.starts_with("http://") {
                bail!(
                    "telemetry.otlp_endpoint must be an http:// URL (OTLP export over TLS \
                     is not supported; use a collector on a trusted network)"
                );
            }
            if !cfg!(feature = "otlp") {
                bail!(
                    "telemetry.otlp_endpoint is set, but this build has no OTLP export \
                     (build with the default features)"
                );
            }
        }
        if self.telemetry.service_name.is_empty() {
            bail!("telemetry.service_name must not be empty");
        }
        Ok(())
    }

    /// The configuration as TOML with every secret masked, for `liaison config check`.
    pub fn to_masked_toml(&self) -> anyhow::Result<String> {
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
        shown.smtp.url = redact_url(&shown.smtp.url);
        for secret in shown.server.page_token_keys.0.iter_mut() {
            *secret = "***".into();
        }
        for secret in [&mut shown.smtp.password, &mut shown.customers.match_secret] {
            if !secret.is_empty() {
                *secret = "***".into();
            }
        }
        toml::to_string(&shown).context("Failed to encode the configuration")
    }

    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen.parse().with_context(|| {
            format!(
                "listen must be an address such as 127.0.0.1:50051 (got {:?})",
                self.listen
            )
        })
    }

    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            url: self.database.url.clone(),
            max_connections: self.database.max_connections,
            acquire_timeout: Duration::from_secs(self.database.acquire_timeout_secs),
        }
    }
}

fn check_rate(key: &str, rate: f64) -> anyhow::Result<()> {
    if !(rate.is_finite() && (0.0..=1_000_000.0).contains(&rate)) {
        bail!("{key} must be between 0 (off) and 1000000 requests per second (got {rate})");
    }
    Ok(())
}

fn check_burst(key: &str, burst: u64) -> anyhow::Result<()> {
    if !(1..=10_000_000).contains(&burst) {
        bail!("{key} must be between 1 and 10000000 (got {burst})");
    }
    Ok(())
}

/// `url` with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest
        .split_once('/')
        .map_or((rest, None), |(a, t)| (a, Some(t)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    match tail {
        Some(tail) => format!("{scheme}://{authority}/{tail}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// Every environment variable the configuration reads (`LIAISON_…`), besides
/// `LIAISON_CONFIG` and `LIAISON_LOG`.
pub fn known_env_names() -> Vec<String> {
    let table = toml::Table::try_from(Config::default()).expect("the defaults encode");
    leaf_paths(&table).iter().map(|p| env_name(p)).collect()
}

fn env_name(path: &str) -> String {
    format!("{ENV_PREFIX}{}", path.replace('.', "_").to_uppercase())
}

fn leaf_paths(table: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => {
                out.extend(leaf_paths(inner).into_iter().map(|p| format!("{key}.{p}")))
            }
            _ => out.push(key.clone()),
        }
    }
    out
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The value at a dotted `path`, if any.
fn lookup<'t>(table: &'t toml::Table, path: &str) -> Option<&'t toml::Value> {
    let mut parts = path.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        let value = current.get(part)?;
        if parts.peek().is_none() {
            return Some(value);
        }
        current = value.as_table()?;
    }
    None
}

/// Sets a dotted key from text, typed like the setting's default (`like`): a number
/// setting takes a number, a text setting any text (so `LIAISON_SMTP_PASSWORD=123456`
/// stays a password). A list takes comma-separated items of its items' type (`0,5,300`
/// for `webhooks.retry_schedule_secs`, `a.toml,b.toml` for `workflows.templates`).
fn set(table: &mut toml::Table, path: &str, raw: &str, like: &toml::Value) -> anyhow::Result<()> {
    fn typed(raw: &str, like: &toml::Value) -> Option<toml::Value> {
        Some(match like {
            toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse().ok()?),
            toml::Value::Float(_) => {
                toml::Value::Float(raw.trim().parse::<f64>().ok().filter(|f| f.is_finite())?)
            }
            toml::Value::Boolean(_) => toml::Value::Boolean(raw.trim().parse().ok()?),
            _ => toml::Value::String(raw.to_owned()),
        })
    }
    let what = |like: &toml::Value| match like {
        toml::Value::Integer(_) => "a whole number",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "true or false",
        _ => "text",
    };
    let value = match like {
        toml::Value::Array(items) => {
            let item = items
                .first()
                .cloned()
                .unwrap_or_else(|| toml::Value::String(String::new()));
            let parts = raw.split(',').map(str::trim).filter(|p| !p.is_empty());
            let mut out = Vec::new();
            for part in parts {
                out.push(
                    typed(part, &item)
                        .with_context(|| format!("{path}: {part:?} is not {}", what(&item)))?,
                );
            }
            toml::Value::Array(out)
        }
        like => {
            typed(raw, like).with_context(|| format!("{path}: {raw:?} is not {}", what(like)))?
        }
    };
    let mut parts: Vec<&str> = path.split('.').collect();
    let leaf = parts.pop().expect("non-empty path");
    let mut current = table;
    for part in parts {
        current = current
            .entry(part)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("config sections are tables");
    }
    current.insert(leaf.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("liaison.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:1\"\n[database]\nmax_connections = 3\nurl = \"sqlite://a.db\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[
                ("LIAISON_DATABASE_URL", "postgres://u@h/db"),
                ("LIAISON_DATABASE_MAX_CONNECTIONS", "7"),
                ("PATH", "/bin"),
            ]),
            &Overrides {
                listen: Some("127.0.0.1:9".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9");
        assert_eq!(config.database.url, "postgres://u@h/db");
        assert_eq!(config.database.max_connections, 7);
        assert_eq!(config.server, ServerConfig::default());
    }

    #[test]
    fn mistakes_are_named() {
        let err =
            Config::load(None, env(&[("LIAISON_LISTN", "x")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("LIAISON_LISTN"), "{err}");
        let err = Config::load(
            None,
            env(&[("LIAISON_DATABASE_MAX_CONNECTIONS", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("database.max_connections"),
            "{err:#}"
        );
        let err = Config::load(
            None,
            env(&[("LIAISON_DATABASE_URL", "mysql://x")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("database.url"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nmax_mesage_bytes = 1\n").unwrap();
        let err = Config::load(Some(&file), vec![], &Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("max_mesage_bytes"), "{err:#}");
    }

    #[test]
    fn environment_values_take_the_type_of_their_setting() {
        let config = Config::load(
            None,
            env(&[
                ("LIAISON_SMTP_PASSWORD", "123456"),
                ("LIAISON_SMTP_USERNAME", "true"),
                ("LIAISON_EMAIL_OUTBOX_DIR", "1.5"),
                ("LIAISON_LIMITS_KEY_REQUESTS_PER_SECOND", "7"),
                ("LIAISON_WEBHOOKS_RETRY_SCHEDULE_SECS", "0, 5,300"),
                ("LIAISON_WORKFLOWS_TEMPLATES", ""),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.smtp.password, "123456");
        assert_eq!(config.smtp.username, "true");
        assert_eq!(config.email.outbox_dir, "1.5");
        assert_eq!(config.limits.key_requests_per_second, 7.0);
        assert_eq!(config.webhooks.retry_schedule_secs, vec![0, 5, 300]);
        let err = Config::load(
            None,
            env(&[("LIAISON_DATABASE_MAX_CONNECTIONS", "eight")]),
            &Overrides::default(),
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("LIAISON_DATABASE_MAX_CONNECTIONS"), "{text}");
        assert!(text.contains("not a whole number"), "{text}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/liaison"),
            "postgres://app:***@db:5432/liaison"
        );
        assert_eq!(redact_url("sqlite://liaison.db"), "sqlite://liaison.db");
        let config = DatabaseConfig {
            url: "postgres://app:s3cret@db/liaison".into(),
            ..Default::default()
        };
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
