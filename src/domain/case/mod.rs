//! Cases and their tasks: coordination between participant organizations, each in a
//! role of the case's workflow template.

use std::collections::BTreeMap;

use jiff::Timestamp;

pub mod conflict;
pub mod priority;
pub mod sla;
pub mod timer;
pub mod workflow;

use self::conflict::{Conflict, ConflictRule};
use self::sla::SlaClock;
use self::workflow::Template;
use crate::domain::OrgRef;
use crate::domain::error::FieldViolation;
use crate::domain::event::EventType;
use crate::domain::text;

pub use self::priority::Priority;

/// Longest case or task title.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest description, comment body or reason.
pub const MAX_BODY_CHARS: usize = 10_000;
/// Most participant organizations on one case: a supply chain, not a mailing list.
pub const MAX_PARTICIPANTS: usize = 20;
/// Most escalation contacts named on one case.
pub const MAX_ESCALATION_CONTACTS: usize = 20;

/// A case or task title: one line of 1 to 200 characters, trimmed.
pub fn title(raw: &str) -> Result<String, FieldViolation> {
    text::line(raw, MAX_TITLE_CHARS).and_then(text::required)
}

/// A description, comment, reason or note: at most 10,000 characters over any number
/// of lines, trimmed; may be empty (chain [`text::required`] where it must be given).
pub fn body(raw: &str) -> Result<String, FieldViolation> {
    text::paragraph(raw, MAX_BODY_CHARS)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub organization: OrgRef,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub id: String,
    pub template: String,
    pub state: String,
    pub title: String,
    pub description: String,
    pub priority: Priority,
    pub customer_id: String,
    pub participants: Vec<Participant>,
    pub fields: BTreeMap<String, String>,
    /// Member resource names.
    pub escalation_contacts: Vec<String>,
    pub clocks: Vec<SlaClock>,
    /// Open cases this one conflicts with, each with the organization judging it.
    pub conflicts: Vec<Conflict>,
    pub opened_by: OrgRef,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    pub state_time: Timestamp,
    /// Bumped by every change the etag covers.
    pub revision: i64,
}

impl Case {
    pub fn participant(&self, org_id: &str) -> Option<&Participant> {
        self.participants
            .iter()
            .find(|p| p.organization.id == org_id)
    }

    pub fn breached(&self) -> bool {
        self.clocks.iter().any(|c| c.breach_time.is_some())
    }

    /// The roles `org_id` holds on the case.
    pub fn roles_of(&self, org_id: &str) -> Vec<&str> {
        self.participants
            .iter()
            .filter(|p| p.organization.id == org_id)
            .map(|p| p.role.as_str())
            .collect()
    }

    /// The organizations judging both this case and `other` when the two conflict under
    /// `rule` (empty when they do not): same template and customer, opened by different
    /// organizations, the same values of the rule's fields, a judge on both. Whether
    /// both are open is the caller's to know.
    pub fn conflict_judges(&self, rule: &ConflictRule, other: &Case) -> Vec<OrgRef> {
        let key = rule.key(&self.fields);
        if self.id == other.id
            || self.template != other.template
            || self.customer_id != other.customer_id
            || self.opened_by.id == other.opened_by.id
            || key.is_none()
            || key != rule.key(&other.fields)
        {
            return vec![];
        }
        let judges_of = |c: &Case| -> Vec<OrgRef> {
            c.participants
                .iter()
                .filter(|p| p.role == rule.judge)
                .map(|p| p.organization.clone())
                .collect()
        };
        let on_other = judges_of(other);
        let mut both: Vec<OrgRef> = judges_of(self)
            .into_iter()
            .filter(|o| on_other.iter().any(|x| x.id == o.id))
            .collect();
        both.dedup_by(|x, y| x.id == y.id);
        both
    }

    /// Moves the case into state `to` at `now`; its SLA clocks follow.
    pub fn enter_state(&mut self, template: &Template, to: &str, now: Timestamp) {
        to.clone_into(&mut self.state);
        self.state_time = now;
        self.update_time = now;
        for clock in &mut self.clocks {
            clock.enter(template, to, now);
        }
    }
}

/// Who may read a comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommentVisibility {
    Participants,
    /// The author's organization only.
    Organization,
}

