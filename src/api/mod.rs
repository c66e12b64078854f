//! The gRPC services. Handlers are thin: decode and validate the request, authorize
//! the caller, call the store, encode the answer.

pub mod auth;
pub mod convert;
pub mod edge;
pub(crate) mod fanout;
mod names;
mod paging;
mod write;

mod admin;
pub mod customers;
mod events;
mod interactions;
mod members;
mod partnerships;
mod sharing;
pub(crate) mod webhooks;

use std::sync::Arc;

pub use admin::AdminApi;
pub use auth::{Authenticator, Caller};
pub use customers::{CustomerApi, CustomerSettings};
pub use events::EventApi;
pub use interactions::InteractionApi;
pub use members::MemberApi;
pub use partnerships::PartnershipApi;
pub use sharing::SharingApi;
pub use webhooks::WebhookApi;

use crate::store::Store;

/// What every service shares.
#[derive(Clone)]
pub struct Hub {
    pub store: Store,
    pub auth: Arc<Authenticator>,
    pub customers: Arc<CustomerSettings>,
}

impl Hub {
    pub fn new(store: Store, customers: CustomerSettings) -> Self {
        let auth = Arc::new(Authenticator::new(store.clone()));
        Self {
            store,
            auth,
            customers: Arc::new(customers),
        }
    }

    /// A hub over `store` with the customer settings of `config`.
    pub async fn build(store: Store, config: &crate::config::Config) -> anyhow::Result<Self> {
        let customers = CustomerSettings::load(&store, &config.customers).await?;
        Ok(Self::new(store, customers))
    }
}
