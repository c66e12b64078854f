//! `liaison.v1.MemberService`: an organization's account coordinators.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{check_etag, role_from_pb, role_to_pb, update_paths};
use super::write::idempotent;
use super::{Caller, Hub};
use crate::domain::error::{Error, Result, Violations};
use crate::domain::event::EventType;
use crate::domain::names;
use crate::domain::notify::{Mode, Preferences};
use crate::domain::{
    DisplayName, EmailAddress, Member, MemberRole, Organization, Scope, Slug, TimeZoneName, now,
};
use crate::feed::draft::{Draft, emit};
use crate::feed::render::{etag, timestamp};
use crate::pb::{self, event::Payload, member_service_server::MemberService};

const UPDATABLE: &[&str] = &["display_name", "email", "role", "time_zone"];
/// What UpdateNotificationPreferences may change.
const PREFERENCES: &[&str] = &[
    "work_for_my_organization",
    "sla",
    "customer_changes",
    "integration_health",
    "digest_hour",
    "followed_customers",
];
/// Customers one member may follow.
const MAX_FOLLOWS: usize = 500;

/// `organizations/{org}/notificationPreferences` (the organization's defaults, `None`)
/// or `organizations/{org}/members/{m}/notificationPreferences`.
fn parse_preferences_name(name: &str, field: &str) -> Result<(Slug, Option<String>)> {
    let bad = || {
        Error::invalid(
            field,
            "must be organizations/{organization}/notificationPreferences or \
             organizations/{organization}/members/{member}/notificationPreferences",
        )
    };
    let base = name
        .strip_suffix("/notificationPreferences")
        .ok_or_else(bad)?;
    if base.contains("/members/") {
        let (slug, id) = names::parse_member(base).map_err(|_| bad())?;
        Ok((slug, Some(id)))
    } else {
        Ok((names::parse_organization(base).map_err(|_| bad())?, None))
    }
}

fn mode_to_pb(mode: Option<Mode>) -> i32 {
    (match mode {
        None => pb::NotificationMode::Unspecified,
        Some(Mode::Immediate) => pb::NotificationMode::Immediate,
        Some(Mode::DailyDigest) => pb::NotificationMode::DailyDigest,
        Some(Mode::Off) => pb::NotificationMode::Off,
    }) as i32
}

/// `Some(mode)` (`None` inherits), or `None` for a value outside the enum.
fn mode_from_pb(raw: i32) -> Option<Option<Mode>> {
    match pb::NotificationMode::try_from(raw).ok()? {
        pb::NotificationMode::Unspecified => Some(None),
        pb::NotificationMode::Immediate => Some(Some(Mode::Immediate)),
        pb::NotificationMode::DailyDigest => Some(Some(Mode::DailyDigest)),
        pb::NotificationMode::Off => Some(Some(Mode::Off)),
    }
}

