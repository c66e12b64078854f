//! `liaison.v1.CaseService` over gRPC: requests decoded into the commands of
//! [`app::cases`](crate::app::cases), cases rendered as each participant sees them.

mod show;

use std::collections::{BTreeMap, HashMap};

use tonic::{Request, Response, Status};

use super::convert::parse_timestamp;
use super::write::{Retryable, idempotent};
use super::{Caller, Hub, caller_of};
use crate::app::cases::{self as app, Comment, NewTask, OpenCase, Seen, Transition};
use crate::domain::case::workflow::Template;
use crate::domain::case::{
    self, CommentVisibility, MAX_ESCALATION_CONTACTS, MAX_PARTICIPANTS, Priority, TaskAction,
};
use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::filter::{self, Comparison, Op};
use crate::domain::ids::{CaseId, Id, MemberId};
use crate::domain::names;
use crate::domain::text::required;
use crate::domain::{OrgRef, Scope, Slug};
use crate::feed::render::{case_to_pb, history_to_pb, task_to_pb};
use crate::pb::{self, case_service_server::CaseService};
use crate::store::{CaseQuery, Page};
use show::template_to_pb;

#[derive(Clone)]
pub struct CaseApi {
    hub: Hub,
}

impl CaseApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }

    /// A case as `org` sees it, now.
    fn show(&self, seen: &Seen, org: &OrgRef) -> pb::Case {
        let template = self.hub.workflows.get(&seen.case.template);
        let now = app::now(&self.hub.store);
        case_to_pb(&seen.case, template, &org.id, seen.customer.as_ref(), now)
    }

    /// AcceptTask, DeclineTask or CompleteTask of task `name`.
    async fn act_on_task(
        &self,
        caller: &Caller,
        name: &str,
        request: &impl Retryable,
        action: TaskAction,
    ) -> Result<pb::CaseTask> {
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let (case_id, task_id) = names::parse_task(name).map_err(|v| v.under("name"))?;
        let now = app::now(&self.hub.store);
        let target = (&case_id, &task_id, name);
        idempotent(&self.hub, caller, request, async |tx| {
            Ok(task_to_pb(
                &app::act_on_task(tx, &org, target, action, now).await?,
            ))
        })
        .await
    }
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
                query.customer_id = Some(
                    names::parse_customer(&value)
                        .map_err(|e| bad(&e.description))?
                        .into_string(),
                )
            }
            ("priority", Op::Eq) => {
                query.priority = Some(
                    Priority::parse(&value.to_lowercase())
                        .ok_or_else(|| bad("must be LOW, NORMAL, HIGH or URGENT"))?,
                )
            }
            ("breached", Op::Eq) => query.breached = Some(flag(&value)?),
            ("closed", Op::Eq) => query.closed = Some(flag(&value)?),
            ("conflicted", Op::Eq) => query.conflicted = Some(flag(&value)?),
            ("due_time", Op::Lt) => {
                query.due_before =
                    Some(value.parse().map_err(|_| {
                        bad("needs an RFC 3339 time such as \"2026-01-01T00:00:00Z\"")
                    })?)
            }
            ("due_time", _) => return Err(bad("supports < only")),
            (
                "state" | "template" | "participant" | "customer" | "priority" | "breached"
                | "closed" | "conflicted",
                _,
            ) => return Err(bad("supports = only")),
            _ => {
                return Err(Error::invalid(
                    "filter",
                    format!(
                        "unknown field {field:?}; use state, template, participant, customer, \
                         priority, breached, closed, conflicted or due_time"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The template an OpenCase request names, or a violation listing the known ones.
fn template_named<'w>(hub: &'w Hub, v: &mut Violations, raw: &str) -> Option<&'w Template> {
    let t = v.check("case.template", names::parse_template(raw))?;
    let found = hub.workflows.get(&t);
    if found.is_none() {
        let known: Vec<String> = hub
            .workflows
            .all()
            .map(|t| names::workflow_template(&t.name))
            .collect();
        v.add(
            "case.template",
            format!("is not a template of this hub; known: {}", known.join(", ")),
        );
    }
    found
}

/// The participants an OpenCase request lists, checked against `template`'s roles;
/// the caller's organization `own` must be one of them.
fn participants_from_pb(
    v: &mut Violations,
    input: &[pb::CaseParticipant],
    template: Option<&Template>,
    own: &Slug,
) -> Vec<(Slug, String, String)> {
    let mut participants: Vec<(Slug, String, String)> = vec![];
    if input.is_empty() {
        v.add(
            "case.participants",
            "is required: your organization and its partners, each with a role",
        );
    }
    if input.len() > MAX_PARTICIPANTS {
        v.add(
            "case.participants",
            format!("must hold at most {MAX_PARTICIPANTS} organizations"),
        );
    }
    for (i, p) in input.iter().enumerate() {
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
    if !input.is_empty() && !participants.iter().any(|(s, _, _)| s == own) {
        v.add(
            "case.participants",
            format!(
                "must include your organization ({})",
                names::organization(own)
            ),
        );
    }
    participants
}

/// The fields an OpenCase request sets, with those `template` requires at open.
fn open_fields(
    v: &mut Violations,
    template: Option<&Template>,
    input: &HashMap<String, String>,
) -> BTreeMap<String, String> {
    let Some(t) = template else {
        return BTreeMap::new();
    };
    let fields = check_fields(v, "case.fields", t, input);
    for f in t.fields.iter().filter(|f| f.required_at_open) {
        if !fields.contains_key(&f.name) {
            let at = format!("case.fields.{}", f.name);
            v.push(FieldViolation::new(at, "is required at open").because("FIELD_REQUIRED"));
        }
    }
    fields
}

/// The escalation contacts an OpenCase request names: members of participants.
fn contacts_from_pb(
    v: &mut Violations,
    input: &[String],
    participants: &[(Slug, String, String)],
) -> Vec<(Slug, MemberId)> {
    let mut contacts = vec![];
    if input.len() > MAX_ESCALATION_CONTACTS {
        v.add(
            "case.escalation_contacts",
            format!("must hold at most {MAX_ESCALATION_CONTACTS} members"),
        );
    }
    for (i, m) in input.iter().enumerate() {
        let at = format!("case.escalation_contacts[{i}]");
        if let Some((slug, id)) = v.check(&at, names::parse_member(m)) {
            if !participants.iter().any(|(s, _, _)| *s == slug) {
                v.add(at, "must be a member of a participant organization");
            } else {
                contacts.push((slug, id));
            }
        }
    }
    contacts
}

/// The case an OpenCase request carries, validated, as organization `own` opens it.
fn open_from_pb<'w>(hub: &'w Hub, input: &pb::Case, own: &Slug) -> Result<OpenCase<'w>> {
    let mut v = Violations::new();
    let template = template_named(hub, &mut v, &input.template);
    let customer_id = v.check("case.customer", names::parse_customer(&input.customer));
    let title = text(&mut v, "case.title", case::title(&input.title));
    let description = text(&mut v, "case.description", case::body(&input.description));
    let priority = v.check("case.priority", priority_from_pb(input.priority));
    let participants = participants_from_pb(&mut v, &input.participants, template, own);
    let fields = open_fields(&mut v, template, &input.fields);
    let contacts = contacts_from_pb(&mut v, &input.escalation_contacts, &participants);
    let (Some(template), Some(customer_id), Some(priority)) = (template, customer_id, priority)
    else {
        return Err(v.into_error());
    };
    v.finish()?;
    let customer_name = input.customer.clone();
    Ok(OpenCase {
        template,
        customer_id,
        customer_name,
        title,
        description,
        priority,
        participants,
        contacts,
        fields,
    })
}

/// The comment a CommentOnCase request carries, validated, by organization `own`.
fn comment_from_pb(r: &pb::CommentOnCaseRequest, own: &Slug) -> Result<(CaseId, Comment)> {
    let mut v = Violations::new();
    let id = v.check("name", names::parse_case(&r.name));
    let body = text(&mut v, "body", case::body(&r.body).and_then(required));
    let visibility = match pb::CommentVisibility::try_from(r.visibility) {
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
    let member = if r.member.is_empty() {
        None
    } else {
        match v.check("member", names::parse_member(&r.member)) {
            Some((slug, m)) if slug == *own => Some((m, r.member.clone())),
            Some(_) => {
                v.add("member", "must be a member of your organization");
                None
            }
            None => None,
        }
    };
    let (Some(id), Some(visibility)) = (id, visibility) else {
        return Err(v.into_error());
    };
    v.finish()?;
    Ok((
        id,
        Comment {
            body,
            visibility,
            member,
        },
    ))
}

/// The task an AssignTask request carries, validated; its due time must be after
/// `now`.
fn task_from_pb(r: &pb::AssignTaskRequest, now: jiff::Timestamp) -> Result<(CaseId, NewTask)> {
    let input = r.task.clone().unwrap_or_default();
    let mut v = Violations::new();
    let case_id = v.check("parent", names::parse_case(&r.parent));
    let title = text(&mut v, "task.title", case::title(&input.title));
    let description = text(&mut v, "task.description", case::body(&input.description));
    let assignee = v.check("task.assignee", names::parse_organization(&input.assignee));
    let member = if input.assignee_member.is_empty() {
        None
    } else {
        match v.check(
            "task.assignee_member",
            names::parse_member(&input.assignee_member),
        ) {
            Some((slug, m)) if Some(&slug) == assignee.as_ref() => {
                Some((m, input.assignee_member.clone()))
            }
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
        return Err(v.into_error());
    };
    v.finish()?;
    Ok((
        case_id,
        NewTask {
            title,
            description,
            assignee,
            member,
            due_time,
        },
    ))
}

/// The case a request names, and an organization it names, validated.
fn case_and_org(name: &str, org_field: &str, org: &str) -> Result<(CaseId, Slug)> {
    let mut v = Violations::new();
    let id = v.check("name", names::parse_case(name));
    let slug = v.check(org_field, names::parse_organization(org));
    let (Some(id), Some(slug)) = (id, slug) else {
        return Err(v.into_error());
    };
    Ok((id, slug))
}

/// A case just changed, as the caller's organization `org` sees it at `now`.
fn shown(seen: &Seen, template: &Template, org: &OrgRef, now: jiff::Timestamp) -> pb::Case {
    case_to_pb(
        &seen.case,
        Some(template),
        &org.id,
        seen.customer.as_ref(),
        now,
    )
}

#[tonic::async_trait]
impl CaseService for CaseApi {
    async fn list_workflow_templates(
        &self,
        request: Request<pb::ListWorkflowTemplatesRequest>,
    ) -> Result<Response<pb::ListWorkflowTemplatesResponse>, Status> {
        caller_of(&request)?.require(Scope::Read)?;
        Ok(Response::new(pb::ListWorkflowTemplatesResponse {
            templates: self.hub.workflows.all().map(template_to_pb).collect(),
        }))
    }

    async fn get_workflow_template(
        &self,
        request: Request<pb::GetWorkflowTemplateRequest>,
    ) -> Result<Response<pb::WorkflowTemplate>, Status> {
        caller_of(&request)?.require(Scope::Read)?;
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
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let request = request.into_inner();
        let input = request.case.clone().unwrap_or_default();
        let open = open_from_pb(&self.hub, &input, &org.slug)?;
        let now = app::now(&self.hub.store);
        let id = CaseId::generate();
        let response = idempotent(&self.hub, &caller, &request, async |tx| {
            let seen = app::open(tx, &org, (&id, now), &open).await?;
            Ok(shown(&seen, open.template, &org, now))
        })
        .await?;
        tracing::info!(case = %names::case(&id), template = %open.template.name, "case opened");
        Ok(Response::new(response))
    }

    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let name = &request.get_ref().name;
        let id = names::parse_case(name).map_err(|v| v.under("name"))?;
        let case = app::read(&self.hub.store, org, &id, name).await?;
        let seen = app::seen(&self.hub.store, org, case).await?;
        Ok(Response::new(self.show(&seen, org)))
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let r = request.get_ref();
        let mut query = CaseQuery::default();
        parse_case_filter(&r.filter, &mut query)?;
        let participant = match query.participant_id.take() {
            None => None,
            Some(p) => Some(names::parse_organization(&p).map_err(|e| {
                Error::invalid("filter", format!("participant: {}", e.description))
            })?),
        };
        let query_key = format!("cases:{}", r.filter);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query_key)
            .await?;
        (query.after, query.limit) = (page.after.clone(), page.size);
        let Page {
            items: found,
            next_after: next,
        } = app::list(&self.hub.store, org, query, participant.as_ref()).await?;
        Ok(Response::new(pb::ListCasesResponse {
            cases: found.iter().map(|seen| self.show(seen, org)).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn transition_case(
        &self,
        request: Request<pb::TransitionCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("name", names::parse_case(&r.name));
        if r.transition.is_empty() {
            v.required("transition");
        }
        if r.etag.is_empty() {
            v.add(
                "etag",
                "is required: the etag of the case as you last read it",
            );
        }
        let comment = text(&mut v, "comment", case::body(&r.comment));
        let Some(id) = id else {
            return Err(v.into_error().into());
        };
        // The fields are checked against the case's template, so read it first.
        let current = app::read(&self.hub.store, &org, &id, &r.name).await?;
        let template = app::template(&self.hub.workflows, &current.template)?;
        let fields = check_fields(&mut v, "fields", template, &r.fields);
        v.finish()?;
        let now = app::now(&self.hub.store);
        let (name, etag, transition) = (r.name.as_str(), r.etag.as_str(), r.transition.as_str());
        let t = Transition {
            id: &id,
            name,
            etag,
            transition,
            fields,
            comment,
            template,
        };
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            let seen = app::transition(tx, &org, t, now).await?;
            Ok(shown(&seen, template, &org, now))
        })
        .await?;
        tracing::info!(case = %response.name, state = %response.state, "case transitioned");
        Ok(Response::new(response))
    }

    async fn comment_on_case(
        &self,
        request: Request<pb::CommentOnCaseRequest>,
    ) -> Result<Response<pb::CaseHistoryEntry>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let r = request.into_inner();
        let (id, comment) = comment_from_pb(&r, &org.slug)?;
        let now = app::now(&self.hub.store);
        let target = (&id, r.name.as_str());
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            Ok(history_to_pb(
                &app::comment(tx, &org, target, comment, now).await?,
            ))
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn add_case_participant(
        &self,
        request: Request<pb::AddCaseParticipantRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let r = request.into_inner();
        let input = r.participant.clone().unwrap_or_default();
        let (id, slug) = case_and_org(&r.name, "participant.organization", &input.organization)?;
        let current = app::read(&self.hub.store, &org, &id, &r.name).await?;
        let template = app::template(&self.hub.workflows, &current.template)?;
        if !template.has_role(&input.role) {
            let roles = template.roles.join(", ");
            return Err(
                Error::invalid("participant.role", format!("must be one of {roles}")).into(),
            );
        }
        let now = app::now(&self.hub.store);
        let case = (&id, r.name.as_str(), template);
        let other = (&slug, input.organization.as_str(), input.role.as_str());
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            let seen = app::add_participant(tx, &org, case, other, now).await?;
            Ok(shown(&seen, template, &org, now))
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn remove_case_participant(
        &self,
        request: Request<pb::RemoveCaseParticipantRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let r = request.into_inner();
        let (id, slug) = case_and_org(&r.name, "organization", &r.organization)?;
        let current = app::read(&self.hub.store, &org, &id, &r.name).await?;
        let template = app::template(&self.hub.workflows, &current.template)?;
        let now = app::now(&self.hub.store);
        let case = (&id, r.name.as_str(), template);
        let other = (&slug, r.organization.as_str());
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            let seen = app::remove_participant(tx, &org, case, other, now).await?;
            Ok(shown(&seen, template, &org, now))
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn list_case_history(
        &self,
        request: Request<pb::ListCaseHistoryRequest>,
    ) -> Result<Response<pb::ListCaseHistoryResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let r = request.get_ref();
        let id = names::parse_case(&r.name).map_err(|v| v.under("name"))?;
        let case = app::read(&self.hub.store, org, &id, &r.name).await?;
        let query = format!("history:{id}");
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page {
            items: entries,
            next_after: next,
        } = app::history(&self.hub.store, org, &case, at).await?;
        Ok(Response::new(pb::ListCaseHistoryResponse {
            entries: entries.iter().map(history_to_pb).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn assign_task(
        &self,
        request: Request<pb::AssignTaskRequest>,
    ) -> Result<Response<pb::CaseTask>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let org = caller.organization()?.clone();
        let r = request.into_inner();
        let now = app::now(&self.hub.store);
        let (case_id, task) = task_from_pb(&r, now)?;
        let (who, case) = ((&org, &*self.hub.workflows), (&case_id, r.parent.as_str()));
        let response = idempotent(&self.hub, &caller, &r, async |tx| {
            Ok(task_to_pb(
                &app::assign_task(tx, who, case, task, now).await?,
            ))
        })
        .await?;
        Ok(Response::new(response))
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::CaseTask>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let name = &request.get_ref().name;
        let (case_id, id) = names::parse_task(name).map_err(|v| v.under("name"))?;
        let task = app::task(&self.hub.store, org, (&case_id, &id), name).await?;
        Ok(Response::new(task_to_pb(&task)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let org = caller.organization()?;
        let r = request.get_ref();
        let case_id = names::parse_case(&r.parent).map_err(|v| v.under("parent"))?;
        let case = app::read(&self.hub.store, org, &case_id, &r.parent).await?;
        let query = format!("tasks:{case_id}");
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let Page {
            items: tasks,
            next_after: next,
        } = app::tasks(&self.hub.store, &case, (page.after.as_deref(), page.size)).await?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.iter().map(task_to_pb).collect(),
            next_page_token: page.next_token(next),
        }))
    }

    async fn accept_task(
        &self,
        request: Request<pb::AcceptTaskRequest>,
    ) -> Result<Response<pb::CaseTask>, Status> {
        let caller = caller_of(&request)?;
        let r = request.get_ref();
        let task = self
            .act_on_task(&caller, &r.name, r, TaskAction::Accept)
            .await?;
        Ok(Response::new(task))
    }

    async fn decline_task(
        &self,
        request: Request<pb::DeclineTaskRequest>,
    ) -> Result<Response<pb::CaseTask>, Status> {
        let caller = caller_of(&request)?;
        let r = request.get_ref();
        let mut v = Violations::new();
        let reason = text(&mut v, "reason", case::body(&r.reason).and_then(required));
        v.finish()?;
        let task = self
            .act_on_task(&caller, &r.name, r, TaskAction::Decline { reason })
            .await?;
        Ok(Response::new(task))
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CaseTask>, Status> {
        let caller = caller_of(&request)?;
        let r = request.get_ref();
        let mut v = Violations::new();
        let note = text(&mut v, "note", case::body(&r.note));
        v.finish()?;
        let task = self
            .act_on_task(&caller, &r.name, r, TaskAction::Complete { note })
            .await?;
        Ok(Response::new(task))
    }
}
