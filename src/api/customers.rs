//! `liaison.v1.CustomerService`: shared customer records.
//!
//! Every read goes through [`visible`]/[`visible_in`], which ask the one visibility
//! function (`domain::visibility::access`) and answer NOT_FOUND when it says no; every
//! response is built by [`customer_to_pb`] from `Access::view`, so a grantee only ever
//! receives the fields granted to it.

use std::collections::{BTreeMap, HashSet};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{check_etag, update_paths};
use super::write::{Target, idempotent};
use super::{Caller, Hub};
use crate::config::CustomersConfig;
use crate::domain::customer::RecordState;
use crate::domain::customer::{
    self, Customer, CustomerField, CustomerKind, FieldChange, PhoneRegion, Profile,
};
use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::event::EventType;
use crate::domain::filter::{CustomerCondition, CustomerFacts, CustomerFilter};
use crate::domain::match_key::MatchSecret;
use crate::domain::names;
use crate::domain::visibility::{Access, AccessLevel};
use crate::domain::{EmailAddress, OrgRef, Reason, Scope, now};
use crate::feed::customers::{CustomerChange, customer_changed, customer_viewers, tell};
use crate::feed::draft::{Draft, emit};
use crate::feed::render::customer_to_pb;
use crate::feed::render::{etag, timestamp};
use crate::pb::{self, customer_service_server::CustomerService, event::Payload};
use crate::store::{
    CustomerOrder, CustomerQuery, HistoryEntry, OrderKey, Overlay, Reach, SeenCustomer, Store, Tx,
};

/// Most customers in one BatchUpsertCustomers call.
pub const MAX_BATCH: usize = 1000;
/// Most customers merged into a survivor in one call.
const MAX_MERGED: usize = 20;
/// Most duplicate candidates returned.
const MAX_CANDIDATES: usize = 100;

/// How customers are read and matched on this hub.
pub struct CustomerSettings {
    /// Region of phone numbers written without a country code.
    pub region: PhoneRegion,
    pub secret: MatchSecret,
}

impl CustomerSettings {
    /// Reads the settings; with no configured match secret, the one kept in the
    /// database is used, generated on first start (so every replica shares it).
    pub async fn load(store: &Store, config: &CustomersConfig) -> anyhow::Result<Self> {
        let region = PhoneRegion::parse(&config.default_phone_region)
            .map_err(|v| anyhow::anyhow!("customers.default_phone_region: {}", v.description))?;
        let secret = if config.match_secret.is_empty() {
            let mut fresh = [0u8; 32];
            getrandom::fill(&mut fresh).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let stored = store
                .setting_or_insert("match_secret", &STANDARD.encode(fresh))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            MatchSecret::decode(&stored).context("the match secret kept in the database")?
        } else {
            MatchSecret::decode(&config.match_secret).context("customers.match_secret")?
        };
        Ok(Self { region, secret })
    }
}

#[derive(Clone)]
pub struct CustomerApi {
    hub: Hub,
}

impl CustomerApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("customer {name:?}"))
}

enum Found {
    Visible(Box<SeenCustomer>, Access),
    Merged(String),
    Missing,
}

fn decide(seen: Option<SeenCustomer>) -> Found {
    let Some(seen) = seen else {
        return Found::Missing;
    };
    match seen.access() {
        Some(access) => Found::Visible(Box::new(seen), access),
        None => match (&seen.customer.state, &seen.customer.merged_into) {
            (RecordState::Merged, Some(survivor)) => Found::Merged(survivor.clone()),
            _ => Found::Missing,
        },
    }
}

/// Where a customer is read from: the pool, or a write transaction.
enum Reader<'a> {
    Store(&'a Store),
    Tx(&'a mut Tx),
}

impl Reader<'_> {
    async fn customer(&mut self, viewer_id: &str, id: &str) -> Result<Option<SeenCustomer>> {
        match self {
            Reader::Store(store) => store.customer(viewer_id, id).await,
            Reader::Tx(tx) => tx.customer(viewer_id, id).await,
        }
    }
}

/// The customer `id` and how `viewer` may see it, or NOT_FOUND, naming the survivor
/// of a merge if the viewer may see that one.
async fn resolve(
    mut reader: Reader<'_>,
    viewer: &OrgRef,
    id: &str,
    name: &str,
) -> Result<(SeenCustomer, Access)> {
    match decide(reader.customer(&viewer.id, id).await?) {
        Found::Visible(seen, access) => Ok((*seen, access)),
        Found::Merged(survivor) => match decide(reader.customer(&viewer.id, &survivor).await?) {
            Found::Visible(..) => Err(Error::Merged {
                name: name.to_owned(),
                survivor: names::customer(&survivor),
            }),
            _ => Err(not_found(name)),
        },
        Found::Missing => Err(not_found(name)),
    }
}

/// The customer `id` as `viewer` may see it (see [`resolve`]).
pub(crate) async fn visible(
    store: &Store,
    viewer: &OrgRef,
    id: &str,
    name: &str,
) -> Result<(SeenCustomer, Access)> {
    resolve(Reader::Store(store), viewer, id, name).await
}

/// [`visible`] inside a write transaction.
pub(crate) async fn visible_in(
    tx: &mut Tx,
    viewer: &OrgRef,
    id: &str,
    name: &str,
) -> Result<(SeenCustomer, Access)> {
    resolve(Reader::Tx(tx), viewer, id, name).await
}

fn only_owner(access: Access, what: &str) -> Result<()> {
    if access.is_owner() {
        Ok(())
    } else {
        Err(Error::PermissionDenied {
            reason: "NOT_CUSTOMER_OWNER",
            message: format!("only the customer's owner may {what}"),
        })
    }
}

