//! `liaison.v1.CaseService`: cases between partner organizations, run by workflow
//! templates, with comments, participants, tasks and SLA clocks.
//!
//! Every time here comes from the store's clock (the one the timer worker reads), so
//! SLA behaviour is tested by moving that clock, never by sleeping.

mod show;

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::{check_etag, parse_timestamp};
use super::customers::visible_in;
use super::write::idempotent;
use super::{Caller, Hub};
use crate::domain::case::sla::SlaClock;
use crate::domain::case::timer::{Timer, TimerKind};
use crate::domain::case::workflow::{Refusal, Template};
use crate::domain::case::{
    self, Case, CommentVisibility, HistoryEntry, MAX_ESCALATION_CONTACTS, MAX_PARTICIPANTS,
    Participant, Priority, Task, TaskAction, TaskState,
};
use crate::domain::customer::RecordState;
use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::event::EventType;
use crate::domain::filter::{self, Comparison, Op};
use crate::domain::names;
use crate::domain::text::required;
use crate::domain::{OrgRef, Scope, Slug};
use crate::feed::cases::{record_change, tell_case, tell_comment, tell_task};
use crate::feed::render::{case_to_pb, history_to_pb, task_to_pb};
use crate::pb::{self, case_service_server::CaseService};
use crate::store::{CaseQuery, Tx};
use show::{template_to_pb, view_in};

#[derive(Clone)]
pub struct CaseApi {
    hub: Hub,
}

impl CaseApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }

    fn now(&self) -> Timestamp {
        self.hub.store.clock().now()
    }

    fn template(&self, name: &str) -> Result<&Template> {
        self.hub.workflows.get(name).ok_or_else(|| {
            Error::failed_precondition(
                "TEMPLATE_NOT_LOADED",
                format!("workflow template {name:?} is not loaded on this hub"),
            )
        })
    }

    /// The case, if `org` participates in it; NOT_FOUND otherwise, as if it did not
    /// exist.
    async fn read_case(&self, org: &OrgRef, id: &str, name: &str) -> Result<Case> {
        self.hub
            .store
            .case(id)
            .await?
            .filter(|c| c.participant(&org.id).is_some())
            .ok_or_else(|| Error::NotFound(format!("case {name:?}")))
    }

    async fn show(&self, c: &Case, org: &OrgRef) -> Result<pb::Case> {
        let seen = self.hub.store.customer(&org.id, &c.customer_id).await?;
        Ok(case_to_pb(
            c,
            self.hub.workflows.get(&c.template),
            &org.id,
            seen.as_ref(),
            self.now(),
        ))
    }
}

/// [`CaseApi::read_case`] inside a write transaction, locking the case.
async fn case_in(tx: &mut Tx, org: &OrgRef, id: &str, name: &str) -> Result<Case> {
    tx.case(id)
        .await?
        .filter(|c| c.participant(&org.id).is_some())
        .ok_or_else(|| Error::NotFound(format!("case {name:?}")))
}

/// The text `checked` by its field's rule (`case::title`, `case::body`), or empty
/// after recording why not under `field`.
fn text(v: &mut Violations, field: &str, checked: Result<String, FieldViolation>) -> String {
    v.check(field, checked).unwrap_or_default()
}

fn priority_from_pb(raw: i32) -> Result<Priority, FieldViolation> {
    match pb::CasePriority::try_from(raw) {
        Ok(pb::CasePriority::Low) => Ok(Priority::Low),
        Ok(pb::CasePriority::Normal) => Ok(Priority::Normal),
        Ok(pb::CasePriority::High) => Ok(Priority::High),
        Ok(pb::CasePriority::Urgent) => Ok(Priority::Urgent),
        Ok(pb::CasePriority::Unspecified) => Err(FieldViolation::new(
            "",
            "is required: LOW, NORMAL, HIGH or URGENT",
        )),
        Err(_) => Err(FieldViolation::new("", format!("{raw} is not a priority"))),
    }
}

