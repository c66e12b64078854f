//! `liaison.v1.EventService`: each organization's feed, as a resumable stream and as
//! pages.
//!
//! A stream never holds events in memory beyond one page and a small send buffer: it
//! reads its feed from the store, sends, and when it has caught up waits for the feed
//! signal (or the heartbeat). A slow consumer only slows its own stream: writers never
//! wait on it, and when it reads again it continues from the store where it was.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Authenticator, Hub, caller_of};
use crate::app::events::{self as app, Listing};
use crate::config::EventsConfig;
use crate::domain::error::{Error, FieldViolation, Result};
use crate::domain::event::parse_type_filter;
use crate::domain::{Lines, Scope, text};
use crate::pb::{self, event_service_server::EventService, watch_events_response::Message as Out};
use crate::store::{EventQuery, Store, StoredEvent};

/// Events read from the store per query while a stream catches up.
const STREAM_PAGE: usize = 256;
/// Messages buffered between a stream's reader and the connection.
const STREAM_BUFFER: usize = 64;
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1_000;
/// Longest resource name ListEvents filters on: longer than any name the hub makes.
const MAX_RESOURCE_CHARS: usize = 300;

/// Counts open streams against the configured limits.
#[derive(Debug)]
struct StreamLimits {
    per_organization: usize,
    total: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream; dropping it frees the slot.
struct StreamSlot {
    limits: Arc<StreamLimits>,
    organization_id: String,
}

impl StreamLimits {
    /// `own_limit`: the organization's configured cap, instead of the default.
    fn acquire(
        self: &Arc<Self>,
        organization_id: &str,
        own_limit: Option<usize>,
    ) -> Result<StreamSlot> {
        let per_organization = own_limit.unwrap_or(self.per_organization);
        let mut open = self.open.lock().expect("stream limits lock");
        let total: usize = open.values().sum();
        if total >= self.total {
            return Err(Error::ResourceExhausted {
                reason: "TOO_MANY_STREAMS",
                message: format!(
                    "this hub serves at most {} event streams at once; retry later",
                    self.total
                ),
            });
        }
        let mine = open.entry(organization_id.to_owned()).or_default();
        if *mine >= per_organization {
            return Err(Error::ResourceExhausted {
                reason: "TOO_MANY_STREAMS_FOR_ORGANIZATION",
                message: format!(
                    "your organization already has {} open event streams, the most allowed; \
                     close one first",
                    per_organization
                ),
            });
        }
        *mine += 1;
        crate::metrics::metrics().open_streams.inc();
        Ok(StreamSlot {
            limits: self.clone(),
            organization_id: organization_id.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        crate::metrics::metrics().open_streams.dec();
        let mut open = self.limits.open.lock().expect("stream limits lock");
        if let Some(n) = open.get_mut(&self.organization_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.organization_id);
            }
        }
    }
}

#[derive(Clone)]
pub struct EventApi {
    hub: Hub,
    heartbeat: Duration,
    limits: Arc<StreamLimits>,
    /// Becomes true when the hub shuts down; streams then end.
    stopping: watch::Receiver<bool>,
}

impl EventApi {
    pub fn new(hub: Hub, config: &EventsConfig, stopping: watch::Receiver<bool>) -> Self {
        Self {
            hub,
            heartbeat: Duration::from_secs(config.heartbeat_secs),
            limits: Arc::new(StreamLimits {
                per_organization: config.max_streams_per_organization as usize,
                total: config.max_streams as usize,
                open: Mutex::default(),
            }),
            stopping,
        }
    }
}

/// The request's `event_types`, checked.
fn event_types(raw: &[String]) -> Result<Vec<String>> {
    parse_type_filter(raw).map_err(|list| {
        Error::InvalidArgument(
            list.into_iter()
                .map(|v| FieldViolation::new(format!("event_types{}", v.field), v.description))
                .collect(),
        )
    })
}

fn decode(stored: StoredEvent) -> Result<pb::Event> {
    let mut event = pb::Event::decode(stored.body.as_slice())
        .map_err(|e| anyhow::anyhow!("stored event {} does not decode: {e}", stored.sequence))?;
    event.sequence = stored.sequence;
    Ok(event)
}

type Sink = mpsc::Sender<Result<pb::WatchEventsResponse, Status>>;

/// How a stream's caller authenticated.
enum Credential {
    /// The `authorization` metadata.
    Key(Option<Vec<u8>>),
    /// The DER of a mutual TLS client's certificate.
    Certificate(Vec<u8>),
}

/// One stream's loop: catch up from the store, then wait for the feed to grow.
struct Pump {
    store: Store,
    /// The stream's credentials, checked again whenever credentials change anywhere
    /// (a revoked key or certificate, a suspended organization: see
    /// `Store::credentials`) and every heartbeat.
    auth: Arc<Authenticator>,
    credential: Credential,
    credentials: watch::Receiver<u64>,
    /// Partners whose customers the feed no longer carries; read again whenever
    /// credentials (or partnerships) change.
    cut_off: Vec<String>,
    organization_id: String,
    types: Vec<String>,
    position: i64,
    heartbeat: Duration,
    sink: Sink,
    stopping: watch::Receiver<bool>,
    _slot: StreamSlot,
}

impl Pump {
    async fn run(mut self) {
        let mut signal = self.store.feed_signal().subscribe(&self.organization_id);
        let mut idle = false;
        let mut checked = Instant::now();
        // Credentials changed somewhere since the stream last checked its own.
        let mut recheck = false;
        loop {
            recheck |= self.credentials.has_changed().unwrap_or(false);
            if recheck || checked.elapsed() >= self.heartbeat {
                recheck = false;
                self.credentials.borrow_and_update();
                let checked_again = match &self.credential {
                    Credential::Key(header) => self.auth.authenticate(header.as_deref()).await,
                    Credential::Certificate(der) => self.auth.authenticate_certificate(der).await,
                };
                let checked_again = match checked_again {
                    Ok(_) => app::cut_off(&self.store, &self.organization_id)
                        .await
                        .map(|cut_off| self.cut_off = cut_off),
                    Err(error) => Err(error),
                };
                if let Err(error) = checked_again {
                    let _ = self.sink.send(Err(error.into())).await;
                    return;
                }
                checked = Instant::now();
            }
            // Mark the signal seen before reading: a commit after this point wakes us
            // again, one before it is in what we read.
            signal.borrow_and_update();
            match self.catch_up().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    let _ = self.sink.send(Err(error.into())).await;
                    return;
                }
            }
            if idle {
                let progress = Out::Progress(pb::Progress {
                    sequence: self.position,
                });
                if !self.send(progress).await {
                    return;
                }
            }
            tokio::select! {
                changed = signal.changed() => {
                    idle = false;
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(self.heartbeat) => idle = true,
                _ = self.credentials.changed() => recheck = true,
                () = self.sink.closed() => return,
                _ = self.stopping.changed() => {
                    let _ = self.sink.send(Err(self.shutting_down())).await;
                    return;
                }
            }
        }
    }

