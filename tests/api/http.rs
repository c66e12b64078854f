//! HTTP/JSON (issue 25): the routes the protos declare, errors in AIP-193's form,
//! Server-Sent Events, files as bytes, and the OpenAPI description. [`JsonWire`] lets
//! any gRPC client of these tests (the tenant matrix's) speak HTTP/JSON instead, the
//! way a partner's HTTP client would: the RPC's rule picks the method and path, the
//! rest goes in the query string or the body, the answer comes back from JSON.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http_body::Frame;
use http_body_util::BodyExt;
use liaison::api::http::bindings;
use liaison::api::http::message::BodyRule;
use liaison::pb;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use serde_json::{Value, json};
use tonic::body::Body;
use tonic::{Code, Status};

use crate::helpers::*;

crate::on_both_backends!(
    resources_are_created_read_changed_and_listed_over_http_json,
    errors_are_aip_193_json_with_the_status_and_details_grpc_gives,
    events_stream_as_server_sent_events_and_resume_from_last_event_id,
    an_export_file_is_read_as_its_bytes,
);

/// A boxed gRPC transport: a tonic channel, or [`JsonWire`]. Failures to reach the
/// hub are answered as UNAVAILABLE statuses, so it never fails itself.
pub type Wire = tower::util::BoxCloneService<
    http::Request<Body>,
    http::Response<Body>,
    std::convert::Infallible,
>;

/// The hub's gRPC channel as a [`Wire`].
pub fn grpc_wire(app: &TestApp) -> Wire {
    Wire::new(Grpc(app.channel.clone()))
}

/// A channel whose transport failures are UNAVAILABLE answers.
#[derive(Clone)]
struct Grpc(tonic::transport::Channel);

impl tower::Service<http::Request<Body>> for Grpc {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        use tower::ServiceExt;
        let channel = self.0.clone();
        Box::pin(async move {
            Ok(match channel.oneshot(request).await {
                Ok(response) => response,
                Err(error) => Status::unavailable(error.to_string()).into_http(),
            })
        })
    }
}

/// The hub's HTTP/JSON routes as a [`Wire`] for gRPC clients.
pub fn json_wire(app: &TestApp) -> Wire {
    Wire::new(JsonWire {
        base: format!("http://{}", app.http_addr),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client"),
        pool: Arc::new(liaison::feed::json::pool().clone()),
    })
}

/// Speaks HTTP/1.1 and JSON for a gRPC client (see the module's doc).
#[derive(Clone)]
struct JsonWire {
    base: String,
    client: reqwest::Client,
    pool: Arc<DescriptorPool>,
}

impl tower::Service<http::Request<Body>> for JsonWire {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.round_trip(request).await) })
    }
}

/// A gRPC answer made of `frames`.
fn grpc_response(body: Body) -> http::Response<Body> {
    let mut response = http::Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(message.len() + 5);
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    framed.freeze()
}

fn ok_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers
}

fn status_trailers(status: &Status) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    status
        .add_header(&mut headers)
        .expect("a status fits in headers");
    headers
}

/// The status an AIP-193 error body says, details included.
pub fn status_of(body: &Value) -> Status {
    let error = &body["error"];
    let name = error["status"].as_str().unwrap_or("UNKNOWN");
    let code = (0..17)
        .map(Code::from)
        .find(|c| liaison::api::http::status::code_name(*c) == name)
        .unwrap_or(Code::Unknown);
    let message = error["message"].as_str().unwrap_or_default().to_owned();
    let details = json!({
        "code": code as i32,
        "message": message,
        "details": error["details"].clone(),
    });
    let descriptor = liaison::feed::json::message_descriptor("google.rpc.Status");
    let details = DynamicMessage::deserialize(descriptor, details)
        .map(|m| m.encode_to_vec())
        .unwrap_or_default();
    Status::with_details(code, message, details.into())
}

