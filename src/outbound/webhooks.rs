//! The webhook worker: signed POSTs of events to partner endpoints (Standard Webhooks),
//! at least once, retried on a schedule.

use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Shutdown;

use crate::config::WebhooksConfig;
use crate::domain::error::Result;
use crate::domain::event::EventType;
use crate::domain::event::TEST_EVENT_TYPE;
use crate::domain::now;
use crate::domain::webhook::{WebhookSecret, is_public, refused_literal_host, signature_header};
use crate::feed::draft::{Draft, emit};
use crate::feed::json::{event_json, stored_event};
use crate::feed::render::endpoint_to_pb;
use crate::pb::event::Payload;
use crate::store::{AttemptRecord, ClaimLimits, ClaimedDelivery, Endpoint, Store, Worker};

/// A claimed delivery belongs to its worker for twice the attempt timeout plus this;
/// then another may take it (after a crash, say). Well above the longest attempt.
const LEASE_MARGIN: SignedDuration = SignedDuration::from_secs(10);
/// Deliveries claimed per query.
const CLAIM_BATCH: usize = 128;
/// Successful attempts recorded per transaction at most.
const RECORD_BATCH: usize = 256;
/// Bytes of a receiver's response kept with the attempt.
const EXCERPT_BYTES: usize = 1024;
/// Bounds on a receiver's `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Sends due webhook deliveries, forever.
pub struct WebhookWorker {
    sender: Arc<Sender>,
    recorder: Recorder,
    slots: Arc<Semaphore>,
    /// Deliveries in flight on this replica, by endpoint.
    busy: Arc<Mutex<HashMap<String, usize>>>,
}

/// Makes one attempt at a delivery and records it; shared by the worker and the API's
/// test events.
pub struct Sender {
    store: Store,
    client: reqwest::Client,
    config: Arc<WebhooksConfig>,
}

/// Resolves endpoint hosts, dropping addresses the hub must not call. Checking here,
/// on the addresses actually connected to, defeats DNS rebinding.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{} resolves only to private or special-purpose addresses",
                    name.as_str()
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The one HTTP client of the hub's webhooks: rustls (ring), pooled connections, no
/// redirects, guarded name resolution.
pub fn client(config: &WebhooksConfig) -> anyhow::Result<reqwest::Client> {
    // Every TLS user in the process shares the ring provider; a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder();
    if !config.extra_ca_file.is_empty() {
        let pem = std::fs::read(&config.extra_ca_file).with_context(|| {
            format!(
                "cannot read webhooks.extra_ca_file {}",
                config.extra_ca_file
            )
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
            format!(
                "webhooks.extra_ca_file {} is not PEM certificates",
                config.extra_ca_file
            )
        })?;
        if certificates.is_empty() {
            anyhow::bail!(
                "webhooks.extra_ca_file {} holds no certificate",
                config.extra_ca_file
            );
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(config.timeout_secs))
        .connect_timeout(Duration::from_secs(config.timeout_secs.min(10)))
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("liaison-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private: config.allow_private_networks,
        }))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the webhook HTTP client: {e}"))
}

/// Whether a receiver's answer ends the delivery, and how.
enum Verdict {
    Success,
    Retry(Option<Duration>),
    Fail,
    Gone,
}

fn verdict(status: reqwest::StatusCode, retry_after: Option<Duration>) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Success,
        410 => Verdict::Gone,
        408 | 429 | 500..=599 => Verdict::Retry(retry_after),
        _ => Verdict::Fail,
    }
}

