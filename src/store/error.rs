//! Which database failures mean what to a caller: contention (retry), an exhausted
//! pool or a lost database (retry later), text the database cannot store; the rest
//! is internal.

use crate::domain::error::{Error, FieldViolation};

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
        classify(&error)
            .unwrap_or_else(|| Error::Internal(anyhow::Error::new(error).context("database error")))
    }
}

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
    match error {
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
