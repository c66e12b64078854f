//! Writes that are safe to retry: each runs in one transaction together with the
//! record of its `request_id` (AIP-155), so a retry returns the first answer.
//!
//! The answer is kept as the wire carried it (the edge says how, through [`Answer`]),
//! so a retry gets back exactly what the first call got.

use crate::domain::caller::Caller;
use crate::domain::error::{Error, Result};
use crate::domain::now;
use crate::store::{Cause, Claim, Store, Tx};

/// Longest accepted `request_id`; a UUID needs 36.
const MAX_REQUEST_ID_LEN: usize = 128;

/// An answer that can be kept for a retry and read back.
pub trait Answer: Sized {
    /// What is kept: the answer as a retry gets it (without secrets it held).
    fn to_replay(&self) -> Vec<u8>;
    /// Reads back what [`Answer::to_replay`] kept.
    fn from_replay(bytes: &[u8]) -> anyhow::Result<Self>;
}

/// What identifies one write for retries.
pub struct Retry<'a> {
    /// The method, for the idempotency record.
    pub method: &'a str,
    /// The caller's `request_id`; empty for a write that is not retried safely.
    pub request_id: &'a str,
    /// A digest of the request as it came, so the same id with a different request is
    /// refused.
    pub fingerprint: String,
}

/// Runs `change` in a write transaction and commits it. With a `request_id`, the
/// first answer is stored in the same transaction and a retry returns it without
/// running `change` again; the same id with a different request is refused.
pub async fn idempotent<M, F>(
    store: &Store,
    caller: &Caller,
    retry: Retry<'_>,
    change: F,
) -> Result<M>
where
    M: Answer,
    F: AsyncFnOnce(&mut Tx) -> Result<M>,
{
    let request_id = retry.request_id;
    let mut tx = store.begin().await?;
    tx.set_cause(Cause {
        organization: caller
            .organization()
            .ok()
            .map(|org| org.slug.as_str().to_owned()),
        key_id: caller.key_id.clone(),
        request_id: request_id.to_owned(),
    });
    if request_id.is_empty() {
        let response = change(&mut tx).await?;
        tx.commit().await?;
        return Ok(response);
    }
    if request_id.len() > MAX_REQUEST_ID_LEN || !request_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "request_id",
            "must be at most 128 printable ASCII characters; a UUID is recommended",
        ));
    }
    let scope = caller.idempotency_scope();
    match tx
        .claim_request(&scope, request_id, retry.method, &retry.fingerprint, now())
        .await?
    {
        Claim::Replay(bytes) => {
            let response = M::from_replay(&bytes)
                .map_err(|e| anyhow::anyhow!("stored response does not decode: {e}"))?;
            return Ok(response);
        }
        Claim::New => {}
    }
    let response = change(&mut tx).await?;
    tx.record_response(&scope, request_id, &response.to_replay())
        .await?;
    tx.commit().await?;
    Ok(response)
}
