//! HTTP/JSON beside gRPC. A request whose content type is not gRPC's is found in the
//! routes the protos' `google.api.http` rules declare (AIP-127), turned into the gRPC
//! request those rules spell, and passed to the same stack a gRPC call takes: the
//! edge (authentication, limits, deadline, log line, metrics) and the same handler.
//! The answer comes back as JSON, an error as AIP-193's JSON with its HTTP status,
//! `WatchEvents` as Server-Sent Events, and an export's file as its bytes.

pub mod message;
pub mod openapi;
pub mod status;
pub mod table;
pub mod template;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{Layer, Service};

use self::message::BodyRule;
use self::table::{Miss, Table};
use self::template::Template;
use crate::domain::error::Error;

/// Where the OpenAPI description is served.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// The OpenAPI description, written by `build.rs` from the protos.
pub const OPENAPI_DOCUMENT: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));
/// gRPC frames each message with a flag byte and a 4-byte length.
const FRAME_HEADER: usize = 5;

/// How a method's answer is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// One message, as JSON.
    Unary,
    /// A stream of messages as Server-Sent Events (`text/event-stream`).
    Events,
    /// A stream of messages of one `bytes` field: those bytes, in order (a file).
    Bytes,
}

/// One HTTP binding of an RPC.
struct Route {
    /// `/liaison.v1.CustomerService/GetCustomer`.
    grpc_path: String,
    input: MessageDescriptor,
    output: MessageDescriptor,
    body: BodyRule,
    answer: Answer,
}

/// Every RPC's HTTP routes, read from the compiled descriptors.
pub struct Routes {
    table: Table,
    routes: Vec<Route>,
}

/// One HTTP binding of a method.
pub struct Binding {
    pub method: http::Method,
    pub template: Template,
    pub body: BodyRule,
}

/// The HTTP bindings of `method`; `Err` when it has no rule or a rule is malformed.
pub fn bindings(
    pool: &DescriptorPool,
    method: &prost_reflect::MethodDescriptor,
) -> Result<Vec<Binding>, String> {
    openapi::rules(pool, method)?
        .into_iter()
        .map(|rule| {
            let verb = http::Method::from_bytes(rule.method.as_bytes())
                .map_err(|e| format!("{}: {e}", method.full_name()))?;
            let template =
                Template::parse(&rule.path).map_err(|e| format!("{}: {e}", method.full_name()))?;
            let body = match rule.body.as_str() {
                "" => BodyRule::None,
                "*" => BodyRule::Whole,
                field => BodyRule::Field(field.to_owned()),
            };
            Ok(Binding {
                method: verb,
                template,
                body,
            })
        })
        .collect()
}

impl Routes {
    /// Every served method's routes; `Err` names a method without a rule, a rule that
    /// binds a field the request does not have, or two rules that clash.
    pub fn load(pool: &DescriptorPool) -> Result<Self, String> {
        let mut table = Table::default();
        let mut routes = Vec::new();
        for method in openapi::served(pool) {
            let input = method.input();
            let output = method.output();
            let answer = if !method.is_server_streaming() {
                Answer::Unary
            } else if output.full_name() == openapi::EVENT_STREAM {
                Answer::Events
            } else if output.fields().len() == 1
                && output
                    .fields()
                    .all(|f| f.kind() == Kind::Bytes && !f.is_list())
            {
                Answer::Bytes
            } else {
                return Err(format!(
                    "{}: no HTTP form for a stream of {}",
                    method.full_name(),
                    output.full_name()
                ));
            };
            if method.is_client_streaming() {
                return Err(format!(
                    "{}: client streams are not served over HTTP",
                    method.full_name()
                ));
            }
            for binding in bindings(pool, &method)? {
                for variable in &binding.template.variables {
                    check_field(&input, &variable.field)
                        .map_err(|e| format!("{}: {e}", method.full_name()))?;
                }
                if let BodyRule::Field(field) = &binding.body {
                    check_field(&input, field)
                        .map_err(|e| format!("{}: {e}", method.full_name()))?;
                }
                table.insert(binding.method.clone(), &binding.template, routes.len())?;
                routes.push(Route {
                    grpc_path: format!(
                        "/{}/{}",
                        method.parent_service().full_name(),
                        method.name()
                    ),
                    input: input.clone(),
                    output: output.clone(),
                    body: binding.body,
                    answer,
                });
            }
        }
        Ok(Self { table, routes })
    }
}

