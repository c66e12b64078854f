//! `liaison export`: starts an export on a running hub, follows it with a progress
//! bar (on a terminal) and writes its file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};

use super::admin::explain;
use super::operations::{Remote, follow};
use crate::google::longrunning::operation::Result as Outcome;
use crate::google::longrunning::operations_client::OperationsClient;
use crate::pb;
use crate::pb::export_service_client::ExportServiceClient;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum FormatArg {
    Csv,
    Jsonl,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum PeriodArg {
    Day,
    Week,
    Month,
    Quarter,
}

/// What to export.
#[derive(Subcommand)]
pub(super) enum ExportCommand {
    /// The customers the key's organization sees, as ListCustomers shows them.
    Customers {
        /// A ListCustomers filter, e.g. `tag = vip`.
        #[arg(long, default_value = "")]
        filter: String,
        #[command(flatten)]
        out: Output,
    },
    /// The interactions it sees on the customers it sees.
    Interactions {
        /// A ListCustomers filter choosing whose interactions.
        #[arg(long, default_value = "")]
        customer_filter: String,
        #[command(flatten)]
        out: Output,
    },
    /// A partnership's scorecards, one CSV row per period and side.
    Scorecards {
        /// `partnerships/{partnership}`.
        partnership: String,
        #[arg(long, value_enum, default_value = "month")]
        period: PeriodArg,
        /// The first period: the one holding this local date.
        #[arg(long)]
        from: String,
        /// The last period: the one holding this local date [default: --from].
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        out: Output,
    },
}

/// Where the file goes, in which format, from which hub.
#[derive(clap::Args)]
pub(super) struct Output {
    #[arg(long, value_enum, default_value = "csv")]
    format: FormatArg,
    /// The file to write; `-` (the default) writes to standard output.
    #[arg(long, default_value = "-")]
    out: PathBuf,
    #[command(flatten)]
    hub: Remote,
}

fn format_pb(f: FormatArg) -> i32 {
    match f {
        FormatArg::Csv => pb::ExportFormat::Csv as i32,
        FormatArg::Jsonl => pb::ExportFormat::JsonLines as i32,
    }
}

fn period_pb(p: PeriodArg) -> i32 {
    (match p {
        PeriodArg::Day => pb::ScorecardPeriod::Day,
        PeriodArg::Week => pb::ScorecardPeriod::Week,
        PeriodArg::Month => pb::ScorecardPeriod::Month,
        PeriodArg::Quarter => pb::ScorecardPeriod::Quarter,
    }) as i32
}

pub(super) async fn run(command: ExportCommand) -> anyhow::Result<()> {
    let out = match &command {
        ExportCommand::Customers { out, .. }
        | ExportCommand::Interactions { out, .. }
        | ExportCommand::Scorecards { out, .. } => out,
    };
    let (channel, with_key) = out.hub.connect().await?;
    let mut exports = ExportServiceClient::with_interceptor(channel.clone(), with_key.clone());
    let format = format_pb(out.format);
    let started = match &command {
        ExportCommand::Customers { filter, .. } => {
            exports
                .export_customers(pb::ExportCustomersRequest {
                    filter: filter.clone(),
                    format,
                    request_id: String::new(),
                })
                .await
        }
        ExportCommand::Interactions {
            customer_filter, ..
        } => {
            exports
                .export_interactions(pb::ExportInteractionsRequest {
                    customer_filter: customer_filter.clone(),
                    format,
                    request_id: String::new(),
                })
                .await
        }
        ExportCommand::Scorecards {
            partnership,
            period,
            from,
            to,
            ..
        } => {
            exports
                .export_scorecards(pb::ExportScorecardsRequest {
                    partnership: partnership.clone(),
                    period: period_pb(*period),
                    first_date: from.clone(),
                    last_date: to.clone().unwrap_or_else(|| from.clone()),
                    format,
                    request_id: String::new(),
                })
                .await
        }
    }
    .map_err(explain)?
    .into_inner();
    let mut operations = OperationsClient::with_interceptor(channel, with_key);
    let done = follow(&mut operations, &started.name).await?;
    match done.result {
        Some(Outcome::Response(_)) => {}
        Some(Outcome::Error(e)) => bail!("{}: {}", started.name, e.message),
        None => bail!("{} ended without an outcome", started.name),
    }
    let mut stream = exports
        .read_export(pb::ReadExportRequest {
            name: started.name.clone(),
        })
        .await
        .map_err(explain)?
        .into_inner();
    let mut sink: Box<dyn Write> = if out.out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&out.out)
                .with_context(|| format!("cannot create {}", out.out.display()))?,
        )
    };
    let mut bytes = 0usize;
    while let Some(chunk) = stream.message().await.map_err(explain)? {
        bytes += chunk.data.len();
        sink.write_all(&chunk.data)?;
    }
    sink.flush()?;
    if out.out.as_os_str() != "-" {
        eprintln!(
            "{}: {bytes} bytes written to {}",
            started.name,
            out.out.display()
        );
    }
    Ok(())
}
