//! `liaison.v1.ExportService`: exports as long-running operations, and their files.

use std::pin::Pin;

use tonic::{Request, Response, Status};

use super::convert::{period_from_pb, report_date};
use super::write::idempotent;
use super::{Hub, caller_of};
use crate::app::exports as app;
use crate::domain::Scope;
use crate::domain::caller::Caller;
use crate::domain::error::{Error, Result, Violations};
use crate::domain::export::{ExportFormat, ExportKind, ExportParams};
use crate::domain::filter::CustomerFilter;
use crate::domain::names;
use crate::feed::render::operation_to_pb;
use crate::google::longrunning::Operation;
use crate::pb::{self, export_service_server::ExportService};

pub struct ExportApi {
    hub: Hub,
}

impl ExportApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

fn format_from_pb(raw: i32) -> std::result::Result<ExportFormat, String> {
    match pb::ExportFormat::try_from(raw) {
        Ok(pb::ExportFormat::Csv) => Ok(ExportFormat::Csv),
        Ok(pb::ExportFormat::JsonLines) => Ok(ExportFormat::JsonLines),
        Ok(pb::ExportFormat::Unspecified) => Err("is required: CSV or JSON_LINES".into()),
        Err(_) => Err(format!("{raw} is not a known format")),
    }
}

pub fn format_to_pb(f: ExportFormat) -> pb::ExportFormat {
    match f {
        ExportFormat::Csv => pb::ExportFormat::Csv,
        ExportFormat::JsonLines => pb::ExportFormat::JsonLines,
    }
}

impl ExportApi {
    /// Queues an export of `kind` for the caller; the answer is its operation.
    async fn start(
        &self,
        caller: &Caller,
        (kind, format): (ExportKind, ExportFormat),
        params: ExportParams,
        request: &impl super::write::Retryable,
    ) -> Result<Operation> {
        let now = self.hub.store.clock().now();
        let op = idempotent(&self.hub, caller, request, async |tx| {
            let op = app::start(tx, caller, (kind, format), &params, now).await?;
            Ok(operation_to_pb(&op, None))
        })
        .await?;
        tracing::info!(operation = %op.name, kind = kind.as_str(), "export queued");
        Ok(op)
    }

    /// The customer filter and format of an export of customers or interactions.
    fn customers_request(
        &self,
        (filter_field, filter): (&str, &str),
        format: i32,
    ) -> Result<(ExportFormat, ExportParams)> {
        let mut v = Violations::new();
        if let Err(mut violation) = CustomerFilter::parse(filter, self.hub.customers.region) {
            // The filter's own violation, under this request's name for it.
            violation.field = filter_field.to_owned();
            v.push(violation);
        }
        let format = match format_from_pb(format) {
            Ok(f) => Some(f),
            Err(m) => {
                v.add("format", m);
                None
            }
        };
        let Some(format) = format else {
            return Err(v.into_error());
        };
        v.finish()?;
        let params = ExportParams {
            filter: filter.to_owned(),
            ..Default::default()
        };
        Ok((format, params))
    }
}

type ChunkStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ExportService for ExportApi {
    async fn export_customers(
        &self,
        request: Request<pb::ExportCustomersRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let r = request.into_inner();
        let (format, params) = self.customers_request(("filter", &r.filter), r.format)?;
        let op = self
            .start(&caller, (ExportKind::Customers, format), params, &r)
            .await?;
        Ok(Response::new(op))
    }

    async fn export_interactions(
        &self,
        request: Request<pb::ExportInteractionsRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let r = request.into_inner();
        let (format, params) =
            self.customers_request(("customer_filter", &r.customer_filter), r.format)?;
        let op = self
            .start(&caller, (ExportKind::Interactions, format), params, &r)
            .await?;
        Ok(Response::new(op))
    }

    async fn export_scorecards(
        &self,
        request: Request<pb::ExportScorecardsRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let r = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("partnership", names::parse_partnership(&r.partnership));
        let period = match period_from_pb(r.period) {
            Ok(p) => Some(p),
            Err(m) => {
                v.add("period", m);
                None
            }
        };
        let format = match format_from_pb(r.format) {
            Ok(f) => Some(f),
            Err(m) => {
                v.add("format", m);
                None
            }
        };
        let first = v.check("first_date", report_date(&r.first_date));
        let last = v.check("last_date", report_date(&r.last_date));
        let (Some(id), Some(period), Some(format), Some(first), Some(last)) =
            (id, period, format, first, last)
        else {
            return Err(v.into_error().into());
        };
        v.finish()?;
        app::periods(period, first, last)?;
        // A partnership the caller is no party to is NOT_FOUND, as for GetPartnership.
        crate::app::partnerships::get(&self.hub.store, &caller, &id, &r.partnership).await?;
        let params = ExportParams {
            partnership_id: id.as_str().to_owned(),
            period: period.as_str().to_owned(),
            first_date: first.to_string(),
            last_date: last.to_string(),
            ..Default::default()
        };
        let op = self
            .start(&caller, (ExportKind::Scorecards, format), params, &r)
            .await?;
        Ok(Response::new(op))
    }

    type ReadExportStream = ChunkStream;

    async fn read_export(
        &self,
        request: Request<pb::ReadExportRequest>,
    ) -> Result<Response<Self::ReadExportStream>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        caller.organization()?;
        let name = request.into_inner().name;
        let id = names::parse_operation(&name)
            .map_err(|v| v.under("name"))?
            .into_string();
        let file = app::finished(&self.hub.store, &caller, (&id, &name)).await?;
        let store = self.hub.store.clone();
        let size = file.size_bytes;
        // (next chunk, bytes sent); a file that loses chunks while it is read (its
        // expiry came) ends in NOT_FOUND, never as a shorter file.
        let chunks = futures_util::stream::unfold(Some((0i64, 0i64)), move |at| {
            let (store, id, name) = (store.clone(), file.operation_id.clone(), name.clone());
            async move {
                let (seq, sent) = at?;
                match store.export_chunk(&id, seq).await {
                    Ok(Some(data)) => {
                        let sent = sent + data.len() as i64;
                        Some((Ok(pb::ExportChunk { data }), Some((seq + 1, sent))))
                    }
                    Ok(None) if sent == size => None,
                    Ok(None) => {
                        let gone = Error::NotFound(format!("export {name:?} (it expired)"));
                        Some((Err(Status::from(gone)), None))
                    }
                    Err(e) => Some((Err(Status::from(e)), None)),
                }
            }
        });
        Ok(Response::new(Box::pin(chunks) as ChunkStream))
    }
}
