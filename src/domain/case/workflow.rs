//! Workflow templates: a case type as data (states, transitions and who may fire
//! them, fields, SLA policies, escalation contacts), read from TOML and checked once
//! at load. The engine that runs cases knows no template by name: the built-in ones
//! are TOML files compiled in, read exactly like an operator's.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use jiff::SignedDuration;
use jiff::civil::Date;
use serde::Deserialize;

use super::conflict::{ConflictPolicy, ConflictRule};
use super::priority::Priority;
use crate::domain::calendar::{Calendar, Hours};
use crate::domain::error::FieldViolation;
use crate::domain::text::{self, Lines};

/// The templates compiled into the hub.
const BUILT_IN: &[(&str, &str)] = &[
    ("service_case", include_str!("workflows/service_case.toml")),
    (
        "deal_registration",
        include_str!("workflows/deal_registration.toml"),
    ),
    (
        "return_authorization",
        include_str!("workflows/return_authorization.toml"),
    ),
];

/// Longest a case may go without a change before an idle transition fires: ten years
/// is a typo, not a policy.
const MAX_IDLE_DAYS: u32 = 3650;

/// Longest a field value may be.
pub const MAX_FIELD_CHARS: usize = 1_000;
/// Most fields a template declares (and so a case holds).
const MAX_FIELDS: usize = 50;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    name: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    roles: Vec<String>,
    initial: String,
    states: Vec<RawState>,
    transitions: Vec<RawTransition>,
    #[serde(default)]
    fields: Vec<RawField>,
    #[serde(default)]
    sla_pause_states: Vec<String>,
    #[serde(default)]
    sla: Vec<RawSla>,
    #[serde(default)]
    calendars: BTreeMap<String, RawCalendar>,
    #[serde(default)]
    escalation_contacts: Vec<String>,
    #[serde(default)]
    conflict: Option<RawConflict>,
    #[serde(default)]
    deal_figures: Option<DealFigures>,
}

/// The `[deal_figures]` section: cases of the template are deal registrations in
/// partner scorecards (submitted when opened), and these transitions count as approved,
/// won and lost. The engine knows no template by name; this is how it learns which
/// transitions mean what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DealFigures {
    #[serde(default)]
    pub approved: Vec<String>,
    #[serde(default)]
    pub won: Vec<String>,
    #[serde(default)]
    pub lost: Vec<String>,
}

