//! The audit log from a shell: `liaison admin audit verify|checkpoint` against the
//! database, and `liaison audit keygen|export|verify` for the operator's key and for
//! partners and auditors checking an export offline.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};

use super::admin::{AdminAuditCommand, explain};
use super::operations::Remote;
use crate::app::audit::{self as app, AuditSettings};
use crate::domain::Slug;
use crate::domain::audit::{self, Chain, Checkpoint, Hash, Record, SigningKey};
use crate::pb;
use crate::pb::audit_service_client::AuditServiceClient;
use crate::store::Store;

/// `liaison audit …`: no database needed.
#[derive(Subcommand)]
pub(super) enum AuditCommand {
    /// Prints a new checkpoint signing key for `audit.signing_key`, and its public key
    /// (for auditors) on stderr.
    Keygen,
    /// Writes an organization's audit log (from `--start`) as JSON lines, one
    /// `ListAuditEntriesResponse` page each, for `liaison audit verify`.
    Export {
        /// The organization's slug.
        #[arg(long)]
        organization: String,
        /// The first position wanted.
        #[arg(long, default_value_t = 1)]
        start: i64,
        /// Where to write (stdout if absent).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        hub: Remote,
    },
    /// Verifies an export offline: the chain, and every checkpoint's signature with
    /// `--public-key`. Exits 1 naming the first bad entry.
    Verify {
        file: PathBuf,
        /// The hub's checkpoint public key (base64), as the operator gave it; repeat
        /// for keys it replaced. Without one, signatures are not checked.
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
        /// Fail unless the export is of this organization (its `organization_uid`,
        /// which every hash covers).
        #[arg(long)]
        organization_uid: Option<String>,
    },
}

/// A verified log in a line: entries, erasures, checkpoints, and how far they vouch.
fn describe(s: &audit::Summary, no_key: &str) -> String {
    let mut out = format!(
        "{} entries ({} erased), {} checkpoints verified",
        s.entries, s.erased, s.checkpoints
    );
    if s.unchecked_checkpoints > 0 {
        out.push_str(&format!(
            ", {} not checked ({no_key})",
            s.unchecked_checkpoints
        ));
    }
    if s.vouched_through > 0 {
        out.push_str(&format!("; signed through entry {}", s.vouched_through));
    }
    if s.unvouched_since.is_some() {
        out.push_str("; the entries after that are covered by the chain alone");
    }
    out
}

pub(super) async fn admin(
    store: &Store,
    settings: &AuditSettings,
    command: AdminAuditCommand,
) -> anyhow::Result<()> {
    match command {
        AdminAuditCommand::Checkpoint => {
            let Some(key) = &settings.signing_key else {
                bail!("audit.signing_key is not set (make one with `liaison audit keygen`)");
            };
            let n = app::sign_checkpoints(store, key).await?;
            println!("signed {n} checkpoints");
            Ok(())
        }
        AdminAuditCommand::Verify { organization } => {
            let only = organization
                .as_deref()
                .map(Slug::parse)
                .transpose()
                .map_err(|v| anyhow::anyhow!("--organization {}", v.description))?;
            if settings.trusted.is_empty() {
                eprintln!(
                    "note: no audit.signing_key or audit.trusted_public_keys: checkpoint \
                     signatures are not checked"
                );
            }
            let started = std::time::Instant::now();
            let verdicts = app::verify(store, &settings.trusted, only.as_ref()).await?;
            let mut bad = 0;
            let mut entries = 0;
            for v in &verdicts {
                match &v.outcome {
                    Ok(s) => {
                        entries += s.entries;
                        println!("ok\t{}\t{}", v.slug, describe(s, "no trusted key"));
                        // The hub signs every interval: an older unsigned tail means it
                        // has not run since, or its checkpoints were deleted.
                        let stale = jiff::Timestamp::now().as_microsecond()
                            - 2 * settings.checkpoint_interval.as_micros() as i64;
                        if settings.signing_key.is_some()
                            && s.unvouched_since.is_some_and(|t| t < stale)
                        {
                            println!(
                                "warning\t{}\tentries after {} are older than two checkpoint \
                                 intervals and unsigned: checkpoints deleted, or the hub has not \
                                 run since (then `liaison admin audit checkpoint`)",
                                v.slug, s.vouched_through
                            );
                        }
                    }
                    Err(fault) => {
                        bad += 1;
                        println!(
                            "BAD\t{}\tfirst bad entry {}: {fault}",
                            v.slug,
                            fault.position()
                        );
                    }
                }
            }
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "verified {} organizations, {entries} entries in {secs:.2} s ({:.0} entries/s)",
                verdicts.len(),
                entries as f64 / secs.max(1e-9)
            );
            if bad > 0 {
                bail!("{bad} of {} audit logs are not intact", verdicts.len());
            }
            Ok(())
        }
    }
}

