//! SharingService's segments and sharing rules: requests validated into the use cases
//! of `app::rules`, answers rendered.

use tonic::{Request, Response, Status};

use super::convert::{
    level_from_pb, owners, owners_preset, parse_timestamp, relationship_from_pb, update_paths,
};
use super::write::idempotent;
use super::{Hub, caller_of};
use crate::app::rules::{self as app, NewRule, RuleChange, SegmentChange, TargetAsked};
use crate::app::sharing::organization;
use crate::domain::customer::FieldSet;
use crate::domain::error::{FieldViolation, Result, Violations};
use crate::domain::filter::CustomerFilter;
use crate::domain::ids::{PresetId, SegmentId};
use crate::domain::{DisplayName, Scope, Slug, names};
use crate::feed::render::{customer_to_pb, rule_to_pb, segment_to_pb};
use crate::pb;
use crate::store::Page;

/// What UpdateSegment may change.
const SEGMENT_UPDATABLE: &[&str] = &["display_name", "filter"];
/// What UpdateSharingRule may change.
const RULE_UPDATABLE: &[&str] = &[
    "display_name",
    "segment",
    "level",
    "fields",
    "preset",
    "expire_time",
];

fn segment_filter(hub: &Hub, raw: &str) -> Result<CustomerFilter, FieldViolation> {
    // The language's own errors name `filter`; the caller names the field.
    CustomerFilter::parse_segment(raw, hub.customers.region)
        .map_err(|v| FieldViolation::new("", v.description))
}

pub async fn create_segment(
    hub: &Hub,
    request: Request<pb::CreateSegmentRequest>,
) -> Result<Response<pb::Segment>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Write)?;
    let request = request.into_inner();
    let input = request.segment.clone().unwrap_or_default();
    let mut v = Violations::new();
    let slug = v.check("parent", names::parse_organization(&request.parent));
    let display_name = v.check(
        "segment.display_name",
        DisplayName::parse(&input.display_name),
    );
    let filter = v.check("segment.filter", segment_filter(hub, &input.filter));
    let (Some(slug), Some(display_name), Some(filter)) = (slug, display_name, filter) else {
        return Err(v.into_error().into());
    };
    v.finish()?;
    let parent = (&slug, request.parent.as_str());
    let response = idempotent(hub, &caller, &request, async |tx| {
        let (owner, s) = app::create_segment(tx, &caller, parent, display_name, &filter).await?;
        Ok(segment_to_pb(&owner, &s))
    })
    .await?;
    tracing::info!(segment = %response.name, "segment created");
    Ok(Response::new(response))
}

/// A segment's name, parsed.
fn segment_name(name: &str, field: &str) -> Result<(Slug, SegmentId)> {
    Ok(names::parse_segment(name).map_err(|v| v.under(field))?)
}

pub async fn get_segment(
    hub: &Hub,
    request: Request<pb::GetSegmentRequest>,
) -> Result<Response<pb::Segment>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Read)?;
    let name = &request.get_ref().name;
    let (slug, id) = segment_name(name, "name")?;
    let s = app::segment(&hub.store, &caller, (&slug, &id, name)).await?;
    Ok(Response::new(segment_to_pb(&slug, &s)))
}

pub async fn list_segments(
    hub: &Hub,
    request: Request<pb::ListSegmentsRequest>,
) -> Result<Response<pb::ListSegmentsResponse>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Read)?;
    let r = request.get_ref();
    let slug = names::parse_organization(&r.parent).map_err(|v| v.under("parent"))?;
    let query = format!("segments:{slug}");
    let page = hub
        .pages
        .open(&caller, r.page_size, &r.page_token, &query)
        .await?;
    let at = (page.after.as_deref(), page.size);
    let Page { items, next_after } =
        app::list_segments(&hub.store, &caller, (&slug, &r.parent), at).await?;
    Ok(Response::new(pb::ListSegmentsResponse {
        segments: items.iter().map(|s| segment_to_pb(&slug, s)).collect(),
        next_page_token: page.next_token(next_after),
    }))
}

