//! The durable timers of cases: SLA warnings and breaches, overdue tasks and
//! automatic transitions. A timer row exists only while it is pending; firing
//! deletes it in the transaction that makes the change (see the module docs).

use super::*;

impl Store {
    /// The earliest pending timer's due time.
    pub async fn next_timer(&self) -> Result<Option<Timestamp>> {
        let row: (Option<i64>,) = sqlx::query_as("SELECT MIN(due_time) FROM case_timers")
            .fetch_one(self.reader())
            .await?;
        row.0.map(timestamp).transpose()
    }

    /// Up to `limit` timers due at `now`, earliest first.
    pub async fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<Timer>> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT case_id, kind, subject, due_time FROM case_timers WHERE due_time <= $1 \
             ORDER BY due_time LIMIT $2",
        )
        .bind(micros(now))
        .bind(limit as i64)
        .fetch_all(self.reader())
        .await?;
        rows.into_iter()
            .map(|(case_id, kind, subject, due)| {
                Ok(Timer {
                    kind: TimerKind::parse(&kind).ok_or_else(|| corrupt("timer kind", &kind))?,
                    due_time: timestamp(due)?,
                    case_id,
                    subject,
                })
            })
            .collect()
    }
}

impl Tx {
    /// Replaces the case's timers of `kinds` with `timers`.
    pub async fn replace_timers(
        &mut self,
        case_id: &str,
        kinds: &[TimerKind],
        timers: &[Timer],
    ) -> Result<()> {
        for kind in kinds {
            sqlx::query("DELETE FROM case_timers WHERE case_id = $1 AND kind = $2")
                .bind(case_id)
                .bind(kind.as_str())
                .execute(self.conn())
                .await?;
        }
        for t in timers {
            self.set_timer(t).await?;
        }
        Ok(())
    }

    pub async fn set_timer(&mut self, t: &Timer) -> Result<()> {
        sqlx::query(
            "INSERT INTO case_timers (case_id, kind, subject, due_time) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (case_id, kind, subject) DO UPDATE SET due_time = EXCLUDED.due_time",
        )
        .bind(&t.case_id)
        .bind(t.kind.as_str())
        .bind(&t.subject)
        .bind(micros(t.due_time))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    pub async fn clear_timer(
        &mut self,
        case_id: &str,
        kind: TimerKind,
        subject: &str,
    ) -> Result<()> {
        sqlx::query("DELETE FROM case_timers WHERE case_id = $1 AND kind = $2 AND subject = $3")
            .bind(case_id)
            .bind(kind.as_str())
            .bind(subject)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Takes `timer` if it is still pending and due by `now`: true means this
    /// transaction fires it, and no other will.
    pub async fn take_timer(&mut self, timer: &Timer, now: Timestamp) -> Result<bool> {
        Ok(sqlx::query(
            "DELETE FROM case_timers WHERE case_id = $1 AND kind = $2 AND subject = $3 \
             AND due_time <= $4",
        )
        .bind(&timer.case_id)
        .bind(timer.kind.as_str())
        .bind(&timer.subject)
        .bind(micros(now))
        .execute(self.conn())
        .await?
        .rows_affected()
            == 1)
    }

    /// Wakes the timer workers once this transaction commits.
    pub fn wake_timers(&mut self) {
        self.timers_queued = true;
    }
}
