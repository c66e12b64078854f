//! `liaison.v1.SharingService`: grants, customer matches and access requests.

use std::collections::{HashMap, HashSet};

use tonic::{Request, Response, Status};

use super::convert::{level_from_pb, owners_preset, update_paths};
use super::rules;
use super::write::{Retryable, idempotent};
use super::{Caller, Hub, caller_of};
use crate::app::sharing::{self as app, MAX_GRANT_BATCH, MatchKey, NewAccessRequest, NewGrant};
use crate::domain::customer::{FieldSet, PhoneNumber};
use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::ids::{CustomerId, GrantId, MatchId, PresetId};
use crate::domain::names;
use crate::domain::visibility::AccessLevel;
use crate::domain::{DisplayName, EmailAddress, Reason, Scope};
use crate::feed::render::{grant_to_pb, preset_to_pb, request_to_pb, timestamp};
use crate::pb::{self, sharing_service_server::SharingService};
use crate::store::{MatchRule, Page, RequestState};

#[derive(Clone)]
pub struct SharingApi {
    hub: Hub,
}

impl SharingApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

/// What a CreateGrant request asks for, validated.
struct GrantAsked {
    customer_id: CustomerId,
    grantee: crate::domain::Slug,
    level: AccessLevel,
    fields: FieldSet,
    preset: Option<PresetId>,
}

/// The customer, grantee, level and fields (or preset) a CreateGrant request
/// carries, validated. A preset must be one of the owner's, named instead of fields.
fn grant_from_pb(r: &pb::CreateGrantRequest, owner: &crate::domain::Slug) -> Result<GrantAsked> {
    let input = r.grant.clone().unwrap_or_default();
    let mut v = Violations::new();
    let customer_id = v.check("parent", names::parse_customer(&r.parent));
    let grantee = v.check("grant.grantee", names::parse_organization(&input.grantee));
    let level = v.check("grant.level", level_from_pb(input.level));
    let fields = v.check("grant.fields", FieldSet::parse(&input.fields));
    let preset = owners_preset(&input.preset, owner, &mut v, "grant.preset");
    if !input.preset.is_empty() && !input.fields.is_empty() {
        v.add(
            "grant.fields",
            "must be empty when a preset is given: the grant shares the preset's fields",
        );
    }
    if grantee.as_ref() == Some(owner) {
        v.add(
            "grant.grantee",
            "must be another organization than the owner",
        );
    }
    let (Some(customer_id), Some(grantee), Some(level), Some(fields), Some(preset)) =
        (customer_id, grantee, level, fields, preset)
    else {
        return Err(v.into_error());
    };
    v.finish()?;
    if fields == FieldSet::NONE {
        return Err(Error::invalid(
            "grant.fields",
            "must name at least one field",
        ));
    }
    Ok(GrantAsked {
        customer_id,
        grantee,
        level,
        fields,
        preset,
    })
}

/// What UpdateFieldPreset may change.
const PRESET_UPDATABLE: &[&str] = &["display_name", "fields"];

/// A preset's fields: named, at least one.
fn preset_fields(raw: &[String]) -> Result<FieldSet, FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::required(""));
    }
    FieldSet::parse(raw)
}

/// A batch's `parent`: none (empty or `customers/-`), or the one customer every item
/// must be on.
fn batch_parent(parent: &str) -> Result<Option<CustomerId>> {
    if parent.is_empty() || parent == "customers/-" {
        return Ok(None);
    }
    Ok(Some(
        names::parse_customer(parent).map_err(|v| v.under("parent"))?,
    ))
}

/// How many items a batch holds, or INVALID_ARGUMENT on `field`.
fn batch_size(field: &str, len: usize) -> Result<()> {
    if len == 0 || len > MAX_GRANT_BATCH {
        return Err(Error::invalid(
            field,
            format!("must hold 1 to {MAX_GRANT_BATCH} items; it holds {len}"),
        ));
    }
    Ok(())
}

