//! Retries over gRPC: the protobuf answers kept for a `request_id` (AIP-155) and the
//! digest of the request a retry must repeat.

use prost::Message;
use sha2::{Digest, Sha256};

use super::{Caller, Hub};
use crate::app::{
    self,
    write::{Answer, Retry},
};
use crate::domain::error::Result;
use crate::pb;
use crate::store::Tx;

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
    pb::BatchCreateGrantsResponse,
    pb::BatchRevokeGrantsResponse,
    pb::FieldPreset,
    pb::DeleteFieldPresetResponse,
    pb::Segment,
    pb::DeleteSegmentResponse,
    pb::SharingRule,
    pb::AccessRequest,
    pb::Interaction,
    pb::WebhookEndpoint,
    pb::DeleteWebhookEndpointResponse,
    pb::Case,
    pb::CaseTask,
    pb::CaseHistoryEntry,
    pb::AccountMapping,
    pb::RequestOverlapAccessResponse,
    pb::AnswerOverlapAccessResponse,
    crate::google::longrunning::Operation
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

/// A write request: the method it calls and the `request_id` it may carry (AIP-155).
pub trait Retryable: Message {
    /// The RPC's name, which idempotency records keep.
    const METHOD: &'static str;
    fn request_id(&self) -> &str;
}

macro_rules! retryable {
    ($($method:ident: $t:ty),* $(,)?) => { $(
        impl Retryable for $t {
            const METHOD: &'static str = stringify!($method);
            fn request_id(&self) -> &str {
                &self.request_id
            }
        }
    )* };
}
retryable!(
    AcceptPartnership: pb::AcceptPartnershipRequest,
    CreateAccountMapping: pb::CreateAccountMappingRequest,
    AcceptAccountMapping: pb::AcceptAccountMappingRequest,
    DeclineAccountMapping: pb::DeclineAccountMappingRequest,
    UpdateAccountMapping: pb::UpdateAccountMappingRequest,
    EndAccountMapping: pb::EndAccountMappingRequest,
    RefreshAccountMapping: pb::RefreshAccountMappingRequest,
    RequestOverlapAccess: pb::RequestOverlapAccessRequest,
    AnswerOverlapAccess: pb::AnswerOverlapAccessRequest,
    AcceptTask: pb::AcceptTaskRequest,
    AddCaseParticipant: pb::AddCaseParticipantRequest,
    ApproveAccessRequest: pb::ApproveAccessRequestRequest,
    AssignTask: pb::AssignTaskRequest,
    BatchCreateGrants: pb::BatchCreateGrantsRequest,
    BatchRevokeGrants: pb::BatchRevokeGrantsRequest,
    CreateFieldPreset: pb::CreateFieldPresetRequest,
    UpdateFieldPreset: pb::UpdateFieldPresetRequest,
    DeleteFieldPreset: pb::DeleteFieldPresetRequest,
    CreateSegment: pb::CreateSegmentRequest,
    UpdateSegment: pb::UpdateSegmentRequest,
    DeleteSegment: pb::DeleteSegmentRequest,
    CreateSharingRule: pb::CreateSharingRuleRequest,
    UpdateSharingRule: pb::UpdateSharingRuleRequest,
    RevokeSharingRule: pb::RevokeSharingRuleRequest,
    BatchUpsertCustomers: pb::BatchUpsertCustomersRequest,
    CommentOnCase: pb::CommentOnCaseRequest,
    CompleteTask: pb::CompleteTaskRequest,
    CreateAccessRequest: pb::CreateAccessRequestRequest,
    CreateApiKey: pb::CreateApiKeyRequest,
    CreateCustomer: pb::CreateCustomerRequest,
    CreateGrant: pb::CreateGrantRequest,
    CreateMember: pb::CreateMemberRequest,
    CreateOrganization: pb::CreateOrganizationRequest,
    CreateWebhookEndpoint: pb::CreateWebhookEndpointRequest,
    DeclineAccessRequest: pb::DeclineAccessRequestRequest,
    DeclinePartnership: pb::DeclinePartnershipRequest,
    DeclineTask: pb::DeclineTaskRequest,
    DeleteCustomer: pb::DeleteCustomerRequest,
    DeleteMember: pb::DeleteMemberRequest,
    DeleteWebhookEndpoint: pb::DeleteWebhookEndpointRequest,
    EndPartnership: pb::EndPartnershipRequest,
    EraseCustomer: pb::EraseCustomerRequest,
    LogInteraction: pb::LogInteractionRequest,
    MergeCustomers: pb::MergeCustomersRequest,
    OpenCase: pb::OpenCaseRequest,
    ProposePartnership: pb::ProposePartnershipRequest,
    ReactivateOrganization: pb::ReactivateOrganizationRequest,
    RedeliverFailedWebhookDeliveries: pb::RedeliverFailedWebhookDeliveriesRequest,
    RedeliverWebhookEvent: pb::RedeliverWebhookEventRequest,
    RegisterClientCertificate: pb::RegisterClientCertificateRequest,
    RemoveCaseParticipant: pb::RemoveCaseParticipantRequest,
    ResumePartnership: pb::ResumePartnershipRequest,
    RevokeApiKey: pb::RevokeApiKeyRequest,
    RevokeClientCertificate: pb::RevokeClientCertificateRequest,
    RevokeGrant: pb::RevokeGrantRequest,
    RotateWebhookEndpointSecret: pb::RotateWebhookEndpointSecretRequest,
    SuspendOrganization: pb::SuspendOrganizationRequest,
    SuspendPartnership: pb::SuspendPartnershipRequest,
    TransitionCase: pb::TransitionCaseRequest,
    UndeleteCustomer: pb::UndeleteCustomerRequest,
    UpdateCustomerOverlay: pb::UpdateCustomerOverlayRequest,
    UpdateCustomer: pb::UpdateCustomerRequest,
    UpdateMember: pb::UpdateMemberRequest,
    UpdateNotificationPreferences: pb::UpdateNotificationPreferencesRequest,
    UpdateOrganization: pb::UpdateOrganizationRequest,
    UpdatePartnership: pb::UpdatePartnershipRequest,
    ExportCustomers: pb::ExportCustomersRequest,
    ExportInteractions: pb::ExportInteractionsRequest,
    ExportScorecards: pb::ExportScorecardsRequest,
    UpdateWebhookEndpoint: pb::UpdateWebhookEndpointRequest
);