pub async fn update_segment(
    hub: &Hub,
    request: Request<pb::UpdateSegmentRequest>,
) -> Result<Response<pb::Segment>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Write)?;
    let request = request.into_inner();
    let input = request.segment.clone().unwrap_or_default();
    let (slug, id) = segment_name(&input.name, "segment.name")?;
    let populated: Vec<&str> = [
        ("display_name", !input.display_name.is_empty()),
        ("filter", !input.filter.is_empty()),
    ]
    .into_iter()
    .filter_map(|(path, set)| set.then_some(path))
    .collect();
    let paths = update_paths(request.update_mask.as_ref(), SEGMENT_UPDATABLE, &populated)?;
    let mut v = Violations::new();
    let mut change = SegmentChange {
        display_name: None,
        filter: None,
    };
    for path in &paths {
        if path == "display_name" {
            change.display_name = v.check(
                "segment.display_name",
                DisplayName::parse(&input.display_name),
            );
        } else {
            change.filter = v.check("segment.filter", segment_filter(hub, &input.filter));
        }
    }
    v.finish()?;
    let target = (&slug, &id, input.name.as_str(), input.etag.as_str());
    let response = idempotent(hub, &caller, &request, async |tx| {
        let s = app::update_segment(tx, &caller, target, change).await?;
        Ok(segment_to_pb(&slug, &s))
    })
    .await?;
    tracing::info!(segment = %response.name, "segment updated");
    Ok(Response::new(response))
}

pub async fn delete_segment(
    hub: &Hub,
    request: Request<pb::DeleteSegmentRequest>,
) -> Result<Response<pb::DeleteSegmentResponse>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Write)?;
    let request = request.into_inner();
    let name = &request.name;
    let (slug, id) = segment_name(name, "name")?;
    let target = (&slug, &id, name.as_str(), request.etag.as_str());
    let response = idempotent(hub, &caller, &request, async |tx| {
        app::delete_segment(tx, &caller, target).await?;
        Ok(pb::DeleteSegmentResponse {})
    })
    .await?;
    tracing::info!(segment = %name, "segment deleted");
    Ok(Response::new(response))
}

pub async fn count_segment_members(
    hub: &Hub,
    request: Request<pb::CountSegmentMembersRequest>,
) -> Result<Response<pb::CountSegmentMembersResponse>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Read)?;
    let name = &request.get_ref().name;
    let (slug, id) = segment_name(name, "name")?;
    let count = app::count_members(&hub.store, &hub.customers, &caller, (&slug, &id, name)).await?;
    Ok(Response::new(pb::CountSegmentMembersResponse { count }))
}

pub async fn list_segment_members(
    hub: &Hub,
    request: Request<pb::ListSegmentMembersRequest>,
) -> Result<Response<pb::ListSegmentMembersResponse>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Read)?;
    let r = request.get_ref();
    let (slug, id) = segment_name(&r.name, "name")?;
    let query = format!("segment_members:{}", r.name);
    let page = hub
        .pages
        .open(&caller, r.page_size, &r.page_token, &query)
        .await?;
    let target = (&slug, &id, r.name.as_str());
    let at = (page.after.as_deref(), page.size);
    let Page { items, next_after } =
        app::list_members(&hub.store, &hub.customers, &caller, target, at).await?;
    Ok(Response::new(pb::ListSegmentMembersResponse {
        customers: items
            .iter()
            .map(|(seen, access)| customer_to_pb(seen, *access))
            .collect(),
        next_page_token: page.next_token(next_after),
    }))
}

/// A rule's optional segment: empty for every customer.
fn rule_segment(raw: &str, owner: &Slug, v: &mut Violations) -> Option<Option<SegmentId>> {
    if raw.is_empty() {
        return Some(None);
    }
    let parsed = v.check("sharing_rule.segment", names::parse_segment(raw));
    owners(parsed, owner, v, "sharing_rule.segment", "segments").map(Some)
}

/// A rule's optional preset: empty for fields of its own.
fn rule_preset(raw: &str, owner: &Slug, v: &mut Violations) -> Option<Option<PresetId>> {
    owners_preset(raw, owner, v, "sharing_rule.preset")
}

