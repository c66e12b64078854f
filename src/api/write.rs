//! Writes that are safe to retry: each runs in one transaction together with the
//! record of its `request_id` (AIP-155), so a retry returns the first answer.

use prost::Message;
use sha2::{Digest, Sha256};

use super::{Caller, Hub};
use crate::domain::error::{Error, Result};
use crate::domain::now;
use crate::pb;
use crate::store::{Cause, Claim, Tx};

/// Longest accepted `request_id`; a UUID needs 36.
const MAX_REQUEST_ID_LEN: usize = 128;

/// What identifies a write to an existing resource: the method (for idempotency
/// records), the resource name, the etag the caller read it at (may be empty) and its
/// `request_id` (may be empty).
pub struct Target<'a> {
    pub method: &'a str,
    pub name: &'a str,
    pub etag: &'a str,
    pub request_id: &'a str,
}

/// A response that can be stored and replayed.
pub trait Replayable: Message + Default + Sized {
    /// What a retry gets back; the same as the first answer unless it held a secret.
    fn for_replay(&self) -> Self;
}

macro_rules! replay_as_is {
    ($($t:ty),*) => { $(impl Replayable for $t { fn for_replay(&self) -> Self { self.clone() } })* };
}
replay_as_is!(
    pb::Organization,
    pb::ApiKey,
    pb::ClientCertificate,
    pb::Member,
    pb::DeleteMemberResponse,
    pb::Partnership,
    pb::Customer,
    pb::BatchUpsertCustomersResponse,
    pb::WebhookDelivery,
    pb::NotificationPreferences,
    pb::RedeliverFailedWebhookDeliveriesResponse,
    pb::CustomerOverlay,
    pb::Grant,
    pb::AccessRequest,
    pb::Interaction,
    pb::WebhookEndpoint,
    pb::DeleteWebhookEndpointResponse,
    pb::Case,
    pb::CaseTask,
    pb::CaseHistoryEntry
);

impl Replayable for pb::WebhookEndpointSecret {
    /// Secrets are not kept with request ids; a retried rotation reads the secret with
    /// GetWebhookEndpointSecret.
    fn for_replay(&self) -> Self {
        Self::default()
    }
}

impl Replayable for pb::CreateApiKeyResponse {
    /// The secret is never stored, so a retry cannot show it again.
    fn for_replay(&self) -> Self {
        Self {
            api_key: self.api_key.clone(),
            key: String::new(),
        }
    }
}

/// Runs `change` in a write transaction and commits it. With a `request_id`, the
/// first answer is stored in the same transaction and a retry returns it without
/// running `change` again; the same id with a different request is refused.
pub async fn idempotent<M, F>(
    hub: &Hub,
    caller: &Caller,
    method: &str,
    request_id: &str,
    request: &impl Message,
    change: F,
) -> Result<M>
where
    M: Replayable,
    F: AsyncFnOnce(&mut Tx) -> Result<M>,
{
    let mut tx = hub.store.begin().await?;
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
    let hash = format!("{:x}", Sha256::digest(request.encode_to_vec()));
    match tx
        .claim_request(&scope, request_id, method, &hash, now())
        .await?
    {
        Claim::Replay(bytes) => {
            let response = M::decode(bytes.as_slice())
                .map_err(|e| anyhow::anyhow!("stored response does not decode: {e}"))?;
            return Ok(response);
        }
        Claim::New => {}
    }
    let response = change(&mut tx).await?;
    tx.record_response(&scope, request_id, &response.for_replay().encode_to_vec())
        .await?;
    tx.commit().await?;
    Ok(response)
}