/// A validated item of BatchCreateGrants: as [`grant_from_pb`] returns it, and the
/// customer's name as the caller wrote it (the batch's parent where the item left it
/// empty).
type GrantItem = (GrantAsked, String);

/// The items of a BatchCreateGrants request, each checked as CreateGrant checks its
/// request, with every violation named by its item (`requests[i].grant.level`); a
/// customer and grantee may appear once.
fn grants_from_pb(
    r: &pb::BatchCreateGrantsRequest,
    owner: &crate::domain::Slug,
) -> Result<Vec<GrantItem>> {
    batch_size("requests", r.requests.len())?;
    let parent = batch_parent(&r.parent)?;
    let mut v = Violations::new();
    let mut pairs = HashSet::new();
    let mut items = Vec::with_capacity(r.requests.len());
    for (i, item) in r.requests.iter().enumerate() {
        let at = format!("requests[{i}]");
        if !item.request_id.is_empty() {
            v.add(
                format!("{at}.request_id"),
                "must be empty: the batch's request_id is the one that counts",
            );
        }
        let mut item = item.clone();
        if parent.is_some() {
            if item.parent.is_empty() {
                item.parent.clone_from(&r.parent);
            } else if item.parent != r.parent {
                v.add(
                    format!("{at}.parent"),
                    "must be empty or the batch's parent",
                );
                continue;
            }
        }
        match grant_from_pb(&item, owner) {
            Ok(asked) => {
                let pair = (
                    asked.customer_id.as_str().to_owned(),
                    asked.grantee.as_str().to_owned(),
                );
                if pairs.insert(pair) {
                    items.push((asked, item.parent));
                } else {
                    v.add(
                        format!("{at}.grant.grantee"),
                        "is granted the same customer by an earlier request of the batch",
                    );
                }
            }
            Err(Error::InvalidArgument(list)) => {
                for x in list {
                    v.push(x.under(&at));
                }
            }
            Err(e) => return Err(e.in_item(&at)),
        }
    }
    v.finish()?;
    Ok(items)
}

/// The grants a BatchRevokeGrants request names, distinct, each on the batch's parent
/// customer when it names one.
fn revocations_from_pb(
    r: &pb::BatchRevokeGrantsRequest,
) -> Result<Vec<(CustomerId, GrantId, String)>> {
    batch_size("names", r.names.len())?;
    let parent = batch_parent(&r.parent)?;
    let mut v = Violations::new();
    let mut seen = HashSet::new();
    let mut grants = Vec::with_capacity(r.names.len());
    for (i, name) in r.names.iter().enumerate() {
        let at = format!("names[{i}]");
        let Some((customer, grant)) = v.check(&at, names::parse_grant(name)) else {
            continue;
        };
        if parent
            .as_ref()
            .is_some_and(|p| p.as_str() != customer.as_str())
        {
            v.add(&at, "must be a grant on the batch's parent");
        } else if !seen.insert(name.as_str()) {
            v.add(&at, "appears twice in the batch");
        } else {
            grants.push((customer, grant, name.clone()));
        }
    }
    v.finish()?;
    Ok(grants)
}

