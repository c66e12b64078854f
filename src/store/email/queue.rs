//! The notification queue: written with each event ([`Tx::commit`]), taken by the
//! email worker per thread and per digest.

use super::*;

impl Store {
    /// (member, thread) pairs with immediate news ready to compose: the oldest has
    /// settled for `settle`, and the thread's last email is older than `window`.
    pub async fn due_threads(
        &self,
        now: Timestamp,
        settle: SignedDuration,
        window: SignedDuration,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT n.member_id, n.thread_key FROM notifications n \
             LEFT JOIN email_threads t ON t.member_id = n.member_id AND t.thread_key = n.thread_key \
             WHERE n.state = 'pending' AND n.mode = 'immediate' \
             GROUP BY n.member_id, n.thread_key, t.last_sent_time \
             HAVING MIN(n.create_time) <= $1 AND (t.last_sent_time IS NULL OR t.last_sent_time <= $2) \
             LIMIT $3",
        )
        .bind(micros(now - settle))
        .bind(micros(now - window))
        .bind(limit as i64)
        .fetch_all(self.reader())
        .await?)
    }

    /// Members with digest news due.
    pub async fn due_digests(&self, now: Timestamp, limit: usize) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT member_id FROM notifications \
             WHERE state = 'pending' AND mode = 'digest' AND due_time <= $1 LIMIT $2",
        )
        .bind(micros(now))
        .bind(limit as i64)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// When the email worker next has something to do that no commit announces.
    ///
    /// The outbox's part walks pending emails in due order past those leased now
    /// (at most the ones being sent), so it reads a few index entries however many
    /// emails wait, say through an SMTP outage. A lease left by a replica that died
    /// is found by the worker's periodic look (at least every 30 s) once it
    /// expires.
    pub async fn next_email_work(
        &self,
        now: Timestamp,
        settle: SignedDuration,
        window: SignedDuration,
    ) -> Result<Option<Timestamp>> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(t) FROM (\
               SELECT MIN(CASE WHEN t.last_sent_time IS NULL OR t.last_sent_time + $2 < n.create_time + $1 \
                 THEN n.create_time + $1 ELSE t.last_sent_time + $2 END) AS t \
               FROM notifications n LEFT JOIN email_threads t \
                 ON t.member_id = n.member_id AND t.thread_key = n.thread_key \
               WHERE n.state = 'pending' AND n.mode = 'immediate' \
               UNION ALL SELECT MIN(due_time) AS t FROM notifications \
                 WHERE state = 'pending' AND mode = 'digest' \
               UNION ALL SELECT t FROM (SELECT next_attempt_time AS t FROM emails \
                 WHERE state = 'pending' AND (lease_until IS NULL OR lease_until < $3) \
                 ORDER BY next_attempt_time LIMIT 1) outbox\
             ) due",
        )
        .bind(settle.as_micros() as i64)
        .bind(window.as_micros() as i64)
        .bind(micros(now))
        .fetch_one(self.reader())
        .await?;
        row.0.map(timestamp).transpose()
    }
}

/// Notifications written by one INSERT.
const NOTIFICATION_CHUNK: usize = 200;

