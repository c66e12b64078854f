//! `liaison.v1.MemberService`: an organization's account coordinators.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{check_etag, etag, role_from_pb, role_to_pb, timestamp, update_paths};
use super::fanout::{Draft, emit};
use super::paging::PageRequest;
use super::write::idempotent;
use super::{Caller, Hub, names};
use crate::domain::{
    DisplayName, EmailAddress, Member, MemberRole, Organization, Scope, Slug, TimeZoneName, now,
};
use crate::error::{Error, Result, Violations};
use crate::pb::{self, event::Payload, member_service_server::MemberService};

const UPDATABLE: &[&str] = &["display_name", "email", "role", "time_zone"];

#[derive(Clone)]
pub struct MemberApi {
    hub: Hub,
}

impl MemberApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }

    /// The organization of the member named `name`, if the caller may act for it; else
    /// NOT_FOUND for the member, so an invisible organization is not even named.
    async fn member_organization(
        &self,
        caller: &Caller,
        slug: &Slug,
        name: &str,
    ) -> Result<Organization> {
        match self.organization(caller, slug).await {
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!("member {name:?}"))),
            other => other,
        }
    }

    /// The organization `slug` if the caller may act for it, else NOT_FOUND.
    async fn organization(&self, caller: &Caller, slug: &Slug) -> Result<Organization> {
        match self.hub.store.organization(slug).await? {
            Some(org) if caller.may_act_for(&org.id) => Ok(org),
            _ => Err(Error::NotFound(format!(
                "organization {:?}",
                names::organization(slug)
            ))),
        }
    }
}

fn member_to_pb(org: &Slug, m: &Member) -> pb::Member {
    pb::Member {
        name: names::member(org, &m.id),
        display_name: m.display_name.as_str().to_owned(),
        email: m.email.as_str().to_owned(),
        role: role_to_pb(m.role) as i32,
        time_zone: m.time_zone.as_str().to_owned(),
        create_time: timestamp(m.create_time),
        update_time: timestamp(m.update_time),
        etag: etag(m.revision),
    }
}

/// The validated values of the member fields named in `paths`.
#[derive(Default)]
struct MemberFields {
    display_name: Option<DisplayName>,
    email: Option<EmailAddress>,
    role: Option<MemberRole>,
    time_zone: Option<TimeZoneName>,
}

impl MemberFields {
    fn parse(input: &pb::Member, paths: &[&str]) -> Result<Self> {
        let mut v = Violations::new();
        let wants = |f: &str| paths.contains(&f);
        let fields = MemberFields {
            display_name: wants("display_name")
                .then(|| {
                    v.check(
                        "member.display_name",
                        DisplayName::parse(&input.display_name),
                    )
                })
                .flatten(),
            email: wants("email")
                .then(|| v.check("member.email", EmailAddress::parse(&input.email)))
                .flatten(),
            role: wants("role")
                .then(|| v.check("member.role", role_from_pb(input.role)))
                .flatten(),
            time_zone: wants("time_zone")
                .then(|| v.check("member.time_zone", TimeZoneName::parse(&input.time_zone)))
                .flatten(),
        };
        v.finish()?;
        Ok(fields)
    }
}

