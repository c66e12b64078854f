//! Partner scorecards: the raw rows of one stretch of time between two
//! organizations, and the days aggregated from them (`scorecard_days`). Every read is
//! a range on a time column, so a day costs what happened that day.

use jiff::Timestamp;
use sqlx::FromRow;

use super::{Store, Tx, corrupt, micros, timestamp};
use crate::domain::error::Result;
use crate::domain::scorecard::Figures;

/// A case one of the two opened with the other.
#[derive(Debug, FromRow)]
pub struct OpenedCase {
    pub case_id: String,
    pub template: String,
    pub opened_by: String,
}

/// A line of the history of a case between the two: a comment, a transition, an SLA
/// breach or a task gone overdue.
#[derive(Debug)]
pub struct CaseStep {
    pub case_id: String,
    pub template: String,
    pub opened_by: String,
    pub opened: Timestamp,
    pub kind: String,
    /// The acting organization; `None` when the hub acted.
    pub actor: Option<String>,
    pub transition: String,
    pub to_state: String,
    /// The SLA policy of a breach.
    pub subject: String,
    pub at: Timestamp,
    /// Whether this is the actor's first comment or transition on the case.
    pub first_by_actor: bool,
    /// The assignee of the task gone overdue.
    pub assignee: Option<String>,
}

#[derive(FromRow)]
struct StepRow {
    case_id: String,
    template: String,
    opened_by: String,
    opened: i64,
    kind: String,
    organization_id: Option<String>,
    transition: String,
    to_state: String,
    subject: String,
    create_time: i64,
    first_by_actor: i64,
    assignee_id: Option<String>,
}

/// An SLA clock that stopped within its target.
#[derive(Debug, FromRow)]
pub struct ClockOutcome {
    pub policy: String,
    pub opened_by: String,
}

/// Shared interactions an organization logged on one customer.
#[derive(Debug, FromRow)]
pub struct Logged {
    pub customer_id: String,
    pub author: String,
    pub count: i64,
}

/// A customer newly granted through the partnership.
#[derive(Debug, FromRow)]
pub struct Granted {
    pub customer_id: String,
    pub owner_id: String,
}

/// An access request answered.
#[derive(Debug)]
pub struct Answered {
    pub owner_id: String,
    pub asked: Timestamp,
    pub answered: Timestamp,
}

/// Delivery attempts to one organization's endpoints.
#[derive(Debug)]
pub struct Attempt {
    pub organization_id: String,
    pub succeeded: bool,
    pub latency_micros: i64,
}

/// Everything a stretch of time between two organizations holds.
#[derive(Debug, Default)]
pub struct ScorecardRows {
    pub opened: Vec<OpenedCase>,
    pub steps: Vec<CaseStep>,
    pub met: Vec<ClockOutcome>,
    pub logged: Vec<Logged>,
    pub granted: Vec<Granted>,
    pub answered: Vec<Answered>,
    pub attempts: Vec<Attempt>,
}

/// A day aggregated.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorecardDay {
    /// The local date, `YYYY-MM-DD`.
    pub day: String,
    pub time_zone: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub figures: Figures,
}

#[derive(FromRow)]
struct DayRow {
    day: String,
    time_zone: String,
    start_time: i64,
    end_time: i64,
    figures: String,
}

impl TryFrom<DayRow> for ScorecardDay {
    type Error = crate::domain::error::Error;

    fn try_from(r: DayRow) -> Result<Self> {
        Ok(Self {
            figures: Figures::from_json(&r.figures).map_err(|_| corrupt("scorecard", &r.day))?,
            day: r.day,
            time_zone: r.time_zone,
            start: timestamp(r.start_time)?,
            end: timestamp(r.end_time)?,
        })
    }
}

/// Case `c` has both organizations among its participants. Written as two lookups
/// by the case's key, not joins: a planner without statistics (SQLite's, before
/// ANALYZE) would otherwise walk every case of one organization instead of the
/// window's rows (measured: 150 ms against 4 ms a day at 100k cases a quarter).
const BETWEEN: &str = "EXISTS (SELECT 1 FROM case_participants pa \
     WHERE pa.case_id = c.id AND pa.organization_id = $1) \
     AND EXISTS (SELECT 1 FROM case_participants pb \
     WHERE pb.case_id = c.id AND pb.organization_id = $2)";

/// Whether history row `h` is a response: a comment every participant reads, or a
/// transition.
fn response(h: &str) -> String {
    format!(
        "{h}.kind IN ('case.commented', 'case.transitioned') AND {h}.visibility = 'participants'"
    )
}

