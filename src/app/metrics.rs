//! Customer metrics beyond the write path: each organization's RFM quintiles,
//! recomputed by a periodic job, and checking the running totals against the
//! interactions they sum (and repairing them).

use std::time::Duration;

use jiff::Timestamp;

use super::customers::{CustomerSettings, Listing, list_with_activity};
use crate::domain::caller::Caller;
use crate::domain::error::Result;
use crate::domain::filter::{CustomerCondition, CustomerFilter, Op};
use crate::domain::metrics::{RfmBoundaries, quintiles};
use crate::domain::{OrgRef, Organization};
use crate::store::{Store, TotalsCheck};

/// Customers read per page by the RFM job.
const RFM_PAGE: usize = 500;

/// Computes `org`'s RFM quintiles over the customers it sees (through the same
/// listing, and so the same visibility function, as its ListCustomers) that bought,
/// from its own metrics of each, and stores them; `None` if no such customer.
pub async fn compute_rfm(
    store: &Store,
    settings: &CustomerSettings,
    org: &Organization,
    now: Timestamp,
) -> Result<Option<RfmBoundaries>> {
    let caller = Caller::job(OrgRef {
        id: org.id.clone(),
        slug: org.slug.clone(),
    });
    let bought = CustomerFilter {
        conditions: vec![CustomerCondition::PurchaseCount(Op::Ge, 1)],
    };
    let currency = &org.reporting_currency;
    let (mut recency, mut frequency, mut monetary) = (vec![], vec![], vec![]);
    let mut after: Option<String> = None;
    loop {
        // The filter on purchases reads each customer's facts as `org` knows them;
        // the metrics come from the same read.
        let page = list_with_activity(
            store,
            settings,
            &caller,
            Listing::by_creation(&bought, after.as_deref(), RFM_PAGE),
        )
        .await?;
        for a in page.items.iter().filter_map(|(_, _, a)| a.as_ref()) {
            let m = a.metrics();
            let Some(last) = m.last_purchase() else {
                continue;
            };
            recency.push(i128::from(last.as_microsecond()));
            frequency.push(i128::from(m.purchases));
            if let Some(value) = m.purchase_value.get(currency) {
                monetary.push(*value);
            }
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let customers = recency.len() as i64;
    let found = match (quintiles(recency), quintiles(frequency)) {
        (Some(recency), Some(frequency)) => Some(RfmBoundaries {
            recency,
            frequency,
            monetary: quintiles(monetary).filter(|_| !currency.is_empty()),
            currency: currency.clone(),
            customers,
            compute_time: now,
        }),
        _ => None,
    };
    let mut tx = store.begin().await?;
    tx.save_rfm(&org.id, found.as_ref()).await?;
    tx.commit().await?;
    Ok(found)
}

/// Recomputes every active organization's RFM quintiles every `interval`, skipping
/// one another replica computed within half an interval. Runs until the hub stops.
pub async fn run_rfm(store: Store, settings: std::sync::Arc<CustomerSettings>, interval: Duration) {
    loop {
        if let Err(error) = rfm_round(&store, &settings, interval).await {
            tracing::warn!(%error, "failed to recompute RFM quintiles");
        }
        tokio::time::sleep(interval).await;
    }
}

async fn rfm_round(store: &Store, settings: &CustomerSettings, interval: Duration) -> Result<()> {
    let half = jiff::SignedDuration::try_from(interval / 2).unwrap_or_default();
    let mut after: Option<String> = None;
    loop {
        let page = store.organizations(after.as_deref(), 100).await?;
        for org in page.items.iter().filter(|o| o.is_active()) {
            let now = store.clock().now();
            let fresh = store
                .rfm_of(&org.id)
                .await?
                .is_some_and(|b| now.duration_since(b.compute_time) < half);
            if fresh {
                continue;
            }
            // One organization's failure is logged; the others still get theirs.
            match compute_rfm(store, settings, org, now).await {
                Ok(found) => tracing::debug!(
                    organization = %org.slug,
                    customers = found.map_or(0, |b| b.customers),
                    "RFM quintiles computed"
                ),
                Err(error) => tracing::warn!(
                    organization = %org.slug,
                    %error,
                    "failed to compute RFM quintiles"
                ),
            }
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(()),
        }
    }
}

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
