//! Members: an organization's account coordinators, managers and administrators,
//! and who of them is told of what (notification preferences, followed customers).
//!
//! A caller reaches the members of its own organization only (the operator, any);
//! any other organization reads as NOT_FOUND, so it is not even named.

use jiff::Timestamp;

use super::check_etag;
use crate::domain::caller::Caller;
use crate::domain::error::{Error, Result, Violations};
use crate::domain::event::EventType;
use crate::domain::ids::MemberId;
use crate::domain::names;
use crate::domain::notify::{Mode, Preferences};
use crate::domain::{
    DisplayName, EmailAddress, Member, MemberRole, Organization, Slug, TimeZoneName, now,
};
use crate::feed::members::member_event;
use crate::store::{Page, Store, Tx};

/// Customers one member may follow.
const MAX_FOLLOWS: usize = 500;

/// The organization `slug` if the caller may act for it, else NOT_FOUND.
pub async fn organization(store: &Store, caller: &Caller, slug: &Slug) -> Result<Organization> {
    match store.organization(slug).await? {
        Some(org) if caller.may_act_for(&org.id) => Ok(org),
        _ => Err(Error::NotFound(format!(
            "organization {:?}",
            names::organization(slug)
        ))),
    }
}

/// The organization of the member (or preferences) named `name`, if the caller may
/// act for it; else NOT_FOUND for `name`.
pub async fn member_organization(
    store: &Store,
    caller: &Caller,
    slug: &Slug,
    name: &str,
) -> Result<Organization> {
    match organization(store, caller, slug).await {
        Err(Error::NotFound(_)) => Err(Error::NotFound(format!("member {name:?}"))),
        other => other,
    }
}

/// A new member of `org`, not yet stored: its id is chosen once, so a retried create
/// writes the same member.
pub fn new_member(
    org: &Organization,
    display_name: DisplayName,
    email: EmailAddress,
    role: MemberRole,
    time_zone: TimeZoneName,
) -> Member {
    let now = now();
    Member {
        id: uuid::Uuid::now_v7().to_string(),
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
    }
}

/// Stores `member` (from [`new_member`]) of `org` and tells its organization.
pub async fn create(tx: &mut Tx, org: &Organization, member: &Member) -> Result<()> {
    tx.insert_member(member).await?;
    member_event(tx, EventType::MemberCreated, &org.slug, member, vec![]);
    Ok(())
}

/// Member `id` of organization `slug`, named `name` by the caller.
pub async fn get(
    store: &Store,
    caller: &Caller,
    (slug, id): (&Slug, &MemberId),
    name: &str,
) -> Result<Member> {
    let org = member_organization(store, caller, slug, name).await?;
    store
        .member(&org.id, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("member {name:?}")))
}

/// The members of organization `slug`; a page of `size` after the member `after`.
pub async fn list(
    store: &Store,
    caller: &Caller,
    slug: &Slug,
    (after, size): (Option<&str>, usize),
) -> Result<Page<Member>> {
    let org = organization(store, caller, slug).await?;
    let found = store.members(&org.id, after, size).await?;
    Ok(found)
}

/// New values for some fields of a member; `None` leaves a field as it is.
#[derive(Default)]
pub struct MemberChange {
    pub display_name: Option<DisplayName>,
    pub email: Option<EmailAddress>,
    pub role: Option<MemberRole>,
    pub time_zone: Option<TimeZoneName>,
}

/// Changes member `id` of `org` (named `name`, read at `etag`); `paths` are the
/// fields the caller asked to set, of which those that changed are told.
pub async fn update(
    tx: &mut Tx,
    org: &Organization,
    (id, name, etag): (&MemberId, &str, &str),
    change: MemberChange,
    paths: &[&str],
) -> Result<Member> {
    let mut member = tx
        .member(&org.id, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("member {name:?}")))?;
    check_etag(etag, member.revision, name)?;
    let before = member.clone();
    if let Some(v) = change.display_name {
        member.display_name = v;
    }
    if let Some(v) = change.email
        && v != member.email
    {
        // A new address starts with a clean record.
        member.email = v;
        member.email_bounce.clear();
        member.email_bounce_time = None;
        tx.clear_bounce(&member.id).await?;
    }
    if let Some(v) = change.role {
        member.role = v;
    }
    if let Some(v) = change.time_zone {
        member.time_zone = v;
    }
    member.update_time = now();
    if !tx.update_member(&mut member).await? {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    let changed: Vec<String> = paths
        .iter()
        .filter(|p| match **p {
            "display_name" => before.display_name != member.display_name,
            "email" => before.email != member.email,
            "role" => before.role != member.role,
            _ => before.time_zone != member.time_zone,
        })
        .map(|p| (*p).to_owned())
        .collect();
    if !changed.is_empty() {
        member_event(tx, EventType::MemberUpdated, &org.slug, &member, changed);
    }
    Ok(member)
}

/// Deletes member `id` of `org` (named `name`, read at `etag`) and tells its
/// organization.
pub async fn delete(
    tx: &mut Tx,
    org: &Organization,
    (id, name, etag): (&MemberId, &str, &str),
) -> Result<()> {
    let member = tx
        .member(&org.id, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("member {name:?}")))?;
    check_etag(etag, member.revision, name)?;
    if !tx.delete_member(&org.id, id, member.revision).await? {
        return Err(Error::StaleEtag(name.to_owned()));
    }
    member_event(tx, EventType::MemberDeleted, &org.slug, &member, vec![]);
    Ok(())
}

/// Whose preferences: an organization's defaults (`member_id` `None`) or a member's.
pub struct PreferencesOf<'a> {
    pub slug: &'a Slug,
    pub member_id: Option<&'a MemberId>,
    /// The preferences' resource name as the caller wrote it.
    pub name: &'a str,
}

