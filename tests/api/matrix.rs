//! The tenant matrix (DESIGN.md invariant 6, "tenants are walls"): every RPC of every
//! `liaison.v1` service and of `google.longrunning.Operations`, called by each kind of
//! outsider against one owner's records, and every egress channel (feeds, webhooks,
//! email), searched for canary values the caller may not see.
//!
//! Each call is judged three ways: what comes back holds no canary hidden from the
//! caller; a refusal carries a code that says what to do; and where the caller may not
//! know the record, the answer is the one it gets for a record that does not exist
//! (the same call is made again with "ghost" names, and the two must read the same).
//! The table is checked against the compiled descriptors, so a new RPC fails this
//! test until it has a row here.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use liaison::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    WaitOperationRequest,
};
use liaison::pb;
use mail_parser::MessageParser;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, ReflectMessage, Value,
};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::customers::{create, person};
use crate::email::{member, set_preferences};
use crate::helpers::*;
use crate::http::{Wire, grpc_wire, json_wire};
use crate::mapping::{finish, mapping_of};
use crate::rules::create_segment;
use crate::sharing::{grant, log, update};
use crate::webhooks::{Receiver, reply};

crate::on_both_backends!(no_hidden_value_leaves_the_hub_by_any_rpc_or_channel);

/// The same matrix with every call made over HTTP/JSON (on SQLite: the HTTP layer
/// is the same on both backends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hidden_value_leaves_the_hub_over_http_json() {
    matrix(Backend::Sqlite, Transport::HttpJson).await
}

/// How the matrix's calls reach the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Grpc,
    HttpJson,
}

/// Waits at most this long for a stream message, or for the outbound queues to drain.
const PATIENCE: Duration = Duration::from_secs(60);

/// Who calls: one organization per kind of relation to the owner, and a revoked key.
/// Organizations call with their admin key, so no refusal is for want of scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// No partnership with the owner.
    Stranger,
    /// A partner without a grant, holding a match and a pending access request.
    Ungranted,
    /// READ on `display_name` only; a participant in the owner's case.
    Masked,
    /// READ_WRITE on `emails` only.
    Writer,
    /// Had READ on every field, until the owner suspended the partnership.
    Suspended,
    /// A partner without a grant that takes part in the owner's case.
    Participant,
    /// The owner's own admin key, revoked.
    Revoked,
}
use Who::*;

/// What a row's request is about, and so which callers know of it. A caller that does
/// not must get exactly the answer it gets for a record that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum About {
    /// The caller's own feed, lists and records: nothing of the owner's to compare.
    Own,
    /// The owner's shared customer.
    Customer,
    /// The owner's case and its task.
    Case,
    /// The owner's partnership with Ungranted, and Ungranted's match and access request.
    Proposal,
    /// Writer's grant.
    WritersGrant,
    /// The owner's sharing rule that reaches Masked.
    Rule,
    /// The owner's account mapping with Masked: its operation, its segments.
    Mapping,
    /// What only the owner knows: its organization's members, endpoints, keys,
    /// certificates and events, its private interaction, its unshared customer and
    /// the customers it merged away, deleted or erased.
    OwnerOnly,
}

impl About {
    fn known_to(self, who: Who) -> bool {
        match self {
            About::Own => true,
            About::Customer => matches!(who, Masked | Writer),
            About::Case => matches!(who, Masked | Participant),
            About::Proposal => who == Ungranted,
            About::WritersGrant => who == Writer,
            About::Rule => who == Masked,
            About::Mapping => who == Masked,
            About::OwnerOnly => false,
        }
    }
}

/// Refusals that say what to do, unless a row says otherwise. Never INTERNAL or
/// UNKNOWN; INVALID_ARGUMENT only where a row expects it (every request here is
/// well-formed); UNAUTHENTICATED only for the revoked key.
const REFUSALS: &[Code] = &[
    Code::NotFound,
    Code::PermissionDenied,
    Code::FailedPrecondition,
    Code::AlreadyExists,
];
/// Operator-only methods, called with an organization's admin key.
const DENIED: &[Code] = &[Code::PermissionDenied];
/// Unknown to the caller.
const NOT_FOUND: &[Code] = &[Code::NotFound];
/// The owner's alone: denied to a partner that sees the record, not found by others.
const NOT_YOURS: &[Code] = &[Code::PermissionDenied, Code::NotFound];

type Reply = Pin<Box<dyn Future<Output = Seen> + Send>>;
type Call = fn(Ctx) -> Reply;

fn boxed(call: impl Future<Output = Seen> + Send + 'static) -> Reply {
    Box::pin(call)
}

/// One RPC, called the same way by every caller.
struct Case {
    /// `liaison.v1.Service/Method`, as in the descriptors.
    method: &'static str,
    about: About,
    /// The codes a refusal may carry.
    codes: &'static [Code],
    /// Whether it must be refused, whoever calls.
    refused: bool,
    call: Call,
}

impl Case {
    fn new(method: &'static str, about: About, call: Call) -> Self {
        Self {
            method,
            about,
            codes: REFUSALS,
            refused: false,
            call,
        }
    }

    /// Never succeeds: every caller gets one of `codes`.
    fn refused(self, codes: &'static [Code]) -> Self {
        Self {
            codes,
            refused: true,
            ..self
        }
    }

    /// May succeed, or be refused with one of `codes`.
    fn tolerates(self, codes: &'static [Code]) -> Self {
        Self { codes, ..self }
    }
}

/// The rows of the table: `method, about[, refused CODES | , tolerates CODES] => {
/// call }`, where the call is `|c| client.rpc(request)` (one request, built from the
/// context `c`) or a function for calls of several steps.
macro_rules! cases {
    (@call |$c:ident| $client:ident . $rpc:ident ($request:expr)) => {
        |$c: Ctx| -> Reply {
            boxed(async move {
                let request = $request;
                seen(&request, $c.$client().$rpc(request.clone()).await)
            })
        }
    };
    (@call $f:path) => { $f };
    ($(
        $method:literal, $about:ident $(, $rule:ident $codes:expr)? => { $($call:tt)* }
    ),* $(,)?) => {
        vec![$(
            Case::new($method, About::$about, cases!(@call $($call)*)) $(.$rule($codes))?
        ),*]
    };
}

