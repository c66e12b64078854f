//! Delivery machinery: workers that take due deliveries from the store's durable queue
//! under a lease, send them with no transaction open, and record the outcome.

pub mod email;
pub mod webhooks;
