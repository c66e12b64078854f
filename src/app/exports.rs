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
use crate::store::{ExportFile, InteractionFilter, Operation, Store, Tx, interaction_cursor};

/// A worker holds an export this long without a word before another may take it.
const LEASE: SignedDuration = SignedDuration::from_mins(10);
/// A worker renews its lease at least this often while it writes.
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// Exports of one organization queued or running at once.
pub const MAX_UNFINISHED: i64 = 5;
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
    if tx.unfinished_exports(&org.id).await? >= MAX_UNFINISHED {
        return Err(Error::ResourceExhausted {
            reason: "TOO_MANY_EXPORTS",
            message: format!(
                "{MAX_UNFINISHED} exports of this organization are queued or running; \
                 wait for one to finish"
            ),
        });
    }
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
    let ended = store.operation(id).await?.map(|o| o.state);
    if matches!(
        ended,
        Some(OperationState::Failed | OperationState::Cancelled)
    ) {
        return Err(Error::failed_precondition(
            "EXPORT_FAILED",
            format!("{name} did not succeed; its operation says why"),
        ));
    }
    match file.expire_time {
        None => Err(Error::failed_precondition(
            "EXPORT_NOT_DONE",
            format!("{name} has not finished; wait for its operation to be done"),
        )),
        Some(t) if t <= store.clock().now() => Err(missing()),
        Some(_) => Ok(file),
    }
}

/// The worker's hold on an export's operation: progress recorded, and the lease
/// renewed, at least every [`RENEW_EVERY`].
struct Lease<'a> {
    op: &'a Operation,
    renewed: std::time::Instant,
}

impl Lease<'_> {
    /// Records progress (when `now` is set, or the last word is old); `Err` asks the
    /// worker to stop if the operation was cancelled or is no longer running.
    async fn progress(&mut self, store: &Store, done: i64, total: i64, now: bool) -> Result<bool> {
        if !now && self.renewed.elapsed() < RENEW_EVERY {
            return Ok(false);
        }
        self.renewed = std::time::Instant::now();
        let at = store.clock().now();
        store
            .operation_progress(&self.op.id, (done, total), at, LEASE)
            .await
    }
}

/// What the operations worker needs to run exports.
pub struct Exporter<'a> {
    pub store: &'a Store,
    pub customers: &'a CustomerSettings,
    pub workflows: &'a Workflows,
}

/// Writes a file in chunks of [`CHUNK_BYTES`] (the last may be shorter), counting
/// its records, for the worker holding `token`.
struct Chunks<'a> {
    store: &'a Store,
    id: &'a str,
    token: &'a str,
    seq: i64,
    buf: Vec<u8>,
    records: i64,
}

/// Another worker took the export over: this one stops without a word.
fn overtaken() -> Error {
    Error::failed_precondition("EXPORT_TAKEN_OVER", "another worker took the export over")
}

impl Chunks<'_> {
    async fn push(&mut self, bytes: Vec<u8>, records: i64) -> Result<()> {
        self.buf.extend(bytes);
        self.records += records;
        while self.buf.len() >= CHUNK_BYTES {
            let rest = self.buf.split_off(CHUNK_BYTES);
            self.write().await?;
            self.buf = rest;
        }
        Ok(())
    }

    /// Writes what is buffered (the file's end).
    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() && self.records == 0 {
            return Ok(());
        }
        self.write().await?;
        self.buf.clear();
        Ok(())
    }

    /// Writes the buffer's first chunk; the records counted so far go with it.
    async fn write(&mut self) -> Result<()> {
        let held = self
            .store
            .append_export_chunk((self.id, self.token), self.seq, &self.buf, self.records)
            .await?;
        if !held {
            return Err(overtaken());
        }
        self.seq += 1;
        self.records = 0;
        Ok(())
    }
}

