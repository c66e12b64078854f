//! `liaison scorecard`: a partnership's scorecards over a range of periods, as CSV,
//! one row per period and side, read from a running hub.

use std::io::Write;

use anyhow::{Context, bail};
use clap::ValueEnum;
use jiff::civil::Date;

use super::admin::explain;
use super::operations::Remote;
use crate::domain::scorecard::Period;
use crate::pb;
use crate::pb::partnership_service_client::PartnershipServiceClient;

/// Most periods one command asks for.
const MAX_PERIODS: usize = 1000;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum PeriodArg {
    Day,
    Week,
    Month,
    Quarter,
}

impl PeriodArg {
    fn period(self) -> Period {
        match self {
            PeriodArg::Day => Period::Day,
            PeriodArg::Week => Period::Week,
            PeriodArg::Month => Period::Month,
            PeriodArg::Quarter => Period::Quarter,
        }
    }

    fn pb(self) -> pb::ScorecardPeriod {
        match self {
            PeriodArg::Day => pb::ScorecardPeriod::Day,
            PeriodArg::Week => pb::ScorecardPeriod::Week,
            PeriodArg::Month => pb::ScorecardPeriod::Month,
            PeriodArg::Quarter => pb::ScorecardPeriod::Quarter,
        }
    }
}

const HEADER: &[&str] = &[
    "partnership",
    "period",
    "first_date",
    "last_date",
    "time_zone",
    "closed",
    "organization",
    "cases_received",
    "cases_resolved",
    "first_response_count",
    "first_response_median_s",
    "first_response_p90_s",
    "resolution_count",
    "resolution_median_s",
    "resolution_p90_s",
    "sla_met",
    "sla_breached",
    "sla_clocks",
    "tasks_overdue",
    "interactions_logged",
    "customers_shared",
    "access_requests_answered",
    "time_to_answer_median_s",
    "time_to_answer_p90_s",
    "webhook_attempts",
    "webhook_succeeded",
    "webhook_success_rate",
    "webhook_p95_latency_s",
    "deals_submitted",
    "deals_approved",
    "deals_won",
    "deals_lost",
];

fn seconds(d: &Option<prost_types::Duration>) -> String {
    d.as_ref().map_or(String::new(), |d| {
        format!("{:.3}", d.seconds as f64 + f64::from(d.nanos) / 1e9)
    })
}

/// The CSV fields of one side of `card`.
fn row(card: &pb::PartnershipScorecard, period: &str, p: &pb::PartyScorecard) -> Vec<String> {
    let summary = |s: &Option<pb::DurationSummary>| s.unwrap_or_default();
    let (first, resolution, answer, latency) = (
        summary(&p.first_response),
        summary(&p.resolution),
        summary(&p.time_to_answer),
        summary(&p.webhook_latency),
    );
    let clocks = p
        .sla_clocks
        .iter()
        .map(|c| format!("{}={}/{}", c.policy, c.met, c.breached))
        .collect::<Vec<_>>()
        .join(";");
    vec![
        card.partnership.clone(),
        period.to_owned(),
        card.first_date.clone(),
        card.last_date.clone(),
        card.time_zone.clone(),
        card.closed.to_string(),
        p.organization.clone(),
        p.cases_received.to_string(),
        p.cases_resolved.to_string(),
        first.count.to_string(),
        seconds(&first.median),
        seconds(&first.p90),
        resolution.count.to_string(),
        seconds(&resolution.median),
        seconds(&resolution.p90),
        p.sla_clocks.iter().map(|c| c.met).sum::<i64>().to_string(),
        p.sla_clocks
            .iter()
            .map(|c| c.breached)
            .sum::<i64>()
            .to_string(),
        clocks,
        p.tasks_overdue.to_string(),
        p.interactions_logged.to_string(),
        p.customers_shared.to_string(),
        p.access_requests_answered.to_string(),
        seconds(&answer.median),
        seconds(&answer.p90),
        p.webhook_attempts.to_string(),
        p.webhook_succeeded.to_string(),
        format!("{:.4}", p.webhook_success_rate),
        seconds(&latency.p95),
        p.deals_submitted.to_string(),
        p.deals_approved.to_string(),
        p.deals_won.to_string(),
        p.deals_lost.to_string(),
    ]
}

fn date(raw: &str, flag: &str) -> anyhow::Result<Date> {
    raw.parse()
        .with_context(|| format!("{flag} {raw:?} must be a date such as 2026-12-03"))
}

/// Prints the scorecards of `partnership` for every `period` from the one holding
/// `from` to the one holding `to` (both default to today in the partnership's zone).
pub(super) async fn run(
    partnership: String,
    period: PeriodArg,
    (from, to): (Option<String>, Option<String>),
    hub: Remote,
) -> anyhow::Result<()> {
    let (channel, with_key) = hub.connect().await?;
    let mut client = PartnershipServiceClient::with_interceptor(channel, with_key);
    let ask = |date: String| pb::GetPartnershipScorecardRequest {
        name: partnership.clone(),
        period: period.pb() as i32,
        date,
    };
    // Today in the partnership's zone, as the hub sees it.
    let today = client
        .get_partnership_scorecard(ask(String::new()))
        .await
        .map_err(explain)?
        .into_inner()
        .first_date;
    let from = date(from.as_deref().unwrap_or(&today), "--from")?;
    let to = date(to.as_deref().unwrap_or(&today), "--to")?;
    if to < from {
        bail!("--to {to} is before --from {from}");
    }
    let mut dates = vec![];
    let mut at = period.period().dates(from).0;
    while at <= to {
        if dates.len() == MAX_PERIODS {
            bail!("at most {MAX_PERIODS} periods at once; narrow --from and --to");
        }
        dates.push(at);
        let Some(next) = period.period().next(at) else {
            break;
        };
        at = next;
    }
    let mut out = csv::Writer::from_writer(std::io::stdout().lock());
    out.write_record(HEADER)?;
    let name = period.period().as_str();
    for d in dates {
        let card = client
            .get_partnership_scorecard(ask(d.to_string()))
            .await
            .map_err(explain)?
            .into_inner();
        for p in &card.parties {
            out.write_record(row(&card, name, p))?;
        }
    }
    out.flush()?;
    std::io::stdout().flush()?;
    Ok(())
}
