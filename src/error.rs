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

    /// The same violation, with `reason` unless it has one of its own.
    pub fn or_because(mut self, reason: &'static str) -> Self {
        self.reason.get_or_insert(reason);
        self
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
    /// The resource is in a state where this change cannot happen; `allowed` lists the
    /// changes that can (sent as `google.rpc.PreconditionFailure`, one violation of
    /// type `ALLOWED_NOW` per change, and in ErrorInfo's `allowed` metadata).
    #[error("{message}")]
    WrongState {
        reason: &'static str,
        message: String,
        /// The resource name.
        subject: String,
        allowed: Vec<String>,
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
    /// The request ran past its deadline (the client's `grpc-timeout`, or the hub's
    /// `server.request_timeout_secs`) and was abandoned.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The database is overloaded or unreachable (pool exhausted, connection lost);
    /// retrying after `retry_after` helps.
    #[error("{message}")]
    DatabaseUnavailable {
        reason: &'static str,
        message: String,
        retry_after: std::time::Duration,
    },
    /// A concurrent write won (deadlock, serialization failure, a race on an internal
    /// row); the same request, retried, is expected to succeed.
    #[error("{message}")]
    Contention {
        reason: &'static str,
        message: String,
        retry_after: std::time::Duration,
    },
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
            | Error::WrongState { reason, .. }
            | Error::Unauthenticated { reason, .. }
            | Error::PermissionDenied { reason, .. }
            | Error::ResourceExhausted { reason, .. }
            | Error::OutOfRange { reason, .. } => reason,
            Error::Throttled { .. } => "RATE_LIMITED",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            Error::DatabaseUnavailable { reason, .. } | Error::Contention { reason, .. } => reason,
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
        Status::with_error_details(error.code(), message, details)
    }
}

/// How long a client waits before retrying a write that lost a race: long enough for
/// the winner to commit.
const CONTENTION_RETRY: std::time::Duration = std::time::Duration::from_millis(50);
/// How long a client waits when the database is saturated or unreachable.
const DATABASE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl From<sqlx::Error> for Error {
    /// Sorts a database failure by what the caller can do about it: contention is
    /// ABORTED (retry), an exhausted pool or a lost database UNAVAILABLE (retry later),
    /// text the database cannot store INVALID_ARGUMENT; the rest is INTERNAL.
    fn from(error: sqlx::Error) -> Self {
        Error::classify(&error)
            .unwrap_or_else(|| Error::Internal(anyhow::Error::new(error).context("database error")))
    }
}

impl Error {
    /// The error a database failure means to the caller, unless it is INTERNAL.
    pub fn classify(error: &sqlx::Error) -> Option<Error> {
        let contention = |message: &str| Error::Contention {
            reason: "CONCURRENT_WRITE",
            message: format!("{message}; retry the request"),
            retry_after: CONTENTION_RETRY,
        };
        let unavailable = |reason, message: &str| Error::DatabaseUnavailable {
            reason,
            message: format!("{message}; retry shortly"),
            retry_after: DATABASE_RETRY,
        };
        match &error {
            sqlx::Error::PoolTimedOut => {
                tracing::warn!("no database connection free within the acquire timeout");
                return Some(unavailable("DATABASE_BUSY", "the hub's database is busy"));
            }
            sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                tracing::warn!(error = %error, "database unreachable");
                return Some(unavailable(
                    "DATABASE_UNAVAILABLE",
                    "the hub cannot reach its database",
                ));
            }
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                match code.as_ref() {
                    // PostgreSQL: serialization failure, deadlock, lock not available.
                    "40001" | "40P01" | "55P03"
                    // SQLite: BUSY (and its extended codes), LOCKED.
                    | "5" | "261" | "517" | "773" | "6" | "262" => {
                        tracing::info!(code = %code, "write lost to a concurrent one");
                        return Some(contention("a concurrent change to the same records won"));
                    }
                    // PostgreSQL: too many connections, shutting down, cannot connect now.
                    "53300" | "57P01" | "57P02" | "57P03" => {
                        tracing::warn!(code = %code, error = %db, "database unavailable");
                        return Some(unavailable(
                            "DATABASE_UNAVAILABLE",
                            "the hub's database is unavailable",
                        ));
                    }
                    c if c.starts_with("08") => {
                        tracing::warn!(code = %code, error = %db, "database connection lost");
                        return Some(unavailable(
                            "DATABASE_UNAVAILABLE",
                            "the hub lost its database connection",
                        ));
                    }
                    // PostgreSQL refuses NUL in text; validation refuses it first, so
                    // this only guards a field that escaped it.
                    "22021" | "22P05" => {
                        tracing::error!(error = %db, "text the database cannot store got past validation");
                        return Some(Error::InvalidArgument(vec![
                            FieldViolation::new("", "contains characters that cannot be stored")
                                .because("INVALID_TEXT"),
                        ]));
                    }
                    _ => {}
                }
                if matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation) {
                    // A duplicate the client made is caught where the store knows the
                    // constraint (ALREADY_EXISTS); one reaching here is a race on an
                    // internal row (a sequence, a lookup key) between two writers.
                    tracing::info!(error = %db, "unique violation between concurrent writes");
                    return Some(contention("a concurrent change to the same records won"));
                }
            }
            _ => {}
        }
        None
    }

    /// Whether running the same request again may well succeed (a lost race).
    pub fn is_contention(&self) -> bool {
        matches!(self, Error::Contention { .. })
    }
}

impl From<FieldViolation> for Status {
    fn from(violation: FieldViolation) -> Self {
        Error::from(violation).into()
    }
}
