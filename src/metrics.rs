//! Prometheus metrics: what the edge, the event streams and the workers count, and
//! the endpoint (`metrics.listen`, `GET /metrics`) that serves them.
//!
//! Labels are bounded: method names come from the compiled services (anything else is
//! `unknown`), codes, outcomes, channels and states are fixed sets. No customer id,
//! organization, URL or address ever becomes a label.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BacklogLabels {
    pub channel: &'static str,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of the process. Workers and the edge record into [`metrics()`].
pub struct Metrics {
    registry: Registry,
    pub rpcs: Family<RpcLabels, Counter>,
    pub rpc_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pub open_streams: Gauge,
    /// Seconds from an event's commit to its send on a WatchEvents stream.
    pub feed_lag_seconds: Histogram,
    pub outbox: Family<BacklogLabels, Gauge>,
    pub webhook_attempts: Family<OutcomeLabels, Counter>,
    pub webhook_endpoints: Family<StateLabels, Gauge>,
    pub smtp: Family<OutcomeLabels, Counter>,
    pub db_connections: Family<StateLabels, Gauge>,
    pub sla_timers_due: Gauge,
    pub rate_limited: Counter,
    /// Results of webhook attempts and emails dropped because the worker no longer
    /// held the lease (another took the work over).
    pub late_results: Family<QueueLabels, Counter>,
    known_methods: HashSet<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: &'static str,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("liaison");
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpcs",
            "RPCs finished, by method and status code",
            rpcs.clone(),
        );
        let rpc_seconds =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "rpc_duration_seconds",
            "RPC latency at the edge (for streams: until the stream's response starts)",
            rpc_seconds.clone(),
        );
        let open_streams = Gauge::default();
        registry.register(
            "event_streams_open",
            "Open WatchEvents streams on this replica",
            open_streams.clone(),
        );
        let feed_lag_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "event_feed_lag_seconds",
            "Time from an event's commit to its send on a WatchEvents stream",
            feed_lag_seconds.clone(),
        );
        let outbox = Family::<BacklogLabels, Gauge>::default();
        registry.register(
            "outbox_backlog",
            "Undelivered webhook deliveries, notifications and emails, by state (read at scrape)",
            outbox.clone(),
        );
        let webhook_attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts on this replica, by outcome",
            webhook_attempts.clone(),
        );
        let webhook_endpoints = Family::<StateLabels, Gauge>::default();
        registry.register(
            "webhook_endpoints",
            "Webhook endpoints by health: enabled, failing (enabled, last attempts failed), disabled",
            webhook_endpoints.clone(),
        );
        let smtp = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "smtp_sends",
            "Emails handed to the transport on this replica, by outcome",
            smtp.clone(),
        );
        let db_connections = Family::<StateLabels, Gauge>::default();
        registry.register(
            "database_connections",
            "Database pool connections of this replica: idle or in use",
            db_connections.clone(),
        );
        let sla_timers_due = Gauge::default();
        registry.register(
            "case_timers_due",
            "Case timers (SLA warnings and breaches, overdue tasks, automatic transitions) due now and not yet fired",
            sla_timers_due.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Requests refused with RESOURCE_EXHAUSTED by a rate limit",
            rate_limited.clone(),
        );
        let late_results = Family::<QueueLabels, Counter>::default();
        registry.register(
            "late_results_dropped",
            "Webhook attempts and emails whose result was dropped because their lease had passed to another worker",
            late_results.clone(),
        );
        for queue in ["webhooks", "email"] {
            let _ = late_results.get_or_create(&QueueLabels { queue });
        }
        // Every outcome from the start, at 0, so rates and alerts see the series
        // before the first event of each kind.
        for outcome in ["succeeded", "retrying", "dead"] {
            let _ = webhook_attempts.get_or_create(&OutcomeLabels { outcome });
        }
        for outcome in ["sent", "bounced", "retrying", "dead"] {
            let _ = smtp.get_or_create(&OutcomeLabels { outcome });
        }
        Self {
            registry,
            rpcs,
            rpc_seconds,
            open_streams,
            feed_lag_seconds,
            outbox,
            webhook_attempts,
            webhook_endpoints,
            smtp,
            db_connections,
            sla_timers_due,
            rate_limited,
            late_results,
            known_methods: known_methods(),
        }
    }

    /// Counts one finished RPC. `path` is the request path; unknown paths are counted
    /// under `unknown`, so a caller cannot grow the label set.
    pub fn record_rpc(&self, path: &str, code: tonic::Code, seconds: f64) {
        let method = if self.known_methods.contains(path) {
            path.trim_start_matches('/').to_owned()
        } else {
            "unknown".to_owned()
        };
        self.rpcs
            .get_or_create(&RpcLabels {
                method: method.clone(),
                code: format!("{code:?}"),
            })
            .inc();
        self.rpc_seconds
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }

    pub fn webhook_attempt(&self, outcome: &'static str) {
        self.webhook_attempts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a result dropped because its worker had lost the lease.
    pub fn late_result(&self, queue: &'static str) {
        tracing::warn!(
            queue,
            "a result came after its lease passed to another worker; dropped"
        );
        self.late_results
            .get_or_create(&QueueLabels { queue })
            .inc();
    }

    pub fn smtp_outcome(&self, outcome: &'static str) {
        self.smtp.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Reads the gauges that live in the database, then encodes everything in the
    /// Prometheus text format.
    pub async fn scrape(&self, store: &Store) -> String {
        match store.operational_counts(crate::domain::now()).await {
            Ok(counts) => {
                self.outbox.clear();
                for (channel, state, n) in counts.backlog {
                    self.outbox
                        .get_or_create(&BacklogLabels { channel, state })
                        .set(n);
                }
                for (state, n) in [
                    ("enabled", counts.endpoints_healthy),
                    ("failing", counts.endpoints_failing),
                    ("disabled", counts.endpoints_disabled),
                ] {
                    self.webhook_endpoints
                        .get_or_create(&StateLabels { state })
                        .set(n);
                }
                self.sla_timers_due.set(counts.timers_due);
            }
            Err(error) => tracing::warn!(%error, "metrics: cannot read the database gauges"),
        }
        let (size, idle) = store.pool_use();
        self.db_connections
            .get_or_create(&StateLabels { state: "idle" })
            .set(idle as i64);
        self.db_connections
            .get_or_create(&StateLabels { state: "in_use" })
            .set((size as usize).saturating_sub(idle) as i64);
        let mut text = String::new();
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!(%error, "metrics: encoding failed");
        }
        text
    }
}

