//! Delivery machinery: workers that take due deliveries from the store's durable queue
//! under a lease, send them with no transaction open, and record the outcome.

pub mod email;
pub mod webhooks;

use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Notify;

/// The longest a worker sleeps without looking at its queue.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// Sleeps until `due` (the queue's next due time as the store reports it, judged by
/// `now`), at least `floor` and at most [`IDLE_RECHECK`], or until `signal` says a
/// commit queued work.
pub(crate) async fn idle(
    signal: &Notify,
    due: crate::error::Result<Option<Timestamp>>,
    now: Timestamp,
    floor: Duration,
) {
    let wait = match due {
        Ok(Some(due)) => due
            .duration_since(now)
            .try_into()
            .unwrap_or(Duration::ZERO)
            .min(IDLE_RECHECK),
        _ => IDLE_RECHECK,
    };
    tokio::select! {
        () = signal.notified() => {}
        () = tokio::time::sleep(wait.max(floor)) => {}
    }
}
