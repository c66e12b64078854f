//! AuditService: an organization's audit log, a page at a time, with what verifying
//! it offline needs.

use tonic::{Request, Response, Status};

use super::{Hub, caller_of};
use crate::app::audit as app;
use crate::domain::audit::Record;
use crate::domain::error::Error;
use crate::domain::{Scope, Slug, names};
use crate::feed::render::timestamp;
use crate::pb;
use crate::pb::audit_service_server::AuditService;

pub struct AuditApi {
    hub: Hub,
}

impl AuditApi {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

fn time(micros: i64) -> Option<prost_types::Timestamp> {
    jiff::Timestamp::from_microsecond(micros)
        .ok()
        .and_then(timestamp)
}

fn entry_to_pb(slug: &Slug, r: Record) -> pb::AuditEntry {
    pb::AuditEntry {
        name: format!("{}/auditEntries/{}", names::organization(slug), r.position),
        position: r.position,
        sequence: r.sequence,
        event_id: r.event_id,
        event_type: r.event_type,
        resource: r.resource,
        create_time: time(r.create_time),
        erased: r.content.is_none(),
        content: r.content.unwrap_or_default(),
        salt: r.salt.unwrap_or_default(),
        customer: if r.customer.is_empty() {
            String::new()
        } else {
            names::customer(&r.customer)
        },
        erases: r.erases.split_whitespace().map(names::customer).collect(),
        content_hash: r.content_hash,
        hash: r.hash,
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_entries(
        &self,
        request: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<pb::ListAuditEntriesResponse>, Status> {
        let caller = caller_of(&request)?;
        caller.require(Scope::Admin)?;
        let r = request.into_inner();
        let slug = names::parse_organization(&r.parent).map_err(|v| v.under("parent"))?;
        if r.start_position < 0 {
            return Err(Error::invalid("start_position", "must not be negative").into());
        }
        let query = format!("auditEntries:{}:{}", r.parent, r.start_position);
        let page = self
            .hub
            .pages
            .open(&caller, r.page_size, &r.page_token, &query)
            .await?;
        // The token holds where the next page starts.
        let first = match page.after.as_deref() {
            Some(after) => after
                .parse::<i64>()
                .map_err(|_| Error::invalid("page_token", "is not a token this API returned"))?,
            None => r.start_position.max(1),
        };
        let export = app::export(
            &self.hub.store,
            &caller,
            (&slug, &r.parent),
            first,
            page.size,
        )
        .await?;
        Ok(Response::new(pb::ListAuditEntriesResponse {
            entries: export
                .entries
                .into_iter()
                .map(|e| entry_to_pb(&slug, e))
                .collect(),
            checkpoints: export
                .checkpoints
                .into_iter()
                .map(|c| pb::AuditCheckpoint {
                    position: c.position,
                    hash: c.hash,
                    create_time: time(c.create_time),
                    public_key: c.public_key,
                    signature: c.signature,
                })
                .collect(),
            previous_hash: export.previous_hash,
            head_position: export.head,
            public_keys: self.hub.audit.trusted.clone(),
            next_page_token: page.next_token(export.next.map(|n| n.to_string())),
            organization_uid: export.organization_id,
        }))
    }
}
