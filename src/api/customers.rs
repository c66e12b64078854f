//! `liaison.v1.CustomerService` over gRPC: requests decoded into the commands of
//! [`app::customers`], answers rendered by [`customer_to_pb`] from `Access::view`, so a
//! grantee only ever receives the fields granted to it.

use std::collections::HashSet;

use tonic::{Request, Response, Status};

use super::convert::update_paths;
use super::write::{Retryable, idempotent};
use super::{Hub, caller_of};
use crate::app::customers::{
    self as app, Listing, MAX_BATCH, MAX_MERGED, Merge, Outcome, OverlayUpdate, ProfileUpdate,
    Upsert,
};
use crate::domain::customer::{self, CustomerField, CustomerKind, PhoneRegion, Profile};
use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::filter::CustomerFilter;
use crate::domain::ids::CustomerId;
use crate::domain::metrics::CustomerMetrics;
use crate::domain::names;
use crate::domain::visibility::Access;
use crate::domain::{EmailAddress, Reason, Scope};
use crate::feed::render::{customer_to_pb, metrics_to_pb, overlay_to_pb, timestamp};
use crate::pb::{self, customer_service_server::CustomerService};
use crate::store::{CustomerOrder, HistoryEntry, OrderKey, Overlay, Page, SeenCustomer};

#[derive(Clone)]
pub struct CustomerApi {
    hub: Hub,
}

impl CustomerApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
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

/// Customers as read, each with the metrics [`app::metrics_of`] found for it.
fn with_metrics(
    found: &[(SeenCustomer, Access)],
    metrics: Vec<(CustomerMetrics, Option<CustomerMetrics>)>,
) -> Vec<pb::Customer> {
    found
        .iter()
        .zip(metrics)
        .map(|((seen, access), (own, owner))| {
            let mut pb = customer_to_pb(seen, *access);
            pb.metrics = Some(metrics_to_pb(&own));
            pb.owner_metrics = owner.as_ref().map(metrics_to_pb);
            pb
        })
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
        "purchase_count" => OrderKey::PurchaseCount,
        other => {
            return Err(Error::invalid(
                "order_by",
                format!(
                    "cannot order by {other:?}; use update_time, display_name or purchase_count"
                ),
            ));
        }
    };
    Ok(CustomerOrder { key, descending })
}

pub(crate) fn rule_to_pb(rule: crate::store::MatchRule) -> pb::MatchRule {
    use crate::store::MatchRule as R;
    match rule {
        R::SameEmail => pb::MatchRule::SameEmail,
        R::SamePhone => pb::MatchRule::SamePhone,
        R::SameNameAndPostalCode => pb::MatchRule::SameNameAndPostalCode,
    }
}

/// The customer a create or update request carries, validated: its kind (if it
/// matters) and profile, or every violation under `at`.
fn checked_profile(
    c: &pb::Customer,
    region: PhoneRegion,
    v: &mut Violations,
    at: &str,
) -> (Option<CustomerKind>, Profile) {
    let kind = v.check(&format!("{at}.kind"), kind_from_pb(c.kind));
    (kind, profile_from_pb(c, region, v, at))
}

/// The overlay fields a request populates, for an update without a mask (AIP-134).
fn overlay_populated(o: &pb::CustomerOverlay) -> Vec<&'static str> {
    [
        (!o.external_id.is_empty(), "external_id"),
        (!o.account_number.is_empty(), "account_number"),
        (!o.status.is_empty(), "status"),
        (!o.notes.is_empty(), "notes"),
        (!o.attributes.is_empty(), "attributes"),
    ]
    .into_iter()
    .filter_map(|(set, path)| set.then_some(path))
    .collect()
}

/// The overlay fields a request sets, validated.
fn overlay_from_pb(o: &pb::CustomerOverlay) -> Result<(Option<String>, Overlay)> {
    let mut v = Violations::new();
    let external = v
        .check("overlay.external_id", customer::external_id(&o.external_id))
        .flatten();
    let wanted = Overlay {
        account_number: text(
            &mut v,
            "overlay.account_number",
            customer::account_number(&o.account_number),
        ),
        status: text(&mut v, "overlay.status", customer::label(&o.status)),
        notes: text(&mut v, "overlay.notes", customer::notes(&o.notes)),
        attributes: customer::attributes(&mut v, "overlay.attributes", &o.attributes),
        ..Default::default()
    };
    v.finish()?;
    Ok((external, wanted))
}

