//! Members' notification preferences and the customers they follow.

use super::*;

impl Store {
    /// The settings of a member, or of the organization (`member_id` empty), and when
    /// they last changed; the defaults if never set.
    pub async fn notification_preferences(
        &self,
        organization_id: &str,
        member_id: &str,
    ) -> Result<(Preferences, Option<Timestamp>)> {
        let row: Option<PreferenceRow> = sqlx::query_as(&format!(
            "SELECT {PREFERENCE_COLUMNS} FROM notification_preferences \
             WHERE organization_id = $1 AND member_id = $2"
        ))
        .bind(organization_id)
        .bind(member_id)
        .fetch_optional(self.reader())
        .await?;
        match row {
            Some(r) => Ok((r.preferences(), Some(timestamp(r.update_time)?))),
            None => Ok((Preferences::default(), None)),
        }
    }

    /// The customer ids a member follows.
    pub async fn follows(&self, member_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT customer_id FROM member_follows WHERE member_id = $1 ORDER BY customer_id",
        )
        .bind(member_id)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

impl Tx {
    /// Replaces the settings of a member, or of the organization (`member_id` empty).
    pub async fn set_notification_preferences(
        &mut self,
        organization_id: &str,
        member_id: &str,
        p: &Preferences,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO notification_preferences (organization_id, member_id, work, sla, \
             customers, integration, digest_hour, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (organization_id, member_id) DO UPDATE SET work = excluded.work, \
             sla = excluded.sla, customers = excluded.customers, integration = excluded.integration, \
             digest_hour = excluded.digest_hour, update_time = excluded.update_time",
        )
        .bind(organization_id)
        .bind(member_id)
        .bind(mode_text(p.work))
        .bind(mode_text(p.sla))
        .bind(mode_text(p.customers))
        .bind(mode_text(p.integration))
        .bind(p.digest_hour.map(i64::from).unwrap_or(-1))
        .bind(micros(at))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Replaces the customers a member follows.
    pub async fn set_follows(
        &mut self,
        organization_id: &str,
        member_id: &str,
        customer_ids: &[String],
    ) -> Result<()> {
        sqlx::query("DELETE FROM member_follows WHERE member_id = $1")
            .bind(member_id)
            .execute(self.conn())
            .await?;
        for id in customer_ids {
            sqlx::query(
                "INSERT INTO member_follows (organization_id, member_id, customer_id) \
                 VALUES ($1, $2, $3)",
            )
            .bind(organization_id)
            .bind(member_id)
            .bind(id)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }

    /// Forgets what belongs to a member who is being deleted.
    pub async fn forget_member_email(&mut self, member_id: &str) -> Result<()> {
        for sql in [
            "DELETE FROM member_follows WHERE member_id = $1",
            "DELETE FROM notification_preferences WHERE member_id = $1",
            "DELETE FROM notifications WHERE member_id = $1 AND state = 'pending'",
        ] {
            sqlx::query(sql)
                .bind(member_id)
                .execute(self.conn())
                .await?;
        }
        Ok(())
    }

    /// A new address has not bounced.
    pub async fn clear_bounce(&mut self, member_id: &str) -> Result<()> {
        sqlx::query("UPDATE members SET email_bounce = '', email_bounce_time = NULL WHERE id = $1")
            .bind(member_id)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}