impl CommentVisibility {
    pub fn as_str(self) -> &'static str {
        match self {
            CommentVisibility::Participants => "participants",
            CommentVisibility::Organization => "organization",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "participants" => Some(CommentVisibility::Participants),
            "organization" => Some(CommentVisibility::Organization),
            _ => None,
        }
    }
}

/// One line of a case's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub id: String,
    pub case_id: String,
    /// The event type it matches (`case.transitioned`, …).
    pub kind: String,
    /// The acting organization; `None` when the hub acted.
    pub organization: Option<OrgRef>,
    pub member_id: Option<String>,
    pub transition: String,
    pub from_state: String,
    pub to_state: String,
    pub body: String,
    pub visibility: CommentVisibility,
    pub subject: String,
    pub create_time: Timestamp,
}

impl HistoryEntry {
    /// An entry every participant reads, with no details yet.
    pub fn new(
        case_id: &str,
        kind: EventType,
        organization: Option<OrgRef>,
        now: Timestamp,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            case_id: case_id.to_owned(),
            kind: kind.as_str().to_owned(),
            organization,
            member_id: None,
            transition: String::new(),
            from_state: String::new(),
            to_state: String::new(),
            body: String::new(),
            visibility: CommentVisibility::Participants,
            subject: String::new(),
            create_time: now,
        }
    }

    pub fn visible_to(&self, org_id: &str) -> bool {
        match self.visibility {
            CommentVisibility::Participants => true,
            CommentVisibility::Organization => {
                self.organization.as_ref().is_some_and(|o| o.id == org_id)
            }
        }
    }
}

/// Where a task stands. Declined and completed are the ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Assigned,
    Accepted,
    Declined { reason: String },
    Completed { note: String },
}

impl TaskState {
    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Declined { .. } => "declined",
            TaskState::Completed { .. } => "completed",
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, TaskState::Assigned | TaskState::Accepted)
    }
}

/// What the assignee does with a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskAction {
    Accept,
    Decline { reason: String },
    Complete { note: String },
}

