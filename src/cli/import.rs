//! `liaison import`: loads customers from a CSV or JSON-lines file into a running hub
//! through `BatchUpsertCustomers`, keyed by the caller's external ids.
//!
//! CSV columns (a header row is required; unknown columns are refused):
//! `external_id`, `kind` (`person`/`company`), `given_name`, `family_name`,
//! `legal_name`, `email` and `phone` (several separated by `;`, the first primary),
//! `tags` (separated by `;`), `address_line1`, `address_line2`, `locality`, `region`,
//! `postal_code`, `country_code`, and `attr.<key>` for attributes.
//!
//! A JSON line holds the same keys, with `email`, `phone` and `tags` as strings or
//! arrays and `attributes` as an object.
//!
//! Each batch is one transaction; its `request_id` is derived from its content, so
//! running the same import again after an interruption replays the batches that
//! landed (reporting their first counts) instead of writing them twice. Within the
//! hub's 7-day request-id retention, a changed file is a new set of batches.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::time::Instant;

use anyhow::{Context, bail};
use prost::Message;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::pb::{self, customer_service_client::CustomerServiceClient};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    /// From the file name: `.jsonl`/`.ndjson` are JSON lines, anything else CSV.
    pub fn guess(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson") => Self::Jsonl,
            _ => Self::Csv,
        }
    }
}

/// One source row: its line number and the customer it describes.
pub type Row = (u64, pb::Customer);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => split_list(&s),
            Self::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct JsonRow {
    external_id: String,
    kind: String,
    given_name: String,
    family_name: String,
    legal_name: String,
    email: Option<OneOrMany>,
    phone: Option<OneOrMany>,
    tags: Option<OneOrMany>,
    address_line1: String,
    address_line2: String,
    locality: String,
    region: String,
    postal_code: String,
    country_code: String,
    attributes: HashMap<String, String>,
}

fn split_list(raw: &str) -> Vec<String> {
    raw.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn kind(raw: &str) -> anyhow::Result<i32> {
    Ok(match raw.trim().to_ascii_lowercase().as_str() {
        "person" | "" => pb::CustomerKind::Person,
        "company" => pb::CustomerKind::Company,
        other => bail!("kind must be person or company, not {other:?}"),
    } as i32)
}

fn customer(row: JsonRow) -> anyhow::Result<pb::Customer> {
    let emails = row.email.map(OneOrMany::into_vec).unwrap_or_default();
    let phones = row.phone.map(OneOrMany::into_vec).unwrap_or_default();
    let lines: Vec<String> = [row.address_line1, row.address_line2]
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    let has_address = !lines.is_empty()
        || !row.locality.is_empty()
        || !row.postal_code.is_empty()
        || !row.country_code.is_empty();
    Ok(pb::Customer {
        kind: kind(&row.kind)?,
        external_id: row.external_id,
        given_name: row.given_name,
        family_name: row.family_name,
        legal_name: row.legal_name,
        emails: emails
            .into_iter()
            .enumerate()
            .map(|(i, address)| pb::EmailContact {
                address,
                label: String::new(),
                primary: i == 0,
            })
            .collect(),
        phones: phones
            .into_iter()
            .enumerate()
            .map(|(i, number)| pb::PhoneContact {
                number,
                label: String::new(),
                primary: i == 0,
            })
            .collect(),
        tags: row.tags.map(OneOrMany::into_vec).unwrap_or_default(),
        addresses: if has_address {
            vec![pb::PostalAddress {
                label: String::new(),
                lines,
                locality: row.locality,
                region: row.region,
                postal_code: row.postal_code,
                country_code: row.country_code,
            }]
        } else {
            vec![]
        },
        attributes: row.attributes,
        ..Default::default()
    })
}

/// Reads CSV rows; errors name the line.
pub fn read_csv(input: impl Read) -> impl Iterator<Item = anyhow::Result<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = reader.headers().cloned();
    let mut records = reader.into_records();
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let headers = match &headers {
            Ok(h) => h,
            Err(e) => {
                failed = true;
                return Some(Err(anyhow::anyhow!("cannot read the CSV header: {e}")));
            }
        };
        let record = records.next()?;
        let result = (|| {
            let record = record.context("malformed CSV")?;
            let line = record.position().map_or(0, |p| p.line());
            let mut row = JsonRow::default();
            for (name, value) in headers.iter().zip(record.iter()) {
                let value = value.to_owned();
                match name {
                    "external_id" => row.external_id = value,
                    "kind" => row.kind = value,
                    "given_name" => row.given_name = value,
                    "family_name" => row.family_name = value,
                    "legal_name" => row.legal_name = value,
                    "email" => row.email = Some(OneOrMany::One(value)),
                    "phone" => row.phone = Some(OneOrMany::One(value)),
                    "tags" => row.tags = Some(OneOrMany::One(value)),
                    "address_line1" => row.address_line1 = value,
                    "address_line2" => row.address_line2 = value,
                    "locality" => row.locality = value,
                    "region" => row.region = value,
                    "postal_code" => row.postal_code = value,
                    "country_code" => row.country_code = value,
                    other => match other.strip_prefix("attr.") {
                        Some(key) if !value.is_empty() => {
                            row.attributes.insert(key.to_owned(), value);
                        }
                        Some(_) => {}
                        None => bail!("unknown column {other:?}"),
                    },
                }
            }
            Ok((line, customer(row).with_context(|| format!("line {line}"))?))
        })();
        failed = result.is_err();
        Some(result)
    })
}