/// A rule's own fields: empty for all of them.
fn rule_fields(raw: &[String], v: &mut Violations) -> Option<FieldSet> {
    let fields = v.check("sharing_rule.fields", FieldSet::parse(raw))?;
    if fields == FieldSet::NONE {
        v.add("sharing_rule.fields", "must name at least one field");
        return None;
    }
    Some(fields)
}

fn rule_expiry(
    t: Option<&prost_types::Timestamp>,
    v: &mut Violations,
) -> Option<Option<jiff::Timestamp>> {
    match t {
        None => Some(None),
        Some(t) => v
            .check("sharing_rule.expire_time", parse_timestamp(t))
            .map(Some),
    }
}

pub async fn create_sharing_rule(
    hub: &Hub,
    request: Request<pb::CreateSharingRuleRequest>,
) -> Result<Response<pb::SharingRule>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Write)?;
    let request = request.into_inner();
    let input = request.sharing_rule.clone().unwrap_or_default();
    let owner = names::parse_organization(&request.parent).map_err(|v| v.under("parent"))?;
    let mut v = Violations::new();
    let display_name = v.check(
        "sharing_rule.display_name",
        DisplayName::parse(&input.display_name),
    );
    let segment = rule_segment(&input.segment, &owner, &mut v);
    let level = v.check("sharing_rule.level", level_from_pb(input.level));
    let fields = rule_fields(&input.fields, &mut v);
    let preset = rule_preset(&input.preset, &owner, &mut v);
    if !input.preset.is_empty() && !input.fields.is_empty() {
        v.add(
            "sharing_rule.fields",
            "must be empty when a preset is given: the rule shares the preset's fields",
        );
    }
    let expire_time = rule_expiry(input.expire_time.as_ref(), &mut v);
    let target = match (input.grantee.is_empty(), input.relationship) {
        (false, 0) => v
            .check(
                "sharing_rule.grantee",
                names::parse_organization(&input.grantee),
            )
            .map(TargetChoice::Grantee),
        (true, 0) => {
            v.add(
                "sharing_rule.grantee",
                "give a grantee, or a relationship in `relationship`",
            );
            None
        }
        (true, raw) => v
            .check("sharing_rule.relationship", relationship_from_pb(raw))
            .map(TargetChoice::Relationship),
        (false, _) => {
            v.add(
                "sharing_rule.relationship",
                "must be unset when a grantee is given: a rule names one partner or a relationship",
            );
            None
        }
    };
    let (
        Some(display_name),
        Some(segment),
        Some(level),
        Some(fields),
        Some(preset),
        Some(expire_time),
        Some(target),
    ) = (
        display_name,
        segment,
        level,
        fields,
        preset,
        expire_time,
        target,
    )
    else {
        return Err(v.into_error().into());
    };
    v.finish()?;
    let target = match target {
        TargetChoice::Grantee(slug) => TargetAsked::Grantee(organization(&hub.store, &slug).await?),
        TargetChoice::Relationship(r) => TargetAsked::Relationship(r),
    };
    let new = NewRule {
        display_name,
        segment,
        target,
        level,
        fields,
        preset,
        expire_time,
    };
    let parent = (&owner, request.parent.as_str());
    let response = idempotent(hub, &caller, &request, async |tx| {
        let r = app::create_rule(tx, &caller, parent, new).await?;
        Ok(rule_to_pb(&r, true))
    })
    .await?;
    tracing::info!(sharing_rule = %response.name, "sharing rule created");
    Ok(Response::new(response))
}

enum TargetChoice {
    Grantee(Slug),
    Relationship(crate::domain::Relationship),
}

pub async fn get_sharing_rule(
    hub: &Hub,
    request: Request<pb::GetSharingRuleRequest>,
) -> Result<Response<pb::SharingRule>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Read)?;
    let name = &request.get_ref().name;
    let (slug, id) = names::parse_sharing_rule(name).map_err(|v| v.under("name"))?;
    let (r, whole) = app::rule(&hub.store, &caller, (&slug, &id, name)).await?;
    Ok(Response::new(rule_to_pb(&r, whole)))
}

