//! The edge every RPC passes: give it a request id, authenticate the caller (API key,
//! or a registered client certificate under mutual TLS), apply the caller's rate and
//! size limits, then log one line and count it in the metrics.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::Instrument;

use super::{Authenticator, Caller, Limiter};
use crate::domain::error::{Error, Result};

/// Services anyone may call: load balancers and `grpcurl` need them without a key.
const PUBLIC_PREFIXES: &[&str] = &["/grpc.health.v1.", "/grpc.reflection."];
/// The header that carries a request id in and out; clients may set their own.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from a client; a UUID needs 36.
const MAX_REQUEST_ID_LEN: usize = 64;
/// gRPC frames each message with 5 bytes (flag and length).
const GRPC_FRAME_HEADER: usize = 5;

/// HTTP/2's own bound on a header block, far above any sensible metadata: h2 ends the
/// whole connection (GOAWAY) for a block it cannot even buffer, so the hub's real
/// limit (`server.max_header_list_bytes`) is applied here, per request, below it.
pub const HTTP2_HEADER_LIST_CEILING: u32 = 1024 * 1024;

#[derive(Clone)]
pub struct EdgeLayer {
    auth: Arc<Authenticator>,
    limits: Arc<Limiter>,
    max_header_bytes: usize,
    request_timeout: Duration,
}

impl EdgeLayer {
    /// `max_header_bytes`: the largest header list (RFC 9113 size: names, values and
    /// 32 bytes an entry) one request may carry. `request_timeout`: how long a call may
    /// run (until its response starts) before it ends with DEADLINE_EXCEEDED; a
    /// client's shorter `grpc-timeout` wins.
    pub fn new(
        auth: Arc<Authenticator>,
        limits: Arc<Limiter>,
        max_header_bytes: usize,
        request_timeout: Duration,
    ) -> Self {
        Self {
            auth,
            limits,
            max_header_bytes,
            request_timeout,
        }
    }
}

/// The client's deadline from its `grpc-timeout` header (`100m`, `5S`, …), if any.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let raw = headers.get("grpc-timeout")?.to_str().ok()?;
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The size HTTP/2 counts for a header list (RFC 9113, SETTINGS_MAX_HEADER_LIST_SIZE).
pub(crate) fn header_list_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            auth: self.auth.clone(),
            limits: self.limits.clone(),
            max_header_bytes: self.max_header_bytes,
            request_timeout: self.request_timeout,
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    auth: Arc<Authenticator>,
    limits: Arc<Limiter>,
    max_header_bytes: usize,
    request_timeout: Duration,
}

/// The client's request id if it is sensible, else a new one.
fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// The leaf certificate a mutual TLS client presented, if any.
fn client_certificate<B>(request: &http::Request<B>) -> Option<Vec<u8>> {
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    certs.first().map(|c| c.as_ref().to_vec())
}

/// Methods not run again after a lost race: a stream, and a call with an effect outside
/// the database (a test webhook already sent).
const NOT_RUN_AGAIN: &[&str] = &[
    "/liaison.v1.EventService/WatchEvents",
    "/liaison.v1.WebhookService/SendTestWebhookEvent",
    "/liaison.v1.ExportService/ReadExport",
];

/// Whether a call may be run again after losing a race on the database: not the
/// methods above, and not reads (AIP standard Get and List methods write nothing, so
/// they cannot lose such a race, and are not buffered for it).
fn may_run_again(method: &str) -> bool {
    let name = method.rsplit('/').next().unwrap_or_default();
    !(NOT_RUN_AGAIN.contains(&method) || name.starts_with("Get") || name.starts_with("List"))
}

