//! Builds the hub from a configuration and runs it until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::api::edge::EdgeLayer;
use crate::api::{
    AccountMappingApi, AdminApi, AuditApi, CaseApi, CustomerApi, EventApi, Hub, InteractionApi,
    MemberApi, OperationsApi, PartnershipApi, SharingApi, WebhookApi,
};
use crate::config::{Config, redact_url};
use crate::google::longrunning::operations_server::OperationsServer;
use crate::outbound::Shutdown;
use crate::outbound::email::EmailWorker;
use crate::outbound::webhooks::{Sender, WebhookWorker};
use crate::pb::account_mapping_service_server::AccountMappingServiceServer;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::case_service_server::CaseServiceServer;
use crate::pb::customer_service_server::CustomerServiceServer;
use crate::pb::event_service_server::EventServiceServer;
use crate::pb::interaction_service_server::InteractionServiceServer;
use crate::pb::member_service_server::MemberServiceServer;
use crate::pb::partnership_service_server::PartnershipServiceServer;
use crate::pb::sharing_service_server::SharingServiceServer;
use crate::pb::webhook_service_server::WebhookServiceServer;
use crate::store::Store;
use crate::tls::TlsServer;

/// After the shutdown grace, how long workers get to release the leases of what they
/// cut short: a few statements each.
const RELEASE_WAIT: Duration = Duration::from_secs(5);
/// How often forgotten `request_id`s are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// The names health checks report on, besides the whole server ("").
const SERVICE_NAMES: &[&str] = &[
    "liaison.v1.AdminService",
    "liaison.v1.MemberService",
    "liaison.v1.PartnershipService",
    "liaison.v1.CustomerService",
    "liaison.v1.SharingService",
    "liaison.v1.InteractionService",
    "liaison.v1.EventService",
    "liaison.v1.WebhookService",
    "liaison.v1.CaseService",
    "liaison.v1.AccountMappingService",
    "liaison.v1.AuditService",
    "google.longrunning.Operations",
];

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// HTTP/JSON's own port, when `server.http_listen` is set.
    http_listener: Option<TcpListener>,
    http_addr: Option<SocketAddr>,
    metrics_listener: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
    tls: Option<Arc<TlsServer>>,
    hub: Hub,
    /// Sends webhooks (the worker's and the test-event RPC's HTTP client).
    sender: Arc<Sender>,
    email_worker: EmailWorker,
    /// The HTTP/JSON routes of the protos' `google.api.http` rules.
    http_routes: crate::api::http::Routes,
    config: Config,
}