impl Tx {
    /// Queues the notifications [`notify::route`] decides for an organization's new
    /// events. Part of [`Tx::commit`]: reads who follows the customers concerned and
    /// the members and their preferences, then writes one row per notification.
    pub(in crate::store) async fn queue_notifications(
        &mut self,
        organization_id: &str,
        actor: Option<&str>,
        events: &[Notifiable<'_>],
    ) -> Result<()> {
        let relevant: Vec<Notifiable<'_>> = events
            .iter()
            .filter(|e| e.category().is_some())
            .copied()
            .collect();
        if relevant.is_empty() {
            return Ok(());
        }
        let customers: HashSet<&str> = relevant
            .iter()
            .filter_map(Notifiable::followed_customer)
            .collect();
        let mut follows: HashMap<String, HashSet<String>> = HashMap::new();
        if !customers.is_empty() {
            let sql = format!(
                "SELECT customer_id, member_id FROM member_follows \
                 WHERE organization_id = $1 AND customer_id IN ({})",
                placeholders(2, customers.len())
            );
            let mut query = sqlx::query_as::<_, (String, String)>(&sql).bind(organization_id);
            for id in &customers {
                query = query.bind(*id);
            }
            for (customer, member) in query.fetch_all(self.conn()).await? {
                follows.entry(member).or_default().insert(customer);
            }
        }
        let others = relevant
            .iter()
            .any(|e| e.category() != Some(Category::Customers));
        if !others && follows.is_empty() {
            return Ok(());
        }
        // Whether the events are work the organization did itself.
        let own_work = match actor {
            Some(actor) if others => {
                let slug = self.org_ref(organization_id).await?.slug;
                slug.as_str() == actor
            }
            _ => false,
        };
        let members: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, time_zone, email_bounce FROM members WHERE organization_id = $1",
        )
        .bind(organization_id)
        .fetch_all(self.conn())
        .await?;
        let settings: Vec<PreferenceRow> = sqlx::query_as(&format!(
            "SELECT {PREFERENCE_COLUMNS} FROM notification_preferences WHERE organization_id = $1"
        ))
        .bind(organization_id)
        .fetch_all(self.conn())
        .await?;
        let mut by_member: HashMap<&str, Preferences> = settings
            .iter()
            .map(|r| (r.member_id.as_str(), r.preferences()))
            .collect();
        let defaults = by_member.remove("").unwrap_or_default();
        let recipients: Vec<Recipient<'_>> = members
            .iter()
            .map(|(id, time_zone, bounce)| Recipient {
                member_id: id,
                time_zone,
                bounced: !bounce.is_empty(),
                preferences: by_member.get(id.as_str()).cloned().unwrap_or_default(),
                follows: follows
                    .get(id)
                    .map(|c| c.iter().map(String::as_str).collect())
                    .unwrap_or_default(),
            })
            .collect();
        let now = self.store.clock.now();
        let routed = notify::route(&relevant, own_work, &recipients, &defaults, now);
        // Many rows a statement (9 parameters each).
        for chunk in routed.chunks(NOTIFICATION_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({}, 'pending', NULL)", placeholders(i * 9 + 1, 9)))
                .collect();
            let sql = format!(
                "INSERT INTO notifications (id, organization_id, member_id, sequence, \
                 event_type, thread_key, mode, due_time, create_time, state, email_id) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for n in chunk {
                query = query
                    .bind(Uuid::now_v7().to_string())
                    .bind(organization_id)
                    .bind(n.member_id)
                    .bind(n.sequence)
                    .bind(n.event_type.as_str())
                    .bind(&n.thread)
                    .bind(n.mode.as_str())
                    .bind(micros(n.due))
                    .bind(micros(now));
            }
            query.execute(self.conn()).await?;
        }
        if !routed.is_empty() {
            self.wake_emails();
        }
        Ok(())
    }

    /// Marks the pending notifications of a member composed into `email_id` and
    /// returns them, oldest first: those of `thread` (immediate), or all digest news
    /// due by `now`. Rows another replica is composing are skipped.
    pub async fn take_notifications(
        &mut self,
        member_id: &str,
        thread: Option<&str>,
        now: Timestamp,
        email_id: &str,
    ) -> Result<Vec<PendingNotification>> {
        let lock = match self.dialect {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let which = match thread {
            Some(_) => "mode = 'immediate' AND thread_key = $3",
            None => "mode = 'digest' AND due_time <= $3",
        };
        let sql = format!(
            "UPDATE notifications SET state = 'composed', email_id = $1 WHERE id IN (\
             SELECT id FROM notifications WHERE member_id = $2 AND state = 'pending' AND {which} {lock}) \
             RETURNING id, organization_id, member_id, sequence, event_type, thread_key, create_time"
        );
        let mut taken: Vec<PendingNotification> = match thread {
            Some(t) => {
                sqlx::query_as(&sql)
                    .bind(email_id)
                    .bind(member_id)
                    .bind(t)
                    .fetch_all(self.conn())
                    .await?
            }
            None => {
                sqlx::query_as(&sql)
                    .bind(email_id)
                    .bind(member_id)
                    .bind(micros(now))
                    .fetch_all(self.conn())
                    .await?
            }
        };
        taken.sort_by_key(|n| (n.organization_id.clone(), n.sequence));
        Ok(taken)
    }

    /// The Message-ID a thread's emails reply to, if it has had one.
    pub async fn thread_root(&mut self, member_id: &str, thread: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT root_message_id FROM email_threads WHERE member_id = $1 AND thread_key = $2",
        )
        .bind(member_id)
        .bind(thread)
        .fetch_optional(self.conn())
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// Records that an email of the thread was composed at `now`.
    pub async fn touch_thread(
        &mut self,
        member_id: &str,
        thread: &str,
        root: &str,
        now: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO email_threads (member_id, thread_key, root_message_id, last_sent_time) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (member_id, thread_key) \
             DO UPDATE SET last_sent_time = excluded.last_sent_time",
        )
        .bind(member_id)
        .bind(thread)
        .bind(root)
        .bind(micros(now))
        .execute(self.conn())
        .await?;
        Ok(())
    }
}
