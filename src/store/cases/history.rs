//! A case's history: transitions, comments, participants and tasks, each entry
//! as its organization wrote it.

use super::*;

impl Store {
    /// A page of a case's history `viewer_id` may read, oldest first.
    pub async fn case_history(
        &self,
        case_id: &str,
        viewer_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<HistoryEntry>> {
        let rows: Vec<HistoryRow> = sqlx::query_as(
            "SELECT h.id, h.case_id, h.kind, h.organization_id, o.slug, h.member_id, \
             h.transition, h.from_state, h.to_state, h.body, h.visibility, h.subject, \
             h.create_time FROM case_history h LEFT JOIN organizations o ON o.id = h.organization_id \
             WHERE h.case_id = $1 AND (h.visibility = 'participants' OR h.organization_id = $2) \
             AND h.id > $3 ORDER BY h.id LIMIT $4",
        )
        .bind(case_id)
        .bind(viewer_id)
        .bind(after.unwrap_or(""))
        .bind(limit as i64 + 1)
        .fetch_all(self.reader())
        .await?;
        let items = rows
            .into_iter()
            .map(HistoryEntry::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |h| h.id.clone()))
    }
}

impl Tx {
    pub async fn insert_case_history(&mut self, h: &HistoryEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO case_history (id, case_id, kind, organization_id, member_id, transition, \
             from_state, to_state, body, visibility, subject, create_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&h.id)
        .bind(&h.case_id)
        .bind(&h.kind)
        .bind(h.organization.as_ref().map(|o| o.id.as_str()))
        .bind(h.member_id.as_deref())
        .bind(&h.transition)
        .bind(&h.from_state)
        .bind(&h.to_state)
        .bind(&h.body)
        .bind(h.visibility.as_str())
        .bind(&h.subject)
        .bind(micros(h.create_time))
        .execute(self.conn())
        .await?;
        Ok(())
    }
}