/// Checks request fields against the template; violations under `at.{field}`.
fn check_fields(
    v: &mut Violations,
    at: &str,
    template: &Template,
    fields: &HashMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, value) in fields {
        // A template's field names are its own: `name` or `filter` here is no
        // resource name or list filter.
        let checked = template
            .check_field(k, value)
            .map_err(|e| e.or_because("INVALID_FIELD_VALUE"));
        if let Some(value) = v.check(&format!("{at}.{k}"), checked) {
            out.insert(k.clone(), value);
        }
    }
    out
}

fn refusal(
    r: Refusal,
    case_name: &str,
    transition: &str,
    template: &Template,
    roles: &[&str],
) -> Error {
    let list = |a: &[String]| {
        if a.is_empty() {
            "none for your organization's role".to_owned()
        } else {
            a.join(", ")
        }
    };
    match r {
        Refusal::UnknownTransition { allowed } => Error::invalid(
            "transition",
            format!(
                "{transition:?} is not a transition of {}; allowed now: {}",
                template.name,
                list(&allowed)
            ),
        ),
        Refusal::NotFromHere { state, allowed } => Error::WrongState {
            reason: "TRANSITION_NOT_ALLOWED",
            message: format!(
                "transition {transition:?} cannot fire in state {state:?}; allowed now: {}",
                list(&allowed)
            ),
            subject: case_name.to_owned(),
            allowed,
        },
        Refusal::RoleNotAllowed { roles: needed } => Error::PermissionDenied {
            reason: "ROLE_NOT_ALLOWED",
            message: format!(
                "transition {transition:?} may be fired by {} only; your organization is {}",
                needed.join(", "),
                roles.join(", ")
            ),
        },
        Refusal::MissingFields(missing) => Error::InvalidArgument(
            missing
                .into_iter()
                .map(|f| {
                    FieldViolation::new(
                        format!("fields.{f}"),
                        format!("is required by transition {transition:?}"),
                    )
                    .because("FIELD_REQUIRED")
                })
                .collect(),
        ),
    }
}

/// The organization a name points at, or NOT_FOUND.
async fn org_named(tx: &mut Tx, slug: &Slug, name: &str) -> Result<OrgRef> {
    tx.organization(slug)
        .await?
        .map(|o| OrgRef {
            id: o.id,
            slug: o.slug,
        })
        .ok_or_else(|| Error::NotFound(format!("organization {name:?}")))
}

async fn require_partner(tx: &mut Tx, caller: &OrgRef, other: &OrgRef) -> Result<()> {
    if caller.id == other.id
        || tx
            .active_partnership_between(&caller.id, &other.id)
            .await?
            .is_some()
    {
        Ok(())
    } else {
        Err(Error::failed_precondition(
            "NOT_PARTNERS",
            format!(
                "{} has no active partnership with {}",
                names::organization(&caller.slug),
                names::organization(&other.slug)
            ),
        ))
    }
}

