//! AccountMappingService: requests validated into the use cases of `app::mapping`,
//! answers rendered.

use prost::Message;
use tonic::{Request, Response, Status};

use super::convert::level_from_pb;
use super::write::{idempotent, replayed};
use super::{Hub, caller_of};
use crate::app::mapping::{self as app, OverlapAsk, SegmentsAsked};
use crate::domain::Scope;
use crate::domain::customer::FieldSet;
use crate::domain::error::{Error, Result, Violations};
use crate::domain::ids::MappingId;
use crate::domain::mapping::{MappingState, Side};
use crate::domain::{Reason, names};
use crate::feed::render::{mapping_to_pb, operation_to_pb};
use crate::google::longrunning::Operation;
use crate::pb;
use crate::pb::account_mapping_service_server::AccountMappingService;
use crate::store::{AccountMapping, Page};

pub struct AccountMappingApi {
    hub: Hub,
}

impl AccountMappingApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

/// `segments` (segment names, field `field`), parsed.
fn segments_asked<'a>(
    segments: impl Iterator<Item = &'a str>,
    field: &str,
) -> Result<SegmentsAsked> {
    let mut v = Violations::new();
    let mut out = vec![];
    for (i, name) in segments.enumerate() {
        if let Some((slug, id)) = v.check(&format!("{field}[{i}]"), names::parse_segment(name)) {
            out.push((slug, id, name.to_owned()));
        }
    }
    v.finish()?;
    Ok(out)
}

fn mapping_name(name: &str, field: &str) -> Result<MappingId> {
    Ok(names::parse_account_mapping(name).map_err(|v| v.under(field))?)
}

/// The mapping as the operation's `response`.
pub(super) fn mapping_any(m: &AccountMapping) -> prost_types::Any {
    prost_types::Any {
        type_url: "type.googleapis.com/liaison.v1.AccountMapping".into(),
        value: mapping_to_pb(m).encode_to_vec(),
    }
}

fn state_filter(raw: &str) -> Result<Option<MappingState>> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::invalid(
            "filter",
            "must be empty or `state = PROPOSED` (or ACTIVE, DECLINED, ENDED)",
        )
    };
    let (field, value) = raw.split_once('=').ok_or_else(bad)?;
    if field.trim() != "state" {
        return Err(bad());
    }
    MappingState::parse(&value.trim().to_lowercase())
        .map(Some)
        .ok_or_else(bad)
}