impl Store {
    /// The rows of `sql`, whose parameters are the two organizations (`$1`, `$2`)
    /// and the window (`$3`, `$4`).
    async fn window_rows<T>(
        &self,
        sql: &str,
        (a, b): (&str, &str),
        (s, e): (i64, i64),
    ) -> Result<Vec<T>>
    where
        T: for<'r> FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        Ok(sqlx::query_as(sql)
            .bind(a)
            .bind(b)
            .bind(s)
            .bind(e)
            .fetch_all(self.reader())
            .await?)
    }

    /// The rows between organizations `a` and `b` (partners through `partnership_id`)
    /// from `start` up to `end`.
    pub async fn scorecard_rows(
        &self,
        (a, b): (&str, &str),
        partnership_id: &str,
        (start, end): (Timestamp, Timestamp),
    ) -> Result<ScorecardRows> {
        let (s, e) = (micros(start), micros(end));
        let opened: Vec<OpenedCase> = self
            .window_rows(
                &format!(
                    "SELECT c.id AS case_id, c.template, c.opened_by FROM cases c \
             WHERE c.create_time >= $3 AND c.create_time < $4 AND c.opened_by IN ($1, $2) \
             AND {BETWEEN}"
                ),
                (a, b),
                (s, e),
            )
            .await?;
        let (first, any) = (response("f"), response("h"));
        let steps: Vec<StepRow> = self.window_rows(
            &format!(
            "SELECT h.case_id, c.template, c.opened_by, c.create_time AS opened, h.kind, \
             h.organization_id, h.transition, h.to_state, h.subject, h.create_time, \
             CAST(CASE WHEN h.organization_id IS NOT NULL AND NOT EXISTS (SELECT 1 \
               FROM case_history f WHERE f.case_id = h.case_id \
               AND f.organization_id = h.organization_id AND {first} \
               AND (f.create_time < h.create_time OR (f.create_time = h.create_time AND f.id < h.id))) \
             THEN 1 ELSE 0 END AS BIGINT) AS first_by_actor, t.assignee_id \
             FROM case_history h JOIN cases c ON c.id = h.case_id \
             LEFT JOIN case_tasks t ON h.kind = 'task.overdue' AND t.case_id = h.case_id \
               AND h.subject = 'cases/' || t.case_id || '/tasks/' || t.id \
             WHERE h.create_time >= $3 AND h.create_time < $4 AND c.opened_by IN ($1, $2) \
             AND (({any}) OR h.kind IN ('case.sla_breached', 'task.overdue')) AND {BETWEEN}"
            ),
            (a, b),
            (s, e),
        )
        .await?;
        let steps = steps
            .into_iter()
            .map(|r| {
                Ok(CaseStep {
                    opened: timestamp(r.opened)?,
                    at: timestamp(r.create_time)?,
                    case_id: r.case_id,
                    template: r.template,
                    opened_by: r.opened_by,
                    kind: r.kind,
                    actor: r.organization_id,
                    transition: r.transition,
                    to_state: r.to_state,
                    subject: r.subject,
                    first_by_actor: r.first_by_actor == 1,
                    assignee: r.assignee_id,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let met: Vec<ClockOutcome> = self.window_rows(
            &format!(
            "SELECT k.policy, c.opened_by FROM case_sla_clocks k JOIN cases c ON c.id = k.case_id \
             WHERE k.phase = 'met' AND k.phase_time >= $3 AND k.phase_time < $4 \
             AND k.breach_time IS NULL AND c.opened_by IN ($1, $2) AND {BETWEEN}"
            ),
            (a, b),
            (s, e),
        )
        .await?;
        // Only customers the other side may see count; those it cannot possibly see
        // (not its own, no grant to it, no live rule of their owner) are left out here,
        // and the hub's visibility function decides for the rest.
        let logged: Vec<Logged> = self
            .window_rows(
                "SELECT i.customer_id, i.org_id AS author, COUNT(*) AS count FROM interactions i \
             JOIN customers cu ON cu.id = i.customer_id \
             WHERE i.org_id IN ($1, $2) AND i.visibility = 'shared' \
             AND i.create_time >= $3 AND i.create_time < $4 \
             AND (cu.owner_id IN ($1, $2) \
               OR EXISTS (SELECT 1 FROM customer_grants g WHERE g.customer_id = i.customer_id \
                 AND g.grantee_id IN ($1, $2) AND g.revoke_time IS NULL) \
               OR EXISTS (SELECT 1 FROM sharing_rules r WHERE r.owner_id = cu.owner_id \
                 AND r.revoke_time IS NULL)) \
             GROUP BY i.customer_id, i.org_id",
                (a, b),
                (s, e),
            )
            .await?;
        let granted: Vec<Granted> = sqlx::query_as(
            "SELECT DISTINCT g.customer_id, cu.owner_id FROM customer_grants g \
             JOIN customers cu ON cu.id = g.customer_id \
             WHERE g.partnership_id = $1 AND g.create_time >= $2 AND g.create_time < $3",
        )
        .bind(partnership_id)
        .bind(s)
        .bind(e)
        .fetch_all(self.reader())
        .await?;
        let answered: Vec<(String, i64, i64)> = self.window_rows(
            "SELECT owner_id, create_time, decide_time FROM access_requests \
             WHERE ((owner_id = $1 AND requester_id = $2) OR (owner_id = $2 AND requester_id = $1)) \
             AND decide_time >= $3 AND decide_time < $4 AND state IN ('approved', 'declined')",
            (a, b),
            (s, e),
        )
        .await?;
        let answered = answered
            .into_iter()
            .map(|(owner_id, asked, answered)| {
                Ok(Answered {
                    owner_id,
                    asked: timestamp(asked)?,
                    answered: timestamp(answered)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Deliveries of events about their shared work (their cases, their
        // partnership) alone: neither learns of the other's traffic with third parties.
        let attempts: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT w.organization_id, w.outcome, w.latency_micros FROM webhook_attempts w \
             JOIN events ev ON ev.id = w.event_id \
             WHERE w.organization_id IN ($1, $2) AND w.attempt_time >= $3 AND w.attempt_time < $4 \
             AND (ev.resource = $5 OR (ev.resource LIKE 'cases/%' \
               AND EXISTS (SELECT 1 FROM case_participants x \
                 WHERE x.case_id = substr(ev.resource, 7, 36) AND x.organization_id = $1) \
               AND EXISTS (SELECT 1 FROM case_participants y \
                 WHERE y.case_id = substr(ev.resource, 7, 36) AND y.organization_id = $2)))",
        )
        .bind(a)
        .bind(b)
        .bind(s)
        .bind(e)
        .bind(format!("partnerships/{partnership_id}"))
        .fetch_all(self.reader())
        .await?;
        let attempts = attempts
            .into_iter()
            .map(|(organization_id, outcome, latency_micros)| Attempt {
                organization_id,
                succeeded: outcome == "succeeded",
                latency_micros,
            })
            .collect();
        Ok(ScorecardRows {
            opened,
            steps,
            met,
            logged,
            granted,
            answered,
            attempts,
        })
    }

    /// The days of `partnership_id` aggregated from `first` to `last` (local dates).
    pub async fn scorecard_days(
        &self,
        partnership_id: &str,
        (first, last): (&str, &str),
    ) -> Result<Vec<ScorecardDay>> {
        let rows: Vec<DayRow> = sqlx::query_as(
            "SELECT day, time_zone, start_time, end_time, figures FROM scorecard_days \
             WHERE partnership_id = $1 AND day >= $2 AND day <= $3 ORDER BY day",
        )
        .bind(partnership_id)
        .bind(first)
        .bind(last)
        .fetch_all(self.reader())
        .await?;
        rows.into_iter().map(ScorecardDay::try_from).collect()
    }

    /// The last day of `partnership_id` aggregated.
    pub async fn last_scorecard_day(&self, partnership_id: &str) -> Result<Option<ScorecardDay>> {
        let row: Option<DayRow> = sqlx::query_as(
            "SELECT day, time_zone, start_time, end_time, figures FROM scorecard_days \
             WHERE partnership_id = $1 ORDER BY day DESC LIMIT 1",
        )
        .bind(partnership_id)
        .fetch_optional(self.reader())
        .await?;
        row.map(ScorecardDay::try_from).transpose()
    }

    /// The partnerships whose scorecards still gather days: active, suspended, or
    /// ended after `recently_ended_after` (their last days are still to keep).
    pub async fn scorecard_partnerships(
        &self,
        recently_ended_after: Timestamp,
    ) -> Result<Vec<String>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM partnerships WHERE state IN ('active', 'suspended') \
             OR (state = 'ended' AND update_time > $1) ORDER BY id",
        )
        .bind(micros(recently_ended_after))
        .fetch_all(self.reader())
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }
}

impl Tx {
    /// Keeps a closed day; a day already kept (by another replica) stays as it was.
    pub async fn save_scorecard_day(
        &mut self,
        partnership_id: &str,
        d: &ScorecardDay,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO scorecard_days (partnership_id, day, time_zone, start_time, end_time, \
             figures, compute_time) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (partnership_id, day) DO NOTHING",
        )
        .bind(partnership_id)
        .bind(&d.day)
        .bind(&d.time_zone)
        .bind(micros(d.start))
        .bind(micros(d.end))
        .bind(d.figures.to_json())
        .bind(micros(now))
        .execute(self.conn())
        .await?;
        Ok(())
    }
}
