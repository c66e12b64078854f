//! Tasks assigned to an organization on a case.

use super::*;

impl Store {
    pub async fn task(&self, case_id: &str, id: &str) -> Result<Option<Task>> {
        let sql = format!("{TASK_SELECT} WHERE t.case_id = $1 AND t.id = $2");
        let row: Option<TaskRow> = sqlx::query_as(&sql)
            .bind(case_id)
            .bind(id)
            .fetch_optional(self.reader())
            .await?;
        row.map(Task::try_from).transpose()
    }

    /// A page of a case's tasks, oldest first.
    pub async fn tasks(
        &self,
        case_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Task>> {
        let sql =
            format!("{TASK_SELECT} WHERE t.case_id = $1 AND t.id > $2 ORDER BY t.id LIMIT $3");
        let rows: Vec<TaskRow> = sqlx::query_as(&sql)
            .bind(case_id)
            .bind(after.unwrap_or(""))
            .bind(limit as i64 + 1)
            .fetch_all(self.reader())
            .await?;
        let items = rows
            .into_iter()
            .map(Task::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |t| t.id.clone()))
    }
}

impl Tx {
    pub async fn task(&mut self, case_id: &str, id: &str) -> Result<Option<Task>> {
        let lock = if self.dialect == Dialect::Postgres {
            " FOR UPDATE OF t"
        } else {
            ""
        };
        let sql = format!("{TASK_SELECT} WHERE t.case_id = $1 AND t.id = $2{lock}");
        let row: Option<TaskRow> = sqlx::query_as(&sql)
            .bind(case_id)
            .bind(id)
            .fetch_optional(self.conn())
            .await?;
        row.map(Task::try_from).transpose()
    }

    pub async fn insert_task(&mut self, t: &Task) -> Result<()> {
        sqlx::query(
            "INSERT INTO case_tasks (id, case_id, title, description, assignee_id, \
             assignee_member_id, due_time, state, state_note, overdue, assigned_by, create_time, \
             update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&t.id)
        .bind(&t.case_id)
        .bind(&t.title)
        .bind(&t.description)
        .bind(&t.assignee.id)
        .bind(t.assignee_member_id.as_deref())
        .bind(t.due_time.map(micros))
        .bind(t.state.name())
        .bind(task_note(&t.state))
        .bind(i64::from(t.overdue))
        .bind(&t.assigned_by.id)
        .bind(micros(t.create_time))
        .bind(micros(t.update_time))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    pub async fn update_task(&mut self, t: &Task) -> Result<()> {
        sqlx::query(
            "UPDATE case_tasks SET state = $1, state_note = $2, overdue = $3, update_time = $4 \
             WHERE case_id = $5 AND id = $6",
        )
        .bind(t.state.name())
        .bind(task_note(&t.state))
        .bind(i64::from(t.overdue))
        .bind(micros(t.update_time))
        .bind(&t.case_id)
        .bind(&t.id)
        .execute(self.conn())
        .await?;
        Ok(())
    }
}