impl DealFigures {
    /// Which figure `transition` counts in: `approved`, `won` or `lost`.
    pub fn figure_of(&self, transition: &str) -> Option<&'static str> {
        let has = |list: &[String]| list.iter().any(|t| t == transition);
        if has(&self.approved) {
            Some("approved")
        } else if has(&self.won) {
            Some("won")
        } else if has(&self.lost) {
            Some("lost")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConflict {
    fields: Vec<String>,
    judge: String,
    policy: String,
    #[serde(default)]
    reject_transition: Option<String>,
    #[serde(default)]
    reason_field: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    name: String,
    #[serde(default, rename = "final")]
    is_final: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransition {
    name: String,
    from: Vec<String>,
    to: String,
    roles: Vec<String>,
    #[serde(default)]
    required_fields: Vec<String>,
    /// Declares that this transition leaves a final state (a reopen).
    #[serde(default)]
    leaves_final: bool,
    #[serde(default)]
    automatic_at: Option<String>,
    /// The hub fires it once the case has gone this many days without a change.
    #[serde(default)]
    automatic_after_idle_days: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    kind: String,
    #[serde(default)]
    choices: Vec<String>,
    #[serde(default)]
    required_at_open: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSla {
    name: String,
    /// Hours per priority (`low`, `normal`, `high`, `urgent`); fractions allowed.
    target_hours: BTreeMap<String, f64>,
    #[serde(default)]
    calendar: Option<String>,
    warn_at_percent: u8,
    stop_states: Vec<String>,
    #[serde(default)]
    resume_on_reopen: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalendar {
    time_zone: String,
    days: Vec<String>,
    open: String,
    close: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub name: String,
    pub is_final: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub name: String,
    pub from: Vec<String>,
    pub to: String,
    pub roles: Vec<String>,
    pub required_fields: Vec<String>,
    pub automatic_at: Option<String>,
    /// Fired by the hub once the case has gone this long without a change.
    pub automatic_after_idle: Option<SignedDuration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    /// `YYYY-MM-DD`.
    Date,
    Choice(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub kind: FieldKind,
    pub required_at_open: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlaPolicy {
    pub name: String,
    pub targets: BTreeMap<Priority, SignedDuration>,
    /// The calendar's name in the template, `None` for calendar hours.
    pub calendar: Option<String>,
    pub hours: Hours,
    pub warn_at_percent: u8,
    pub stop_states: Vec<String>,
    pub resume_on_reopen: bool,
}

impl SlaPolicy {
    /// The point in the target at which the warning fires.
    pub fn warn_after(&self, target: SignedDuration) -> SignedDuration {
        SignedDuration::from_micros(
            (target.as_micros() * self.warn_at_percent as i128 / 100) as i64,
        )
    }
}

/// A checked template: every name it mentions exists, every state is reachable.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub title: String,
    pub description: String,
    pub roles: Vec<String>,
    pub initial: String,
    pub states: Vec<State>,
    pub transitions: Vec<Transition>,
    pub fields: Vec<Field>,
    pub sla_pause_states: Vec<String>,
    pub sla: Vec<SlaPolicy>,
    /// Member resource names (`organizations/{o}/members/{m}`).
    pub escalation_contacts: Vec<String>,
    /// When two open cases of this template are the same piece of work.
    pub conflict: Option<ConflictRule>,
    /// Set when cases of this template are deal registrations (see [`DealFigures`]).
    pub deal_figures: Option<DealFigures>,
    pub built_in: bool,
}

/// Why a transition cannot fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownTransition { allowed: Vec<String> },
    NotFromHere { state: String, allowed: Vec<String> },
    RoleNotAllowed { roles: Vec<String> },
    MissingFields(Vec<String>),
}

/// Checks a template's `[conflict]` section against its fields, roles and transitions.
fn conflict_rule(
    c: &RawConflict,
    raw: &RawTemplate,
    fields: &HashMap<&str, &RawField>,
    roles: &HashSet<&str>,
) -> Result<ConflictRule, Vec<String>> {
    let mut problems = vec![];
    if c.fields.is_empty() {
        problems.push("conflict: fields must name what makes two cases the same work".into());
    }
    for f in &c.fields {
        match fields.get(f.as_str()) {
            None => problems.push(format!("conflict: field {f:?} is not declared")),
            Some(field) if !field.required_at_open => problems.push(format!(
                "conflict: field {f:?} must be required_at_open, so every case has it"
            )),
            Some(_) => {}
        }
    }
    if !roles.contains(c.judge.as_str()) {
        problems.push(format!(
            "conflict: judge {:?} is not one of the template's roles",
            c.judge
        ));
    }
    // Checked whatever the policy, so switching to first_come needs no other edit.
    if let Some(transition) = &c.reject_transition {
        match raw.transitions.iter().find(|t| t.name == *transition) {
            None => problems.push(format!(
                "conflict: reject_transition {transition:?} is not declared"
            )),
            Some(t) if !t.from.contains(&raw.initial) => problems.push(format!(
                "conflict: reject_transition {transition:?} must leave the initial state"
            )),
            Some(t) => {
                let missing: Vec<&String> = t
                    .required_fields
                    .iter()
                    .filter(|f| c.reason_field.as_ref() != Some(*f))
                    .collect();
                if !missing.is_empty() {
                    problems.push(format!(
                        "conflict: reject_transition {transition:?} requires {missing:?}, \
                         which the hub cannot fill (it fills reason_field only)"
                    ));
                }
            }
        }
    }
    if let Some(f) = &c.reason_field
        && fields.get(f.as_str()).is_none_or(|f| f.kind != "text")
    {
        problems.push(format!("conflict: reason_field {f:?} must be a text field"));
    }
    let policy = match c.policy.as_str() {
        "judge_decides" => ConflictPolicy::JudgeDecides,
        "first_come" => {
            if c.reject_transition.is_none() {
                problems.push(
                    "conflict: first_come needs reject_transition, the transition out of \
                     the initial state the hub fires on the later case"
                        .into(),
                );
            }
            ConflictPolicy::FirstCome {
                transition: c.reject_transition.clone().unwrap_or_default(),
                reason_field: c.reason_field.clone(),
            }
        }
        other => {
            problems.push(format!(
                "conflict: policy {other:?} must be judge_decides or first_come"
            ));
            ConflictPolicy::JudgeDecides
        }
    };
    if problems.is_empty() {
        Ok(ConflictRule {
            fields: c.fields.clone(),
            judge: c.judge.clone(),
            policy,
        })
    } else {
        Err(problems)
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 63
}

impl Template {
    /// Reads and checks a template; the error lists every problem found.
    pub fn from_toml(text: &str) -> Result<Template, String> {
        let raw: RawTemplate = toml::from_str(text).map_err(|e| e.to_string())?;
        Self::check(raw, false)
    }

    fn check(raw: RawTemplate, built_in: bool) -> Result<Template, String> {
        let mut problems: Vec<String> = vec![];
        let mut problem = |p: String| problems.push(p);
        if !is_identifier(&raw.name) {
            problem(format!(
                "name {:?} must be lower_snake_case (a–z, 0–9, _), starting with a letter",
                raw.name
            ));
        }
        let roles: HashSet<&str> = raw.roles.iter().map(String::as_str).collect();
        if roles.is_empty() {
            problem("roles must name at least one participant role".into());
        }
        for r in &raw.roles {
            if !is_identifier(r) {
                problem(format!("role {r:?} must be lower_snake_case"));
            }
        }
        let mut states: HashMap<&str, bool> = HashMap::new();
        for s in &raw.states {
            if !is_identifier(&s.name) {
                problem(format!("state {:?} must be lower_snake_case", s.name));
            }
            if states.insert(&s.name, s.is_final).is_some() {
                problem(format!("state {:?} is declared twice", s.name));
            }
        }
        if !states.values().any(|f| *f) {
            problem("at least one state must be final".into());
        }
        match states.get(raw.initial.as_str()) {
            None => problem(format!("initial state {:?} is not declared", raw.initial)),
            Some(true) => problem(format!("initial state {:?} is final", raw.initial)),
            Some(false) => {}
        }
        let mut fields: HashMap<&str, &RawField> = HashMap::new();
        if raw.fields.len() > MAX_FIELDS {
            problem(format!("at most {MAX_FIELDS} fields"));
        }
        for f in &raw.fields {
            if !is_identifier(&f.name) {
                problem(format!("field {:?} must be lower_snake_case", f.name));
            }
            if fields.insert(&f.name, f).is_some() {
                problem(format!("field {:?} is declared twice", f.name));
            }
            match f.kind.as_str() {
                "choice" if f.choices.is_empty() => {
                    problem(format!("choice field {:?} needs choices", f.name))
                }
                "choice" | "text" | "date" => {}
                other => problem(format!(
                    "field {:?} has kind {other:?}; use text, date or choice",
                    f.name
                )),
            }
        }
        let mut transition_names = HashSet::new();
        for t in &raw.transitions {
            let at = format!("transition {:?}", t.name);
            if !is_identifier(&t.name) {
                problem(format!("{at}: name must be lower_snake_case"));
            }
            if !transition_names.insert(t.name.as_str()) {
                problem(format!("{at} is declared twice"));
            }
            if t.from.is_empty() {
                problem(format!("{at}: from must name at least one state"));
            }
            for from in &t.from {
                match states.get(from.as_str()) {
                    None => problem(format!("{at}: from state {from:?} is not declared")),
                    Some(true) if !t.leaves_final => problem(format!(
                        "{at} leaves final state {from:?}; declare leaves_final = true if it is a reopen"
                    )),
                    _ => {}
                }
            }
            if !states.contains_key(t.to.as_str()) {
                problem(format!("{at}: to state {:?} is not declared", t.to));
            }
            if t.roles.is_empty() {
                problem(format!("{at}: roles must name who may fire it"));
            }
            for r in &t.roles {
                if !roles.contains(r.as_str()) {
                    problem(format!(
                        "{at}: role {r:?} is not one of the template's roles"
                    ));
                }
            }
            for f in &t.required_fields {
                if !fields.contains_key(f.as_str()) {
                    problem(format!("{at}: required field {f:?} is not declared"));
                }
            }
            if let Some(f) = &t.automatic_at {
                match fields.get(f.as_str()) {
                    Some(field) if field.kind == "date" => {}
                    _ => problem(format!("{at}: automatic_at must name a date field")),
                }
            }
            if let Some(days) = t.automatic_after_idle_days
                && !(1..=MAX_IDLE_DAYS).contains(&days)
            {
                problem(format!(
                    "{at}: automatic_after_idle_days must be 1 to {MAX_IDLE_DAYS}"
                ));
            }
        }
        // Every state must be reachable from the initial one, and every state that is
        // not final must lead somewhere.
        let mut reached: HashSet<&str> = HashSet::new();
        let mut queue = VecDeque::from([raw.initial.as_str()]);
        while let Some(s) = queue.pop_front() {
            if !reached.insert(s) {
                continue;
            }
            for t in raw
                .transitions
                .iter()
                .filter(|t| t.from.iter().any(|f| f == s))
            {
                queue.push_back(&t.to);
            }
        }
        for s in &raw.states {
            if !reached.contains(s.name.as_str()) {
                problem(format!(
                    "state {:?} cannot be reached from {:?}",
                    s.name, raw.initial
                ));
            }
            if !s.is_final && !raw.transitions.iter().any(|t| t.from.contains(&s.name)) {
                problem(format!(
                    "state {:?} is not final but no transition leaves it",
                    s.name
                ));
            }
        }
        for p in &raw.sla_pause_states {
            match states.get(p.as_str()) {
                None => problem(format!("sla_pause_states: {p:?} is not declared")),
                Some(true) => problem(format!("sla_pause_states: {p:?} is final")),
                Some(false) => {}
            }
        }
        let mut calendars = HashMap::new();
        for (name, c) in &raw.calendars {
            match Calendar::new(&c.time_zone, &c.days, &c.open, &c.close) {
                Ok(cal) => {
                    calendars.insert(name.as_str(), cal);
                }
                Err(e) => problem(format!("calendar {name:?}: {e}")),
            }
        }
        let mut sla = vec![];
        let mut sla_names = HashSet::new();
        for p in &raw.sla {
            let at = format!("sla {:?}", p.name);
            if !is_identifier(&p.name) || !sla_names.insert(p.name.as_str()) {
                problem(format!("{at}: name must be lower_snake_case and unique"));
            }
            if !(1..=99).contains(&p.warn_at_percent) {
                problem(format!("{at}: warn_at_percent must be 1 to 99"));
            }
            if p.stop_states.is_empty() {
                problem(format!(
                    "{at}: stop_states must name where the target is met"
                ));
            }
            for s in &p.stop_states {
                if !states.contains_key(s.as_str()) {
                    problem(format!("{at}: stop state {s:?} is not declared"));
                }
            }
            let mut targets = BTreeMap::new();
            for (priority, hours) in &p.target_hours {
                let Some(priority) = Priority::parse(priority) else {
                    problem(format!(
                        "{at}: {priority:?} is not a priority (low, normal, high, urgent)"
                    ));
                    continue;
                };
                // More than ten years is a typo, not a target.
                if !hours.is_finite() || *hours <= 0.0 || *hours > 87_600.0 {
                    problem(format!(
                        "{at}: target for {} must be more than 0 and at most 87600 hours",
                        priority.as_str()
                    ));
                    continue;
                }
                targets.insert(
                    priority,
                    SignedDuration::from_micros((hours * 3_600_000_000.0).round() as i64),
                );
            }
            let hours = match &p.calendar {
                None => Hours::Calendar,
                Some(name) => match calendars.get(name.as_str()) {
                    Some(c) => Hours::Business(c.clone()),
                    None => {
                        problem(format!("{at}: calendar {name:?} is not declared"));
                        Hours::Calendar
                    }
                },
            };
            sla.push(SlaPolicy {
                name: p.name.clone(),
                targets,
                calendar: p.calendar.clone(),
                hours,
                warn_at_percent: p.warn_at_percent,
                stop_states: p.stop_states.clone(),
                resume_on_reopen: p.resume_on_reopen,
            });
        }
        for c in &raw.escalation_contacts {
            let parts: Vec<&str> = c.split('/').collect();
            if !matches!(parts.as_slice(), ["organizations", o, "members", m] if !o.is_empty() && !m.is_empty())
            {
                problem(format!(
                    "escalation contact {c:?} must be organizations/{{organization}}/members/{{member}}"
                ));
            }
        }
        let conflict = raw.conflict.as_ref().and_then(|c| {
            let found = conflict_rule(c, &raw, &fields, &roles);
            if let Err(p) = &found {
                problems.extend(p.iter().cloned());
            }
            found.ok()
        });
        if let Some(d) = &raw.deal_figures {
            for t in d.approved.iter().chain(&d.won).chain(&d.lost) {
                if !raw.transitions.iter().any(|x| &x.name == t) {
                    problems.push(format!("deal_figures: transition {t:?} is not declared"));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Template {
            name: raw.name,
            title: raw.title,
            description: raw.description,
            roles: raw.roles,
            initial: raw.initial,
            states: raw
                .states
                .into_iter()
                .map(|s| State {
                    name: s.name,
                    is_final: s.is_final,
                })
                .collect(),
            transitions: raw
                .transitions
                .into_iter()
                .map(|t| Transition {
                    name: t.name,
                    from: t.from,
                    to: t.to,
                    roles: t.roles,
                    required_fields: t.required_fields,
                    automatic_at: t.automatic_at,
                    automatic_after_idle: t
                        .automatic_after_idle_days
                        .map(|d| SignedDuration::from_hours(i64::from(d) * 24)),
                })
                .collect(),
            fields: raw
                .fields
                .into_iter()
                .map(|f| Field {
                    kind: match f.kind.as_str() {
                        "date" => FieldKind::Date,
                        "choice" => FieldKind::Choice(f.choices),
                        _ => FieldKind::Text,
                    },
                    name: f.name,
                    required_at_open: f.required_at_open,
                })
                .collect(),
            sla_pause_states: raw.sla_pause_states,
            sla,
            escalation_contacts: raw.escalation_contacts,
            conflict,
            deal_figures: raw.deal_figures,
            built_in,
        })
    }

    pub fn is_final(&self, state: &str) -> bool {
        self.states.iter().any(|s| s.name == state && s.is_final)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn transition(&self, name: &str) -> Option<&Transition> {
        self.transitions.iter().find(|t| t.name == name)
    }

    /// The transitions out of `state` that a participant in any of `roles` may fire.
    pub fn allowed(&self, state: &str, roles: &[&str]) -> Vec<String> {
        self.transitions
            .iter()
            .filter(|t| t.from.iter().any(|f| f == state))
            .filter(|t| t.roles.iter().any(|r| roles.contains(&r.as_str())))
            .map(|t| t.name.clone())
            .collect()
    }

    /// Checks that `transition` may fire now: from `state`, by a participant in one of
    /// `roles` (`None`: the hub itself), with `fields` (the case's, with the request's
    /// merged in) holding every required field.
    pub fn fire(
        &self,
        state: &str,
        transition: &str,
        roles: Option<&[&str]>,
        fields: &BTreeMap<String, String>,
    ) -> Result<&Transition, Refusal> {
        let everyone: Vec<&str> = self.roles.iter().map(String::as_str).collect();
        let allowed = self.allowed(state, roles.unwrap_or(&everyone));
        let Some(t) = self.transition(transition) else {
            return Err(Refusal::UnknownTransition { allowed });
        };
        if !t.from.iter().any(|f| f == state) {
            return Err(Refusal::NotFromHere {
                state: state.to_owned(),
                allowed,
            });
        }
        if let Some(roles) = roles
            && !t.roles.iter().any(|r| roles.contains(&r.as_str()))
        {
            return Err(Refusal::RoleNotAllowed {
                roles: t.roles.clone(),
            });
        }
        let missing: Vec<String> = t
            .required_fields
            .iter()
            .filter(|f| fields.get(*f).is_none_or(|v| v.is_empty()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Refusal::MissingFields(missing));
        }
        Ok(t)
    }

    /// Checks one field value against its declaration; returns the value as stored
    /// (trimmed, CRLF as LF). Every value passes the one text rule first; a text field
    /// may span lines, as templates do not say which fields are one line and some
    /// (`rejection_reason`) are prose.
    pub fn check_field(&self, name: &str, raw: &str) -> Result<String, FieldViolation> {
        let Some(field) = self.fields.iter().find(|f| f.name == name) else {
            let known: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
            return Err(FieldViolation::new(
                "",
                format!(
                    "is not a field of {}; its fields are: {}",
                    self.name,
                    if known.is_empty() {
                        "(none)".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        let value = text::check(raw.trim(), MAX_FIELD_CHARS, Lines::Many)?;
        let wrong = |why: String| Err(FieldViolation::new("", why));
        match &field.kind {
            FieldKind::Text => Ok(value),
            FieldKind::Date if value.parse::<Date>().is_ok() => Ok(value),
            FieldKind::Date => wrong("must be a date such as 2026-12-31".to_owned()),
            FieldKind::Choice(choices) if choices.contains(&value) => Ok(value),
            FieldKind::Choice(choices) => wrong(format!("must be one of {}", choices.join(", "))),
        }
    }
}

/// The templates a hub runs, by name.
#[derive(Debug, Clone, Default)]
pub struct Workflows {
    templates: BTreeMap<String, Template>,
}

impl Workflows {
    /// The built-in templates alone.
    pub fn built_in() -> Workflows {
        Workflows::with_files(vec![]).expect("built-in templates are valid")
    }

    /// The built-in templates, then each file's template, given as its path and what
    /// reading it gave (a file naming a built-in template replaces it). Every problem
    /// in every file is reported, by path.
    pub fn with_files(files: Vec<(String, std::io::Result<String>)>) -> Result<Workflows, String> {
        let mut templates = BTreeMap::new();
        for (name, text) in BUILT_IN {
            let raw: RawTemplate =
                toml::from_str(text).map_err(|e| format!("built-in template {name}: {e}"))?;
            let t =
                Template::check(raw, true).map_err(|e| format!("built-in template {name}: {e}"))?;
            templates.insert(t.name.clone(), t);
        }
        let mut problems = vec![];
        let mut from_files = HashSet::new();
        for (path, read) in files {
            let text = match read {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("workflow template {path}: cannot read it: {e}"));
                    continue;
                }
            };
            match Template::from_toml(&text) {
                Ok(t) if !from_files.insert(t.name.clone()) => problems.push(format!(
                    "workflow template {path}: {:?} is defined by another file too",
                    t.name
                )),
                Ok(t) => {
                    templates.insert(t.name.clone(), t);
                }
                Err(e) => problems.push(format!("workflow template {path}: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(Workflows { templates })
        } else {
            Err(problems.join("\n"))
        }
    }

    pub fn get(&self, name: &str) -> Option<&Template> {
        self.templates.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Template> {
        self.templates.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built_in() -> Workflows {
        Workflows::built_in()
    }

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_built_in_templates_load() {
        let w = built_in();
        let names: Vec<&str> = w.all().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["deal_registration", "return_authorization", "service_case"]
        );
    }

    #[test]
    fn transitions_are_checked_for_state_role_and_fields() {
        let w = built_in();
        let t = w.get("service_case").unwrap();
        assert_eq!(
            t.fire("new", "resolve", Some(&["distributor"]), &fields(&[])),
            Err(Refusal::NotFromHere {
                state: "new".into(),
                allowed: vec!["triage".into()]
            })
        );
        assert!(matches!(
            t.fire("new", "fly", Some(&["vendor"]), &fields(&[])),
            Err(Refusal::UnknownTransition { .. })
        ));
        assert!(matches!(
            t.fire("in_progress", "resolve", Some(&["retailer"]), &fields(&[])),
            Err(Refusal::RoleNotAllowed { .. })
        ));
        assert_eq!(
            t.fire("in_progress", "resolve", Some(&["vendor"]), &fields(&[])),
            Err(Refusal::MissingFields(vec!["resolution_code".into()]))
        );
        assert!(
            t.fire(
                "in_progress",
                "resolve",
                Some(&["vendor"]),
                &fields(&[("resolution_code", "repaired")])
            )
            .is_ok()
        );
        assert_eq!(
            t.check_field("resolution_code", "magic")
                .unwrap_err()
                .description,
            "must be one of repaired, replaced, refunded, no_fault_found, workaround"
        );
        assert_eq!(
            t.check_field("product", " Blender\r\nBX-1 ").unwrap(),
            "Blender\nBX-1"
        );
        assert_eq!(
            t.check_field("product", "Blender\0").unwrap_err().reason(),
            "INVALID_TEXT"
        );
        assert_eq!(
            t.check_field("resolution_code", &"x".repeat(MAX_FIELD_CHARS + 1))
                .unwrap_err()
                .reason(),
            "TEXT_TOO_LONG"
        );
    }

    const MINIMAL: &str = r#"
        name = "tiny"
        roles = ["vendor"]
        initial = "open"
        [[states]]
        name = "open"
        [[states]]
        name = "done"
        final = true
        [[transitions]]
        name = "finish"
        from = ["open"]
        to = "done"
        roles = ["vendor"]
    "#;

    #[test]
    fn a_minimal_template_loads() {
        let t = Template::from_toml(MINIMAL).unwrap();
        assert_eq!(t.allowed("open", &["vendor"]), ["finish"]);
        assert!(t.is_final("done"));
    }

    #[test]
    fn fields_and_transitions_are_checked_one_by_one() {
        let field = |name: &str, kind: &str, choices: &str| {
            format!("[[fields]]\nname = {name:?}\nkind = {kind:?}\nchoices = [{choices}]\n")
        };
        let longest = format!("a{}", "b".repeat(62));
        let fine = format!(
            "{MINIMAL}{}{}{}",
            field(&longest, "text", ""),
            field("size", "choice", "\"s\", \"m\""),
            field("due_9", "date", "")
        );
        assert!(
            Template::from_toml(&fine).is_ok(),
            "{:?}",
            Template::from_toml(&fine)
        );
        for (name, why) in [
            ("Size", "field \"Size\" must be lower_snake_case"),
            ("9lives", "field \"9lives\" must be lower_snake_case"),
            ("with-dash", "field \"with-dash\" must be lower_snake_case"),
            ("", "field \"\" must be lower_snake_case"),
        ] {
            let err =
                Template::from_toml(&format!("{MINIMAL}{}", field(name, "text", ""))).unwrap_err();
            assert!(err.contains(why), "{why:?} missing from {err}");
        }
        let too_long = format!("{longest}c");
        let err =
            Template::from_toml(&format!("{MINIMAL}{}", field(&too_long, "text", ""))).unwrap_err();
        assert!(err.contains("must be lower_snake_case"), "{err}");
        let err =
            Template::from_toml(&format!("{MINIMAL}{}", field("size", "choice", ""))).unwrap_err();
        assert!(err.contains("choice field \"size\" needs choices"), "{err}");
        // At most MAX_FIELDS fields.
        let many = |n: usize| -> String {
            (0..n)
                .map(|i| field(&format!("f{i}"), "text", ""))
                .collect()
        };
        assert!(Template::from_toml(&format!("{MINIMAL}{}", many(MAX_FIELDS))).is_ok());
        let err = Template::from_toml(&format!("{MINIMAL}{}", many(MAX_FIELDS + 1))).unwrap_err();
        assert!(
            err.contains(&format!("at most {MAX_FIELDS} fields")),
            "{err}"
        );
        // A transition from a state nobody declared; one out of a final state needs
        // leaves_final.
        let transition = |from: &str, leaves_final: bool| {
            format!(
                "[[transitions]]\nname = \"back\"\nfrom = [{from:?}]\nto = \"open\"\n\
                 roles = [\"vendor\"]\nleaves_final = {leaves_final}\n"
            )
        };
        let err =
            Template::from_toml(&format!("{MINIMAL}{}", transition("nowhere", false))).unwrap_err();
        assert!(
            err.contains("from state \"nowhere\" is not declared"),
            "{err}"
        );
        let err =
            Template::from_toml(&format!("{MINIMAL}{}", transition("done", false))).unwrap_err();
        assert!(err.contains("leaves final state \"done\""), "{err}");
        assert!(Template::from_toml(&format!("{MINIMAL}{}", transition("done", true))).is_ok());
    }

    #[test]
    fn sla_policies_escalation_contacts_and_field_values_are_checked() {
        let sla = |name: &str, hours: &str| {
            format!(
                "[[sla]]\nname = {name:?}\ntarget_hours = {{ normal = {hours} }}\n\
                 warn_at_percent = 50\nstop_states = [\"done\"]\n"
            )
        };
        let load = |extra: &str| Template::from_toml(&format!("{MINIMAL}{extra}"));
        assert!(load(&sla("resolution", "87600")).is_ok());
        for hours in ["0", "-1", "87601", "nan", "inf"] {
            let err = load(&sla("resolution", hours)).unwrap_err();
            assert!(
                err.contains("must be more than 0 and at most 87600 hours"),
                "{hours}: {err}"
            );
        }
        for extra in [
            sla("Resolution", "8"),
            format!("{}{}", sla("resolution", "8"), sla("resolution", "9")),
        ] {
            let err = load(&extra).unwrap_err();
            assert!(err.contains("must be lower_snake_case and unique"), "{err}");
        }
        // Escalation contacts are member names.
        let with_contact =
            |c: &str| Template::from_toml(&format!("escalation_contacts = [{c:?}]\n{MINIMAL}"));
        assert!(with_contact("organizations/acme/members/m1").is_ok());
        for bad in [
            "organizations//members/m1",
            "organizations/acme/members/",
            "organizations/acme/m1",
            "members/m1",
        ] {
            let err = with_contact(bad).unwrap_err();
            assert!(err.contains("must be organizations/"), "{bad}: {err}");
        }
        // An automatic transition fires on a date field, not on text.
        let automatic = |kind: &str| {
            format!(
                "[[fields]]\nname = \"expiry\"\nkind = {kind:?}\n\
                 [[transitions]]\nname = \"expire\"\nfrom = [\"open\"]\nto = \"done\"\n\
                 roles = [\"vendor\"]\nautomatic_at = \"expiry\"\n"
            )
        };
        assert!(load(&automatic("date")).is_ok());
        let err = load(&automatic("text")).unwrap_err();
        assert!(err.contains("automatic_at must name a date field"), "{err}");
        // Field values follow their kind.
        let t = load(
            "[[fields]]\nname = \"expiry\"\nkind = \"date\"\n\
             [[fields]]\nname = \"size\"\nkind = \"choice\"\nchoices = [\"s\", \"m\"]\n\
             [[fields]]\nname = \"note\"\nkind = \"text\"\n",
        )
        .unwrap();
        assert_eq!(t.fields[0].kind, FieldKind::Date);
        assert_eq!(
            t.check_field("expiry", " 2026-12-31 ").unwrap(),
            "2026-12-31"
        );
        assert!(t.check_field("expiry", "tomorrow").is_err());
        assert_eq!(t.check_field("size", "m").unwrap(), "m");
        assert!(t.check_field("size", "xl").is_err());
        assert_eq!(t.check_field("note", "tomorrow").unwrap(), "tomorrow");
        assert!(t.has_role("vendor"));
        assert!(!t.has_role("buyer") && !t.has_role(""));
    }

    #[test]
    fn invalid_templates_are_refused_with_every_reason() {
        let bad = MINIMAL.replace("to = \"done\"", "to = \"open\"")
            + r#"
        [[states]]
        name = "limbo"
        [[transitions]]
        name = "reopen"
        from = ["done"]
        to = "open"
        roles = ["buyer"]
        [[sla]]
        name = "resolution"
        target_hours = { normal = 8, whenever = 2 }
        warn_at_percent = 120
        stop_states = ["done"]
        calendar = "office"
        "#;
        let err = Template::from_toml(&bad).unwrap_err();
        for expected in [
            "state \"done\" cannot be reached",
            "state \"limbo\" cannot be reached",
            "state \"limbo\" is not final but no transition leaves it",
            "leaves final state \"done\"",
            "role \"buyer\" is not one of the template's roles",
            "warn_at_percent must be 1 to 99",
            "\"whenever\" is not a priority",
            "calendar \"office\" is not declared",
        ] {
            assert!(err.contains(expected), "{expected:?} missing from {err}");
        }
        let unknown_key = MINIMAL.replace("initial", "initail");
        assert!(
            Template::from_toml(&unknown_key)
                .unwrap_err()
                .contains("initail")
        );
    }

    #[test]
    fn files_load_beside_the_built_ins_and_report_their_path() {
        let file = |path: &str, text: String| (path.to_owned(), Ok(text));
        let w = Workflows::with_files(vec![file("t/tiny.toml", MINIMAL.to_owned())]).unwrap();
        assert!(w.get("tiny").is_some() && w.get("service_case").is_some());
        assert!(!w.get("tiny").unwrap().built_in);
        let bad = MINIMAL.replace("roles = [\"vendor\"]\n", "roles = []\n");
        let err = Workflows::with_files(vec![file("t/bad.toml", bad)]).unwrap_err();
        assert!(err.contains("bad.toml"), "{err}");
        let unread = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err =
            Workflows::with_files(vec![("t/missing.toml".to_owned(), Err(unread))]).unwrap_err();
        assert!(err.contains("missing.toml: cannot read it"), "{err}");
    }

    #[test]
    fn conflict_rules_and_idle_transitions_are_checked() {
        let with = |extra: &str| {
            Template::from_toml(&format!(
                "{MINIMAL}
                [[transitions]]
                name = \"refuse\"
                from = [\"open\"]
                to = \"done\"
                roles = [\"vendor\"]
                required_fields = [\"why\"]
                {extra}
                [[fields]]
                name = \"line\"
                kind = \"text\"
                required_at_open = true
                [[fields]]
                name = \"why\"
                kind = \"text\"
                [[fields]]
                name = \"note\"
                kind = \"text\"
                "
            ))
        };
        let conflict = |body: &str| with(&format!("[conflict]\n{body}"));
        let t = conflict(
            "fields = [\"line\"]\njudge = \"vendor\"\npolicy = \"first_come\"\n\
             reject_transition = \"refuse\"\nreason_field = \"why\"",
        )
        .unwrap();
        let rule = t.conflict.unwrap();
        assert_eq!(rule.fields, ["line"]);
        assert_eq!(
            rule.policy,
            ConflictPolicy::FirstCome {
                transition: "refuse".into(),
                reason_field: Some("why".into())
            }
        );
        let judged =
            conflict("fields = [\"line\"]\njudge = \"vendor\"\npolicy = \"judge_decides\"");
        assert_eq!(
            judged.unwrap().conflict.unwrap().policy,
            ConflictPolicy::JudgeDecides
        );
        for (body, why) in [
            (
                "fields = []\njudge = \"vendor\"\npolicy = \"judge_decides\"",
                "fields must name",
            ),
            (
                "fields = [\"colour\"]\njudge = \"vendor\"\npolicy = \"judge_decides\"",
                "field \"colour\" is not declared",
            ),
            (
                "fields = [\"note\"]\njudge = \"vendor\"\npolicy = \"judge_decides\"",
                "\"note\" must be required_at_open",
            ),
            (
                "fields = [\"line\"]\njudge = \"king\"\npolicy = \"judge_decides\"",
                "judge \"king\" is not one of",
            ),
            (
                "fields = [\"line\"]\njudge = \"vendor\"\npolicy = \"coin_toss\"",
                "policy \"coin_toss\" must be",
            ),
            (
                "fields = [\"line\"]\njudge = \"vendor\"\npolicy = \"first_come\"",
                "first_come needs reject_transition",
            ),
            (
                "fields = [\"line\"]\njudge = \"vendor\"\npolicy = \"first_come\"\nreject_transition = \"fly\"",
                "\"fly\" is not declared",
            ),
            (
                "fields = [\"line\"]\njudge = \"vendor\"\npolicy = \"first_come\"\nreject_transition = \"refuse\"",
                "requires [\"why\"], which the hub cannot fill",
            ),
            (
                "fields = [\"line\"]\njudge = \"vendor\"\npolicy = \"judge_decides\"\nreason_field = \"line2\"",
                "reason_field \"line2\" must be a text field",
            ),
        ] {
            let err = conflict(body).unwrap_err();
            assert!(err.contains(why), "{why:?} missing from {err}");
        }
        let idle = |days: &str| {
            with(&format!(
                "[[transitions]]\nname = \"lapse\"\nfrom = [\"open\"]\nto = \"done\"\n\
                 roles = [\"vendor\"]\nautomatic_after_idle_days = {days}\n"
            ))
        };
        let t = idle("90").unwrap();
        assert_eq!(
            t.transition("lapse").unwrap().automatic_after_idle,
            Some(SignedDuration::from_hours(90 * 24))
        );
        for days in ["0", "3651"] {
            let err = idle(days).unwrap_err();
            assert!(
                err.contains("automatic_after_idle_days must be 1 to 3650"),
                "{err}"
            );
        }
        // The built-in deal registration judges conflicts by product line.
        let w = Workflows::built_in();
        let deal = w.get("deal_registration").unwrap();
        let rule = deal.conflict.as_ref().unwrap();
        assert_eq!(
            (rule.fields.as_slice(), rule.judge.as_str()),
            (&["product_line".to_owned()][..], "vendor")
        );
        // Its deal figures name its transitions; a name it lacks is refused.
        let figures = deal.deal_figures.as_ref().unwrap();
        assert_eq!(figures.figure_of("win"), Some("won"));
        assert_eq!(figures.figure_of("expire"), None);
        let err = with("[deal_figures]\nwon = [\"triumph\"]").unwrap_err();
        assert!(
            err.contains("transition \"triumph\" is not declared"),
            "{err}"
        );
    }
}
