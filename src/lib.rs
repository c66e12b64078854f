//! Liaison: a collaborative-CRM integration hub.
//!
//! The code is in layers; every import points down, never up, and no modules import
//! each other in a circle (`tests/api/architecture.rs` fails the build otherwise):
//!
//! ```text
//! cli        the `liaison` command: argument parsing and printing
//! startup    builds the hub from a configuration: the one place that wires it all
//! api        the gRPC services: protobuf in, a typed command to app, protobuf out
//! app        use cases per aggregate: caller and command in, rules applied in one
//!            transaction, the feed told; no protobuf
//! outbound   webhook and email workers, the case timers
//! infra      config, telemetry, metrics, tls
//! feed       events: who hears of a change, the event as protobuf and as JSON
//! store      SQL only (SQLite and PostgreSQL behind one API)
//! domain     pure types and rules: no sqlx, tonic, reqwest, tokio or files
//! ```
//!
//! Where a new thing goes:
//!
//! - **An RPC**: the message and method in `proto/liaison/v1/`; its use case in the
//!   aggregate's module under [`app`] (taking the caller and a typed command, with
//!   ids parsed at the edge into [`domain::ids`]); its handler in the service's
//!   module under [`api`], which decodes, calls the use case (writes through
//!   `api::write::idempotent`) and renders; its rules in [`domain`], its SQL in
//!   [`store`]; the tenant-matrix test gains a row.
//! - **An event type**: a variant of [`domain::event::EventType`] with its wire name;
//!   the compiler then asks where its notification category is
//!   ([`domain::notify::Category::of`]); the use case tells the feed ([`feed`], one
//!   module per aggregate) in the change's transaction.
//! - **A table**: a migration in both `migrations/sqlite` and `migrations/postgres`,
//!   and its queries in the [`store`] module of its table family.
//!
//! The modules: [`cli`], [`startup`], [`api`], [`app`], [`outbound`], [`config`],
//! [`telemetry`], [`metrics`], [`tls`], [`feed`], [`store`], [`domain`], and [`pb`],
//! the code generated from the protos.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod feed;
pub mod metrics;
pub mod outbound;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;

/// Code generated from `proto/liaison/v1` (package `liaison.v1`), at the path its
/// references to the `google` packages expect.
pub mod liaison {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("liaison.v1");
    }
}

/// Code generated from the vendored `proto/google` files: long-running operations and
/// the status they end with.
pub mod google {
    pub mod api {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("google.api");
    }
    pub mod longrunning {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("google.longrunning");
    }
    pub mod rpc {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("google.rpc");
    }
}

/// The `liaison.v1` API.
pub mod pb {
    pub use crate::liaison::v1::*;

    /// The descriptor set of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("liaison_descriptor");
}
