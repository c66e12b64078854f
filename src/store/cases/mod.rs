//! Cases, their participants, SLA clocks, history and tasks, and the durable timers
//! that fire warnings, breaches, overdue tasks and automatic transitions.
//!
//! A timer row exists only while it is pending. Firing deletes it in the transaction
//! that makes the change and emits the events, guarded by its due time; so a timer
//! fires once whichever replica gets there first, and a timer moved by a concurrent
//! transition is not fired at its old time.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use sqlx::{AnyConnection, FromRow};

use super::{Dialect, Page, Store, Tx, corrupt, micros, timestamp};
use crate::domain::case::conflict::Conflict;
use crate::domain::case::sla::{Phase, SlaClock};
use crate::domain::case::timer::{Timer, TimerKind, schedule};
use crate::domain::case::workflow::Template;
use crate::domain::case::{
    Case, CommentVisibility, HistoryEntry, Participant, Priority, Task, TaskState,
};
use crate::domain::error::{Error, Result};
use crate::domain::{OrgRef, Slug};

mod history;
mod tasks;
mod timers;

const CASE_COLUMNS: &str = "c.id, c.template, c.state, c.title, c.description, c.priority, \
     c.customer_id, c.fields, c.escalation_contacts, c.opened_by, o.slug AS opened_by_slug, \
     c.create_time, c.update_time, c.state_time, c.revision";

#[derive(FromRow)]
struct CaseRow {
    id: String,
    template: String,
    state: String,
    title: String,
    description: String,
    priority: String,
    customer_id: String,
    fields: String,
    escalation_contacts: String,
    opened_by: String,
    opened_by_slug: String,
    create_time: i64,
    update_time: i64,
    state_time: i64,
    revision: i64,
}

#[derive(FromRow)]
struct ParticipantRow {
    case_id: String,
    organization_id: String,
    slug: String,
    role: String,
}

#[derive(FromRow)]
struct ClockRow {
    case_id: String,
    policy: String,
    target: i64,
    warn_after: i64,
    used: i64,
    phase: String,
    phase_time: i64,
    warn_time: Option<i64>,
    breach_time: Option<i64>,
}

fn org_ref(id: String, slug: &str) -> Result<OrgRef> {
    Ok(OrgRef {
        id,
        slug: Slug::parse(slug).map_err(|_| corrupt("slug", slug))?,
    })
}

impl TryFrom<ClockRow> for SlaClock {
    type Error = Error;

    fn try_from(r: ClockRow) -> Result<Self> {
        let at = timestamp(r.phase_time)?;
        Ok(SlaClock {
            phase: match r.phase.as_str() {
                "running" => Phase::Running { since: at },
                "paused" => Phase::Paused { since: at },
                "met" => Phase::Met { at },
                other => return Err(corrupt("clock phase", other)),
            },
            policy: r.policy,
            target: SignedDuration::from_micros(r.target),
            warn_after: SignedDuration::from_micros(r.warn_after),
            used: SignedDuration::from_micros(r.used),
            warn_time: r.warn_time.map(timestamp).transpose()?,
            breach_time: r.breach_time.map(timestamp).transpose()?,
        })
    }
}

fn phase_parts(phase: Phase) -> (&'static str, Timestamp) {
    match phase {
        Phase::Running { since } => ("running", since),
        Phase::Paused { since } => ("paused", since),
        Phase::Met { at } => ("met", at),
    }
}