/// The items of a batch upsert, validated: each needs a kind and an external id that
/// no other item of the batch uses.
fn upserts_from_pb(customers: &[pb::Customer], region: PhoneRegion) -> Result<Vec<Upsert>> {
    if customers.is_empty() || customers.len() > MAX_BATCH {
        return Err(Error::invalid(
            "customers",
            format!("must hold 1 to {MAX_BATCH} customers"),
        ));
    }
    let mut v = Violations::new();
    let mut seen_ids = HashSet::new();
    let mut items = vec![];
    for (i, c) in customers.iter().enumerate() {
        let at = format!("customers[{i}]");
        let kind = v.check(&format!("{at}.kind"), kind_from_pb(c.kind));
        let external = v.check(
            &format!("{at}.external_id"),
            customer::external_id(&c.external_id),
        );
        let profile = profile_from_pb(c, region, &mut v, &at);
        match external {
            Some(None) => v.add(
                format!("{at}.external_id"),
                "is required: upserts are keyed by it",
            ),
            Some(Some(x)) if !seen_ids.insert(x.clone()) => {
                v.add(format!("{at}.external_id"), "appears twice in the batch")
            }
            Some(Some(external_id)) => {
                if let Some(kind) = kind {
                    items.push(Upsert {
                        kind,
                        external_id,
                        profile,
                    });
                }
            }
            None => {}
        }
    }
    v.finish()?;
    Ok(items)
}

/// The survivor and the records a merge request names, validated.
fn merge_from_pb(r: &pb::MergeCustomersRequest) -> Result<(CustomerId, Vec<CustomerId>)> {
    let mut v = Violations::new();
    let survivor_id = v.check("name", names::parse_customer(&r.name));
    if r.merged.is_empty() || r.merged.len() > MAX_MERGED {
        v.add("merged", format!("must name 1 to {MAX_MERGED} customers"));
    }
    let mut losers = vec![];
    for (i, n) in r.merged.iter().enumerate() {
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
        return Err(v.into_error());
    };
    v.finish()?;
    Ok((survivor_id, losers))
}

/// A history entry (already filtered to what its reader may know) as protobuf.
fn history_entry_to_pb(e: HistoryEntry) -> pb::CustomerHistoryEntry {
    use pb::customer_history_entry::Action;
    let action = match e.action {
        "created" => Action::Created,
        "updated" => Action::Updated,
        "deleted" => Action::Deleted,
        "undeleted" => Action::Undeleted,
        "merged" => Action::Merged,
        "erased" => Action::Erased,
        _ => Action::OverlayUpdated,
    };
    pb::CustomerHistoryEntry {
        time: timestamp(e.time),
        action: action as i32,
        organization: e
            .org
            .as_ref()
            .map(|o| names::organization(&o.slug))
            .unwrap_or_else(|| "operator".into()),
        api_key: names::api_key(e.org.as_ref().map(|o| &o.slug), &e.key_id),
        changes: e
            .changes
            .into_iter()
            .map(|c| pb::FieldChange {
                field: c.field,
                old_value: c.old.map(|v| v.to_string()).unwrap_or_default(),
                new_value: c.new.map(|v| v.to_string()).unwrap_or_default(),
            })
            .collect(),
        note: e.note,
    }
}

