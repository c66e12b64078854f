//! `liaison operations`: follow the hub's long-running operations (a mapping's
//! comparison) from a shell.

use std::io::{IsTerminal, Write};

use anyhow::{Context, bail};
use clap::Subcommand;
use prost::Message;
use tonic::transport::Channel;

use super::admin::explain;
use crate::google::longrunning::operation::Result as Outcome;
use crate::google::longrunning::operations_client::OperationsClient;
use crate::google::longrunning::{GetOperationRequest, Operation, WaitOperationRequest};
use crate::pb;

#[derive(Subcommand)]
pub(super) enum OperationsCommand {
    /// Waits for an operation to finish, with a progress bar on a terminal; exits 0
    /// if it succeeded, 1 if it failed or was cancelled.
    Wait {
        /// `operations/{operation}`.
        name: String,
        #[command(flatten)]
        hub: Remote,
    },
    /// Prints an operation in the protobuf JSON mapping: its progress (`metadata`), and
    /// its outcome once done.
    Get {
        /// `operations/{operation}`.
        name: String,
        #[command(flatten)]
        hub: Remote,
    },
}

/// Which hub to ask, as whom.
#[derive(clap::Args)]
pub(super) struct Remote {
    /// The hub's address: `host:port` (plain HTTP/2) or a URL (`https://…` for TLS).
    #[arg(long, env = "LIAISON_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// An API key of an organization the operation concerns (read scope).
    #[arg(long, env = "LIAISON_API_KEY", hide_env_values = true)]
    key: String,
}

/// What an operation's metadata says of its progress.
fn progress(op: &Operation) -> Option<pb::OperationMetadata> {
    let any = op.metadata.as_ref()?;
    pb::OperationMetadata::decode(any.value.as_slice()).ok()
}

/// One line about `op`: `operations/… compare_accounts accountMappings/…: 40/100`.
fn describe(op: &Operation) -> String {
    let m = progress(op).unwrap_or_default();
    let state = match &op.result {
        None => "running".to_owned(),
        Some(Outcome::Response(_)) => "done".to_owned(),
        Some(Outcome::Error(e)) => format!("failed ({}): {}", tonic::Code::from(e.code), e.message),
    };
    format!(
        "{} {} {}: {}/{} records, {state}",
        op.name, m.verb, m.target, m.done, m.total
    )
}

/// `op` in the protobuf JSON mapping, its `Any` fields expanded by their types.
fn as_json(op: &Operation) -> anyhow::Result<String> {
    use prost_reflect::{DescriptorPool, DynamicMessage};
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
        .context("the descriptor set compiled into the binary decodes")?;
    let descriptor = pool
        .get_message_by_name("google.longrunning.Operation")
        .context("google.longrunning.Operation is in the descriptor set")?;
    let message = DynamicMessage::decode(descriptor, op.encode_to_vec().as_slice())?;
    Ok(serde_json::to_string_pretty(&message)?)
}

impl Remote {
    /// A channel to the hub and an interceptor that sends the key with every call.
    pub(super) async fn connect(
        &self,
    ) -> anyhow::Result<(
        Channel,
        impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone + use<>,
    )> {
        let (url, endpoint) = super::hub_endpoint(&self.server)?;
        let channel = super::connect_hub(&url, endpoint).await?;
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {}", self.key)
            .parse()
            .context("the API key is not valid")?;
        Ok((channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        }))
    }
}

pub(super) async fn run(command: OperationsCommand) -> anyhow::Result<()> {
    let (OperationsCommand::Wait { hub, .. } | OperationsCommand::Get { hub, .. }) = &command;
    let (channel, with_key) = hub.connect().await?;
    let mut client = OperationsClient::with_interceptor(channel, with_key);
    match command {
        OperationsCommand::Get { name, .. } => {
            let op = client
                .get_operation(GetOperationRequest { name })
                .await
                .map_err(explain)?
                .into_inner();
            println!("{}", as_json(&op)?);
            Ok(())
        }
        OperationsCommand::Wait { name, .. } => {
            let op = follow(&mut client, &name).await?;
            println!("{}", describe(&op));
            match op.result {
                Some(Outcome::Response(_)) => Ok(()),
                Some(Outcome::Error(e)) => bail!("{}: {}", name, e.message),
                None => bail!("{name} ended without an outcome"),
            }
        }
    }
}

/// Waits for operation `name` to be done, drawing its progress on a terminal.
pub(super) async fn follow<F: tonic::service::Interceptor>(
    client: &mut OperationsClient<tonic::service::interceptor::InterceptedService<Channel, F>>,
    name: &str,
) -> anyhow::Result<Operation> {
    let drawing = std::io::stderr().is_terminal();
    let op = loop {
        let op = client
            .wait_operation(WaitOperationRequest {
                name: name.to_owned(),
                timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            })
            .await
            .map_err(explain)?
            .into_inner();
        if drawing {
            let m = progress(&op).unwrap_or_default();
            let fraction = if m.total == 0 {
                0.0
            } else {
                m.done as f64 / m.total as f64
            };
            eprint!(
                "\r{}  {}/{} records ",
                super::bar(fraction),
                m.done,
                m.total
            );
            let _ = std::io::stderr().flush();
        }
        if op.done {
            break op;
        }
    };
    if drawing {
        eprintln!();
    }
    Ok(op)
}
