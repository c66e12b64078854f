//! What can go wrong, in the hub's own terms: bad fields, missing or hidden
//! resources, states that forbid a change, contention, overload. Every layer returns
//! this type; the API layer alone turns it into a wire status, and the store alone
//! knows which database failures mean what.

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

pub(crate) fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The same failure, said of one item of a batch (`at`, say `requests[3]`): field
    /// paths go under it, and the caller's messages name it. Failures not caused by
    /// the item (the database, a deadline, contention) are left as they are.
    pub fn in_item(self, at: &str) -> Self {
        let named = |message: String| format!("{at}: {message}");
        match self {
            Error::InvalidArgument(list) => {
                Error::InvalidArgument(list.into_iter().map(|v| v.under(at)).collect())
            }
            Error::NotFound(what) => Error::NotFound(named(what)),
            Error::Merged { name, survivor } => Error::Merged {
                name: named(name),
                survivor,
            },
            Error::StaleEtag(what) => Error::StaleEtag(named(what)),
            Error::AlreadyExists { reason, message } => Error::AlreadyExists {
                reason,
                message: named(message),
            },
            Error::FailedPrecondition { reason, message } => Error::FailedPrecondition {
                reason,
                message: named(message),
            },
            Error::WrongState {
                reason,
                message,
                subject,
                allowed,
            } => Error::WrongState {
                reason,
                message: named(message),
                subject,
                allowed,
            },
            Error::PermissionDenied { reason, message } => Error::PermissionDenied {
                reason,
                message: named(message),
            },
            other => other,
        }
    }

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

    /// Whether running the same request again may well succeed (a lost race).
    pub fn is_contention(&self) -> bool {
        matches!(self, Error::Contention { .. })
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_batch_items_failure_names_the_item_and_others_pass_through() {
        let invalid = Error::invalid("grant.level", "is required").in_item("requests[2]");
        assert!(
            matches!(&invalid, Error::InvalidArgument(v) if v[0].field == "requests[2].grant.level")
        );
        let missing = Error::NotFound("customer \"customers/x\"".into()).in_item("requests[0]");
        assert_eq!(
            missing.to_string(),
            "requests[0]: customer \"customers/x\" not found"
        );
        let denied = Error::permission_denied("only the owner").in_item("names[1]");
        assert_eq!(denied.to_string(), "names[1]: only the owner");
        let busy = Error::Contention {
            reason: "CONCURRENT_WRITE",
            message: "retry".into(),
            retry_after: Duration::from_millis(50),
        }
        .in_item("requests[0]");
        assert_eq!(busy.to_string(), "retry", "not the item's doing");
    }

    #[test]
    fn a_violation_takes_its_reason_from_its_own_or_its_request_field() {
        let reason = |field: &str| FieldViolation::new(field, "x").reason();
        for (field, expected) in [
            ("page_token", "INVALID_PAGE_TOKEN"),
            ("page_size", "INVALID_PAGE_SIZE"),
            ("filter", "INVALID_FILTER"),
            ("order_by", "INVALID_ORDER_BY"),
            ("update_mask", "INVALID_UPDATE_MASK"),
            ("request_id", "INVALID_REQUEST_ID"),
            ("etag", "INVALID_ETAG"),
            ("name", "INVALID_RESOURCE_NAME"),
            ("customer.name", "INVALID_RESOURCE_NAME"),
            ("parent", "INVALID_RESOURCE_NAME"),
            ("customer.given_name", "INVALID_FIELD_VALUE"),
            ("", "INVALID_FIELD_VALUE"),
        ] {
            assert_eq!(reason(field), expected, "{field}");
        }
        assert_eq!(FieldViolation::required("x").reason(), "FIELD_REQUIRED");
        // Its own reason wins; `or_because` only fills in a missing one.
        let own = FieldViolation::new("filter", "x").because("TEXT_TOO_LONG");
        assert_eq!(own.clone().or_because("OTHER").reason(), "TEXT_TOO_LONG");
        assert_eq!(
            FieldViolation::new("filter", "x")
                .or_because("OTHER")
                .reason(),
            "OTHER"
        );
        assert_eq!(
            FieldViolation::new("slug", "x").under("organization").field,
            "organization.slug"
        );
        assert_eq!(
            FieldViolation::new("", "x").under("organization").field,
            "organization"
        );
    }

    #[test]
    fn errors_have_stable_reasons() {
        let retry_after = Duration::from_millis(50);
        let cases: Vec<(Error, &str)> = vec![
            (Error::invalid("filter", "bad"), "INVALID_FILTER"),
            (Error::InvalidArgument(vec![]), "INVALID_ARGUMENT"),
            (Error::NotFound("x".into()), "NOT_FOUND"),
            (
                Error::Merged {
                    name: "a".into(),
                    survivor: "b".into(),
                },
                "CUSTOMER_MERGED",
            ),
            (Error::failed_precondition("NOT_ACTIVE", "m"), "NOT_ACTIVE"),
            (Error::permission_denied("m"), "PERMISSION_DENIED"),
            (
                Error::Throttled {
                    message: "m".into(),
                    retry_after,
                },
                "RATE_LIMITED",
            ),
            (Error::Unavailable("m".into()), "UNAVAILABLE"),
            (Error::DeadlineExceeded("m".into()), "DEADLINE_EXCEEDED"),
            (Error::StaleEtag("x".into()), "STALE_ETAG"),
            (
                Error::Contention {
                    reason: "CONCURRENT_WRITE",
                    message: "m".into(),
                    retry_after,
                },
                "CONCURRENT_WRITE",
            ),
            (Error::Internal(anyhow::anyhow!("boom")), "INTERNAL"),
        ];
        for (error, reason) in &cases {
            assert_eq!(error.reason(), *reason, "{error:?}");
            assert_eq!(
                error.is_contention(),
                *reason == "CONCURRENT_WRITE",
                "{error:?}"
            );
        }
        assert_eq!(
            Error::StaleEtag("customers/c1".into()).to_string(),
            "customers/c1 was changed by someone else; read it again and retry with the new etag"
        );
    }

    #[test]
    fn violations_are_collected_and_reported_together() {
        assert!(Violations::new().finish().is_ok());
        let mut v = Violations::new();
        v.required("customer.kind");
        v.add("customer.tags", "too many");
        assert_eq!(v.check("customer", Ok::<_, FieldViolation>(7)), Some(7));
        assert_eq!(
            v.check::<()>("customer", Err(FieldViolation::new("email", "bad"))),
            None
        );
        v.push(FieldViolation::new("etag", "stale"));
        let Err(Error::InvalidArgument(found)) = v.finish() else {
            panic!("expected INVALID_ARGUMENT");
        };
        let fields: Vec<&str> = found.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            ["customer.kind", "customer.tags", "customer.email", "etag"]
        );
        assert_eq!(
            describe(&found[..2]),
            "customer.kind: is required; customer.tags: too many"
        );
        let single: Error = FieldViolation::new("page_size", "too big").into();
        assert_eq!(single.reason(), "INVALID_PAGE_SIZE");
        assert_eq!(single.to_string(), "invalid argument: page_size: too big");
    }
}