/// Checks that the dotted `path` names a field of `message`.
fn check_field(message: &MessageDescriptor, path: &str) -> Result<(), String> {
    let mut current = message.clone();
    let names: Vec<&str> = path.split('.').collect();
    for (i, name) in names.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .ok_or_else(|| format!("`{path}` is not a field of {}", message.full_name()))?;
        if i + 1 < names.len() {
            let Kind::Message(inner) = field.kind() else {
                return Err(format!("`{path}`: `{name}` has no fields"));
            };
            current = inner;
        }
    }
    Ok(())
}

/// What a port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serves {
    Both,
    GrpcOnly,
    HttpOnly,
}

/// JSON spells a message in more bytes than protobuf (names, base64, quotes): a JSON
/// body may be this many times the server's message limit. The message it makes is
/// still held to the caller's own limit, at the edge.
const JSON_OVERHEAD: usize = 2;

/// Puts HTTP/JSON in front of the gRPC services (see the module's doc).
#[derive(Clone)]
pub struct HttpJsonLayer {
    routes: Arc<Routes>,
    max_body_bytes: usize,
    max_header_bytes: usize,
    serves: Serves,
}

impl HttpJsonLayer {
    /// `max_message_bytes`: the server's message limit (a JSON body may be
    /// [`JSON_OVERHEAD`] times that). `max_header_bytes`: the largest header list of a
    /// request (`server.max_header_list_bytes`), which the edge checks for gRPC.
    pub fn new(routes: Arc<Routes>, max_message_bytes: usize, max_header_bytes: usize) -> Self {
        Self {
            routes,
            max_body_bytes: max_message_bytes.saturating_mul(JSON_OVERHEAD),
            max_header_bytes,
            serves: Serves::Both,
        }
    }

    /// The layer of the gRPC port when HTTP/JSON has a port of its own: anything that
    /// is not gRPC is told where to go.
    pub fn grpc_only(self) -> Self {
        Self {
            serves: Serves::GrpcOnly,
            ..self
        }
    }

    /// The layer of HTTP/JSON's own port: gRPC is refused there.
    pub fn http_only(self) -> Self {
        Self {
            serves: Serves::HttpOnly,
            ..self
        }
    }
}

impl<S> Layer<S> for HttpJsonLayer {
    type Service = HttpJson<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpJson {
            inner,
            routes: self.routes.clone(),
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            serves: self.serves,
        }
    }
}

#[derive(Clone)]
pub struct HttpJson<S> {
    inner: S,
    routes: Arc<Routes>,
    max_body_bytes: usize,
    max_header_bytes: usize,
    serves: Serves,
}

/// Whether `request` is a gRPC call (`application/grpc`, `application/grpc+proto`).
fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl<S> Service<http::Request<Body>> for HttpJson<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone takes the place of the service that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let refusal = match (is_grpc(&request), self.serves) {
            (true, Serves::HttpOnly) => Some(
                Status::unimplemented(
                    "this port serves HTTP/JSON only; gRPC is served at `listen`",
                )
                .into_http(),
            ),
            (true, _) => return Box::pin(inner.call(request)),
            (false, Serves::GrpcOnly) => Some(failure(&Status::not_found(
                "this port serves gRPC only; HTTP/JSON is served at `server.http_listen`",
            ))),
            (false, _) => None,
        };
        if let Some(refusal) = refusal {
            return Box::pin(async move { Ok(refusal) });
        }
        let routes = self.routes.clone();
        let limits = (self.max_body_bytes, self.max_header_bytes);
        Box::pin(async move {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let response = serve(inner, &routes, limits, request).await?;
            if response.status().is_client_error() || response.status().is_server_error() {
                tracing::info!(%method, %path, status = response.status().as_u16(), "http request refused");
            }
            Ok(response)
        })
    }
}

