//! `liaison.v1.InteractionService`: what happened with a customer.

use jiff::{SignedDuration, Timestamp};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::parse_timestamp;
use super::write::idempotent;
use super::{Hub, caller_of};
use crate::app::interactions as app;
use crate::domain::customer;
use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::filter::{self, Comparison, Op};
use crate::domain::ids::MemberId;
use crate::domain::interaction::{
    self, Direction, Interaction, InteractionType, InteractionVisibility, Money,
};
use crate::domain::names;
use crate::domain::{OrgRef, Scope, now};
use crate::feed::render::interaction_to_pb;
use crate::pb::{self, interaction_service_server::InteractionService};
use crate::store::{InteractionFilter, Page, interaction_cursor};

/// How far ahead an interaction may be dated (clock skew, time zones).
const MAX_FUTURE: SignedDuration = SignedDuration::from_hours(24);

#[derive(Clone)]
pub struct InteractionApi {
    hub: Hub,
}

impl InteractionApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

fn type_from_pb(raw: i32) -> Result<InteractionType, FieldViolation> {
    use pb::InteractionType as P;
    Ok(match P::try_from(raw) {
        Ok(P::Call) => InteractionType::Call,
        Ok(P::Meeting) => InteractionType::Meeting,
        Ok(P::Email) => InteractionType::Email,
        Ok(P::Purchase) => InteractionType::Purchase,
        Ok(P::Complaint) => InteractionType::Complaint,
        Ok(P::Incident) => InteractionType::Incident,
        Ok(P::Note) => InteractionType::Note,
        Ok(P::Unspecified) => return Err(FieldViolation::required("")),
        Err(_) => {
            return Err(FieldViolation::new(
                "",
                format!("{raw} is not an interaction type"),
            ));
        }
    })
}

fn visibility_from_pb(raw: i32) -> Result<InteractionVisibility, FieldViolation> {
    match pb::InteractionVisibility::try_from(raw) {
        Ok(pb::InteractionVisibility::Organization) => Ok(InteractionVisibility::Organization),
        Ok(pb::InteractionVisibility::Shared) => Ok(InteractionVisibility::Shared),
        Ok(pb::InteractionVisibility::Unspecified) => Err(FieldViolation::new(
            "",
            "is required: ORGANIZATION or SHARED",
        )),
        Err(_) => Err(FieldViolation::new(
            "",
            format!("{raw} is not a visibility"),
        )),
    }
}

fn direction_from_pb(raw: i32) -> Result<Direction, FieldViolation> {
    match pb::Direction::try_from(raw) {
        Ok(pb::Direction::Unspecified) => Ok(Direction::Unspecified),
        Ok(pb::Direction::Inbound) => Ok(Direction::Inbound),
        Ok(pb::Direction::Outbound) => Ok(Direction::Outbound),
        Err(_) => Err(FieldViolation::new("", format!("{raw} is not a direction"))),
    }
}

fn parse_filter(raw: &str) -> Result<InteractionFilter> {
    let mut f = InteractionFilter::default();
    for Comparison { field, op, value } in filter::parse(raw)? {
        let bad = |m: &str| Error::invalid("filter", format!("{field}: {m}"));
        match (field.as_str(), op) {
            ("type", Op::Eq) => {
                f.kind = Some(
                    InteractionType::parse(&value.to_lowercase()).ok_or_else(|| {
                        bad("must be CALL, MEETING, EMAIL, PURCHASE, COMPLAINT, INCIDENT or NOTE")
                    })?,
                )
            }
            ("visibility", Op::Eq) => {
                f.visibility = Some(
                    InteractionVisibility::parse(&value.to_lowercase())
                        .ok_or_else(|| bad("must be ORGANIZATION or SHARED"))?,
                )
            }
            ("occur_time", op @ (Op::Gt | Op::Ge | Op::Lt | Op::Le)) => {
                let t: Timestamp = value
                    .parse()
                    .map_err(|_| bad("needs an RFC 3339 time such as \"2026-01-01T00:00:00Z\""))?;
                let micro = SignedDuration::from_micros(1);
                match op {
                    Op::Ge => f.from = Some(t),
                    Op::Gt => f.from = Some(t + micro),
                    Op::Lt => f.until = Some(t),
                    _ => f.until = Some(t + micro),
                }
            }
            ("type" | "visibility", _) => return Err(bad("supports = only")),
            ("occur_time", _) => return Err(bad("supports < <= > >= only")),
            _ => {
                return Err(Error::invalid(
                    "filter",
                    format!("unknown field {field:?}; use type, visibility or occur_time"),
                ));
            }
        }
    }
    Ok(f)
}

