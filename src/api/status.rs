//! The one conversion of the hub's errors to the gRPC wire: a canonical code, the
//! message, and `google.rpc` details (`BadRequest`, `ErrorInfo`, `RetryInfo`,
//! `PreconditionFailure`). Internal causes are logged here and never sent.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::error::{Error, FieldViolation, describe};

/// Most field violations sent in one error: they travel in HTTP/2 trailers, which
/// peers cap (16 KiB by default); the message says how many more there were.
const MAX_SENT_VIOLATIONS: usize = 50;

/// The `ErrorInfo.domain` of every error the hub returns.
pub const ERROR_DOMAIN: &str = "liaison";

/// The gRPC code of `error`.
pub fn code(error: &Error) -> Code {
    match error {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) | Error::Merged { .. } => Code::NotFound,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::StaleEtag(_) => Code::Aborted,
        Error::FailedPrecondition { .. } | Error::WrongState { .. } => Code::FailedPrecondition,
        Error::Unauthenticated { .. } => Code::Unauthenticated,
        Error::PermissionDenied { .. } => Code::PermissionDenied,
        Error::ResourceExhausted { .. } | Error::Throttled { .. } => Code::ResourceExhausted,
        Error::OutOfRange { .. } => Code::OutOfRange,
        Error::Unavailable(_) | Error::DatabaseUnavailable { .. } => Code::Unavailable,
        Error::Contention { .. } => Code::Aborted,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        Error::Internal(_) => Code::Internal,
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let mut details = ErrorDetails::new();
        let message = match &error {
            Error::InvalidArgument(violations) => {
                for v in violations.iter().take(MAX_SENT_VIOLATIONS) {
                    details.add_bad_request_violation(&v.field, &v.description);
                }
                let shown = &violations[..violations.len().min(MAX_SENT_VIOLATIONS)];
                let mut message = format!("invalid argument: {}", describe(shown));
                if violations.len() > MAX_SENT_VIOLATIONS {
                    message.push_str(&format!(
                        " (and {} more)",
                        violations.len() - MAX_SENT_VIOLATIONS
                    ));
                }
                message
            }
            Error::Internal(cause) => {
                // The cause may name tables, hosts or file paths: log it, send nothing of it.
                tracing::error!(error = ?cause, "internal error");
                "internal error".to_owned()
            }
            _ => error.to_string(),
        };
        let mut metadata = HashMap::new();
        match &error {
            Error::Merged { survivor, .. } => {
                metadata.insert("survivor".to_owned(), survivor.clone());
            }
            Error::WrongState {
                subject, allowed, ..
            } => {
                details.add_precondition_failure_violation("STATE", subject, error.to_string());
                for change in allowed {
                    details.add_precondition_failure_violation("ALLOWED_NOW", subject, change);
                }
                metadata.insert("allowed".to_owned(), allowed.join(","));
            }
            Error::OutOfRange { metadata: m, .. } => {
                for (k, v) in m {
                    metadata.insert((*k).to_owned(), v.clone());
                }
            }
            Error::Throttled { retry_after, .. }
            | Error::Contention { retry_after, .. }
            | Error::DatabaseUnavailable { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
                metadata.insert(
                    "retry_after_ms".to_owned(),
                    retry_after.as_millis().to_string(),
                );
            }
            _ => {}
        }
        details.set_error_info(error.reason(), ERROR_DOMAIN, metadata);
        Status::with_error_details(code(&error), message, details)
    }
}

impl From<FieldViolation> for Status {
    fn from(violation: FieldViolation) -> Self {
        Error::from(violation).into()
    }
}
