//! `liaison.v1.SharingService`: grants, customer matches and access requests.

use jiff::{SignedDuration, Timestamp};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::customers::{visible, visible_in};
use super::write::{Target, idempotent};
use super::{Caller, Hub};
use crate::domain::customer::RecordState;
use crate::domain::customer::{FieldSet, PhoneNumber};
use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::event::EventType;
use crate::domain::names;
use crate::domain::visibility::{Access, AccessLevel};
use crate::domain::{EmailAddress, OrgRef, Reason, Scope, now};
use crate::feed::draft::{Draft, emit, emit_to};
use crate::feed::render::timestamp;
use crate::pb::{self, event::Payload, sharing_service_server::SharingService};
use crate::store::{AccessRequest, CustomerMatch, Grant, MatchRule, RequestState, Tx};

/// How long a match handle can be turned into an access request.
const MATCH_VALIDITY: SignedDuration = SignedDuration::from_hours(24);

#[derive(Clone)]
pub struct SharingApi {
    hub: Hub,
}

impl SharingApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

fn level_from_pb(raw: i32) -> Result<AccessLevel, FieldViolation> {
    match pb::AccessLevel::try_from(raw) {
        Ok(pb::AccessLevel::Read) => Ok(AccessLevel::Read),
        Ok(pb::AccessLevel::ReadWrite) => Ok(AccessLevel::ReadWrite),
        Ok(pb::AccessLevel::Unspecified) => Err(FieldViolation::required("")),
        _ => Err(FieldViolation::new(
            "",
            "must be ACCESS_LEVEL_READ or ACCESS_LEVEL_READ_WRITE",
        )),
    }
}

fn level_to_pb(level: AccessLevel) -> pb::AccessLevel {
    match level {
        AccessLevel::Read => pb::AccessLevel::Read,
        AccessLevel::ReadWrite => pb::AccessLevel::ReadWrite,
    }
}

fn field_names(fields: FieldSet) -> Vec<String> {
    if fields == FieldSet::ALL {
        vec![]
    } else {
        fields.iter().map(|f| f.as_str().to_owned()).collect()
    }
}

fn grant_to_pb(g: &Grant) -> pb::Grant {
    use pb::grant::State;
    pb::Grant {
        name: names::grant(&g.customer_id, &g.id),
        grantee: names::organization(&g.grantee.slug),
        level: level_to_pb(g.level) as i32,
        fields: field_names(g.fields),
        partnership: names::partnership(&g.partnership_id),
        state: if g.revoke_time.is_some() {
            State::Revoked
        } else {
            State::Active
        } as i32,
        effective: g.revoke_time.is_none() && g.partnership_active,
        create_time: timestamp(g.create_time),
        revoke_time: g.revoke_time.and_then(timestamp),
    }
}

/// An access request as `viewer_id` may see it: the requester learns the customer
/// only once access is approved.
fn request_to_pb(r: &AccessRequest, viewer_id: &str) -> pb::AccessRequest {
    use pb::access_request::State;
    let shows_customer = r.owner.id == viewer_id || r.state == RequestState::Approved;
    pb::AccessRequest {
        name: names::access_request(&r.id),
        requester: names::organization(&r.requester.slug),
        owner: names::organization(&r.owner.slug),
        r#match: names::customer_match(&r.match_id),
        level: level_to_pb(r.level) as i32,
        fields: field_names(r.fields),
        reason: r.reason.clone(),
        state: match r.state {
            RequestState::Pending => State::Pending,
            RequestState::Approved => State::Approved,
            RequestState::Declined => State::Declined,
        } as i32,
        customer: if shows_customer {
            names::customer(&r.customer_id)
        } else {
            String::new()
        },
        grant: r
            .grant_id
            .as_ref()
            .filter(|_| shows_customer)
            .map(|g| names::grant(&r.customer_id, g))
            .unwrap_or_default(),
        decision_reason: r.decision_reason.clone(),
        create_time: timestamp(r.create_time),
        decide_time: r.decide_time.and_then(timestamp),
    }
}

