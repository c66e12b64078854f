//! The credential generation: a value every revocation (a key, a client certificate)
//! and every change of an organization's or a partnership's standing (suspended,
//! reactivated, ended) replaces, in the same transaction. Each process follows it (its own commits at once, other
//! processes' within [`POLL`]), so cached credentials and open streams are checked
//! again everywhere within a second, on every replica and beside `liaison admin`.

use std::time::Duration;

use tokio::sync::watch;

use super::{Store, Tx};
use crate::domain::error::Result;

/// How often a process reads the generation other processes may have replaced: one
/// indexed read of one row, and the bound on how long a revoked key lives elsewhere.
const POLL: Duration = Duration::from_millis(250);
/// The settings row that holds the generation.
const SETTING: &str = "credential_generation";

impl Store {
    /// Changes whenever credentials may have been revoked anywhere.
    pub fn credentials(&self) -> watch::Receiver<u64> {
        self.credentials.subscribe()
    }

    /// The current local count of credential changes seen.
    pub fn credential_generation(&self) -> u64 {
        *self.credentials.borrow()
    }

    /// Follows the generation other processes write, forever.
    pub async fn follow_credentials(&self) {
        // `None` until first read; then the row's value (`None` if never written).
        let mut last: Option<Option<String>> = None;
        loop {
            match sqlx::query_scalar::<_, String>("SELECT value FROM settings WHERE name = $1")
                .bind(SETTING)
                .fetch_optional(self.reader())
                .await
            {
                Ok(now) => {
                    if last.as_ref().is_some_and(|seen| *seen != now) {
                        self.credentials.send_modify(|g| *g += 1);
                    }
                    last = Some(now);
                }
                Err(error) => tracing::warn!(%error, "could not read the credential generation"),
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Tx {
    /// Records that credentials changed: at commit every process checks its cached
    /// keys and open streams again.
    pub async fn credentials_changed(&mut self) -> Result<()> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(SETTING)
        .bind(token)
        .execute(self.conn())
        .await?;
        self.credentials_changed = true;
        Ok(())
    }
}