impl TaskAction {
    pub fn event_type(&self) -> EventType {
        match self {
            TaskAction::Accept => EventType::TaskAccepted,
            TaskAction::Decline { .. } => EventType::TaskDeclined,
            TaskAction::Complete { .. } => EventType::TaskCompleted,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub case_id: String,
    pub title: String,
    pub description: String,
    pub assignee: OrgRef,
    pub assignee_member_id: Option<String>,
    pub due_time: Option<Timestamp>,
    pub state: TaskState,
    pub overdue: bool,
    pub assigned_by: OrgRef,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
}

impl Task {
    /// The state after `action`, or why it cannot happen.
    pub fn apply(&self, action: TaskAction) -> Result<TaskState, String> {
        match (&self.state, action) {
            (TaskState::Assigned, TaskAction::Accept) => Ok(TaskState::Accepted),
            (s, TaskAction::Decline { reason }) if s.is_open() => {
                Ok(TaskState::Declined { reason })
            }
            (s, TaskAction::Complete { note }) if s.is_open() => Ok(TaskState::Completed { note }),
            (s, action) => Err(format!(
                "the task is {}; it cannot be {}",
                s.name(),
                match action {
                    TaskAction::Accept => "accepted",
                    TaskAction::Decline { .. } => "declined",
                    TaskAction::Complete { .. } => "completed",
                }
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_one_line_and_bodies_may_span_lines() {
        let reason = |r: Result<String, FieldViolation>| r.unwrap_err().reason();
        assert_eq!(title(" Broken jar ").unwrap(), "Broken jar");
        assert_eq!(reason(title("")), "FIELD_REQUIRED");
        assert_eq!(reason(title("Broken\njar")), "INVALID_TEXT");
        assert_eq!(reason(title("jar\u{202E}gpj.exe")), "INVALID_TEXT");
        assert_eq!(
            reason(title(&"ß".repeat(MAX_TITLE_CHARS + 1))),
            "TEXT_TOO_LONG"
        );
        assert_eq!(body("one\r\ntwo").unwrap(), "one\ntwo");
        assert_eq!(reason(body("one\0two")), "INVALID_TEXT");
        assert_eq!(body("").unwrap(), "");
    }

    fn org(id: &str) -> OrgRef {
        OrgRef {
            id: id.into(),
            slug: super::super::Slug::parse(&format!("org-{id}")).unwrap(),
        }
    }

    fn case(participants: &[(&str, &str)], clocks: Vec<SlaClock>) -> Case {
        Case {
            id: "k".into(),
            template: "service_case".into(),
            state: "new".into(),
            title: "Broken jar".into(),
            description: String::new(),
            priority: Priority::High,
            customer_id: "c".into(),
            participants: participants
                .iter()
                .map(|(id, role)| Participant {
                    organization: org(id),
                    role: (*role).into(),
                })
                .collect(),
            fields: BTreeMap::new(),
            escalation_contacts: vec![],
            clocks,
            conflicts: vec![],
            opened_by: org("o1"),
            create_time: Timestamp::UNIX_EPOCH,
            update_time: Timestamp::UNIX_EPOCH,
            state_time: Timestamp::UNIX_EPOCH,
            revision: 1,
        }
    }

    #[test]
    fn an_organization_acts_on_a_case_in_every_role_it_holds_and_no_other() {
        let c = case(
            &[("o1", "retailer"), ("o2", "vendor"), ("o2", "distributor")],
            vec![],
        );
        assert_eq!(
            c.participant("o1").map(|p| p.role.as_str()),
            Some("retailer")
        );
        assert_eq!(c.participant("o2").map(|p| p.role.as_str()), Some("vendor"));
        assert_eq!(c.participant("o3"), None);
        assert_eq!(c.roles_of("o2"), ["vendor", "distributor"]);
        assert_eq!(c.roles_of("o1"), ["retailer"]);
        assert!(c.roles_of("o3").is_empty());
    }

    #[test]
    fn entering_a_state_moves_the_case_and_its_sla_clocks() {
        use crate::domain::case::sla::Phase;
        let workflows = crate::domain::case::workflow::Workflows::built_in();
        let template = workflows.get("service_case").unwrap();
        let opened: Timestamp = "2026-01-05T10:00:00Z".parse().unwrap();
        let clocks = SlaClock::start_all(template, Priority::High, "new", opened);
        let mut c = case(&[("o1", "retailer")], clocks);
        assert!(!c.breached());

        let waiting: Timestamp = "2026-01-05T11:00:00Z".parse().unwrap();
        c.enter_state(template, "waiting_on_customer", waiting);
        assert_eq!(
            (c.state.as_str(), c.state_time, c.update_time),
            ("waiting_on_customer", waiting, waiting)
        );
        // Waiting on the customer meets the first response and pauses the resolution.
        let phases: Vec<Phase> = c.clocks.iter().map(|k| k.phase).collect();
        assert_eq!(
            phases,
            [Phase::Met { at: waiting }, Phase::Paused { since: waiting }]
        );

        c.clocks[1].breach_time = Some(waiting);
        assert!(c.breached());
    }

    #[test]
    fn an_organization_only_comment_is_read_by_its_author_alone() {
        let now = Timestamp::UNIX_EPOCH;
        let mut entry = HistoryEntry::new("k", EventType::CaseCommented, Some(org("o1")), now);
        assert!(entry.visible_to("o1") && entry.visible_to("o2"));
        entry.visibility = CommentVisibility::Organization;
        assert!(entry.visible_to("o1"));
        assert!(!entry.visible_to("o2"));
        // An entry the hub wrote has no author organization to share it with.
        entry.organization = None;
        assert!(!entry.visible_to("o1"));
    }

    #[test]
    fn stored_names_read_back_as_the_same_values() {
        // These strings are in the database and on the wire; renaming one breaks both.
        for (p, name) in [
            (Priority::Low, "low"),
            (Priority::Normal, "normal"),
            (Priority::High, "high"),
            (Priority::Urgent, "urgent"),
        ] {
            assert_eq!(p.as_str(), name);
            assert_eq!(Priority::parse(name), Some(p));
        }
        assert_eq!(Priority::parse("URGENT"), None);
        for (v, name) in [
            (CommentVisibility::Participants, "participants"),
            (CommentVisibility::Organization, "organization"),
        ] {
            assert_eq!(v.as_str(), name);
            assert_eq!(CommentVisibility::parse(name), Some(v));
        }
        assert_eq!(CommentVisibility::parse("public"), None);
    }

    #[test]
    fn each_task_action_announces_its_own_event_type() {
        let actions = [
            (TaskAction::Accept, "task.accepted"),
            (
                TaskAction::Decline {
                    reason: "busy".into(),
                },
                "task.declined",
            ),
            (
                TaskAction::Complete {
                    note: "done".into(),
                },
                "task.completed",
            ),
        ];
        for (action, event_type) in actions {
            assert_eq!(action.event_type().as_str(), event_type);
            assert_eq!(EventType::parse(event_type), Some(action.event_type()));
        }
    }

    #[test]
    fn tasks_move_from_assigned_to_an_end_once() {
        let org = org("o");
        let mut task = Task {
            id: "t".into(),
            case_id: "c".into(),
            title: "Ship a replacement".into(),
            description: String::new(),
            assignee: org.clone(),
            assignee_member_id: None,
            due_time: None,
            state: TaskState::Assigned,
            overdue: false,
            assigned_by: org,
            create_time: Timestamp::UNIX_EPOCH,
            update_time: Timestamp::UNIX_EPOCH,
        };
        task.state = task.apply(TaskAction::Accept).unwrap();
        assert_eq!(
            task.apply(TaskAction::Accept).unwrap_err(),
            "the task is accepted; it cannot be accepted"
        );
        task.state = task
            .apply(TaskAction::Complete {
                note: "done".into(),
            })
            .unwrap();
        assert!(
            task.apply(TaskAction::Decline {
                reason: "no".into()
            })
            .is_err()
        );
        // Neither end is left again; both open states may end either way.
        let declined = TaskState::Declined {
            reason: "no".into(),
        };
        for end in [task.state.clone(), declined.clone()] {
            task.state = end;
            let again = TaskAction::Complete {
                note: "again".into(),
            };
            assert!(task.apply(again).is_err(), "{:?}", task.state);
        }
        for open in [TaskState::Assigned, TaskState::Accepted] {
            task.state = open;
            let decline = TaskAction::Decline {
                reason: "no".into(),
            };
            assert_eq!(task.apply(decline), Ok(declined.clone()));
            let complete = TaskAction::Complete {
                note: "done".into(),
            };
            assert!(matches!(
                task.apply(complete),
                Ok(TaskState::Completed { .. })
            ));
        }
    }

    fn deal(id: &str, by: &str, judges: &[&str], product: &str) -> Case {
        let mut c = case(&[(by, "reseller")], vec![]);
        c.participants.extend(judges.iter().map(|j| Participant {
            organization: org(j),
            role: "vendor".into(),
        }));
        c.id = id.into();
        c.template = "deal_registration".into();
        c.opened_by = org(by);
        c.fields = BTreeMap::from([("product_line".to_owned(), product.to_owned())]);
        c
    }

    #[test]
    fn two_partners_registering_one_customer_and_product_line_conflict_before_a_common_judge() {
        use super::conflict::ConflictPolicy;
        let r = ConflictRule {
            fields: vec!["product_line".into()],
            judge: "vendor".into(),
            policy: ConflictPolicy::JudgeDecides,
        };
        let ids = |orgs: Vec<OrgRef>| -> Vec<String> { orgs.into_iter().map(|o| o.id).collect() };
        let a = deal("a", "r1", &["v"], "Blenders");
        let judges = |b: &Case| ids(a.conflict_judges(&r, b));
        assert_eq!(judges(&deal("b", "r2", &["v"], " blenders ")), ["v"]);
        // The same organization twice, another product line, another customer,
        // another template, the case itself: no conflict.
        assert!(judges(&deal("b", "r1", &["v"], "Blenders")).is_empty());
        assert!(judges(&deal("b", "r2", &["v"], "Toasters")).is_empty());
        let mut other_customer = deal("b", "r2", &["v"], "Blenders");
        other_customer.customer_id = "someone-else".into();
        assert!(judges(&other_customer).is_empty());
        let mut other_template = deal("b", "r2", &["v"], "Blenders");
        other_template.template = "service_case".into();
        assert!(judges(&other_template).is_empty());
        assert!(judges(&a.clone()).is_empty());
        // Only a judge on both hears of it: a vendor the other registration was not
        // made with does not.
        assert!(judges(&deal("b", "r2", &["w"], "Blenders")).is_empty());
        assert_eq!(judges(&deal("c", "r3", &["w", "v"], "Blenders")), ["v"]);
        // A case without the field conflicts with nothing.
        let mut bare = deal("d", "r4", &["v"], "Blenders");
        bare.fields.clear();
        assert!(
            bare.conflict_judges(&r, &deal("e", "r5", &["v"], ""))
                .is_empty()
        );
    }
}
