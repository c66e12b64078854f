//! The webhook worker: signed POSTs of events to partner endpoints (Standard Webhooks),
//! at least once, retried on a schedule.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use prost::Message;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::api::convert::event_json;
use crate::config::WebhooksConfig;
use crate::domain::now;
use crate::domain::webhook::{WebhookSecret, is_public, refused_literal_host, signature_header};
use crate::error::Result;
use crate::pb;
use crate::store::{AttemptRecord, ClaimedDelivery, Store};

/// A claimed delivery belongs to its worker this long; then another may take it.
/// Well above the longest attempt (timeout plus recording).
const LEASE: SignedDuration = SignedDuration::from_secs(120);
/// Deliveries claimed per query.
const CLAIM_BATCH: usize = 32;
/// The longest the worker sleeps without looking at the queue.
const IDLE_RECHECK: Duration = Duration::from_secs(30);
/// Bytes of a receiver's response kept with the attempt.
const EXCERPT_BYTES: usize = 1024;
/// Bounds on a receiver's `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Sends due webhook deliveries, forever.
pub struct WebhookWorker {
    store: Store,
    client: reqwest::Client,
    config: Arc<WebhooksConfig>,
    slots: Arc<Semaphore>,
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
    reqwest::Client::builder()
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
    pub fn new(store: Store, config: WebhooksConfig) -> anyhow::Result<Self> {
        let client = client(&config)?;
        Ok(Self {
            store,
            client,
            slots: Arc::new(Semaphore::new(config.concurrency as usize)),
            config: Arc::new(config),
        })
    }

    pub async fn run(self) {
        let signal = self.store.deliveries_signal().clone();
        let this = Arc::new(self);
        loop {
            let free = this.slots.available_permits().min(CLAIM_BATCH);
            if free == 0 {
                // Wait for a slot to free up, then look again.
                drop(this.slots.acquire().await);
                continue;
            }
            let at = now();
            match this.store.claim_deliveries(at, at + LEASE, free).await {
                Ok(claimed) if !claimed.is_empty() => {
                    for delivery in claimed {
                        let Ok(slot) = this.slots.clone().acquire_owned().await else {
                            return;
                        };
                        let worker = this.clone();
                        let span = tracing::info_span!(
                            "webhook",
                            delivery = %delivery.id,
                            endpoint = %delivery.endpoint_id,
                            event = %delivery.event_id,
                        );
                        tokio::spawn(
                            async move {
                                if let Err(error) = worker.deliver(&delivery).await {
                                    tracing::warn!(%error, "delivery not recorded; it is retried when its lease ends");
                                }
                                drop(slot);
                            }
                            .instrument(span),
                        );
                    }
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot claim webhook deliveries");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            let wait = match this.store.next_delivery_due().await {
                Ok(Some(due)) => due
                    .duration_since(now())
                    .try_into()
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_RECHECK),
                _ => IDLE_RECHECK,
            };
            tokio::select! {
                () = signal.notified() => {}
                () = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
            }
        }
    }

    /// One attempt at `d`, recorded.
    async fn deliver(&self, d: &ClaimedDelivery) -> Result<()> {
        let attempt = self.attempt(d).await;
        match &attempt {
            a if a.succeeded => tracing::info!(status = a.status, "webhook delivered"),
            a => {
                tracing::warn!(status = a.status, error = %a.error, retry = a.retry_at.is_some(), "webhook attempt failed")
            }
        }
        self.store.record_attempt(d, &attempt).await?;
        if attempt.retry_at.is_some() {
            // The worker may be sleeping on this delivery's lease; let it look again.
            self.store.deliveries_signal().notify_one();
        }
        Ok(())
    }

    async fn attempt(&self, d: &ClaimedDelivery) -> AttemptRecord {
        let started = now();
        let mut record = AttemptRecord {
            time: started,
            status: 0,
            latency_micros: 0,
            response_excerpt: String::new(),
            error: String::new(),
            retry_at: None,
            succeeded: false,
            disable: None,
        };
        let prepared = match self.prepare(d).await {
            Ok(p) => p,
            Err(Prepare::Final(reason)) => {
                record.error = reason;
                return record;
            }
            Err(Prepare::Later(reason)) => {
                record.error = reason;
                record.retry_at = self.retry_at(d.attempts + 1, None);
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
                        record.retry_at = self.retry_at(d.attempts + 1, after);
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
                record.retry_at = self.retry_at(d.attempts + 1, None);
            }
        }
        record
    }

    /// When to try again after `attempts` attempts, or `None` if that was the last.
    /// The schedule's delay gets ±10% jitter so retries of a burst spread out; a
    /// receiver's `Retry-After` replaces it.
    fn retry_at(&self, attempts: i64, retry_after: Option<Duration>) -> Option<Timestamp> {
        let schedule = &self.config.retry_schedule_secs;
        let delay = *schedule.get(attempts as usize)?;
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

    async fn prepare(&self, d: &ClaimedDelivery) -> Result<Prepared, Prepare> {
        let later = |e: crate::error::Error| {
            Prepare::Later(format!("the hub could not prepare the request: {e}"))
        };
        let endpoint = self
            .store
            .endpoint(&d.organization_id, &d.endpoint_id)
            .await
            .map_err(later)?
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
        let stored = self
            .store
            .event_body(&d.organization_id, d.sequence)
            .await
            .map_err(later)?
            .ok_or_else(|| Prepare::Final("the event was pruned before it could be sent".into()))?;
        let mut event = pb::Event::decode(stored.as_slice())
            .map_err(|e| Prepare::Final(format!("the stored event does not decode: {e}")))?;
        event.sequence = d.sequence;
        let body = event_json(&event).map_err(later)?;
        if body.len() as u64 > self.config.max_payload_bytes {
            return Err(Prepare::Final(format!(
                "the event is {} bytes as JSON, more than webhooks.max_payload_bytes",
                body.len()
            )));
        }
        let secret = WebhookSecret::parse(&endpoint.secret)
            .map_err(|_| Prepare::Final("the endpoint's stored secret is malformed".into()))?;
        let timestamp = Timestamp::now().as_second();
        let signature = signature_header(&[secret], &d.event_id, timestamp, &body);
        Ok(Prepared {
            url,
            body,
            timestamp,
            signature,
        })
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