/// The value of the field at dotted `path`, if it is a set string.
fn string_at(message: &DynamicMessage, path: &str) -> Option<String> {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let value = message.get_field_by_name(head)?;
    match rest {
        None => value.as_str().map(str::to_owned),
        Some(rest) => string_at(value.as_message()?, rest),
    }
}

fn clear_at(message: &mut DynamicMessage, path: &str) {
    match path.split_once('.') {
        None => message.clear_field_by_name(path),
        Some((head, rest)) => {
            if let Some(prost_reflect::Value::Message(inner)) = message.get_field_by_name_mut(head)
            {
                clear_at(inner, rest);
            }
        }
    }
}

/// Whether `value` has the shape of `pattern` (`customers/*`, `operations/**`).
fn fits(value: &str, pattern: &str) -> bool {
    let (values, patterns): (Vec<&str>, Vec<&str>) =
        (value.split('/').collect(), pattern.split('/').collect());
    if patterns.last() == Some(&"**") {
        return values.len() >= patterns.len()
            && values.iter().zip(&patterns).all(|(v, p)| match *p {
                "*" | "**" => !v.is_empty(),
                literal => v == &literal,
            });
    }
    values.len() == patterns.len()
        && values.iter().zip(&patterns).all(|(v, p)| match *p {
            "*" => !v.is_empty(),
            literal => v == &literal,
        })
}

/// Query pairs for a JSON value: nested objects by dotted names, lists repeated.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| flatten(prefix, item, out)),
        Value::String(text) => out.push((prefix.to_owned(), text.clone())),
        Value::Number(n) => out.push((prefix.to_owned(), n.to_string())),
        Value::Bool(b) => out.push((prefix.to_owned(), b.to_string())),
        Value::Null => {}
    }
}

