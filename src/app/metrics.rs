//! Customer metrics beyond the write path: checking the running totals against the
//! interactions they sum (and repairing them).

use crate::domain::error::Result;
use crate::store::{Store, TotalsCheck};

/// Recomputes every customer's totals from its interactions and reports where the
/// stored ones differ; `repair` replaces the stored ones that do.
pub async fn check(store: &Store, repair: bool) -> Result<TotalsCheck> {
    let check = store.check_totals(repair).await?;
    if check.customers_differing > 0 {
        tracing::warn!(
            customers = check.customers,
            differing = check.customers_differing,
            repaired = repair,
            "customer metrics differed from their interactions"
        );
    }
    Ok(check)
}