#[tonic::async_trait]
impl MemberService for MemberApi {
    async fn create_member(
        &self,
        request: Request<pb::CreateMemberRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let request = request.into_inner();
        let slug = names::parse_organization(&request.parent).map_err(|v| v.under("parent"))?;
        let input = request.member.clone().unwrap_or_default();
        let fields = MemberFields::parse(&input, UPDATABLE)?;
        let org = self.organization(&caller, &slug).await?;
        let (Some(display_name), Some(email), Some(role), Some(time_zone)) = (
            fields.display_name,
            fields.email,
            fields.role,
            fields.time_zone,
        ) else {
            return Err(Error::Internal(anyhow::anyhow!("validated member fields missing")).into());
        };
        let now = now();
        let member = Member {
            id: Uuid::now_v7().to_string(),
            organization_id: org.id.clone(),
            display_name,
            email,
            role,
            time_zone,
            create_time: now,
            update_time: now,
            revision: 1,
        };
        let response = idempotent(
            &self.hub,
            &caller,
            "CreateMember",
            &request.request_id,
            &request,
            async |tx| {
                tx.insert_member(&member).await?;
                let pb = member_to_pb(&org.slug, &member);
                let draft = Draft::new(
                    "member.created",
                    pb.name.clone(),
                    Payload::Member(pb.clone()),
                );
                emit(tx, &org.id, draft);
                Ok(pb)
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let name = &request.get_ref().name;
        let (slug, id) = names::parse_member(name).map_err(|v| v.under("name"))?;
        let org = self.member_organization(&caller, &slug, name).await?;
        let member = self
            .hub
            .store
            .member(&org.id, &id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("member {name:?}")))?;
        Ok(Response::new(member_to_pb(&slug, &member)))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let request = request.into_inner();
        let slug = names::parse_organization(&request.parent).map_err(|v| v.under("parent"))?;
        let page = PageRequest::parse(
            request.page_size,
            &request.page_token,
            &format!("members:{}", request.parent),
        )?;
        let org = self.organization(&caller, &slug).await?;
        let found = self
            .hub
            .store
            .members(&org.id, page.after.as_deref(), page.size)
            .await?;
        Ok(Response::new(pb::ListMembersResponse {
            members: found.items.iter().map(|m| member_to_pb(&slug, m)).collect(),
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn update_member(
        &self,
        request: Request<pb::UpdateMemberRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let request = request.into_inner();
        let input = request.member.clone().unwrap_or_default();
        let (slug, id) = names::parse_member(&input.name).map_err(|v| v.under("member.name"))?;
        let populated: Vec<&str> = [
            ("display_name", !input.display_name.is_empty()),
            ("email", !input.email.is_empty()),
            ("role", input.role != 0),
            ("time_zone", !input.time_zone.is_empty()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect();
        let paths = update_paths(request.update_mask.as_ref(), UPDATABLE, &populated)?;
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let fields = MemberFields::parse(&input, &paths)?;
        let name = input.name.clone();
        let org = self.member_organization(&caller, &slug, &name).await?;
        let response = idempotent(
            &self.hub,
            &caller,
            "UpdateMember",
            &request.request_id,
            &request,
            async |tx| {
                let mut member = tx
                    .member(&org.id, &id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("member {name:?}")))?;
                check_etag(&input.etag, member.revision, &name)?;
                let before = member_to_pb(&slug, &member);
                if let Some(v) = fields.display_name {
                    member.display_name = v;
                }
                if let Some(v) = fields.email {
                    member.email = v;
                }
                if let Some(v) = fields.role {
                    member.role = v;
                }
                if let Some(v) = fields.time_zone {
                    member.time_zone = v;
                }
                member.update_time = now();
                if !tx.update_member(&mut member).await? {
                    return Err(Error::StaleEtag(name.clone()));
                }
                let after = member_to_pb(&slug, &member);
                let changed: Vec<String> = paths
                    .iter()
                    .filter(|p| match **p {
                        "display_name" => before.display_name != after.display_name,
                        "email" => before.email != after.email,
                        "role" => before.role != after.role,
                        _ => before.time_zone != after.time_zone,
                    })
                    .map(|p| (*p).to_owned())
                    .collect();
                if !changed.is_empty() {
                    let mut draft = Draft::new(
                        "member.updated",
                        after.name.clone(),
                        Payload::Member(after.clone()),
                    );
                    draft.changed_fields = changed;
                    emit(tx, &org.id, draft);
                }
                Ok(after)
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    async fn delete_member(
        &self,
        request: Request<pb::DeleteMemberRequest>,
    ) -> Result<Response<pb::DeleteMemberResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let request = request.into_inner();
        let name = request.name.clone();
        let (slug, id) = names::parse_member(&name).map_err(|v| v.under("name"))?;
        let org = self.member_organization(&caller, &slug, &name).await?;
        let response = idempotent(
            &self.hub,
            &caller,
            "DeleteMember",
            &request.request_id,
            &request,
            async |tx| {
                let member = tx
                    .member(&org.id, &id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("member {name:?}")))?;
                check_etag(&request.etag, member.revision, &name)?;
                if !tx.delete_member(&org.id, &id, member.revision).await? {
                    return Err(Error::StaleEtag(name.clone()));
                }
                let pb = member_to_pb(&slug, &member);
                let draft = Draft::new("member.deleted", pb.name.clone(), Payload::Member(pb));
                emit(tx, &org.id, draft);
                Ok(pb::DeleteMemberResponse {})
            },
        )
        .await?;
        Ok(Response::new(response))
    }
}