impl WebhookWorker {
    pub fn new(sender: Arc<Sender>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(sender.config.concurrency as usize)),
            busy: Arc::default(),
            recorder: Recorder::start(sender.store.clone()),
            sender,
        }
    }

    /// Claims and sends due deliveries until `shutdown.stop`; then waits for the
    /// attempts in flight, which `shutdown.abort` cuts short (their leases released).
    pub async fn run(self, shutdown: Shutdown) {
        let store = self.sender.store.clone();
        let signal = store.deliveries_signal().clone();
        let per_endpoint = self.sender.config.max_in_flight_per_endpoint as usize;
        let in_flight = TaskTracker::new();
        while !shutdown.stop.is_cancelled() {
            let free = self.slots.available_permits().min(CLAIM_BATCH);
            if free == 0 {
                // Wait for a slot to free up, then look again.
                tokio::select! {
                    slot = self.slots.acquire() => drop(slot),
                    () = shutdown.stop.cancelled() => break,
                }
                continue;
            }
            let at = now();
            let busy = self.busy.lock().expect("busy map").clone();
            let limits = ClaimLimits {
                total: free,
                per_endpoint,
                busy: &busy,
            };
            match store
                .claim_deliveries(at, at + self.sender.lease(), limits)
                .await
            {
                Ok(claimed) if !claimed.is_empty() => {
                    // Each endpoint of the claim read once, not once per delivery (a
                    // failed read leaves each attempt to read its own).
                    let mut ids: Vec<&str> =
                        claimed.iter().map(|d| d.endpoint_id.as_str()).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    let endpoints: HashMap<String, Arc<Endpoint>> =
                        match store.endpoints_by_id(&ids).await {
                            Ok(found) => found
                                .into_iter()
                                .map(|e| (e.id.clone(), Arc::new(e)))
                                .collect(),
                            Err(error) => {
                                tracing::debug!(%error, "endpoints of a claim not read together");
                                HashMap::new()
                            }
                        };
                    // Likewise the events' bodies, one read per organization.
                    let mut wanted: HashMap<&str, Vec<i64>> = HashMap::new();
                    for d in claimed.iter().filter(|d| d.payload.is_none()) {
                        wanted
                            .entry(&d.organization_id)
                            .or_default()
                            .push(d.sequence);
                    }
                    let mut bodies: HashMap<(String, i64), Vec<u8>> = HashMap::new();
                    for (org, sequences) in wanted {
                        match store.event_bodies(org, &sequences).await {
                            Ok(found) => bodies
                                .extend(found.into_iter().map(|(s, b)| ((org.to_owned(), s), b))),
                            Err(error) => {
                                tracing::debug!(%error, "event bodies of a claim not read together")
                            }
                        }
                    }
                    for mut delivery in claimed {
                        delivery.ordered = endpoints
                            .get(&delivery.endpoint_id)
                            .is_none_or(|e| e.ordered);
                        let read = Preread {
                            endpoint: endpoints.get(&delivery.endpoint_id).cloned(),
                            // One event often goes to several endpoints of a claim.
                            body: bodies
                                .get(&(delivery.organization_id.clone(), delivery.sequence))
                                .cloned(),
                        };
                        let Ok(slot) = self.slots.clone().acquire_owned().await else {
                            return;
                        };
                        *self
                            .busy
                            .lock()
                            .expect("busy map")
                            .entry(delivery.endpoint_id.clone())
                            .or_default() += 1;
                        let (sender, busy, recorder, abort) = (
                            self.sender.clone(),
                            self.busy.clone(),
                            self.recorder.clone(),
                            shutdown.abort.clone(),
                        );
                        let span = tracing::info_span!(
                            "webhook",
                            delivery = %delivery.id,
                            endpoint = %delivery.endpoint_id,
                            event = %delivery.event_id,
                        );
                        in_flight.spawn(
                            async move {
                                let attempt = tokio::select! {
                                    attempt = sender.attempt(&delivery, read) => Some(attempt),
                                    () = abort.cancelled() => None,
                                };
                                // The request is over, so the endpoint has room for
                                // another while this result is recorded (the delivery
                                // keeps its lease until then, so it is not claimed
                                // again, nor is an ordered endpoint's next one).
                                {
                                    let mut busy = busy.lock().expect("busy map");
                                    if let Some(n) = busy.get_mut(&delivery.endpoint_id) {
                                        *n -= 1;
                                        if *n == 0 {
                                            busy.remove(&delivery.endpoint_id);
                                        }
                                    }
                                }
                                sender.store.deliveries_signal().notify_one();
                                let recorded = match attempt {
                                    Some(attempt) => {
                                        observe(&attempt);
                                        if attempt.succeeded {
                                            recorder.record(delivery.clone(), attempt).await
                                        } else {
                                            sender.record(&delivery, &attempt).await
                                        }
                                    }
                                    // The grace is over: nothing is recorded, and the
                                    // delivery is due again at once for another worker.
                                    None => {
                                        tracing::info!("attempt cut short by shutdown; lease released");
                                        sender.release(&delivery).await
                                    }
                                };
                                if let Err(error) = recorded {
                                    tracing::warn!(%error, "delivery not recorded; it is retried when its lease ends");
                                }
                                drop(slot);
                                // Recorded: an ordered endpoint's next delivery, held back
                                // by this one's lease until now, may be claimed.
                                sender.store.deliveries_signal().notify_one();
                            }
                            .instrument(span),
                        );
                    }
                    store.looked(Worker::Webhooks, true);
                    continue;
                }
                // Attempts still in flight are work not yet done.
                Ok(_) => store.looked(Worker::Webhooks, !in_flight.is_empty()),
                Err(error) => {
                    tracing::warn!(%error, "cannot claim webhook deliveries");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.stop.cancelled() => {}
                    }
                    continue;
                }
            }
            super::idle_until_stopped(
                &shutdown.stop,
                &signal,
                store.next_delivery_due(now()).await,
                now(),
                Duration::from_millis(1),
            )
            .await;
        }
        in_flight.close();
        if !in_flight.is_empty() {
            tracing::info!(
                attempts = in_flight.len(),
                "waiting for webhook attempts in flight"
            );
        }
        in_flight.wait().await;
    }
}