/// The interaction a LogInteraction request carries, validated, as `org` logs it.
fn interaction_from_pb(request: &pb::LogInteractionRequest, org: &OrgRef) -> Result<Interaction> {
    let input = request.interaction.clone().unwrap_or_default();
    let mut v = Violations::new();
    let customer_id = v.check("parent", names::parse_customer(&request.parent));
    let kind = v.check("interaction.type", type_from_pb(input.r#type));
    let occur_time = match &input.occur_time {
        None => {
            v.required("interaction.occur_time");
            None
        }
        Some(t) => v
            .check("interaction.occur_time", parse_timestamp(t))
            .filter(|t| {
                let ok = *t <= now() + MAX_FUTURE;
                if !ok {
                    v.add(
                        "interaction.occur_time",
                        "must not be more than a day ahead",
                    );
                }
                ok
            }),
    };
    let member_id = if input.member.is_empty() {
        Some(None)
    } else {
        match names::parse_member(&input.member) {
            Ok((slug, id)) if slug == org.slug => Some(Some(id)),
            Ok(_) => {
                v.add(
                    "interaction.member",
                    "must be a member of your organization",
                );
                None
            }
            Err(e) => {
                v.check::<()>("interaction.member", Err(e));
                None
            }
        }
    };
    let channel = v
        .check("interaction.channel", interaction::channel(&input.channel))
        .unwrap_or_default();
    let direction = v.check("interaction.direction", direction_from_pb(input.direction));
    let summary = v
        .check("interaction.summary", interaction::summary(&input.summary))
        .unwrap_or_default();
    let body = v
        .check("interaction.body", interaction::body(&input.body))
        .unwrap_or_default();
    let amount = match &input.amount {
        None => Some(None),
        Some(m) => v
            .check(
                "interaction.amount",
                Money::new(&m.currency_code, m.units, m.nanos),
            )
            .map(Some),
    };
    let attributes = customer::attributes(&mut v, "interaction.attributes", &input.attributes);
    let visibility = v.check(
        "interaction.visibility",
        visibility_from_pb(input.visibility),
    );
    let (
        Some(customer_id),
        Some(kind),
        Some(occur_time),
        Some(member_id),
        Some(direction),
        Some(amount),
        Some(visibility),
    ) = (
        customer_id,
        kind,
        occur_time,
        member_id,
        direction,
        amount,
        visibility,
    )
    else {
        return Err(v.into_error());
    };
    v.finish()?;
    Ok(Interaction {
        id: Uuid::now_v7().to_string(),
        customer_id: customer_id.into_string(),
        organization: org.clone(),
        kind,
        occur_time,
        member_id: member_id.map(MemberId::into_string),
        channel,
        direction,
        summary,
        body,
        amount,
        attributes,
        visibility,
        create_time: now(),
    })
}

#[tonic::async_trait]
impl InteractionService for InteractionApi {
    async fn log_interaction(
        &self,
        request: Request<pb::LogInteractionRequest>,
    ) -> Result<Response<pb::Interaction>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let interaction = interaction_from_pb(&request, &org)?;
        let author = (
            interaction.member_id.as_deref(),
            request
                .interaction
                .as_ref()
                .map_or("", |i| i.member.as_str()),
        );
        app::check_author(&self.hub.store, &caller, author.0, author.1).await?;
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            app::log(tx, &caller, &interaction, &request.parent).await?;
            Ok(interaction_to_pb(&interaction))
        })
        .await?;
        tracing::info!(interaction = %response.name, "interaction logged");
        Ok(Response::new(response))
    }

    async fn get_interaction(
        &self,
        request: Request<pb::GetInteractionRequest>,
    ) -> Result<Response<pb::Interaction>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let name = &request.get_ref().name;
        let (customer_id, id) = names::parse_interaction(name).map_err(|v| v.under("name"))?;
        let interaction = app::get(&self.hub.store, &caller, (&customer_id, &id), name).await?;
        Ok(Response::new(interaction_to_pb(&interaction)))
    }

    async fn list_interactions(
        &self,
        request: Request<pb::ListInteractionsRequest>,
    ) -> Result<Response<pb::ListInteractionsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let r = request.get_ref();
        let customer_id = names::parse_customer(&r.parent).map_err(|v| v.under("parent"))?;
        let filter = parse_filter(&r.filter)?;
        let query = format!("interactions:{customer_id}:{}", r.filter);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let after = match page.after.as_deref() {
            None => None,
            Some(cursor) => Some(interaction_cursor(cursor).ok_or_else(|| {
                Error::invalid("page_token", "is not a token this list returned")
            })?),
        };
        let after = after.as_ref().map(|(t, id)| (*t, id.as_str()));
        let parent = (&customer_id, r.parent.as_str());
        let Page {
            items: found,
            next_after: next,
        } = app::list(&self.hub.store, &caller, parent, &filter, after, page.size).await?;
        Ok(Response::new(pb::ListInteractionsResponse {
            interactions: found.iter().map(interaction_to_pb).collect(),
            next_page_token: page.next_token(next),
        }))
    }
}