/// Reads the participants and clocks of the cases in `rows`.
async fn assemble(conn: &mut AnyConnection, rows: Vec<CaseRow>) -> Result<Vec<Case>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let ids = super::placeholders(1, rows.len());
    let sql = format!(
        "SELECT p.case_id, p.organization_id, o.slug, p.role FROM case_participants p \
         JOIN organizations o ON o.id = p.organization_id WHERE p.case_id IN ({ids}) \
         ORDER BY p.add_time, p.organization_id"
    );
    let mut q = sqlx::query_as::<_, ParticipantRow>(&sql);
    for r in &rows {
        q = q.bind(&r.id);
    }
    let mut participants: BTreeMap<String, Vec<Participant>> = BTreeMap::new();
    for p in q.fetch_all(&mut *conn).await? {
        participants
            .entry(p.case_id)
            .or_default()
            .push(Participant {
                organization: org_ref(p.organization_id, &p.slug)?,
                role: p.role,
            });
    }
    let sql = format!(
        "SELECT case_id, policy, target, warn_after, used, phase, phase_time, warn_time, \
         breach_time FROM case_sla_clocks WHERE case_id IN ({ids}) ORDER BY case_id, policy"
    );
    let mut q = sqlx::query_as::<_, ClockRow>(&sql);
    for r in &rows {
        q = q.bind(&r.id);
    }
    let mut clocks: BTreeMap<String, Vec<SlaClock>> = BTreeMap::new();
    for c in q.fetch_all(&mut *conn).await? {
        clocks
            .entry(c.case_id.clone())
            .or_default()
            .push(SlaClock::try_from(c)?);
    }
    let sql = format!(
        "SELECT case_id, other_case_id, judge_id, detect_time FROM case_conflicts \
         WHERE case_id IN ({ids}) ORDER BY case_id, detect_time, other_case_id"
    );
    let mut q = sqlx::query_as::<_, (String, String, String, i64)>(&sql);
    for r in &rows {
        q = q.bind(&r.id);
    }
    let mut conflicts: BTreeMap<String, Vec<Conflict>> = BTreeMap::new();
    for (case_id, other, judge_id, at) in q.fetch_all(&mut *conn).await? {
        conflicts.entry(case_id).or_default().push(Conflict {
            case_id: other,
            judge_id,
            detect_time: timestamp(at)?,
        });
    }
    rows.into_iter()
        .map(|r| {
            Ok(Case {
                participants: participants.remove(&r.id).unwrap_or_default(),
                clocks: clocks.remove(&r.id).unwrap_or_default(),
                conflicts: conflicts.remove(&r.id).unwrap_or_default(),
                priority: Priority::parse(&r.priority)
                    .ok_or_else(|| corrupt("priority", &r.priority))?,
                fields: serde_json::from_str(&r.fields)
                    .map_err(|_| corrupt("case fields", &r.fields))?,
                escalation_contacts: serde_json::from_str(&r.escalation_contacts)
                    .map_err(|_| corrupt("escalation contacts", &r.escalation_contacts))?,
                opened_by: org_ref(r.opened_by, &r.opened_by_slug)?,
                create_time: timestamp(r.create_time)?,
                update_time: timestamp(r.update_time)?,
                state_time: timestamp(r.state_time)?,
                id: r.id,
                template: r.template,
                state: r.state,
                title: r.title,
                description: r.description,
                customer_id: r.customer_id,
                revision: r.revision,
            })
        })
        .collect()
}

async fn case_by_id(conn: &mut AnyConnection, id: &str, lock: bool) -> Result<Option<Case>> {
    let sql = format!(
        "SELECT {CASE_COLUMNS} FROM cases c JOIN organizations o ON o.id = c.opened_by \
         WHERE c.id = $1{}",
        if lock { " FOR UPDATE OF c" } else { "" }
    );
    let row: Option<CaseRow> = sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(assemble(conn, row.into_iter().collect()).await?.pop())
}

/// Which cases to list.
#[derive(Debug, Default, Clone)]
pub struct CaseQuery {
    pub viewer_id: String,
    pub state: Option<String>,
    pub template: Option<String>,
    pub participant_id: Option<String>,
    pub customer_id: Option<String>,
    pub priority: Option<Priority>,
    pub breached: Option<bool>,
    pub closed: Option<bool>,
    /// A running clock falls due before this.
    pub due_before: Option<Timestamp>,
    /// Conflicts the viewer judges (only the judge sees a conflict).
    pub conflicted: Option<bool>,
    /// Continue after this case id (newest first).
    pub after: Option<String>,
    pub limit: usize,
}

