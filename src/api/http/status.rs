//! A gRPC status as an HTTP/JSON answer: the HTTP status of AIP-193's mapping and a
//! `google.rpc.Status` body in its JSON form, details included
//! (`{"error": {"code": 404, "status": "NOT_FOUND", "message": …, "details": […]}}`).
//! The status itself comes from the one conversion in [`crate::api::status`].

use bytes::Bytes;
use prost_reflect::DynamicMessage;
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The HTTP status AIP-193 (and `google/rpc/code.proto`) give each code.
pub fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as S;
    match code {
        Code::Ok => S::OK,
        // 499 Client Closed Request: no constant, always valid.
        Code::Cancelled => S::from_u16(499).expect("499 is a status"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => S::BAD_REQUEST,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => S::CONFLICT,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
    }
}

/// The canonical name of `code` (`NOT_FOUND`), as `google.rpc.Code` spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The JSON body of `status`: AIP-193's error object, its details decoded through
/// the compiled descriptors (`google.rpc.BadRequest`, `ErrorInfo`, …) with their
/// `@type`.
pub fn body(status: &Status) -> Value {
    let code = status.code();
    let details = (!status.details().is_empty())
        .then(|| {
            let descriptor = crate::feed::json::message_descriptor("google.rpc.Status");
            let decoded = DynamicMessage::decode(descriptor, status.details()).ok()?;
            let json = serde_json::to_value(&decoded).ok()?;
            json.get("details").cloned()
        })
        .flatten()
        .unwrap_or_else(|| Value::Array(Vec::new()));
    json!({
        "error": {
            "code": http_status(code).as_u16(),
            "status": code_name(code),
            "message": status.message(),
            "details": details,
        }
    })
}

/// `status` as a whole HTTP answer: its HTTP status, the JSON body, and
/// `Retry-After` when the hub said when to retry.
pub fn response(status: &Status) -> http::Response<Bytes> {
    let mut response = http::Response::new(Bytes::from(body(status).to_string()));
    // Too large is not "too many": a client must not retry it as it is.
    *response.status_mut() = match status.get_details_error_info().map(|i| i.reason) {
        Some(reason) if reason == "REQUEST_TOO_LARGE" => http::StatusCode::PAYLOAD_TOO_LARGE,
        Some(reason) if reason == "METADATA_TOO_LARGE" => {
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        }
        _ => http_status(status.code()),
    };
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        // Whole seconds, rounded up: HTTP has no finer unit.
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(seconds.max(1)),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error::{Error, FieldViolation};

    #[test]
    fn errors_carry_aip_193_status_and_details() {
        let status = Status::from(Error::InvalidArgument(vec![FieldViolation::new(
            "customer.display_name",
            "is required",
        )]));
        let response = response(&status);
        assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
        let body: Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"]["code"], 400);
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
        let details = body["error"]["details"].as_array().unwrap();
        let bad_request = details
            .iter()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
            .unwrap_or_else(|| panic!("no BadRequest in {details:?}"));
        assert_eq!(
            bad_request["fieldViolations"][0]["field"],
            "customer.display_name"
        );

        let throttled = Status::from(Error::Contention {
            reason: "CONCURRENT_WRITE",
            message: "lost".into(),
            retry_after: std::time::Duration::from_millis(1500),
        });
        let response = super::response(&throttled);
        assert_eq!(response.status(), http::StatusCode::CONFLICT);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "2");
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(http_status(Code::ResourceExhausted).as_u16(), 429);
    }
}
