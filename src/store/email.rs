//! Email to members: their preferences and follows, the notification queue, and the
//! outbox of rendered emails.
//!
//! [`Tx::commit`] writes a notification per (event, member to tell) in the event's own
//! transaction. The email worker turns due notifications into emails — one per
//! member and thread for immediate news (several events inside the coalescing window
//! become one email), one per member and day for digests — in a transaction that marks
//! the notifications composed and writes the rendered email, so nothing is told twice
//! or lost. Emails are then sent at least once under a lease, like webhook deliveries.

use std::collections::{HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use sqlx::FromRow;
use uuid::Uuid;

use super::{Dialect, Store, Tx, micros, placeholders, timestamp};
use crate::domain::error::Result;
use crate::domain::notify::{self, Category, Mode, Notifiable, Preferences, Recipient};
use crate::domain::visibility::CustomerView;

/// Values per `IN (…)` list, far below either backend's parameter limit.
const IN_CHUNK: usize = 500;
/// How much earlier than its event a transition's history entry may have been written:
/// far more than any request lives.
const TRANSITION_SLACK: SignedDuration = SignedDuration::from_mins(10);

/// A notification taken for an email.
#[derive(Debug, Clone, FromRow)]
pub struct PendingNotification {
    pub id: String,
    pub organization_id: String,
    pub member_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub thread_key: String,
    pub create_time: i64,
}

/// An email claimed for sending.
#[derive(Debug, Clone, FromRow)]
pub struct EmailToSend {
    pub id: String,
    pub organization_id: String,
    pub member_id: String,
    pub to_address: String,
    pub message: Vec<u8>,
    pub attempts: i64,
    /// The lease this claim holds; the outcome is recorded only while it is held.
    pub lease_until: Option<i64>,
}

/// A rendered email on its way into the outbox.
pub struct NewEmail<'a> {
    pub id: &'a str,
    pub organization_id: &'a str,
    pub member_id: &'a str,
    pub to_address: &'a str,
    pub message_id: &'a str,
    pub kind: &'a str,
    pub subject: &'a str,
    pub message: &'a [u8],
}

/// What became of a send.
pub enum EmailOutcome {
    Sent,
    Retry {
        at: Timestamp,
        error: String,
    },
    /// Refused for good (SMTP 5xx): recorded on the member as a bounce.
    Bounced {
        error: String,
    },
    /// Given up after the last retry.
    Dead {
        error: String,
    },
}

#[derive(FromRow)]
struct PreferenceRow {
    member_id: String,
    work: String,
    sla: String,
    customers: String,
    integration: String,
    digest_hour: i64,
    update_time: i64,
}

impl PreferenceRow {
    fn preferences(&self) -> Preferences {
        Preferences {
            work: Mode::parse(&self.work),
            sla: Mode::parse(&self.sla),
            customers: Mode::parse(&self.customers),
            integration: Mode::parse(&self.integration),
            digest_hour: u8::try_from(self.digest_hour).ok().filter(|h| *h < 24),
        }
    }
}

/// A `case.transitioned` history entry, as far as finding its comment needs.
#[derive(FromRow)]
struct TransitionRow {
    id: String,
    case_id: String,
    to_state: String,
    body: String,
    visibility: String,
    organization_id: Option<String>,
}

/// The lowest UUIDv7 (as text) of `slack` before the time in the UUIDv7 `id`: the
/// bound of an index range over ids made from then on. `None` if `id` is no UUIDv7.
fn uuid_floor(id: &str, slack: SignedDuration) -> Option<String> {
    let (seconds, nanos) = Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    let millis = (seconds as i64 * 1000 + i64::from(nanos / 1_000_000))
        .saturating_sub(slack.as_millis() as i64)
        .max(0);
    Some(format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        millis >> 16,
        millis & 0xffff
    ))
}

const PREFERENCE_COLUMNS: &str =
    "member_id, work, sla, customers, integration, digest_hour, update_time";

