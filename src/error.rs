//! The crate's error type and its one conversion to the gRPC wire format.
//!
//! Every error carries a stable UPPER_SNAKE `reason` (sent as `google.rpc.ErrorInfo`).
//! Internal causes are logged where they are converted and never sent to the caller.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Most field violations sent in one error: they travel in HTTP/2 trailers, which
/// peers cap (16 KiB by default); the message says how many more there were.
const MAX_SENT_VIOLATIONS: usize = 50;

/// The `ErrorInfo.domain` of every error the hub returns.
pub const ERROR_DOMAIN: &str = "liaison";

/// One invalid field of a request: its path (`organization.slug`), why, and a stable
/// reason a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
    /// Set where the failure has a reason of its own; otherwise the field's path
    /// decides (see [`FieldViolation::reason`]).
    reason: Option<&'static str>,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
            reason: None,
        }
    }

    /// A field that must be given and was not.
    pub fn required(field: impl Into<String>) -> Self {
        Self::new(field, "is required").because("FIELD_REQUIRED")
    }

    /// The same violation with its own reason.
    pub fn because(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The stable reason of this violation: its own, or the one of the request field
    /// it is about (`INVALID_PAGE_TOKEN`, `INVALID_FILTER`, `INVALID_RESOURCE_NAME`, …).
    pub fn reason(&self) -> &'static str {
        if let Some(reason) = self.reason {
            return reason;
        }
        let leaf = self.field.rsplit('.').next().unwrap_or_default();
        match leaf {
            "page_token" => "INVALID_PAGE_TOKEN",
            "page_size" => "INVALID_PAGE_SIZE",
            "filter" => "INVALID_FILTER",
            "order_by" => "INVALID_ORDER_BY",
            "update_mask" => "INVALID_UPDATE_MASK",
            "request_id" => "INVALID_REQUEST_ID",
            "etag" => "INVALID_ETAG",
            "name" | "parent" => "INVALID_RESOURCE_NAME",
            _ => "INVALID_FIELD_VALUE",
        }
    }

    /// The same violation, with its field path under `parent` (`slug` → `organization.slug`).
    pub fn under(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; one entry per offending field.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The resource does not exist, or the caller may not know that it does.
    #[error("{0} not found")]
    NotFound(String),
    /// A customer folded into another; callers who may see the survivor learn its name.
    #[error("{name} was merged into {survivor}")]
    Merged { name: String, survivor: String },
    #[error("{message}")]
    AlreadyExists {
        reason: &'static str,
        message: String,
    },
    /// The etag sent with a write is not the resource's current etag.
    #[error("{0} was changed by someone else; read it again and retry with the new etag")]
    StaleEtag(String),
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    Unauthenticated {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    PermissionDenied {
        reason: &'static str,
        message: String,
    },
    /// A limit of the hub (open streams, …) is reached.
    #[error("{message}")]
    ResourceExhausted {
        reason: &'static str,
        message: String,
    },
    /// The caller is over its rate limit; it may retry after `retry_after` (sent as
    /// `google.rpc.RetryInfo`).
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after: std::time::Duration,
    },
    /// A position outside what the hub keeps; `metadata` says what is available.
    #[error("{message}")]
    OutOfRange {
        reason: &'static str,
        message: String,
        metadata: Vec<(&'static str, String)>,
    },
    /// The hub is shutting down or cannot reach a dependency; retrying later helps.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn failed_precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Error::PermissionDenied {
            reason: "PERMISSION_DENIED",
            message: message.into(),
        }
    }

    /// The stable reason sent in `ErrorInfo`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument(violations) => violations
                .first()
                .map_or("INVALID_ARGUMENT", FieldViolation::reason),
            Error::NotFound(_) => "NOT_FOUND",
            Error::Merged { .. } => "CUSTOMER_MERGED",
            Error::AlreadyExists { reason, .. }
            | Error::FailedPrecondition { reason, .. }
            | Error::Unauthenticated { reason, .. }
            | Error::PermissionDenied { reason, .. }
            | Error::ResourceExhausted { reason, .. }
            | Error::OutOfRange { reason, .. } => reason,
            Error::Throttled { .. } => "RATE_LIMITED",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::StaleEtag(_) => "STALE_ETAG",
            Error::Internal(_) => "INTERNAL",
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) | Error::Merged { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::StaleEtag(_) => Code::Aborted,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::ResourceExhausted { .. } | Error::Throttled { .. } => Code::ResourceExhausted,
            Error::OutOfRange { .. } => Code::OutOfRange,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }
}

/// Collects field violations so a request reports every bad field at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is required and missing.
    pub fn required(&mut self, field: impl Into<String>) {
        self.0.push(FieldViolation::required(field));
    }

    /// Records `violation` as it is.
    pub fn push(&mut self, violation: FieldViolation) {
        self.0.push(violation);
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Keeps the value of `result`, or records its violations under `field` and
    /// returns `None`.
    pub fn check<T>(&mut self, field: &str, result: Result<T, FieldViolation>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(violation) => {
                self.0.push(violation.under(field));
                None
            }
        }
    }

    /// `Ok(())` if nothing was recorded, else the `InvalidArgument` error.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }

    /// The `InvalidArgument` error of what was recorded.
    pub fn into_error(self) -> Error {
        debug_assert!(!self.0.is_empty(), "into_error without violations");
        Error::InvalidArgument(self.0)
    }
}

impl From<FieldViolation> for Error {
    fn from(violation: FieldViolation) -> Self {
        Error::InvalidArgument(vec![violation])
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
            Error::OutOfRange { metadata: m, .. } => {
                for (k, v) in m {
                    metadata.insert((*k).to_owned(), v.clone());
                }
            }
            Error::Throttled { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
                metadata.insert(
                    "retry_after_ms".to_owned(),
                    retry_after.as_millis().to_string(),
                );
            }
            _ => {}
        }
        details.set_error_info(error.reason(), ERROR_DOMAIN, metadata);
        Status::with_error_details(error.code(), message, details)
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Internal(anyhow::Error::new(error).context("database error"))
    }
}

impl From<FieldViolation> for Status {
    fn from(violation: FieldViolation) -> Self {
        Error::from(violation).into()
    }
}
