//! The gRPC services. Handlers are thin: decode and validate the request, check the
//! key's scope, call the use case in [`crate::app`], encode the answer.

pub mod auth;
pub mod codec;
pub mod convert;
pub mod edge;
pub mod http;
pub mod paging;
pub mod status;
mod write;

mod admin;
mod audit;
mod cases;
mod client_certs;
pub mod customers;
mod events;
pub mod exports;
mod interactions;
pub mod limits;
mod long_running;
mod mapping;
mod members;
mod partnerships;
mod rules;
mod sharing;
pub(crate) mod webhooks;

use std::sync::Arc;

pub use crate::app::customers::CustomerSettings;
pub use admin::AdminApi;
pub use audit::AuditApi;
pub use auth::{Authenticator, Caller, caller_of};
pub use cases::CaseApi;
pub use customers::CustomerApi;
pub use events::EventApi;
pub use interactions::InteractionApi;
pub use limits::Limiter;
pub use long_running::OperationsApi;
pub use mapping::AccountMappingApi;
pub use members::MemberApi;
pub use partnerships::PartnershipApi;
pub use sharing::SharingApi;
pub use webhooks::WebhookApi;

use crate::domain::case::workflow::Workflows;
use crate::store::Store;

/// What every service shares.
#[derive(Clone)]
pub struct Hub {
    pub store: Store,
    pub auth: Arc<Authenticator>,
    pub customers: Arc<CustomerSettings>,
    /// The workflow templates cases follow.
    pub workflows: Arc<Workflows>,
    /// Rate limits and per-organization request and stream limits.
    pub limits: Arc<Limiter>,
    /// Seals and opens every List's page tokens.
    pub pages: Arc<paging::PageTokens>,
    /// Account mapping settings (threshold, refresh interval).
    pub mapping: Arc<crate::app::mapping::MappingSettings>,
    /// The audit log's checkpoint key and trusted keys.
    pub audit: Arc<crate::app::audit::AuditSettings>,
}

impl Hub {
    pub fn new(
        store: Store,
        customers: CustomerSettings,
        workflows: Workflows,
        limits: Limiter,
        pages: paging::PageTokens,
    ) -> Self {
        let auth = Arc::new(Authenticator::new(store.clone()));
        Self {
            store,
            auth,
            customers: Arc::new(customers),
            workflows: Arc::new(workflows),
            limits: Arc::new(limits),
            pages: Arc::new(pages),
            mapping: Arc::new(crate::app::mapping::MappingSettings::from_config(
                &crate::config::MappingConfig::default(),
            )),
            audit: Arc::default(),
        }
    }

    /// A hub over `store` with the customer settings of `config`.
    pub async fn build(store: Store, config: &crate::config::Config) -> anyhow::Result<Self> {
        let customers = CustomerSettings::load(&store, &config.customers).await?;
        let workflows = config.workflows.load()?;
        for t in workflows.all().filter(|t| !t.built_in) {
            tracing::info!(template = %t.name, "workflow template loaded");
        }
        let limits = Limiter::new(&config.limits, config.server.max_message_bytes);
        let pages = paging::PageTokens::load(&store, &config.server.page_token_keys.0).await?;
        let mut hub = Self::new(store, customers, workflows, limits, pages);
        hub.mapping = Arc::new(crate::app::mapping::MappingSettings::from_config(
            &config.mapping,
        ));
        hub.audit = Arc::new(crate::app::audit::AuditSettings::from_config(
            &config.audit,
        )?);
        if hub.audit.signing_key.is_none() {
            tracing::warn!(
                "audit.signing_key is not set: audit checkpoints are not signed \
                 (make a key with `liaison audit keygen`)"
            );
        }
        Ok(hub)
    }
}