#[derive(FromRow)]
struct HistoryRow {
    id: String,
    case_id: String,
    kind: String,
    organization_id: Option<String>,
    slug: Option<String>,
    member_id: Option<String>,
    transition: String,
    from_state: String,
    to_state: String,
    body: String,
    visibility: String,
    subject: String,
    create_time: i64,
}

impl TryFrom<HistoryRow> for HistoryEntry {
    type Error = Error;

    fn try_from(r: HistoryRow) -> Result<Self> {
        Ok(HistoryEntry {
            organization: match (r.organization_id, r.slug) {
                (Some(id), Some(slug)) => Some(org_ref(id, &slug)?),
                _ => None,
            },
            visibility: CommentVisibility::parse(&r.visibility)
                .ok_or_else(|| corrupt("visibility", &r.visibility))?,
            create_time: timestamp(r.create_time)?,
            id: r.id,
            case_id: r.case_id,
            kind: r.kind,
            member_id: r.member_id,
            transition: r.transition,
            from_state: r.from_state,
            to_state: r.to_state,
            body: r.body,
            subject: r.subject,
        })
    }
}

const TASK_SELECT: &str = "SELECT t.id, t.case_id, t.title, t.description, t.assignee_id, \
     a.slug AS assignee_slug, t.assignee_member_id, t.due_time, t.state, t.state_note, \
     t.overdue, t.assigned_by, b.slug AS assigned_by_slug, t.create_time, t.update_time \
     FROM case_tasks t JOIN organizations a ON a.id = t.assignee_id \
     JOIN organizations b ON b.id = t.assigned_by";

#[derive(FromRow)]
struct TaskRow {
    id: String,
    case_id: String,
    title: String,
    description: String,
    assignee_id: String,
    assignee_slug: String,
    assignee_member_id: Option<String>,
    due_time: Option<i64>,
    state: String,
    state_note: String,
    overdue: i64,
    assigned_by: String,
    assigned_by_slug: String,
    create_time: i64,
    update_time: i64,
}

impl TryFrom<TaskRow> for Task {
    type Error = Error;

    fn try_from(r: TaskRow) -> Result<Self> {
        Ok(Task {
            state: match r.state.as_str() {
                "assigned" => TaskState::Assigned,
                "accepted" => TaskState::Accepted,
                "declined" => TaskState::Declined {
                    reason: r.state_note,
                },
                "completed" => TaskState::Completed { note: r.state_note },
                other => return Err(corrupt("task state", other)),
            },
            assignee: org_ref(r.assignee_id, &r.assignee_slug)?,
            assigned_by: org_ref(r.assigned_by, &r.assigned_by_slug)?,
            due_time: r.due_time.map(timestamp).transpose()?,
            create_time: timestamp(r.create_time)?,
            update_time: timestamp(r.update_time)?,
            overdue: r.overdue != 0,
            id: r.id,
            case_id: r.case_id,
            title: r.title,
            description: r.description,
            assignee_member_id: r.assignee_member_id,
        })
    }
}

fn task_note(state: &TaskState) -> &str {
    match state {
        TaskState::Declined { reason } => reason,
        TaskState::Completed { note } => note,
        _ => "",
    }
}

fn case_values(c: &Case) -> Result<(String, String)> {
    let fields = serde_json::to_string(&c.fields).map_err(|e| Error::Internal(e.into()))?;
    let contacts =
        serde_json::to_string(&c.escalation_contacts).map_err(|e| Error::Internal(e.into()))?;
    Ok((fields, contacts))
}

impl Store {
    pub async fn case(&self, id: &str) -> Result<Option<Case>> {
        self.reader()
            .run(async |conn| case_by_id(conn, id, false).await)
            .await
    }

