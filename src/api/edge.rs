//! The edge every RPC passes: authenticate the caller, then log one line with the
//! method, the organization, the status code and the latency.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::Instrument;

use super::Authenticator;

/// Services anyone may call: load balancers and `grpcurl` need them without a key.
const PUBLIC_PREFIXES: &[&str] = &["/grpc.health.v1.", "/grpc.reflection."];

#[derive(Clone)]
pub struct EdgeLayer {
    auth: Arc<Authenticator>,
}

impl EdgeLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Edge<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The clone takes the place of the service that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let method = request.uri().path().to_owned();
        let span = tracing::info_span!("rpc", %method);
        Box::pin(
            async move {
                let started = Instant::now();
                if PUBLIC_PREFIXES.iter().any(|p| method.starts_with(p)) {
                    return inner.call(request).await;
                }
                let header = request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                let (response, organization) = match auth.authenticate(header).await {
                    Ok(caller) => {
                        let organization = caller.label().to_owned();
                        request.extensions_mut().insert(caller);
                        (inner.call(request).await?, organization)
                    }
                    Err(error) => (Status::from(error).into_http(), "-".to_owned()),
                };
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from);
                // Two decimals: microsecond resolution is noise at this level.
                let latency_ms = (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0;
                tracing::info!(%organization, code = ?code, latency_ms, "rpc finished");
                Ok(response)
            }
            .instrument(span),
        )
    }
}
