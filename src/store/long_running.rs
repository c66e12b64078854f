//! Long-running operations: background work with progress that the organizations it
//! concerns may watch, wait for and cancel. Any replica's worker claims a waiting
//! operation with a lease it renews at each step, so an operation whose replica died
//! is taken up again when the lease lapses.

use jiff::{SignedDuration, Timestamp};
use sqlx::FromRow;

use super::{Page, Store, Tx, corrupt, micros, timestamp};
use crate::domain::error::Result;
use crate::domain::mapping::OperationState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub id: String,
    /// What it does (`compare_accounts`).
    pub verb: String,
    /// The id of what it works on (a mapping).
    pub target_id: String,
    /// The organizations that may see it.
    pub org_id: String,
    pub other_org_id: Option<String>,
    pub state: OperationState,
    pub done: i64,
    pub total: i64,
    pub cancel_requested: bool,
    /// gRPC code and message, when it failed or was cancelled.
    pub error: Option<(i32, String)>,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    pub end_time: Option<Timestamp>,
}

impl Operation {
    /// A new operation waiting for a worker.
    pub fn new(verb: &str, target_id: &str, orgs: (&str, Option<&str>), now: Timestamp) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            verb: verb.to_owned(),
            target_id: target_id.to_owned(),
            org_id: orgs.0.to_owned(),
            other_org_id: orgs.1.map(str::to_owned),
            state: OperationState::Pending,
            done: 0,
            total: 0,
            cancel_requested: false,
            error: None,
            create_time: now,
            update_time: now,
            end_time: None,
        }
    }

    pub fn visible_to(&self, org_id: &str) -> bool {
        self.org_id == org_id || self.other_org_id.as_deref() == Some(org_id)
    }
}

#[derive(FromRow)]
struct OperationRow {
    id: String,
    verb: String,
    target_id: String,
    org_id: String,
    other_org_id: Option<String>,
    state: String,
    done: i64,
    total: i64,
    cancel_requested: i64,
    error_code: Option<i64>,
    error_message: Option<String>,
    create_time: i64,
    update_time: i64,
    end_time: Option<i64>,
}

impl TryFrom<OperationRow> for Operation {
    type Error = crate::domain::error::Error;

    fn try_from(r: OperationRow) -> Result<Self> {
        Ok(Operation {
            state: OperationState::parse(&r.state)
                .ok_or_else(|| corrupt("operation state", &r.state))?,
            error: match (r.error_code, r.error_message) {
                (Some(code), message) => Some((code as i32, message.unwrap_or_default())),
                (None, _) => None,
            },
            create_time: timestamp(r.create_time)?,
            update_time: timestamp(r.update_time)?,
            end_time: r.end_time.map(timestamp).transpose()?,
            id: r.id,
            verb: r.verb,
            target_id: r.target_id,
            org_id: r.org_id,
            other_org_id: r.other_org_id,
            done: r.done,
            total: r.total,
            cancel_requested: r.cancel_requested != 0,
        })
    }
}

const SELECT: &str = "SELECT id, verb, target_id, org_id, other_org_id, state, done, total, \
     cancel_requested, error_code, error_message, create_time, update_time, end_time \
     FROM operations";

impl Store {
    pub async fn operation(&self, id: &str) -> Result<Option<Operation>> {
        let row: Option<OperationRow> = sqlx::query_as(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.reader())
            .await?;
        row.map(Operation::try_from).transpose()
    }