fn parse_case_filter(raw: &str, query: &mut CaseQuery) -> Result<()> {
    for Comparison { field, op, value } in filter::parse(raw)? {
        let bad = |m: &str| Error::invalid("filter", format!("{field}: {m}"));
        let flag = |value: &str| match value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad("must be true or false")),
        };
        match (field.as_str(), op) {
            ("state", Op::Eq) => query.state = Some(value),
            ("template", Op::Eq) => {
                query.template = Some(
                    value
                        .strip_prefix("workflowTemplates/")
                        .unwrap_or(&value)
                        .to_owned(),
                )
            }
            ("participant", Op::Eq) => query.participant_id = Some(value),
            ("customer", Op::Eq) => {
                query.customer_id =
                    Some(names::parse_customer(&value).map_err(|e| bad(&e.description))?)
            }
            ("priority", Op::Eq) => {
                query.priority = Some(
                    Priority::parse(&value.to_lowercase())
                        .ok_or_else(|| bad("must be LOW, NORMAL, HIGH or URGENT"))?,
                )
            }
            ("breached", Op::Eq) => query.breached = Some(flag(&value)?),
            ("closed", Op::Eq) => query.closed = Some(flag(&value)?),
            ("due_time", Op::Lt) => {
                query.due_before =
                    Some(value.parse().map_err(|_| {
                        bad("needs an RFC 3339 time such as \"2026-01-01T00:00:00Z\"")
                    })?)
            }
            ("due_time", _) => return Err(bad("supports < only")),
            (
                "state" | "template" | "participant" | "customer" | "priority" | "breached"
                | "closed",
                _,
            ) => return Err(bad("supports = only")),
            _ => {
                return Err(Error::invalid(
                    "filter",
                    format!(
                        "unknown field {field:?}; use state, template, participant, customer, \
                         priority, breached, closed or due_time"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn task_action_error(e: String) -> Error {
    Error::failed_precondition("TASK_NOT_OPEN", e)
}

impl CaseApi {
    async fn act_on_task(
        &self,
        caller: &Caller,
        method: &str,
        name: &str,
        request_id: &str,
        request: &impl prost::Message,
        action: TaskAction,
    ) -> Result<pb::CaseTask> {
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let (case_id, task_id) = names::parse_task(name).map_err(|v| v.under("name"))?;
        let now = self.now();
        let event_type = action.event_type();
        idempotent(&self.hub, caller, method, request_id, request, async |tx| {
            let case = case_in(tx, &org, &case_id, name).await?;
            let mut task = tx
                .task(&case_id, &task_id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("task {name:?}")))?;
            if task.assignee.id != org.id {
                return Err(Error::PermissionDenied {
                    reason: "NOT_THE_ASSIGNEE",
                    message: format!(
                        "only {} (the assignee) may act on this task",
                        names::organization(&task.assignee.slug)
                    ),
                });
            }
            task.state = task.apply(action).map_err(task_action_error)?;
            task.update_time = now;
            tx.update_task(&task).await?;
            if !task.state.is_open() {
                tx.clear_timer(&case_id, TimerKind::TaskOverdue, &task.id)
                    .await?;
            }
            let mut entry = HistoryEntry::new(&case_id, event_type, Some(org.clone()), now);
            entry.subject = names::task(&case_id, &task.id);
            entry.body = match &task.state {
                TaskState::Declined { reason } => reason.clone(),
                TaskState::Completed { note } => note.clone(),
                _ => String::new(),
            };
            tx.insert_case_history(&entry).await?;
            tell_task(tx, &case, &task, event_type);
            Ok(task_to_pb(&task))
        })
        .await
    }
}

#[tonic::async_trait]
impl CaseService for CaseApi {
    async fn list_workflow_templates(
        &self,
        request: Request<pb::ListWorkflowTemplatesRequest>,
    ) -> Result<Response<pb::ListWorkflowTemplatesResponse>, Status> {
        Caller::of(&request)?.require(Scope::Read)?;
        Ok(Response::new(pb::ListWorkflowTemplatesResponse {
            templates: self.hub.workflows.all().map(template_to_pb).collect(),
        }))
    }

    async fn get_workflow_template(
        &self,
        request: Request<pb::GetWorkflowTemplateRequest>,
    ) -> Result<Response<pb::WorkflowTemplate>, Status> {
        Caller::of(&request)?.require(Scope::Read)?;
        let name = &request.get_ref().name;
        let t = names::parse_template(name).map_err(|v| v.under("name"))?;
        let template = self
            .hub
            .workflows
            .get(&t)
            .ok_or_else(|| Error::NotFound(format!("workflow template {name:?}")))?;
        Ok(Response::new(template_to_pb(template)))
    }

    async fn open_case(
        &self,
        request: Request<pb::OpenCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.case.clone().unwrap_or_default();
        let mut v = Violations::new();
        let template = match v.check("case.template", names::parse_template(&input.template)) {
            Some(t) => match self.hub.workflows.get(&t) {
                Some(t) => Some(t),
                None => {
                    let known: Vec<String> = self
                        .hub
                        .workflows
                        .all()
                        .map(|t| names::workflow_template(&t.name))
                        .collect();
                    v.add(
                        "case.template",
                        format!("is not a template of this hub; known: {}", known.join(", ")),
                    );
                    None
                }
            },
            None => None,
        };
        let customer_id = v.check("case.customer", names::parse_customer(&input.customer));
        let title = text(&mut v, "case.title", case::title(&input.title));
        let description = text(&mut v, "case.description", case::body(&input.description));
        let priority = v.check("case.priority", priority_from_pb(input.priority));
        let mut participants: Vec<(Slug, String, String)> = vec![];
        if input.participants.is_empty() {
            v.add(
                "case.participants",
                "is required: your organization and its partners, each with a role",
            );
        }
        if input.participants.len() > MAX_PARTICIPANTS {
            v.add(
                "case.participants",
                format!("must hold at most {MAX_PARTICIPANTS} organizations"),
            );
        }
        for (i, p) in input.participants.iter().enumerate() {
            let at = format!("case.participants[{i}]");
            let slug = v.check(
                &format!("{at}.organization"),
                names::parse_organization(&p.organization),
            );
            if let Some(t) = template
                && !t.has_role(&p.role)
            {
                v.add(
                    format!("{at}.role"),
                    format!("must be one of {}", t.roles.join(", ")),
                );
            }
            if let Some(slug) = slug {
                if participants.iter().any(|(s, _, _)| *s == slug) {
                    v.add(format!("{at}.organization"), "is listed twice");
                }
                participants.push((slug, p.role.clone(), p.organization.clone()));
            }
        }
        if !input.participants.is_empty() && !participants.iter().any(|(s, _, _)| *s == org.slug) {
            v.add(
                "case.participants",
                format!(
                    "must include your organization ({})",
                    names::organization(&org.slug)
                ),
            );
        }
        let fields = match template {
            Some(t) => {
                let fields = check_fields(&mut v, "case.fields", t, &input.fields);
                for f in t.fields.iter().filter(|f| f.required_at_open) {
                    if !fields.contains_key(&f.name) {
                        v.push(
                            FieldViolation::new(
                                format!("case.fields.{}", f.name),
                                "is required at open",
                            )
                            .because("FIELD_REQUIRED"),
                        );
                    }
                }
                fields
            }
            None => BTreeMap::new(),
        };
        let mut contacts: Vec<(Slug, String)> = vec![];
        if input.escalation_contacts.len() > MAX_ESCALATION_CONTACTS {
            v.add(
                "case.escalation_contacts",
                format!("must hold at most {MAX_ESCALATION_CONTACTS} members"),
            );
        }
        for (i, m) in input.escalation_contacts.iter().enumerate() {
            let at = format!("case.escalation_contacts[{i}]");
            if let Some((slug, id)) = v.check(&at, names::parse_member(m)) {
                if !participants.iter().any(|(s, _, _)| *s == slug) {
                    v.add(at, "must be a member of a participant organization");
                } else {
                    contacts.push((slug, id));
                }
            }
        }
        let (Some(template), Some(customer_id), Some(priority)) = (template, customer_id, priority)
        else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let now = self.now();
        let id = Uuid::now_v7().to_string();
        let name = names::case(&id);
        let response = idempotent(
            &self.hub,
            &caller,
            "OpenCase",
            &request.request_id,
            &request,
            async |tx| {
                let (seen, _) =
                    visible_in(tx, &org, &customer_id, &names::customer(&customer_id)).await?;
                if seen.customer.state != RecordState::Active {
                    return Err(Error::failed_precondition(
                        "CUSTOMER_NOT_ACTIVE",
                        format!("{} is not active", input.customer),
                    ));
                }
                let mut members = vec![];
                for (slug, role, raw) in &participants {
                    let other = org_named(tx, slug, raw).await?;
                    require_partner(tx, &org, &other).await?;
                    members.push(Participant {
                        organization: other,
                        role: role.clone(),
                    });
                }
                for (slug, member_id) in &contacts {
                    let owner = members
                        .iter()
                        .find(|p| p.organization.slug == *slug)
                        .map(|p| p.organization.id.clone())
                        .unwrap_or_default();
                    if tx.member(&owner, member_id).await?.is_none() {
                        return Err(Error::invalid(
                            "case.escalation_contacts",
                            format!("{} is not a member", names::member(slug, member_id)),
                        ));
                    }
                }
                let case = Case {
                    id: id.clone(),
                    template: template.name.clone(),
                    state: template.initial.clone(),
                    title: title.clone(),
                    description: description.clone(),
                    priority,
                    customer_id: customer_id.clone(),
                    participants: members,
                    fields: fields.clone(),
                    escalation_contacts: contacts
                        .iter()
                        .map(|(s, m)| names::member(s, m))
                        .collect(),
                    clocks: SlaClock::start_all(template, priority, &template.initial, now),
                    opened_by: org.clone(),
                    create_time: now,
                    update_time: now,
                    state_time: now,
                    revision: 1,
                };
                tx.create_case(&case, template).await?;
                let mut entry =
                    HistoryEntry::new(&id, EventType::CaseOpened, Some(org.clone()), now);
                entry.to_state.clone_from(&case.state);
                tx.insert_case_history(&entry).await?;
                tell_case(
                    tx,
                    &case,
                    Some(template),
                    EventType::CaseOpened,
                    &[],
                    &HashMap::new(),
                    now,
                )
                .await?;
                Ok(case_to_pb(&case, Some(template), &org.id, Some(&seen), now))
            },
        )
        .await?;
        tracing::info!(case = %name, template = %template.name, "case opened");
        Ok(Response::new(response))
    }

    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let name = &request.get_ref().name;
        let id = names::parse_case(name).map_err(|v| v.under("name"))?;
        let case = self.read_case(org, &id, name).await?;
        Ok(Response::new(self.show(&case, org).await?))
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let r = request.get_ref();
        let mut query = CaseQuery {
            viewer_id: org.id.clone(),
            ..Default::default()
        };
        parse_case_filter(&r.filter, &mut query)?;
        if let Some(p) = query.participant_id.take() {
            let slug = names::parse_organization(&p)
                .map_err(|e| Error::invalid("filter", format!("participant: {}", e.description)))?;
            // An unknown organization participates in nothing.
            query.participant_id = Some(
                self.hub
                    .store
                    .organization(&slug)
                    .await?
                    .map_or_else(|| "-".to_owned(), |o| o.id),
            );
        }
        let page = self
            .hub
            .pages
            .open(
                &caller,
                r.page_size,
                &r.page_token,
                &format!("cases:{}", r.filter),
            )
            .await?;
        query.after = page.after.clone();
        query.limit = page.size;
        let found = self.hub.store.cases(&query).await?;
        let mut cases = Vec::with_capacity(found.items.len());
        for c in &found.items {
            cases.push(self.show(c, org).await?);
        }
        Ok(Response::new(pb::ListCasesResponse {
            cases,
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn transition_case(
        &self,
        request: Request<pb::TransitionCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("name", names::parse_case(&request.name));
        if request.transition.is_empty() {
            v.required("transition");
        }
        if request.etag.is_empty() {
            v.add(
                "etag",
                "is required: the etag of the case as you last read it",
            );
        }
        let comment = text(&mut v, "comment", case::body(&request.comment));
        let Some(id) = id else {
            return Err(v.into_error().into());
        };
        // The fields are checked against the case's template, so read it first.
        let current = self.read_case(&org, &id, &request.name).await?;
        let template = self.template(&current.template)?;
        let fields = check_fields(&mut v, "fields", template, &request.fields);
        v.finish()?;
        let now = self.now();
        let response = idempotent(
            &self.hub,
            &caller,
            "TransitionCase",
            &request.request_id,
            &request,
            async |tx| {
                let mut case = case_in(tx, &org, &id, &request.name).await?;
                check_etag(&request.etag, case.revision, &request.name)?;
                let roles = case.roles_of(&org.id);
                let mut merged = case.fields.clone();
                merged.extend(fields.clone());
                let t = template
                    .fire(&case.state, &request.transition, Some(&roles), &merged)
                    .map_err(|r| {
                        refusal(r, &request.name, &request.transition, template, &roles)
                    })?;
                let (name, from, to) = (t.name.clone(), case.state.clone(), t.to.clone());
                case.fields = merged;
                case.enter_state(template, &to, now);
                let mut entry =
                    HistoryEntry::new(&id, EventType::CaseTransitioned, Some(org.clone()), now);
                entry.transition = name;
                entry.from_state = from;
                entry.to_state = to;
                entry.body.clone_from(&comment);
                record_change(tx, &mut case, template, &entry, &[], now).await?;
                view_in(tx, &case, template, &org, now).await
            },
        )
        .await?;
        tracing::info!(case = %response.name, state = %response.state, "case transitioned");
        Ok(Response::new(response))
    }

    async fn comment_on_case(
        &self,
        request: Request<pb::CommentOnCaseRequest>,
    ) -> Result<Response<pb::CaseHistoryEntry>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("name", names::parse_case(&request.name));
        let body = text(&mut v, "body", case::body(&request.body).and_then(required));
        let visibility = match pb::CommentVisibility::try_from(request.visibility) {
            Ok(pb::CommentVisibility::AllParticipants) => Some(CommentVisibility::Participants),
            Ok(pb::CommentVisibility::OwnOrganization) => Some(CommentVisibility::Organization),
            _ => {
                v.add(
                    "visibility",
                    "is required: ALL_PARTICIPANTS or OWN_ORGANIZATION",
                );
                None
            }
        };
        let member_id = if request.member.is_empty() {
            None
        } else {
            match v.check("member", names::parse_member(&request.member)) {
                Some((slug, m)) if slug == org.slug => Some(m),
                Some(_) => {
                    v.add("member", "must be a member of your organization");
                    None
                }
                None => None,
            }
        };
        let (Some(id), Some(visibility)) = (id, visibility) else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let now = self.now();
        let response = idempotent(
            &self.hub,
            &caller,
            "CommentOnCase",
            &request.request_id,
            &request,
            async |tx| {
                let case = case_in(tx, &org, &id, &request.name).await?;
                if let Some(m) = &member_id
                    && tx.member(&org.id, m).await?.is_none()
                {
                    return Err(Error::NotFound(format!("member {:?}", request.member)));
                }
                let mut entry =
                    HistoryEntry::new(&id, EventType::CaseCommented, Some(org.clone()), now);
                entry.body.clone_from(&body);
                entry.visibility = visibility;
                entry.member_id.clone_from(&member_id);
                tx.insert_case_history(&entry).await?;
                tell_comment(tx, &case, &entry);
                Ok(history_to_pb(&entry))
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    async fn add_case_participant(
        &self,
        request: Request<pb::AddCaseParticipantRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.participant.clone().unwrap_or_default();
        let mut v = Violations::new();
        let id = v.check("name", names::parse_case(&request.name));
        let slug = v.check(
            "participant.organization",
            names::parse_organization(&input.organization),
        );
        let (Some(id), Some(slug)) = (id, slug) else {
            return Err(v.into_error().into());
        };
        let current = self.read_case(&org, &id, &request.name).await?;
        let template = self.template(&current.template)?;
        if !template.has_role(&input.role) {
            v.add(
                "participant.role",
                format!("must be one of {}", template.roles.join(", ")),
            );
        }
        v.finish()?;
        let now = self.now();
        let response = idempotent(
            &self.hub,
            &caller,
            "AddCaseParticipant",
            &request.request_id,
            &request,
            async |tx| {
                let mut case = case_in(tx, &org, &id, &request.name).await?;
                let other = org_named(tx, &slug, &input.organization).await?;
                if case.participant(&other.id).is_some() {
                    return Err(Error::AlreadyExists {
                        reason: "ALREADY_A_PARTICIPANT",
                        message: format!("{} already participates", input.organization),
                    });
                }
                if case.participants.len() >= MAX_PARTICIPANTS {
                    return Err(Error::failed_precondition(
                        "TOO_MANY_PARTICIPANTS",
                        format!("a case has at most {MAX_PARTICIPANTS} participants"),
                    ));
                }
                require_partner(tx, &org, &other).await?;
                case.participants.push(Participant {
                    organization: other,
                    role: input.role.clone(),
                });
                case.update_time = now;
                let mut entry =
                    HistoryEntry::new(&id, EventType::CaseParticipantAdded, Some(org.clone()), now);
                entry.subject.clone_from(&input.organization);
                entry.body.clone_from(&input.role);
                record_change(tx, &mut case, template, &entry, &[], now).await?;
                view_in(tx, &case, template, &org, now).await
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    async fn remove_case_participant(
        &self,
        request: Request<pb::RemoveCaseParticipantRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("name", names::parse_case(&request.name));
        let slug = v.check(
            "organization",
            names::parse_organization(&request.organization),
        );
        let (Some(id), Some(slug)) = (id, slug) else {
            return Err(v.into_error().into());
        };
        let current = self.read_case(&org, &id, &request.name).await?;
        let template = self.template(&current.template)?;
        let now = self.now();
        let response = idempotent(
            &self.hub,
            &caller,
            "RemoveCaseParticipant",
            &request.request_id,
            &request,
            async |tx| {
                let mut case = case_in(tx, &org, &id, &request.name).await?;
                let Some(gone) = case
                    .participants
                    .iter()
                    .find(|p| p.organization.slug == slug)
                    .map(|p| p.organization.clone())
                else {
                    return Err(Error::NotFound(format!(
                        "participant {:?} of {}",
                        request.organization, request.name
                    )));
                };
                if gone.id != org.id && case.opened_by.id != org.id {
                    return Err(Error::permission_denied(
                        "an organization may remove itself; only the organization that opened \
                         the case removes others",
                    ));
                }
                if case.participants.len() == 1 {
                    return Err(Error::failed_precondition(
                        "LAST_PARTICIPANT",
                        "the last participant cannot be removed",
                    ));
                }
                case.participants.retain(|p| p.organization.id != gone.id);
                let prefix = format!("{}/", names::organization(&gone.slug));
                case.escalation_contacts.retain(|m| !m.starts_with(&prefix));
                case.update_time = now;
                let mut entry = HistoryEntry::new(
                    &id,
                    EventType::CaseParticipantRemoved,
                    Some(org.clone()),
                    now,
                );
                entry.subject.clone_from(&request.organization);
                record_change(
                    tx,
                    &mut case,
                    template,
                    &entry,
                    std::slice::from_ref(&gone),
                    now,
                )
                .await?;
                view_in(tx, &case, template, &org, now).await
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    async fn list_case_history(
        &self,
        request: Request<pb::ListCaseHistoryRequest>,
    ) -> Result<Response<pb::ListCaseHistoryResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let r = request.get_ref();
        let id = names::parse_case(&r.name).map_err(|v| v.under("name"))?;
        self.read_case(org, &id, &r.name).await?;
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
        let found = self
            .hub
            .store
            .case_history(&id, &org.id, page.after.as_deref(), page.size)
            .await?;
        Ok(Response::new(pb::ListCaseHistoryResponse {
            entries: found.items.iter().map(history_to_pb).collect(),
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn assign_task(
        &self,
        request: Request<pb::AssignTaskRequest>,
    ) -> Result<Response<pb::CaseTask>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.task.clone().unwrap_or_default();
        let mut v = Violations::new();
        let case_id = v.check("parent", names::parse_case(&request.parent));
        let title = text(&mut v, "task.title", case::title(&input.title));
        let description = text(&mut v, "task.description", case::body(&input.description));
        let assignee = v.check("task.assignee", names::parse_organization(&input.assignee));
        let member_id = if input.assignee_member.is_empty() {
            None
        } else {
            match v.check(
                "task.assignee_member",
                names::parse_member(&input.assignee_member),
            ) {
                Some((slug, m)) if Some(&slug) == assignee.as_ref() => Some(m),
                Some(_) => {
                    v.add(
                        "task.assignee_member",
                        "must be a member of the assignee organization",
                    );
                    None
                }
                None => None,
            }
        };
        let now = self.now();
        let due_time = match &input.due_time {
            None => None,
            Some(t) => match v.check("task.due_time", parse_timestamp(t)) {
                Some(t) if t <= now => {
                    v.add("task.due_time", "must be in the future");
                    None
                }
                other => other,
            },
        };
        let (Some(case_id), Some(assignee)) = (case_id, assignee) else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        let response = idempotent(
            &self.hub,
            &caller,
            "AssignTask",
            &request.request_id,
            &request,
            async |tx| {
                let case = case_in(tx, &org, &case_id, &request.parent).await?;
                let template = self.template(&case.template)?;
                if template.is_final(&case.state) {
                    return Err(Error::failed_precondition(
                        "CASE_CLOSED",
                        format!(
                            "{} is {}; it takes no new tasks",
                            request.parent, case.state
                        ),
                    ));
                }
                let Some(to) = case
                    .participants
                    .iter()
                    .find(|p| p.organization.slug == assignee)
                    .map(|p| p.organization.clone())
                else {
                    return Err(Error::invalid(
                        "task.assignee",
                        "must be a participant of the case",
                    ));
                };
                if let Some(m) = &member_id
                    && tx.member(&to.id, m).await?.is_none()
                {
                    return Err(Error::NotFound(format!(
                        "member {:?}",
                        input.assignee_member
                    )));
                }
                let task = Task {
                    id: Uuid::now_v7().to_string(),
                    case_id: case_id.clone(),
                    title: title.clone(),
                    description: description.clone(),
                    assignee: to,
                    assignee_member_id: member_id.clone(),
                    due_time,
                    state: TaskState::Assigned,
                    overdue: false,
                    assigned_by: org.clone(),
                    create_time: now,
                    update_time: now,
                };
                tx.insert_task(&task).await?;
                if let Some(due) = due_time {
                    tx.set_timer(&Timer {
                        case_id: case_id.clone(),
                        kind: TimerKind::TaskOverdue,
                        subject: task.id.clone(),
                        due_time: due,
                    })
                    .await?;
                    tx.wake_timers();
                }
                let mut entry =
                    HistoryEntry::new(&case_id, EventType::TaskAssigned, Some(org.clone()), now);
                entry.subject = names::task(&case_id, &task.id);
                entry.body.clone_from(&task.title);
                tx.insert_case_history(&entry).await?;
                tell_task(tx, &case, &task, EventType::TaskAssigned);
                Ok(task_to_pb(&task))
            },
        )
        .await?;
        Ok(Response::new(response))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::CaseTask>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let name = &request.get_ref().name;
        let (case_id, id) = names::parse_task(name).map_err(|v| v.under("name"))?;
        let missing = || Error::NotFound(format!("task {name:?}"));
        self.read_case(org, &case_id, name)
            .await
            .map_err(|_| missing())?;
        let task = self
            .hub
            .store
            .task(&case_id, &id)
            .await?
            .ok_or_else(missing)?;
        Ok(Response::new(task_to_pb(&task)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let r = request.get_ref();
        let case_id = names::parse_case(&r.parent).map_err(|v| v.under("parent"))?;
        self.read_case(org, &case_id, &r.parent).await?;
        let page = self
            .hub
            .pages
            .open(
                &caller,
                r.page_size,
                &r.page_token,
                &format!("tasks:{case_id}"),
            )
            .await?;
        let found = self
            .hub
            .store
            .tasks(&case_id, page.after.as_deref(), page.size)
            .await?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: found.items.iter().map(task_to_pb).collect(),
            next_page_token: page.next_token(found.next_after),
        }))
    }

    async fn accept_task(
        &self,
        request: Request<pb::AcceptTaskRequest>,
    ) -> Result<Response<pb::CaseTask>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let task = self
            .act_on_task(
                &caller,
                "AcceptTask",
                &r.name,
                &r.request_id,
                r,
                TaskAction::Accept,
            )
            .await?;
        Ok(Response::new(task))
    }

    async fn decline_task(
        &self,
        request: Request<pb::DeclineTaskRequest>,
    ) -> Result<Response<pb::CaseTask>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let mut v = Violations::new();
        let reason = text(&mut v, "reason", case::body(&r.reason).and_then(required));
        v.finish()?;
        let task = self
            .act_on_task(
                &caller,
                "DeclineTask",
                &r.name,
                &r.request_id,
                r,
                TaskAction::Decline { reason },
            )
            .await?;
        Ok(Response::new(task))
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CaseTask>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let mut v = Violations::new();
        let note = text(&mut v, "note", case::body(&r.note));
        v.finish()?;
        let task = self
            .act_on_task(
                &caller,
                "CompleteTask",
                &r.name,
                &r.request_id,
                r,
                TaskAction::Complete { note },
            )
            .await?;
        Ok(Response::new(task))
    }
}