fn preferences_to_pb(
    name: &str,
    p: &Preferences,
    follows: &[String],
    update_time: Option<jiff::Timestamp>,
) -> pb::NotificationPreferences {
    pb::NotificationPreferences {
        name: name.to_owned(),
        work_for_my_organization: mode_to_pb(p.work),
        sla: mode_to_pb(p.sla),
        customer_changes: mode_to_pb(p.customers),
        integration_health: mode_to_pb(p.integration),
        digest_hour: p.digest_hour.map(i32::from),
        followed_customers: follows.iter().map(|id| names::customer(id)).collect(),
        update_time: update_time.and_then(timestamp),
    }
}

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
        email_bounce: m.email_bounce.clone(),
        email_bounce_time: m.email_bounce_time.and_then(timestamp),
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
            email_bounce: String::new(),
            email_bounce_time: None,
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
                    EventType::MemberCreated,
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
        let page = self
            .hub
            .pages
            .open(
                &caller,
                request.page_size,
                &request.page_token,
                &format!("members:{}", request.parent),
            )
            .await?;
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
                if let Some(v) = fields.email
                    && v != member.email
                {
                    // A new address starts with a clean record.
                    member.email = v;
                    member.email_bounce.clear();
                    member.email_bounce_time = None;
                    tx.clear_bounce(&member.id).await?;
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
                        EventType::MemberUpdated,
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
                let draft = Draft::new(
                    EventType::MemberDeleted,
                    pb.name.clone(),
                    Payload::Member(pb),
                );
                emit(tx, &org.id, draft);
                Ok(pb::DeleteMemberResponse {})
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    async fn get_notification_preferences(
        &self,
        request: Request<pb::GetNotificationPreferencesRequest>,
    ) -> Result<Response<pb::NotificationPreferences>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let name = request.into_inner().name;
        let (slug, member_id) = parse_preferences_name(&name, "name")?;
        let org = self.member_organization(&caller, &slug, &name).await?;
        if let Some(id) = &member_id
            && self.hub.store.member(&org.id, id).await?.is_none()
        {
            return Err(Error::NotFound(format!("{name:?}")).into());
        }
        let owner = member_id.as_deref().unwrap_or("");
        let (prefs, at) = self
            .hub
            .store
            .notification_preferences(&org.id, owner)
            .await?;
        let follows = match &member_id {
            Some(id) => self.hub.store.follows(id).await?,
            None => vec![],
        };
        Ok(Response::new(preferences_to_pb(
            &name, &prefs, &follows, at,
        )))
    }

    async fn update_notification_preferences(
        &self,
        request: Request<pb::UpdateNotificationPreferencesRequest>,
    ) -> Result<Response<pb::NotificationPreferences>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let input = r.notification_preferences.clone().unwrap_or_default();
        let name = input.name.clone();
        let (slug, member_id) = parse_preferences_name(&name, "notification_preferences.name")?;
        let populated: Vec<&str> = [
            (
                "work_for_my_organization",
                input.work_for_my_organization != 0,
            ),
            ("sla", input.sla != 0),
            ("customer_changes", input.customer_changes != 0),
            ("integration_health", input.integration_health != 0),
            ("digest_hour", input.digest_hour.is_some()),
            ("followed_customers", !input.followed_customers.is_empty()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect();
        let paths = update_paths(r.update_mask.as_ref(), PREFERENCES, &populated)?;
        let org = self.member_organization(&caller, &slug, &name).await?;
        if let Some(id) = &member_id
            && self.hub.store.member(&org.id, id).await?.is_none()
        {
            return Err(Error::NotFound(format!("{name:?}")).into());
        }
        let owner = member_id.clone().unwrap_or_default();
        let (mut prefs, _) = self
            .hub
            .store
            .notification_preferences(&org.id, &owner)
            .await?;
        let mut follows = match &member_id {
            Some(id) => Some(self.hub.store.follows(id).await?),
            None => None,
        };
        let mut v = Violations::new();
        for path in &paths {
            let field = format!("notification_preferences.{path}");
            let raw = match path.as_str() {
                "work_for_my_organization" => Some(input.work_for_my_organization),
                "sla" => Some(input.sla),
                "customer_changes" => Some(input.customer_changes),
                "integration_health" => Some(input.integration_health),
                _ => None,
            };
            if let Some(raw) = raw {
                match mode_from_pb(raw) {
                    Some(mode) => match path.as_str() {
                        "work_for_my_organization" => prefs.work = mode,
                        "sla" => prefs.sla = mode,
                        "customer_changes" => prefs.customers = mode,
                        _ => prefs.integration = mode,
                    },
                    None => v.add(&field, "is not a notification mode"),
                }
                continue;
            }
            if path == "digest_hour" {
                match input.digest_hour {
                    None => prefs.digest_hour = None,
                    Some(h) if (0..24).contains(&h) => prefs.digest_hour = Some(h as u8),
                    Some(_) => v.add(&field, "must be an hour from 0 to 23"),
                }
                continue;
            }
            // followed_customers
            if member_id.is_none() {
                v.add(&field, "only members follow customers");
                continue;
            }
            if input.followed_customers.len() > MAX_FOLLOWS {
                v.add(&field, format!("may name at most {MAX_FOLLOWS} customers"));
                continue;
            }
            let mut ids = vec![];
            for (i, customer) in input.followed_customers.iter().enumerate() {
                let field = format!("{field}[{i}]");
                let Some(id) = v.check(&field, names::parse_customer(customer)) else {
                    continue;
                };
                let visible = self
                    .hub
                    .store
                    .customer(&org.id, &id)
                    .await?
                    .is_some_and(|seen| seen.access().is_some());
                if !visible {
                    v.add(&field, "is not a customer the organization can see");
                } else if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            follows = Some(ids);
        }
        v.finish()?;
        let at = now();
        let response = idempotent(
            &self.hub,
            &caller,
            "UpdateNotificationPreferences",
            &r.request_id,
            &r,
            async |tx| {
                tx.set_notification_preferences(&org.id, &owner, &prefs, at)
                    .await?;
                if let (Some(member), Some(ids)) = (&member_id, &follows)
                    && paths.iter().any(|p| p == "followed_customers")
                {
                    tx.set_follows(&org.id, member, ids).await?;
                }
                Ok(preferences_to_pb(
                    &name,
                    &prefs,
                    follows.as_deref().unwrap_or_default(),
                    Some(at),
                ))
            },
        )
        .await?;
        tracing::info!(preferences = %name, fields = ?paths, "notification preferences updated");
        Ok(Response::new(response))
    }
}
