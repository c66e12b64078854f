//! Exports (see `domain::export`): started by a caller, run by the operations worker
//! as the caller's organization, through the same listings (and so the same
//! visibility function) as its List calls; written in chunks and read back until
//! they expire.

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};

use super::customers::{CustomerSettings, Listing, list, metrics_of};
use super::mapping::tonic_code;
use crate::domain::OrgRef;
use crate::domain::caller::Caller;
use crate::domain::case::workflow::Workflows;
use crate::domain::error::{Error, Result};
use crate::domain::export::{
    CHUNK_BYTES, ExportFormat, ExportKind, ExportParams, MAX_PERIODS, RETENTION,
};
use crate::domain::filter::CustomerFilter;
use crate::domain::mapping::OperationState;
use crate::domain::names;
use crate::domain::scorecard::Period;
use crate::feed::export as render;
use crate::store::{ExportFile, InteractionFilter, Operation, Store, Tx};

/// A worker holds an export this long without a word before another may take it.
const LEASE: SignedDuration = SignedDuration::from_mins(10);
/// Customers read per page.
const PAGE: usize = 200;

/// Records a new export of `kind` for the caller's organization and queues it; the
/// parameters were checked by the caller of this.
pub async fn start(
    tx: &mut Tx,
    caller: &Caller,
    (kind, format): (ExportKind, ExportFormat),
    params: &ExportParams,
    now: Timestamp,
) -> Result<Operation> {
    let org = caller.organization()?;
    let target = match kind {
        ExportKind::Scorecards => names::partnership(&params.partnership_id),
        _ => names::organization(&org.slug),
    };
    let op = Operation::new(kind.verb(), &target, (&org.id, None), now);
    tx.insert_operation(&op).await?;
    tx.insert_export(&op.id, &org.id, (kind, format), params)
        .await?;
    Ok(op)
}

/// The dates of the periods a scorecard export covers, checked.
pub fn periods(period: Period, first: Date, last: Date) -> Result<Vec<Date>> {
    if last < first {
        return Err(Error::invalid(
            "last_date",
            format!("{last} is before first_date {first}"),
        ));
    }
    let mut dates = vec![];
    let mut at = period.dates(first).0;
    while at <= last {
        if dates.len() == MAX_PERIODS {
            return Err(Error::invalid(
                "last_date",
                format!("at most {MAX_PERIODS} periods in one export"),
            ));
        }
        dates.push(at);
        match period.next(at) {
            Some(next) => at = next,
            None => break,
        }
    }
    Ok(dates)
}

/// Export `id` (named `name`) of the caller's organization, finished and not expired.
pub async fn finished(
    store: &Store,
    caller: &Caller,
    (id, name): (&str, &str),
) -> Result<ExportFile> {
    let org = caller.organization()?;
    let missing = || Error::NotFound(format!("export {name:?}"));
    let file = store
        .export_file(id)
        .await?
        .filter(|f| f.organization_id == org.id)
        .ok_or_else(missing)?;
    match file.expire_time {
        None => Err(Error::failed_precondition(
            "EXPORT_NOT_DONE",
            format!("{name} has not finished; wait for its operation to be done"),
        )),
        Some(t) if t <= store.clock().now() => Err(missing()),
        Some(_) => Ok(file),
    }
}

/// What the operations worker needs to run exports.
pub struct Exporter<'a> {
    pub store: &'a Store,
    pub customers: &'a CustomerSettings,
    pub workflows: &'a Workflows,
}

/// Writes a file in chunks, counting its records.
struct Chunks<'a> {
    store: &'a Store,
    id: &'a str,
    seq: i64,
    buf: Vec<u8>,
    records: i64,
}

impl Chunks<'_> {
    async fn push(&mut self, bytes: Vec<u8>, records: i64) -> Result<()> {
        self.buf.extend(bytes);
        self.records += records;
        if self.buf.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.store
            .append_export_chunk(self.id, self.seq, &self.buf, self.records)
            .await?;
        self.seq += 1;
        self.buf.clear();
        self.records = 0;
        Ok(())
    }
}