fn with_body(response: http::Response<Bytes>) -> http::Response<Body> {
    response.map(|bytes| Body::new(http_body_util::Full::new(bytes)))
}

fn failure(status: &Status) -> http::Response<Body> {
    with_body(status::response(status))
}

/// Answers one HTTP request: the OpenAPI description, or an RPC through `inner`.
async fn serve<S>(
    mut inner: S,
    routes: &Routes,
    (max_body_bytes, max_header_bytes): (usize, usize),
    request: http::Request<Body>,
) -> Result<http::Response<Body>, S::Error>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if path == OPENAPI_PATH && parts.method == http::Method::GET {
        let mut response = http::Response::new(Bytes::from_static(OPENAPI_DOCUMENT.as_bytes()));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return Ok(with_body(response));
    }
    let found = match routes.table.find(&parts.method, path) {
        Ok(found) => found,
        Err(Miss::NoPath) => {
            return Ok(failure(&Status::not_found(format!(
                "no method is served at {} {path}; the API is described at {OPENAPI_PATH}",
                parts.method
            ))));
        }
        Err(Miss::OtherMethods(allowed)) => {
            let allow = allowed
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let status =
                Status::unimplemented(format!("{path} answers {allow}, not {}", parts.method));
            let mut body = status::body(&status);
            body["error"]["code"] = 405.into();
            let mut response = with_body(http::Response::new(Bytes::from(body.to_string())));
            *response.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            if let Ok(value) = http::HeaderValue::from_str(&allow) {
                response.headers_mut().insert(http::header::ALLOW, value);
            }
            return Ok(response);
        }
    };
    let route = &routes.routes[found.route];
    // The edge measures the gRPC request, which carries a few of these headers only.
    let header_bytes = crate::api::edge::header_list_size(&parts.headers);
    if header_bytes > max_header_bytes {
        return Ok(failure(&Status::from(Error::ResourceExhausted {
            reason: "METADATA_TOO_LARGE",
            message: format!(
                "the request's headers are {header_bytes} bytes; at most {max_header_bytes} are accepted"
            ),
        })));
    }
    // A caller known by its TLS certificate alone, with a body that is not declared
    // JSON, may be a browser made to post a form by another site: refused.
    let declared_json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim().to_ascii_lowercase();
            v == "application/json" || v.ends_with("+json")
        });
    let has_body = !body.is_end_stream();
    if has_body
        && !declared_json
        && !parts.headers.contains_key(http::header::AUTHORIZATION)
        && parts.extensions.get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>().is_some()
    {
        let mut response = failure(&Status::invalid_argument(
            "a request authenticated by its client certificate must send its body as \
             `Content-Type: application/json`",
        ));
        *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return Ok(response);
    }
    // An EventSource reconnecting says where it was: that wins over the URL it
    // first opened. An empty id means none.
    let overrides: Vec<(String, String)> = (route.answer == Answer::Events)
        .then(|| parts.headers.get("last-event-id"))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(|id| vec![("after_sequence".to_owned(), id.to_owned())])
        .unwrap_or_default();
    // The body is read and made into the message only when the handler reads it:
    // after the edge has authenticated and admitted the caller, under its deadline.
    let message = LazyMessage::Pending(Box::pin(read_message(
        body,
        max_body_bytes,
        route.input.clone(),
        route.body.clone(),
        found.bindings,
        parts.uri.query().map(str::to_owned),
        overrides,
    )));
    let grpc = grpc_request(parts, &route.grpc_path, message);
    let response = inner.call(grpc).await?;
    Ok(answer(route, response).await)
}