/// An HTTP request for `method` with `message`, as its first fitting rule spells it.
pub fn http_request(
    pool: &DescriptorPool,
    method: &MethodDescriptor,
    message: &DynamicMessage,
) -> (http::Method, String, Option<Vec<u8>>) {
    let rules = bindings(pool, method).expect("every method has a rule");
    let chosen = rules
        .iter()
        .find(|b| {
            b.template.variables.iter().all(|v| {
                string_at(message, &v.field)
                    .is_some_and(|value| fits(&value, &b.template.pattern(v)))
            })
        })
        .unwrap_or(&rules[0]);
    let mut path = chosen.template.fill(|field| {
        string_at(message, field)
            .unwrap_or_default()
            .split('/')
            .map(|s| {
                percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("/")
    });
    let mut rest = message.clone();
    for variable in &chosen.template.variables {
        clear_at(&mut rest, &variable.field);
    }
    let json = |m: &DynamicMessage| serde_json::to_value(m).expect("a message is JSON");
    let (body, query) = match &chosen.body {
        BodyRule::Whole => (Some(json(message)), Value::Null),
        BodyRule::Field(field) => {
            let body = message
                .get_field_by_name(field)
                .and_then(|v| v.as_message().map(json));
            rest.clear_field_by_name(field);
            (body, json(&rest))
        }
        BodyRule::None => (None, json(&rest)),
    };
    let mut pairs = Vec::new();
    flatten("", &query, &mut pairs);
    if !pairs.is_empty() {
        path.push('?');
        path.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish(),
        );
    }
    (
        chosen.method.clone(),
        path,
        body.map(|b| serde_json::to_vec(&b).expect("JSON")),
    )
}

impl JsonWire {
    async fn round_trip(&self, request: http::Request<Body>) -> http::Response<Body> {
        let (parts, body) = request.into_parts();
        let grpc_path = parts.uri.path().trim_start_matches('/').to_owned();
        let (service, name) = grpc_path.split_once('/').expect("/service/method");
        let method = self
            .pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == name))
            .unwrap_or_else(|| panic!("{grpc_path} is in the descriptors"));
        let mut bytes = body.collect().await.expect("request body").to_bytes();
        let payload = bytes.split_off(5);
        let message = DynamicMessage::decode(method.input(), payload).expect("a request");
        let (verb, path, body) = http_request(&self.pool, &method, &message);
        let mut outgoing = self.client.request(verb, format!("{}{path}", self.base));
        if let Some(key) = parts.headers.get(http::header::AUTHORIZATION) {
            outgoing = outgoing.header(http::header::AUTHORIZATION, key.clone());
        }
        if let Some(body) = body {
            outgoing = outgoing
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = match outgoing.send().await {
            Ok(response) => response,
            Err(error) => {
                return Status::unavailable(format!("HTTP: {error}")).into_http();
            }
        };
        if !response.status().is_success() {
            let text = response.bytes().await.unwrap_or_default();
            let status = match serde_json::from_slice::<Value>(&text) {
                Ok(body) => status_of(&body),
                Err(_) => Status::unknown(format!(
                    "not an AIP-193 body: {}",
                    String::from_utf8_lossy(&text)
                )),
            };
            return status.into_http();
        }
        let output = method.output();
        if !method.is_server_streaming() {
            let text = response.bytes().await.unwrap_or_default();
            let message = DynamicMessage::deserialize(
                output.clone(),
                &mut serde_json::Deserializer::from_slice(&text),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "{grpc_path}: the answer is not a {}: {e}: {}",
                    output.name(),
                    String::from_utf8_lossy(&text)
                )
            });
            let frames: Vec<Result<_, Status>> = vec![
                Ok(Frame::data(frame(&message.encode_to_vec()))),
                Ok(Frame::trailers(ok_trailers())),
            ];
            return grpc_response(Body::new(http_body_util::StreamBody::new(
                futures_util::stream::iter(frames),
            )));
        }
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(16);
        tokio::spawn(pump(response, output, sender));
        grpc_response(Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

/// Turns a streamed HTTP answer (SSE, or a file's bytes) back into gRPC frames.
async fn pump(
    mut response: reqwest::Response,
    output: MessageDescriptor,
    sender: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Status>>,
) {
    let events = output.full_name() == "liaison.v1.WatchEventsResponse";
    // Bytes until a whole event is in: a character may be split across chunks.
    let mut text: Vec<u8> = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                let _ = sender
                    .send(Ok(Frame::trailers(status_trailers(&Status::unavailable(
                        format!("the stream broke: {error}"),
                    )))))
                    .await;
                return;
            }
        };
        if !events {
            let message = pb::ExportChunk {
                data: chunk.to_vec(),
            };
            if sender
                .send(Ok(Frame::data(frame(&message.encode_to_vec()))))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        text.extend_from_slice(&chunk);
        while let Some(end) = text.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = text.drain(..end + 2).collect();
            let block = String::from_utf8(block).expect("SSE is UTF-8");
            let event = sse_field(&block, "event").unwrap_or_default();
            let data = sse_field(&block, "data").unwrap_or_default();
            let data: Value = serde_json::from_str(&data).expect("SSE data is JSON");
            let frame = match event.as_str() {
                "error" => {
                    let _ = sender
                        .send(Ok(Frame::trailers(status_trailers(&status_of(&data)))))
                        .await;
                    return;
                }
                "progress" => json!({"progress": data}),
                _ => json!({"event": data}),
            };
            let message = DynamicMessage::deserialize(output.clone(), frame).expect("an event");
            if sender
                .send(Ok(Frame::data(self::frame(&message.encode_to_vec()))))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let _ = sender.send(Ok(Frame::trailers(ok_trailers()))).await;
}

/// The value of `name:` in one SSE block.
fn sse_field(block: &str, name: &str) -> Option<String> {
    block
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}: ")).map(str::to_owned))
}

// --- The tests --------------------------------------------------------------------

