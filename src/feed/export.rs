//! Export files: records as JSON lines (the protobuf JSON mapping, as webhooks carry
//! them) or CSV (a header row; one column per top-level field, lists of values joined
//! by "; ", nested messages as JSON). Scorecards flatten to one CSV row per period and
//! side.

use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};

use super::json::message_descriptor;
use super::render::{customer_to_pb, interaction_to_pb, metrics_to_pb, scorecard_to_pb};
use crate::domain::error::Result;
use crate::domain::export::ExportFormat;
use crate::domain::interaction::Interaction;
use crate::domain::metrics::CustomerMetrics;
use crate::domain::scorecard::Scorecard;
use crate::domain::visibility::Access;
use crate::store::SeenCustomer;

/// `m` (a message named `name`) as a JSON value; CSV keeps default values, JSON
/// lines leave them out as the mapping does.
fn json_of(name: &'static str, m: &impl Message, defaults: bool) -> Result<serde_json::Value> {
    let dynamic = DynamicMessage::decode(message_descriptor(name), m.encode_to_vec().as_slice())
        .map_err(|e| anyhow::anyhow!("{name} does not decode: {e}"))?;
    let options = SerializeOptions::new().skip_default_fields(!defaults);
    let value = dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| anyhow::anyhow!("{name} to JSON: {e}"))?;
    Ok(value)
}

/// The CSV header of records of message `name`: its fields' JSON names, in order.
fn columns(name: &'static str) -> Vec<String> {
    message_descriptor(name)
        .fields()
        .map(|f| f.json_name().to_owned())
        .collect()
}

/// Text a spreadsheet would run as a formula (`=`, `@`, a tab or carriage return
/// first, or `+`/`-` before anything but a number) gets a leading `'` in CSV, as
/// OWASP advises; numbers and phone numbers stay as they are.
fn neutral(s: &str) -> String {
    let numeric = |rest: &str| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_digit() || " .()-".contains(c))
    };
    match s.chars().next() {
        Some('=' | '@' | '\t' | '\r') => format!("'{s}"),
        Some('+' | '-') if !numeric(&s[1..]) => format!("'{s}"),
        _ => s.to_owned(),
    }
}

fn cell(v: Option<&serde_json::Value>) -> String {
    use serde_json::Value;
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => neutral(s),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(items)) if items.iter().all(|i| !i.is_object() && !i.is_array()) => items
            .iter()
            .map(|i| cell(Some(i)))
            .collect::<Vec<_>>()
            .join("; "),
        Some(other) => other.to_string(),
    }
}

fn csv_line(fields: &[String]) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new().from_writer(vec![]);
    w.write_record(fields)
        .map_err(|e| anyhow::anyhow!("CSV: {e}"))?;
    Ok(w.into_inner().map_err(|e| anyhow::anyhow!("CSV: {e}"))?)
}

/// One record of message `name` in `format`.
fn record(format: ExportFormat, name: &'static str, m: &impl Message) -> Result<Vec<u8>> {
    match format {
        ExportFormat::JsonLines => {
            let mut line = serde_json::to_vec(&json_of(name, m, false)?)
                .map_err(|e| anyhow::anyhow!("JSON: {e}"))?;
            line.push(b'\n');
            Ok(line)
        }
        ExportFormat::Csv => {
            let value = json_of(name, m, true)?;
            let row: Vec<String> = columns(name).iter().map(|c| cell(value.get(c))).collect();
            csv_line(&row)
        }
    }
}

const CUSTOMER: &str = "liaison.v1.Customer";
const INTERACTION: &str = "liaison.v1.Interaction";
const SCORECARD: &str = "liaison.v1.PartnershipScorecard";

/// The first bytes of a file of `kind` records in `format` (a CSV header; nothing for
/// JSON lines).
pub fn header(format: ExportFormat, kind: crate::domain::export::ExportKind) -> Result<Vec<u8>> {
    use crate::domain::export::ExportKind;
    if format == ExportFormat::JsonLines {
        return Ok(vec![]);
    }
    match kind {
        ExportKind::Customers => csv_line(&columns(CUSTOMER)),
        ExportKind::Interactions => csv_line(&columns(INTERACTION)),
        ExportKind::Scorecards => csv_line(&SCORECARD_COLUMNS.map(str::to_owned)),
    }
}

/// A customer as the caller's ListCustomers shows it (masked fields absent), with
/// its metrics.
pub fn customer(
    format: ExportFormat,
    seen: &SeenCustomer,
    access: Access,
    (own, owners): (&CustomerMetrics, Option<&CustomerMetrics>),
) -> Result<Vec<u8>> {
    let mut c = customer_to_pb(seen, access);
    c.metrics = Some(metrics_to_pb(own));
    c.owner_metrics = owners.map(metrics_to_pb);
    record(format, CUSTOMER, &c)
}

pub fn interaction(format: ExportFormat, i: &Interaction) -> Result<Vec<u8>> {
    record(format, INTERACTION, &interaction_to_pb(i))
}

const SCORECARD_COLUMNS: [&str; 33] = [
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
    "customers_visible",
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

/// A scorecard: one CSV row per side, or one JSON line.
pub fn scorecard(format: ExportFormat, s: &Scorecard) -> Result<(Vec<u8>, i64)> {
    let card = scorecard_to_pb(s);
    if format == ExportFormat::JsonLines {
        return Ok((record(format, SCORECARD, &card)?, 1));
    }
    let period = s.period.as_str();
    let mut out = vec![];
    for p in &card.parties {
        let (first, resolution, answer, latency) = (
            p.first_response.unwrap_or_default(),
            p.resolution.unwrap_or_default(),
            p.time_to_answer.unwrap_or_default(),
            p.webhook_latency.unwrap_or_default(),
        );
        let clocks = p
            .sla_clocks
            .iter()
            .map(|c| format!("{}={}/{}", c.policy, c.met, c.breached))
            .collect::<Vec<_>>()
            .join("; ");
        let row = [
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
            p.customers_visible.map_or(String::new(), |n| n.to_string()),
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
        ];
        out.extend(csv_line(&row)?);
    }
    Ok((out, card.parties.len() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralised_and_numbers_kept() {
        assert_eq!(neutral("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(neutral("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(neutral("+cmd|' /C calc'!A0"), "'+cmd|' /C calc'!A0");
        assert_eq!(neutral("-2+3"), "'-2+3");
        assert_eq!(neutral("+16502530000"), "+16502530000");
        assert_eq!(neutral("-12.5"), "-12.5");
        assert_eq!(neutral("Grace"), "Grace");
        assert_eq!(cell(Some(&serde_json::json!(["a", "=b"]))), "a; '=b");
    }
}