/// Reads an HTTP body (at most `max_body_bytes`) and makes the framed gRPC request
/// message of it with the path's and the query's fields.
async fn read_message(
    body: Body,
    max_body_bytes: usize,
    input: MessageDescriptor,
    rule: BodyRule,
    bindings: Vec<(String, String)>,
    query: Option<String>,
    overrides: Vec<(String, String)>,
) -> Result<Bytes, Status> {
    let body = match http_body_util::Limited::new(body, max_body_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(Status::from(Error::ResourceExhausted {
                reason: "REQUEST_TOO_LARGE",
                message: format!("the body is larger than {max_body_bytes} bytes"),
            }));
        }
        Err(error) => {
            return Err(Status::cancelled(format!(
                "the body could not be read: {error}"
            )));
        }
    };
    let message = message::request(
        &input,
        &rule,
        &message::Parts {
            bindings: &bindings,
            query: query.as_deref(),
            body: &body,
            overrides: &overrides,
        },
    )
    .map_err(Status::from)?;
    let mut frame = BytesMut::with_capacity(FRAME_HEADER + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.put_slice(&message);
    Ok(frame.freeze())
}

/// The gRPC request body of an HTTP request: its one message, made when first read.
enum LazyMessage {
    Pending(BoxFuture<'static, Result<Bytes, Status>>),
    Done,
}

impl HttpBody for LazyMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let LazyMessage::Pending(making) = &mut *self else {
            return Poll::Ready(None);
        };
        let made = std::task::ready!(making.as_mut().poll(cx));
        *self = LazyMessage::Done;
        Poll::Ready(Some(made.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, LazyMessage::Done)
    }
}

/// The gRPC call an HTTP request makes: its key, request id and connection (TLS
/// client certificate) go along.
fn grpc_request(
    parts: http::request::Parts,
    path: &str,
    message: LazyMessage,
) -> http::Request<Body> {
    let mut request = http::Request::new(Body::new(message));
    *request.method_mut() = http::Method::POST;
    *request.version_mut() = http::Version::HTTP_2;
    *request.uri_mut() = http::Uri::try_from(path).unwrap_or_default();
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    for name in [
        http::header::AUTHORIZATION.as_str(),
        crate::api::edge::REQUEST_ID_HEADER,
    ] {
        if let Some(value) = parts.headers.get(name) {
            headers.insert(name, value.clone());
        }
    }
    *request.extensions_mut() = parts.extensions;
    request
}

/// The HTTP answer to the gRPC `response` of `route`.
async fn answer(route: &Route, response: http::Response<Body>) -> http::Response<Body> {
    let (head, body) = response.into_parts();
    let request_id = head
        .headers
        .get(crate::api::edge::REQUEST_ID_HEADER)
        .cloned();
    let mut answer = match Status::from_header_map(&head.headers) {
        // A trailers-only answer: the call failed before any message.
        Some(status) if status.code() != Code::Ok => failure(&status),
        _ => match route.answer {
            Answer::Unary => unary(route, body).await,
            Answer::Events | Answer::Bytes => {
                let content_type = if route.answer == Answer::Events {
                    "text/event-stream"
                } else {
                    "application/octet-stream"
                };
                let mut response = http::Response::new(Body::new(Transcoded {
                    inner: body,
                    buffer: BytesMut::new(),
                    output: route.output.clone(),
                    answer: route.answer,
                    finished: false,
                    ended_ok: false,
                }));
                let headers = response.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(content_type),
                );
                headers.insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
                response
            }
        },
    };
    if let Some(id) = request_id {
        answer
            .headers_mut()
            .insert(crate::api::edge::REQUEST_ID_HEADER, id);
    }
    answer
}

async fn unary(route: &Route, body: Body) -> http::Response<Body> {
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(status) => return failure(&status),
    };
    if let Some(status) = collected.trailers().and_then(Status::from_header_map)
        && status.code() != Code::Ok
    {
        return failure(&status);
    }
    let mut bytes = collected.to_bytes();
    let Some(payload) = next_frame(&mut bytes) else {
        return failure(&Status::internal("the answer held no message"));
    };
    match message::answer(&route.output, &payload) {
        Ok(json) => {
            let mut response = http::Response::new(Bytes::from(json));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            with_body(response)
        }
        Err(error) => failure(&Status::from(error)),
    }
}