impl Sender {
    pub fn new(store: Store, config: WebhooksConfig) -> anyhow::Result<Self> {
        Ok(Self {
            client: client(&config)?,
            store,
            config: Arc::new(config),
        })
    }

    /// How long a claimed delivery stays with its worker.
    pub fn lease(&self) -> SignedDuration {
        SignedDuration::from_secs(2 * self.config.timeout_secs as i64) + LEASE_MARGIN
    }

    /// One attempt at `d`, recorded; an endpoint it disables is announced in its
    /// organization's feed.
    pub async fn deliver(&self, d: &ClaimedDelivery) -> Result<AttemptRecord> {
        let attempt = self.attempt(d, Preread::default()).await;
        observe(&attempt);
        self.record(d, &attempt).await?;
        Ok(attempt)
    }

    /// Gives an unattempted delivery back (see [`Tx::release_delivery`]).
    async fn release(&self, d: &ClaimedDelivery) -> Result<()> {
        let mut tx = self.store.begin().await?;
        tx.release_delivery(d).await?;
        tx.commit().await
    }

    /// Records one attempt in a transaction of its own.
    async fn record(&self, d: &ClaimedDelivery, attempt: &AttemptRecord) -> Result<()> {
        let disable_after =
            SignedDuration::from_secs(self.config.disable_after_failing_secs as i64);
        let mut tx = self.store.begin().await?;
        let recorded = tx.record_attempt(d, attempt, disable_after).await?;
        if recorded.late {
            crate::metrics::metrics().late_result("webhooks");
        }
        if let Some(endpoint) = recorded.disabled {
            tracing::warn!(reason = %endpoint.disabled_reason, "webhook endpoint disabled");
            announce_disabled(&mut tx, &endpoint).await?;
        }
        tx.commit().await?;
        if attempt.retry_at.is_some() {
            // The worker may be sleeping past this retry; let it look again.
            self.store.deliveries_signal().notify_one();
        }
        Ok(())
    }

