//! The sections of the configuration, each with its defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::redact_url;

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

/// Account mappings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MappingConfig {
    /// Counts under this show as "fewer than" it, and segments with fewer members
    /// cannot take part. Kept by each mapping as asked for. At least 2.
    pub threshold: u32,
    /// A mapping is compared again at most this often (and only when its inputs
    /// changed by more than the threshold).
    pub refresh_interval_secs: u64,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            threshold: 5,
            refresh_interval_secs: 3600,
        }
    }
}

/// Partner scorecards.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScorecardsConfig {
    /// How often closed days are aggregated (a day is kept within this long of its
    /// end; a scorecard read aggregates a closed day it finds missing).
    pub aggregate_interval_secs: u64,
}

impl Default for ScorecardsConfig {
    fn default() -> Self {
        Self {
            aggregate_interval_secs: 600,
        }
    }
}

/// The audit log's signed checkpoints.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Base64 of a PKCS#8 Ed25519 key (`liaison audit keygen` makes one). Empty:
    /// no checkpoints are signed, and the chains alone show tampering.
    pub signing_key: String,
    /// Public keys (base64, 32 bytes) whose checkpoints verification still trusts:
    /// those of signing keys this one replaced.
    pub trusted_public_keys: Vec<String>,
    /// How often each organization's newest entry is signed, if its log grew.
    pub checkpoint_interval_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            signing_key: String::new(),
            trusted_public_keys: vec![],
            checkpoint_interval_secs: 3600,
        }
    }
}

/// Debug output masks the signing key.
impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.signing_key.is_empty() {
            ""
        } else {
            "***"
        };
        f.debug_struct("AuditConfig")
            .field("signing_key", &key)
            .field("trusted_public_keys", &self.trusted_public_keys)
            .field("checkpoint_interval_secs", &self.checkpoint_interval_secs)
            .finish()
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
    /// How often each organization's RFM quintiles are recomputed.
    pub rfm_interval_secs: u64,
}

impl Default for CustomersConfig {
    fn default() -> Self {
        Self {
            default_phone_region: "US".into(),
            match_secret: String::new(),
            rfm_interval_secs: 3600,
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
            .field("rfm_interval_secs", &self.rfm_interval_secs)
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
    /// PostgreSQL connections per replica: a quarter (at least one) for reads outside
    /// a transaction, the rest (at least one) for writes and the workers.
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
    /// Where HTTP/JSON is served apart from gRPC (`0.0.0.0:8080`). Empty: on the gRPC
    /// port, told apart by content type; set, the gRPC port serves gRPC only.
    pub http_listen: String,
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
            http_listen: String::new(),
        }
    }
}
