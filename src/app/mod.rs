//! Use cases: what a caller may do, one module per aggregate. Each takes the caller
//! and a typed command (no protobuf), applies the domain's rules inside the
//! transaction it is given (or reads from the store), and tells the feed what changed;
//! the edge (`api`) decodes requests into commands and renders what comes back.

pub mod audit;
pub mod cases;
pub mod customers;
pub mod events;
pub mod exports;
pub mod interactions;
pub mod mapping;
pub mod members;
pub mod metrics;
pub mod organizations;
pub mod partnerships;
pub mod rules;
pub mod scorecards;
pub mod sharing;
pub mod webhooks;
pub mod write;

use crate::domain::error::{Error, Result};

/// Checks the etag a caller read `resource` at against its `current_revision`: empty
/// writes over any revision, another revision is ABORTED (AIP-154).
pub fn check_etag(sent: &str, current_revision: i64, resource: &str) -> Result<()> {
    if sent.is_empty() {
        return Ok(());
    }
    let revision: i64 = sent
        .trim_matches('"')
        .parse()
        .map_err(|_| Error::invalid("etag", "is not an etag this API returned"))?;
    if revision == current_revision {
        Ok(())
    } else {
        Err(Error::StaleEtag(resource.to_owned()))
    }
}