fn must_be_active(c: &Customer, name: &str) -> Result<()> {
    match c.state {
        RecordState::Active => Ok(()),
        RecordState::Deleted => Err(Error::failed_precondition(
            "CUSTOMER_DELETED",
            format!("{name} is deleted; undelete it first"),
        )),
        RecordState::Erased => Err(Error::failed_precondition(
            "CUSTOMER_ERASED",
            format!("{name} was erased"),
        )),
        RecordState::Merged => Err(not_found(name)),
    }
}

fn kind_from_pb(raw: i32) -> Result<CustomerKind, FieldViolation> {
    match pb::CustomerKind::try_from(raw) {
        Ok(pb::CustomerKind::Person) => Ok(CustomerKind::Person),
        Ok(pb::CustomerKind::Company) => Ok(CustomerKind::Company),
        Ok(pb::CustomerKind::Unspecified) => Err(FieldViolation::required("")),
        Err(_) => Err(FieldViolation::new(
            "",
            format!("{raw} is not a customer kind; use PERSON or COMPANY"),
        )),
    }
}

/// The text `checked` by its field's rule (`customer::name`, `customer::label`, …), or
/// empty after recording why not under `field`.
fn text(v: &mut Violations, field: &str, checked: Result<String, FieldViolation>) -> String {
    v.check(field, checked).unwrap_or_default()
}

/// Validates every profile field of `c`, recording violations under `at`; each text
/// goes through its field's rule in `domain::customer`.
fn profile_from_pb(c: &pb::Customer, region: PhoneRegion, v: &mut Violations, at: &str) -> Profile {
    use customer::*;
    let f = |name: &str| format!("{at}.{name}");
    let mut profile = Profile {
        given_name: text(v, &f("given_name"), name(&c.given_name)),
        family_name: text(v, &f("family_name"), name(&c.family_name)),
        legal_name: text(v, &f("legal_name"), name(&c.legal_name)),
        ..Default::default()
    };
    let limit = |v: &mut Violations, name: &str, len: usize, max: usize| {
        if len > max {
            v.add(f(name), format!("may hold at most {max} entries"));
        }
    };
    limit(v, "emails", c.emails.len(), MAX_EMAILS);
    limit(v, "phones", c.phones.len(), MAX_PHONES);
    limit(v, "addresses", c.addresses.len(), MAX_ADDRESSES);
    limit(v, "tags", c.tags.len(), MAX_TAGS);
    for (i, e) in c.emails.iter().enumerate() {
        let at = f(&format!("emails[{i}]"));
        let address = v.check(&format!("{at}.address"), EmailAddress::parse(&e.address));
        let label = text(v, &format!("{at}.label"), label(&e.label));
        if let Some(address) = address {
            if profile.emails.iter().any(|x| x.address == address) {
                v.add(format!("{at}.address"), "is listed twice");
            }
            profile.emails.push(EmailContact {
                address,
                label,
                primary: e.primary,
            });
        }
    }
    for (i, p) in c.phones.iter().enumerate() {
        let at = f(&format!("phones[{i}]"));
        let number = v.check(
            &format!("{at}.number"),
            PhoneNumber::parse(&p.number, region),
        );
        let label = text(v, &format!("{at}.label"), label(&p.label));
        if let Some(number) = number {
            if profile.phones.iter().any(|x| x.number == number) {
                v.add(format!("{at}.number"), "is listed twice");
            }
            profile.phones.push(PhoneContact {
                number,
                label,
                primary: p.primary,
            });
        }
    }
    for (i, a) in c.addresses.iter().enumerate() {
        let at = f(&format!("addresses[{i}]"));
        if a.lines.len() > MAX_ADDRESS_LINES {
            v.add(
                format!("{at}.lines"),
                format!("may hold at most {MAX_ADDRESS_LINES} lines"),
            );
        }
        let part = |v: &mut Violations, name: &str, raw: &str| {
            text(v, &format!("{at}.{name}"), address_part(raw))
        };
        let address = PostalAddress {
            label: text(v, &format!("{at}.label"), label(&a.label)),
            lines: a
                .lines
                .iter()
                .enumerate()
                .map(|(j, l)| part(v, &format!("lines[{j}]"), l))
                .collect(),
            locality: part(v, "locality", &a.locality),
            region: part(v, "region", &a.region),
            postal_code: part(v, "postal_code", &a.postal_code),
            country_code: v
                .check(&format!("{at}.country_code"), country_code(&a.country_code))
                .unwrap_or_default(),
        };
        profile.addresses.push(address);
    }
    for (i, t) in c.tags.iter().enumerate() {
        if let Some(t) = v.check(&f(&format!("tags[{i}]")), tag(t))
            && !profile.tags.contains(&t)
        {
            profile.tags.push(t);
        }
    }
    profile.attributes = attributes(v, &f("attributes"), &c.attributes);
    profile
}

/// The profile fields `c` populates, for an update without a mask (AIP-134).
fn populated(c: &pb::Customer) -> Vec<&'static str> {
    let mut out = vec![];
    let mut add = |set: bool, name| {
        if set {
            out.push(name)
        }
    };
    add(!c.given_name.is_empty(), "given_name");
    add(!c.family_name.is_empty(), "family_name");
    add(!c.legal_name.is_empty(), "legal_name");
    add(!c.emails.is_empty(), "emails");
    add(!c.phones.is_empty(), "phones");
    add(!c.addresses.is_empty(), "addresses");
    add(!c.tags.is_empty(), "tags");
    add(!c.attributes.is_empty(), "attributes");
    out
}

fn settable_names() -> Vec<&'static str> {
    CustomerField::SETTABLE.iter().map(|f| f.as_str()).collect()
}

