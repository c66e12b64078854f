//! The gRPC services. Handlers are thin: decode and validate the request, authorize
//! the caller, call the store, encode the answer.

pub mod auth;
pub mod convert;
pub mod edge;
mod names;
mod paging;
mod write;

mod admin;
mod members;
mod partnerships;

use std::sync::Arc;

pub use admin::AdminApi;
pub use auth::{Authenticator, Caller};
pub use members::MemberApi;
pub use partnerships::PartnershipApi;

use crate::store::Store;

/// What every service shares.
#[derive(Clone)]
pub struct Hub {
    pub store: Store,
    pub auth: Arc<Authenticator>,
}

impl Hub {
    pub fn new(store: Store) -> Self {
        let auth = Arc::new(Authenticator::new(store.clone()));
        Self { store, auth }
    }
}
