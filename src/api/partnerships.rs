//! `liaison.v1.PartnershipService`: proposing, accepting and ending partnerships.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{check_etag, relationship_from_pb, relationship_to_pb};
use super::write::{Target, idempotent};
use super::{Caller, Hub};
use crate::domain::error::{Error, Result, Violations};
use crate::domain::event::EventType;
use crate::domain::names;
use crate::domain::{OrgRef, Partnership, PartnershipAction, PartnershipState, Reason, Scope, now};
use crate::feed::draft::{Draft, emit_to};
use crate::feed::render::{etag, timestamp};
use crate::pb::{self, event::Payload, partnership_service_server::PartnershipService};
use crate::store::PartnershipFilter;

#[derive(Clone)]
pub struct PartnershipApi {
    hub: Hub,
}

impl PartnershipApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

fn partnership_to_pb(p: &Partnership) -> pb::Partnership {
    use pb::partnership::State;
    let (state, reason) = match &p.state {
        PartnershipState::Proposed => (State::Proposed, ""),
        PartnershipState::Active => (State::Active, ""),
        PartnershipState::Declined { reason } => (State::Declined, reason.as_str()),
        PartnershipState::Suspended { reason, .. } => (State::Suspended, reason.as_str()),
        PartnershipState::Ended { reason, .. } => (State::Ended, reason.as_str()),
    };
    pb::Partnership {
        name: names::partnership(&p.id),
        proposer: names::organization(&p.proposer.slug),
        recipient: names::organization(&p.recipient.slug),
        relationship: relationship_to_pb(p.relationship) as i32,
        message: p.message.as_str().to_owned(),
        state: state as i32,
        state_changed_by: names::organization(&p.state_changed_by.slug),
        state_reason: reason.to_owned(),
        create_time: timestamp(p.create_time),
        update_time: timestamp(p.update_time),
        etag: etag(p.revision),
    }
}

fn state_filter(raw: i32) -> Result<Option<&'static str>> {
    use pb::partnership::State;
    Ok(match State::try_from(raw) {
        Ok(State::Unspecified) => None,
        Ok(State::Proposed) => Some("proposed"),
        Ok(State::Active) => Some("active"),
        Ok(State::Declined) => Some("declined"),
        Ok(State::Suspended) => Some("suspended"),
        Ok(State::Ended) => Some("ended"),
        Err(_) => {
            return Err(Error::invalid(
                "state",
                format!("{raw} is not a known partnership state"),
            ));
        }
    })
}

impl PartnershipApi {
    async fn transition(
        &self,
        caller: &Caller,
        action: PartnershipAction,
        t: Target<'_>,
        reason: &str,
        request: &impl prost::Message,
    ) -> Result<pb::Partnership> {
        caller.require(Scope::Admin)?;
        let actor = caller.organization()?.clone();
        let id = names::parse_partnership(t.name).map_err(|v| v.under("name"))?;
        let reason = Reason::parse(reason).map_err(|v| v.under("reason"))?;
        let response = idempotent(
            &self.hub,
            caller,
            t.method,
            t.request_id,
            request,
            async |tx| {
                let mut p = tx
                    .partnership(&actor.id, &id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("partnership {:?}", t.name)))?;
                check_etag(t.etag, p.revision, t.name)?;
                p.apply(&actor, action, reason, now())?;
                if !tx.update_partnership_state(&mut p).await? {
                    return Err(Error::StaleEtag(t.name.to_owned()));
                }
                let pb = partnership_to_pb(&p);
                let event_type = match action {
                    PartnershipAction::Accept => EventType::PartnershipAccepted,
                    PartnershipAction::Decline => EventType::PartnershipDeclined,
                    PartnershipAction::Suspend => EventType::PartnershipSuspended,
                    PartnershipAction::Resume => EventType::PartnershipResumed,
                    PartnershipAction::End => EventType::PartnershipEnded,
                };
                emit_to(tx, &[&p.proposer, &p.recipient], || {
                    Draft::new(
                        event_type,
                        pb.name.clone(),
                        Payload::Partnership(pb.clone()),
                    )
                });
                Ok(pb)
            },
        )
        .await?;
        tracing::info!(partnership = %response.name, action = action.as_str(), "partnership changed");
        Ok(response)
    }
}