/// Reads JSON lines (blank lines are skipped); errors name the line.
pub fn read_jsonl(input: impl BufRead) -> impl Iterator<Item = anyhow::Result<Row>> {
    input
        .lines()
        .enumerate()
        .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|(i, line)| {
            let n = i as u64 + 1;
            let line = line.with_context(|| format!("cannot read line {n}"))?;
            let row: JsonRow =
                serde_json::from_str(&line).with_context(|| format!("line {n} is not valid"))?;
            Ok((n, customer(row).with_context(|| format!("line {n}"))?))
        })
}

/// The `request_id` of a batch: derived from its content.
fn request_id(batch: &[pb::Customer]) -> String {
    let mut hash = Sha256::new();
    for c in batch {
        hash.update(c.encode_to_vec());
    }
    let digest = hash.finalize();
    format!(
        "import-{}",
        digest[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Totals of an import.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub rows: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
}

/// A progress line on stderr, redrawn at most ten times a second.
struct Progress {
    total_bytes: u64,
    start: Instant,
    last: Option<Instant>,
    enabled: bool,
}

impl Progress {
    fn draw(&mut self, bytes: u64, rows: u64, force: bool) {
        if !self.enabled || (!force && self.last.is_some_and(|t| t.elapsed().as_millis() < 100)) {
            return;
        }
        self.last = Some(Instant::now());
        let fraction = if self.total_bytes == 0 {
            1.0
        } else {
            (bytes as f64 / self.total_bytes as f64).min(1.0)
        };
        let rate = rows as f64 / self.start.elapsed().as_secs_f64().max(0.001);
        eprint!("\r{}  {rows} rows  {rate:.0} rows/s ", super::bar(fraction));
        let _ = std::io::stderr().flush();
    }
}

/// Counts bytes read through it, for progress.
struct Counting<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

pub struct ImportOptions {
    pub server: String,
    pub key: String,
    pub path: std::path::PathBuf,
    pub format: Format,
    pub batch_size: usize,
    pub progress: bool,
}

/// Runs an import; stops at the first bad row or refused batch, saying which line.
pub async fn run(options: ImportOptions) -> anyhow::Result<Totals> {
    if !(1..=crate::app::customers::MAX_BATCH).contains(&options.batch_size) {
        bail!(
            "--batch-size must be between 1 and {}",
            crate::app::customers::MAX_BATCH
        );
    }
    let file = std::fs::File::open(&options.path)
        .with_context(|| format!("cannot open {}", options.path.display()))?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let input = std::io::BufReader::new(Counting {
        inner: file,
        read: read.clone(),
    });
    let rows: Box<dyn Iterator<Item = anyhow::Result<Row>>> = match options.format {
        Format::Csv => Box::new(read_csv(input)),
        Format::Jsonl => Box::new(read_jsonl(input)),
    };
    let (url, endpoint) = super::hub_endpoint(&options.server)?;
    let channel = super::connect_hub(&url, endpoint).await?;
    let key = format!("Bearer {}", options.key);
    let key: tonic::metadata::MetadataValue<_> = key.parse().context("the API key is not valid")?;
    let mut client =
        CustomerServiceClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", key.clone());
            Ok(r)
        });
    let mut progress = Progress {
        total_bytes,
        start: Instant::now(),
        last: None,
        enabled: options.progress,
    };
    let mut totals = Totals::default();
    let mut batch: Vec<pb::Customer> = vec![];
    let mut lines: Vec<u64> = vec![];
    let mut rows = rows.peekable();
    while rows.peek().is_some() || !batch.is_empty() {
        if let Some(row) = rows.next() {
            let (line, customer) = row?;
            batch.push(customer);
            lines.push(line);
            if batch.len() < options.batch_size && rows.peek().is_some() {
                continue;
            }
        }
        let request = pb::BatchUpsertCustomersRequest {
            request_id: request_id(&batch),
            customers: std::mem::take(&mut batch),
        };
        let response = client
            .batch_upsert_customers(request)
            .await
            .map_err(|status| explain(status, &lines))?
            .into_inner();
        totals.rows += lines.len() as u64;
        totals.created += response.created_count as u64;
        totals.updated += response.updated_count as u64;
        totals.unchanged += response.unchanged_count as u64;
        lines.clear();
        progress.draw(
            read.load(std::sync::atomic::Ordering::Relaxed),
            totals.rows,
            false,
        );
    }
    progress.draw(total_bytes, totals.rows, true);
    if options.progress {
        eprintln!();
    }
    Ok(totals)
}

