//! Events: a change becomes one event per organization that may see it (the draft and
//! its audience), rendered as protobuf for the feed and as JSON for webhooks.
//! Called inside the change's transaction; below the API, above the store.

pub mod cases;
pub mod configuration;
pub mod customers;
pub mod draft;
pub mod export;
pub mod interactions;
pub mod json;
pub mod mapping;
pub mod members;
pub mod partnerships;
pub mod render;
pub mod sharing;
