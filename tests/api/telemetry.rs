//! Trace export end to end: the hub (built with the `otlp` feature, on by default)
//! sends its spans over OTLP/gRPC to `telemetry.otlp_endpoint`, here a minimal
//! collector inside the test. The hub runs as a child process because the tracing
//! subscriber it installs is global to its process.

use std::collections::HashMap;
use std::time::Duration;

use liaison::pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::helpers::{
    AdminServiceClient, Backend, Bearer, TestDatabase, bootstrap_operator, serve_process, sigterm,
};

/// A trace collector that hands every export it receives to the test.
struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts a collector on port 0; returns its endpoint and what it receives.
async fn collector() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (endpoint, rx)
}

/// A span as received: its name, its attributes and its resource's, as text.
#[derive(Debug)]
struct Received {
    name: String,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
}

fn text(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

fn spans(export: ExportTraceServiceRequest) -> Vec<Received> {
    let mut out = vec![];
    for resource_spans in export.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| text(&r.attributes))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(Received {
                name: span.name,
                attributes: text(&span.attributes),
                resource: resource.clone(),
            });
        }
    }
    out
}

/// Receives exports until one holds the `rpc` span of the request `request_id`.
async fn rpc_span(
    received: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    request_id: &str,
    within: Duration,
) -> Received {
    tokio::time::timeout(within, async {
        loop {
            let export = received.recv().await.expect("the collector is running");
            if let Some(span) = spans(export).into_iter().find(|s| {
                s.name == "rpc"
                    && s.attributes.get("request_id").map(String::as_str) == Some(request_id)
            }) {
                return span;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no rpc span of request {request_id} within {within:?}"))
}

/// The `rpc` span of every call reaches the collector while the hub runs, named for
/// the method and the caller's request id, under the configured service name; the
/// spans still buffered when the hub is stopped are sent on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_spans_reach_the_otlp_collector_while_the_hub_runs_and_as_it_stops() {
    let (endpoint, mut received) = collector().await;
    let (_db, url) = TestDatabase::create(&Backend::Sqlite).await;
    let key = bootstrap_operator(&url);
    let (mut server, addr, _log) = serve_process(
        &url,
        &[
            ("LIAISON_TELEMETRY_OTLP_ENDPOINT", &endpoint),
            ("LIAISON_TELEMETRY_SERVICE_NAME", "liaison-under-test"),
        ],
    )
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = AdminServiceClient::with_interceptor(channel, Bearer(key));
    let call = |request_id: &'static str| {
        let mut request = Request::new(pb::ListOrganizationsRequest::default());
        request
            .metadata_mut()
            .insert("x-request-id", request_id.parse().unwrap());
        request
    };

    admin
        .list_organizations(call("otlp-running"))
        .await
        .unwrap();
    // The exporter sends a batch every 5 s (the SDK's default schedule).
    let running = rpc_span(&mut received, "otlp-running", Duration::from_secs(15)).await;
    assert_eq!(
        running.attributes["method"],
        "/liaison.v1.AdminService/ListOrganizations"
    );
    assert_eq!(running.resource["service.name"], "liaison-under-test");

    // A batch went out just now, so the next is 5 s away: this span can only reach
    // the collector by the flush at shutdown.
    admin
        .list_organizations(call("otlp-stopping"))
        .await
        .unwrap();
    sigterm(&server);
    let stopping = rpc_span(&mut received, "otlp-stopping", Duration::from_secs(4)).await;
    assert_eq!(
        stopping.attributes["method"],
        "/liaison.v1.AdminService/ListOrganizations"
    );
    let status = tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("the hub exits in time")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
