//! The hub's peers in a run: the webhook receiver (a keep-alive HTTP/1.1 server in the
//! load generator's process) and the echo server (a bare tonic server in a process of
//! its own, for the transport's ceiling).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use liaison::pb;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One signed POST the receiver took.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The endpoint's path (`/hooks/NAME`).
    pub path: String,
    pub event_id: String,
    pub event_type: String,
    pub at: Instant,
    /// From the event's `createTime` (stamped by the hub in the writing transaction)
    /// to receipt, on the one clock of this machine.
    pub latency_micros: u64,
}

/// Receives webhooks on `http://ADDR/hooks/NAME` and answers 204.
#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    arrived: Arc<Notify>,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Receiver {
            base: format!("http://{}/hooks", listener.local_addr()?),
            hits: Arc::default(),
            arrived: Arc::default(),
        };
        let shared = receiver.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.take(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Ok(receiver)
    }

    async fn take(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let signed = request.headers().contains_key("webhook-signature");
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let now = jiff::Timestamp::now();
        let status = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(event) if signed => {
                let created = event["createTime"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .unwrap_or(now);
                let hit = Hit {
                    path,
                    event_id: event["id"].as_str().unwrap_or_default().to_owned(),
                    event_type: event["type"].as_str().unwrap_or_default().to_owned(),
                    at: Instant::now(),
                    latency_micros: now.duration_since(created).as_micros().max(0) as u64,
                };
                self.hits.lock().expect("hits").push(hit);
                self.arrived.notify_waiters();
                204
            }
            _ => 400,
        };
        hyper::Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .expect("response")
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    pub fn len(&self) -> usize {
        self.hits.lock().expect("hits").len()
    }

    /// The hits from index `from` on.
    pub fn since(&self, from: usize) -> Vec<Hit> {
        self.hits.lock().expect("hits")[from..].to_vec()
    }

    /// Waits until at least `n` hits arrived in all, or `limit` passes; returns
    /// whether they did.
    pub async fn wait_for(&self, n: usize, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.arrived.notified();
            if self.len() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.len() >= n;
            }
        }
    }

    /// Waits until nothing has arrived for `quiet`.
    pub async fn settle(&self, quiet: std::time::Duration) {
        loop {
            let before = self.len();
            tokio::time::sleep(quiet).await;
            if self.len() == before {
                return;
            }
        }
    }
}

/// A customer the size of a seeded one: what the echo server answers.
pub fn sample_customer() -> pb::Customer {
    pb::Customer {
        name: "customers/0198e1f2-7c3a-7def-8000-000000000001".into(),
        kind: pb::CustomerKind::Person as i32,
        external_id: "S-1".into(),
        given_name: "Given1".into(),
        family_name: "Family1".into(),
        display_name: "Given1 Family1".into(),
        emails: vec![pb::EmailContact {
            address: "person1@example.com".into(),
            label: String::new(),
            primary: true,
        }],
        phones: vec![pb::PhoneContact {
            number: "+16502530001".into(),
            label: String::new(),
            primary: true,
        }],
        owner: "organizations/vendor".into(),
        etag: "\"3\"".into(),
        ..Default::default()
    }
}

/// Answers `liaison.v1.CustomerService/GetCustomer` with a fixed customer and nothing
/// else: a tonic server with no auth, no database and no edge layer.
#[derive(Clone)]
struct Echo(Arc<pb::Customer>);

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "liaison.v1.CustomerService";
}

struct EchoGet(Arc<pb::Customer>);

impl tonic::server::UnaryService<pb::GetCustomerRequest> for EchoGet {
    type Response = pb::Customer;
    type Future = std::future::Ready<Result<tonic::Response<pb::Customer>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<pb::GetCustomerRequest>) -> Self::Future {
        let mut reply = (*self.0).clone();
        reply.name = request.into_inner().name;
        std::future::ready(Ok(tonic::Response::new(reply)))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let reply = self.0.clone();
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<pb::Customer, pb::GetCustomerRequest>::default();
            Ok(tonic::server::Grpc::new(codec)
                .unary(EchoGet(reply), request)
                .await)
        })
    }
}

/// The echo server's process: prints its address, then serves until killed. Same
/// runtime (multi-threaded, one worker per core) and TCP settings as the hub.
pub fn serve_echo() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(Echo(Arc::new(sample_customer())))
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}