/// The organization the preferences belong to; NOT_FOUND if the caller may not act
/// for it or the member does not exist.
async fn preferences_owner(
    store: &Store,
    caller: &Caller,
    of: &PreferencesOf<'_>,
) -> Result<Organization> {
    let org = member_organization(store, caller, of.slug, of.name).await?;
    if let Some(id) = of.member_id
        && store.member(&org.id, id).await?.is_none()
    {
        return Err(Error::NotFound(format!("{:?}", of.name)));
    }
    Ok(org)
}

/// The preferences, the customers the member follows (none for an organization's
/// defaults) and when they were last set.
pub async fn preferences(
    store: &Store,
    caller: &Caller,
    of: PreferencesOf<'_>,
) -> Result<(Preferences, Vec<String>, Option<Timestamp>)> {
    let org = preferences_owner(store, caller, &of).await?;
    let (prefs, at) = store
        .notification_preferences(&org.id, of.member_id.map_or("", MemberId::as_str))
        .await?;
    let follows = match of.member_id {
        Some(id) => store.follows(id).await?,
        None => vec![],
    };
    Ok((prefs, follows, at))
}

/// The preference fields a change sets, as the caller sent them.
pub struct PreferencesChange<'a> {
    /// The fields to set: `work_for_my_organization`, `sla`, `customer_changes`,
    /// `integration_health`, `digest_hour`, `followed_customers`.
    pub paths: &'a [String],
    /// Each mode field's new value: `Some(mode)` (`Some(None)` inherits), or `None`
    /// for a value that is not a mode.
    pub work: Option<Option<Mode>>,
    pub sla: Option<Option<Mode>>,
    pub customers: Option<Option<Mode>>,
    pub integration: Option<Option<Mode>>,
    pub digest_hour: Option<i32>,
    /// The customers to follow, by resource name.
    pub followed_customers: &'a [String],
}

/// Preferences with a change applied, to be stored by [`set_preferences`].
pub struct NewPreferences {
    pub org: Organization,
    pub prefs: Preferences,
    /// The customers the member follows after the change (`None` for an
    /// organization's defaults).
    pub follows: Option<Vec<String>>,
    /// Whether the change sets the followed customers.
    pub follows_changed: bool,
}

/// Reads the current preferences and applies `change` to them, checking every field
/// (a followed customer must be one the organization can see).
pub async fn change_preferences(
    store: &Store,
    caller: &Caller,
    of: &PreferencesOf<'_>,
    change: &PreferencesChange<'_>,
) -> Result<NewPreferences> {
    let org = preferences_owner(store, caller, of).await?;
    let owner = of.member_id.map_or("", MemberId::as_str);
    let (mut prefs, _) = store.notification_preferences(&org.id, owner).await?;
    let mut follows = match of.member_id {
        Some(id) => Some(store.follows(id).await?),
        None => None,
    };
    let mut v = Violations::new();
    for path in change.paths {
        let field = format!("notification_preferences.{path}");
        let mode = match path.as_str() {
            "work_for_my_organization" => Some((change.work, &mut prefs.work)),
            "sla" => Some((change.sla, &mut prefs.sla)),
            "customer_changes" => Some((change.customers, &mut prefs.customers)),
            "integration_health" => Some((change.integration, &mut prefs.integration)),
            _ => None,
        };
        if let Some((wanted, slot)) = mode {
            match wanted {
                Some(mode) => *slot = mode,
                None => v.add(&field, "is not a notification mode"),
            }
            continue;
        }
        if path == "digest_hour" {
            match change.digest_hour {
                None => prefs.digest_hour = None,
                Some(h) if (0..24).contains(&h) => prefs.digest_hour = Some(h as u8),
                Some(_) => v.add(&field, "must be an hour from 0 to 23"),
            }
            continue;
        }
        // followed_customers
        if of.member_id.is_none() {
            v.add(&field, "only members follow customers");
            continue;
        }
        if change.followed_customers.len() > MAX_FOLLOWS {
            v.add(&field, format!("may name at most {MAX_FOLLOWS} customers"));
            continue;
        }
        let mut ids = vec![];
        for (i, customer) in change.followed_customers.iter().enumerate() {
            let field = format!("{field}[{i}]");
            let Some(id) = v.check(&field, names::parse_customer(customer)) else {
                continue;
            };
            let visible = store
                .customer(&org.id, &id)
                .await?
                .is_some_and(|seen| seen.access().is_some());
            if !visible {
                v.add(&field, "is not a customer the organization can see");
            } else if !ids.iter().any(|known| id == *known) {
                ids.push(id.into_string());
            }
        }
        follows = Some(ids);
    }
    v.finish()?;
    Ok(NewPreferences {
        org,
        prefs,
        follows,
        follows_changed: change.paths.iter().any(|p| p == "followed_customers"),
    })
}

/// Stores preferences from [`change_preferences`] of member `member_id` (`None` for
/// the organization's defaults) as of `at`, and the member's followed customers if
/// the change named them.
pub async fn set_preferences(
    tx: &mut Tx,
    member_id: Option<&MemberId>,
    new: &NewPreferences,
    at: Timestamp,
) -> Result<()> {
    let org = &new.org;
    tx.set_notification_preferences(
        &org.id,
        member_id.map_or("", MemberId::as_str),
        &new.prefs,
        at,
    )
    .await?;
    if let (Some(member), Some(ids)) = (member_id, &new.follows)
        && new.follows_changed
    {
        tx.set_follows(&org.id, member, ids).await?;
    }
    Ok(())
}