#[tonic::async_trait]
impl AccountMappingService for AccountMappingApi {
    async fn create_account_mapping(
        &self,
        request: Request<pb::CreateAccountMappingRequest>,
    ) -> Result<Response<pb::AccountMapping>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let request = request.into_inner();
        let input = request.account_mapping.clone().unwrap_or_default();
        let partner_slug = names::parse_organization(&input.partner)
            .map_err(|v| v.under("account_mapping.partner"))?;
        let asked = segments_asked(
            input.requester_segments.iter().map(|s| s.segment.as_str()),
            "account_mapping.requester_segments",
        )?;
        let hub = &self.hub;
        let partner = app::partner(&hub.store, &partner_slug).await?;
        let threshold = hub.mapping.threshold;
        let segments = app::check_segments(
            &hub.store,
            &hub.customers,
            &caller,
            (&asked, "account_mapping.requester_segments"),
            threshold,
        )
        .await?;
        let response = idempotent(hub, &caller, &request, async |tx| {
            let m = app::create_mapping(tx, &caller, &partner, segments.clone(), threshold).await?;
            Ok(mapping_to_pb(&m))
        })
        .await?;
        tracing::info!(mapping = %response.name, partner = %response.partner, "account mapping asked for");
        Ok(Response::new(response))
    }

    async fn get_account_mapping(
        &self,
        request: Request<pb::GetAccountMappingRequest>,
    ) -> Result<Response<pb::AccountMapping>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let name = &request.get_ref().name;
        let id = mapping_name(name, "name")?;
        let m = app::mapping(&self.hub.store, &caller, (&id, name)).await?;
        Ok(Response::new(mapping_to_pb(&m)))
    }

    async fn list_account_mappings(
        &self,
        request: Request<pb::ListAccountMappingsRequest>,
    ) -> Result<Response<pb::ListAccountMappingsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let r = request.get_ref();
        let state = state_filter(&r.filter)?;
        let query = format!("account_mappings:{}", r.filter.trim());
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page { items, next_after } =
            app::list_mappings(&self.hub.store, &caller, state, at).await?;
        Ok(Response::new(pb::ListAccountMappingsResponse {
            account_mappings: items.iter().map(mapping_to_pb).collect(),
            next_page_token: page.next_token(next_after),
        }))
    }

    async fn accept_account_mapping(
        &self,
        request: Request<pb::AcceptAccountMappingRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let request = request.into_inner();
        let id = mapping_name(&request.name, "name")?;
        let asked = segments_asked(request.segments.iter().map(String::as_str), "segments")?;
        let hub = &self.hub;
        // The mapping's own threshold (the hub's may have changed since it was asked).
        let threshold = app::mapping(&hub.store, &caller, (&id, &request.name))
            .await?
            .threshold;
        let segments = app::check_segments(
            &hub.store,
            &hub.customers,
            &caller,
            (&asked, "segments"),
            threshold,
        )
        .await?;
        let target = (&id, request.name.as_str(), request.etag.as_str());
        let response = idempotent(hub, &caller, &request, async |tx| {
            let (_, op) = app::accept(tx, &caller, target, segments.clone()).await?;
            Ok(operation_to_pb(&op, None))
        })
        .await?;
        tracing::info!(mapping = %request.name, operation = %response.name, "account mapping accepted");
        Ok(Response::new(response))
    }

    async fn decline_account_mapping(
        &self,
        request: Request<pb::DeclineAccountMappingRequest>,
    ) -> Result<Response<pb::AccountMapping>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let request = request.into_inner();
        let id = mapping_name(&request.name, "name")?;
        let target = (&id, request.name.as_str(), request.etag.as_str());
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            Ok(mapping_to_pb(&app::decline(tx, &caller, target).await?))
        })
        .await?;
        tracing::info!(mapping = %request.name, "account mapping declined");
        Ok(Response::new(response))
    }

    async fn update_account_mapping(
        &self,
        request: Request<pb::UpdateAccountMappingRequest>,
    ) -> Result<Response<pb::AccountMapping>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let request = request.into_inner();
        let input = request.account_mapping.clone().unwrap_or_default();
        let id = mapping_name(&input.name, "account_mapping.name")?;
        let paths: Vec<&str> = request
            .update_mask
            .as_ref()
            .map(|m| m.paths.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let side = match paths.as_slice() {
            ["requester_segments"] => Side::Requester,
            ["partner_segments"] => Side::Partner,
            _ => {
                return Err(Error::invalid(
                    "update_mask",
                    "must be `requester_segments` or `partner_segments` (the caller's side)",
                )
                .into());
            }
        };
        let (field, given) = match side {
            Side::Requester => (
                "account_mapping.requester_segments",
                &input.requester_segments,
            ),
            Side::Partner => ("account_mapping.partner_segments", &input.partner_segments),
        };
        let asked = segments_asked(given.iter().map(|s| s.segment.as_str()), field)?;
        let hub = &self.hub;
        let m = app::mapping(&hub.store, &caller, (&id, &input.name)).await?;
        let segments = app::check_segments(
            &hub.store,
            &hub.customers,
            &caller,
            (&asked, field),
            m.threshold,
        )
        .await?;
        let target = (&id, input.name.as_str(), input.etag.as_str());
        let response = idempotent(hub, &caller, &request, async |tx| {
            let m = app::update_segments(tx, &caller, target, side, segments.clone()).await?;
            Ok(mapping_to_pb(&m))
        })
        .await?;
        tracing::info!(mapping = %input.name, "account mapping's segments changed");
        Ok(Response::new(response))
    }

    async fn refresh_account_mapping(
        &self,
        request: Request<pb::RefreshAccountMappingRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let request = request.into_inner();
        let name = request.name.as_str();
        let id = mapping_name(name, "name")?;
        let hub = &self.hub;
        // A retry replays the first answer, before anything is weighed again (the
        // comparison it started may have made the mapping fresh since).
        if let Some(first) = replayed::<_, Operation>(hub, &caller, &request).await? {
            return Ok(Response::new(first));
        }
        let m = app::mapping(&hub.store, &caller, (&id, name)).await?;
        let weighed = app::weigh_refresh(&hub.store, &hub.customers, &hub.mapping, &m).await?;
        let response = match weighed {
            app::Weighed::Running(op) => operation_to_pb(&op, None),
            app::Weighed::Start => {
                idempotent(hub, &caller, &request, async |tx| {
                    let op = app::start_refresh(tx, &m, name).await?;
                    Ok(operation_to_pb(&op, None))
                })
                .await?
            }
        };
        tracing::info!(mapping = %name, operation = %response.name, "account mapping refresh asked for");
        Ok(Response::new(response))
    }

    async fn end_account_mapping(
        &self,
        request: Request<pb::EndAccountMappingRequest>,
    ) -> Result<Response<pb::AccountMapping>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let request = request.into_inner();
        let id = mapping_name(&request.name, "name")?;
        let target = (&id, request.name.as_str(), request.etag.as_str());
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            Ok(mapping_to_pb(&app::end(tx, &caller, target).await?))
        })
        .await?;
        tracing::info!(mapping = %request.name, "account mapping ended");
        Ok(Response::new(response))
    }

    async fn request_overlap_access(
        &self,
        request: Request<pb::RequestOverlapAccessRequest>,
    ) -> Result<Response<pb::RequestOverlapAccessResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let request = request.into_inner();
        let id = mapping_name(&request.name, "name")?;
        let mut v = Violations::new();
        let segment = v.check("segment", names::parse_segment(&request.segment));
        let partner_segment = v.check(
            "partner_segment",
            names::parse_segment(&request.partner_segment),
        );
        let level = v.check("level", level_from_pb(request.level));
        let fields = v.check("fields", FieldSet::parse(&request.fields));
        let reason = v.check("reason", Reason::parse(&request.reason));
        if request.reason.trim().is_empty() {
            v.add("reason", "is required: say why you need access");
        }
        let (Some(segment), Some(partner_segment), Some(level), Some(fields), Some(reason)) =
            (segment, partner_segment, level, fields, reason)
        else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let ask = || OverlapAsk {
            segment: (
                segment.0.clone(),
                segment.1.clone(),
                request.segment.clone(),
            ),
            partner_segment: (
                partner_segment.0.clone(),
                partner_segment.1.clone(),
                request.partner_segment.clone(),
            ),
            level,
            fields,
            reason: reason.clone(),
        };
        let target = (&id, request.name.as_str());
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let (requested, remaining) =
                app::request_overlap_access(tx, &caller, target, ask()).await?;
            Ok(pb::RequestOverlapAccessResponse {
                requested,
                remaining,
            })
        })
        .await?;
        tracing::info!(mapping = %request.name, requested = response.requested, "overlap access asked for");
        Ok(Response::new(response))
    }

    async fn answer_overlap_access(
        &self,
        request: Request<pb::AnswerOverlapAccessRequest>,
    ) -> Result<Response<pb::AnswerOverlapAccessResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let request = request.into_inner();
        let id = mapping_name(&request.name, "name")?;
        let reason = Reason::parse(&request.reason).map_err(|v| v.under("reason"))?;
        let target = (&id, request.name.as_str());
        let approve = request.approve;
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let (answered, remaining) =
                app::answer_overlap_access(tx, &caller, target, approve, reason.clone()).await?;
            Ok(pb::AnswerOverlapAccessResponse {
                answered,
                remaining,
            })
        })
        .await?;
        tracing::info!(mapping = %request.name, approve, answered = response.answered, "overlap access answered");
        Ok(Response::new(response))
    }
}