    /// A page of the cases `query.viewer_id` participates in, newest first.
    pub async fn cases(&self, query: &CaseQuery) -> Result<Page<Case>> {
        let sql = format!(
            "SELECT {CASE_COLUMNS} FROM cases c JOIN organizations o ON o.id = c.opened_by \
             JOIN case_participants me ON me.case_id = c.id AND me.organization_id = $1 \
             WHERE ($2 = '' OR c.state = $2) AND ($3 = '' OR c.template = $3) \
             AND ($4 = '' OR EXISTS (SELECT 1 FROM case_participants p \
                  WHERE p.case_id = c.id AND p.organization_id = $4)) \
             AND ($5 = '' OR c.customer_id = $5) AND ($6 = '' OR c.priority = $6) \
             AND ($7 < 0 OR c.breached = $7) AND ($8 < 0 OR c.closed = $8) \
             AND ($9 = {max} OR c.due_time < $9) AND c.id < $10 \
             AND ($12 < 0 OR $12 = (CASE WHEN EXISTS (SELECT 1 FROM case_conflicts k \
                  WHERE k.case_id = c.id AND k.judge_id = $1) THEN 1 ELSE 0 END)) \
             ORDER BY c.id DESC LIMIT $11",
            max = i64::MAX
        );
        let flag = |b: Option<bool>| b.map_or(-1_i64, i64::from);
        let rows: Vec<CaseRow> = sqlx::query_as(&sql)
            .bind(&query.viewer_id)
            .bind(query.state.as_deref().unwrap_or(""))
            .bind(query.template.as_deref().unwrap_or(""))
            .bind(query.participant_id.as_deref().unwrap_or(""))
            .bind(query.customer_id.as_deref().unwrap_or(""))
            .bind(query.priority.map(Priority::as_str).unwrap_or(""))
            .bind(flag(query.breached))
            .bind(flag(query.closed))
            .bind(query.due_before.map_or(i64::MAX, micros))
            .bind(query.after.as_deref().unwrap_or("\u{10FFFF}"))
            .bind(query.limit as i64 + 1)
            .bind(flag(query.conflicted))
            .fetch_all(self.reader())
            .await?;
        let items = self
            .reader()
            .run(async |conn| assemble(conn, rows).await)
            .await?;
        Ok(Page::from_rows(items, query.limit, |c| c.id.clone()))
    }
}

impl Tx {
    /// The case, locked for the rest of the transaction (PostgreSQL; SQLite's write
    /// transaction excludes other writers already).
    pub async fn case(&mut self, id: &str) -> Result<Option<Case>> {
        let lock = self.dialect == Dialect::Postgres;
        case_by_id(self.conn(), id, lock).await
    }

