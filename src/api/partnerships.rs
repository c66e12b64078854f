//! `liaison.v1.PartnershipService`: proposing, accepting and ending partnerships.

use tonic::{Request, Response, Status};

use super::convert::{period_from_pb, relationship_from_pb, report_date, update_paths};
use super::write::{Retryable, idempotent};
use super::{Caller, Hub, caller_of};
use crate::app::partnerships as app;
use crate::app::scorecards;
use crate::domain::calendar::Zone;
use crate::domain::error::{Error, Result, Violations};
use crate::domain::names;
use crate::domain::{PartnershipAction, Reason, Relationship, Scope, Slug};
use crate::feed::render::{partnership_to_pb, scorecard_to_pb};
use crate::pb::{self, partnership_service_server::PartnershipService};
use crate::store::{Page, PartnershipFilter};

#[derive(Clone)]
pub struct PartnershipApi {
    hub: Hub,
}

impl PartnershipApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
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

/// The recipient, relationship and message a proposal carries, validated.
fn proposal_from_pb(
    input: &pb::Partnership,
    proposer: &Slug,
) -> Result<(Slug, Relationship, Reason)> {
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
    if recipient.as_ref() == Some(proposer) {
        v.add(
            "partnership.recipient",
            "must be another organization than your own",
        );
    }
    let (Some(recipient), Some(relationship), Some(message)) = (recipient, relationship, message)
    else {
        return Err(v.into_error());
    };
    v.finish()?;
    Ok((recipient, relationship, message))
}

impl PartnershipApi {
    /// Accept, Decline, Suspend, Resume or EndPartnership of `name`, read at `etag`.
    async fn transition(
        &self,
        caller: &Caller,
        action: PartnershipAction,
        (name, etag): (&str, &str),
        reason: &str,
        request: &impl Retryable,
    ) -> Result<pb::Partnership> {
        caller.require(Scope::Admin)?;
        caller.organization()?;
        let id = names::parse_partnership(name).map_err(|v| v.under("name"))?;
        let reason = Reason::parse(reason).map_err(|v| v.under("reason"))?;
        let response = idempotent(&self.hub, caller, request, async |tx| {
            let p = app::transition(tx, caller, (&id, name, etag), action, reason).await?;
            Ok(partnership_to_pb(&p))
        })
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
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let proposer = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.partnership.clone().unwrap_or_default();
        let (recipient, relationship, message) = proposal_from_pb(&input, &proposer.slug)?;
        let partnership =
            app::proposal(&self.hub.store, &caller, &recipient, relationship, message).await?;
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            app::propose(tx, &partnership).await?;
            Ok(partnership_to_pb(&partnership))
        })
        .await?;
        tracing::info!(partnership = %response.name, "partnership proposed");
        Ok(Response::new(response))
    }

    async fn get_partnership(
        &self,
        request: Request<pb::GetPartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let name = &request.get_ref().name;
        let id = names::parse_partnership(name).map_err(|v| v.under("name"))?;
        let p = app::get(&self.hub.store, &caller, &id, name).await?;
        Ok(Response::new(partnership_to_pb(&p)))
    }

    async fn list_partnerships(
        &self,
        request: Request<pb::ListPartnershipsRequest>,
    ) -> Result<Response<pb::ListPartnershipsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let r = request.into_inner();
        let filter = PartnershipFilter {
            state: state_filter(r.state)?,
        };
        let query = format!("partnerships:{}", r.state);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page {
            items: found,
            next_after: next,
        } = app::list(&self.hub.store, &caller, filter, at).await?;
        Ok(Response::new(pb::ListPartnershipsResponse {
            partnerships: found.iter().map(partnership_to_pb).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn accept_partnership(
        &self,
        request: Request<pb::AcceptPartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let t = (r.name.as_str(), r.etag.as_str());
        let response = self
            .transition(&caller, PartnershipAction::Accept, t, "", &r)
            .await?;
        Ok(Response::new(response))
    }

    async fn decline_partnership(
        &self,
        request: Request<pb::DeclinePartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let t = (r.name.as_str(), r.etag.as_str());
        let response = self
            .transition(&caller, PartnershipAction::Decline, t, &r.reason, &r)
            .await?;
        Ok(Response::new(response))
    }

    async fn suspend_partnership(
        &self,
        request: Request<pb::SuspendPartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let t = (r.name.as_str(), r.etag.as_str());
        let response = self
            .transition(&caller, PartnershipAction::Suspend, t, &r.reason, &r)
            .await?;
        Ok(Response::new(response))
    }

    async fn resume_partnership(
        &self,
        request: Request<pb::ResumePartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let t = (r.name.as_str(), r.etag.as_str());
        let response = self
            .transition(&caller, PartnershipAction::Resume, t, "", &r)
            .await?;
        Ok(Response::new(response))
    }

    async fn end_partnership(
        &self,
        request: Request<pb::EndPartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let t = (r.name.as_str(), r.etag.as_str());
        let response = self
            .transition(&caller, PartnershipAction::End, t, &r.reason, &r)
            .await?;
        Ok(Response::new(response))
    }

    async fn update_partnership(
        &self,
        request: Request<pb::UpdatePartnershipRequest>,
    ) -> Result<Response<pb::Partnership>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        caller.organization()?;
        let r = request.into_inner();
        let input = r.partnership.clone().unwrap_or_default();
        let id = names::parse_partnership(&input.name).map_err(|v| v.under("partnership.name"))?;
        let populated: Vec<&str> = [("reporting_time_zone", !input.reporting_time_zone.is_empty())]
            .into_iter()
            .filter_map(|(f, set)| set.then_some(f))
            .collect();
        update_paths(r.update_mask.as_ref(), &["reporting_time_zone"], &populated)?;
        let zone = Zone::parse(&input.reporting_time_zone)
            .map_err(|m| Error::invalid("partnership.reporting_time_zone", m))?;
        let target = (&id, input.name.as_str(), input.etag.as_str());
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            let p = app::update(tx, &caller, target, zone).await?;
            Ok(partnership_to_pb(&p))
        })
        .await?;
        tracing::info!(partnership = %response.name, time_zone = %response.reporting_time_zone, "partnership updated");
        Ok(Response::new(response))
    }

    async fn get_partnership_scorecard(
        &self,
        request: Request<pb::GetPartnershipScorecardRequest>,
    ) -> Result<Response<pb::PartnershipScorecard>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("name", names::parse_partnership(&r.name));
        let period = match period_from_pb(r.period) {
            Ok(p) => Some(p),
            Err(m) => {
                v.add("period", m);
                None
            }
        };
        let date = if r.date.is_empty() {
            None
        } else {
            v.check("date", report_date(&r.date))
        };
        let (Some(id), Some(period)) = (id, period) else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let s = scorecards::scorecard(
            &self.hub.store,
            &self.hub.workflows,
            &caller,
            (&id, &r.name),
            period,
            date,
        )
        .await?;
        Ok(Response::new(scorecard_to_pb(&s)))
    }
}