/// A plain HTTP/1.1 client, as a partner would use.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn call(
    app: &TestApp,
    key: &str,
    method: http::Method,
    path: &str,
    body: Option<Value>,
) -> (http::StatusCode, http::HeaderMap, Value) {
    let mut request = client()
        .request(method, format!("http://{}{path}", app.http_addr))
        .header("authorization", format!("Bearer {key}"));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("the hub answers");
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.bytes().await.unwrap();
    let json = serde_json::from_slice(&text)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&text)));
    (status, headers, json)
}

async fn resources_are_created_read_changed_and_listed_over_http_json(backend: Backend) {
    let app = spawn_app(backend).await;
    use http::Method as M;
    use http::StatusCode as S;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let shop = app.create_org("shop", pb::OrganizationKind::Retailer).await;
    app.partner(&acme, &shop).await;

    let (status, headers, created) = call(
        &app,
        &acme.admin_key,
        M::POST,
        "/v1/customers",
        Some(
            json!({"kind": "PERSON", "givenName": "Ada", "familyName": "Lovelace",
            "emails": [{"address": "ada@example.com"}], "tags": ["vip"]}),
        ),
    )
    .await;
    assert_eq!(status, S::OK, "{created}");
    assert!(headers.contains_key("x-request-id"));
    let name = created["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("customers/"));
    assert_eq!(
        created["displayName"], "Ada Lovelace",
        "lowerCamelCase names"
    );
    assert_eq!(created["kind"], "PERSON", "enums by name");
    assert!(
        created["createTime"].as_str().unwrap().ends_with('Z'),
        "RFC 3339"
    );

    // The same record over gRPC and over HTTP.
    let (_, _, got) = call(&app, &acme.admin_key, M::GET, &format!("/v1/{name}"), None).await;
    let grpc = app
        .customers(&acme.admin_key)
        .get_customer(pb::GetCustomerRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got["etag"].as_str(), Some(grpc.etag.as_str()));
    assert_eq!(got["displayName"], "Ada Lovelace");

    // PATCH with an update mask in the query; a stale etag is 409 ABORTED.
    let (status, _, patched) = call(
        &app,
        &acme.admin_key,
        M::PATCH,
        &format!("/v1/{name}?updateMask=tags"),
        Some(json!({"tags": ["vip", "gold"], "etag": grpc.etag})),
    )
    .await;
    assert_eq!(status, S::OK, "{patched}");
    assert_eq!(patched["tags"], json!(["vip", "gold"]));
    let (status, _, stale) = call(
        &app,
        &acme.admin_key,
        M::PATCH,
        &format!("/v1/{name}?updateMask=tags"),
        Some(json!({"tags": ["x"], "etag": grpc.etag})),
    )
    .await;
    assert_eq!(
        (status, stale["error"]["status"].as_str()),
        (S::CONFLICT, Some("ABORTED"))
    );

    // A second customer; pages of one, with the token in the query.
    call(
        &app,
        &acme.admin_key,
        M::POST,
        "/v1/customers",
        Some(json!({"kind": "COMPANY", "legalName": "Babbage Ltd"})),
    )
    .await;
    let mut seen = BTreeSet::new();
    let mut token = String::new();
    loop {
        let (status, _, page) = call(
            &app,
            &acme.read_key,
            M::GET,
            &format!("/v1/customers?pageSize=1&pageToken={token}"),
            None,
        )
        .await;
        assert_eq!(status, S::OK, "{page}");
        for c in page["customers"].as_array().unwrap() {
            seen.insert(c["name"].as_str().unwrap().to_owned());
        }
        token = page["nextPageToken"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.len(), 2);

    // A custom method (`:merge`); and the wall: Shop, without a grant, sees nothing.
    let (status, _, _) = call(&app, &shop.admin_key, M::GET, &format!("/v1/{name}"), None).await;
    assert_eq!(status, S::NOT_FOUND);
    let (status, _, listed) = call(&app, &shop.admin_key, M::GET, "/v1/customers", None).await;
    assert_eq!(status, S::OK);
    assert_eq!(listed.get("customers"), None, "{listed}");
    let (status, _, granted) = call(
        &app,
        &acme.admin_key,
        M::POST,
        &format!("/v1/{name}/grants"),
        Some(
            json!({"grantee": shop.name, "level": "ACCESS_LEVEL_READ", "fields": ["display_name"]}),
        ),
    )
    .await;
    assert_eq!(status, S::OK, "{granted}");
    let (status, _, seen_by_shop) =
        call(&app, &shop.read_key, M::GET, &format!("/v1/{name}"), None).await;
    assert_eq!(status, S::OK, "{seen_by_shop}");
    assert_eq!(seen_by_shop["displayName"], "Ada Lovelace");
    assert_eq!(
        seen_by_shop.get("emails"),
        None,
        "a field not granted stays hidden"
    );
    assert_eq!(seen_by_shop.get("tags"), None);

    // DELETE, then the owner lists its tombstones with a boolean in the query.
    let (status, _, deleted) = call(
        &app,
        &acme.admin_key,
        M::DELETE,
        &format!("/v1/{name}"),
        None,
    )
    .await;
    assert_eq!(
        (status, deleted["state"].as_str()),
        (S::OK, Some("DELETED"))
    );
    let (_, _, tombstones) = call(
        &app,
        &acme.read_key,
        M::GET,
        "/v1/customers?showDeleted=true",
        None,
    )
    .await;
    assert_eq!(tombstones["customers"].as_array().unwrap().len(), 2);
}

async fn errors_are_aip_193_json_with_the_status_and_details_grpc_gives(backend: Backend) {
    let app = spawn_app(backend).await;
    use http::Method as M;
    use http::StatusCode as S;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;

    // A field violation: 400, with google.rpc.BadRequest naming the field.
    let (status, _, body) = call(
        &app,
        &acme.admin_key,
        M::POST,
        "/v1/customers",
        Some(json!({"kind": "PERSON"})),
    )
    .await;
    assert_eq!(status, S::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], 400);
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    let grpc = app
        .customers(&acme.admin_key)
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(pb::Customer {
                kind: pb::CustomerKind::Person as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(body["error"]["message"].as_str(), Some(grpc.message()));
    let bad_request = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .unwrap_or_else(|| panic!("no BadRequest: {body}"))
        .clone();
    assert!(
        !bad_request["fieldViolations"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // JSON that does not fit the message, and a query field that does not exist.
    let (status, _, body) = call(
        &app,
        &acme.admin_key,
        M::POST,
        "/v1/customers",
        Some(json!({"kind": "NO_SUCH_KIND"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (S::BAD_REQUEST, Some("INVALID_ARGUMENT"))
    );
    let (status, _, body) = call(
        &app,
        &acme.read_key,
        M::GET,
        "/v1/customers?pageSiz=3",
        None,
    )
    .await;
    assert_eq!(status, S::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pageSiz"),
        "{body}"
    );

    // Missing and wrong keys, a read key writing, an unknown record.
    let (status, _, body) = call(&app, "", M::GET, "/v1/customers", None).await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (S::UNAUTHORIZED, Some("UNAUTHENTICATED"))
    );
    let (status, _, body) = call(
        &app,
        &acme.read_key,
        M::POST,
        "/v1/customers",
        Some(json!({"kind": "COMPANY", "legalName": "X"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (S::FORBIDDEN, Some("PERMISSION_DENIED"))
    );
    let (status, _, body) = call(&app, &acme.read_key, M::GET, "/v1/customers/nope", None).await;
    let grpc = app
        .customers(&acme.read_key)
        .get_customer(pb::GetCustomerRequest {
            name: "customers/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(body["error"]["message"].as_str(), Some(grpc.message()));
    assert_eq!(status, liaison::api::http::status::http_status(grpc.code()));

    // No such route; a route for other methods (405 with Allow).
    let (status, _, body) = call(&app, &acme.read_key, M::GET, "/v1/nothing", None).await;
    assert_eq!(status, S::NOT_FOUND);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/openapi.json")
    );
    let (status, headers, _) = call(&app, &acme.read_key, M::PUT, "/v1/customers", None).await;
    assert_eq!(status, S::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, POST");

    // A body past the server's message limit is refused before it is read whole.
    let huge = "x".repeat(app.config.server.max_message_bytes + 1);
    let (status, _, body) = call(
        &app,
        &acme.admin_key,
        M::POST,
        "/v1/customers",
        Some(json!({"kind": "COMPANY", "legalName": huge})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (S::PAYLOAD_TOO_LARGE, Some("RESOURCE_EXHAUSTED"))
    );

    // The body is read only once the caller is known: a stranger's JSON, however bad,
    // gets 401, and nothing of it is parsed.
    let (status, _, _) = call(
        &app,
        "",
        M::POST,
        "/v1/customers",
        Some(json!({"kind": "NO_SUCH_KIND"})),
    )
    .await;
    assert_eq!(status, S::UNAUTHORIZED);
    // A bad query value is named by its own key.
    let (_, _, body) = call(
        &app,
        &acme.read_key,
        M::GET,
        "/v1/customers?pageSize=many",
        None,
    )
    .await;
    let violations = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|d| d["fieldViolations"].as_array().cloned())
        .unwrap_or_else(|| panic!("no field violations: {body}"));
    assert_eq!(violations[0]["field"], "pageSize", "{body}");
}

async fn events_stream_as_server_sent_events_and_resume_from_last_event_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let open = |last: Option<i64>| {
        let mut request = client()
            .get(format!(
                "http://{}/v1/events:watch?eventTypes=customer.*",
                app.http_addr
            ))
            .header("authorization", format!("Bearer {}", acme.read_key))
            .header("accept", "text/event-stream");
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        request.send()
    };
    let mut stream = open(None).await.unwrap();
    assert_eq!(stream.status(), http::StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    for given in ["Ada", "Grace", "Hedy"] {
        crate::customers::create(
            &app,
            &acme,
            crate::customers::person(given, "X", "a@example.com"),
        )
        .await;
    }
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if sse_field(&block, "event").as_deref() == Some("customer.created") {
                let id: i64 = sse_field(&block, "id").unwrap().parse().unwrap();
                let data: Value =
                    serde_json::from_str(&sse_field(&block, "data").unwrap()).unwrap();
                assert_eq!(data["sequence"].as_str(), Some(id.to_string().as_str()));
                events.push((
                    id,
                    data["customer"]["givenName"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    drop(stream);
    assert_eq!(
        events.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(),
        ["Ada", "Grace", "Hedy"]
    );
    // A client reconnecting after the first event gets the two after it, nothing before.
    let mut resumed = open(Some(events[0].0)).await.unwrap();
    let mut text = String::new();
    let mut again = Vec::new();
    while again.len() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resumed.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(id) = sse_field(&block, "id")
                && sse_field(&block, "event").as_deref() != Some("progress")
            {
                again.push(id.parse::<i64>().unwrap());
            }
        }
    }
    assert_eq!(again, vec![events[1].0, events[2].0]);

    // A bad Last-Event-ID is the client's mistake, said before the stream starts.
    let bad = client()
        .get(format!("http://{}/v1/events:watch", app.http_addr))
        .header("authorization", format!("Bearer {}", acme.read_key))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), http::StatusCode::BAD_REQUEST);
}

async fn an_export_file_is_read_as_its_bytes(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    for given in ["Ada", "Grace"] {
        crate::customers::create(
            &app,
            &acme,
            crate::customers::person(given, "X", "a@example.com"),
        )
        .await;
    }
    let (status, _, operation) = call(
        &app,
        &acme.read_key,
        http::Method::POST,
        "/v1/customers:export",
        Some(json!({"format": "CSV"})),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK, "{operation}");
    let name = operation["name"].as_str().unwrap().to_owned();
    let done = crate::webhooks::eventually("the export to finish", async || {
        app.settle().await;
        let (_, _, op) = call(
            &app,
            &acme.read_key,
            http::Method::GET,
            &format!("/v1/{name}"),
            None,
        )
        .await;
        (op["done"] == true).then_some(op)
    })
    .await;
    assert_eq!(done["response"]["records"].as_str(), Some("2"), "{done}");
    let file = client()
        .get(format!("http://{}/v1/{name}:read", app.http_addr))
        .header("authorization", format!("Bearer {}", acme.read_key))
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), http::StatusCode::OK);
    assert_eq!(file.headers()["content-type"], "application/octet-stream");
    let text = String::from_utf8(file.bytes().await.unwrap().to_vec()).unwrap();
    let (grpc, _) = crate::exports::read(&app, &acme.read_key, &name)
        .await
        .unwrap();
    assert_eq!(text.as_bytes(), grpc.as_slice(), "the same file both ways");
    assert_eq!(
        text.lines().count(),
        3,
        "a header and two customers:\n{text}"
    );
}

/// With `server.http_listen` set, HTTP/JSON has a port of its own, the gRPC port
/// serves gRPC alone and says where HTTP/JSON went, and a gRPC call reaches the same
/// records either way.
#[tokio::test]
async fn http_json_can_have_a_port_of_its_own() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.server.http_listen = "127.0.0.1:0".into();
    })
    .await;
    assert_ne!(app.http_addr, app.addr);
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    let (status, _, created) = call(
        &app,
        &acme.admin_key,
        http::Method::POST,
        "/v1/customers",
        Some(json!({"kind": "COMPANY", "legalName": "Apart Ltd"})),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK, "{created}");
    let name = created["name"].as_str().unwrap();
    let got = app
        .customers(&acme.read_key)
        .get_customer(pb::GetCustomerRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.display_name, "Apart Ltd");
    let refused = client()
        .get(format!("http://{}/v1/customers", app.addr))
        .header("authorization", format!("Bearer {}", acme.read_key))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), http::StatusCode::NOT_FOUND);
    assert!(refused.text().await.unwrap().contains("server.http_listen"));
    // And HTTP/JSON's own port refuses gRPC.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.http_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let refused = pb::customer_service_client::CustomerServiceClient::with_interceptor(
        channel,
        Bearer(acme.read_key.clone()),
    )
    .get_customer(pb::GetCustomerRequest { name: name.into() })
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
}

/// Every path the OpenAPI document lists answers with a route of its own: with
/// made-up names each is refused (404, 400, 403), but never with the "no method is
/// served" of a path the router does not know.
#[tokio::test]
async fn every_documented_route_answers_and_the_document_is_served() {
    let app = spawn_app(Backend::Sqlite).await;
    let served = client()
        .get(format!("http://{}/openapi.json", app.http_addr))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let served: Value = serde_json::from_slice(&served).unwrap();
    let document: Value = serde_json::from_str(liaison::api::http::OPENAPI_DOCUMENT).unwrap();
    assert_eq!(served, document);
    assert_eq!(document["openapi"], "3.1.0");
    let mut routes = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        // Each parameter gets a made-up value.
        let mut concrete = String::new();
        let mut inside = false;
        for c in path.chars() {
            match c {
                '{' => inside = true,
                '}' => {
                    inside = false;
                    concrete.push('x');
                }
                _ if inside => {}
                c => concrete.push(c),
            }
        }
        for method in operations.as_object().unwrap().keys() {
            let method = http::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = client()
                .request(
                    method.clone(),
                    format!("http://{}{concrete}", app.http_addr),
                )
                .header("authorization", format!("Bearer {}", app.operator_key))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            assert!(
                !text.contains("no method is served")
                    && status != http::StatusCode::METHOD_NOT_ALLOWED,
                "{method} {concrete} ({path}) has no route: {status} {text}"
            );
            routes += 1;
        }
    }
    assert!(routes >= 120, "only {routes} routes documented");
}
