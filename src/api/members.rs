//! `liaison.v1.MemberService`: an organization's account coordinators.

use tonic::{Request, Response, Status};

use super::convert::{role_from_pb, update_paths};
use super::write::idempotent;
use super::{Hub, caller_of};
use crate::app::members::{self as app, MemberChange, PreferencesChange, PreferencesOf};
use crate::domain::error::{Error, Result, Violations};
use crate::domain::ids::MemberId;
use crate::domain::names;
use crate::domain::notify::{Mode, Preferences};
use crate::domain::{DisplayName, EmailAddress, MemberRole, Scope, Slug, TimeZoneName, now};
use crate::feed::render::{member_to_pb, timestamp};
use crate::pb::{self, member_service_server::MemberService};
use crate::store::Page;

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

/// `organizations/{org}/notificationPreferences` (the organization's defaults, `None`)
/// or `organizations/{org}/members/{m}/notificationPreferences`.
fn parse_preferences_name(name: &str, field: &str) -> Result<(Slug, Option<MemberId>)> {
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

/// The member fields an update request populates, for an update without a mask.
fn member_populated(input: &pb::Member) -> Vec<&'static str> {
    [
        ("display_name", !input.display_name.is_empty()),
        ("email", !input.email.is_empty()),
        ("role", input.role != 0),
        ("time_zone", !input.time_zone.is_empty()),
    ]
    .into_iter()
    .filter_map(|(f, set)| set.then_some(f))
    .collect()
}

/// The preference fields an update request populates, for an update without a mask.
fn preferences_populated(input: &pb::NotificationPreferences) -> Vec<&'static str> {
    [
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
    .collect()
}

fn preferences_change<'a>(
    input: &'a pb::NotificationPreferences,
    paths: &'a [String],
) -> PreferencesChange<'a> {
    PreferencesChange {
        paths,
        work: mode_from_pb(input.work_for_my_organization),
        sla: mode_from_pb(input.sla),
        customers: mode_from_pb(input.customer_changes),
        integration: mode_from_pb(input.integration_health),
        digest_hour: input.digest_hour,
        followed_customers: &input.followed_customers,
    }
}

#[tonic::async_trait]
impl MemberService for MemberApi {
    async fn create_member(
        &self,
        request: Request<pb::CreateMemberRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let request = request.into_inner();
        let slug = names::parse_organization(&request.parent).map_err(|v| v.under("parent"))?;
        let input = request.member.clone().unwrap_or_default();
        let fields = MemberFields::parse(&input, UPDATABLE)?;
        let org = app::organization(&self.hub.store, &caller, &slug).await?;
        let (Some(display_name), Some(email), Some(role), Some(time_zone)) = (
            fields.display_name,
            fields.email,
            fields.role,
            fields.time_zone,
        ) else {
            return Err(Error::Internal(anyhow::anyhow!("validated member fields missing")).into());
        };
        let member = app::new_member(&org, display_name, email, role, time_zone);
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            app::create(tx, &org, &member).await?;
            Ok(member_to_pb(&org.slug, &member))
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let name = &request.get_ref().name;
        let (slug, id) = names::parse_member(name).map_err(|v| v.under("name"))?;
        let member = app::get(&self.hub.store, &caller, (&slug, &id), name).await?;
        Ok(Response::new(member_to_pb(&slug, &member)))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let r = request.into_inner();
        let slug = names::parse_organization(&r.parent).map_err(|v| v.under("parent"))?;
        let query = format!("members:{}", r.parent);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page {
            items: members,
            next_after: next,
        } = app::list(&self.hub.store, &caller, &slug, at).await?;
        Ok(Response::new(pb::ListMembersResponse {
            members: members.iter().map(|m| member_to_pb(&slug, m)).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn update_member(
        &self,
        request: Request<pb::UpdateMemberRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let request = request.into_inner();
        let input = request.member.clone().unwrap_or_default();
        let (slug, id) = names::parse_member(&input.name).map_err(|v| v.under("member.name"))?;
        let paths = update_paths(
            request.update_mask.as_ref(),
            UPDATABLE,
            &member_populated(&input),
        )?;
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let MemberFields {
            display_name,
            email,
            role,
            time_zone,
        } = MemberFields::parse(&input, &paths)?;
        let change = MemberChange {
            display_name,
            email,
            role,
            time_zone,
        };
        let org = app::member_organization(&self.hub.store, &caller, &slug, &input.name).await?;
        let target = (&id, input.name.as_str(), input.etag.as_str());
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let member = app::update(tx, &org, target, change, &paths).await?;
            Ok(member_to_pb(&slug, &member))
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn delete_member(
        &self,
        request: Request<pb::DeleteMemberRequest>,
    ) -> Result<Response<pb::DeleteMemberResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let request = request.into_inner();
        let name = &request.name;
        let (slug, id) = names::parse_member(name).map_err(|v| v.under("name"))?;
        let org = app::member_organization(&self.hub.store, &caller, &slug, name).await?;
        let target = (&id, name.as_str(), request.etag.as_str());
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            app::delete(tx, &org, target).await?;
            Ok(pb::DeleteMemberResponse {})
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn get_notification_preferences(
        &self,
        request: Request<pb::GetNotificationPreferencesRequest>,
    ) -> Result<Response<pb::NotificationPreferences>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let name = request.into_inner().name;
        let (slug, member_id) = parse_preferences_name(&name, "name")?;
        let of = PreferencesOf {
            slug: &slug,
            member_id: member_id.as_ref(),
            name: &name,
        };
        let (prefs, follows, at) = app::preferences(&self.hub.store, &caller, of).await?;
        Ok(Response::new(preferences_to_pb(
            &name, &prefs, &follows, at,
        )))
    }

    async fn update_notification_preferences(
        &self,
        request: Request<pb::UpdateNotificationPreferencesRequest>,
    ) -> Result<Response<pb::NotificationPreferences>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let input = r.notification_preferences.clone().unwrap_or_default();
        let name = &input.name;
        let (slug, member_id) = parse_preferences_name(name, "notification_preferences.name")?;
        let paths = update_paths(
            r.update_mask.as_ref(),
            PREFERENCES,
            &preferences_populated(&input),
        )?;
        let of = PreferencesOf {
            slug: &slug,
            member_id: member_id.as_ref(),
            name,
        };
        let change = preferences_change(&input, &paths);
        let new = app::change_preferences(&self.hub.store, &caller, &of, &change).await?;
        let at = now();
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            app::set_preferences(tx, of.member_id, &new, at).await?;
            let follows = new.follows.as_deref().unwrap_or_default();
            Ok(preferences_to_pb(name, &new.prefs, follows, Some(at)))
        })
        .await?;
        tracing::info!(preferences = %name, fields = ?paths, "notification preferences updated");
        Ok(Response::new(response))
    }
}
