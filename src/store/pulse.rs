//! The workers' reports of their looks at their queues, and waiting on them.
//!
//! Each worker (webhook deliveries, email, case timers) reports every look it takes at
//! its queue, and whether that look found work. "Nothing more will happen" then has a
//! precise meaning a caller can wait for, instead of sleeping and hoping: every worker
//! has looked at its queue after the moment of asking, by the clock of that moment, and
//! found nothing due (see [`Store::settle`]).

use std::sync::Arc;
use std::time::Duration;

use jiff::SignedDuration;
use tokio::sync::{Notify, watch};

use super::Store;

/// The hub's workers that take work from a queue in the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Worker {
    Webhooks,
    Emails,
    Timers,
    Operations,
}

impl Worker {
    pub const ALL: [Worker; 4] = [
        Worker::Webhooks,
        Worker::Emails,
        Worker::Timers,
        Worker::Operations,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Worker::Webhooks => "webhooks",
            Worker::Emails => "emails",
            Worker::Timers => "timers",
            Worker::Operations => "operations",
        }
    }
}

/// A worker's looks so far: all of them, and those that found work to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Looks {
    pub all: u64,
    pub busy: u64,
}

/// One watch per worker.
#[derive(Debug, Default)]
pub struct Pulses {
    webhooks: watch::Sender<Looks>,
    emails: watch::Sender<Looks>,
    timers: watch::Sender<Looks>,
    operations: watch::Sender<Looks>,
}

impl Pulses {
    fn of(&self, worker: Worker) -> &watch::Sender<Looks> {
        match worker {
            Worker::Webhooks => &self.webhooks,
            Worker::Emails => &self.emails,
            Worker::Timers => &self.timers,
            Worker::Operations => &self.operations,
        }
    }
}

/// How long [`Store::settle`] waits before it gives up: a worker that takes longer than
/// this to finish a look is stuck, and the caller should hear of it.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

impl Store {
    /// Records that `worker` looked at its queue, and whether it found work (a look
    /// that leaves work in flight, such as a webhook attempt still running, counts
    /// as one that found work).
    pub fn looked(&self, worker: Worker, busy: bool) {
        self.pulses.of(worker).send_modify(|looks| {
            looks.all += 1;
            looks.busy += u64::from(busy);
        });
    }

    /// The looks `worker` has reported so far.
    pub fn looks(&self, worker: Worker) -> Looks {
        *self.pulses.of(worker).borrow()
    }

    fn signal(&self, worker: Worker) -> &Arc<Notify> {
        match worker {
            Worker::Webhooks => &self.deliveries,
            Worker::Emails => &self.emails,
            Worker::Timers => &self.timers,
            Worker::Operations => &self.operations,
        }
    }

    /// Moves the workers' clock forward (time that passes while a test watches, or
    /// while a hub is down) and has every worker look at its queue again: each then
    /// sleeps until the next due time by the new clock, on its own schedule.
    pub fn advance_clock(&self, by: SignedDuration) {
        self.clock.advance(by);
        for worker in Worker::ALL {
            self.signal(worker).notify_one();
        }
    }

    /// Waits until the workers of this process have nothing due: every one of them
    /// has taken a look at its queue that began after this call and found no work, in
    /// a round in which none of them found any (so work one worker makes for another,
    /// such as a timer that queues an email, is done too). Work due later (a retry
    /// after a backoff, an email waiting out its coalescing window) stays undone.
    ///
    /// Panics if the workers have not settled within a minute: a test that waits on
    /// this should fail, not hang, when a worker is stuck.
    pub async fn settle(&self) {
        let settled = async {
            loop {
                let before: Vec<Looks> = Worker::ALL.iter().map(|&w| self.looks(w)).collect();
                for (&worker, before) in Worker::ALL.iter().zip(&before) {
                    self.fresh_look(worker, before.all).await;
                }
                let quiet = Worker::ALL
                    .iter()
                    .zip(&before)
                    .all(|(&w, before)| self.looks(w).busy == before.busy);
                if quiet {
                    return;
                }
            }
        };
        if tokio::time::timeout(SETTLE_LIMIT, settled).await.is_err() {
            panic!("the hub's workers did not settle within {SETTLE_LIMIT:?}");
        }
    }

    /// Waits for a look of `worker` that began after this call: a look in progress
    /// now may have begun before, so it waits for the one after that.
    async fn fresh_look(&self, worker: Worker, seen: u64) {
        let mut looks = self.pulses.of(worker).subscribe();
        for n in [seen + 1, seen + 2] {
            // A worker asleep wakes; one looking now looks once more when it is done
            // (the signal keeps one wake-up for it).
            self.signal(worker).notify_one();
            if looks.wait_for(|l| l.all >= n).await.is_err() {
                return;
            }
        }
    }
}