    /// One attempt at `d`, with what was read for it with its claim (the rest is read
    /// here).
    async fn attempt(&self, d: &ClaimedDelivery, read: Preread) -> AttemptRecord {
        let started = now();
        let mut record = AttemptRecord {
            id: uuid::Uuid::now_v7().to_string(),
            time: started,
            status: 0,
            latency_micros: 0,
            response_excerpt: String::new(),
            error: String::new(),
            retry_at: None,
            succeeded: false,
            disable: None,
        };
        let prepared = match self.prepare(d, read).await {
            Ok(p) => p,
            Err(Prepare::Final(reason)) => {
                record.error = reason;
                return record;
            }
            Err(Prepare::Later(reason)) => {
                record.error = reason;
                record.retry_at = self.retry_at(d, None);
                return record;
            }
        };
        let clock = Instant::now();
        let sent = self
            .client
            .post(prepared.url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.event_id)
            .header("webhook-timestamp", prepared.timestamp.to_string())
            .header("webhook-signature", prepared.signature)
            .body(prepared.body)
            .send()
            .await;
        match sent {
            Ok(mut response) => {
                let status = response.status();
                record.status = status.as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
                let mut excerpt = Vec::new();
                while excerpt.len() < EXCERPT_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                excerpt.truncate(EXCERPT_BYTES);
                record.response_excerpt = String::from_utf8_lossy(&excerpt).into_owned();
                record.latency_micros = clock.elapsed().as_micros() as i64;
                match verdict(status, retry_after) {
                    Verdict::Success => record.succeeded = true,
                    Verdict::Retry(after) => {
                        record.error = format!("the receiver answered {status}");
                        record.retry_at = self.retry_at(d, after);
                    }
                    Verdict::Fail => {
                        record.error = format!("the receiver answered {status}; not retried")
                    }
                    Verdict::Gone => {
                        record.error = "the receiver answered 410 Gone".into();
                        record.disable = Some("the receiver answered 410 Gone".into());
                    }
                }
            }
            Err(error) => {
                record.latency_micros = clock.elapsed().as_micros() as i64;
                record.error = describe(&error);
                record.retry_at = self.retry_at(d, None);
            }
        }
        record
    }

    /// When to try `d` again after this attempt, or `None` if that was the last (test
    /// events get one attempt). The schedule's delay gets ±10% jitter so retries of a
    /// burst spread out; a receiver's `Retry-After` replaces it.
    fn retry_at(&self, d: &ClaimedDelivery, retry_after: Option<Duration>) -> Option<Timestamp> {
        if d.payload.is_some() && d.event_type == TEST_EVENT_TYPE {
            return None;
        }
        let schedule = &self.config.retry_schedule_secs;
        let delay = *schedule.get(d.attempts as usize + 1)?;
        let delay = match retry_after {
            Some(after) => after,
            None => {
                let mut byte = [0u8; 1];
                let _ = getrandom::fill(&mut byte);
                let jitter = (f64::from(byte[0]) / 255.0 - 0.5) * 0.2;
                Duration::from_secs_f64(delay as f64 * (1.0 + jitter))
            }
        };
        Some(now() + SignedDuration::try_from(delay).unwrap_or(SignedDuration::ZERO))
    }

    async fn prepare(&self, d: &ClaimedDelivery, read: Preread) -> Result<Prepared, Prepare> {
        let later = |e: crate::domain::error::Error| {
            Prepare::Later(format!("the hub could not prepare the request: {e}"))
        };
        let endpoint = match read.endpoint {
            // Read with the claim, by id only: it must be the delivery's organization's.
            Some(e) => Some(e).filter(|e| e.organization_id == d.organization_id),
            None => self
                .store
                .endpoint(&d.organization_id, &d.endpoint_id)
                .await
                .map_err(later)?
                .map(Arc::new),
        }
        .ok_or_else(|| Prepare::Final("the endpoint no longer exists".into()))?;
        if !endpoint.enabled {
            return Err(Prepare::Final(format!(
                "the endpoint is disabled ({})",
                endpoint.disabled_reason
            )));
        }
        let url = reqwest::Url::parse(&endpoint.url)
            .map_err(|e| Prepare::Final(format!("the endpoint URL does not parse: {e}")))?;
        if let Some(why) = refused_literal_host(&url, self.config.allow_private_networks) {
            return Err(Prepare::Final(why));
        }
        let stored = match (&d.payload, read.body) {
            (Some(payload), _) => payload.clone(),
            (None, Some(body)) => body,
            (None, None) => self
                .store
                .event_bodies(&d.organization_id, &[d.sequence])
                .await
                .map_err(later)?
                .remove(&d.sequence)
                .ok_or_else(|| {
                    Prepare::Final("the event was pruned before it could be sent".into())
                })?,
        };
        let event = stored_event(&stored, d.sequence).map_err(Prepare::Final)?;
        let body = event_json(&event).map_err(later)?;
        if body.len() as u64 > self.config.max_payload_bytes {
            return Err(Prepare::Final(format!(
                "the event is {} bytes as JSON, more than webhooks.max_payload_bytes",
                body.len()
            )));
        }
        let sent_at = Timestamp::now();
        let secrets = endpoint
            .signing_secrets(sent_at)
            .into_iter()
            .map(WebhookSecret::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Prepare::Final("the endpoint's stored secret is malformed".into()))?;
        let timestamp = sent_at.as_second();
        let signature = signature_header(&secrets, &d.event_id, timestamp, &body);
        Ok(Prepared {
            url,
            body,
            timestamp,
            signature,
        })
    }
}