    /// Every open case of `template` on customer `customer_id`, oldest first, as its
    /// id, opening organization and fields only: what finding conflicts weighs. The
    /// caller locks the customer first.
    pub async fn open_case_fields(
        &mut self,
        customer_id: &str,
        template: &str,
    ) -> Result<Vec<(String, String, BTreeMap<String, String>)>> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT c.id, c.opened_by, c.fields FROM cases c \
             WHERE c.customer_id = $1 AND c.template = $2 AND c.closed = 0 \
             ORDER BY c.create_time, c.id",
        )
        .bind(customer_id)
        .bind(template)
        .fetch_all(self.conn())
        .await?;
        rows.into_iter()
            .map(|(id, opened_by, fields)| {
                let fields =
                    serde_json::from_str(&fields).map_err(|_| corrupt("case fields", &fields))?;
                Ok((id, opened_by, fields))
            })
            .collect()
    }

    /// The cases with `ids`, whole, in the order given (ones not found left out).
    pub async fn cases_with_ids(&mut self, ids: &[String]) -> Result<Vec<Case>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "SELECT {CASE_COLUMNS} FROM cases c JOIN organizations o ON o.id = c.opened_by \
             WHERE c.id IN ({})",
            super::placeholders(1, ids.len())
        );
        let mut q = sqlx::query_as::<_, CaseRow>(&sql);
        for id in ids {
            q = q.bind(id);
        }
        let rows = q.fetch_all(self.conn()).await?;
        let mut found = assemble(self.conn(), rows).await?;
        found.sort_by_key(|c| ids.iter().position(|i| *i == c.id));
        Ok(found)
    }

    /// The open cases of `template` without an automatic timer: those opened before
    /// the template gained a transition the hub fires when idle.
    pub async fn open_cases_without_automatic_timer(
        &mut self,
        template: &str,
    ) -> Result<Vec<String>> {
        let ids = sqlx::query_scalar(
            "SELECT c.id FROM cases c WHERE c.template = $1 AND c.closed = 0 \
             AND NOT EXISTS (SELECT 1 FROM case_timers t WHERE t.case_id = c.id \
             AND t.kind = 'automatic')",
        )
        .bind(template)
        .fetch_all(self.conn())
        .await?;
        Ok(ids)
    }

    /// Sets the automatic timers `c` needs now under `template` (no other kind).
    pub async fn schedule_automatic(&mut self, c: &Case, template: &Template) -> Result<()> {
        let (timers, _) = schedule(c, template);
        let automatic: Vec<Timer> = timers
            .into_iter()
            .filter(|t| t.kind == TimerKind::Automatic)
            .collect();
        self.replace_timers(&c.id, &[TimerKind::Automatic], &automatic)
            .await?;
        self.wake_timers();
        Ok(())
    }

    /// Forgets the conflicts of case `case_id` that organization `judge_id` judged
    /// (it left the case), both ways.
    pub async fn drop_conflicts_judged_by(&mut self, case_id: &str, judge_id: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM case_conflicts WHERE judge_id = $2 \
             AND (case_id = $1 OR other_case_id = $1)",
        )
        .bind(case_id)
        .bind(judge_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Records that cases `a` and `b` conflict, judged by `judge_id`, both ways.
    pub async fn insert_conflict(
        &mut self,
        (a, b): (&str, &str),
        judge_id: &str,
        now: Timestamp,
    ) -> Result<()> {
        for (x, y) in [(a, b), (b, a)] {
            sqlx::query(
                "INSERT INTO case_conflicts (case_id, other_case_id, judge_id, detect_time) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(x)
            .bind(y)
            .bind(judge_id)
            .bind(micros(now))
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }

    /// Inserts a new case; `closed` and `due_time` as for [`Tx::update_case`].
    pub async fn insert_case(
        &mut self,
        c: &Case,
        closed: bool,
        due_time: Option<Timestamp>,
    ) -> Result<()> {
        let (fields, contacts) = case_values(c)?;
        sqlx::query(
            "INSERT INTO cases (id, template, state, title, description, priority, customer_id, \
             fields, escalation_contacts, opened_by, closed, breached, due_time, create_time, \
             update_time, state_time, revision) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(&c.id)
        .bind(&c.template)
        .bind(&c.state)
        .bind(&c.title)
        .bind(&c.description)
        .bind(c.priority.as_str())
        .bind(&c.customer_id)
        .bind(fields)
        .bind(contacts)
        .bind(&c.opened_by.id)
        .bind(i64::from(closed))
        .bind(i64::from(c.breached()))
        .bind(due_time.map(micros))
        .bind(micros(c.create_time))
        .bind(micros(c.update_time))
        .bind(micros(c.state_time))
        .bind(c.revision)
        .execute(self.conn())
        .await?;
        self.write_participants(c).await
    }

    /// Writes `c` over the stored case if the stored revision is `expected_revision`;
    /// false if someone changed it first. `closed` and `due_time` are derived here
    /// from the state and the clocks (`is_final`, `due_time` given by the caller).
    pub async fn update_case(
        &mut self,
        c: &Case,
        expected_revision: i64,
        closed: bool,
        due_time: Option<Timestamp>,
    ) -> Result<bool> {
        let (fields, contacts) = case_values(c)?;
        let done = sqlx::query(
            "UPDATE cases SET state = $1, title = $2, description = $3, priority = $4, \
             fields = $5, escalation_contacts = $6, closed = $7, breached = $8, due_time = $9, \
             update_time = $10, state_time = $11, revision = $12 \
             WHERE id = $13 AND revision = $14",
        )
        .bind(&c.state)
        .bind(&c.title)
        .bind(&c.description)
        .bind(c.priority.as_str())
        .bind(fields)
        .bind(contacts)
        .bind(i64::from(closed))
        .bind(i64::from(c.breached()))
        .bind(due_time.map(micros))
        .bind(micros(c.update_time))
        .bind(micros(c.state_time))
        .bind(c.revision)
        .bind(&c.id)
        .bind(expected_revision)
        .execute(self.conn())
        .await?
        .rows_affected()
            == 1;
        if done && closed {
            sqlx::query("DELETE FROM case_conflicts WHERE case_id = $1 OR other_case_id = $1")
                .bind(&c.id)
                .execute(self.conn())
                .await?;
        }
        if done {
            sqlx::query("DELETE FROM case_participants WHERE case_id = $1")
                .bind(&c.id)
                .execute(self.conn())
                .await?;
            sqlx::query("DELETE FROM case_sla_clocks WHERE case_id = $1")
                .bind(&c.id)
                .execute(self.conn())
                .await?;
            self.write_participants(c).await?;
        }
        Ok(done)
    }

    async fn write_participants(&mut self, c: &Case) -> Result<()> {
        for (i, p) in c.participants.iter().enumerate() {
            // add_time orders participants as listed; the offset keeps ties stable.
            sqlx::query(
                "INSERT INTO case_participants (case_id, organization_id, role, add_time) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&c.id)
            .bind(&p.organization.id)
            .bind(&p.role)
            .bind(micros(c.create_time) + i as i64)
            .execute(self.conn())
            .await?;
        }
        for clock in &c.clocks {
            let (phase, at) = phase_parts(clock.phase);
            sqlx::query(
                "INSERT INTO case_sla_clocks (case_id, policy, target, warn_after, used, phase, \
                 phase_time, warn_time, breach_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&c.id)
            .bind(&clock.policy)
            .bind(clock.target.as_micros() as i64)
            .bind(clock.warn_after.as_micros() as i64)
            .bind(clock.used.as_micros() as i64)
            .bind(phase)
            .bind(micros(at))
            .bind(clock.warn_time.map(micros))
            .bind(clock.breach_time.map(micros))
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }
}

/// Writing cases with their timers, computed from the case and its template.
impl Tx {
    /// Writes a new case with its SLA and automatic timers.
    pub async fn create_case(&mut self, c: &Case, template: &Template) -> Result<()> {
        let (timers, due) = schedule(c, template);
        self.insert_case(c, template.is_final(&c.state), due)
            .await?;
        for timer in &timers {
            self.set_timer(timer).await?;
        }
        self.wake_timers();
        Ok(())
    }

    /// Writes the case after a change (bumping its revision if `bump`), with fresh SLA
    /// and automatic timers. False if the stored revision is no longer `expected`.
    pub async fn save_case(
        &mut self,
        c: &mut Case,
        template: &Template,
        expected: i64,
        bump: bool,
    ) -> Result<bool> {
        if bump {
            c.revision = expected + 1;
        }
        let (timers, due) = schedule(c, template);
        if !self
            .update_case(c, expected, template.is_final(&c.state), due)
            .await?
        {
            return Ok(false);
        }
        self.replace_timers(
            &c.id,
            &[
                TimerKind::SlaWarning,
                TimerKind::SlaBreach,
                TimerKind::Automatic,
            ],
            &timers,
        )
        .await?;
        self.wake_timers();
        Ok(true)
    }
}