/// A history entry of a change `caller` made.
pub(crate) fn entry(
    caller: &Caller,
    customer_id: &str,
    action: &'static str,
    changes: Vec<FieldChange>,
    note: String,
) -> HistoryEntry {
    HistoryEntry {
        id: Uuid::now_v7().to_string(),
        customer_id: customer_id.to_owned(),
        time: now(),
        org: caller.organization().ok().cloned(),
        key_id: caller.key_id.clone(),
        action,
        private_to: None,
        changes,
        note,
    }
}

fn created_changes(profile: &Profile) -> Vec<FieldChange> {
    profile
        .changes_since(&Profile::default())
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

fn order_from(raw: &str) -> Result<CustomerOrder> {
    let words: Vec<&str> = raw.split_whitespace().collect();
    let (field, descending) = match words.as_slice() {
        [] => {
            return Ok(CustomerOrder {
                key: OrderKey::Id,
                descending: false,
            });
        }
        [field] => (*field, false),
        [field, "asc"] => (*field, false),
        [field, "desc"] => (*field, true),
        _ => {
            return Err(Error::invalid(
                "order_by",
                "must be a field optionally followed by asc or desc",
            ));
        }
    };
    let key = match field {
        "update_time" => OrderKey::UpdateTime,
        "display_name" => OrderKey::DisplayName,
        other => {
            return Err(Error::invalid(
                "order_by",
                format!("cannot order by {other:?}; use update_time or display_name"),
            ));
        }
    };
    Ok(CustomerOrder { key, descending })
}

/// Creates `customer` owned by `owner` in `tx`, with `owner`'s external id.
async fn insert_new(
    hub: &Hub,
    tx: &mut Tx,
    caller: &Caller,
    customer: &Customer,
    external_id: Option<&str>,
) -> Result<SeenCustomer> {
    let secret = &hub.customers.secret;
    tx.insert_customer(customer, secret).await?;
    if let Some(x) = external_id {
        tx.set_external_id(&customer.owner.id, &customer.id, Some(x))
            .await?;
    }
    let e = entry(
        caller,
        &customer.id,
        "created",
        created_changes(&customer.profile),
        String::new(),
    );
    tx.insert_history(&e).await?;
    let seen = tx
        .customer(&customer.owner.id, &customer.id)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("customer vanished in its transaction")))?;
    let change = CustomerChange {
        event_type: EventType::CustomerCreated,
        id: &customer.id,
        before: None,
        merged_customers: vec![],
        saw_before: vec![],
    };
    tell(tx, change, std::slice::from_ref(&seen));
    Ok(seen)
}

fn new_customer(owner: &OrgRef, kind: CustomerKind, profile: Profile) -> Customer {
    let now = now();
    Customer {
        id: Uuid::now_v7().to_string(),
        owner: owner.clone(),
        kind,
        state: RecordState::Active,
        profile,
        merged_into: None,
        create_time: now,
        update_time: now,
        delete_time: None,
        revision: 1,
    }
}

/// Writes `after` over `before` as the next revision with a history entry and its
/// events; false if someone wrote it meanwhile. `merged` names the records a merge
/// folded in.
#[allow(clippy::too_many_arguments)]
async fn write_change(
    hub: &Hub,
    tx: &mut Tx,
    caller: &Caller,
    before: &Customer,
    after: &mut Customer,
    action: &'static str,
    note: String,
    merged: Vec<String>,
) -> Result<bool> {
    let changes: Vec<FieldChange> = after
        .profile
        .changes_since(&before.profile)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    // A state change may hide the record from grantees; they still hear of it.
    let saw_before = if after.state == before.state {
        vec![]
    } else {
        customer_viewers(tx, &after.id).await?
    };
    after.update_time = now();
    if !tx.update_customer(after, &hub.customers.secret).await? {
        return Ok(false);
    }
    tx.insert_history(&entry(caller, &after.id, action, changes, note))
        .await?;
    customer_changed(
        tx,
        CustomerChange {
            event_type: match action {
                "deleted" => EventType::CustomerDeleted,
                "undeleted" => EventType::CustomerUndeleted,
                "merged" => EventType::CustomerMerged,
                _ => EventType::CustomerUpdated,
            },
            id: &after.id,
            before: Some(before),
            merged_customers: merged,
            saw_before,
        },
    )
    .await?;
    Ok(true)
}

/// Replaces the profile fields in `fields` with those of `input`, refusing any the
/// caller may not change.
fn apply_fields(
    access: Access,
    fields: &[CustomerField],
    current: &Profile,
    input: &Profile,
) -> Result<Profile> {
    let mut next = current.clone();
    for field in fields {
        if !access.may_change(*field) {
            return Err(Error::PermissionDenied {
                reason: "FIELD_NOT_WRITABLE",
                message: match access {
                    Access::Grantee {
                        level: AccessLevel::Read,
                        ..
                    } => "your grant on this customer is read-only".to_owned(),
                    _ => format!("your grant does not let you change {}", field.as_str()),
                },
            });
        }
        next.set_from(*field, input);
    }
    Ok(next)
}

fn check_profile(profile: &Profile, kind: CustomerKind, at: &str) -> Result<()> {
    let mut v = Violations::new();
    profile.check(kind, &mut v);
    v.finish().map_err(|e| match e {
        Error::InvalidArgument(list) => {
            Error::InvalidArgument(list.into_iter().map(|x| x.under(at)).collect())
        }
        other => other,
    })
}