pub(super) async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Keygen => {
            let key = SigningKey::generate();
            let public = SigningKey::parse(&key)
                .map_err(anyhow::Error::msg)?
                .public_key();
            eprintln!(
                "public key (give it to auditors): {}",
                audit::public_key_text(&public)
            );
            println!("{key}");
            Ok(())
        }
        AuditCommand::Export {
            organization,
            start,
            out,
            hub,
        } => export(&organization, start, out, &hub).await,
        AuditCommand::Verify {
            file,
            public_keys,
            organization_uid,
        } => {
            let trusted = public_keys
                .iter()
                .map(|k| {
                    audit::parse_public_key(k).map_err(|e| anyhow::anyhow!("--public-key {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let keys_given = !trusted.is_empty();
            let (org, first, last, summary) = verify_export(&file, trusted)?;
            if let Some(expected) = &organization_uid
                && *expected != org
            {
                bail!("the export is of organization {org}, not {expected}");
            }
            if keys_given && summary.checkpoints == 0 {
                bail!("no entry is vouched for by a checkpoint signed with the key given");
            }
            println!(
                "ok: organization {org}, entries {first} to {last}; {}",
                describe(&summary, "no --public-key")
            );
            Ok(())
        }
    }
}

fn descriptor() -> anyhow::Result<prost_reflect::MessageDescriptor> {
    DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)
        .context("the descriptor set compiled into the binary decodes")?
        .get_message_by_name("liaison.v1.ListAuditEntriesResponse")
        .context("liaison.v1.ListAuditEntriesResponse is in the descriptor set")
}

async fn export(
    organization: &str,
    start: i64,
    out: Option<PathBuf>,
    hub: &Remote,
) -> anyhow::Result<()> {
    let (channel, with_key) = hub.connect().await?;
    let mut client = AuditServiceClient::with_interceptor(channel, with_key);
    let mut sink: Box<dyn Write> = match &out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create_new(path)
                .with_context(|| format!("cannot create {} (it must not exist)", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let descriptor = descriptor()?;
    let mut page_token = String::new();
    let mut entries = 0;
    loop {
        let page = client
            .list_audit_entries(pb::ListAuditEntriesRequest {
                parent: format!("organizations/{organization}"),
                start_position: start,
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(explain)?
            .into_inner();
        entries += page.entries.len();
        let message = DynamicMessage::decode(descriptor.clone(), page.encode_to_vec().as_slice())?;
        serde_json::to_writer(&mut sink, &message)?;
        sink.write_all(b"\n")?;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    sink.flush()?;
    if out.is_some() {
        eprintln!("exported {entries} entries");
    }
    Ok(())
}

/// The id in a customer's resource name (as the hub hashed it).
fn customer_id(name: &str) -> String {
    name.strip_prefix("customers/").unwrap_or(name).to_owned()
}

fn time_micros(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref()
        .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
}

/// Checks an export written by `export`: returns its organization's id, its first and
/// last positions, and what the check found. Pages must follow each other with no
/// gap (the chain breaks otherwise), and a file that starts past entry 1 is checked
/// from the hash its first page gives, so only its checkpoints vouch for it.
fn verify_export(
    file: &PathBuf,
    trusted: Vec<Vec<u8>>,
) -> anyhow::Result<(String, i64, i64, audit::Summary)> {
    let descriptor = descriptor()?;
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    );
    let mut chain: Option<(String, Chain)> = None;
    let mut first = 0;
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let mut de = serde_json::Deserializer::from_str(&line);
        let page: pb::ListAuditEntriesResponse =
            DynamicMessage::deserialize(descriptor.clone(), &mut de)
                .with_context(|| format!("line {}: not a ListAuditEntriesResponse", n + 1))?
                .transcode_to()?;
        if let Some((org, _)) = &chain
            && *org != page.organization_uid
        {
            bail!("line {}: a page of another organization's log", n + 1);
        }
        let checkpoints: Vec<Checkpoint> = page
            .checkpoints
            .iter()
            .map(|c| Checkpoint {
                position: c.position,
                hash: c.hash.clone(),
                create_time: time_micros(&c.create_time),
                public_key: c.public_key.clone(),
                signature: c.signature.clone(),
            })
            .collect();
        let Some(start) = page.entries.first() else {
            continue;
        };
        let (_, chain) = match &mut chain {
            Some(c) => c,
            None => {
                let previous: Hash = page
                    .previous_hash
                    .as_slice()
                    .try_into()
                    .context("previous_hash is not 32 bytes")?;
                let org = page.organization_uid.clone();
                first = start.position;
                chain.insert((
                    org.clone(),
                    Chain::new(&org, (start.position, previous), vec![], trusted.clone()),
                ))
            }
        };
        chain.expect(checkpoints);
        for e in &page.entries {
            let record = Record {
                position: e.position,
                sequence: e.sequence,
                event_id: e.event_id.clone(),
                event_type: e.event_type.clone(),
                resource: e.resource.clone(),
                create_time: time_micros(&e.create_time),
                customer: customer_id(&e.customer),
                erases: e
                    .erases
                    .iter()
                    .map(|c| customer_id(c))
                    .collect::<Vec<_>>()
                    .join(" "),
                content: (!e.erased).then(|| e.content.clone()),
                salt: (!e.erased).then(|| e.salt.clone()),
                content_hash: e.content_hash.clone(),
                hash: e.hash.clone(),
            };
            if let Err(fault) = chain.check(&record) {
                bail!("first bad entry {}: {fault}", fault.position());
            }
        }
    }
    let Some((org, chain)) = chain else {
        bail!("{} holds no entries", file.display());
    };
    let last = chain.next_position() - 1;
    let summary = chain
        .finish(None)
        .map_err(|fault| anyhow::anyhow!("first bad entry {}: {fault}", fault.position()))?;
    Ok((org, first, last, summary))
}