fn upserted_to_pb(
    done: Vec<(crate::store::SeenCustomer, Access, Outcome)>,
) -> pb::BatchUpsertCustomersResponse {
    let mut out = pb::BatchUpsertCustomersResponse::default();
    for (seen, access, outcome) in done {
        match outcome {
            Outcome::Created => out.created_count += 1,
            Outcome::Updated => out.updated_count += 1,
            Outcome::Unchanged => out.unchanged_count += 1,
        }
        out.customers.push(customer_to_pb(&seen, access));
    }
    out
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.customer.clone().unwrap_or_default();
        let mut v = Violations::new();
        let (kind, profile) =
            checked_profile(&input, self.hub.customers.region, &mut v, "customer");
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
        let customer = app::new_customer(&org, kind, profile);
        let settings = &self.hub.customers;
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let seen = app::create(tx, settings, &caller, &customer, external.as_deref()).await?;
            Ok(customer_to_pb(&seen, Access::Owner))
        })
        .await?;
        tracing::info!(customer = %response.name, "customer created");
        Ok(Response::new(self.read_metrics(&caller, response).await?))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let name = &request.get_ref().name;
        let id = names::parse_customer(name).map_err(|v| v.under("name"))?;
        let (seen, access) = app::visible(&self.hub.store, org, &id, name).await?;
        let found = [(seen, access)];
        let metrics = app::metrics_of(&self.hub.store, org, &found).await?;
        Ok(Response::new(with_metrics(&found, metrics).remove(0)))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let r = request.into_inner();
        let filter = CustomerFilter::parse(&r.filter, self.hub.customers.region)?;
        let order = order_from(&r.order_by)?;
        let query = format!("customers:{}:{}:{}", r.filter, r.order_by, r.show_deleted);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let listing = Listing {
            filter: &filter,
            order,
            show_deleted: r.show_deleted,
            after: page.after.as_deref(),
            limit: page.size,
        };
        let Page {
            items: found,
            next_after: next,
        } = app::list(&self.hub.store, &self.hub.customers, &caller, listing).await?;
        let metrics = app::metrics_of(&self.hub.store, caller.organization()?, &found).await?;
        Ok(Response::new(pb::ListCustomersResponse {
            customers: with_metrics(&found, metrics),
            next_page_token: page.next_token(next),
        }))
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        caller.organization()?;
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
        let (name, etag) = (&input.name, &input.etag);
        let update = || ProfileUpdate {
            id: &id,
            name,
            etag,
            fields: &fields,
            profile: &profile,
        };
        let settings = &self.hub.customers;
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let (seen, access) = app::update(tx, settings, &caller, update()).await?;
            Ok(customer_to_pb(&seen, access))
        })
        .await?;
        tracing::info!(customer = %response.name, fields = ?paths, "customer updated");
        Ok(Response::new(self.read_metrics(&caller, response).await?))
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let target = (r.name.as_str(), r.etag.as_str());
        let response = self.set_state(&caller, target, &r, true).await?;
        Ok(Response::new(self.read_metrics(&caller, response).await?))
    }

    async fn undelete_customer(
        &self,
        request: Request<pb::UndeleteCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let target = (r.name.as_str(), r.etag.as_str());
        let response = self.set_state(&caller, target, &r, false).await?;
        Ok(Response::new(self.read_metrics(&caller, response).await?))
    }

    async fn batch_upsert_customers(
        &self,
        request: Request<pb::BatchUpsertCustomersRequest>,
    ) -> Result<Response<pb::BatchUpsertCustomersResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        caller.organization()?;
        let request = request.into_inner();
        let items = upserts_from_pb(&request.customers, self.hub.customers.region)?;
        let settings = &self.hub.customers;
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            Ok(upserted_to_pb(
                app::upsert(tx, settings, &caller, &items).await?,
            ))
        })
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
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let name = &request.get_ref().name;
        let id = names::parse_customer(name).map_err(|v| v.under("name"))?;
        let found = app::duplicates(&self.hub.store, &caller, &id, name).await?;
        let candidates = found
            .into_iter()
            .map(|(seen, access, rules)| pb::DuplicateCandidate {
                customer: Some(customer_to_pb(&seen, access)),
                rules: rules.iter().map(|r| rule_to_pb(*r) as i32).collect(),
            })
            .collect();
        Ok(Response::new(pb::FindDuplicateCustomersResponse {
            candidates,
        }))
    }

    async fn merge_customers(
        &self,
        request: Request<pb::MergeCustomersRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        caller.organization()?;
        let request = request.into_inner();
        let (survivor_id, losers) = merge_from_pb(&request)?;
        let merge = || Merge {
            survivor_id: &survivor_id,
            name: &request.name,
            etag: &request.etag,
            losers: &losers,
        };
        let settings = &self.hub.customers;
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let seen = app::merge(tx, settings, &caller, merge()).await?;
            Ok(customer_to_pb(&seen, Access::Owner))
        })
        .await?;
        tracing::info!(customer = %response.name, merged = request.merged.len(), "customers merged");
        Ok(Response::new(self.read_metrics(&caller, response).await?))
    }

    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        caller.organization()?;
        let request = request.into_inner();
        let id = names::parse_customer(&request.name).map_err(|v| v.under("name"))?;
        let reason = Reason::parse(&request.reason).map_err(|v| v.under("reason"))?;
        let settings = &self.hub.customers;
        let target = (&id, request.name.as_str());
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let (seen, access) = app::erase(tx, settings, &caller, target, reason).await?;
            Ok(customer_to_pb(&seen, access))
        })
        .await?;
        tracing::info!(customer = %response.name, "customer erased");
        Ok(Response::new(self.read_metrics(&caller, response).await?))
    }

    async fn list_customer_history(
        &self,
        request: Request<pb::ListCustomerHistoryRequest>,
    ) -> Result<Response<pb::ListCustomerHistoryResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let r = request.get_ref();
        let id = names::parse_customer(&r.parent).map_err(|v| v.under("parent"))?;
        let (_, access) = app::visible(&self.hub.store, org, &id, &r.parent).await?;
        let query = format!("history:{id}");
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let read = (&id, access);
        let Page {
            items: entries,
            next_after: next,
        } = app::history(&self.hub.store, org, read, page.after.clone(), page.size).await?;
        Ok(Response::new(pb::ListCustomerHistoryResponse {
            entries: entries.into_iter().map(history_entry_to_pb).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn get_customer_overlay(
        &self,
        request: Request<pb::GetCustomerOverlayRequest>,
    ) -> Result<Response<pb::CustomerOverlay>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let name = &request.get_ref().name;
        let id = names::parse_overlay(name).map_err(|v| v.under("name"))?;
        let (overlay, external_id) = app::overlay(&self.hub.store, &caller, &id).await?;
        Ok(Response::new(overlay_to_pb(&id, &overlay, &external_id)))
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
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        caller.organization()?;
        let request = request.into_inner();
        let input = request.overlay.clone().unwrap_or_default();
        let id = names::parse_overlay(&input.name).map_err(|v| v.under("overlay.name"))?;
        let paths = update_paths(
            request.update_mask.as_ref(),
            UPDATABLE,
            &overlay_populated(&input),
        )?;
        let (external_id, wanted) = overlay_from_pb(&input)?;
        let (name, etag, paths) = (input.name.as_str(), input.etag.as_str(), paths.as_slice());
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let u = OverlayUpdate {
                customer_id: &id,
                name,
                etag,
                paths,
                external_id,
                wanted,
            };
            let (overlay, external_id) = app::update_overlay(tx, &caller, u).await?;
            Ok(overlay_to_pb(&id, &overlay, &external_id))
        })
        .await?;
        Ok(Response::new(response))
    }
}

