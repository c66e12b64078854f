//! `liaison.v1.InteractionService`: what happened with a customer.

use jiff::{SignedDuration, Timestamp};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::parse_timestamp;
use super::customers::{visible, visible_in};
use super::write::idempotent;
use super::{Caller, Hub};
use crate::domain::customer;
use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::event::EventType;
use crate::domain::filter::{self, Comparison, Op};
use crate::domain::interaction::{
    self, Direction, Interaction, InteractionType, InteractionVisibility, Money,
};
use crate::domain::names;
use crate::domain::{Scope, now};
use crate::feed::customers::customer_viewers;
use crate::feed::draft::{Draft, emit};
use crate::feed::render::timestamp;
use crate::pb::{self, event::Payload, interaction_service_server::InteractionService};
use crate::store::InteractionFilter;

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

fn type_to_pb(t: InteractionType) -> pb::InteractionType {
    use pb::InteractionType as P;
    match t {
        InteractionType::Call => P::Call,
        InteractionType::Meeting => P::Meeting,
        InteractionType::Email => P::Email,
        InteractionType::Purchase => P::Purchase,
        InteractionType::Complaint => P::Complaint,
        InteractionType::Incident => P::Incident,
        InteractionType::Note => P::Note,
    }
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

fn interaction_to_pb(i: &Interaction) -> pb::Interaction {
    pb::Interaction {
        name: names::interaction(&i.customer_id, &i.id),
        r#type: type_to_pb(i.kind) as i32,
        occur_time: timestamp(i.occur_time),
        organization: names::organization(&i.organization.slug),
        member: i
            .member_id
            .as_ref()
            .map(|m| names::member(&i.organization.slug, m))
            .unwrap_or_default(),
        channel: i.channel.clone(),
        direction: match i.direction {
            Direction::Unspecified => pb::Direction::Unspecified,
            Direction::Inbound => pb::Direction::Inbound,
            Direction::Outbound => pb::Direction::Outbound,
        } as i32,
        summary: i.summary.clone(),
        body: i.body.clone(),
        amount: i.amount.as_ref().map(|m| pb::Money {
            currency_code: m.currency.clone(),
            units: m.units,
            nanos: m.nanos,
        }),
        attributes: i.attributes.clone().into_iter().collect(),
        visibility: match i.visibility {
            InteractionVisibility::Organization => pb::InteractionVisibility::Organization,
            InteractionVisibility::Shared => pb::InteractionVisibility::Shared,
        } as i32,
        create_time: timestamp(i.create_time),
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

#[tonic::async_trait]
impl InteractionService for InteractionApi {
    async fn log_interaction(
        &self,
        request: Request<pb::LogInteractionRequest>,
    ) -> Result<Response<pb::Interaction>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
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
            return Err(v.into_error().into());
        };
        v.finish()?;
        if let Some(member) = &member_id
            && self.hub.store.member(&org.id, member).await?.is_none()
        {
            return Err(Error::NotFound(format!("member {:?}", input.member)).into());
        }
        let interaction = Interaction {
            id: Uuid::now_v7().to_string(),
            customer_id: customer_id.clone(),
            organization: org.clone(),
            kind,
            occur_time,
            member_id,
            channel,
            direction,
            summary,
            body,
            amount,
            attributes,
            visibility,
            create_time: now(),
        };
        let response = idempotent(
            &self.hub,
            &caller,
            "LogInteraction",
            &request.request_id,
            &request,
            async |tx| {
                let (seen, _) = visible_in(tx, &org, &customer_id, &request.parent).await?;
                if seen.customer.state != crate::domain::customer::RecordState::Active {
                    return Err(Error::failed_precondition(
                        "CUSTOMER_NOT_ACTIVE",
                        format!("{} is not active", request.parent),
                    ));
                }
                tx.insert_interaction(&interaction).await?;
                let pb = interaction_to_pb(&interaction);
                for viewer in customer_viewers(tx, &customer_id).await? {
                    if interaction.visible_to(&viewer) {
                        let mut draft = Draft::new(
                            EventType::InteractionLogged,
                            pb.name.clone(),
                            Payload::Interaction(pb.clone()),
                        );
                        draft.member.clone_from(&pb.member);
                        emit(tx, &viewer, draft);
                    }
                }
                Ok(pb)
            },
        )
        .await?;
        tracing::info!(interaction = %response.name, "interaction logged");
        Ok(Response::new(response))
    }

    async fn get_interaction(
        &self,
        request: Request<pb::GetInteractionRequest>,
    ) -> Result<Response<pb::Interaction>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let name = &request.get_ref().name;
        let (customer_id, id) = names::parse_interaction(name).map_err(|v| v.under("name"))?;
        let missing = || Error::NotFound(format!("interaction {name:?}"));
        visible(
            &self.hub.store,
            org,
            &customer_id,
            &names::customer(&customer_id),
        )
        .await
        .map_err(|_| missing())?;
        let interaction = self
            .hub
            .store
            .interaction(&customer_id, &id)
            .await?
            .filter(|i| i.visible_to(&org.id))
            .ok_or_else(missing)?;
        Ok(Response::new(interaction_to_pb(&interaction)))
    }

    async fn list_interactions(
        &self,
        request: Request<pb::ListInteractionsRequest>,
    ) -> Result<Response<pb::ListInteractionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let r = request.get_ref();
        let customer_id = names::parse_customer(&r.parent).map_err(|v| v.under("parent"))?;
        let filter = parse_filter(&r.filter)?;
        visible(&self.hub.store, org, &customer_id, &r.parent).await?;
        let page = self
            .hub
            .pages
            .open(
                &caller,
                r.page_size,
                &r.page_token,
                &format!("interactions:{customer_id}:{}", r.filter),
            )
            .await?;
        let after = match page.after.as_deref() {
            None => None,
            Some(cursor) => {
                let bad = || Error::invalid("page_token", "is not a token this list returned");
                let (time, id) = cursor.split_once(':').ok_or_else(bad)?;
                Some((time.parse::<i64>().map_err(|_| bad())?, id.to_owned()))
            }
        };
        let found = self
            .hub
            .store
            .interactions(
                &customer_id,
                &org.id,
                &filter,
                after.as_ref().map(|(t, id)| (*t, id.as_str())),
                page.size,
            )
            .await?;
        Ok(Response::new(pb::ListInteractionsResponse {
            interactions: found
                .items
                .iter()
                .filter(|i| i.visible_to(&org.id))
                .map(interaction_to_pb)
                .collect(),
            next_page_token: page.next_token(found.next_after),
        }))
    }
}