/// Calls `inner`; a call that lost a race on the database (ABORTED, `CONCURRENT_WRITE`:
/// its transaction was rolled back, nothing of it stayed) is run once more with the
/// same message before the client hears of it. A second loss reaches the client, with
/// its RetryInfo.
async fn call_once_more_on_contention<S, ResBody>(
    mut inner: S,
    request: http::Request<Body>,
    method: &str,
) -> Result<http::Response<ResBody>, S::Error>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone,
    ResBody: Default,
{
    use http_body_util::BodyExt;
    use tonic_types::StatusExt;

    if !may_run_again(method) {
        return inner.call(request).await;
    }
    // Unary requests are small (capped by the caller's limit); kept to send again.
    let (parts, body) = request.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(status) => return Ok(status.into_http()),
    };
    let rebuild = |parts: http::request::Parts| {
        http::Request::from_parts(
            parts,
            Body::new(http_body_util::Full::new(bytes.clone()).map_err(|never| match never {})),
        )
    };
    let mut again = inner.clone();
    let first = inner.call(rebuild(parts.clone())).await?;
    let lost_race = Status::from_header_map(first.headers()).is_some_and(|status| {
        status.code() == Code::Aborted
            && status
                .get_details_error_info()
                .is_some_and(|info| info.reason == "CONCURRENT_WRITE")
    });
    if !lost_race {
        return Ok(first);
    }
    tracing::info!("the call lost a race on the database; running it once more");
    std::future::poll_fn(|cx| again.poll_ready(cx)).await?;
    again.call(rebuild(parts)).await
}

/// What the caller presented: the `authorization` header, else the certificate of
/// a mutual TLS connection. An API key wins over a client certificate, so a partner
/// can act with a narrower key on a certificate-authenticated connection.
enum Presented {
    Key(Option<Vec<u8>>),
    Certificate(Vec<u8>),
}

impl Presented {
    fn of<B>(request: &http::Request<B>) -> Self {
        let header = request.headers().get(http::header::AUTHORIZATION);
        match (header, client_certificate(request)) {
            (None, Some(der)) => Presented::Certificate(der),
            (header, _) => Presented::Key(header.map(|v| v.as_bytes().to_vec())),
        }
    }

    async fn authenticate(self, auth: &Authenticator) -> Result<Caller> {
        match self {
            Presented::Certificate(der) => auth.authenticate_certificate(&der).await,
            Presented::Key(header) => auth.authenticate(header.as_deref()).await,
        }
    }
}

impl<S, ResBody> Service<http::Request<Body>> for Edge<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone takes the place of the service that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let limits = self.limits.clone();
        let max_header_bytes = self.max_header_bytes;
        let timeout = grpc_timeout(request.headers())
            .map_or(self.request_timeout, |t| t.min(self.request_timeout));
        let method = request.uri().path().to_owned();
        let request_id = request_id(request.headers());
        let span = tracing::info_span!("rpc", %method, %request_id);
        Box::pin(
            async move {
                let started = Instant::now();
                let header_bytes = header_list_size(request.headers());
                let (mut response, organization) = if header_bytes > max_header_bytes {
                    let error = Error::ResourceExhausted {
                        reason: "METADATA_TOO_LARGE",
                        message: format!(
                            "the request's metadata is {header_bytes} bytes; at most \
                             {max_header_bytes} are accepted"
                        ),
                    };
                    (Status::from(error).into_http(), "-".to_owned())
                } else if PUBLIC_PREFIXES.iter().any(|p| method.starts_with(p)) {
                    (inner.call(request).await?, "-".to_owned())
                } else {
                    let admitted = match Presented::of(&request).authenticate(&auth).await {
                        Ok(caller) => limits.admit(&caller).map(|()| caller),
                        Err(error) => Err(error),
                    };
                    match admitted {
                        Ok(caller) => {
                            let organization = caller.label().to_owned();
                            let limit = limits.max_request_bytes(&caller) + GRPC_FRAME_HEADER;
                            request.extensions_mut().insert(caller);
                            let request = request.map(|body| {
                                Body::new(Capped {
                                    inner: body,
                                    left: limit,
                                })
                            });
                            let call = call_once_more_on_contention(inner, request, &method);
                            match tokio::time::timeout(timeout, call).await {
                                Ok(response) => (response?, organization),
                                Err(_) => {
                                    let error = Error::DeadlineExceeded(format!(
                                        "the call ran past its deadline of {} ms; it was \
                                         abandoned, and a write in it was rolled back",
                                        timeout.as_millis()
                                    ));
                                    (Status::from(error).into_http(), organization)
                                }
                            }
                        }
                        Err(error) => (Status::from(error).into_http(), "-".to_owned()),
                    }
                };
                if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert(REQUEST_ID_HEADER, value);
                }
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from);
                let elapsed = started.elapsed().as_secs_f64();
                crate::metrics::metrics().record_rpc(&method, code, elapsed);
                // Two decimals: microsecond resolution is noise at this level.
                let latency_ms = (elapsed * 100_000.0).round() / 100.0;
                tracing::info!(%organization, code = ?code, latency_ms, "rpc finished");
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// A request body that fails with RESOURCE_EXHAUSTED once it passes the caller's
/// limit, before the message is buffered whole.
struct Capped {
    inner: Body,
    left: usize,
}

