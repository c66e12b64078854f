//! Webhook endpoints and the durable queue of deliveries to them.
//!
//! A delivery row per (event, matching endpoint) is written with the event, when it
//! is numbered (in the writer's transaction on SQLite, in the sequencer's batch on
//! PostgreSQL). Workers claim due rows by setting a lease
//! ([`Store::claim_deliveries`]); the HTTP call happens with no transaction or
//! connection held, and its outcome is written in a short transaction afterwards
//! ([`Tx::record_attempt`], [`Tx::record_successes`]). A worker that dies leaves its
//! lease to expire; the row is then due again, and taken by the next claim that
//! looks at its endpoint (idle workers look every two seconds).
//!
//! The queue holds only work not done: a delivery that succeeds is deleted with its
//! attempt recorded (the attempts are the log; a test event's delivery stays, as
//! `succeeded`, since it holds the event's only body); one that fails for good stays
//! as `dead`. Pending rows are in two lanes, each on a partial index: *fresh* ones,
//! queued with their event and never tried, which commit in sequence order and are
//! read from each endpoint's cursor (`fresh_after`, never past one not done), so a
//! claim does not walk the finished rows VACUUM has yet to remove; and *timed* ones
//! (retries, redeliveries, test events, rate-limit slots), by due time. Nothing
//! indexes the lease, so taking one is a heap-only update.
//!
//! Claiming is fair: due deliveries are ranked round-robin, first across
//! organizations, then across each organization's endpoints, so one backlog never
//! starves another. Per endpoint at most `per_endpoint` are taken (less what this
//! replica already has in flight); an `ordered` endpoint only ever offers its
//! lowest-sequence pending delivery, and only while none of its deliveries is leased,
//! which keeps it to one in flight across replicas. A rate-limited endpoint reserves a
//! send slot per delivery on its row (GCRA: `pace_time` is when the next request may
//! go); deliveries whose slot lies ahead are put back with that slot as their due
//! time, so replicas together keep to the limit.

mod attempts;
mod endpoints;
mod queue;

pub use attempts::{Attempt, AttemptQuery, AttemptRecord, RecordedAttempt};
pub use endpoints::Endpoint;
pub use queue::{ClaimLimits, ClaimedDelivery, Delivery};
