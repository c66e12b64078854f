//! Liaison: a collaborative-CRM integration hub.
//!
//! - [`domain`] — validated values and state machines; knows nothing of gRPC or SQL.
//! - [`feed`] — events: who hears of a change, and the event as protobuf and JSON.
//! - [`store`] — the database (SQLite or PostgreSQL) behind one API.
//! - [`api`] — the gRPC services, authentication and the edge every RPC passes.
//! - [`outbound`] — webhook (and later email) workers over the durable delivery queue.
//! - [`config`] — layered configuration (defaults < file < environment < flags).
//! - [`startup`] — builds the server from a configuration and runs it until shutdown.
//! - [`telemetry`] — logging, and trace export over OTLP with the `otlp` feature.
//! - [`tls`] — TLS and mutual TLS for the gRPC server, reloaded on SIGHUP.
//! - [`metrics`] — Prometheus metrics and their endpoint.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod domain;
pub mod feed;
pub mod import;
pub mod metrics;
pub mod outbound;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;

/// Code generated from `proto/liaison/v1` (package `liaison.v1`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("liaison.v1");

    /// The descriptor set of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("liaison_descriptor");
}