#[tonic::async_trait]
impl PartnershipService for PartnershipApi {
    async fn propose_partnership(
        &self,
        request: Request<pb::ProposePartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Admin)?;
        let proposer = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.partnership.clone().unwrap_or_default();
        let mut v = Violations::new();
        let recipient = v.check(
            "partnership.recipient",
            names::parse_organization(&input.recipient),
        );
        let relationship = v.check(
            "partnership.relationship",
            relationship_from_pb(input.relationship),
        );
        let message = v.check("partnership.message", Reason::parse(&input.message));
        if recipient.as_ref() == Some(&proposer.slug) {
            v.add(
                "partnership.recipient",
                "must be another organization than your own",
            );
        }
        let (Some(recipient), Some(relationship), Some(message)) =
            (recipient, relationship, message)
        else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let recipient_name = names::organization(&recipient);
        let recipient = match self.hub.store.organization(&recipient).await? {
            Some(org) if org.is_active() => OrgRef {
                id: org.id,
                slug: org.slug,
            },
            Some(_) => {
                return Err(Error::failed_precondition(
                    "ORGANIZATION_SUSPENDED",
                    format!("{recipient_name} is suspended"),
                )
                .into());
            }
            None => return Err(Error::NotFound(format!("organization {recipient_name:?}")).into()),
        };
        let now = now();
        let partnership = Partnership {
            id: Uuid::now_v7().to_string(),
            proposer: proposer.clone(),
            recipient,
            relationship,
            message,
            state: PartnershipState::Proposed,
            state_changed_by: proposer,
            create_time: now,
            update_time: now,
            revision: 1,
        };
        let response = idempotent(
            &self.hub,
            &caller,
            "ProposePartnership",
            &request.request_id,
            &request,
            async |tx| {
                tx.insert_partnership(&partnership).await?;
                let pb = partnership_to_pb(&partnership);
                let parties = [&partnership.proposer, &partnership.recipient];
                emit_to(tx, &parties, || {
                    Draft::new(
                        EventType::PartnershipProposed,
                        pb.name.clone(),
                        Payload::Partnership(pb.clone()),
                    )
                });
                Ok(pb)
            },
        )
        .await?;
        tracing::info!(partnership = %response.name, "partnership proposed");
        Ok(Response::new(response))
    }

    async fn get_partnership(
        &self,
        request: Request<pb::GetPartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let name = &request.get_ref().name;
        let id = names::parse_partnership(name).map_err(|v| v.under("name"))?;
        let p = self
            .hub
            .store
            .partnership(&org.id, &id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("partnership {name:?}")))?;
        Ok(Response::new(partnership_to_pb(&p)))
    }

    async fn list_partnerships(
        &self,
        request: Request<pb::ListPartnershipsRequest>,
    ) -> Result<Response<pb::ListPartnershipsResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let filter = PartnershipFilter {
            state: state_filter(request.state)?,
        };
        let query = format!("partnerships:{}", request.state);
        let page = self
            .hub
            .pages
            .open(&caller, request.page_size, &request.page_token, &query)
            .await?;
        let found = self
            .hub
            .store
            .partnerships(&org.id, filter, page.after.as_deref(), page.size)
            .await?;
        Ok(Response::new(pb::ListPartnershipsResponse {
            partnerships: found.items.iter().map(partnership_to_pb).collect(),
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn accept_partnership(
        &self,
        request: Request<pb::AcceptPartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let t = Target {
            method: "AcceptPartnership",
            name: &r.name,
            etag: &r.etag,
            request_id: &r.request_id,
        };
        Ok(Response::new(
            self.transition(&caller, PartnershipAction::Accept, t, "", &r)
                .await?,
        ))
    }

    async fn decline_partnership(
        &self,
        request: Request<pb::DeclinePartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let t = Target {
            method: "DeclinePartnership",
            name: &r.name,
            etag: &r.etag,
            request_id: &r.request_id,
        };
        Ok(Response::new(
            self.transition(&caller, PartnershipAction::Decline, t, &r.reason, &r)
                .await?,
        ))
    }

    async fn suspend_partnership(
        &self,
        request: Request<pb::SuspendPartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let t = Target {
            method: "SuspendPartnership",
            name: &r.name,
            etag: &r.etag,
            request_id: &r.request_id,
        };
        Ok(Response::new(
            self.transition(&caller, PartnershipAction::Suspend, t, &r.reason, &r)
                .await?,
        ))
    }

    async fn resume_partnership(
        &self,
        request: Request<pb::ResumePartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let t = Target {
            method: "ResumePartnership",
            name: &r.name,
            etag: &r.etag,
            request_id: &r.request_id,
        };
        Ok(Response::new(
            self.transition(&caller, PartnershipAction::Resume, t, "", &r)
                .await?,
        ))
    }

    async fn end_partnership(
        &self,
        request: Request<pb::EndPartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let t = Target {
            method: "EndPartnership",
            name: &r.name,
            etag: &r.etag,
            request_id: &r.request_id,
        };
        Ok(Response::new(
            self.transition(&caller, PartnershipAction::End, t, &r.reason, &r)
                .await?,
        ))
    }
}
