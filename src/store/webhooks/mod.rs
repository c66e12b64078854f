//! Webhook endpoints and the durable queue of deliveries to them.
//!
//! A delivery row per (event, matching endpoint) is written by [`Tx::commit`] in the
//! event's own transaction. Workers claim due rows by setting a lease
//! ([`Store::claim_deliveries`]); the HTTP call happens with no transaction or
//! connection held, and its outcome is written in a short transaction afterwards
//! ([`Tx::record_attempt`]). A worker that dies leaves its lease to expire; the row is
//! then due again.
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