impl Exporter<'_> {
    /// Runs export operation `op` to its end and records the end.
    pub async fn run_one(&self, op: &Operation) {
        let outcome = self.write(op).await;
        let now = self.store.clock().now();
        let (state, error) = match &outcome {
            Ok(true) => (OperationState::Succeeded, None),
            Ok(false) => (
                OperationState::Cancelled,
                Some((tonic_code::CANCELLED, "cancelled".to_owned())),
            ),
            Err(Error::NotFound(m)) | Err(Error::FailedPrecondition { message: m, .. }) => (
                OperationState::Failed,
                Some((tonic_code::FAILED_PRECONDITION, m.clone())),
            ),
            Err(Error::Unavailable(m)) => (
                OperationState::Failed,
                Some((tonic_code::UNAVAILABLE, m.clone())),
            ),
            Err(e) => {
                tracing::warn!(operation = %op.id, error = %e, "an export failed");
                (
                    OperationState::Failed,
                    Some((
                        tonic_code::INTERNAL,
                        "the export failed; the hub's operator has the cause in its log".to_owned(),
                    )),
                )
            }
        };
        let finished = async {
            let mut tx = self.store.begin().await?;
            if state == OperationState::Succeeded {
                let expire = now.checked_add(RETENTION).unwrap_or(now);
                tx.complete_export(&op.id, expire).await?;
            }
            let error = error.as_ref().map(|(c, m)| (*c, m.as_str()));
            tx.finish_operation(&op.id, state, error, now).await?;
            tx.commit().await
        };
        match finished.await {
            Ok(()) => {
                tracing::info!(operation = %op.id, verb = %op.verb, state = state.as_str(), "export ended")
            }
            Err(error) => {
                tracing::warn!(operation = %op.id, %error, "failed to record an export's end")
            }
        }
    }

    /// Writes the file of `op`; false if it was cancelled.
    async fn write(&self, op: &Operation) -> Result<bool> {
        let store = self.store;
        let file = store
            .export_file(&op.id)
            .await?
            .ok_or_else(|| Error::failed_precondition("EXPORT_GONE", "the export is gone"))?;
        let slug = store
            .organization_slug(&op.org_id)
            .await?
            .ok_or_else(|| Error::NotFound("the organization is gone".into()))?;
        let org = OrgRef {
            id: op.org_id.clone(),
            slug,
        };
        let caller = Caller::job(org.clone());
        // A worker taking over starts the file again.
        store.restart_export(&op.id).await?;
        let mut out = Chunks {
            store,
            id: &op.id,
            seq: 0,
            buf: render::header(file.format, file.kind)?,
            records: 0,
        };
        let done = match file.kind {
            ExportKind::Customers | ExportKind::Interactions => {
                self.customers_of(op, &file, (&org, &caller), &mut out)
                    .await?
            }
            ExportKind::Scorecards => self.scorecards(op, &file, &org, &mut out).await?,
        };
        if done {
            out.flush().await?;
        }
        Ok(done)
    }

    /// Records progress; true if the operation should stop (cancelled, or taken).
    async fn progress(&self, op: &Operation, done: i64, total: i64) -> Result<bool> {
        let now = self.store.clock().now();
        self.store
            .operation_progress(&op.id, (done, total), now, LEASE)
            .await
    }

    /// The customers the caller sees (or their interactions), page by page.
    async fn customers_of(
        &self,
        op: &Operation,
        file: &ExportFile,
        (org, caller): (&OrgRef, &Caller),
        out: &mut Chunks<'_>,
    ) -> Result<bool> {
        let (store, settings) = (self.store, self.customers);
        let filter = CustomerFilter::parse(&file.params.filter, settings.region)
            .map_err(|v| Error::failed_precondition("INVALID_FILTER", v.description))?;
        let total = super::customers::count(store, settings, caller, &filter).await?;
        let mut done = 0;
        let mut after: Option<String> = None;
        loop {
            let page = list(
                store,
                settings,
                caller,
                Listing::by_creation(&filter, after.as_deref(), PAGE),
            )
            .await?;
            if file.kind == ExportKind::Customers {
                let metrics = metrics_of(store, org, &page.items).await?;
                for ((seen, access), (own, owners)) in page.items.iter().zip(&metrics) {
                    let line =
                        render::customer(file.format, seen, *access, (own, owners.as_ref()))?;
                    out.push(line, 1).await?;
                }
            } else {
                for (seen, _) in &page.items {
                    self.interactions_of(caller, &seen.customer.id, file.format, out)
                        .await?;
                }
            }
            done += page.items.len() as i64;
            if self.progress(op, done, total.max(done)).await? {
                return Ok(false);
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(true),
            }
        }
    }

    /// The interactions the caller sees of customer `id`, newest first.
    async fn interactions_of(
        &self,
        caller: &Caller,
        id: &str,
        format: ExportFormat,
        out: &mut Chunks<'_>,
    ) -> Result<()> {
        let parent = names::customer(id);
        let customer_id =
            <crate::domain::ids::CustomerId as crate::domain::ids::Id>::from_stored(id.to_owned());
        let filter = InteractionFilter::default();
        let mut after: Option<(i64, String)> = None;
        loop {
            let at = after.as_ref().map(|(t, i)| (*t, i.as_str()));
            let page = super::interactions::list(
                self.store,
                caller,
                (&customer_id, &parent),
                &filter,
                at,
                PAGE,
            )
            .await?;
            for i in &page.items {
                out.push(render::interaction(format, i)?, 1).await?;
            }
            let Some(next) = page.next_after else {
                return Ok(());
            };
            let cursor = next
                .split_once(':')
                .and_then(|(t, i)| Some((t.parse::<i64>().ok()?, i.to_owned())));
            match cursor {
                Some(c) => after = Some(c),
                None => return Ok(()),
            }
        }
    }

    /// The partnership's scorecards, period by period.
    async fn scorecards(
        &self,
        op: &Operation,
        file: &ExportFile,
        org: &OrgRef,
        out: &mut Chunks<'_>,
    ) -> Result<bool> {
        let p = &file.params;
        let bad = |what: &str| Error::failed_precondition("INVALID_EXPORT", what.to_owned());
        let period = Period::parse(&p.period).ok_or_else(|| bad("unknown period"))?;
        let first: Date = p.first_date.parse().map_err(|_| bad("bad first_date"))?;
        let last: Date = p.last_date.parse().map_err(|_| bad("bad last_date"))?;
        let dates = periods(period, first, last)?;
        let partnership = self
            .store
            .partnership(&org.id, &p.partnership_id)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "partnership {:?}",
                    names::partnership(&p.partnership_id)
                ))
            })?;
        let total = dates.len() as i64;
        for (n, date) in dates.into_iter().enumerate() {
            let now = self.store.clock().now();
            let card = super::scorecards::of_period(
                self.store,
                self.workflows,
                &partnership,
                (period, date),
                now,
            )
            .await?;
            let (bytes, records) = render::scorecard(file.format, &card)?;
            out.push(bytes, records).await?;
            if self.progress(op, n as i64 + 1, total).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Runs the export operations queued on any replica, one at a time, until the hub
/// stops.
pub async fn run(
    store: Store,
    customers: std::sync::Arc<CustomerSettings>,
    workflows: std::sync::Arc<Workflows>,
) {
    let verbs = ExportKind::ALL.map(ExportKind::verb);
    loop {
        let now = store.clock().now();
        match store.claim_operation(now, LEASE, &verbs).await {
            Ok(Some(op)) => {
                let exporter = Exporter {
                    store: &store,
                    customers: &customers,
                    workflows: &workflows,
                };
                exporter.run_one(&op).await;
                continue;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "failed to look for exports"),
        }
        let nap = std::time::Duration::from_secs(5);
        let _ = tokio::time::timeout(nap, store.operations_signal().notified()).await;
    }
}