/// Grants `customer_id` to `grantee` on behalf of its owner `owner`, which must have
/// an ACTIVE partnership with it.
async fn grant(
    tx: &mut Tx,
    owner: &OrgRef,
    customer_id: &str,
    grantee: OrgRef,
    level: AccessLevel,
    fields: FieldSet,
) -> Result<Grant> {
    let partnership = tx
        .active_partnership_between(&owner.id, &grantee.id)
        .await?
        .ok_or_else(|| {
            Error::failed_precondition(
                "NO_ACTIVE_PARTNERSHIP",
                format!(
                    "{} and {} have no active partnership to share customers through",
                    owner.slug, grantee.slug
                ),
            )
        })?;
    let g = Grant {
        id: Uuid::now_v7().to_string(),
        customer_id: customer_id.to_owned(),
        grantee,
        partnership_id: partnership,
        level,
        fields,
        create_time: now(),
        revoke_time: None,
        partnership_active: true,
    };
    tx.insert_grant(&g).await?;
    grant_event(tx, EventType::GrantCreated, owner, &g);
    Ok(g)
}

/// Tells the grant's owner and grantee about it.
fn grant_event(tx: &mut Tx, event_type: EventType, owner: &OrgRef, g: &Grant) {
    let pb = grant_to_pb(g);
    emit_to(tx, &[owner, &g.grantee], || {
        Draft::new(event_type, pb.name.clone(), Payload::Grant(pb.clone()))
    });
}

/// Tells the requester and the organization asked about an access request, each with
/// its own view of it.
fn request_event(tx: &mut Tx, event_type: EventType, r: &AccessRequest) {
    for org in [&r.requester, &r.owner] {
        let pb = request_to_pb(r, &org.id);
        let draft = Draft::new(event_type, pb.name.clone(), Payload::AccessRequest(pb));
        emit(tx, &org.id, draft);
    }
}

fn owner_only(access: Access) -> Result<()> {
    if access.is_owner() {
        Ok(())
    } else {
        Err(Error::PermissionDenied {
            reason: "NOT_CUSTOMER_OWNER",
            message: "only the customer's owner may change its grants".into(),
        })
    }
}

