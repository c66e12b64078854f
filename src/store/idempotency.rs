//! Idempotency records: the first answer to each `(caller, request_id)`, kept so a
//! retried write returns it instead of writing twice.

use jiff::Timestamp;

use super::{Store, Tx, micros};
use crate::domain::error::{Error, Result};

/// How long a `request_id` is remembered: long enough for a partner system to retry
/// across a weekend outage. A record older than this no longer answers
/// (the next use of its id is a new request) and the hourly sweep deletes it.
pub const REQUEST_ID_RETENTION: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);

/// What a caller's `request_id` means for this transaction.
pub enum Claim {
    /// First use: go ahead, then [`Tx::record_response`] in the same transaction.
    New,
    /// Already answered: return this encoded response and write nothing.
    Replay(Vec<u8>),
}

impl Store {
    /// The answer kept for a retry of `request_id` (same method and request), if
    /// the first call finished within the retention; looked up without claiming the
    /// id, for a method that must know before it does any work.
    pub async fn stored_response(
        &self,
        scope: &str,
        (request_id, method, request_hash): (&str, &str, &str),
        now: Timestamp,
    ) -> Result<Option<Vec<u8>>> {
        let row: Option<(Option<Vec<u8>>,)> = sqlx::query_as(
            "SELECT response FROM idempotency_records WHERE scope = $1 AND request_id = $2 \
             AND method = $3 AND request_hash = $4 AND create_time >= $5",
        )
        .bind(scope)
        .bind(request_id)
        .bind(method)
        .bind(request_hash)
        .bind(micros(now - REQUEST_ID_RETENTION))
        .fetch_optional(self.reader())
        .await?;
        Ok(row.and_then(|(response,)| response))
    }
}

impl Tx {
    /// Claims `request_id` for `scope` inside this transaction.
    ///
    /// The claim is an insert that does nothing on conflict with a record still
    /// within its retention. On PostgreSQL a concurrent
    /// transaction holding the same key makes this insert wait until it commits or
    /// rolls back, so exactly one of two racing retries does the work; the other then
    /// reads the committed answer. On SQLite writers are serialized anyway.
    pub async fn claim_request(
        &mut self,
        scope: &str,
        request_id: &str,
        method: &str,
        request_hash: &str,
        now: Timestamp,
    ) -> Result<Claim> {
        // A record past its retention that the sweep has not reached yet is taken
        // over, so an id is forgotten after exactly the retention, not up to an hour
        // later.
        let inserted = sqlx::query(
            "INSERT INTO idempotency_records (scope, request_id, method, request_hash, create_time) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, request_id) DO UPDATE SET \
             method = excluded.method, request_hash = excluded.request_hash, \
             create_time = excluded.create_time, response = NULL \
             WHERE idempotency_records.create_time < $6",
        )
        .bind(scope)
        .bind(request_id)
        .bind(method)
        .bind(request_hash)
        .bind(micros(now))
        .bind(micros(now - REQUEST_ID_RETENTION))
        .execute(self.conn())
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Claim::New);
        }
        let (stored_method, stored_hash, response): (String, String, Option<Vec<u8>>) = sqlx::query_as(
            "SELECT method, request_hash, response FROM idempotency_records WHERE scope = $1 AND request_id = $2",
        )
        .bind(scope)
        .bind(request_id)
        .fetch_one(self.conn())
        .await?;
        if stored_method != method || stored_hash != request_hash {
            return Err(Error::invalid(
                "request_id",
                "was already used for a different request; use a new request_id for a new request",
            ));
        }
        let response =
            response.ok_or_else(|| anyhow::anyhow!("idempotency record without a response"))?;
        Ok(Claim::Replay(response))
    }

    pub async fn record_response(
        &mut self,
        scope: &str,
        request_id: &str,
        response: &[u8],
    ) -> Result<()> {
        sqlx::query(
            "UPDATE idempotency_records SET response = $1 WHERE scope = $2 AND request_id = $3",
        )
        .bind(response)
        .bind(scope)
        .bind(request_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Forgets records older than `cutoff`; returns how many.
    pub async fn expire_requests(&mut self, cutoff: Timestamp) -> Result<u64> {
        let done = sqlx::query("DELETE FROM idempotency_records WHERE create_time < $1")
            .bind(micros(cutoff))
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected())
    }
}