/// Turns a refused batch into a message naming source lines instead of batch indexes.
fn explain(status: tonic::Status, lines: &[u64]) -> anyhow::Error {
    use tonic_types::StatusExt;
    let first = lines.first().copied().unwrap_or(0);
    let last = lines.last().copied().unwrap_or(0);
    let mut message = format!(
        "the batch of lines {first}-{last} was refused ({:?}): {}",
        status.code(),
        status.message()
    );
    if let Some(bad) = status.get_details_bad_request() {
        for v in bad.field_violations {
            let line = v
                .field
                .strip_prefix("customers[")
                .and_then(|rest| rest.split_once(']'))
                .and_then(|(i, field)| {
                    let i: usize = i.parse().ok()?;
                    Some((lines.get(i)?, field.trim_start_matches('.').to_owned()))
                });
            match line {
                Some((line, field)) => {
                    message.push_str(&format!("\n  line {line}: {field}: {}", v.description))
                }
                None => message.push_str(&format!("\n  {}: {}", v.field, v.description)),
            }
        }
    }
    anyhow::anyhow!(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_customers() {
        let csv = "external_id,kind,given_name,family_name,email,phone,tags,postal_code,country_code,attr.tier\n\
                   C-1,person,Jane,Doe,jane@a.example;j@b.example,+4930901820,vip;gold,10115,DE,gold\n\
                   C-2,company,,,,,,,,\n";
        let rows: Vec<Row> = read_csv(csv.as_bytes())
            .collect::<anyhow::Result<_>>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        let (line, jane) = &rows[0];
        assert_eq!(*line, 2);
        assert_eq!(jane.external_id, "C-1");
        assert_eq!(jane.emails.len(), 2);
        assert!(jane.emails[0].primary && !jane.emails[1].primary);
        assert_eq!(jane.tags, vec!["vip", "gold"]);
        assert_eq!(jane.addresses[0].postal_code, "10115");
        assert_eq!(jane.attributes["tier"], "gold");
        assert_eq!(rows[1].1.kind, pb::CustomerKind::Company as i32);
        assert!(rows[1].1.addresses.is_empty());
    }

    #[test]
    fn bad_rows_name_their_line() {
        let err = read_csv("external_id,shoe_size\nX,42\n".as_bytes())
            .next()
            .unwrap()
            .unwrap_err();
        assert!(format!("{err:#}").contains("shoe_size"), "{err:#}");
        let err = read_csv("external_id,kind\nX,robot\n".as_bytes())
            .next()
            .unwrap()
            .unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }

    #[test]
    fn json_lines_take_strings_or_arrays() {
        let input = "{\"external_id\":\"J-1\",\"given_name\":\"Jo\",\"email\":[\"a@b.example\"],\"tags\":\"x;y\"}\n\n\
                     {\"external_id\":\"J-2\",\"kind\":\"company\",\"legal_name\":\"Co\",\"attributes\":{\"k\":\"v\"}}\n";
        let rows: Vec<Row> = read_jsonl(input.as_bytes())
            .collect::<anyhow::Result<_>>()
            .unwrap();
        assert_eq!(rows[0].1.tags, vec!["x", "y"]);
        assert_eq!(rows[0].1.emails[0].address, "a@b.example");
        assert_eq!(rows[1].0, 3);
        assert_eq!(rows[1].1.attributes["k"], "v");
        assert!(
            read_jsonl("{\"nope\":1}".as_bytes())
                .next()
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn batch_ids_follow_content() {
        let a = vec![pb::Customer {
            external_id: "1".into(),
            ..Default::default()
        }];
        let b = vec![pb::Customer {
            external_id: "2".into(),
            ..Default::default()
        }];
        assert_eq!(request_id(&a), request_id(&a.clone()));
        assert_ne!(request_id(&a), request_id(&b));
    }
}
