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

mod compose;
mod outbox;
mod preferences;
mod queue;

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