    /// A page of the operations `org_id` may see, newest first; with `done`, only
    /// finished (true) or unfinished (false) ones.
    pub async fn operations_of(
        &self,
        org_id: &str,
        done: Option<bool>,
        (after, limit): (Option<&str>, usize),
    ) -> Result<Page<Operation>> {
        let filter = match done {
            None => "",
            Some(true) => " AND state IN ('succeeded', 'failed', 'cancelled')",
            Some(false) => " AND state IN ('pending', 'running')",
        };
        let sql = format!(
            "{SELECT} WHERE (org_id = $1 OR other_org_id = $1) AND id < $2{filter} \
             ORDER BY id DESC LIMIT $3"
        );
        let rows: Vec<OperationRow> = sqlx::query_as(&sql)
            .bind(org_id)
            .bind(after.unwrap_or("\u{10FFFF}"))
            .bind(limit as i64 + 1)
            .fetch_all(self.reader())
            .await?;
        let items = rows
            .into_iter()
            .map(Operation::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |o| o.id.clone()))
    }

    /// Takes the oldest operation with one of `verbs` waiting (or whose worker's lease
    /// lapsed) for this worker until `now + lease`; `None` if there is none.
    pub async fn claim_operation(
        &self,
        now: Timestamp,
        lease: SignedDuration,
        verbs: &[&'static str],
    ) -> Result<Option<Operation>> {
        // The hub's own constants, never a client's text.
        let verbs = verbs
            .iter()
            .map(|v| format!("'{v}'"))
            .collect::<Vec<_>>()
            .join(", ");
        // Waiting, or running under a lease that lapsed before `at`.
        let waiting = |at: &str| {
            format!("(state = 'pending' OR (state = 'running' AND lease_expire < {at}))")
        };
        let mut tx = self.begin().await?;
        let candidate: Option<(String,)> = sqlx::query_as(&format!(
            "SELECT id FROM operations WHERE state IN ('pending', 'running') AND {} \
             AND verb IN ({verbs}) ORDER BY id LIMIT 1",
            waiting("$1")
        ))
        .bind(micros(now))
        .fetch_optional(tx.conn())
        .await?;
        let Some((id,)) = candidate else {
            drop(tx);
            return Ok(None);
        };
        let taken = sqlx::query(&format!(
            "UPDATE operations SET state = 'running', lease_expire = $1, update_time = $2 \
             WHERE id = $3 AND {}",
            waiting("$2")
        ))
        .bind(micros(now + lease))
        .bind(micros(now))
        .bind(&id)
        .execute(tx.conn())
        .await?;
        if taken.rows_affected() != 1 {
            drop(tx);
            return Ok(None);
        }
        let row: OperationRow = sqlx::query_as(&format!("{SELECT} WHERE id = $1"))
            .bind(&id)
            .fetch_one(tx.conn())
            .await?;
        tx.commit().await?;
        Operation::try_from(row).map(Some)
    }

    /// Records progress of operation `id` and renews its lease; returns whether a
    /// cancellation was asked for (or the operation is no longer this worker's).
    pub async fn operation_progress(
        &self,
        id: &str,
        (done, total): (i64, i64),
        now: Timestamp,
        lease: SignedDuration,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE operations SET done = $1, total = $2, lease_expire = $3, update_time = $4 \
             WHERE id = $5 AND state = 'running'",
        )
        .bind(done)
        .bind(total)
        .bind(micros(now + lease))
        .bind(micros(now))
        .bind(id)
        .execute(tx.conn())
        .await?;
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT state, cancel_requested FROM operations WHERE id = $1")
                .bind(id)
                .fetch_optional(tx.conn())
                .await?;
        tx.commit().await?;
        Ok(match row {
            Some((state, cancel)) => state != "running" || cancel != 0,
            None => true,
        })
    }

    /// Forgets finished operation `id`; false if it has not finished.
    pub async fn delete_operation(&self, id: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "DELETE FROM operations WHERE id = $1 AND state IN ('succeeded', 'failed', 'cancelled')",
        )
        .bind(id)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}

impl Tx {
    /// Asks operation `id` to stop: a waiting one ends at once as cancelled, a running
    /// one at its worker's next step (woken at commit). False if it had already ended.
    pub async fn cancel_operation(&mut self, id: &str, now: Timestamp) -> Result<bool> {
        let ended = sqlx::query(
            "UPDATE operations SET state = 'cancelled', cancel_requested = 1, error_code = 1, \
             error_message = 'cancelled', update_time = $1, end_time = $1 \
             WHERE id = $2 AND state = 'pending'",
        )
        .bind(micros(now))
        .bind(id)
        .execute(self.conn())
        .await?;
        let asked = sqlx::query(
            "UPDATE operations SET cancel_requested = 1, update_time = $1 \
             WHERE id = $2 AND state = 'running'",
        )
        .bind(micros(now))
        .bind(id)
        .execute(self.conn())
        .await?;
        self.operations_queued = true;
        Ok(ended.rows_affected() + asked.rows_affected() > 0)
    }

    pub async fn operation(&mut self, id: &str) -> Result<Option<Operation>> {
        let row: Option<OperationRow> = sqlx::query_as(&format!("{SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.conn())
            .await?;
        row.map(Operation::try_from).transpose()
    }

    pub async fn insert_operation(&mut self, o: &Operation) -> Result<()> {
        sqlx::query(
            "INSERT INTO operations (id, verb, target_id, org_id, other_org_id, state, done, \
             total, cancel_requested, error_code, error_message, lease_expire, create_time, \
             update_time, end_time) VALUES ($1, $2, $3, $4, $5, $6, 0, 0, 0, NULL, NULL, NULL, \
             $7, $8, NULL)",
        )
        .bind(&o.id)
        .bind(&o.verb)
        .bind(&o.target_id)
        .bind(&o.org_id)
        .bind(o.other_org_id.as_deref())
        .bind(o.state.as_str())
        .bind(micros(o.create_time))
        .bind(micros(o.update_time))
        .execute(self.conn())
        .await?;
        self.operations_queued = true;
        Ok(())
    }

    /// Ends operation `id` (if it has not ended) as `state`, with `error` when it did
    /// not succeed; false if it had ended already.
    pub async fn finish_operation(
        &mut self,
        id: &str,
        state: OperationState,
        error: Option<(i32, &str)>,
        now: Timestamp,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE operations SET state = $1, error_code = $2, error_message = $3, \
             update_time = $4, end_time = $4, lease_expire = NULL \
             WHERE id = $5 AND state IN ('pending', 'running')",
        )
        .bind(state.as_str())
        .bind(error.map(|(code, _)| i64::from(code)))
        .bind(error.map(|(_, message)| message))
        .bind(micros(now))
        .bind(id)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