pub async fn list_sharing_rules(
    hub: &Hub,
    request: Request<pb::ListSharingRulesRequest>,
) -> Result<Response<pb::ListSharingRulesResponse>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Read)?;
    let r = request.get_ref();
    let slug = names::parse_organization(&r.parent).map_err(|v| v.under("parent"))?;
    let query = format!("sharing_rules:{slug}:{}", r.show_revoked);
    let page = hub
        .pages
        .open(&caller, r.page_size, &r.page_token, &query)
        .await?;
    let at = (page.after.as_deref(), page.size);
    let (Page { items, next_after }, whole) =
        app::list_rules(&hub.store, &caller, (&slug, &r.parent), r.show_revoked, at).await?;
    Ok(Response::new(pb::ListSharingRulesResponse {
        sharing_rules: items.iter().map(|x| rule_to_pb(x, whole)).collect(),
        next_page_token: page.next_token(next_after),
    }))
}

pub async fn update_sharing_rule(
    hub: &Hub,
    request: Request<pb::UpdateSharingRuleRequest>,
) -> Result<Response<pb::SharingRule>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Write)?;
    let request = request.into_inner();
    let input = request.sharing_rule.clone().unwrap_or_default();
    let (owner, id) =
        names::parse_sharing_rule(&input.name).map_err(|v| v.under("sharing_rule.name"))?;
    let populated: Vec<&str> = [
        ("display_name", !input.display_name.is_empty()),
        ("segment", !input.segment.is_empty()),
        ("level", input.level != 0),
        ("fields", !input.fields.is_empty()),
        ("preset", !input.preset.is_empty()),
        ("expire_time", input.expire_time.is_some()),
    ]
    .into_iter()
    .filter_map(|(path, set)| set.then_some(path))
    .collect();
    let paths = update_paths(request.update_mask.as_ref(), RULE_UPDATABLE, &populated)?;
    let mut v = Violations::new();
    let mut change = RuleChange {
        display_name: None,
        segment: None,
        level: None,
        fields: None,
        preset: None,
        expire_time: None,
    };
    for path in &paths {
        match path.as_str() {
            "display_name" => {
                change.display_name = v.check(
                    "sharing_rule.display_name",
                    DisplayName::parse(&input.display_name),
                )
            }
            "segment" => change.segment = rule_segment(&input.segment, &owner, &mut v),
            "level" => change.level = v.check("sharing_rule.level", level_from_pb(input.level)),
            "fields" => change.fields = rule_fields(&input.fields, &mut v),
            "preset" => change.preset = rule_preset(&input.preset, &owner, &mut v),
            _ => change.expire_time = rule_expiry(input.expire_time.as_ref(), &mut v),
        }
    }
    if !input.preset.is_empty() && !input.fields.is_empty() {
        v.add(
            "sharing_rule.fields",
            "must be empty when a preset is given: the rule shares the preset's fields",
        );
    }
    v.finish()?;
    let target = (&owner, &id, input.name.as_str(), input.etag.as_str());
    let response = idempotent(hub, &caller, &request, async |tx| {
        let r = app::update_rule(tx, &caller, target, change).await?;
        Ok(rule_to_pb(&r, true))
    })
    .await?;
    tracing::info!(sharing_rule = %response.name, "sharing rule updated");
    Ok(Response::new(response))
}

pub async fn revoke_sharing_rule(
    hub: &Hub,
    request: Request<pb::RevokeSharingRuleRequest>,
) -> Result<Response<pb::SharingRule>, Status> {
    let caller = caller_of(&request)?;
    caller.require(Scope::Write)?;
    let request = request.into_inner();
    let name = &request.name;
    let (owner, id) = names::parse_sharing_rule(name).map_err(|v| v.under("name"))?;
    let target = (&owner, &id, name.as_str(), request.etag.as_str());
    let response = idempotent(hub, &caller, &request, async |tx| {
        let r = app::revoke_rule(tx, &caller, target).await?;
        Ok(rule_to_pb(&r, true))
    })
    .await?;
    tracing::info!(sharing_rule = %name, "sharing rule revoked");
    Ok(Response::new(response))
}