impl CustomerApi {
    /// A customer a write returns, with the metrics a read shows, read after the
    /// write: the caller's own, and the owner's where the visibility function showed
    /// the caller the `owner_metrics` field.
    async fn read_metrics(
        &self,
        caller: &crate::domain::caller::Caller,
        mut c: pb::Customer,
    ) -> Result<pb::Customer> {
        let org = caller.organization()?;
        let id = names::parse_customer(&c.name).map_err(|v| v.under("name"))?;
        let wanted = app::Wanted {
            id: &id,
            owned: c.access == pb::AccessLevel::Owner as i32,
            owners_shown: c
                .visible_fields
                .iter()
                .any(|f| f == CustomerField::OwnerMetrics.as_str()),
        };
        let (own, owner) = app::metrics_for(&self.hub.store, org, &[wanted])
            .await?
            .remove(0);
        c.metrics = Some(metrics_to_pb(&own));
        c.owner_metrics = owner.as_ref().map(metrics_to_pb);
        Ok(c)
    }

    /// DeleteCustomer (`delete`) or UndeleteCustomer of `name`, read at `etag`.
    async fn set_state(
        &self,
        caller: &crate::domain::caller::Caller,
        (name, etag): (&str, &str),
        request: &impl Retryable,
        delete: bool,
    ) -> Result<pb::Customer> {
        caller.require(Scope::Write)?;
        caller.organization()?;
        let id = names::parse_customer(name).map_err(|v| v.under("name"))?;
        let settings = &self.hub.customers;
        let response = idempotent(&self.hub, caller, request, async |tx| {
            let (seen, access) =
                app::set_state(tx, settings, caller, (&id, name, etag), delete).await?;
            Ok(customer_to_pb(&seen, access))
        })
        .await?;
        tracing::info!(customer = %response.name, deleted = delete, "customer state changed");
        Ok(response)
    }
}