/// What the worker read for a delivery together with the rest of its claim.
#[derive(Default)]
struct Preread {
    endpoint: Option<Arc<Endpoint>>,
    /// The event's stored body (a delivery of a feed event).
    body: Option<Vec<u8>>,
}

/// Counts and logs an attempt.
fn observe(attempt: &AttemptRecord) {
    crate::metrics::metrics().webhook_attempt(match attempt {
        a if a.succeeded => "succeeded",
        a if a.retry_at.is_some() => "retrying",
        _ => "dead",
    });
    match attempt {
        a if a.succeeded => tracing::info!(status = a.status, "webhook delivered"),
        a => {
            tracing::warn!(status = a.status, error = %a.error, retry = a.retry_at.is_some(), "webhook attempt failed")
        }
    }
}

/// Records successful attempts in batches: whatever finished while the last batch
/// was being written goes into the next transaction. An attempt's task waits for its
/// batch to commit, so its slot and lease are held until the record is durable.
#[derive(Clone)]
struct Recorder {
    queue: tokio::sync::mpsc::Sender<(ClaimedDelivery, AttemptRecord, oneshot::Sender<Result<()>>)>,
}

impl Recorder {
    fn start(store: Store) -> Self {
        let (queue, mut incoming) = tokio::sync::mpsc::channel::<(
            ClaimedDelivery,
            AttemptRecord,
            oneshot::Sender<Result<()>>,
        )>(RECORD_BATCH * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(RECORD_BATCH);
            while incoming.recv_many(&mut batch, RECORD_BATCH).await > 0 {
                let (done, waiters): (Vec<_>, Vec<_>) = batch
                    .drain(..)
                    .map(|(d, a, waiter)| ((d, a), waiter))
                    .unzip();
                let result = async {
                    let mut tx = store.begin().await?;
                    let late = tx.record_successes(&done).await?;
                    tx.commit().await?;
                    for _ in 0..late {
                        crate::metrics::metrics().late_result("webhooks");
                    }
                    Ok::<_, crate::domain::error::Error>(())
                }
                .await;
                let failure = result.err().map(|e| e.to_string());
                for waiter in waiters {
                    let _ = waiter.send(match &failure {
                        None => Ok(()),
                        Some(e) => Err(crate::domain::error::Error::Internal(anyhow::anyhow!(
                            "recording a batch of attempts failed: {e}"
                        ))),
                    });
                }
            }
        });
        Recorder { queue }
    }

    async fn record(&self, d: ClaimedDelivery, attempt: AttemptRecord) -> Result<()> {
        let (done, recorded) = oneshot::channel();
        self.queue
            .send((d, attempt, done))
            .await
            .map_err(|_| anyhow::anyhow!("the attempt recorder stopped"))?;
        recorded
            .await
            .map_err(|_| anyhow::anyhow!("the attempt recorder stopped"))?
    }
}

struct Prepared {
    url: reqwest::Url,
    body: Vec<u8>,
    timestamp: i64,
    signature: String,
}

/// Why a request could not be made: for good, or for now.
enum Prepare {
    Final(String),
    Later(String),
}

/// A transport error in words, without the URL (it may carry a token in its path).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_request() {
        "the request failed"
    } else {
        "the exchange failed"
    };
    let mut cause = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(c) = cause {
        detail = c.to_string();
        cause = c.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// Tells the organization (its feed, so its other endpoints and streams) that the hub
/// disabled one of its endpoints.
async fn announce_disabled(tx: &mut crate::store::Tx, endpoint: &Endpoint) -> Result<()> {
    let org = tx.org_ref(&endpoint.organization_id).await?;
    let pb = endpoint_to_pb(&org.slug, endpoint);
    let mut draft = Draft::new(
        EventType::WebhookEndpointDisabled,
        pb.name.clone(),
        Payload::WebhookEndpoint(pb),
    );
    draft.changed_fields = vec!["enabled".into(), "disabled_reason".into()];
    emit(tx, &endpoint.organization_id, draft);
    Ok(())
}