impl Application {
    /// Connects to and migrates the database and binds the listen address.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = Store::connect(&config.store_options()).await?;
        store.migrate().await?;
        let addr = config.listen_addr()?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("Failed to listen on {addr}"))?;
        let local_addr = listener
            .local_addr()
            .context("Failed to read the bound address")?;
        let http_listener = match config.server.http_listen.trim() {
            "" => None,
            address => {
                let addr: SocketAddr = address.parse().with_context(|| {
                    format!(
                        "server.http_listen must be an address such as 0.0.0.0:8080 (got {address:?})"
                    )
                })?;
                Some(
                    TcpListener::bind(addr).await.with_context(|| {
                        format!("Failed to listen on {addr} (server.http_listen)")
                    })?,
                )
            }
        };
        let http_addr = http_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .context("Failed to read the HTTP address")?;
        let tls = TlsServer::load(&config.tls)?;
        let metrics_listener = crate::metrics::bind(&config.metrics.listen).await?;
        let metrics_addr = metrics_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .context("Failed to read the metrics address")?;
        let hub = Hub::build(store, &config).await?;
        let http_routes = crate::api::http::Routes::load(crate::feed::json::pool())
            .map_err(|e| anyhow::anyhow!("The HTTP routes of the protos are broken: {e}"))?;
        // The outbound clients read their settings (and files, such as extra CA
        // certificates) here, so a bad one stops the start before the hub serves.
        let sender = Arc::new(Sender::new(hub.store.clone(), config.webhooks.clone())?);
        let email_worker = EmailWorker::new(hub.store.clone(), &config.email, &config.smtp)?;
        tracing::info!(
            listen = %local_addr,
            http = %http_addr.map_or("on the gRPC port".to_owned(), |a| a.to_string()),
            tls = tls.is_some(),
            mutual_tls = !config.tls.client_ca.is_empty(),
            metrics = %metrics_addr.map_or("off".to_owned(), |a| a.to_string()),
            database = %redact_url(&config.database.url),
            backend = hub.store.dialect().name(),
            "hub ready"
        );
        Ok(Self {
            listener,
            local_addr,
            http_listener,
            http_addr,
            metrics_listener,
            metrics_addr,
            tls,
            hub,
            sender,
            email_worker,
            http_routes,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where HTTP/JSON is served: its own port if `server.http_listen` is set, else the
    /// gRPC port.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr.unwrap_or(self.local_addr)
    }

    /// Where the Prometheus endpoint listens, if `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn store(&self) -> &Store {
        &self.hub.store
    }

    /// Serves until `shutdown` completes, then reports NOT_SERVING, stops accepting
    /// connections and lets in-flight requests finish (up to the configured grace).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            http_listener,
            metrics_listener,
            tls,
            hub,
            sender,
            email_worker,
            http_routes,
            config,
            ..
        } = self;
        let limits = &config.server;
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in SERVICE_NAMES {
            reporter
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("Failed to build the reflection service")?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("Failed to build the reflection service")?;

        let max = limits.max_message_bytes;
        let admin = AdminServiceServer::new(AdminApi::new(hub.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let members = MemberServiceServer::new(MemberApi::new(hub.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let partnerships = PartnershipServiceServer::new(PartnershipApi::new(hub.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let customers = CustomerServiceServer::new(CustomerApi::new(hub.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let sharing = SharingServiceServer::new(SharingApi::new(hub.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let interactions = InteractionServiceServer::new(InteractionApi::new(hub.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);

        let cases = CaseServiceServer::new(CaseApi::new(hub.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let mappings = AccountMappingServiceServer::new(AccountMappingApi::new(hub.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let audit = AuditServiceServer::new(AuditApi::new(hub.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let operations = OperationsServer::new(OperationsApi::new(hub.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let exports = crate::pb::export_service_server::ExportServiceServer::new(
            crate::api::exports::ExportApi::new(hub.clone()),
        )
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        let comparisons = crate::app::mapping::Comparisons::new(
            hub.store.clone(),
            hub.customers.clone(),
            (*hub.mapping).clone(),
        );
        let case_timers =
            crate::outbound::timers::CaseTimers::new(hub.store.clone(), hub.workflows.clone());

        let (streams_stop, streams_stopping) = tokio::sync::watch::channel(false);
        let events =
            EventServiceServer::new(EventApi::new(hub.clone(), &config.events, streams_stopping))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max);

        let webhooks = WebhookServiceServer::new(WebhookApi::new(
            hub.clone(),
            config.webhooks.clone(),
            sender.clone(),
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        let webhook_worker = WebhookWorker::new(sender);

        let stopping = Arc::new(Notify::new());
        let workers_shutdown = Shutdown::default();
        let signalled_at = Arc::new(std::sync::OnceLock::new());
        let signal = {
            let stopping = stopping.clone();
            let workers_shutdown = workers_shutdown.clone();
            let signalled_at = signalled_at.clone();
            async move {
                shutdown.await;
                let _ = signalled_at.set(Instant::now());
                // Workers take no new work; what they have in flight may finish within
                // the grace.
                workers_shutdown.stop.cancel();
                // Open event streams end now; their clients resume on another replica.
                let _ = streams_stop.send(true);
                tracing::info!(
                    "shutting down: refusing new connections, finishing in-flight requests"
                );
                reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                for name in SERVICE_NAMES {
                    reporter
                        .set_service_status(*name, ServingStatus::NotServing)
                        .await;
                }
                stopping.notify_one();
            }
        };
        let http_layer = crate::api::http::HttpJsonLayer::new(
            Arc::new(http_routes),
            max,
            limits.max_header_list_bytes as usize,
        );
        let edge = EdgeLayer::new(
            hub.auth.clone(),
            hub.limits.clone(),
            limits.max_header_list_bytes as usize,
            Duration::from_secs(limits.request_timeout_secs),
        );
        // One server per port, the same services behind each.
        let serve = |listener: TcpListener,
                     http_layer: crate::api::http::HttpJsonLayer,
                     signal: BoxFuture<'static, ()>|
         -> BoxFuture<'static, Result<(), tonic::transport::Error>> {
            let router = Server::builder()
                // HTTP/1.1 for HTTP/JSON clients; gRPC stays on HTTP/2.
                .accept_http1(true)
                .concurrency_limit_per_connection(limits.concurrency_per_connection)
                .http2_keepalive_interval(Some(Duration::from_secs(limits.keepalive_interval_secs)))
                .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_secs)))
                .tcp_nodelay(true)
                // h2 ends a whole connection for a header block past this; the edge holds
                // each request to `max_header_list_bytes`, failing that request alone.
                .http2_max_header_list_size(crate::api::edge::HTTP2_HEADER_LIST_CEILING)
                // Outermost: a request that is not gRPC is turned into the gRPC call its
                // route names, which then passes the edge like any other.
                .layer(http_layer)
                .layer(edge.clone())
                .add_service(health.clone())
                .add_service(reflection_v1.clone())
                .add_service(reflection_v1alpha.clone())
                .add_service(admin.clone())
                .add_service(members.clone())
                .add_service(partnerships.clone())
                .add_service(customers.clone())
                .add_service(sharing.clone())
                .add_service(interactions.clone())
                .add_service(events.clone())
                .add_service(webhooks.clone())
                .add_service(cases.clone())
                .add_service(mappings.clone())
                .add_service(audit.clone())
                .add_service(exports.clone())
                .add_service(operations.clone());
            match tls.clone() {
                Some(tls) => {
                    Box::pin(router.serve_with_incoming_shutdown(tls.incoming(listener), signal))
                }
                None => Box::pin(router.serve_with_incoming_shutdown(incoming(listener), signal)),
            }
        };
        let stop_serving = tokio_util::sync::CancellationToken::new();
        let signal = {
            let stop_serving = stop_serving.clone();
            Box::pin(async move {
                signal.await;
                stop_serving.cancel();
            })
        };
        let server: BoxFuture<'static, Result<(), tonic::transport::Error>> = match http_listener {
            None => serve(listener, http_layer, signal),
            Some(http_listener) => {
                let grpc = serve(listener, http_layer.clone().grpc_only(), signal);
                let http = serve(
                    http_listener,
                    http_layer.http_only(),
                    Box::pin(stop_serving.cancelled_owned()),
                );
                Box::pin(async move {
                    let (grpc, http) = tokio::join!(grpc, http);
                    grpc.and(http)
                })
            }
        };

        let retention = SignedDuration::from_hours(config.events.retention_days as i64 * 24);
        let rfm_interval = Duration::from_secs(config.customers.rfm_interval_secs);
        let scorecard_interval = Duration::from_secs(config.scorecards.aggregate_interval_secs);
        let grace = Duration::from_secs(limits.shutdown_grace_secs);
        let grace_expired = async {
            stopping.notified().await;
            tokio::time::sleep(grace).await;
        };
        let serving = async {
            tokio::select! {
                result = server => result.context("The gRPC server failed"),
                () = grace_expired => {
                    tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish in time; stopping anyway");
                    Ok(())
                }
            }
        };
        let background = async {
            tokio::select! {
                () = sweep(hub.store.clone(), retention) => {}
                () = hub.store.listen_for_events() => {}
                () = hub.store.run_sequencer() => {}
                () = hub.store.follow_credentials() => {}
                () = crate::app::audit::run_checkpoints(hub.store.clone(), hub.audit.clone()) => {}
                () = crate::app::metrics::run_rfm(hub.store.clone(), hub.customers.clone(), rfm_interval) => {}
                () = crate::app::scorecards::run(hub.store.clone(), hub.customers.clone(), hub.workflows.clone(), scorecard_interval) => {}
                () = crate::metrics::serve(metrics_listener, hub.store.clone()) => {}
                () = crate::tls::reload_on_hangup(tls) => {}
            }
        };
        let workers = async {
            let stop = workers_shutdown.stop.clone();
            tokio::join!(
                webhook_worker.run(workers_shutdown.clone()),
                email_worker.run(workers_shutdown.clone()),
                async {
                    tokio::select! {
                        () = case_timers.run() => {}
                        () = stop.cancelled() => {}
                    }
                },
                async {
                    tokio::select! {
                        () = comparisons.run() => {}
                        () = stop.cancelled() => {}
                    }
                },
                async {
                    let exports = crate::app::exports::run(
                        hub.store.clone(),
                        hub.customers.clone(),
                        hub.workflows.clone(),
                    );
                    tokio::select! {
                        () = exports => {}
                        () = stop.cancelled() => {}
                    }
                },
            );
        };
        // Boxed so each can be dropped (its connections returned) before the store closes.
        let (mut serving, mut background, mut workers) =
            (Box::pin(serving), Box::pin(background), Box::pin(workers));
        let mut workers_done = false;
        let result = loop {
            tokio::select! {
                result = &mut serving => break result,
                () = &mut background => break Ok(()),
                () = &mut workers, if !workers_done => workers_done = true,
            }
        };
        // Requests are done; webhook attempts and emails in flight get what is left of
        // the grace, then are cut short with their leases released.
        workers_shutdown.stop.cancel();
        if !workers_done {
            let left = grace.saturating_sub(
                signalled_at
                    .get()
                    .map_or(Duration::ZERO, |at: &Instant| at.elapsed()),
            );
            if tokio::time::timeout(left, &mut workers).await.is_err() {
                tracing::warn!(
                    "deliveries in flight did not finish within the grace; releasing them"
                );
                workers_shutdown.abort.cancel();
                if tokio::time::timeout(RELEASE_WAIT, &mut workers)
                    .await
                    .is_err()
                {
                    tracing::warn!("workers did not stop; their leases expire on their own");
                }
            }
        }
        drop((serving, background, workers));
        // Number what this replica committed while it stopped (PostgreSQL), rather
        // than leave it to another replica's next pass or the next start.
        if let Err(error) = hub.store.flush_events().await {
            tracing::warn!(%error, "left committed events for the sequencer's next pass");
        }
        hub.store.close().await;
        tracing::info!("stopped");
        result
    }
}

/// Accepted connections with Nagle's algorithm off. The builder's `tcp_nodelay` only
/// applies to listeners tonic binds itself; without this, a response written in two
/// segments waits for the client's delayed ACK (about 40 ms on Linux).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|stream| {
        if let Ok(s) = &stream
            && let Err(error) = s.set_nodelay(true)
        {
            tracing::debug!(%error, "cannot disable Nagle's algorithm");
        }
        stream
    })
}

/// Forever, hourly: deletes idempotency records past their retention, expired
/// customer-match handles, and events older than `event_retention`.
async fn sweep(store: Store, event_retention: SignedDuration) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let cutoff = Timestamp::now() - crate::store::REQUEST_ID_RETENTION;
        let swept = async {
            let mut tx = store.begin().await?;
            let n = tx.expire_requests(cutoff).await?;
            tx.expire_matches(Timestamp::now()).await?;
            tx.commit().await?;
            Ok::<_, crate::domain::error::Error>(n)
        };
        match swept.await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "forgot expired request ids"),
            Err(error) => tracing::warn!(%error, "failed to sweep expired request ids"),
        }
        match store.prune_events(Timestamp::now() - event_retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "pruned events past their retention"),
            Err(error) => tracing::warn!(%error, "failed to prune old events"),
        }
        match store
            .prune_deliveries(Timestamp::now() - event_retention)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deliveries = n, "pruned finished webhook deliveries"),
            Err(error) => tracing::warn!(%error, "failed to prune old webhook deliveries"),
        }
        match store.prune_exports(store.clock().now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(exports = n, "deleted expired export files"),
            Err(error) => tracing::warn!(%error, "failed to delete expired export files"),
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