impl Exporter<'_> {
    /// Runs export operation `op` to its end and records the end.
    pub async fn run_one(&self, op: &Operation) {
        let token = uuid::Uuid::new_v4().to_string();
        let outcome = self.write(op, &token).await;
        let now = self.store.clock().now();
        let (state, error) = match &outcome {
            Ok(true) => (OperationState::Succeeded, None),
            Ok(false) => (
                OperationState::Cancelled,
                Some((tonic_code::CANCELLED, "cancelled".to_owned())),
            ),
            Err(Error::FailedPrecondition {
                reason: "EXPORT_TAKEN_OVER",
                ..
            }) => {
                tracing::info!(operation = %op.id, "another worker took the export over");
                return;
            }
            Err(Error::NotFound(m)) | Err(Error::FailedPrecondition { message: m, .. }) => (
                OperationState::Failed,
                Some((tonic_code::FAILED_PRECONDITION, m.clone())),
            ),
            Err(e @ Error::InvalidArgument(_)) => (
                OperationState::Failed,
                Some((tonic_code::INVALID_ARGUMENT, e.to_string())),
            ),
            Err(
                Error::Unavailable(_)
                | Error::DatabaseUnavailable { .. }
                | Error::Contention { .. }
                | Error::DeadlineExceeded(_),
            ) => (
                OperationState::Failed,
                Some((
                    tonic_code::UNAVAILABLE,
                    "the hub was busy; start the export again".to_owned(),
                )),
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
            // A file that did not succeed is dropped now (the sweep forgets it).
            let keep = state == OperationState::Succeeded;
            let expire = if keep {
                now.checked_add(RETENTION).unwrap_or(now)
            } else {
                now
            };
            if !tx.end_export((&op.id, &token), expire, keep).await? {
                return Ok(());
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

    /// Writes the file of `op` as the worker holding `token`; false if it was
    /// cancelled.
    async fn write(&self, op: &Operation, token: &str) -> Result<bool> {
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
        // A worker taking over starts the file again, and the one before it stops.
        store.restart_export(&op.id, token).await?;
        let mut out = Chunks {
            store,
            id: &op.id,
            token,
            seq: 0,
            buf: render::header(file.format, file.kind)?,
            records: 0,
        };
        let mut lease = Lease {
            op,
            renewed: std::time::Instant::now(),
        };
        let done = match file.kind {
            ExportKind::Customers | ExportKind::Interactions => {
                self.customers_of(&file, (&org, &caller), &mut out, &mut lease)
                    .await?
            }
            ExportKind::Scorecards => self.scorecards(&file, &org, &mut out, &mut lease).await?,
        };
        if let Some(n) = done {
            out.flush().await?;
            // Done: the total is what was written (the count was an estimate).
            lease.progress(store, n, n, true).await?;
        }
        Ok(done.is_some())
    }

    /// The customers the caller sees (or their interactions), page by page; how many
    /// customers, or `None` if cancelled.
    async fn customers_of(
        &self,
        file: &ExportFile,
        (org, caller): (&OrgRef, &Caller),
        out: &mut Chunks<'_>,
        lease: &mut Lease<'_>,
    ) -> Result<Option<i64>> {
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
                for (n, (seen, _)) in page.items.iter().enumerate() {
                    self.interactions_of(caller, &seen.customer.id, file.format, out)
                        .await?;
                    let at = done + n as i64;
                    if lease.progress(store, at, total.max(at), false).await? {
                        return Ok(None);
                    }
                }
            }
            done += page.items.len() as i64;
            if lease.progress(store, done, total.max(done), true).await? {
                return Ok(None);
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(Some(done)),
            }
        }
    }

    /// The interactions the caller sees of customer `id`, newest first; none if the
    /// caller no longer sees the customer (a grant revoked meanwhile).
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
            let found = super::interactions::list(
                self.store,
                caller,
                (&customer_id, &parent),
                &filter,
                at,
                PAGE,
            )
            .await;
            let page = match found {
                Ok(page) => page,
                Err(Error::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            for i in &page.items {
                out.push(render::interaction(format, i)?, 1).await?;
            }
            let Some(next) = page.next_after else {
                return Ok(());
            };
            match interaction_cursor(&next) {
                Some(c) => after = Some(c),
                None => return Ok(()),
            }
        }
    }

    /// The partnership's scorecards, period by period; how many, or `None` if
    /// cancelled.
    async fn scorecards(
        &self,
        file: &ExportFile,
        org: &OrgRef,
        out: &mut Chunks<'_>,
        lease: &mut Lease<'_>,
    ) -> Result<Option<i64>> {
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
            if lease
                .progress(self.store, n as i64 + 1, total, false)
                .await?
            {
                return Ok(None);
            }
        }
        Ok(Some(total))
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
        let _ = tokio::time::timeout(nap, store.exports_signal().notified()).await;
    }
}
