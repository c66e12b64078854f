//! The outbox of rendered emails, sent at least once under a lease.

use super::*;

impl Store {
    /// Claims up to `limit` due emails until `lease_until`.
    pub async fn claim_emails(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<EmailToSend>> {
        let lock = match self.dialect {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let sql = format!(
            "UPDATE emails SET lease_until = $1 WHERE id IN (\
             SELECT id FROM emails WHERE state = 'pending' AND next_attempt_time <= $2 \
             AND (lease_until IS NULL OR lease_until < $2) ORDER BY next_attempt_time LIMIT {limit} {lock}) \
             RETURNING id, organization_id, member_id, to_address, message, attempts, lease_until"
        );
        let mut tx = self.begin().await?;
        let claimed = sqlx::query_as(&sql)
            .bind(micros(lease_until))
            .bind(micros(now))
            .fetch_all(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Gives claimed emails back unsent (the hub is stopping): due at once for
    /// whichever worker looks next, here or on another replica.
    pub async fn release_emails(&self, emails: &[EmailToSend]) -> Result<()> {
        if emails.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for email in emails {
            sqlx::query("UPDATE emails SET lease_until = NULL WHERE id = $1 AND lease_until = $2")
                .bind(&email.id)
                .bind(email.lease_until)
                .execute(tx.conn())
                .await?;
        }
        tx.wake_emails();
        tx.commit().await
    }

    /// Records what became of sending `email`. Returns whether the result came late:
    /// another worker had taken the email over, and its outcome stands.
    pub async fn record_email(
        &self,
        email: &EmailToSend,
        outcome: &EmailOutcome,
        now: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let (state, next, error) = match outcome {
            EmailOutcome::Sent => ("sent", now, ""),
            EmailOutcome::Retry { at, error } => ("pending", *at, error.as_str()),
            EmailOutcome::Bounced { error } | EmailOutcome::Dead { error } => {
                ("dead", now, error.as_str())
            }
        };
        let recorded = sqlx::query(
            "UPDATE emails SET state = $1, attempts = attempts + 1, next_attempt_time = $2, \
             lease_until = NULL, last_error = $3, sent_time = $4 WHERE id = $5 AND lease_until = $6",
        )
        .bind(state)
        .bind(micros(next))
        .bind(error)
        .bind((state == "sent").then_some(micros(now)))
        .bind(&email.id)
        .bind(email.lease_until)
        .execute(tx.conn())
        .await?;
        if recorded.rows_affected() == 0 {
            // Another worker took the email over; its outcome stands.
            return Ok(true);
        }
        if let EmailOutcome::Bounced { error } = outcome {
            // Only if the address is still the one that bounced.
            sqlx::query(
                "UPDATE members SET email_bounce = $1, email_bounce_time = $2 \
                 WHERE id = $3 AND email = $4",
            )
            .bind(error)
            .bind(micros(now))
            .bind(&email.member_id)
            .bind(&email.to_address)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        Ok(false)
    }
}

impl Tx {
    pub async fn insert_email(&mut self, e: &NewEmail<'_>, now: Timestamp) -> Result<()> {
        sqlx::query(
            "INSERT INTO emails (id, organization_id, member_id, to_address, message_id, kind, \
             subject, message, state, attempts, next_attempt_time, lease_until, last_error, \
             create_time, sent_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, NULL, '', $9, NULL)",
        )
        .bind(e.id)
        .bind(e.organization_id)
        .bind(e.member_id)
        .bind(e.to_address)
        .bind(e.message_id)
        .bind(e.kind)
        .bind(e.subject)
        .bind(e.message)
        .bind(micros(now))
        .execute(self.conn())
        .await?;
        self.wake_emails();
        Ok(())
    }
}