/// Takes the next whole gRPC message off the front of `buffer`, if it holds one.
fn next_frame<B: Buf + AsRef<[u8]>>(buffer: &mut B) -> Option<Bytes> {
    let header = buffer.as_ref().get(..FRAME_HEADER)?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if buffer.remaining() < FRAME_HEADER + length {
        return None;
    }
    buffer.advance(FRAME_HEADER);
    Some(buffer.copy_to_bytes(length))
}

/// A gRPC answer stream, re-framed for HTTP as it arrives: Server-Sent Events, or
/// the bytes of a file.
struct Transcoded {
    inner: Body,
    buffer: BytesMut,
    output: MessageDescriptor,
    answer: Answer,
    finished: bool,
    /// The call's OK status arrived: the stream ended whole.
    ended_ok: bool,
}

impl Transcoded {
    fn render(&self, payload: &[u8]) -> Result<Bytes, Status> {
        let message = DynamicMessage::decode(self.output.clone(), payload)
            .map_err(|e| Status::internal(format!("an answer does not decode: {e}")))?;
        match self.answer {
            Answer::Bytes => Ok(message
                .fields()
                .find_map(|(_, v)| v.as_bytes().cloned())
                .unwrap_or_default()),
            _ => Ok(Bytes::from(server_sent_event(&message))),
        }
    }

    /// The end of the stream on a failed call: an `error` event, or (for a file,
    /// which cannot say so inside itself) an aborted body, so no client keeps a short
    /// file as whole.
    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.finished = true;
        match self.answer {
            Answer::Bytes => Poll::Ready(Some(Err(status))),
            _ => Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!(
                "event: error\ndata: {}\n\n",
                status::body(&status)
            )))))),
        }
    }
}

/// One message of `WatchEvents` as an SSE event: an event under its type with its
/// sequence as the id, or a `progress` mark with the sequence it vouches for, so a
/// client resuming with `Last-Event-ID` misses nothing.
fn server_sent_event(message: &DynamicMessage) -> String {
    let json = |m: &DynamicMessage| serde_json::to_string(m).unwrap_or_else(|_| "{}".into());
    let field = |m: &DynamicMessage, name: &str| m.get_field_by_name(name).map(|v| v.into_owned());
    let sequence = |m: &DynamicMessage| {
        field(m, "sequence")
            .and_then(|v| v.as_i64())
            .unwrap_or_default()
    };
    if message.has_field_by_name("event")
        && let Some(prost_reflect::Value::Message(event)) = field(message, "event")
    {
        let kind = field(&event, "type")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        return format!(
            "id: {}\nevent: {kind}\ndata: {}\n\n",
            sequence(&event),
            json(&event)
        );
    }
    if message.has_field_by_name("progress")
        && let Some(prost_reflect::Value::Message(progress)) = field(message, "progress")
    {
        return format!(
            "id: {}\nevent: progress\ndata: {}\n\n",
            sequence(&progress),
            json(&progress)
        );
    }
    format!("data: {}\n\n", json(message))
}

impl HttpBody for Transcoded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            if let Some(payload) = next_frame(&mut self.buffer) {
                return match self.render(&payload) {
                    Ok(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                    Err(status) => self.fail(status),
                };
            }
            match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        let status = frame.trailers_ref().and_then(Status::from_header_map);
                        match status {
                            Some(status) if status.code() != Code::Ok => return self.fail(status),
                            Some(_) => self.ended_ok = true,
                            None => {}
                        }
                    }
                },
                Some(Err(status)) => return self.fail(status),
                // Without its OK status, or with half a message left, the stream
                // was cut short: said as a failure, never as a whole answer.
                None if !self.ended_ok || !self.buffer.is_empty() => {
                    return self.fail(Status::unavailable("the answer ended early; read it again"));
                }
                None => {
                    self.finished = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}
