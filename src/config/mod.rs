//! Configuration in layers: built-in defaults, then a TOML file, then `LIAISON_*`
//! environment variables, then command-line flags. Validated once, at start.
//!
//! Every key has an environment variable: the key's path joined by `_` and upper-cased
//! behind `LIAISON_` (`database.url` → `LIAISON_DATABASE_URL`).

mod layers;
mod sections;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub use self::layers::{ENV_PREFIX, redact_url};
use self::layers::{env_name, leaf_paths, lookup, merge, set};
pub use self::sections::*;
pub use crate::tls::TlsConfig;

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
    pub mapping: MappingConfig,
    pub scorecards: ScorecardsConfig,
    pub audit: AuditConfig,
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

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            log_format: LogFormat::Text,
            database: DatabaseConfig::default(),
            server: ServerConfig::default(),
            customers: CustomersConfig::default(),
            mapping: MappingConfig::default(),
            scorecards: ScorecardsConfig::default(),
            audit: AuditConfig::default(),
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
        let min = crate::domain::mapping::MIN_THRESHOLD;
        if self.mapping.threshold < min || self.mapping.threshold > 1000 {
            bail!("mapping.threshold must be between {min} and 1000");
        }
        if self.mapping.refresh_interval_secs > 30 * 24 * 3600 {
            bail!("mapping.refresh_interval_secs must be at most 30 days");
        }
        if !(1..=24 * 3600).contains(&self.scorecards.aggregate_interval_secs) {
            bail!("scorecards.aggregate_interval_secs must be between 1 second and 1 day");
        }
        if !(1..=7 * 24 * 3600).contains(&self.customers.rfm_interval_secs) {
            bail!("customers.rfm_interval_secs must be between 1 second and 7 days");
        }
        if !(1..=7 * 24 * 3600).contains(&self.audit.checkpoint_interval_secs) {
            bail!("audit.checkpoint_interval_secs must be between 1 and 7 days");
        }
        if !self.audit.signing_key.is_empty() {
            crate::domain::audit::SigningKey::parse(&self.audit.signing_key)
                .map_err(|e| anyhow::anyhow!("audit.signing_key {e}"))?;
        }
        for (i, key) in self.audit.trusted_public_keys.iter().enumerate() {
            crate::domain::audit::parse_public_key(key)
                .map_err(|e| anyhow::anyhow!("audit.trusted_public_keys[{i}] {e}"))?;
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
        for secret in [
            &mut shown.smtp.password,
            &mut shown.customers.match_secret,
            &mut shown.audit.signing_key,
        ] {
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

/// Every environment variable the configuration reads (`LIAISON_…`), besides
/// `LIAISON_CONFIG` and `LIAISON_LOG`.
pub fn known_env_names() -> Vec<String> {
    let table = toml::Table::try_from(Config::default()).expect("the defaults encode");
    leaf_paths(&table).iter().map(|p| env_name(p)).collect()
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

    /// The workflow template files are read here (the domain only checks what was
    /// read): a file beside the built-ins loads, an unreadable one is named.
    #[test]
    fn workflow_template_files_are_read_and_an_unreadable_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = dir.path().join("tiny.toml");
        std::fs::write(
            &tiny,
            "name = \"tiny\"\nroles = [\"vendor\"]\ninitial = \"open\"\n\
             [[states]]\nname = \"open\"\n[[states]]\nname = \"done\"\nfinal = true\n\
             [[transitions]]\nname = \"finish\"\nfrom = [\"open\"]\nto = \"done\"\n\
             roles = [\"vendor\"]\n",
        )
        .unwrap();
        let config = WorkflowsConfig {
            templates: vec![tiny.display().to_string()],
        };
        let workflows = config.load().unwrap();
        assert!(workflows.get("tiny").is_some_and(|t| !t.built_in));
        assert!(workflows.get("service_case").is_some());
        let missing = dir.path().join("missing.toml");
        let config = WorkflowsConfig {
            templates: vec![missing.display().to_string()],
        };
        let err = config.load().unwrap_err().to_string();
        assert!(
            err.contains("workflows.templates") && err.contains("missing.toml: cannot read it"),
            "{err}"
        );
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