impl CustomerApi {
    /// One item of a batch upsert, inside the batch's transaction.
    async fn upsert_one(
        &self,
        tx: &mut Tx,
        caller: &Caller,
        org: &OrgRef,
        kind: CustomerKind,
        external_id: &str,
        profile: Profile,
    ) -> Result<(SeenCustomer, Access, &'static str)> {
        let Some(id) = tx.customer_by_external_id(&org.id, external_id).await? else {
            let customer = new_customer(org, kind, profile);
            check_profile(&customer.profile, kind, "")?;
            let seen = insert_new(&self.hub, tx, caller, &customer, Some(external_id)).await?;
            return Ok((seen, Access::Owner, "created"));
        };
        let name = names::customer(&id);
        let (seen, access) = visible_in(tx, org, &id, &name).await.map_err(|e| match e {
            Error::NotFound(_) | Error::Merged { .. } => Error::failed_precondition(
                "CUSTOMER_NOT_VISIBLE",
                format!(
                    "external id {external_id:?} names {name}, which your organization can no longer see"
                ),
            ),
            other => other,
        })?;
        must_be_active(&seen.customer, &name)?;
        if seen.customer.kind != kind {
            return Err(Error::invalid(
                "kind",
                format!(
                    "{name} is a {}; the kind cannot change",
                    seen.customer.kind.as_str()
                ),
            ));
        }
        // Fields the caller may not change must come empty (it cannot see them).
        let fields: Vec<CustomerField> = CustomerField::SETTABLE
            .into_iter()
            .filter(|f| access.may_change(*f) || profile.value_of(*f).is_some())
            .collect();
        let next = apply_fields(access, &fields, &seen.customer.profile, &profile)?;
        if next == seen.customer.profile {
            return Ok((seen, access, "unchanged"));
        }
        check_profile(&next, kind, "")?;
        let mut after = seen.customer.clone();
        after.profile = next;
        if !write_change(
            &self.hub,
            tx,
            caller,
            &seen.customer,
            &mut after,
            "updated",
            String::new(),
            vec![],
        )
        .await?
        {
            return Err(Error::StaleEtag(name));
        }
        let seen = SeenCustomer {
            customer: after,
            ..seen
        };
        Ok((seen, access, "updated"))
    }
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.customer.clone().unwrap_or_default();
        let mut v = Violations::new();
        let kind = v.check("customer.kind", kind_from_pb(input.kind));
        let profile = profile_from_pb(&input, self.hub.customers.region, &mut v, "customer");
        let external = v.check(
            "customer.external_id",
            customer::external_id(&input.external_id),
        );
        let (Some(kind), Some(external)) = (kind, external) else {
            return Err(v.into_error().into());
        };
        let mut rules = Violations::new();
        profile.check(kind, &mut rules);
        if let Err(Error::InvalidArgument(list)) = rules.finish() {
            for x in list {
                v.add(format!("customer.{}", x.field), x.description);
            }
        }
        v.finish()?;
        let customer = new_customer(&org, kind, profile);
        let response = idempotent(
            &self.hub,
            &caller,
            "CreateCustomer",
            &request.request_id,
            &request,
            async |tx| {
                let seen =
                    insert_new(&self.hub, tx, &caller, &customer, external.as_deref()).await?;
                Ok(customer_to_pb(&seen, Access::Owner))
            },
        )
        .await?;
        tracing::info!(customer = %response.name, "customer created");
        Ok(Response::new(response))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let name = &request.get_ref().name;
        let id = names::parse_customer(name).map_err(|v| v.under("name"))?;
        let (seen, access) = visible(&self.hub.store, org, &id, name).await?;
        Ok(Response::new(customer_to_pb(&seen, access)))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?.clone();
        let r = request.into_inner();
        let filter = CustomerFilter::parse(&r.filter, self.hub.customers.region)?;
        let order = order_from(&r.order_by)?;
        let query = format!("customers:{}:{}:{}", r.filter, r.order_by, r.show_deleted);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let mut reach = Reach::All;
        for condition in &filter.conditions {
            let only = match condition {
                CustomerCondition::Owner(slug) if *slug == org.slug => Reach::Owned,
                CustomerCondition::Owner(_) => Reach::Granted,
                CustomerCondition::Granted(true) => Reach::Granted,
                CustomerCondition::Granted(false) => Reach::Owned,
                _ => continue,
            };
            if reach != Reach::All && reach != only {
                // Contradictory conditions: nothing can match.
                return Ok(Response::new(pb::ListCustomersResponse::default()));
            }
            reach = only;
        }
        let found = self
            .hub
            .store
            .customers(
                &CustomerQuery {
                    viewer_id: &org.id,
                    conditions: &filter.conditions,
                    order,
                    show_deleted: r.show_deleted,
                    reach,
                    after: page.after.as_deref(),
                    limit: page.size,
                },
                &self.hub.customers.secret,
            )
            .await?;
        // SQL filtered on the viewer's view already; visibility and the filter on the
        // masked view have the final word on each row.
        let customers = found
            .items
            .iter()
            .filter_map(|seen| {
                let access = seen.access()?;
                let view = access.view(seen.customer.kind, &seen.customer.profile);
                let facts = CustomerFacts {
                    view: &view,
                    kind: seen.customer.kind,
                    owner: &seen.customer.owner.slug,
                    external_id: seen.external_id.as_deref(),
                    update_time: seen.customer.update_time,
                    granted: !access.is_owner(),
                };
                filter.matches(&facts).then(|| customer_to_pb(seen, access))
            })
            .collect();
        Ok(Response::new(pb::ListCustomersResponse {
            customers,
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.customer.clone().unwrap_or_default();
        let id = names::parse_customer(&input.name).map_err(|v| v.under("customer.name"))?;
        let paths = update_paths(
            request.update_mask.as_ref(),
            &settable_names(),
            &populated(&input),
        )?;
        let fields: Vec<CustomerField> = paths
            .iter()
            .filter_map(|p| CustomerField::parse(p))
            .collect();
        let mut v = Violations::new();
        let profile = profile_from_pb(&input, self.hub.customers.region, &mut v, "customer");
        v.finish()?;
        let name = input.name.clone();
        let response = idempotent(
            &self.hub,
            &caller,
            "UpdateCustomer",
            &request.request_id,
            &request,
            async |tx| {
                let (seen, access) = visible_in(tx, &org, &id, &name).await?;
                must_be_active(&seen.customer, &name)?;
                check_etag(&input.etag, seen.customer.revision, &name)?;
                let next = apply_fields(access, &fields, &seen.customer.profile, &profile)?;
                if next == seen.customer.profile {
                    return Ok(customer_to_pb(&seen, access));
                }
                check_profile(&next, seen.customer.kind, "customer")?;
                let mut after = seen.customer.clone();
                after.profile = next;
                if !write_change(
                    &self.hub,
                    tx,
                    &caller,
                    &seen.customer,
                    &mut after,
                    "updated",
                    String::new(),
                    vec![],
                )
                .await?
                {
                    return Err(Error::StaleEtag(name.clone()));
                }
                let seen = SeenCustomer {
                    customer: after,
                    ..seen
                };
                Ok(customer_to_pb(&seen, access))
            },
        )
        .await?;
        tracing::info!(customer = %response.name, fields = ?paths, "customer updated");
        Ok(Response::new(response))
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let response = self
            .set_state(
                &caller,
                Target {
                    method: "DeleteCustomer",
                    name: &r.name,
                    etag: &r.etag,
                    request_id: &r.request_id,
                },
                &r,
                true,
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn undelete_customer(
        &self,
        request: Request<pb::UndeleteCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let response = self
            .set_state(
                &caller,
                Target {
                    method: "UndeleteCustomer",
                    name: &r.name,
                    etag: &r.etag,
                    request_id: &r.request_id,
                },
                &r,
                false,
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn batch_upsert_customers(
        &self,
        request: Request<pb::BatchUpsertCustomersRequest>,
    ) -> Result<Response<pb::BatchUpsertCustomersResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        if request.customers.is_empty() || request.customers.len() > MAX_BATCH {
            return Err(Error::invalid(
                "customers",
                format!("must hold 1 to {MAX_BATCH} customers"),
            )
            .into());
        }
        let mut v = Violations::new();
        let mut seen_ids = HashSet::new();
        let mut items = vec![];
        for (i, c) in request.customers.iter().enumerate() {
            let at = format!("customers[{i}]");
            let kind = v.check(&format!("{at}.kind"), kind_from_pb(c.kind));
            let external = v.check(
                &format!("{at}.external_id"),
                customer::external_id(&c.external_id),
            );
            let profile = profile_from_pb(c, self.hub.customers.region, &mut v, &at);
            match external {
                Some(None) => v.add(
                    format!("{at}.external_id"),
                    "is required: upserts are keyed by it",
                ),
                Some(Some(x)) if !seen_ids.insert(x.clone()) => {
                    v.add(format!("{at}.external_id"), "appears twice in the batch")
                }
                Some(Some(x)) => {
                    if let Some(kind) = kind {
                        items.push((kind, x, profile));
                    }
                }
                None => {}
            }
        }
        v.finish()?;
        let response = idempotent(
            &self.hub,
            &caller,
            "BatchUpsertCustomers",
            &request.request_id,
            &request,
            async |tx| {
                let mut out = pb::BatchUpsertCustomersResponse::default();
                for (i, (kind, external, profile)) in items.iter().enumerate() {
                    let (seen, access, outcome) = self
                        .upsert_one(tx, &caller, &org, *kind, external, profile.clone())
                        .await
                        .map_err(|e| within_item(e, i))?;
                    match outcome {
                        "created" => out.created_count += 1,
                        "updated" => out.updated_count += 1,
                        _ => out.unchanged_count += 1,
                    }
                    out.customers.push(customer_to_pb(&seen, access));
                }
                Ok(out)
            },
        )
        .await?;
        tracing::info!(
            created = response.created_count,
            updated = response.updated_count,
            unchanged = response.unchanged_count,
            "customers upserted"
        );
        Ok(Response::new(response))
    }

    async fn find_duplicate_customers(
        &self,
        request: Request<pb::FindDuplicateCustomersRequest>,
    ) -> Result<Response<pb::FindDuplicateCustomersResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let name = &request.get_ref().name;
        let id = names::parse_customer(name).map_err(|v| v.under("name"))?;
        let (_, access) = visible(&self.hub.store, org, &id, name).await?;
        only_owner(access, "look for its duplicates")?;
        let found = self
            .hub
            .store
            .duplicate_candidates(&org.id, &id, MAX_CANDIDATES)
            .await?;
        let mut candidates = vec![];
        for (candidate, rules) in found {
            if let Some(seen) = self.hub.store.customer(&org.id, &candidate).await?
                && let Some(access) = seen.access()
            {
                candidates.push(pb::DuplicateCandidate {
                    customer: Some(customer_to_pb(&seen, access)),
                    rules: rules.iter().map(|r| rule_to_pb(*r) as i32).collect(),
                });
            }
        }
        Ok(Response::new(pb::FindDuplicateCustomersResponse {
            candidates,
        }))
    }

    async fn merge_customers(
        &self,
        request: Request<pb::MergeCustomersRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let mut v = Violations::new();
        let survivor_id = v.check("name", names::parse_customer(&request.name));
        if request.merged.is_empty() || request.merged.len() > MAX_MERGED {
            v.add("merged", format!("must name 1 to {MAX_MERGED} customers"));
        }
        let mut losers = vec![];
        for (i, n) in request.merged.iter().enumerate() {
            if let Some(id) = v.check(&format!("merged[{i}]"), names::parse_customer(n)) {
                if Some(&id) == survivor_id.as_ref() || losers.contains(&id) {
                    v.add(
                        format!("merged[{i}]"),
                        "must differ from the survivor and the other merged customers",
                    );
                }
                losers.push(id);
            }
        }
        let Some(survivor_id) = survivor_id else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let name = request.name.clone();
        let response = idempotent(
            &self.hub,
            &caller,
            "MergeCustomers",
            &request.request_id,
            &request,
            async |tx| {
                let mut ids = vec![survivor_id.as_str()];
                ids.extend(losers.iter().map(String::as_str));
                tx.lock_customers(&ids).await?;
                // A record merged away while this merge waited for its lock: the other
                // merge won.
                let lost = |e: Error| match e {
                    Error::Merged { name, survivor } => Error::failed_precondition(
                        "CUSTOMER_MERGED",
                        format!("{name} was merged into {survivor}"),
                    ),
                    other => other,
                };
                let (survivor, access) = visible_in(tx, &org, &survivor_id, &name)
                    .await
                    .map_err(lost)?;
                only_owner(access, "merge it")?;
                must_be_active(&survivor.customer, &name)?;
                check_etag(&request.etag, survivor.customer.revision, &name)?;
                let mut after = survivor.customer.clone();
                for (i, loser_id) in losers.iter().enumerate() {
                    let loser_name = names::customer(loser_id);
                    let (loser, access) = visible_in(tx, &org, loser_id, &loser_name)
                        .await
                        .map_err(|e| match e {
                            Error::NotFound(m) => Error::NotFound(format!("merged[{i}]: {m}")),
                            other => lost(other),
                        })?;
                    only_owner(access, "merge it")?;
                    must_be_active(&loser.customer, &loser_name)?;
                    after.profile.absorb(&loser.customer.profile);
                    let mut gone = loser.customer.clone();
                    gone.state = RecordState::Merged;
                    gone.merged_into = Some(survivor_id.clone());
                    gone.update_time = now();
                    gone.delete_time = Some(gone.update_time);
                    if !tx
                        .update_customer(&mut gone, &self.hub.customers.secret)
                        .await?
                    {
                        return Err(Error::StaleEtag(loser_name));
                    }
                    tx.move_customer_dependents(loser_id, &survivor_id).await?;
                }
                let note = format!(
                    "merged {}",
                    losers
                        .iter()
                        .map(|l| names::customer(l))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if !write_change(
                    &self.hub,
                    tx,
                    &caller,
                    &survivor.customer,
                    &mut after,
                    "merged",
                    note,
                    losers.iter().map(|l| names::customer(l)).collect(),
                )
                .await?
                {
                    return Err(Error::StaleEtag(name.clone()));
                }
                let seen = tx
                    .customer(&org.id, &survivor_id)
                    .await?
                    .ok_or_else(|| not_found(&name))?;
                Ok(customer_to_pb(&seen, Access::Owner))
            },
        )
        .await?;
        tracing::info!(customer = %response.name, merged = request.merged.len(), "customers merged");
        Ok(Response::new(response))
    }

    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let id = names::parse_customer(&request.name).map_err(|v| v.under("name"))?;
        let reason = Reason::parse(&request.reason).map_err(|v| v.under("reason"))?;
        let name = request.name.clone();
        let response = idempotent(
            &self.hub,
            &caller,
            "EraseCustomer",
            &request.request_id,
            &request,
            async |tx| {
                let (seen, access) = visible_in(tx, &org, &id, &name).await?;
                only_owner(access, "erase it")?;
                if seen.customer.state == RecordState::Erased {
                    return Ok(customer_to_pb(&seen, access));
                }
                let saw_before = customer_viewers(tx, &id).await?;
                let now = now();
                let mut after = seen.customer.clone();
                after.profile = Profile::default();
                after.state = RecordState::Erased;
                after.update_time = now;
                after.delete_time = Some(now);
                if !tx
                    .update_customer(&mut after, &self.hub.customers.secret)
                    .await?
                {
                    return Err(Error::StaleEtag(name.clone()));
                }
                tx.erase_customer_dependents(&id, now).await?;
                let e = entry(&caller, &id, "erased", vec![], reason.as_str().to_owned());
                tx.insert_history(&e).await?;
                customer_changed(
                    tx,
                    CustomerChange {
                        event_type: EventType::CustomerErased,
                        id: &id,
                        before: Some(&seen.customer),
                        merged_customers: vec![],
                        saw_before,
                    },
                )
                .await?;
                let seen = SeenCustomer {
                    customer: after,
                    external_id: None,
                    ..seen
                };
                Ok(customer_to_pb(&seen, access))
            },
        )
        .await?;
        tracing::info!(customer = %response.name, "customer erased");
        Ok(Response::new(response))
    }

    async fn list_customer_history(
        &self,
        request: Request<pb::ListCustomerHistoryRequest>,
    ) -> Result<Response<pb::ListCustomerHistoryResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let r = request.get_ref();
        let id = names::parse_customer(&r.parent).map_err(|v| v.under("parent"))?;
        let (_, access) = visible(&self.hub.store, org, &id, &r.parent).await?;
        let page = self
            .hub
            .pages
            .open(
                &caller,
                r.page_size,
                &r.page_token,
                &format!("history:{id}"),
            )
            .await?;
        // An entry this viewer may not read is skipped; pages are filled from the next
        // rows, and a token only ever holds the id of an entry the viewer was shown.
        let mut entries = Vec::with_capacity(page.size);
        let mut after = page.after.clone();
        let mut next_after = None;
        'pages: loop {
            let found = self
                .hub
                .store
                .customer_history(&id, &org.id, after.as_deref(), page.size)
                .await?;
            let more = found.next_after.is_some();
            let count = found.items.len();
            for (i, e) in found.items.into_iter().enumerate() {
                let entry_id = e.id.clone();
                after = Some(entry_id.clone());
                let Some(shown) = history_entry_to_pb(e, &org.id, access) else {
                    continue;
                };
                entries.push(shown);
                if entries.len() == page.size {
                    if more || i + 1 < count {
                        next_after = Some(entry_id);
                    }
                    break 'pages;
                }
            }
            if !more {
                break;
            }
        }
        Ok(Response::new(pb::ListCustomerHistoryResponse {
            entries,
            next_page_token: page.next_token(next_after),
        }))
    }

    async fn get_customer_overlay(
        &self,
        request: Request<pb::GetCustomerOverlayRequest>,
    ) -> Result<Response<pb::CustomerOverlay>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let name = &request.get_ref().name;
        let id = names::parse_overlay(name).map_err(|v| v.under("name"))?;
        let (seen, _) = visible(&self.hub.store, org, &id, &names::customer(&id)).await?;
        let overlay = self.hub.store.overlay(&id, &org.id).await?;
        Ok(Response::new(overlay_to_pb(
            &id,
            &overlay,
            &seen.external_id,
        )))
    }

    async fn update_customer_overlay(
        &self,
        request: Request<pb::UpdateCustomerOverlayRequest>,
    ) -> Result<Response<pb::CustomerOverlay>, Status> {
        const UPDATABLE: &[&str] = &[
            "external_id",
            "account_number",
            "status",
            "notes",
            "attributes",
        ];
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.overlay.clone().unwrap_or_default();
        let id = names::parse_overlay(&input.name).map_err(|v| v.under("overlay.name"))?;
        let mut populated = vec![];
        for (set, path) in [
            (!input.external_id.is_empty(), "external_id"),
            (!input.account_number.is_empty(), "account_number"),
            (!input.status.is_empty(), "status"),
            (!input.notes.is_empty(), "notes"),
            (!input.attributes.is_empty(), "attributes"),
        ] {
            if set {
                populated.push(path);
            }
        }
        let paths = update_paths(request.update_mask.as_ref(), UPDATABLE, &populated)?;
        let mut v = Violations::new();
        let external = v
            .check(
                "overlay.external_id",
                customer::external_id(&input.external_id),
            )
            .flatten();
        let wanted = Overlay {
            account_number: text(
                &mut v,
                "overlay.account_number",
                customer::account_number(&input.account_number),
            ),
            status: text(&mut v, "overlay.status", customer::label(&input.status)),
            notes: text(&mut v, "overlay.notes", customer::notes(&input.notes)),
            attributes: customer::attributes(&mut v, "overlay.attributes", &input.attributes),
            ..Default::default()
        };
        v.finish()?;
        let customer_name = names::customer(&id);
        let response = idempotent(
            &self.hub,
            &caller,
            "UpdateCustomerOverlay",
            &request.request_id,
            &request,
            async |tx| {
                let (seen, _) = visible_in(tx, &org, &id, &customer_name).await?;
                let before = tx.overlay(&id, &org.id).await?;
                check_etag(&input.etag, before.revision, &input.name)?;
                let mut after = before.clone();
                let mut external_id = seen.external_id.clone();
                let mut changes = vec![];
                let json = |s: &str| (!s.is_empty()).then(|| serde_json::Value::from(s));
                for path in &paths {
                    let (old, new) = match path.as_str() {
                        "external_id" => {
                            let old = external_id.clone();
                            external_id = external.clone();
                            (
                                json(old.as_deref().unwrap_or("")),
                                json(external.as_deref().unwrap_or("")),
                            )
                        }
                        "account_number" => {
                            let old = std::mem::replace(
                                &mut after.account_number,
                                wanted.account_number.clone(),
                            );
                            (json(&old), json(&after.account_number))
                        }
                        "status" => {
                            let old = std::mem::replace(&mut after.status, wanted.status.clone());
                            (json(&old), json(&after.status))
                        }
                        "notes" => {
                            let old = std::mem::replace(&mut after.notes, wanted.notes.clone());
                            (json(&old), json(&after.notes))
                        }
                        _ => {
                            let old =
                                std::mem::replace(&mut after.attributes, wanted.attributes.clone());
                            let as_json = |m: &BTreeMap<String, String>| {
                                (!m.is_empty()).then(|| serde_json::to_value(m).unwrap_or_default())
                            };
                            (as_json(&old), as_json(&after.attributes))
                        }
                    };
                    if old != new {
                        changes.push(FieldChange {
                            field: format!("overlay.{path}"),
                            old,
                            new,
                        });
                    }
                }
                if changes.is_empty() {
                    return Ok(overlay_to_pb(&id, &before, &seen.external_id));
                }
                let changes_paths: Vec<String> = changes
                    .iter()
                    .map(|c| c.field.trim_start_matches("overlay.").to_owned())
                    .collect();
                if external_id != seen.external_id {
                    tx.set_external_id(&org.id, &id, external_id.as_deref())
                        .await?;
                }
                if !tx.write_overlay(&id, &org.id, &mut after, now()).await? {
                    return Err(Error::StaleEtag(input.name.clone()));
                }
                let mut e = entry(&caller, &id, "overlay_updated", changes, String::new());
                e.private_to = Some(org.id.clone());
                tx.insert_history(&e).await?;
                let overlay = overlay_to_pb(&id, &after, &external_id);
                let mut draft = Draft::new(
                    EventType::CustomerOverlayUpdated,
                    overlay.name.clone(),
                    Payload::CustomerOverlay(overlay.clone()),
                );
                draft.changed_fields = changes_paths;
                emit(tx, &org.id, draft);
                Ok(overlay)
            },
        )
        .await?;
        Ok(Response::new(response))
    }
}

fn overlay_to_pb(
    customer_id: &str,
    o: &Overlay,
    external_id: &Option<String>,
) -> pb::CustomerOverlay {
    pb::CustomerOverlay {
        name: names::overlay(customer_id),
        external_id: external_id.clone().unwrap_or_default(),
        account_number: o.account_number.clone(),
        status: o.status.clone(),
        notes: o.notes.clone(),
        attributes: o.attributes.clone().into_iter().collect(),
        update_time: o.update_time.and_then(timestamp),
        etag: etag(o.revision),
    }
}

pub(crate) fn rule_to_pb(rule: crate::store::MatchRule) -> pb::MatchRule {
    use crate::store::MatchRule as R;
    match rule {
        R::SameEmail => pb::MatchRule::SameEmail,
        R::SamePhone => pb::MatchRule::SamePhone,
        R::SameNameAndPostalCode => pb::MatchRule::SameNameAndPostalCode,
    }
}

/// Says which batch item an error is about.
fn within_item(error: Error, i: usize) -> Error {
    let at = format!("customers[{i}]");
    match error {
        Error::InvalidArgument(list) => {
            Error::InvalidArgument(list.into_iter().map(|v| v.under(&at)).collect())
        }
        Error::PermissionDenied { reason, message } => Error::PermissionDenied {
            reason,
            message: format!("{at}: {message}"),
        },
        Error::FailedPrecondition { reason, message } => Error::FailedPrecondition {
            reason,
            message: format!("{at}: {message}"),
        },
        Error::AlreadyExists { reason, message } => Error::AlreadyExists {
            reason,
            message: format!("{at}: {message}"),
        },
        other => other,
    }
}

impl CustomerApi {
    /// Soft delete (`delete`) or undelete, by the owner.
    async fn set_state(
        &self,
        caller: &Caller,
        t: Target<'_>,
        request: &impl prost::Message,
        delete: bool,
    ) -> Result<pb::Customer> {
        let (name, etag_sent) = (t.name, t.etag);
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let id = names::parse_customer(name).map_err(|v| v.under("name"))?;
        let response = idempotent(
            &self.hub,
            caller,
            t.method,
            t.request_id,
            request,
            async |tx| {
                let (seen, access) = visible_in(tx, &org, &id, name).await?;
                only_owner(access, if delete { "delete it" } else { "undelete it" })?;
                check_etag(etag_sent, seen.customer.revision, name)?;
                let (from, to, action) = if delete {
                    (RecordState::Active, RecordState::Deleted, "deleted")
                } else {
                    (RecordState::Deleted, RecordState::Active, "undeleted")
                };
                if seen.customer.state != from {
                    return Err(Error::failed_precondition(
                        if delete {
                            "CUSTOMER_NOT_ACTIVE"
                        } else {
                            "CUSTOMER_NOT_DELETED"
                        },
                        format!(
                            "{name} is not {}",
                            if delete { "active" } else { "deleted" }
                        ),
                    ));
                }
                let mut after = seen.customer.clone();
                after.state = to;
                after.delete_time = delete.then(now);
                if !write_change(
                    &self.hub,
                    tx,
                    caller,
                    &seen.customer,
                    &mut after,
                    action,
                    String::new(),
                    vec![],
                )
                .await?
                {
                    return Err(Error::StaleEtag(name.to_owned()));
                }
                let seen = SeenCustomer {
                    customer: after,
                    ..seen
                };
                Ok(customer_to_pb(&seen, access))
            },
        )
        .await?;
        tracing::info!(customer = %response.name, deleted = delete, "customer state changed");
        Ok(response)
    }
}

/// A history entry as `viewer_id` (with `access` to the customer) may read it; `None`
/// if it tells the viewer nothing it may know.
fn history_entry_to_pb(
    e: HistoryEntry,
    viewer_id: &str,
    access: Access,
) -> Option<pb::CustomerHistoryEntry> {
    use pb::customer_history_entry::Action;
    if e.private_to.as_ref().is_some_and(|p| p != viewer_id) {
        return None;
    }
    let private = e.private_to.is_some();
    let changes: Vec<pb::FieldChange> = e
        .changes
        .into_iter()
        .filter(|c| private || CustomerField::parse(&c.field).is_some_and(|f| access.sees(f)))
        .map(|c| pb::FieldChange {
            field: c.field,
            old_value: c.old.map(|v| v.to_string()).unwrap_or_default(),
            new_value: c.new.map(|v| v.to_string()).unwrap_or_default(),
        })
        .collect();
    let action = match e.action {
        "created" => Action::Created,
        "updated" => Action::Updated,
        "deleted" => Action::Deleted,
        "undeleted" => Action::Undeleted,
        "merged" => Action::Merged,
        "erased" => Action::Erased,
        _ => Action::OverlayUpdated,
    };
    // An update of fields this viewer may not see tells it nothing.
    if action == Action::Updated && changes.is_empty() {
        return None;
    }
    Some(pb::CustomerHistoryEntry {
        time: timestamp(e.time),
        action: action as i32,
        organization: e
            .org
            .as_ref()
            .map(|o| names::organization(&o.slug))
            .unwrap_or_else(|| "operator".into()),
        api_key: names::api_key(e.org.as_ref().map(|o| &o.slug), &e.key_id),
        changes,
        // Notes name merged records and erasure reasons: the owner's business.
        note: if access.is_owner() || private {
            e.note
        } else {
            String::new()
        },
    })
}