/// `/package.Service/Method` of every compiled RPC, plus health and reflection.
fn known_methods() -> HashSet<String> {
    let mut known = HashSet::new();
    for set in [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(pool) = prost_reflect::DescriptorPool::decode(set) else {
            continue;
        };
        for service in pool.services() {
            for method in service.methods() {
                known.insert(format!("/{}/{}", service.full_name(), method.name()));
            }
        }
    }
    for reflection in ["v1", "v1alpha"] {
        known.insert(format!(
            "/grpc.reflection.{reflection}.ServerReflection/ServerReflectionInfo"
        ));
    }
    known
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Binds the metrics endpoint (`metrics.listen`); `None` when it is off.
pub async fn bind(listen: &str) -> anyhow::Result<Option<TcpListener>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = listen.parse().context("metrics.listen")?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("Failed to listen for metrics on {addr}"))?;
    Ok(Some(listener))
}

/// Serves `GET /metrics` (and `/` with a pointer to it) until dropped.
pub async fn serve(listener: Option<TcpListener>, store: Store) {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "metrics endpoint ready");
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let store = store.clone();
                async move {
                    let response = match (request.method(), request.uri().path()) {
                        (&http::Method::GET, "/metrics") => http::Response::builder()
                            .header(
                                http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(metrics().scrape(&store).await))),
                        (&http::Method::GET, _) => http::Response::builder()
                            .status(http::StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n"))),
                        _ => http::Response::builder()
                            .status(http::StatusCode::METHOD_NOT_ALLOWED)
                            .body(Full::new(Bytes::new())),
                    };
                    Ok::<_, http::Error>(response.expect("static response parts"))
                }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_share_one_label() {
        let m = Metrics::new();
        m.record_rpc(
            "/liaison.v1.AdminService/GetOrganization",
            tonic::Code::Ok,
            0.01,
        );
        for i in 0..3 {
            m.record_rpc(
                &format!("/evil.Service/Probe{i}"),
                tonic::Code::Unimplemented,
                0.0,
            );
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &m.registry).unwrap();
        assert!(text.contains(
            r#"liaison_rpcs_total{method="liaison.v1.AdminService/GetOrganization",code="Ok"} 1"#
        ));
        assert!(text.contains(r#"liaison_rpcs_total{method="unknown",code="Unimplemented"} 3"#));
        assert!(!text.contains("evil"), "{text}");
        assert!(
            m.known_methods
                .contains("/liaison.v1.CaseService/TransitionCase")
        );
        assert!(m.known_methods.contains("/grpc.health.v1.Health/Check"));
    }
}
