//! The hub's workers: webhook deliveries and emails taken from their durable queues
//! under a lease and sent with no transaction open, and the case timers that fire
//! SLA warnings, breaches, overdue tasks and automatic transitions when they fall due.

pub mod email;
pub mod timers;
pub mod webhooks;

use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How the hub stops its workers: first `stop` (take no new work, finish what is in
/// flight), then, when the shutdown grace is over, `abort` (drop what is still in
/// flight unrecorded and release its lease, so another replica or the restarted hub
/// takes it up at once).
#[derive(Clone, Default)]
pub struct Shutdown {
    pub stop: CancellationToken,
    pub abort: CancellationToken,
}

/// The longest a worker sleeps without looking at its queue.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// Sleeps until `due` (the queue's next due time as the store reports it, judged by
/// `now`), at least `floor` and at most [`IDLE_RECHECK`], or until `signal` says a
/// commit queued work.
pub(crate) async fn idle(
    signal: &Notify,
    due: crate::domain::error::Result<Option<Timestamp>>,
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

/// [`idle`], cut short when the hub stops.
pub(crate) async fn idle_until_stopped(
    stop: &CancellationToken,
    signal: &Notify,
    due: crate::domain::error::Result<Option<Timestamp>>,
    now: Timestamp,
    floor: Duration,
) {
    tokio::select! {
        () = idle(signal, due, now, floor) => {}
        () = stop.cancelled() => {}
    }
}