/// Runs `change` once (see [`app::write::idempotent`]), keeping the protobuf answer
/// for a retry of the same `request_id`; `request` is what the retry must repeat.
pub async fn idempotent<R, M, F>(hub: &Hub, caller: &Caller, request: &R, change: F) -> Result<M>
where
    R: Retryable,
    M: Replayable,
    F: AsyncFnOnce(&mut Tx) -> Result<M>,
{
    let request_id = request.request_id();
    let retry = Retry {
        method: R::METHOD,
        request_id,
        fingerprint: if request_id.is_empty() {
            String::new()
        } else {
            format!("{:x}", Sha256::digest(request.encode_to_vec()))
        },
    };
    app::write::idempotent(&hub.store, caller, retry, change).await
}

/// The answer a first call of `request` (same `request_id`, method and request)
/// kept, if there is one: for a method that weighs something before its change and
/// must replay rather than weigh again.
pub async fn replayed<R: Retryable, M: Replayable>(
    hub: &Hub,
    caller: &Caller,
    request: &R,
) -> Result<Option<M>> {
    let request_id = request.request_id();
    if request_id.is_empty() {
        return Ok(None);
    }
    let hash = format!("{:x}", Sha256::digest(request.encode_to_vec()));
    let scope = caller.idempotency_scope();
    let stored = hub
        .store
        .stored_response(&scope, (request_id, R::METHOD, &hash), crate::domain::now())
        .await?;
    stored
        .map(|bytes| {
            M::decode(bytes.as_slice())
                .map_err(|e| anyhow::anyhow!("stored response does not decode: {e}").into())
        })
        .transpose()
}

impl<M: Replayable> Answer for M {
    fn to_replay(&self) -> Vec<u8> {
        self.for_replay().encode_to_vec()
    }

    fn from_replay(bytes: &[u8]) -> anyhow::Result<Self> {
        Ok(M::decode(bytes)?)
    }
}