impl SharingApi {
    async fn decide(
        &self,
        caller: &Caller,
        t: Target<'_>,
        approve: bool,
        reason: &str,
        request: &impl prost::Message,
    ) -> Result<pb::AccessRequest> {
        let name = t.name;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let id = names::parse_access_request(name).map_err(|v| v.under("name"))?;
        let reason = Reason::parse(reason).map_err(|v| v.under("reason"))?;
        let response = idempotent(
            &self.hub,
            caller,
            t.method,
            t.request_id,
            request,
            async |tx| {
                let mut r = tx
                    .access_request(&org.id, &id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("access request {name:?}")))?;
                if r.owner.id != org.id {
                    return Err(Error::permission_denied(
                        "only the organization asked may decide an access request",
                    ));
                }
                if r.state != RequestState::Pending {
                    return Err(Error::failed_precondition(
                        "ACCESS_REQUEST_DECIDED",
                        format!("{name} was already {}", r.state.as_str()),
                    ));
                }
                if approve {
                    let customer = tx
                        .customer(&org.id, &r.customer_id)
                        .await?
                        .filter(|c| c.customer.state == RecordState::Active)
                        .ok_or_else(|| {
                            Error::failed_precondition(
                                "CUSTOMER_NOT_ACTIVE",
                                "the customer asked for is no longer active",
                            )
                        })?;
                    let g = grant(
                        tx,
                        &org,
                        &customer.customer.id,
                        r.requester.clone(),
                        r.level,
                        r.fields,
                    )
                    .await?;
                    r.grant_id = Some(g.id);
                    r.state = RequestState::Approved;
                } else {
                    r.state = RequestState::Declined;
                    r.decision_reason = reason.as_str().to_owned();
                }
                r.decide_time = Some(now());
                if !tx.decide_access_request(&r).await? {
                    return Err(Error::StaleEtag(name.to_owned()));
                }
                request_event(
                    tx,
                    if approve {
                        EventType::AccessRequestApproved
                    } else {
                        EventType::AccessRequestDeclined
                    },
                    &r,
                );
                Ok(request_to_pb(&r, &org.id))
            },
        )
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
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.grant.clone().unwrap_or_default();
        let mut v = Violations::new();
        let customer_id = v.check("parent", names::parse_customer(&request.parent));
        let grantee = v.check("grant.grantee", names::parse_organization(&input.grantee));
        let level = v.check("grant.level", level_from_pb(input.level));
        let fields = v.check("grant.fields", FieldSet::parse(&input.fields));
        if grantee.as_ref() == Some(&org.slug) {
            v.add(
                "grant.grantee",
                "must be another organization than the owner",
            );
        }
        let (Some(customer_id), Some(grantee), Some(level), Some(fields)) =
            (customer_id, grantee, level, fields)
        else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        if fields == FieldSet::NONE {
            return Err(Error::invalid("grant.fields", "must name at least one field").into());
        }
        let grantee_name = names::organization(&grantee);
        let grantee = match self.hub.store.organization(&grantee).await? {
            Some(o) => OrgRef {
                id: o.id,
                slug: o.slug,
            },
            None => return Err(Error::NotFound(format!("organization {grantee_name:?}")).into()),
        };
        let response = idempotent(
            &self.hub,
            &caller,
            "CreateGrant",
            &request.request_id,
            &request,
            async |tx| {
                let (seen, access) = visible_in(tx, &org, &customer_id, &request.parent).await?;
                owner_only(access)?;
                if seen.customer.state != RecordState::Active {
                    return Err(Error::failed_precondition(
                        "CUSTOMER_NOT_ACTIVE",
                        format!("{} is not active", request.parent),
                    ));
                }
                let g = grant(tx, &org, &customer_id, grantee.clone(), level, fields).await?;
                Ok(grant_to_pb(&g))
            },
        )
        .await?;
        tracing::info!(grant = %response.name, grantee = %response.grantee, "customer granted");
        Ok(Response::new(response))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
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
                &format!("grants:{id}:{}", r.show_revoked),
            )
            .await?;
        let only = (!access.is_owner()).then_some(org.id.as_str());
        let found = self
            .hub
            .store
            .grants(&id, only, r.show_revoked, page.after.as_deref(), page.size)
            .await?;
        Ok(Response::new(pb::ListGrantsResponse {
            grants: found.items.iter().map(grant_to_pb).collect(),
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::Grant>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let (customer_id, grant_id) =
            names::parse_grant(&request.name).map_err(|v| v.under("name"))?;
        let name = request.name.clone();
        let response = idempotent(
            &self.hub,
            &caller,
            "RevokeGrant",
            &request.request_id,
            &request,
            async |tx| {
                let (_, access) =
                    visible_in(tx, &org, &customer_id, &names::customer(&customer_id)).await?;
                owner_only(access)?;
                let mut g = tx
                    .grant(&customer_id, &grant_id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("grant {name:?}")))?;
                if g.revoke_time.is_some() {
                    return Err(Error::failed_precondition(
                        "GRANT_REVOKED",
                        format!("{name} is already revoked"),
                    ));
                }
                let now = now();
                tx.revoke_grant(&grant_id, now).await?;
                g.revoke_time = Some(now);
                grant_event(tx, EventType::GrantRevoked, &org, &g);
                Ok(grant_to_pb(&g))
            },
        )
        .await?;
        tracing::info!(grant = %response.name, "grant revoked");
        Ok(Response::new(response))
    }

    async fn match_customer(
        &self,
        request: Request<pb::MatchCustomerRequest>,
    ) -> Result<Response<pb::MatchCustomerResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?.clone();
        let r = request.into_inner();
        let secret = &self.hub.customers.secret;
        let (kind, key, rule) = match (r.email.is_empty(), r.phone.is_empty()) {
            (false, true) => {
                let email = EmailAddress::parse(&r.email).map_err(|v| v.under("email"))?;
                ("email", secret.email_key(&email), MatchRule::SameEmail)
            }
            (true, false) => {
                let phone = PhoneNumber::parse(&r.phone, self.hub.customers.region)
                    .map_err(|v| v.under("phone"))?;
                ("phone", secret.phone_key(&phone), MatchRule::SamePhone)
            }
            _ => {
                return Err(Error::invalid("email", "set exactly one of email and phone").into());
            }
        };
        let only = if r.organization.is_empty() {
            None
        } else {
            Some(names::parse_organization(&r.organization).map_err(|v| v.under("organization"))?)
        };
        let holders = self.hub.store.holders_of_key(kind, &key, &org.id).await?;
        let expire_time: Timestamp = now() + MATCH_VALIDITY;
        let mut matches = vec![];
        let mut tx = self.hub.store.begin().await?;
        let mut answered = std::collections::HashSet::new();
        for (owner_id, owner_slug, customer_id) in holders {
            if only.as_ref().is_some_and(|o| o.as_str() != owner_slug)
                || answered.contains(&owner_id)
                || tx
                    .active_partnership_between(&org.id, &owner_id)
                    .await?
                    .is_none()
            {
                continue;
            }
            let m = CustomerMatch {
                id: Uuid::now_v7().to_string(),
                requester_id: org.id.clone(),
                owner_id: owner_id.clone(),
                customer_id,
                rule: rule.as_str().to_owned(),
                expire_time,
            };
            tx.insert_match(&m).await?;
            matches.push(pb::CustomerMatch {
                organization: format!("organizations/{owner_slug}"),
                r#match: names::customer_match(&m.id),
                rule: super::customers::rule_to_pb(rule) as i32,
                expire_time: timestamp(expire_time),
            });
            answered.insert(owner_id);
        }
        // Old handles are dropped as new ones are made.
        tx.expire_matches(now()).await?;
        tx.commit().await?;
        Ok(Response::new(pb::MatchCustomerResponse { matches }))
    }

    async fn create_access_request(
        &self,
        request: Request<pb::CreateAccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.access_request.clone().unwrap_or_default();
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
            return Err(v.into_error().into());
        };
        v.finish()?;
        let response = idempotent(
            &self.hub,
            &caller,
            "CreateAccessRequest",
            &request.request_id,
            &request,
            async |tx| {
                let now = now();
                let m = tx
                    .live_match(&org.id, &match_id, now)
                    .await?
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "match {:?} (matches are valid for 24 hours)",
                            input.r#match
                        ))
                    })?;
                let owner = tx.org_ref(&m.owner_id).await?;
                if tx
                    .active_partnership_between(&org.id, &owner.id)
                    .await?
                    .is_none()
                {
                    return Err(Error::failed_precondition(
                        "NO_ACTIVE_PARTNERSHIP",
                        format!("you have no active partnership with {}", owner.slug),
                    ));
                }
                let r = AccessRequest {
                    id: Uuid::now_v7().to_string(),
                    requester: org.clone(),
                    owner,
                    customer_id: m.customer_id,
                    match_id: m.id,
                    level,
                    fields,
                    reason: reason.as_str().to_owned(),
                    state: RequestState::Pending,
                    decision_reason: String::new(),
                    grant_id: None,
                    create_time: now,
                    decide_time: None,
                };
                tx.insert_access_request(&r).await?;
                request_event(tx, EventType::AccessRequestCreated, &r);
                Ok(request_to_pb(&r, &org.id))
            },
        )
        .await?;
        tracing::info!(access_request = %response.name, owner = %response.owner, "access requested");
        Ok(Response::new(response))
    }

    async fn list_access_requests(
        &self,
        request: Request<pb::ListAccessRequestsRequest>,
    ) -> Result<Response<pb::ListAccessRequestsResponse>, Status> {
        use pb::list_access_requests_request::Direction;
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let r = request.get_ref();
        let incoming = match Direction::try_from(r.direction) {
            Ok(Direction::Unspecified | Direction::Incoming) => true,
            Ok(Direction::Outgoing) => false,
            Err(_) => return Err(Error::invalid("direction", "is not a known direction").into()),
        };
        let state = match pb::access_request::State::try_from(r.state) {
            Ok(pb::access_request::State::Unspecified) => None,
            Ok(pb::access_request::State::Pending) => Some(RequestState::Pending),
            Ok(pb::access_request::State::Approved) => Some(RequestState::Approved),
            Ok(pb::access_request::State::Declined) => Some(RequestState::Declined),
            Err(_) => return Err(Error::invalid("state", "is not a known state").into()),
        };
        let page = self
            .hub
            .pages
            .open(
                &caller,
                r.page_size,
                &r.page_token,
                &format!("access_requests:{incoming}:{}", r.state),
            )
            .await?;
        let found = self
            .hub
            .store
            .access_requests(&org.id, incoming, state, page.after.as_deref(), page.size)
            .await?;
        Ok(Response::new(pb::ListAccessRequestsResponse {
            access_requests: found
                .items
                .iter()
                .map(|a| request_to_pb(a, &org.id))
                .collect(),
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn approve_access_request(
        &self,
        request: Request<pb::ApproveAccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let response = self
            .decide(
                &caller,
                Target {
                    method: "ApproveAccessRequest",
                    name: &r.name,
                    etag: "",
                    request_id: &r.request_id,
                },
                true,
                "",
                &r,
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn decline_access_request(
        &self,
        request: Request<pb::DeclineAccessRequestRequest>,
    ) -> Result<Response<pb::AccessRequest>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let response = self
            .decide(
                &caller,
                Target {
                    method: "DeclineAccessRequest",
                    name: &r.name,
                    etag: "",
                    request_id: &r.request_id,
                },
                false,
                &r.reason,
                &r,
            )
            .await?;
        Ok(Response::new(response))
    }
}