    fn shutting_down(&self) -> Status {
        Error::Unavailable(format!(
            "the hub is shutting down; reconnect with after_sequence {}",
            self.position
        ))
        .into()
    }

    /// Sends everything after the position up to the feed's head; false if the
    /// consumer is gone.
    async fn catch_up(&mut self) -> Result<bool> {
        loop {
            let head = app::head(&self.store, &self.organization_id).await?;
            if head <= self.position {
                return Ok(true);
            }
            let batch = app::read(
                &self.store,
                &EventQuery {
                    organization_id: &self.organization_id,
                    after: self.position,
                    through: head,
                    types: &self.types,
                    resource: None,
                    limit: STREAM_PAGE,
                    cut_off: &self.cut_off,
                },
            )
            .await?;
            let full = batch.len() == STREAM_PAGE;
            for stored in batch {
                if self.credentials.has_changed().unwrap_or(false) {
                    // A key, an organization or a partnership changed standing: check
                    // the credentials and read the rest again as it may be seen now
                    // (the caller loops back), rather than send what was read before.
                    return Ok(true);
                }
                let event = decode(stored)?;
                let sequence = event.sequence;
                if let Some(t) = &event.create_time {
                    let lag = jiff::Timestamp::now().as_microsecond()
                        - (t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
                    crate::metrics::metrics()
                        .feed_lag_seconds
                        .observe(lag.max(0) as f64 / 1e6);
                }
                if !self.send(Out::Event(event)).await {
                    return Ok(false);
                }
                self.position = sequence;
            }
            if !full {
                self.position = head;
            }
        }
    }

    /// Sends one message, waiting while the consumer is slow; false if it is gone or
    /// the hub is stopping.
    async fn send(&mut self, message: Out) -> bool {
        let response = pb::WatchEventsResponse {
            message: Some(message),
        };
        tokio::select! {
            sent = self.sink.send(Ok(response)) => sent.is_ok(),
            _ = self.stopping.changed() => {
                let _ = self.sink.try_send(Err(self.shutting_down()));
                false
            }
        }
    }
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventApi {
    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?.clone();
        // What the stream re-checks every heartbeat: the key, or the certificate of a
        // mutual TLS connection that came without one (as the edge decided).
        let credential = match (
            request.metadata().get("authorization"),
            request.peer_certs(),
        ) {
            (None, Some(certs)) if !certs.is_empty() => {
                Credential::Certificate(certs[0].as_ref().to_vec())
            }
            (header, _) => Credential::Key(header.map(|v| v.as_bytes().to_vec())),
        };
        // Checked once more as the stream starts (from the cache unless credentials
        // changed since the edge looked), so a revocation in between is not missed.
        let mut credentials = self.hub.store.credentials();
        credentials.mark_changed();
        let r = request.into_inner();
        let types = event_types(&r.event_types)?;
        if *self.stopping.borrow() {
            return Err(Error::Unavailable("the hub is shutting down".into()).into());
        }
        let slot = self
            .limits
            .acquire(&org.id, self.hub.limits.max_streams(org.slug.as_str()))?;
        let (position, _) = app::start_position(&self.hub.store, &org.id, r.after_sequence).await?;
        let (sink, stream) = mpsc::channel(STREAM_BUFFER);
        let pump = Pump {
            store: self.hub.store.clone(),
            auth: self.hub.auth.clone(),
            credential,
            credentials,
            // Read at the first check (the stream starts with one).
            cut_off: vec![],
            organization_id: org.id.clone(),
            types,
            position,
            heartbeat: self.heartbeat,
            sink,
            stopping: self.stopping.clone(),
            _slot: slot,
        };
        tracing::info!(organization = %org.slug, after = position, "event stream opened");
        tokio::spawn(pump.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let r = request.get_ref();
        let types = event_types(&r.event_types)?;
        let limit = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(Error::invalid("page_size", "must not be negative").into()),
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        // Compared as written (not trimmed), but never with a NUL or a control
        // character, which PostgreSQL would refuse.
        text::check(&r.resource, MAX_RESOURCE_CHARS, Lines::One)
            .map_err(|v| v.under("resource"))?;
        let resource = (!r.resource.is_empty()).then_some(r.resource.as_str());
        let listing = Listing {
            after_sequence: r.after_sequence,
            types: &types,
            resource,
            limit,
        };
        let (found, next_after_sequence, head) =
            app::list(&self.hub.store, &caller, listing).await?;
        let events = found.into_iter().map(decode).collect::<Result<Vec<_>>>()?;
        Ok(Response::new(pb::ListEventsResponse {
            events,
            next_after_sequence,
            head_sequence: head,
        }))
    }
}