/// Every RPC, each called by every caller, in this order: a success that changes
/// something (leaving the case, ending the partnership) comes after every row it
/// could spoil.
fn table() -> Vec<Case> {
    use pb::AccessLevel::{Read, ReadWrite};
    use pb::OrganizationKind::Other;
    cases![
        // --- AdminService: the operator's; an organization sees only itself.
        "liaison.v1.AdminService/CreateOrganization", Own, refused DENIED => {
            |c| admin.create_organization(new_organization("matrix-new", Other))
        },
        "liaison.v1.AdminService/GetOrganization", OwnerOnly, refused NOT_FOUND => {
            |c| admin.get_organization(pb::GetOrganizationRequest { name: c.n.owner.clone() })
        },
        "liaison.v1.AdminService/ListOrganizations", Own, refused DENIED => {
            |c| admin.list_organizations(pb::ListOrganizationsRequest {
                page_size: 1, ..Default::default()
            })
        },
        "liaison.v1.AdminService/UpdateOrganization", OwnerOnly, refused DENIED => {
            |c| admin.update_organization(pb::UpdateOrganizationRequest {
                organization: Some(pb::Organization {
                    name: c.n.owner.clone(), display_name: "Taken over".into(), ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
                ..Default::default()
            })
        },
        "liaison.v1.AdminService/SuspendOrganization", OwnerOnly, refused DENIED => {
            |c| admin.suspend_organization(pb::SuspendOrganizationRequest {
                name: c.n.owner.clone(), reason: "matrix".into(), ..Default::default()
            })
        },
        "liaison.v1.AdminService/ReactivateOrganization", OwnerOnly, refused DENIED => {
            |c| admin.reactivate_organization(pb::ReactivateOrganizationRequest {
                name: c.n.owner.clone(), ..Default::default()
            })
        },
        "liaison.v1.AdminService/CreateApiKey", OwnerOnly, refused NOT_YOURS => {
            |c| admin.create_api_key(new_api_key(&c.n.owner, &[pb::ApiKeyScope::Admin]))
        },
        "liaison.v1.AdminService/ListApiKeys", OwnerOnly, refused NOT_YOURS => {
            |c| admin.list_api_keys(pb::ListApiKeysRequest {
                parent: c.n.owner.clone(), page_size: 1, show_revoked: true, ..Default::default()
            })
        },
        "liaison.v1.AdminService/RevokeApiKey", OwnerOnly, refused NOT_YOURS => {
            |c| admin.revoke_api_key(pb::RevokeApiKeyRequest {
                name: c.n.api_key.clone(), ..Default::default()
            })
        },
        // Client certificates authenticate only over mutual TLS (tls.rs covers that);
        // here their registrations are checked for refusal, which is all an
        // organization key may get of another organization's.
        "liaison.v1.AdminService/RegisterClientCertificate", OwnerOnly, refused NOT_YOURS => {
            |c| admin.register_client_certificate(pb::RegisterClientCertificateRequest {
                parent: c.n.owner.clone(),
                client_certificate: Some(pb::ClientCertificate {
                    r#match: Some(pb::client_certificate::Match::SubjectCommonName(
                        "matrix.example".into(),
                    )),
                    scopes: vec![pb::ApiKeyScope::Admin as i32],
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.AdminService/ListClientCertificates", OwnerOnly, refused NOT_YOURS => {
            |c| admin.list_client_certificates(pb::ListClientCertificatesRequest {
                parent: c.n.owner.clone(), page_size: 1, show_revoked: true, ..Default::default()
            })
        },
        "liaison.v1.AdminService/RevokeClientCertificate", OwnerOnly, refused NOT_YOURS => {
            |c| admin.revoke_client_certificate(pb::RevokeClientCertificateRequest {
                name: c.n.certificate.clone(), ..Default::default()
            })
        },

        // --- CustomerService. Creations first, so each caller's list has two pages.
        "liaison.v1.CustomerService/CreateCustomer", Own => {
            |c| customers.create_customer(pb::CreateCustomerRequest {
                customer: Some(person("Mira", "Matrix", "")), ..Default::default()
            })
        },
        // The owner's external id for its unshared customer is, in another
        // organization's hands, that organization's own: it reaches no record of the
        // owner's.
        "liaison.v1.CustomerService/BatchUpsertCustomers", Own => {
            |c| customers.batch_upsert_customers(pb::BatchUpsertCustomersRequest {
                customers: vec![pb::Customer {
                    external_id: "twin-1".into(),
                    kind: pb::CustomerKind::Person as i32,
                    given_name: "Batch".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
        },
        "liaison.v1.CustomerService/GetCustomer", Customer => {
            |c| customers.get_customer(pb::GetCustomerRequest { name: c.n.customer.clone() })
        },
        // Gone as if it never was: no tombstone and no survivor for anyone but the owner.
        "liaison.v1.CustomerService/GetCustomer", OwnerOnly, refused NOT_FOUND => {
            |c| customers.get_customer(pb::GetCustomerRequest { name: c.n.merged.clone() })
        },
        "liaison.v1.CustomerService/GetCustomer", OwnerOnly, refused NOT_FOUND => {
            |c| customers.get_customer(pb::GetCustomerRequest { name: c.n.deleted.clone() })
        },
        "liaison.v1.CustomerService/GetCustomer", OwnerOnly, refused NOT_FOUND => {
            |c| customers.get_customer(pb::GetCustomerRequest { name: c.n.erased.clone() })
        },
        "liaison.v1.CustomerService/ListCustomers", Own => { list_customers },
        "liaison.v1.CustomerService/ListCustomers", Own => { hidden_phone_filter },
        // Writer may change the emails; the answer shows it nothing else.
        "liaison.v1.CustomerService/UpdateCustomer", Customer => {
            |c| customers.update_customer(pb::UpdateCustomerRequest {
                customer: Some(pb::Customer {
                    name: c.n.customer.clone(),
                    emails: vec![email(CANARY_EMAIL), email("matrix@partner.example")],
                    ..Default::default()
                }),
                update_mask: mask(&["emails"]),
                ..Default::default()
            })
        },
        "liaison.v1.CustomerService/DeleteCustomer", Customer, refused NOT_YOURS => {
            |c| customers.delete_customer(pb::DeleteCustomerRequest {
                name: c.n.customer.clone(), ..Default::default()
            })
        },
        "liaison.v1.CustomerService/UndeleteCustomer", OwnerOnly, refused NOT_FOUND => {
            |c| customers.undelete_customer(pb::UndeleteCustomerRequest {
                name: c.n.deleted.clone(), ..Default::default()
            })
        },
        "liaison.v1.CustomerService/FindDuplicateCustomers", Customer, refused NOT_YOURS => {
            |c| customers.find_duplicate_customers(pb::FindDuplicateCustomersRequest {
                name: c.n.customer.clone()
            })
        },
        "liaison.v1.CustomerService/MergeCustomers", Customer, refused NOT_YOURS => {
            |c| customers.merge_customers(pb::MergeCustomersRequest {
                name: c.n.customer.clone(), merged: vec![c.n.twin.clone()], ..Default::default()
            })
        },
        "liaison.v1.CustomerService/EraseCustomer", Customer, refused NOT_YOURS => {
            |c| customers.erase_customer(pb::EraseCustomerRequest {
                name: c.n.customer.clone(), reason: "matrix".into(), ..Default::default()
            })
        },
        "liaison.v1.CustomerService/ListCustomerHistory", Customer => {
            |c| customers.list_customer_history(pb::ListCustomerHistoryRequest {
                parent: c.n.customer.clone(), page_size: 1, ..Default::default()
            })
        },
        // The caller's own overlay on the customer, never the owner's.
        "liaison.v1.CustomerService/GetCustomerOverlay", Customer => {
            |c| customers.get_customer_overlay(pb::GetCustomerOverlayRequest {
                name: format!("{}/overlay", c.n.customer)
            })
        },
        "liaison.v1.CustomerService/UpdateCustomerOverlay", Customer => {
            |c| customers.update_customer_overlay(pb::UpdateCustomerOverlayRequest {
                overlay: Some(pb::CustomerOverlay {
                    name: format!("{}/overlay", c.n.customer),
                    notes: "matrix note".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["notes"]),
                ..Default::default()
            })
        },

        // --- SharingService.
        "liaison.v1.SharingService/CreateGrant", Customer, refused NOT_YOURS => {
            |c| sharing.create_grant(pb::CreateGrantRequest {
                parent: c.n.customer.clone(),
                grant: Some(pb::Grant {
                    grantee: NOBODY.into(), level: ReadWrite as i32, ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/ListGrants", Customer => {
            |c| sharing.list_grants(pb::ListGrantsRequest {
                parent: c.n.customer.clone(), page_size: 1, show_revoked: true, ..Default::default()
            })
        },
        "liaison.v1.SharingService/RevokeGrant", WritersGrant, refused NOT_YOURS => {
            |c| sharing.revoke_grant(pb::RevokeGrantRequest {
                name: c.n.writers_grant.clone(), ..Default::default()
            })
        },
        // A batch is each of its requests: an outsider's batch on the owner's records
        // is refused as the single call is, and names the request.
        "liaison.v1.SharingService/BatchCreateGrants", Customer, refused NOT_YOURS => {
            |c| sharing.batch_create_grants(pb::BatchCreateGrantsRequest {
                requests: vec![pb::CreateGrantRequest {
                    parent: c.n.customer.clone(),
                    grant: Some(pb::Grant {
                        grantee: NOBODY.into(), level: ReadWrite as i32, ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/BatchRevokeGrants", WritersGrant, refused NOT_YOURS => {
            |c| sharing.batch_revoke_grants(pb::BatchRevokeGrantsRequest {
                names: vec![c.n.writers_grant.clone()], ..Default::default()
            })
        },
        // The owner's alone: outsiders cannot tell its presets from ones that do not
        // exist, nor write under its name.
        "liaison.v1.SharingService/CreateFieldPreset", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.create_field_preset(pb::CreateFieldPresetRequest {
                parent: c.n.owner.clone(),
                field_preset: Some(pb::FieldPreset {
                    display_name: "Mole".into(), fields: vec!["emails".into()], ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/GetFieldPreset", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.get_field_preset(pb::GetFieldPresetRequest { name: c.n.preset.clone() })
        },
        "liaison.v1.SharingService/ListFieldPresets", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.list_field_presets(pb::ListFieldPresetsRequest {
                parent: c.n.owner.clone(), page_size: 1, ..Default::default()
            })
        },
        "liaison.v1.SharingService/UpdateFieldPreset", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.update_field_preset(pb::UpdateFieldPresetRequest {
                field_preset: Some(pb::FieldPreset {
                    name: c.n.preset.clone(), fields: vec!["emails".into(), "phones".into()],
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/DeleteFieldPreset", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.delete_field_preset(pb::DeleteFieldPresetRequest {
                name: c.n.preset.clone(), ..Default::default()
            })
        },
        // Segments are the owner's alone, filter and members.
        "liaison.v1.SharingService/CreateSegment", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.create_segment(pb::CreateSegmentRequest {
                parent: c.n.owner.clone(),
                segment: Some(pb::Segment {
                    display_name: "Mole".into(), filter: "tag = vip".into(), ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/GetSegment", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.get_segment(pb::GetSegmentRequest { name: c.n.segment.clone() })
        },
        "liaison.v1.SharingService/ListSegments", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.list_segments(pb::ListSegmentsRequest {
                parent: c.n.owner.clone(), page_size: 1, ..Default::default()
            })
        },
        "liaison.v1.SharingService/UpdateSegment", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.update_segment(pb::UpdateSegmentRequest {
                segment: Some(pb::Segment {
                    name: c.n.segment.clone(), filter: "kind = COMPANY".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/DeleteSegment", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.delete_segment(pb::DeleteSegmentRequest {
                name: c.n.segment.clone(), ..Default::default()
            })
        },
        "liaison.v1.SharingService/CountSegmentMembers", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.count_segment_members(pb::CountSegmentMembersRequest {
                name: c.n.segment.clone()
            })
        },
        "liaison.v1.SharingService/ListSegmentMembers", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.list_segment_members(pb::ListSegmentMembersRequest {
                name: c.n.segment.clone(), page_size: 1, ..Default::default()
            })
        },
        // Rules: an organization a live rule reaches sees it (not its segment's
        // filter, not its etag); nobody else can tell it from one that does not exist.
        "liaison.v1.SharingService/CreateSharingRule", OwnerOnly, refused NOT_YOURS => {
            |c| sharing.create_sharing_rule(pb::CreateSharingRuleRequest {
                parent: c.n.owner.clone(),
                sharing_rule: Some(pb::SharingRule {
                    display_name: "Mole".into(),
                    relationship: pb::Relationship::Supplies as i32,
                    level: Read as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/GetSharingRule", Rule => {
            |c| sharing.get_sharing_rule(pb::GetSharingRuleRequest { name: c.n.rule.clone() })
        },
        "liaison.v1.SharingService/ListSharingRules", Rule => {
            |c| sharing.list_sharing_rules(pb::ListSharingRulesRequest {
                parent: c.n.owner.clone(), page_size: 5, show_revoked: true,
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/UpdateSharingRule", Rule, refused NOT_YOURS => {
            |c| sharing.update_sharing_rule(pb::UpdateSharingRuleRequest {
                sharing_rule: Some(pb::SharingRule {
                    name: c.n.rule.clone(), fields: vec!["emails".into()], ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/RevokeSharingRule", Rule, refused NOT_YOURS => {
            |c| sharing.revoke_sharing_rule(pb::RevokeSharingRuleRequest {
                name: c.n.rule.clone(), ..Default::default()
            })
        },
        // A holder is named with a handle, never the record.
        "liaison.v1.SharingService/MatchCustomer", Own => {
            |c| sharing.match_customer(pb::MatchCustomerRequest {
                email: CANARY_EMAIL.into(), ..Default::default()
            })
        },
        "liaison.v1.SharingService/CreateAccessRequest", Proposal => {
            |c| sharing.create_access_request(pb::CreateAccessRequestRequest {
                access_request: Some(pb::AccessRequest {
                    r#match: c.n.customer_match.clone(),
                    level: Read as i32,
                    reason: "matrix".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/ListAccessRequests", Own => {
            |c| sharing.list_access_requests(pb::ListAccessRequestsRequest {
                direction: pb::list_access_requests_request::Direction::Outgoing as i32,
                page_size: 1,
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/ApproveAccessRequest", Proposal, refused NOT_YOURS => {
            |c| sharing.approve_access_request(pb::ApproveAccessRequestRequest {
                name: c.n.access_request.clone(), ..Default::default()
            })
        },
        "liaison.v1.SharingService/DeclineAccessRequest", Proposal, refused NOT_YOURS => {
            |c| sharing.decline_access_request(pb::DeclineAccessRequestRequest {
                name: c.n.access_request.clone(), reason: "matrix".into(), ..Default::default()
            })
        },

        // --- AccountMappingService, on the owner's mapping with Masked (compared):
        // only Masked knows of it, its segments and its operation; no one, Masked
        // included, learns which of the owner's customers are in it. Asking for one
        // with the owner names Masked's segment: Masked has a mapping with the owner
        // already, the others no partnership or not that segment.
        "liaison.v1.AccountMappingService/CreateAccountMapping", Own, refused REFUSALS => {
            |c| mappings.create_account_mapping(pb::CreateAccountMappingRequest {
                account_mapping: Some(pb::AccountMapping {
                    partner: c.n.owner.clone(),
                    requester_segments: vec![pb::MappingSegment {
                        segment: c.n.partner_segment.clone(), ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.AccountMappingService/GetAccountMapping", Mapping, tolerates NOT_FOUND => {
            |c| mappings.get_account_mapping(pb::GetAccountMappingRequest {
                name: c.n.mapping.clone()
            })
        },
        "liaison.v1.AccountMappingService/ListAccountMappings", Own => {
            |c| mappings.list_account_mappings(pb::ListAccountMappingsRequest {
                page_size: 1, ..Default::default()
            })
        },
        // Active already: too late for Masked.
        "liaison.v1.AccountMappingService/AcceptAccountMapping", Mapping, refused NOT_YET => {
            |c| mappings.accept_account_mapping(pb::AcceptAccountMappingRequest {
                name: c.n.mapping.clone(),
                segments: vec![c.n.partner_segment.clone()],
                ..Default::default()
            })
        },
        "liaison.v1.AccountMappingService/DeclineAccountMapping", Mapping, refused NOT_YET => {
            |c| mappings.decline_account_mapping(pb::DeclineAccountMappingRequest {
                name: c.n.mapping.clone(), ..Default::default()
            })
        },
        // Masked names its own segment again.
        "liaison.v1.AccountMappingService/UpdateAccountMapping", Mapping,
        tolerates NOT_FOUND => {
            |c| mappings.update_account_mapping(pb::UpdateAccountMappingRequest {
                account_mapping: Some(pb::AccountMapping {
                    name: c.n.mapping.clone(),
                    partner_segments: vec![pb::MappingSegment {
                        segment: c.n.partner_segment.clone(), ..Default::default()
                    }],
                    ..Default::default()
                }),
                update_mask: mask(&["partner_segments"]),
                ..Default::default()
            })
        },
        // Just compared: fresh, for Masked.
        "liaison.v1.AccountMappingService/RefreshAccountMapping", Mapping,
        tolerates NOT_YET => {
            |c| mappings.refresh_account_mapping(pb::RefreshAccountMappingRequest {
                name: c.n.mapping.clone(), ..Default::default()
            })
        },
        // Masked asks for the owner's matched records: requests it cannot read the
        // records from (the next row lists them).
        "liaison.v1.AccountMappingService/RequestOverlapAccess", Mapping,
        tolerates NOT_FOUND => {
            |c| mappings.request_overlap_access(pb::RequestOverlapAccessRequest {
                name: c.n.mapping.clone(),
                segment: c.n.partner_segment.clone(),
                partner_segment: c.n.mapping_segment.clone(),
                level: Read as i32,
                reason: "matrix".into(),
                ..Default::default()
            })
        },
        "liaison.v1.SharingService/ListAccessRequests", Own => {
            |c| sharing.list_access_requests(pb::ListAccessRequestsRequest {
                direction: pb::list_access_requests_request::Direction::Outgoing as i32,
                page_size: 50,
                ..Default::default()
            })
        },
        "liaison.v1.AccountMappingService/AnswerOverlapAccess", Mapping,
        tolerates NOT_FOUND => {
            |c| mappings.answer_overlap_access(pb::AnswerOverlapAccessRequest {
                name: c.n.mapping.clone(), approve: false, reason: "matrix".into(),
                ..Default::default()
            })
        },

        // --- google.longrunning.Operations: the mapping's comparison, finished.
        "google.longrunning.Operations/GetOperation", Mapping, tolerates NOT_FOUND => {
            |c| operations.get_operation(GetOperationRequest { name: c.n.operation.clone() })
        },
        "google.longrunning.Operations/ListOperations", Own => {
            |c| operations.list_operations(ListOperationsRequest {
                name: "operations".into(), page_size: 1, ..Default::default()
            })
        },
        "google.longrunning.Operations/WaitOperation", Mapping, tolerates NOT_FOUND => {
            |c| operations.wait_operation(WaitOperationRequest {
                name: c.n.operation.clone(),
                timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            })
        },
        // Finished: too late for Masked.
        "google.longrunning.Operations/CancelOperation", Mapping, refused NOT_YET => {
            |c| operations.cancel_operation(CancelOperationRequest {
                name: c.n.operation.clone()
            })
        },
        "google.longrunning.Operations/DeleteOperation", Mapping, tolerates NOT_FOUND => {
            |c| operations.delete_operation(DeleteOperationRequest {
                name: c.n.operation.clone()
            })
        },
        "liaison.v1.AccountMappingService/EndAccountMapping", Mapping, tolerates NOT_FOUND => {
            |c| mappings.end_account_mapping(pb::EndAccountMappingRequest {
                name: c.n.mapping.clone(), ..Default::default()
            })
        },

        // --- InteractionService.
        "liaison.v1.InteractionService/LogInteraction", Customer => {
            |c| interactions.log_interaction(pb::LogInteractionRequest {
                parent: c.n.customer.clone(),
                interaction: Some(pb::Interaction {
                    r#type: pb::InteractionType::Call as i32,
                    occur_time: Some(prost_types::Timestamp { seconds: 1_790_000_000, nanos: 0 }),
                    summary: "matrix call".into(),
                    visibility: pb::InteractionVisibility::Shared as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        // The owner's private interaction, on a customer Masked and Writer see.
        "liaison.v1.InteractionService/GetInteraction", OwnerOnly, refused NOT_FOUND => {
            |c| interactions.get_interaction(pb::GetInteractionRequest {
                name: c.n.private_interaction.clone()
            })
        },
        "liaison.v1.InteractionService/ListInteractions", Customer => {
            |c| interactions.list_interactions(pb::ListInteractionsRequest {
                parent: c.n.customer.clone(), page_size: 1, ..Default::default()
            })
        },

        // --- MemberService: the owner's members are its own.
        "liaison.v1.MemberService/CreateMember", OwnerOnly, refused NOT_YOURS => {
            |c| members.create_member(pb::CreateMemberRequest {
                parent: c.n.owner.clone(),
                member: Some(pb::Member {
                    display_name: "Mole".into(),
                    email: "mole@partner.example".into(),
                    role: pb::MemberRole::Coordinator as i32,
                    time_zone: "UTC".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.MemberService/GetMember", OwnerOnly, refused NOT_YOURS => {
            |c| members.get_member(pb::GetMemberRequest { name: c.n.member.clone() })
        },
        "liaison.v1.MemberService/ListMembers", OwnerOnly, refused NOT_YOURS => {
            |c| members.list_members(pb::ListMembersRequest {
                parent: c.n.owner.clone(), page_size: 1, ..Default::default()
            })
        },
        "liaison.v1.MemberService/UpdateMember", OwnerOnly, refused NOT_YOURS => {
            |c| members.update_member(pb::UpdateMemberRequest {
                member: Some(pb::Member {
                    name: c.n.member.clone(), display_name: "Mole".into(), ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
                ..Default::default()
            })
        },
        "liaison.v1.MemberService/DeleteMember", OwnerOnly, refused NOT_YOURS => {
            |c| members.delete_member(pb::DeleteMemberRequest {
                name: c.n.member.clone(), ..Default::default()
            })
        },
        "liaison.v1.MemberService/GetNotificationPreferences", OwnerOnly, refused NOT_YOURS => {
            |c| members.get_notification_preferences(pb::GetNotificationPreferencesRequest {
                name: preferences(&c.n.member)
            })
        },
        "liaison.v1.MemberService/UpdateNotificationPreferences", OwnerOnly, refused NOT_YOURS => {
            |c| members.update_notification_preferences(pb::UpdateNotificationPreferencesRequest {
                notification_preferences: Some(pb::NotificationPreferences {
                    name: preferences(&c.n.member),
                    customer_changes: pb::NotificationMode::Off as i32,
                    ..Default::default()
                }),
                update_mask: mask(&["customer_changes"]),
                ..Default::default()
            })
        },
        // Following a customer is as good as seeing it. A customer the caller may not
        // see is a bad value of the caller's own field, as a missing one is.
        "liaison.v1.MemberService/UpdateNotificationPreferences", Customer,
        tolerates &[Code::InvalidArgument] => {
            |c| members.update_notification_preferences(pb::UpdateNotificationPreferencesRequest {
                notification_preferences: Some(pb::NotificationPreferences {
                    name: preferences(&c.me.member),
                    followed_customers: vec![c.n.customer.clone()],
                    ..Default::default()
                }),
                update_mask: mask(&["followed_customers"]),
                ..Default::default()
            })
        },

        // --- WebhookService: the owner's endpoints are its own.
        "liaison.v1.WebhookService/CreateWebhookEndpoint", OwnerOnly, refused NOT_YOURS => {
            |c| webhooks.create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                parent: c.n.owner.clone(),
                webhook_endpoint: Some(pb::WebhookEndpoint {
                    url: "https://attacker.example/hook".into(), ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.WebhookService/GetWebhookEndpoint", OwnerOnly, refused NOT_YOURS => {
            |c| webhooks.get_webhook_endpoint(pb::GetWebhookEndpointRequest {
                name: c.n.endpoint.clone()
            })
        },
        "liaison.v1.WebhookService/ListWebhookEndpoints", OwnerOnly, refused NOT_YOURS => {
            |c| webhooks.list_webhook_endpoints(pb::ListWebhookEndpointsRequest {
                parent: c.n.owner.clone(), page_size: 1, ..Default::default()
            })
        },
        "liaison.v1.WebhookService/UpdateWebhookEndpoint", OwnerOnly, refused NOT_YOURS => {
            |c| webhooks.update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
                webhook_endpoint: Some(pb::WebhookEndpoint {
                    name: c.n.endpoint.clone(),
                    url: "https://attacker.example/hook".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["url"]),
                ..Default::default()
            })
        },
        "liaison.v1.WebhookService/GetWebhookEndpointSecret", OwnerOnly, refused NOT_YOURS => {
            |c| webhooks.get_webhook_endpoint_secret(pb::GetWebhookEndpointSecretRequest {
                name: c.n.endpoint.clone()
            })
        },
        "liaison.v1.WebhookService/RotateWebhookEndpointSecret", OwnerOnly, refused NOT_YOURS => {
            |c| webhooks.rotate_webhook_endpoint_secret(pb::RotateWebhookEndpointSecretRequest {
                name: c.n.endpoint.clone(), ..Default::default()
            })
        },
        "liaison.v1.WebhookService/SendTestWebhookEvent", OwnerOnly, refused NOT_YOURS => {
            |c| webhooks.send_test_webhook_event(pb::SendTestWebhookEventRequest {
                name: c.n.endpoint.clone()
            })
        },
        "liaison.v1.WebhookService/ListWebhookAttempts", OwnerOnly, refused NOT_YOURS => {
            |c| webhooks.list_webhook_attempts(pb::ListWebhookAttemptsRequest {
                parent: c.n.endpoint.clone(), page_size: 1, ..Default::default()
            })
        },
        // The caller's own endpoints, asked about an event of the owner's feed.
        "liaison.v1.WebhookService/ListWebhookAttempts", OwnerOnly => {
            |c| webhooks.list_webhook_attempts(pb::ListWebhookAttemptsRequest {
                parent: format!("{}/webhookEndpoints/-", c.me.org),
                event_id: c.n.event_id.clone(),
                page_size: 1,
                ..Default::default()
            })
        },
        // The owner's event, to the caller's own endpoint: not in the caller's feed, so
        // it does not exist.
        "liaison.v1.WebhookService/RedeliverWebhookEvent", OwnerOnly, refused NOT_FOUND => {
            |c| webhooks.redeliver_webhook_event(pb::RedeliverWebhookEventRequest {
                name: c.me.endpoint.clone(), event_id: c.n.event_id.clone(), ..Default::default()
            })
        },
        "liaison.v1.WebhookService/RedeliverFailedWebhookDeliveries", OwnerOnly,
        refused NOT_YOURS => {
            |c| webhooks.redeliver_failed_webhook_deliveries(
                pb::RedeliverFailedWebhookDeliveriesRequest {
                    name: c.n.endpoint.clone(),
                    since: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
                    ..Default::default()
                }
            )
        },
        "liaison.v1.WebhookService/DeleteWebhookEndpoint", OwnerOnly, refused NOT_YOURS => {
            |c| webhooks.delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest {
                name: c.n.endpoint.clone(), ..Default::default()
            })
        },

        // --- EventService: each caller's own feed, whole.
        "liaison.v1.EventService/ListEvents", Own => { list_feed },
        "liaison.v1.EventService/WatchEvents", Own => { watch_feed },

        // --- ExportService: each caller's own exports; the owner's file is its alone
        // (what each caller's own files hold is searched with the channels below).
        "liaison.v1.ExportService/ExportCustomers", Own => {
            |c| exports.export_customers(pb::ExportCustomersRequest {
                format: pb::ExportFormat::JsonLines as i32, ..Default::default()
            })
        },
        "liaison.v1.ExportService/ExportInteractions", Own => {
            |c| exports.export_interactions(pb::ExportInteractionsRequest {
                format: pb::ExportFormat::Csv as i32, ..Default::default()
            })
        },
        "liaison.v1.ExportService/ExportScorecards", Proposal => {
            |c| exports.export_scorecards(pb::ExportScorecardsRequest {
                partnership: c.n.partnership.clone(),
                period: pb::ScorecardPeriod::Month as i32,
                first_date: "2026-01-01".into(),
                last_date: "2026-01-01".into(),
                format: pb::ExportFormat::Csv as i32,
                ..Default::default()
            })
        },
        "liaison.v1.ExportService/ReadExport", OwnerOnly => { read_owners_export },

        // --- AuditService: each caller's own log (what its feed carried), whole; the
        // owner's log is the owner's alone.
        "liaison.v1.AuditService/ListAuditEntries", Own => {
            |c| audit.list_audit_entries(pb::ListAuditEntriesRequest {
                parent: c.me.org.clone(), page_size: 1000, ..Default::default()
            })
        },
        "liaison.v1.AuditService/ListAuditEntries", OwnerOnly, refused NOT_YOURS => {
            |c| audit.list_audit_entries(pb::ListAuditEntriesRequest {
                parent: c.n.owner.clone(), page_size: 1000, ..Default::default()
            })
        },

        // --- CaseService.
        "liaison.v1.CaseService/ListWorkflowTemplates", Own => {
            |c| cases.list_workflow_templates(pb::ListWorkflowTemplatesRequest {})
        },
        "liaison.v1.CaseService/GetWorkflowTemplate", Own => {
            |c| cases.get_workflow_template(pb::GetWorkflowTemplateRequest {
                name: "workflowTemplates/service_case".into()
            })
        },
        "liaison.v1.CaseService/OpenCase", Customer => {
            |c| cases.open_case(pb::OpenCaseRequest {
                case: Some(pb::Case {
                    template: "workflowTemplates/service_case".into(),
                    title: "Matrix case".into(),
                    priority: pb::CasePriority::Normal as i32,
                    customer: c.n.customer.clone(),
                    participants: vec![
                        participant(&c.me.org, "retailer"),
                        participant(&c.n.owner, "vendor"),
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.CaseService/GetCase", Case => {
            |c| cases.get_case(pb::GetCaseRequest { name: c.n.case.clone() })
        },
        "liaison.v1.CaseService/ListCases", Own => {
            |c| cases.list_cases(pb::ListCasesRequest { page_size: 1, ..Default::default() })
        },
        "liaison.v1.CaseService/TransitionCase", Case => { transition_case },
        "liaison.v1.CaseService/CommentOnCase", Case => {
            |c| cases.comment_on_case(pb::CommentOnCaseRequest {
                name: c.n.case.clone(),
                body: "matrix comment".into(),
                visibility: pb::CommentVisibility::AllParticipants as i32,
                ..Default::default()
            })
        },
        "liaison.v1.CaseService/AddCaseParticipant", Case => {
            |c| cases.add_case_participant(pb::AddCaseParticipantRequest {
                name: c.n.case.clone(),
                participant: Some(participant(&c.me.org, "distributor")),
                ..Default::default()
            })
        },
        "liaison.v1.CaseService/ListCaseHistory", Case => {
            |c| cases.list_case_history(pb::ListCaseHistoryRequest {
                name: c.n.case.clone(), page_size: 1, ..Default::default()
            })
        },
        "liaison.v1.CaseService/AssignTask", Case => {
            |c| cases.assign_task(pb::AssignTaskRequest {
                parent: c.n.case.clone(),
                task: Some(pb::CaseTask {
                    title: "Matrix task".into(), assignee: c.me.org.clone(), ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.CaseService/GetTask", Case => {
            |c| cases.get_task(pb::GetTaskRequest { name: c.n.task.clone() })
        },
        "liaison.v1.CaseService/ListTasks", Case => {
            |c| cases.list_tasks(pb::ListTasksRequest {
                parent: c.n.case.clone(), page_size: 1, ..Default::default()
            })
        },
        "liaison.v1.CaseService/AcceptTask", Case => {
            |c| cases.accept_task(pb::AcceptTaskRequest {
                name: c.n.task.clone(), ..Default::default()
            })
        },
        "liaison.v1.CaseService/DeclineTask", Case => {
            |c| cases.decline_task(pb::DeclineTaskRequest {
                name: c.n.task.clone(), reason: "matrix".into(), ..Default::default()
            })
        },
        "liaison.v1.CaseService/CompleteTask", Case => {
            |c| cases.complete_task(pb::CompleteTaskRequest {
                name: c.n.task.clone(), note: "matrix".into(), ..Default::default()
            })
        },

        // --- PartnershipService, on the owner's partnership with Ungranted.
        "liaison.v1.PartnershipService/ProposePartnership", Own => {
            |c| partnerships.propose_partnership(pb::ProposePartnershipRequest {
                partnership: Some(pb::Partnership {
                    recipient: c.n.owner.clone(),
                    relationship: pb::Relationship::SellsFor as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        "liaison.v1.PartnershipService/GetPartnership", Proposal => {
            |c| partnerships.get_partnership(pb::GetPartnershipRequest {
                name: c.n.partnership.clone()
            })
        },
        "liaison.v1.PartnershipService/ListPartnerships", Own => {
            |c| partnerships.list_partnerships(pb::ListPartnershipsRequest {
                page_size: 1, ..Default::default()
            })
        },
        "liaison.v1.PartnershipService/AcceptPartnership", Proposal, refused NOT_YET => {
            |c| partnerships.accept_partnership(pb::AcceptPartnershipRequest {
                name: c.n.partnership.clone(), ..Default::default()
            })
        },
        "liaison.v1.PartnershipService/DeclinePartnership", Proposal, refused NOT_YET => {
            |c| partnerships.decline_partnership(pb::DeclinePartnershipRequest {
                name: c.n.partnership.clone(), reason: "matrix".into(), ..Default::default()
            })
        },
        "liaison.v1.PartnershipService/SuspendPartnership", Proposal => {
            |c| partnerships.suspend_partnership(pb::SuspendPartnershipRequest {
                name: c.n.partnership.clone(), reason: "matrix".into(), ..Default::default()
            })
        },
        "liaison.v1.PartnershipService/ResumePartnership", Proposal => {
            |c| partnerships.resume_partnership(pb::ResumePartnershipRequest {
                name: c.n.partnership.clone(), ..Default::default()
            })
        },
        "liaison.v1.PartnershipService/UpdatePartnership", Proposal => {
            |c| partnerships.update_partnership(pb::UpdatePartnershipRequest {
                partnership: Some(pb::Partnership {
                    name: c.n.partnership.clone(),
                    reporting_time_zone: "Europe/Berlin".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["reporting_time_zone"]),
                ..Default::default()
            })
        },
        "liaison.v1.PartnershipService/GetPartnershipScorecard", Proposal => {
            |c| partnerships.get_partnership_scorecard(pb::GetPartnershipScorecardRequest {
                name: c.n.partnership.clone(),
                period: pb::ScorecardPeriod::Quarter as i32,
                ..Default::default()
            })
        },

        // --- Last: leaving the case, and ending the partnership, for those who may.
        "liaison.v1.CaseService/RemoveCaseParticipant", Case => {
            |c| cases.remove_case_participant(pb::RemoveCaseParticipantRequest {
                name: c.n.case.clone(), organization: c.me.org.clone(), ..Default::default()
            })
        },
        "liaison.v1.PartnershipService/EndPartnership", Proposal => {
            |c| partnerships.end_partnership(pb::EndPartnershipRequest {
                name: c.n.partnership.clone(), reason: "matrix".into(), ..Default::default()
            })
        },
    ]
}

/// A proposal that is already active: not found by outsiders, too late for Ungranted.
const NOT_YET: &[Code] = &[Code::NotFound, Code::FailedPrecondition];

/// An organization nobody deals with; the ghost of the owner.
const NOBODY: &str = "organizations/nobody";
const CANARY_EMAIL: &str = "canarymail@vera.example";
const CANARY_PHONE: &str = "+1 650 253 0199";

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn email(address: &str) -> pb::EmailContact {
    pb::EmailContact {
        address: address.into(),
        ..Default::default()
    }
}

fn participant(organization: &str, role: &str) -> pb::CaseParticipant {
    pb::CaseParticipant {
        organization: organization.into(),
        role: role.into(),
    }
}

fn preferences(member: &str) -> String {
    format!("{member}/notificationPreferences")
}

/// Every page of the caller's customers, deleted ones too, by display name: none of
/// the owner's records the caller may not see is on any page.
fn list_customers(c: Ctx) -> Reply {
    boxed(async move {
        let mut request = pb::ListCustomersRequest {
            page_size: 1,
            order_by: "display_name".into(),
            show_deleted: true,
            ..Default::default()
        };
        let mut seen = Seen::asked(&request);
        let unseen = [&c.n.twin, &c.n.merged, &c.n.deleted, &c.n.erased];
        for _ in 0..100 {
            match c.customers().list_customers(request.clone()).await {
                Err(status) => {
                    seen.outcome = Err(status);
                    return seen;
                }
                Ok(page) => {
                    let page = page.into_inner();
                    if page.customers.iter().any(|x| unseen.contains(&&x.name)) {
                        seen.notes
                            .push(format!("lists a record of the owner's: {page:?}"));
                    }
                    seen.answered(&page);
                    if page.next_page_token.is_empty() {
                        return seen;
                    }
                    request.page_token = page.next_page_token;
                }
            }
        }
        seen.notes.push("the list did not end in 100 pages".into());
        seen
    })
}

/// A filter on a field hidden from every caller here matches nothing of the owner's,
/// even for a caller that sees the record.
fn hidden_phone_filter(c: Ctx) -> Reply {
    boxed(async move {
        let request = pb::ListCustomersRequest {
            filter: "phone = \"+16502530199\"".into(),
            page_size: 10,
            ..Default::default()
        };
        let result = c.customers().list_customers(request.clone()).await;
        let found = result.as_ref().is_ok_and(|r| {
            r.get_ref()
                .customers
                .iter()
                .any(|x| x.name == c.n.customer || x.name == c.n.twin)
        });
        let mut seen = seen(&request, result);
        if found {
            seen.notes
                .push("a filter on the hidden phone found the owner's record".into());
        }
        seen
    })
}

/// Fires `triage` with the etag as the caller last read it (an outsider has none).
fn transition_case(c: Ctx) -> Reply {
    boxed(async move {
        let read = c
            .cases()
            .get_case(pb::GetCaseRequest {
                name: c.n.case.clone(),
            })
            .await;
        let request = pb::TransitionCaseRequest {
            name: c.n.case.clone(),
            transition: "triage".into(),
            etag: read.map_or("\"0\"".into(), |r| r.into_inner().etag),
            ..Default::default()
        };
        seen(&request, c.cases().transition_case(request.clone()).await)
    })
}

/// The caller's whole feed, page by page.
fn list_feed(c: Ctx) -> Reply {
    boxed(async move {
        let mut request = pb::ListEventsRequest {
            page_size: 7,
            ..Default::default()
        };
        let mut seen = Seen::asked(&request);
        for _ in 0..1000 {
            match c.events().list_events(request.clone()).await {
                Err(status) => {
                    seen.outcome = Err(status);
                    return seen;
                }
                Ok(page) => {
                    let page = page.into_inner();
                    seen.answered(&page);
                    if page.next_after_sequence >= page.head_sequence {
                        return seen;
                    }
                    request.after_sequence = page.next_after_sequence;
                }
            }
        }
        seen.notes
            .push("the feed did not end in 1,000 pages".into());
        seen
    })
}

/// The caller's feed as a stream, read until it has caught up with the head ListEvents
/// reports (an event or a progress message at or past it).
fn watch_feed(c: Ctx) -> Reply {
    use pb::watch_events_response::Message as Out;
    boxed(async move {
        let request = pb::WatchEventsRequest::default();
        let mut seen = Seen::asked(&request);
        let head = c
            .events()
            .list_events(pb::ListEventsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .map_or(0, |r| r.into_inner().head_sequence);
        let mut stream = match c.events().watch_events(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                seen.outcome = Err(status);
                return seen;
            }
        };
        loop {
            match tokio::time::timeout(PATIENCE, stream.message()).await {
                Err(_) => {
                    seen.notes
                        .push(format!("the stream did not reach sequence {head}"));
                    return seen;
                }
                Ok(Err(status)) => {
                    seen.outcome = Err(status);
                    return seen;
                }
                Ok(Ok(None)) => {
                    seen.notes
                        .push("the stream ended before it caught up".into());
                    return seen;
                }
                Ok(Ok(Some(message))) => {
                    seen.answered(&message);
                    let at = match &message.message {
                        Some(Out::Event(e)) => e.sequence,
                        Some(Out::Progress(p)) => p.sequence,
                        None => 0,
                    };
                    if at >= head {
                        return seen;
                    }
                }
            }
        }
    })
}

/// The owner's export, read as a stream to its end.
fn read_owners_export(c: Ctx) -> Reply {
    boxed(async move {
        let request = pb::ReadExportRequest {
            name: c.n.export.clone(),
        };
        let mut seen = Seen::asked(&request);
        let mut stream = match c.exports().read_export(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                seen.outcome = Err(status);
                return seen;
            }
        };
        loop {
            match tokio::time::timeout(PATIENCE, stream.message()).await {
                Err(_) => {
                    seen.notes.push("the export stream stalled".into());
                    return seen;
                }
                Ok(Err(status)) => {
                    seen.outcome = Err(status);
                    return seen;
                }
                Ok(Ok(None)) => return seen,
                Ok(Ok(Some(chunk))) => seen.answered(&chunk),
            }
        }
    })
}

/// Runs an export of `key`'s organization (its customers, or their interactions) to
/// its end: its name, and its file.
async fn run_export(app: &TestApp, key: &str, customers: bool) -> (String, Vec<u8>) {
    let kind = if customers {
        "customers"
    } else {
        "interactions"
    };
    let format = pb::ExportFormat::JsonLines;
    let op = crate::exports::started(app, key, kind, "", format)
        .await
        .expect("start an export");
    crate::exports::finished(app, key, &op).await;
    let (file, _) = crate::exports::read(app, key, &op.name)
        .await
        .expect("read the export");
    (op.name, file)
}

async fn owners_export(app: &TestApp, key: &str) -> String {
    run_export(app, key, true).await.0
}

/// Fails naming the methods without a row (and rows naming no method).
fn assert_every_method_has_a_case(pool: &DescriptorPool, cases: &[Case]) {
    let methods: BTreeSet<String> = pool
        .services()
        .filter(|s| {
            s.full_name().starts_with("liaison.v1.")
                || s.full_name().starts_with("google.longrunning.")
        })
        .flat_map(|s| {
            s.methods()
                .map(|m| format!("{}/{}", s.full_name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect();
    let covered: BTreeSet<String> = cases.iter().map(|c| c.method.to_owned()).collect();
    let missing: Vec<&String> = methods.difference(&covered).collect();
    let unknown: Vec<&String> = covered.difference(&methods).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "every RPC needs a row in the tenant matrix; missing: {missing:#?}, unknown: {unknown:#?}"
    );
}

// ------------------------------------------------------------------------------------
// What a call saw, and how it is judged.

/// The owner's records a request names (or, for a ghost, names that exist nowhere).
#[derive(Debug, Clone)]
struct Names {
    owner: String,
    customer: String,
    /// The owner's other customer, shared with no one; it has the canary phone too.
    twin: String,
    /// Customers the owner merged into the twin, deleted and erased; the last two
    /// were Masked's to see before.
    merged: String,
    deleted: String,
    erased: String,
    private_interaction: String,
    writers_grant: String,
    case: String,
    task: String,
    /// The owner's partnership with Ungranted.
    partnership: String,
    /// Ungranted's pending request for the customer, and the match it was made with.
    access_request: String,
    customer_match: String,
    member: String,
    endpoint: String,
    api_key: String,
    certificate: String,
    /// The owner's field preset.
    preset: String,
    /// The owner's segment, and its rule sharing it with Masked.
    segment: String,
    rule: String,
    /// The owner's account mapping with Masked, its comparison's operation, and the
    /// segments in it: the owner's and Masked's.
    mapping: String,
    operation: String,
    mapping_segment: String,
    partner_segment: String,
    /// An event of the owner's feed.
    event_id: String,
    /// The owner's finished export of its customers (`operations/{id}`).
    export: String,
}

impl Names {
    fn labelled(&self) -> [(&'static str, &str); 26] {
        [
            ("<owner>", &self.owner),
            ("<customer>", &self.customer),
            ("<twin>", &self.twin),
            ("<merged>", &self.merged),
            ("<deleted>", &self.deleted),
            ("<erased>", &self.erased),
            ("<interaction>", &self.private_interaction),
            ("<grant>", &self.writers_grant),
            ("<case>", &self.case),
            ("<task>", &self.task),
            ("<partnership>", &self.partnership),
            ("<access_request>", &self.access_request),
            ("<match>", &self.customer_match),
            ("<member>", &self.member),
            ("<endpoint>", &self.endpoint),
            ("<api_key>", &self.api_key),
            ("<certificate>", &self.certificate),
            ("<preset>", &self.preset),
            ("<segment>", &self.segment),
            ("<rule>", &self.rule),
            ("<mapping>", &self.mapping),
            ("<operation>", &self.operation),
            ("<mapping_segment>", &self.mapping_segment),
            ("<partner_segment>", &self.partner_segment),
            ("<event>", &self.event_id),
            ("<export>", &self.export),
        ]
    }

    /// The same names with each record's own id replaced by one that exists nowhere
    /// (its parent kept), and the owner replaced by an organization nobody deals with.
    fn ghost(&self) -> Names {
        let new = |name: &str| match name.rsplit_once('/') {
            Some((parent, _)) => format!("{parent}/{}", Uuid::now_v7()),
            None => Uuid::now_v7().to_string(),
        };
        Names {
            owner: NOBODY.into(),
            customer: new(&self.customer),
            twin: new(&self.twin),
            merged: new(&self.merged),
            deleted: new(&self.deleted),
            erased: new(&self.erased),
            private_interaction: new(&self.private_interaction),
            writers_grant: new(&self.writers_grant),
            case: new(&self.case),
            task: new(&self.task),
            partnership: new(&self.partnership),
            access_request: new(&self.access_request),
            customer_match: new(&self.customer_match),
            member: new(&self.member),
            endpoint: new(&self.endpoint),
            api_key: new(&self.api_key),
            certificate: new(&self.certificate),
            preset: new(&self.preset),
            segment: new(&self.segment),
            rule: new(&self.rule),
            mapping: new(&self.mapping),
            operation: new(&self.operation),
            mapping_segment: new(&self.mapping_segment),
            partner_segment: new(&self.partner_segment),
            event_id: new(&self.event_id),
            export: new(&self.export),
        }
    }
}

/// The caller's own organization and records.
#[derive(Debug)]
struct Me {
    org: String,
    member: String,
    endpoint: String,
}

/// What a row's call works with.
#[derive(Clone)]
struct Ctx {
    wire: Wire,
    key: String,
    me: Arc<Me>,
    n: Arc<Names>,
}

macro_rules! clients {
    ($($name:ident: $client:ident),* $(,)?) => {
        impl Ctx {
            $(fn $name(&self) -> $client<InterceptedService<Wire, Bearer>> {
                $client::with_interceptor(self.wire.clone(), Bearer(self.key.clone()))
            })*
        }
    };
}

clients!(
    admin: AdminServiceClient,
    audit: AuditServiceClient,
    cases: CaseServiceClient,
    customers: CustomerServiceClient,
    events: EventServiceClient,
    exports: ExportServiceClient,
    interactions: InteractionServiceClient,
    mappings: AccountMappingServiceClient,
    members: MemberServiceClient,
    operations: OperationsClient,
    partnerships: PartnershipServiceClient,
    sharing: SharingServiceClient,
    webhooks: WebhookServiceClient,
);

/// What one call sent and got back.
struct Seen {
    /// The request, folded (see [`fold`]): values in it are the caller's own.
    request: String,
    /// Each response message encoded, or the refusal.
    outcome: Result<Vec<Vec<u8>>, Status>,
    /// The response messages' `Debug`.
    debug: String,
    /// What the call itself found wrong.
    notes: Vec<String>,
}

impl Seen {
    fn asked(request: &(impl Message + std::fmt::Debug)) -> Self {
        Self {
            request: fold_bytes(&request.encode_to_vec()) + &fold(&format!("{request:?}")),
            outcome: Ok(vec![]),
            debug: String::new(),
            notes: vec![],
        }
    }

    fn answered(&mut self, response: &(impl Message + std::fmt::Debug)) {
        if let Ok(messages) = &mut self.outcome {
            messages.push(response.encode_to_vec());
        }
        self.debug.push_str(&format!("{response:?}"));
    }
}

fn seen<Q, R>(request: &Q, result: Result<tonic::Response<R>, Status>) -> Seen
where
    Q: Message + std::fmt::Debug,
    R: Message + std::fmt::Debug,
{
    let mut seen = Seen::asked(request);
    match result {
        Ok(response) => seen.answered(response.get_ref()),
        Err(status) => seen.outcome = Err(status),
    }
    seen
}

/// Lower-case letters and digits only, so a value is found however it is spelled
/// out: `+1 650-253-0199` and `16502530199`, `Canary Street 1` and `canarystreet1`.
fn fold(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn fold_bytes(bytes: &[u8]) -> String {
    fold(&String::from_utf8_lossy(bytes))
}

/// A value of the owner's that must reach no one but the callers in `seen_by`.
struct Canary {
    what: &'static str,
    needle: String,
    seen_by: &'static [Who],
}

/// Everything the checks compare against.
struct World {
    canaries: Vec<Canary>,
    pool: DescriptorPool,
    ghost: Arc<Names>,
    /// (real, ghost, label), longest first: an answer about a real record and one
    /// about its ghost must read the same once both are replaced by the label.
    aliases: Vec<(String, String, &'static str)>,
}

impl World {
    fn new(canaries: Vec<Canary>, real: &Names, pool: DescriptorPool) -> Self {
        let ghost = real.ghost();
        let mut aliases = vec![];
        for ((label, real), (_, ghost)) in real.labelled().into_iter().zip(ghost.labelled()) {
            let id = |name: &str| name.rsplit('/').next().unwrap_or_default().to_owned();
            aliases.push((real.to_owned(), ghost.to_owned(), label));
            aliases.push((id(real), id(ghost), label));
        }
        aliases.sort_by_key(|(real, ghost, _)| std::cmp::Reverse(real.len().max(ghost.len())));
        Self {
            canaries,
            pool,
            ghost: Arc::new(ghost),
            aliases,
        }
    }

    /// The canaries in `text` that `who` may not see, leaving out values it sent.
    fn leaks(&self, who: Who, text: &str, sent: &str) -> Vec<&'static str> {
        self.canaries
            .iter()
            .filter(|k| !k.seen_by.contains(&who) && !sent.contains(&k.needle))
            .filter(|k| text.contains(&k.needle))
            .map(|k| k.what)
            .collect()
    }

    /// The outcome, every name replaced by its label.
    fn shape(&self, seen: &Seen) -> String {
        let Err(status) = &seen.outcome else {
            return "OK".into();
        };
        let info = status.get_details_error_info();
        let reason = info.as_ref().map(|i| i.reason.clone()).unwrap_or_default();
        let metadata: BTreeMap<String, String> = info
            .map(|i| i.metadata.into_iter().collect())
            .unwrap_or_default();
        let violations: Vec<String> = status
            .get_details_bad_request()
            .map(|b| {
                b.field_violations
                    .into_iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect()
            })
            .unwrap_or_default();
        let mut text = format!(
            "{:?} {reason} {:?} {metadata:?} {violations:?}",
            status.code(),
            status.message()
        );
        for (real, ghost, label) in &self.aliases {
            text = text.replace(real, label).replace(ghost, label);
        }
        text
    }
}

/// Everything in a refusal a client can read.
fn refusal_text(status: &Status) -> String {
    fold(status.message())
        + &fold_bytes(status.details())
        + &fold(&format!("{:?}", status.metadata()))
}

fn method(pool: &DescriptorPool, name: &str) -> Option<MethodDescriptor> {
    let (service, method) = name.split_once('/')?;
    pool.get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)
}

/// The `next_page_token` of each response message, found through the descriptors so
/// that no list method can be forgotten.
fn page_tokens(pool: &DescriptorPool, name: &str, messages: &[Vec<u8>]) -> Vec<String> {
    let Some(method) = method(pool, name) else {
        return vec![];
    };
    messages
        .iter()
        .filter_map(|bytes| {
            let message = DynamicMessage::decode(method.output(), bytes.as_slice()).ok()?;
            let token = message.get_field_by_name("next_page_token")?;
            token.as_str().map(str::to_owned)
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// The fields of a customer record a grant may name.
const CUSTOMER_FIELDS: [&str; 9] = [
    "display_name",
    "given_name",
    "family_name",
    "legal_name",
    "emails",
    "phones",
    "addresses",
    "tags",
    "attributes",
];

/// The owner's customer's fields granted to `who`.
fn granted(who: Who) -> &'static [&'static str] {
    match who {
        Masked => &["display_name"],
        Writer => &["emails"],
        _ => &[],
    }
}

/// Finds, anywhere in a message, the owner's customer's fields shown or named to a
/// caller beyond its grant: set on the record, listed in its `visible_fields`, in an
/// event's `changed_fields`, in a history entry's changes. A field's name tells of a
/// hidden field as surely as its value.
struct Grant<'a> {
    customer: &'a str,
    /// The caller's organization: its own overlay's history is its own.
    me: &'a str,
    fields: &'static [&'static str],
}

impl Grant<'_> {
    fn beyond(&self, message: &DynamicMessage, out: &mut BTreeSet<String>) {
        let text = |m: &DynamicMessage, name: &str| {
            m.get_field_by_name(name)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let list = |m: &DynamicMessage, name: &str| -> Vec<String> {
            m.get_field_by_name(name)
                .and_then(|v| {
                    v.as_list().map(|l| {
                        l.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                })
                .unwrap_or_default()
        };
        let mut named = vec![];
        match message.descriptor().full_name() {
            "liaison.v1.Customer" if text(message, "name") == self.customer => {
                named.extend(message.fields().map(|(f, _)| f.name().to_owned()));
                named.retain(|f| CUSTOMER_FIELDS.contains(&f.as_str()));
                named.extend(list(message, "visible_fields"));
            }
            "liaison.v1.Event" if text(message, "resource") == self.customer => {
                named.extend(list(message, "changed_fields"));
            }
            // Only the owner's customer's history is read here.
            "liaison.v1.CustomerHistoryEntry" => {
                let own = text(message, "organization") == self.me;
                for change in message
                    .get_field_by_name("changes")
                    .iter()
                    .flat_map(|v| v.as_list().unwrap_or_default().to_vec())
                {
                    if let Some(change) = change.as_message() {
                        let field = text(change, "field");
                        if !(own && field.starts_with("overlay.")) {
                            named.push(field);
                        }
                    }
                }
            }
            _ => {}
        }
        out.extend(
            named
                .into_iter()
                .filter(|f| !self.fields.contains(&f.as_str())),
        );
        for (_, value) in message.fields() {
            self.beyond_value(value, out);
        }
    }

    fn beyond_value(&self, value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Message(m) => self.beyond(m, out),
            Value::List(values) => values.iter().for_each(|v| self.beyond_value(v, out)),
            Value::Map(values) => values.values().for_each(|v| self.beyond_value(v, out)),
            _ => {}
        }
    }

    /// What `beyond` finds in encoded messages of type `desc`.
    fn beyond_all(&self, desc: &MessageDescriptor, messages: &[Vec<u8>]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for bytes in messages {
            match DynamicMessage::decode(desc.clone(), bytes.as_slice()) {
                Ok(message) => self.beyond(&message, &mut out),
                Err(e) => {
                    out.insert(format!("(undecodable {}: {e})", desc.full_name()));
                }
            }
        }
        out
    }
}

/// How one row went for one caller.
struct Verdict {
    outcome: String,
    problems: Vec<String>,
    ghosted: bool,
    tokens: usize,
}

/// Runs `case` as `who` and, when the records are unknown to `who`, for their ghosts;
/// judges what came back.
async fn run(w: &World, case: &Case, who: Who, ctx: &Ctx) -> Verdict {
    let seen = (case.call)(ctx.clone()).await;
    let ghost = if who != Revoked && !case.about.known_to(who) {
        let ctx = Ctx {
            n: w.ghost.clone(),
            ..ctx.clone()
        };
        Some((case.call)(ctx).await)
    } else {
        None
    };
    let at = format!("{} as {who:?}", case.method);
    let mut problems: Vec<String> = seen.notes.iter().map(|n| format!("{at}: {n}")).collect();

    // The code says what to do.
    match (&seen.outcome, who) {
        (Err(status), Revoked) if status.code() == Code::Unauthenticated => {}
        (_, Revoked) => problems.push(format!(
            "{at}: a revoked key must be UNAUTHENTICATED, got {}",
            w.shape(&seen)
        )),
        (Ok(_), _) if case.refused => {
            problems.push(format!("{at}: succeeded; expected one of {:?}", case.codes))
        }
        (Ok(_), _) => {}
        (Err(status), _) if case.codes.contains(&status.code()) => {}
        (Err(_), _) => problems.push(format!("{at}: unexpected {}", w.shape(&seen))),
    }
    // Nothing hidden from the caller comes back, in an answer or a refusal.
    for (whose, s) in
        std::iter::once(("answer", &seen)).chain(ghost.iter().map(|g| ("ghost's answer", g)))
    {
        let text = match &s.outcome {
            Ok(messages) => {
                messages.iter().map(|m| fold_bytes(m)).collect::<String>() + &fold(&s.debug)
            }
            Err(status) => refusal_text(status),
        };
        for what in w.leaks(who, &text, &s.request) {
            problems.push(format!("{at}: the {whose} holds the {what}"));
        }
    }
    // Nor does the name of a field beyond the caller's grant.
    if let (Ok(messages), Some(method)) = (&seen.outcome, method(&w.pool, case.method)) {
        let grant = Grant {
            customer: &ctx.n.customer,
            me: &ctx.me.org,
            fields: granted(who),
        };
        for field in grant.beyond_all(&method.output(), messages) {
            problems.push(format!(
                "{at}: the answer shows or names the customer's {field}"
            ));
        }
    }
    // Sealed page tokens hold nothing readable, not even what the caller may see.
    let tokens = match &seen.outcome {
        Ok(messages) => page_tokens(&w.pool, case.method, messages),
        Err(_) => vec![],
    };
    for token in &tokens {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(token) else {
            problems.push(format!("{at}: page token {token:?} is not base64url"));
            continue;
        };
        let text = fold_bytes(&bytes);
        for k in w.canaries.iter().filter(|k| text.contains(&k.needle)) {
            problems.push(format!("{at}: the page token holds the {}", k.what));
        }
    }
    // An unknown record is answered for as a missing one.
    if let Some(ghost) = &ghost {
        let (real, missing) = (w.shape(&seen), w.shape(ghost));
        if real != missing {
            problems.push(format!(
                "{at}: answers otherwise than for a record that does not exist:\n    \
                 real:  {real}\n    ghost: {missing}"
            ));
        }
    }
    Verdict {
        outcome: match &seen.outcome {
            Ok(_) => "OK".into(),
            Err(status) => format!("{:?}", status.code()),
        },
        problems,
        ghosted: ghost.is_some(),
        tokens: tokens.len(),
    }
}

// ------------------------------------------------------------------------------------
// The scene: the owner, its records with their canaries, and the callers.

/// An organization with a coordinator and a webhook endpoint of its own.
struct Party {
    who: Who,
    org: Org,
    coordinator: pb::Member,
    receiver: Receiver,
    endpoint: pb::WebhookEndpoint,
}

/// `coordinator` is (display name, email).
async fn party(app: &TestApp, who: Who, org: Org, coordinator: (&str, &str), hook: &str) -> Party {
    let coordinator = member(app, &org, coordinator.0, coordinator.1, "UTC").await;
    let receiver = Receiver::scripted(|_| reply(200)).await;
    let endpoint = app
        .webhooks(&org.admin_key)
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            parent: org.name.clone(),
            webhook_endpoint: Some(pb::WebhookEndpoint {
                url: receiver.url.clone(),
                description: hook.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("endpoint")
        .into_inner();
    Party {
        who,
        org,
        coordinator,
        receiver,
        endpoint,
    }
}

fn id_of(name: &str) -> &str {
    name.rsplit('/').next().unwrap()
}

/// The customer's hidden fields as the owner writes them (`round` 1), and again.
fn canary_fields(name: &str, round: u8) -> pb::Customer {
    let again = |value: &str| match round {
        1 => value.to_owned(),
        n => format!("{value}-{n}"),
    };
    pb::Customer {
        name: name.into(),
        family_name: again("Canaryfamily"),
        emails: vec![pb::EmailContact {
            address: CANARY_EMAIL.replace("canarymail", &again("canarymail")),
            label: "home".into(),
            primary: true,
        }],
        phones: vec![pb::PhoneContact {
            number: CANARY_PHONE.into(),
            ..Default::default()
        }],
        addresses: vec![pb::PostalAddress {
            lines: vec![again("Canary Street 1")],
            locality: "Springfield".into(),
            postal_code: "12345".into(),
            country_code: "US".into(),
            ..Default::default()
        }],
        tags: vec![again("canarytag")],
        attributes: [("tier".to_owned(), again("canaryattr"))].into(),
        ..Default::default()
    }
}

/// The owner changes hidden fields of the customer (beside the display name Masked
/// sees and the emails Writer sees), its overlay, and writes a private interaction
/// and a private case comment: each reaches the feeds, webhooks and emails of those
/// who see the record.
async fn owner_writes_canaries(app: &TestApp, owner: &Org, customer: &str, case: &str, round: u8) {
    let fields = [
        "family_name",
        "emails",
        "phones",
        "addresses",
        "tags",
        "attributes",
    ];
    update(
        app,
        &owner.admin_key,
        canary_fields(customer, round),
        &fields,
    )
    .await
    .unwrap();
    app.customers(&owner.admin_key)
        .update_customer_overlay(pb::UpdateCustomerOverlayRequest {
            overlay: Some(pb::CustomerOverlay {
                name: format!("{customer}/overlay"),
                notes: format!("canarynote {round}: pays late"),
                ..Default::default()
            }),
            update_mask: mask(&["notes"]),
            ..Default::default()
        })
        .await
        .unwrap();
    log(
        app,
        owner,
        customer,
        pb::InteractionType::Note,
        pb::InteractionVisibility::Organization,
        &format!("canarysummary {round}: credit check"),
    )
    .await;
    app.cases(&owner.admin_key)
        .comment_on_case(pb::CommentOnCaseRequest {
            name: case.into(),
            body: format!("canarycomment {round}: the margin is thin"),
            visibility: pb::CommentVisibility::OwnOrganization as i32,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The owner's account mapping with Masked, as the set-up made it.
struct Mapped {
    name: String,
    /// Its first comparison's operation, finished.
    operation: String,
    /// The owner's segment in it, and Masked's.
    ours: String,
    theirs: String,
}

/// The owner asks Masked to map accounts and Masked accepts: five customers of each,
/// matching by phone. The owner's are named and mailed with canaries no one may read,
/// Masked included; its segment's filter is another. Returns the mapping, compared,
/// and the owner's customers in it.
async fn map_accounts(app: &TestApp, acme: &Org, masked: &Org) -> (Mapped, Vec<String>) {
    let mut mapped = vec![];
    for (i, family) in ["Ash", "Birch", "Cedar", "Dogwood", "Elm"]
        .into_iter()
        .enumerate()
    {
        let phones = vec![pb::PhoneContact {
            number: format!("+141555501{}", 60 + i),
            ..Default::default()
        }];
        let lower = family.to_lowercase();
        let ours = pb::Customer {
            phones: phones.clone(),
            tags: vec!["canarymapfilter".into()],
            ..person(
                "Canarymapped",
                family,
                &format!("canarymapped.{lower}@clients.example"),
            )
        };
        mapped.push(create(app, acme, ours).await.name);
        let theirs = pb::Customer {
            phones,
            tags: vec!["partnermapped".into()],
            ..person(
                "Partner",
                family,
                &format!("{lower}@masked-clients.example"),
            )
        };
        create(app, masked, theirs).await;
    }
    let ours = create_segment(app, acme, "Canarymapseg Clients", "tag = canarymapfilter")
        .await
        .expect("the owner's segment");
    let theirs = create_segment(app, masked, "Canarypartseg Clients", "tag = partnermapped")
        .await
        .expect("Masked's segment");
    let proposed = app
        .mappings(&acme.admin_key)
        .create_account_mapping(pb::CreateAccountMappingRequest {
            account_mapping: Some(pb::AccountMapping {
                partner: masked.name.clone(),
                requester_segments: vec![pb::MappingSegment {
                    segment: ours.name.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("ask for a mapping")
        .into_inner();
    let operation = app
        .mappings(&masked.admin_key)
        .accept_account_mapping(pb::AcceptAccountMappingRequest {
            name: proposed.name.clone(),
            segments: vec![theirs.name.clone()],
            ..Default::default()
        })
        .await
        .expect("accept the mapping")
        .into_inner();
    let operation = finish(app, &acme.read_key, operation).await;
    let compared = mapping_of(&operation);
    // All five in both: Masked may ask for the owner's records.
    let both = compared.overlaps.first().and_then(|o| o.both);
    assert_eq!(
        both,
        Some(pb::MappingCount {
            value: 5,
            bound: pb::mapping_count::Bound::Exact as i32,
        }),
        "{compared:?}"
    );
    let mapping = Mapped {
        name: proposed.name,
        operation: operation.name,
        ours: ours.name,
        theirs: theirs.name,
    };
    (mapping, mapped)
}

/// Everything set up before the matrix runs.
struct Scene {
    app: TestApp,
    /// Holds the email outbox.
    outbox: tempfile::TempDir,
    owner: Party,
    parties: Vec<Party>,
    names: Names,
    canaries: Vec<Canary>,
    revoked_key: String,
}

async fn set_up(backend: Backend) -> Scene {
    use pb::AccessLevel::{Read, ReadWrite};
    let outbox = tempfile::tempdir().unwrap();
    let outbox_dir = outbox.path().display().to_string();
    let app = spawn_app_with(backend, |c| {
        c.webhooks.allow_http = true;
        c.webhooks.allow_private_networks = true;
        c.email.outbox_dir = outbox_dir;
        // Every email at once, so the outbox is final when the queues are empty.
        c.email.coalesce_secs = 0;
        c.email.max_per_second = 1000;
        // An idle stream says it has caught up within a second.
        c.events.heartbeat_secs = 1;
    })
    .await;

    // The owner, the callers and the ghost owner, each organization with a
    // coordinator and a webhook endpoint before anything else happens.
    let acme = app.create_org("acme", pb::OrganizationKind::Vendor).await;
    app.create_org("nobody", pb::OrganizationKind::Other).await;
    // The owner's party: its revoked key is the Revoked caller.
    let coordinator = ("Canarymember Coordinator", "canarymember@acme.example");
    let owner = party(&app, Revoked, acme, coordinator, "canaryhook relay").await;
    let acme = &owner.org;
    let mut parties = vec![];
    for (who, slug) in [
        (Stranger, "stranger"),
        (Ungranted, "ungranted"),
        (Masked, "masked"),
        (Writer, "writer"),
        (Suspended, "suspended"),
        (Participant, "participant"),
    ] {
        let org = app.create_org(slug, pb::OrganizationKind::Retailer).await;
        let email = format!("coordinator@{slug}.example");
        parties.push(party(&app, who, org, ("Coordinator", &email), "ERP").await);
    }
    let of = |who: Who| &parties.iter().find(|p| p.who == who).unwrap().org;

    // Partnerships; the one with Ungranted carries a message only it may read.
    let mut suspended = None;
    for who in [Masked, Writer, Suspended, Participant] {
        let partnership = app.partner(acme, of(who)).await;
        suspended = suspended.or((who == Suspended).then_some(partnership.name));
    }
    let proposal = app
        .partnerships(&acme.admin_key)
        .propose_partnership(pb::ProposePartnershipRequest {
            partnership: Some(pb::Partnership {
                recipient: of(Ungranted).name.clone(),
                relationship: pb::Relationship::Supplies as i32,
                message: "canaryproposal: our terms".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    app.partnerships(&of(Ungranted).admin_key)
        .accept_partnership(pb::AcceptPartnershipRequest {
            name: proposal.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The customer, plain at first, with the owner's external id; its unshared twin;
    // three more the owner merges away, deletes and erases (the last two after
    // Masked was shown them); grants; followers. Then the suspension, so Suspended
    // saw the record once and must see nothing of what follows.
    let mut plain = person("Vera", "Plain", "vera.plain@example.com");
    plain.external_id = "canaryext-7".into();
    let customer = create(&app, acme, plain).await;
    let mut twin = person("Twin", "Record", "");
    twin.external_id = "twin-1".into();
    twin.phones = vec![pb::PhoneContact {
        number: CANARY_PHONE.into(),
        ..Default::default()
    }];
    let twin = create(&app, acme, twin).await;
    let merged = create(&app, acme, person("Mona", "Merged", "")).await;
    let deleted = create(&app, acme, person("Dora", "Deleted", "")).await;
    let erased = create(&app, acme, person("Erin", "Erased", "")).await;
    for gone in [&deleted, &erased] {
        grant(&app, acme, &gone.name, of(Masked), Read, &["display_name"])
            .await
            .unwrap();
    }
    let mut owners = app.customers(&acme.admin_key);
    owners
        .merge_customers(pb::MergeCustomersRequest {
            name: twin.name.clone(),
            merged: vec![merged.name.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    owners
        .delete_customer(pb::DeleteCustomerRequest {
            name: deleted.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    owners
        .erase_customer(pb::EraseCustomerRequest {
            name: erased.name.clone(),
            reason: "asked to be forgotten".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let c = &customer.name;
    grant(&app, acme, c, of(Masked), Read, &["display_name"])
        .await
        .unwrap();
    let writers_grant = grant(&app, acme, c, of(Writer), ReadWrite, &["emails"])
        .await
        .unwrap();
    let preset = app
        .sharing(&acme.admin_key)
        .create_field_preset(pb::CreateFieldPresetRequest {
            parent: acme.name.clone(),
            field_preset: Some(pb::FieldPreset {
                display_name: "Contact only".into(),
                fields: vec!["display_name".into(), "emails".into()],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create preset")
        .into_inner();
    // A segment holding the customer alone (the twin and the rest are named
    // otherwise), shared with Masked by a rule as its grant shares it: display name.
    let sharing = app.sharing(&acme.admin_key);
    let segment = sharing
        .clone()
        .create_segment(pb::CreateSegmentRequest {
            parent: acme.name.clone(),
            segment: Some(pb::Segment {
                display_name: "Canaryseg Vera".into(),
                filter: r#"display_name = "vera*" AND update_time > "2001-02-03T04:05:06Z""#.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("create segment")
        .into_inner();
    let rule = |display_name: &str, grantee: &Org, segment: &str, fields: &[&str]| {
        pb::CreateSharingRuleRequest {
            parent: acme.name.clone(),
            sharing_rule: Some(pb::SharingRule {
                display_name: display_name.into(),
                segment: segment.into(),
                grantee: grantee.name.clone(),
                level: Read as i32,
                fields: fields.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            }),
            request_id: String::new(),
        }
    };
    let masked_rule = sharing
        .clone()
        .create_sharing_rule(rule(
            "Canaryrule Vera",
            of(Masked),
            &segment.name,
            &["display_name"],
        ))
        .await
        .expect("create rule")
        .into_inner();
    grant(&app, acme, c, of(Suspended), Read, &[])
        .await
        .unwrap();
    // Every customer, every field, for Suspended: the suspension below must end it.
    sharing
        .clone()
        .create_sharing_rule(rule("Canarysusrule", of(Suspended), "", &[]))
        .await
        .expect("create rule");
    for p in parties
        .iter()
        .filter(|p| matches!(p.who, Masked | Writer | Suspended))
    {
        let follow = pb::NotificationPreferences {
            name: preferences(&p.coordinator.name),
            followed_customers: vec![c.clone()],
            ..Default::default()
        };
        set_preferences(&app, &p.org, follow, &["followed_customers"])
            .await
            .expect("follow");
    }
    app.partnerships(&acme.admin_key)
        .suspend_partnership(pb::SuspendPartnershipRequest {
            name: suspended.unwrap(),
            reason: "audit".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The case (Masked and Participant take part), with a private comment to come and
    // a task for Masked; Ungranted's match and access request.
    let case = app
        .cases(&acme.admin_key)
        .open_case(pb::OpenCaseRequest {
            case: Some(pb::Case {
                template: "workflowTemplates/service_case".into(),
                customer: c.clone(),
                title: "Canarycase: blender".into(),
                description: "Canarycase: the jar is cracked".into(),
                priority: pb::CasePriority::Normal as i32,
                participants: vec![
                    participant(&acme.name, "vendor"),
                    participant(&of(Masked).name, "retailer"),
                    participant(&of(Participant).name, "distributor"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Two partners register one deal with the owner, which alone is told of the
    // conflict: neither learns of the other's registration.
    let mut deals = vec![];
    for (who, title) in [
        (Masked, "Canarydealm: mainframes"),
        (Writer, "Canarydealw: mainframes"),
    ] {
        let deal = app
            .cases(&of(who).admin_key)
            .open_case(pb::OpenCaseRequest {
                case: Some(pb::Case {
                    template: "workflowTemplates/deal_registration".into(),
                    customer: c.clone(),
                    title: title.into(),
                    priority: pb::CasePriority::Normal as i32,
                    participants: vec![
                        participant(&of(who).name, "reseller"),
                        participant(&acme.name, "vendor"),
                    ],
                    fields: [
                        ("product_line".to_owned(), "Mainframes".to_owned()),
                        ("expected_close_date".to_owned(), "2099-01-31".to_owned()),
                    ]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        deals.push(deal);
    }
    let judged = app
        .cases(&acme.admin_key)
        .get_case(pb::GetCaseRequest {
            name: deals[1].name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        judged.conflicting_cases,
        [deals[0].name.clone()],
        "the owner judges"
    );
    let task = app
        .cases(&acme.admin_key)
        .assign_task(pb::AssignTaskRequest {
            parent: case.name.clone(),
            task: Some(pb::CaseTask {
                title: "Canarycase: replace the jar".into(),
                assignee: of(Masked).name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let private = log(
        &app,
        acme,
        c,
        pb::InteractionType::Note,
        pb::InteractionVisibility::Organization,
        "canarysummary: a note of the owner's own",
    )
    .await;
    // A private purchase: its amount reaches the owner's metrics, which no grant here
    // names, so no partner sees it in any form.
    app.interactions(&acme.admin_key)
        .log_interaction(pb::LogInteractionRequest {
            parent: c.clone(),
            interaction: Some(pb::Interaction {
                r#type: pb::InteractionType::Purchase as i32,
                occur_time: Some(prost_types::Timestamp {
                    seconds: 1_790_000_000,
                    nanos: 0,
                }),
                summary: "canarysummary: a purchase of the owner's own".into(),
                visibility: pb::InteractionVisibility::Organization as i32,
                amount: Some(pb::Money {
                    currency_code: "EUR".into(),
                    units: 7_654_321,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    log(
        &app,
        acme,
        c,
        pb::InteractionType::Call,
        pb::InteractionVisibility::Shared,
        "shared call",
    )
    .await;

    owner_writes_canaries(&app, acme, c, &case.name, 1).await;
    let matches = app
        .sharing(&of(Ungranted).admin_key)
        .match_customer(pb::MatchCustomerRequest {
            email: CANARY_EMAIL.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .matches;
    assert_eq!(matches.len(), 1, "Ungranted finds the owner by the email");
    let access_request = app
        .sharing(&of(Ungranted).admin_key)
        .create_access_request(pb::CreateAccessRequestRequest {
            access_request: Some(pb::AccessRequest {
                r#match: matches[0].r#match.clone(),
                level: Read as i32,
                reason: "canaryreason: a warranty claim".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mapping, mapped) = map_accounts(&app, acme, of(Masked)).await;

    // The owner's keys and certificate: one to revoke by name, one revoked already.
    let certificate = app
        .operator()
        .register_client_certificate(pb::RegisterClientCertificateRequest {
            parent: acme.name.clone(),
            client_certificate: Some(pb::ClientCertificate {
                r#match: Some(pb::client_certificate::Match::SubjectCommonName(
                    "canarycert.acme.example".into(),
                )),
                scopes: vec![pb::ApiKeyScope::Read as i32],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let key = async |scope: pb::ApiKeyScope| {
        app.operator()
            .create_api_key(new_api_key(&acme.name, &[scope]))
            .await
            .unwrap()
            .into_inner()
    };
    let spare = key(pb::ApiKeyScope::Read).await;
    let revoked = key(pb::ApiKeyScope::Admin).await;
    app.operator()
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: revoked.api_key.as_ref().unwrap().name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let secret = app
        .webhooks(&acme.admin_key)
        .get_webhook_endpoint_secret(pb::GetWebhookEndpointSecretRequest {
            name: owner.endpoint.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let owners_event = app
        .events(&acme.read_key)
        .list_events(pb::ListEventsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .remove(0);

    let canary = |what: &'static str, value: &str, seen_by: &'static [Who]| Canary {
        what,
        needle: fold(value),
        seen_by,
    };
    let mut canaries = vec![
        // Masked sees the display name, "Vera Canaryfamily", so the family name too.
        canary("family name", "Canaryfamily", &[Masked]),
        canary("email", "canarymail", &[Writer]),
        canary("phone", CANARY_PHONE, &[]),
        canary("tag", "canarytag", &[]),
        canary("attribute", "canaryattr", &[]),
        canary("address", "Canary Street 1", &[]),
        canary("owner's external id", "canaryext", &[]),
        canary("owner's overlay note", "canarynote", &[]),
        canary("private interaction", "canarysummary", &[]),
        canary("private interaction's id", id_of(&private.name), &[]),
        canary("owner's private purchase amount", "7654321", &[]),
        canary("private case comment", "canarycomment", &[]),
        canary("case", "Canarycase", &[Masked, Participant]),
        canary("case id", id_of(&case.name), &[Masked, Participant]),
        canary("Masked's deal", "Canarydealm", &[Masked]),
        canary("Masked's deal id", id_of(&deals[0].name), &[Masked]),
        canary("Writer's deal", "Canarydealw", &[Writer]),
        canary("Writer's deal id", id_of(&deals[1].name), &[Writer]),
        canary("partnership message", "canaryproposal", &[Ungranted]),
        canary("partnership id", id_of(&proposal.name), &[Ungranted]),
        canary("access request reason", "canaryreason", &[Ungranted]),
        canary(
            "access request id",
            id_of(&access_request.name),
            &[Ungranted],
        ),
        canary("owner's member", "canarymember", &[]),
        canary("owner's member id", id_of(&owner.coordinator.name), &[]),
        canary("owner's endpoint", "canaryhook", &[]),
        canary("owner's endpoint id", id_of(&owner.endpoint.name), &[]),
        canary("owner's endpoint secret", &secret, &[]),
        canary("owner's admin key", &acme.admin_key, &[]),
        canary("owner's client certificate", "canarycert", &[]),
        // Suspended saw the record before the suspension; Participant sees it named
        // on the case.
        canary(
            "customer id",
            id_of(c),
            &[Masked, Writer, Suspended, Participant],
        ),
        canary("unshared customer's id", id_of(&twin.name), &[]),
        canary("Writer's grant id", id_of(&writers_grant.name), &[Writer]),
        canary("segment", "Canaryseg", &[Masked]),
        canary("segment id", id_of(&segment.name), &[Masked]),
        canary("segment filter", "2001-02-03T04:05:06Z", &[]),
        canary("rule", "Canaryrule", &[Masked]),
        canary("rule id", id_of(&masked_rule.name), &[Masked]),
        // Seen before the suspension, never after.
        canary("Suspended's rule", "Canarysusrule", &[Suspended]),
        // The mapping is Masked's to know, with both sides' segments (never a filter);
        // the owner's records in it are no one's.
        canary("mapping id", id_of(&mapping.name), &[Masked]),
        canary(
            "mapping's operation id",
            id_of(&mapping.operation),
            &[Masked],
        ),
        canary("owner's mapping segment", "Canarymapseg", &[Masked]),
        canary(
            "owner's mapping segment id",
            id_of(&mapping.ours),
            &[Masked],
        ),
        canary("Masked's mapping segment", "Canarypartseg", &[Masked]),
        canary(
            "Masked's mapping segment id",
            id_of(&mapping.theirs),
            &[Masked],
        ),
        canary("owner's mapping segment filter", "canarymapfilter", &[]),
        canary("mapped customers' names and emails", "canarymapped", &[]),
    ];
    for customer in &mapped {
        canaries.push(canary("mapped customer's id", id_of(customer), &[]));
    }
    let names = Names {
        owner: acme.name.clone(),
        customer: c.clone(),
        twin: twin.name,
        merged: merged.name,
        deleted: deleted.name,
        erased: erased.name,
        private_interaction: private.name,
        writers_grant: writers_grant.name,
        case: case.name,
        task: task.name,
        partnership: proposal.name,
        access_request: access_request.name,
        customer_match: matches[0].r#match.clone(),
        member: owner.coordinator.name.clone(),
        endpoint: owner.endpoint.name.clone(),
        api_key: spare.api_key.unwrap().name,
        certificate: certificate.name,
        preset: preset.name,
        segment: segment.name,
        rule: masked_rule.name,
        mapping: mapping.name,
        operation: mapping.operation,
        mapping_segment: mapping.ours,
        partner_segment: mapping.theirs,
        event_id: owners_event.id,
        export: owners_export(&app, &acme.read_key).await,
    };
    Scene {
        app,
        outbox,
        owner,
        parties,
        names,
        canaries,
        revoked_key: revoked.key,
    }
}

/// Waits until the hub's workers have nothing left to do, then names what did not go
/// out: deliveries, notifications and emails still pending (a retry is scheduled, so
/// an attempt failed) or dead.
async fn drained(app: &TestApp) -> Vec<String> {
    // Immediate news waits two seconds for more of its thread before it is composed
    // (the email worker's `SETTLE`): the clock moves past that, rather than the test
    // sleeping through it.
    app.advance(jiff::SignedDuration::from_secs(3));
    app.settle().await;
    let counts = app
        .store
        .operational_counts(app.store.clock().now())
        .await
        .expect("operational counts");
    counts
        .backlog
        .iter()
        .filter(|(_, _, n)| *n > 0)
        .map(|(channel, state, n)| match state.as_str() {
            "pending" => format!("{n} {channel} deliveries still pending once the hub settled"),
            _ => format!("{n} {channel} deliveries ended {state}"),
        })
        .collect()
}

/// The `.eml` files in `dir`: the recipients of each, and all a reader sees, folded.
fn emails_in(dir: &Path) -> Vec<(Vec<String>, String)> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let raw = std::fs::read(&path).expect("read email");
        let message = MessageParser::default().parse(&raw).expect("MIME");
        let to = message
            .to()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.address())
                    .map(str::to_lowercase)
                    .collect()
            })
            .unwrap_or_default();
        let mut text = fold_bytes(&raw) + &fold(message.subject().unwrap_or_default());
        for i in 0..message.text_body_count() {
            text += &fold(&message.body_text(i).unwrap_or_default());
        }
        for i in 0..message.html_body_count() {
            text += &fold(&message.body_html(i).unwrap_or_default());
        }
        out.push((to, text));
    }
    out
}

async fn no_hidden_value_leaves_the_hub_by_any_rpc_or_channel(backend: Backend) {
    matrix(backend, Transport::Grpc).await
}

async fn matrix(backend: Backend, transport: Transport) {
    let started = Instant::now();
    let cases = table();
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptors");
    assert_every_method_has_a_case(&pool, &cases);
    let scene = set_up(backend).await;
    let world = World::new(scene.canaries, &scene.names, pool);
    let names = Arc::new(scene.names.clone());
    let ctx = |key: &str, me: &Party| Ctx {
        wire: match transport {
            Transport::Grpc => grpc_wire(&scene.app),
            Transport::HttpJson => json_wire(&scene.app),
        },
        key: key.to_owned(),
        me: Arc::new(Me {
            org: me.org.name.clone(),
            member: me.coordinator.name.clone(),
            endpoint: me.endpoint.name.clone(),
        }),
        n: names.clone(),
    };
    let mut callers: Vec<(Who, Ctx)> = scene
        .parties
        .iter()
        .map(|p| (p.who, ctx(&p.org.admin_key, p)))
        .collect();
    callers.push((Revoked, ctx(&scene.revoked_key, &scene.owner)));
    let set_up_time = started.elapsed();

    // The matrix: every RPC as every caller.
    let (mut problems, mut matrix) = (vec![], String::new());
    let (mut calls, mut tokens) = (0, 0);
    for case in &cases {
        matrix += &format!("{:<56}", case.method.trim_start_matches("liaison.v1."));
        for (who, ctx) in &callers {
            let verdict = run(&world, case, *who, ctx).await;
            matrix += &format!(" {who:?}={}", verdict.outcome);
            calls += 1 + usize::from(verdict.ghosted);
            tokens += verdict.tokens;
            problems.extend(verdict.problems);
        }
        matrix.push('\n');
    }
    let matrix_time = started.elapsed() - set_up_time;

    // The egress channels, after the owner writes the canaries once more.
    let (app, owner) = (&scene.app, &scene.owner.org);
    owner_writes_canaries(app, owner, &scene.names.customer, &scene.names.case, 2).await;
    problems.extend(drained(app).await);
    // Each caller's feed again, as pages and as a stream.
    for case in cases
        .iter()
        .filter(|c| c.method.starts_with("liaison.v1.EventService/"))
    {
        for (who, ctx) in &callers {
            problems.extend(run(&world, case, *who, ctx).await.problems);
        }
    }
    // Every webhook delivered to a caller's endpoint.
    let event = world
        .pool
        .get_message_by_name("liaison.v1.Event")
        .expect("Event");
    let mut delivered = vec![];
    for p in &scene.parties {
        let got = p.receiver.got();
        delivered.push((p.who, got.len()));
        let grant = Grant {
            customer: &scene.names.customer,
            me: &p.org.name,
            fields: granted(p.who),
        };
        for r in &got {
            let text = fold_bytes(&r.body) + &fold(&format!("{:?}", r.headers));
            for what in world.leaks(p.who, &text, "") {
                problems.push(format!("a webhook to {:?} holds the {what}", p.who));
            }
            let mut json = serde_json::Deserializer::from_slice(&r.body);
            match DynamicMessage::deserialize(event.clone(), &mut json) {
                Ok(body) => {
                    let mut beyond = BTreeSet::new();
                    grant.beyond(&body, &mut beyond);
                    for field in beyond {
                        problems.push(format!(
                            "a webhook to {:?} shows or names the customer's {field}",
                            p.who
                        ));
                    }
                }
                Err(e) => problems.push(format!("a webhook to {:?} is not an Event: {e}", p.who)),
            }
        }
    }
    // Each caller's own exports of the customers and interactions it sees.
    for p in &scene.parties {
        for customers in [true, false] {
            let (_, file) = run_export(app, &p.org.read_key, customers).await;
            let text = fold_bytes(&file);
            for what in world.leaks(p.who, &text, "") {
                let kind = if customers {
                    "customers"
                } else {
                    "interactions"
                };
                problems.push(format!(
                    "{:?}'s export of its {kind} holds the {what}",
                    p.who
                ));
            }
        }
    }
    // Every email to a caller's coordinator.
    let mut mailed: Vec<(Who, usize)> = scene.parties.iter().map(|p| (p.who, 0)).collect();
    for (to, text) in emails_in(scene.outbox.path()) {
        for (i, p) in scene.parties.iter().enumerate() {
            if to.contains(&p.coordinator.email) {
                mailed[i].1 += 1;
                for what in world.leaks(p.who, &text, "") {
                    problems.push(format!(
                        "an email to {:?}'s coordinator holds the {what}",
                        p.who
                    ));
                }
            }
        }
    }
    // The channels were exercised: those who see the record and the case heard of it.
    for (i, p) in scene.parties.iter().enumerate() {
        if matches!(p.who, Masked | Writer | Participant)
            && (delivered[i].1 == 0 || mailed[i].1 == 0)
        {
            problems.push(format!("{:?} got no webhook or no email", p.who));
        }
    }

    eprintln!(
        "tenant matrix over {transport:?}: {} rows over {} methods, {} callers, {calls} calls, {tokens} page \
         tokens; set-up {set_up_time:.1?}, matrix {matrix_time:.1?}, total {:.1?}\n\
         webhooks: {delivered:?}\nemails: {mailed:?}\n{matrix}",
        cases.len(),
        cases
            .iter()
            .map(|c| c.method)
            .collect::<BTreeSet<_>>()
            .len(),
        callers.len(),
        started.elapsed(),
    );
    assert!(
        problems.is_empty(),
        "{} breaches of the tenant wall:\n{}\n\n{matrix}",
        problems.len(),
        problems.join("\n")
    );
}