impl HttpBody for Capped {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            if data.len() > self.left {
                self.left = 0;
                return Poll::Ready(Some(Err(Error::ResourceExhausted {
                    reason: "REQUEST_TOO_LARGE",
                    message: "the request is larger than your organization may send".into(),
                }
                .into())));
            }
            self.left -= data.len();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers each call with the next of its statuses (OK when they run out) and keeps
    /// the bodies it was sent.
    #[derive(Clone, Default)]
    struct Scripted {
        answers: Arc<Mutex<Vec<Error>>>,
        bodies: Arc<Mutex<Vec<Bytes>>>,
    }

    impl Service<http::Request<Body>> for Scripted {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            let this = self.clone();
            Box::pin(async move {
                use http_body_util::BodyExt;
                let body = request.into_body().collect().await.unwrap().to_bytes();
                this.bodies.lock().unwrap().push(body);
                let next = {
                    let mut answers = this.answers.lock().unwrap();
                    (!answers.is_empty()).then(|| answers.remove(0))
                };
                Ok(match next {
                    Some(error) => Status::from(error).into_http(),
                    None => http::Response::new(Body::default()),
                })
            })
        }
    }

    fn contention() -> Error {
        Error::Contention {
            reason: "CONCURRENT_WRITE",
            message: "lost".into(),
            retry_after: std::time::Duration::from_millis(50),
        }
    }

    fn request() -> http::Request<Body> {
        http::Request::new(Body::new(
            http_body_util::Full::new(Bytes::from_static(b"message"))
                .map_err(|never| match never {}),
        ))
    }

    async fn run(answers: Vec<Error>, method: &str) -> (Option<Code>, Vec<Bytes>) {
        let inner = Scripted::default();
        *inner.answers.lock().unwrap() = answers;
        let response = call_once_more_on_contention(inner.clone(), request(), method)
            .await
            .unwrap();
        let code = Status::from_header_map(response.headers()).map(|s| s.code());
        let bodies = inner.bodies.lock().unwrap().clone();
        (code, bodies)
    }

    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn a_lost_race_is_run_once_more_with_the_same_message() {
        let (code, bodies) = run(
            vec![contention()],
            "/liaison.v1.CustomerService/MergeCustomers",
        )
        .await;
        assert_eq!(code, None, "the second run answered");
        assert_eq!(bodies, vec![Bytes::from_static(b"message"); 2]);

        // Twice lost: the client hears of it.
        let (code, bodies) = run(
            vec![contention(), contention()],
            "/liaison.v1.CustomerService/MergeCustomers",
        )
        .await;
        assert_eq!(code, Some(Code::Aborted));
        assert_eq!(bodies.len(), 2);
    }

    #[tokio::test]
    async fn other_failures_and_outside_effects_are_not_run_again() {
        let stale = Error::StaleEtag("customers/x".into());
        let (code, bodies) = run(vec![stale], "/liaison.v1.CustomerService/UpdateCustomer").await;
        assert_eq!(code, Some(Code::Aborted));
        assert_eq!(bodies.len(), 1);
        let (code, bodies) = run(
            vec![contention()],
            "/liaison.v1.WebhookService/SendTestWebhookEvent",
        )
        .await;
        assert_eq!(code, Some(Code::Aborted));
        assert_eq!(bodies.len(), 1);
    }
}