/// The match, level, fields and reason a CreateAccessRequest request carries,
/// validated.
fn access_request_from_pb(
    input: &pb::AccessRequest,
) -> Result<(MatchId, AccessLevel, FieldSet, Reason)> {
    let mut v = Violations::new();
    let match_id = v.check(
        "access_request.match",
        names::parse_customer_match(&input.r#match),
    );
    let level = v.check("access_request.level", level_from_pb(input.level));
    let fields = v.check("access_request.fields", FieldSet::parse(&input.fields));
    let reason = v.check("access_request.reason", Reason::parse(&input.reason));
    if input.reason.trim().is_empty() {
        v.add(
            "access_request.reason",
            "is required: say why you need access",
        );
    }
    let (Some(match_id), Some(level), Some(fields), Some(reason)) =
        (match_id, level, fields, reason)
    else {
        return Err(v.into_error());
    };
    v.finish()?;
    Ok((match_id, level, fields, reason))
}

/// The key a MatchCustomer request looks for: exactly one of an email and a phone.
fn match_key_from_pb(r: &pb::MatchCustomerRequest, hub: &Hub) -> Result<MatchKey> {
    let secret = &hub.customers.secret;
    match (r.email.is_empty(), r.phone.is_empty()) {
        (false, true) => {
            let email = EmailAddress::parse(&r.email).map_err(|v| v.under("email"))?;
            Ok(MatchKey {
                kind: "email",
                key: secret.email_key(&email),
                rule: MatchRule::SameEmail,
            })
        }
        (true, false) => {
            let phone =
                PhoneNumber::parse(&r.phone, hub.customers.region).map_err(|v| v.under("phone"))?;
            Ok(MatchKey {
                kind: "phone",
                key: secret.phone_key(&phone),
                rule: MatchRule::SamePhone,
            })
        }
        _ => Err(Error::invalid(
            "email",
            "set exactly one of email and phone",
        )),
    }
}

/// Which access requests a List asks for: incoming or outgoing, and in which state.
fn access_request_query(r: &pb::ListAccessRequestsRequest) -> Result<(bool, Option<RequestState>)> {
    use pb::access_request::State;
    use pb::list_access_requests_request::Direction;
    let incoming = match Direction::try_from(r.direction) {
        Ok(Direction::Unspecified | Direction::Incoming) => true,
        Ok(Direction::Outgoing) => false,
        Err(_) => return Err(Error::invalid("direction", "is not a known direction")),
    };
    let state = match State::try_from(r.state) {
        Ok(State::Unspecified) => None,
        Ok(State::Pending) => Some(RequestState::Pending),
        Ok(State::Approved) => Some(RequestState::Approved),
        Ok(State::Declined) => Some(RequestState::Declined),
        Err(_) => return Err(Error::invalid("state", "is not a known state")),
    };
    Ok((incoming, state))
}

impl SharingApi {
    /// ApproveAccessRequest (`approve`) or DeclineAccessRequest of `name`.
    async fn decide(
        &self,
        caller: &Caller,
        name: &str,
        approve: bool,
        reason: &str,
        request: &impl Retryable,
    ) -> Result<pb::AccessRequest> {
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let id = names::parse_access_request(name).map_err(|v| v.under("name"))?;
        let reason = Reason::parse(reason).map_err(|v| v.under("reason"))?;
        let response = idempotent(&self.hub, caller, request, async |tx| {
            let r = app::decide(tx, caller, (&id, name), approve, reason).await?;
            Ok(request_to_pb(&r, &org.id))
        })
        .await?;
        tracing::info!(access_request = %response.name, approved = approve, "access request decided");
        Ok(response)
    }
}

#[tonic::async_trait]
impl SharingService for SharingApi {
    async fn create_grant(
        &self,
        request: Request<pb::CreateGrantRequest>,
    ) -> Result<Response<pb::Grant>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let asked = grant_from_pb(&request, &org.slug)?;
        let grantee = app::organization(&self.hub.store, &asked.grantee).await?;
        let parent = &request.parent;
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let g = NewGrant {
                customer_id: &asked.customer_id,
                parent,
                grantee,
                level: asked.level,
                fields: asked.fields,
                preset: asked.preset.clone(),
            };
            Ok(grant_to_pb(&app::create_grant(tx, &caller, g).await?))
        })
        .await?;
        tracing::info!(grant = %response.name, grantee = %response.grantee, "customer granted");
        Ok(Response::new(response))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let r = request.get_ref();
        let id = names::parse_customer(&r.parent).map_err(|v| v.under("parent"))?;
        let query = format!("grants:{id}:{}", r.show_revoked);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page {
            items: grants,
            next_after: next,
        } = app::list_grants(
            &self.hub.store,
            &caller,
            (&id, &r.parent),
            r.show_revoked,
            at,
        )
        .await?;
        Ok(Response::new(pb::ListGrantsResponse {
            grants: grants.iter().map(grant_to_pb).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::Grant>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        caller.organization()?;
        let request = request.into_inner();
        let (customer_id, grant_id) =
            names::parse_grant(&request.name).map_err(|v| v.under("name"))?;
        let name = &request.name;
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let g = app::revoke_grant(tx, &caller, (&customer_id, &grant_id), name).await?;
            Ok(grant_to_pb(&g))
        })
        .await?;
        tracing::info!(grant = %response.name, "grant revoked");
        Ok(Response::new(response))
    }

    async fn batch_create_grants(
        &self,
        request: Request<pb::BatchCreateGrantsRequest>,
    ) -> Result<Response<pb::BatchCreateGrantsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let items = grants_from_pb(&request, &org.slug)?;
        // Each grantee is looked up once, however many of its grants the batch holds.
        let mut grantees = HashMap::new();
        for (i, (GrantAsked { grantee: slug, .. }, _)) in items.iter().enumerate() {
            if !grantees.contains_key(slug) {
                let found = app::organization(&self.hub.store, slug)
                    .await
                    .map_err(|e| e.in_item(&format!("requests[{i}]")))?;
                grantees.insert(slug.clone(), found);
            }
        }
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let grants = items
                .iter()
                .map(|(asked, parent)| NewGrant {
                    customer_id: &asked.customer_id,
                    parent,
                    grantee: grantees[&asked.grantee].clone(),
                    level: asked.level,
                    fields: asked.fields,
                    preset: asked.preset.clone(),
                })
                .collect();
            let made = app::create_grants(tx, &caller, grants).await?;
            Ok(pb::BatchCreateGrantsResponse {
                grants: made.iter().map(grant_to_pb).collect(),
            })
        })
        .await?;
        tracing::info!(
            grants = response.grants.len(),
            "customers granted in a batch"
        );
        Ok(Response::new(response))
    }

    async fn batch_revoke_grants(
        &self,
        request: Request<pb::BatchRevokeGrantsRequest>,
    ) -> Result<Response<pb::BatchRevokeGrantsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        caller.organization()?;
        let request = request.into_inner();
        let grants = revocations_from_pb(&request)?;
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let revoked = app::revoke_grants(tx, &caller, &grants).await?;
            Ok(pb::BatchRevokeGrantsResponse {
                grants: revoked.iter().map(grant_to_pb).collect(),
            })
        })
        .await?;
        tracing::info!(grants = response.grants.len(), "grants revoked in a batch");
        Ok(Response::new(response))
    }

    async fn create_field_preset(
        &self,
        request: Request<pb::CreateFieldPresetRequest>,
    ) -> Result<Response<pb::FieldPreset>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let request = request.into_inner();
        let input = request.field_preset.clone().unwrap_or_default();
        let mut v = Violations::new();
        let slug = v.check("parent", names::parse_organization(&request.parent));
        let display_name = v.check(
            "field_preset.display_name",
            DisplayName::parse(&input.display_name),
        );
        let fields = v.check("field_preset.fields", preset_fields(&input.fields));
        let (Some(slug), Some(display_name), Some(fields)) = (slug, display_name, fields) else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let parent = (&slug, request.parent.as_str());
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let (owner, p) = app::create_preset(tx, &caller, parent, display_name, fields).await?;
            Ok(preset_to_pb(&owner, &p))
        })
        .await?;
        tracing::info!(field_preset = %response.name, "field preset created");
        Ok(Response::new(response))
    }

    async fn get_field_preset(
        &self,
        request: Request<pb::GetFieldPresetRequest>,
    ) -> Result<Response<pb::FieldPreset>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let name = &request.get_ref().name;
        let (slug, id) = names::parse_field_preset(name).map_err(|v| v.under("name"))?;
        let p = app::preset(&self.hub.store, &caller, (&slug, &id, name)).await?;
        Ok(Response::new(preset_to_pb(&slug, &p)))
    }

    async fn list_field_presets(
        &self,
        request: Request<pb::ListFieldPresetsRequest>,
    ) -> Result<Response<pb::ListFieldPresetsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let r = request.get_ref();
        let slug = names::parse_organization(&r.parent).map_err(|v| v.under("parent"))?;
        let query = format!("field_presets:{slug}");
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page {
            items,
            next_after: next,
        } = app::list_presets(&self.hub.store, &caller, (&slug, &r.parent), at).await?;
        Ok(Response::new(pb::ListFieldPresetsResponse {
            field_presets: items.iter().map(|p| preset_to_pb(&slug, p)).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn update_field_preset(
        &self,
        request: Request<pb::UpdateFieldPresetRequest>,
    ) -> Result<Response<pb::FieldPreset>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let request = request.into_inner();
        let input = request.field_preset.clone().unwrap_or_default();
        let (slug, id) =
            names::parse_field_preset(&input.name).map_err(|v| v.under("field_preset.name"))?;
        let populated: Vec<&str> = [
            ("display_name", !input.display_name.is_empty()),
            ("fields", !input.fields.is_empty()),
        ]
        .into_iter()
        .filter_map(|(path, set)| set.then_some(path))
        .collect();
        let paths = update_paths(request.update_mask.as_ref(), PRESET_UPDATABLE, &populated)?;
        let mut v = Violations::new();
        let mut change = app::PresetChange {
            display_name: None,
            fields: None,
        };
        for path in &paths {
            if path == "display_name" {
                change.display_name = v.check(
                    "field_preset.display_name",
                    DisplayName::parse(&input.display_name),
                );
            } else {
                change.fields = v.check("field_preset.fields", preset_fields(&input.fields));
            }
        }
        v.finish()?;
        let target = (&slug, &id, input.name.as_str(), input.etag.as_str());
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let p = app::update_preset(tx, &caller, target, change).await?;
            Ok(preset_to_pb(&slug, &p))
        })
        .await?;
        tracing::info!(field_preset = %response.name, "field preset updated");
        Ok(Response::new(response))
    }

    async fn delete_field_preset(
        &self,
        request: Request<pb::DeleteFieldPresetRequest>,
    ) -> Result<Response<pb::DeleteFieldPresetResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let request = request.into_inner();
        let name = &request.name;
        let (slug, id) = names::parse_field_preset(name).map_err(|v| v.under("name"))?;
        let target = (&slug, &id, name.as_str(), request.etag.as_str());
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            app::delete_preset(tx, &caller, target).await?;
            Ok(pb::DeleteFieldPresetResponse {})
        })
        .await?;
        tracing::info!(field_preset = %name, "field preset deleted");
        Ok(Response::new(response))
    }

    async fn create_segment(
        &self,
        request: Request<pb::CreateSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        rules::create_segment(&self.hub, request).await
    }

    async fn get_segment(
        &self,
        request: Request<pb::GetSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        rules::get_segment(&self.hub, request).await
    }

    async fn list_segments(
        &self,
        request: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        rules::list_segments(&self.hub, request).await
    }

    async fn update_segment(
        &self,
        request: Request<pb::UpdateSegmentRequest>,
    ) -> Result<Response<pb::Segment>, Status> {
        rules::update_segment(&self.hub, request).await
    }

    async fn delete_segment(
        &self,
        request: Request<pb::DeleteSegmentRequest>,
    ) -> Result<Response<pb::DeleteSegmentResponse>, Status> {
        rules::delete_segment(&self.hub, request).await
    }

    async fn count_segment_members(
        &self,
        request: Request<pb::CountSegmentMembersRequest>,
    ) -> Result<Response<pb::CountSegmentMembersResponse>, Status> {
        rules::count_segment_members(&self.hub, request).await
    }

    async fn list_segment_members(
        &self,
        request: Request<pb::ListSegmentMembersRequest>,
    ) -> Result<Response<pb::ListSegmentMembersResponse>, Status> {
        rules::list_segment_members(&self.hub, request).await
    }

    async fn create_sharing_rule(
        &self,
        request: Request<pb::CreateSharingRuleRequest>,
    ) -> Result<Response<pb::SharingRule>, Status> {
        rules::create_sharing_rule(&self.hub, request).await
    }

    async fn get_sharing_rule(
        &self,
        request: Request<pb::GetSharingRuleRequest>,
    ) -> Result<Response<pb::SharingRule>, Status> {
        rules::get_sharing_rule(&self.hub, request).await
    }

    async fn list_sharing_rules(
        &self,
        request: Request<pb::ListSharingRulesRequest>,
    ) -> Result<Response<pb::ListSharingRulesResponse>, Status> {
        rules::list_sharing_rules(&self.hub, request).await
    }

    async fn update_sharing_rule(
        &self,
        request: Request<pb::UpdateSharingRuleRequest>,
    ) -> Result<Response<pb::SharingRule>, Status> {
        rules::update_sharing_rule(&self.hub, request).await
    }

    async fn revoke_sharing_rule(
        &self,
        request: Request<pb::RevokeSharingRuleRequest>,
    ) -> Result<Response<pb::SharingRule>, Status> {
        rules::revoke_sharing_rule(&self.hub, request).await
    }

    async fn match_customer(
        &self,
        request: Request<pb::MatchCustomerRequest>,
    ) -> Result<Response<pb::MatchCustomerResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let r = request.into_inner();
        let key = match_key_from_pb(&r, &self.hub)?;
        let only = if r.organization.is_empty() {
            None
        } else {
            Some(names::parse_organization(&r.organization).map_err(|v| v.under("organization"))?)
        };
        let found = app::match_customer(&self.hub.store, &caller, key, only.as_ref()).await?;
        let matches = found
            .into_iter()
            .map(|m| pb::CustomerMatch {
                organization: format!("organizations/{}", m.owner_slug),
                r#match: names::customer_match(&m.match_id),
                rule: super::customers::rule_to_pb(m.rule) as i32,
                expire_time: timestamp(m.expire_time),
            })
            .collect();
        Ok(Response::new(pb::MatchCustomerResponse { matches }))
    }

    async fn create_access_request(
        &self,
        request: Request<pb::CreateAccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.access_request.clone().unwrap_or_default();
        let (match_id, level, fields, reason) = access_request_from_pb(&input)?;
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let match_name = &input.r#match;
            let a = NewAccessRequest {
                match_id: &match_id,
                match_name,
                level,
                fields,
                reason,
            };
            let r = app::create_access_request(tx, &caller, a).await?;
            Ok(request_to_pb(&r, &org.id))
        })
        .await?;
        tracing::info!(access_request = %response.name, owner = %response.owner, "access requested");
        Ok(Response::new(response))
    }

    async fn list_access_requests(
        &self,
        request: Request<pb::ListAccessRequestsRequest>,
    ) -> Result<Response<pb::ListAccessRequestsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let r = request.get_ref();
        let (incoming, state) = access_request_query(r)?;
        let query = format!("access_requests:{incoming}:{}", r.state);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page {
            items: found,
            next_after: next,
        } = app::list_access_requests(&self.hub.store, &caller, incoming, state, at).await?;
        Ok(Response::new(pb::ListAccessRequestsResponse {
            access_requests: found.iter().map(|a| request_to_pb(a, &org.id)).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn approve_access_request(
        &self,
        request: Request<pb::ApproveAccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let response = self.decide(&caller, &r.name, true, "", &r).await?;
        Ok(Response::new(response))
    }

    async fn decline_access_request(
        &self,
        request: Request<pb::DeclineAccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let response = self.decide(&caller, &r.name, false, &r.reason, &r).await?;
        Ok(Response::new(response))
    }
}
