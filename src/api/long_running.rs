//! google.longrunning.Operations: the hub's background work, seen by the
//! organizations it concerns.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::mapping::mapping_any;
use super::{Hub, caller_of};
use crate::app::mapping as app;
use crate::domain::error::{Error, Result};
use crate::domain::export::ExportKind;
use crate::domain::mapping::{COMPARE_VERB, OperationState};
use crate::domain::{Scope, names};
use crate::feed::render::operation_to_pb;
use crate::google::longrunning::operations_server::Operations;
use crate::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest,
};
use crate::store::{Operation as Stored, Page};

/// The longest WaitOperation holds a call (and what it holds without a timeout).
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct OperationsApi {
    hub: Hub,
}

impl OperationsApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }

    /// `o` with its response: the mapping a comparison that succeeded produced.
    async fn render(&self, o: &Stored) -> Result<Operation> {
        let response = if o.state != OperationState::Succeeded {
            None
        } else if o.verb == COMPARE_VERB {
            self.hub
                .store
                .account_mapping(&o.target_id)
                .await?
                .map(|m| mapping_any(&m))
        } else if ExportKind::of_verb(&o.verb).is_some() {
            self.hub
                .store
                .export_file(&o.id)
                .await?
                .map(|f| export_any(&f))
        } else {
            None
        };
        Ok(operation_to_pb(o, response))
    }
}

fn operation_id(name: &str) -> Result<String> {
    Ok(names::parse_operation(name)
        .map_err(|v| v.under("name"))?
        .into_string())
}

fn done_filter(raw: &str) -> Result<Option<bool>> {
    let compact: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
    match compact.as_str() {
        "" => Ok(None),
        "done=true" => Ok(Some(true)),
        "done=false" => Ok(Some(false)),
        _ => Err(Error::invalid(
            "filter",
            "must be empty, `done = true` or `done = false`",
        )),
    }
}

#[tonic::async_trait]
impl Operations for OperationsApi {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let r = request.get_ref();
        if !r.name.is_empty() && r.name != "operations" {
            return Err(Error::invalid("name", "must be empty or `operations`").into());
        }
        let done = done_filter(&r.filter)?;
        let query = format!("operations:{:?}", done);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        let at = (page.after.as_deref(), page.size);
        let Page { items, next_after } =
            app::list_operations(&self.hub.store, &caller, done, at).await?;
        let mut operations = Vec::with_capacity(items.len());
        for o in &items {
            operations.push(self.render(o).await?);
        }
        Ok(Response::new(ListOperationsResponse {
            operations,
            next_page_token: page.next_token(next_after),
            ..Default::default()
        }))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let name = &request.get_ref().name;
        let id = operation_id(name)?;
        let o = app::operation(&self.hub.store, &caller, (&id, name)).await?;
        Ok(Response::new(self.render(&o).await?))
    }

    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let name = &request.get_ref().name;
        let id = operation_id(name)?;
        app::delete_operation(&self.hub.store, &caller, (&id, name)).await?;
        tracing::info!(operation = %name, "operation deleted");
        Ok(Response::new(()))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Write)?;
        let name = &request.get_ref().name;
        let id = operation_id(name)?;
        app::cancel_operation(&self.hub.store, &caller, &self.hub.mapping, (&id, name)).await?;
        tracing::info!(operation = %name, "operation cancellation asked for");
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Read)?;
        let r = request.get_ref();
        let id = operation_id(&r.name)?;
        let timeout = match &r.timeout {
            None => MAX_WAIT,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(Error::invalid("timeout", "must not be negative").into());
            }
            Some(d) => Duration::new(d.seconds as u64, d.nanos as u32).min(MAX_WAIT),
        };
        let o = app::wait_operation(&self.hub.store, &caller, (&id, &r.name), timeout).await?;
        Ok(Response::new(self.render(&o).await?))
    }
}

/// A finished export as an operation's response.
fn export_any(f: &crate::store::ExportFile) -> prost_types::Any {
    use prost::Message;
    let export = crate::pb::Export {
        name: names::operation(&f.operation_id),
        kind: f.kind.as_str().to_owned(),
        format: super::exports::format_to_pb(f.format) as i32,
        records: f.records,
        size_bytes: f.size_bytes,
        expire_time: f.expire_time.and_then(crate::feed::render::timestamp),
    };
    prost_types::Any {
        type_url: "type.googleapis.com/liaison.v1.Export".into(),
        value: export.encode_to_vec(),
    }
}