fn mode_text(mode: Option<Mode>) -> &'static str {
    mode.map(Mode::as_str).unwrap_or("")
}

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
    pub async fn next_email_work(
        &self,
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
               UNION ALL SELECT MIN(COALESCE(lease_until, next_attempt_time)) AS t FROM emails \
                 WHERE state = 'pending'\
             ) due",
        )
        .bind(settle.as_micros() as i64)
        .bind(window.as_micros() as i64)
        .fetch_one(self.reader())
        .await?;
        row.0.map(timestamp).transpose()
    }

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

    /// Queues the notifications [`notify::route`] decides for an organization's new
    /// events. Part of [`Tx::commit`]: reads who follows the customers concerned and
    /// the members and their preferences, then writes one row per notification.
    pub(super) async fn queue_notifications(
        &mut self,
        organization_id: &str,
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
        let own_work = match self.cause().organization.clone() {
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
        let now = self.clock.now();
        let routed = notify::route(&relevant, own_work, &recipients, &defaults, now);
        for n in &routed {
            sqlx::query(
                "INSERT INTO notifications (id, organization_id, member_id, sequence, \
                 event_type, thread_key, mode, due_time, state, email_id, create_time) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', NULL, $9)",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(organization_id)
            .bind(n.member_id)
            .bind(n.sequence)
            .bind(n.event_type.as_str())
            .bind(&n.thread)
            .bind(n.mode.as_str())
            .bind(micros(n.due))
            .bind(micros(now))
            .execute(self.conn())
            .await?;
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

    /// The stored bodies of an organization's events, by sequence.
    pub async fn event_bodies(
        &mut self,
        organization_id: &str,
        sequences: &[i64],
    ) -> Result<HashMap<i64, Vec<u8>>> {
        let mut out = HashMap::new();
        for chunk in sequences.chunks(500) {
            let sql = format!(
                "SELECT sequence, body FROM events WHERE organization_id = $1 AND sequence IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query_as::<_, (i64, Vec<u8>)>(&sql).bind(organization_id);
            for s in chunk {
                query = query.bind(*s);
            }
            out.extend(query.fetch_all(self.conn()).await?);
        }
        Ok(out)
    }

    /// Display names of organizations, by slug, for an email that names them. Slugs
    /// of no organization are left out.
    pub async fn organization_names(
        &mut self,
        slugs: &[String],
    ) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        for chunk in slugs.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT slug, display_name FROM organizations WHERE slug IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query_as::<_, (String, String)>(&sql);
            for slug in chunk {
                query = query.bind(slug);
            }
            out.extend(query.fetch_all(self.conn()).await?);
        }
        Ok(out)
    }

    /// The customers `ids` as `viewer_id` may see them, decided by the one visibility
    /// function ([`SeenCustomer::access`](super::SeenCustomer::access), then
    /// [`Access::view`](crate::domain::visibility::Access::view)): only the fields the
    /// viewer's grant shows are filled in. Customers the viewer may not see at all are
    /// left out.
    pub async fn customer_views(
        &mut self,
        viewer_id: &str,
        ids: &[String],
    ) -> Result<HashMap<String, CustomerView>> {
        let mut out = HashMap::new();
        for id in ids {
            let Some(seen) = self.customer(viewer_id, id).await? else {
                continue;
            };
            if let Some(access) = seen.access() {
                let view = access.view(seen.customer.kind, &seen.customer.profile);
                out.insert(id.clone(), view);
            }
        }
        Ok(out)
    }

    /// The title and customer id of each of `ids` that `organization_id` takes part
    /// in, by case id. Cases it does not take part in (any more) are left out.
    pub async fn case_headings(
        &mut self,
        organization_id: &str,
        ids: &[String],
    ) -> Result<HashMap<String, (String, String)>> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT c.id, c.title, c.customer_id FROM cases c \
                 JOIN case_participants p ON p.case_id = c.id AND p.organization_id = $1 \
                 WHERE c.id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query =
                sqlx::query_as::<_, (String, String, String)>(&sql).bind(organization_id);
            for id in chunk {
                query = query.bind(id);
            }
            for (id, title, customer_id) in query.fetch_all(self.conn()).await? {
                out.insert(id, (title, customer_id));
            }
        }
        Ok(out)
    }

    /// The comment given with each of `transitions` (case id, id of the
    /// `case.transitioned` event, the state the case entered), by event id; only
    /// comments `organization_id` may read, by the rule of the case's history
    /// (the event itself reached it as a participant).
    ///
    /// The event does not carry the comment, so it is found in the case's history: the
    /// newest `case.transitioned` entry into that state written before the event.
    /// History entries and events are both UUIDv7 ids from the writing process, which
    /// orders them as they were made, and a transition writes its entry before its
    /// events; so the entry's id is below the event's, and at most
    /// [`TRANSITION_SLACK`] earlier (one request's lifetime).
    pub async fn transition_comments(
        &mut self,
        organization_id: &str,
        transitions: &[(String, String, String)],
    ) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        let (Some(first), Some(last)) = (
            transitions.iter().map(|t| &t.1).min(),
            transitions.iter().map(|t| &t.1).max(),
        ) else {
            return Ok(out);
        };
        let Some(from) = uuid_floor(first, TRANSITION_SLACK) else {
            return Ok(out);
        };
        let mut cases: Vec<&String> = transitions.iter().map(|t| &t.0).collect();
        cases.sort();
        cases.dedup();
        let mut entries: Vec<TransitionRow> = vec![];
        for chunk in cases.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT id, case_id, to_state, body, visibility, organization_id FROM case_history \
                 WHERE case_id IN ({}) AND kind = 'case.transitioned' AND id >= $1 AND id < $2 \
                 ORDER BY id",
                placeholders(3, chunk.len())
            );
            let mut query = sqlx::query_as::<_, TransitionRow>(&sql)
                .bind(&from)
                .bind(last);
            for id in chunk {
                query = query.bind(*id);
            }
            entries.extend(query.fetch_all(self.conn()).await?);
        }
        for (case_id, event_id, state) in transitions {
            let entry = entries
                .iter()
                .filter(|e| &e.case_id == case_id && &e.id < event_id && &e.to_state == state)
                .max_by(|a, b| a.id.cmp(&b.id));
            if let Some(e) = entry
                && !e.body.is_empty()
                && (e.visibility == "participants"
                    || e.organization_id.as_deref() == Some(organization_id))
            {
                out.insert(event_id.clone(), e.body.clone());
            }
        }
        Ok(out)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_floor_sorts_below_every_id_made_from_then_on() {
        let at = Timestamp::from_second(1_790_000_000).unwrap();
        let id = |t: Timestamp| {
            Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                t.as_second() as u64,
                t.subsec_nanosecond() as u32,
            ))
            .to_string()
        };
        let slack = SignedDuration::from_mins(10);
        let floor = uuid_floor(&id(at), slack).unwrap();
        assert!(floor.as_str() <= id(at - slack).as_str());
        assert!(floor.as_str() > id(at - slack - SignedDuration::from_millis(1)).as_str());
        assert!(floor.as_str() < id(at).as_str());
        assert_eq!(uuid_floor("not a uuid", slack), None);
        assert_eq!(uuid_floor(&Uuid::new_v4().to_string(), slack), None);
    }
}
