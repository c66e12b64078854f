//! The audit log's use cases: signing checkpoints, verifying every organization's
//! chain, and exporting a range for an organization (or the operator) to verify
//! offline. The chain itself is appended by the store where events are numbered.

use std::sync::Arc;
use std::time::Duration;

use crate::config::AuditConfig;
use crate::domain::audit::{
    self, Chain, Checkpoint, Fault, GENESIS, Hash, Record, SigningKey, Summary,
};
use crate::domain::caller::Caller;
use crate::domain::error::{Error, Result};
use crate::domain::{Principal, Slug, now};
use crate::store::Store;

/// Entries read per statement while verifying.
const VERIFY_PAGE: usize = 5_000;

/// The checkpoint key and the keys verification trusts, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct AuditSettings {
    pub signing_key: Option<Arc<SigningKey>>,
    /// The public keys checkpoints may be signed with: the signing key's first, then
    /// those of keys it replaced.
    pub trusted: Vec<Vec<u8>>,
    pub checkpoint_interval: Duration,
}

impl AuditSettings {
    /// Reads `config` (validated at start, so a bad key here is a startup error).
    pub fn from_config(config: &AuditConfig) -> anyhow::Result<Self> {
        let signing_key = if config.signing_key.is_empty() {
            None
        } else {
            Some(Arc::new(
                SigningKey::parse(&config.signing_key)
                    .map_err(|e| anyhow::anyhow!("audit.signing_key {e}"))?,
            ))
        };
        let mut trusted: Vec<Vec<u8>> = signing_key.iter().map(|k| k.public_key()).collect();
        for (i, key) in config.trusted_public_keys.iter().enumerate() {
            trusted.push(
                audit::parse_public_key(key)
                    .map_err(|e| anyhow::anyhow!("audit.trusted_public_keys[{i}] {e}"))?,
            );
        }
        Ok(Self {
            signing_key,
            trusted,
            checkpoint_interval: Duration::from_secs(config.checkpoint_interval_secs.max(1)),
        })
    }
}

/// Signs the newest entry of every organization whose log grew since its last
/// checkpoint, once the entries since then are checked (a chain rebuilt meanwhile is
/// not signed: it is logged, as is any organization whose log could not be read, and
/// the others are signed all the same). Returns how many were signed.
pub async fn sign_checkpoints(store: &Store, key: &SigningKey) -> Result<usize> {
    let heads = store.unsigned_audit_heads().await?;
    let time = now().as_microsecond();
    let mut signed = vec![];
    for (org, position, _) in &heads {
        match checked_head(store, org, *position, &key.public_key()).await {
            Ok(Ok(hash)) => {
                let message = audit::checkpoint_message(org, *position, &hash, time);
                let checkpoint = Checkpoint {
                    position: *position,
                    hash: hash.to_vec(),
                    create_time: time,
                    public_key: key.public_key(),
                    signature: key.sign(&message),
                };
                signed.push((org.clone(), checkpoint));
            }
            Ok(Err(fault)) => tracing::error!(
                organization_id = %org,
                %fault,
                "not signing an audit log that does not verify; run `liaison admin audit verify`"
            ),
            Err(error) => {
                tracing::warn!(organization_id = %org, %error, "could not read an audit log to sign it")
            }
        }
    }
    store.insert_audit_checkpoints(&signed).await?;
    Ok(signed.len())
}

/// The hash of entry `head` of `organization_id`'s log, once the entries since its
/// last checkpoint are checked against it.
async fn checked_head(
    store: &Store,
    organization_id: &str,
    head: i64,
    public_key: &[u8],
) -> Result<std::result::Result<Hash, Fault>> {
    let last = store.last_audit_checkpoint(organization_id).await?;
    // The last checkpoint is where the check starts, so it must be the hub's own.
    if let Some(c) = &last {
        let hash: Hash = c.hash.as_slice().try_into().unwrap_or(GENESIS);
        let message = audit::checkpoint_message(organization_id, c.position, &hash, c.create_time);
        if c.public_key != public_key || !audit::signature_valid(public_key, &message, &c.signature)
        {
            return Ok(Err(Fault::Checkpoint {
                position: c.position,
                why: "not signed by this hub's key",
            }));
        }
    }
    let (first, previous) = match &last {
        Some(c) => (
            c.position + 1,
            c.hash.as_slice().try_into().unwrap_or(GENESIS),
        ),
        None => (1, GENESIS),
    };
    let mut chain = Chain::new(organization_id, (first, previous), vec![], vec![]);
    if let Err(fault) = walk(store, organization_id, (first, head), &mut chain).await? {
        return Ok(Err(fault));
    }
    if let Some(fault) = forged_erasure(store, &chain).await? {
        return Ok(Err(fault));
    }
    if chain.next_position() != head + 1 {
        return Ok(Err(Fault::Head {
            last: chain.next_position() - 1,
            head,
        }));
    }
    Ok(Ok(chain.last_hash()))
}

/// An erasure entry of `chain` naming a customer the hub did not erase.
async fn forged_erasure(store: &Store, chain: &Chain) -> Result<Option<Fault>> {
    let named: Vec<(&str, i64)> = chain.erased_customers().collect();
    if named.is_empty() {
        return Ok(None);
    }
    let ids: Vec<&str> = named.iter().map(|(c, _)| *c).collect();
    let not_erased = store.not_erased(&ids).await?;
    Ok(named
        .iter()
        .filter(|(c, _)| not_erased.iter().any(|n| n == c))
        .min_by_key(|(_, p)| *p)
        .map(|(customer, position)| Fault::Erasure {
            position: *position,
            customer: (*customer).to_owned(),
        }))
}

/// Feeds `chain` the entries at `first..=last`, a page at a time. (Reading the next
/// page while hashing this one was tried: slower on two cores with SQLite.)
async fn walk(
    store: &Store,
    organization_id: &str,
    (first, last): (i64, i64),
    chain: &mut Chain,
) -> Result<std::result::Result<(), Fault>> {
    let mut next = first;
    while next <= last {
        let page = store
            .audit_entries(organization_id, (next, last), VERIFY_PAGE)
            .await?;
        for record in &page {
            if let Err(fault) = chain.check(record) {
                return Ok(Err(fault));
            }
        }
        match page.last() {
            Some(r) if page.len() == VERIFY_PAGE => next = r.position + 1,
            _ => break,
        }
    }
    Ok(Ok(()))
}

/// Signs checkpoints every `settings.checkpoint_interval`, forever (nothing without a
/// signing key).
pub async fn run_checkpoints(store: Store, settings: Arc<AuditSettings>) {
    let Some(key) = settings.signing_key.clone() else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(settings.checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sign_checkpoints(&store, &key).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(organizations = n, "signed audit checkpoints"),
            Err(error) => tracing::warn!(%error, "failed to sign audit checkpoints"),
        }
    }
}

/// What verifying one organization's log found.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub slug: String,
    pub outcome: std::result::Result<Summary, Fault>,
}

/// Verifies the log of `only` (every organization's if `None`) against the
/// checkpoints and the head, trusting checkpoints signed with `trusted`.
pub async fn verify(
    store: &Store,
    trusted: &[Vec<u8>],
    only: Option<&Slug>,
) -> Result<Vec<Verdict>> {
    let mut orgs = store.audited_organizations().await?;
    if let Some(slug) = only {
        let org = store
            .organization(slug)
            .await?
            .ok_or_else(|| Error::NotFound(format!("organization {:?}", slug.as_str())))?;
        orgs.retain(|o| o.organization_id == org.id);
        if orgs.is_empty() {
            return Ok(vec![Verdict {
                slug: slug.to_string(),
                outcome: Ok(Summary::default()),
            }]);
        }
    }
    let mut verdicts = vec![];
    for org in orgs {
        let outcome = verify_one(
            store,
            &org.organization_id,
            (org.audit_position, RECHECKS),
            trusted,
        )
        .await?;
        verdicts.push(Verdict {
            slug: org.slug,
            outcome,
        });
    }
    Ok(verdicts)
}

/// How many times a log is checked again up to a newer head (written meanwhile)
/// before what it shows is taken as it is.
const RECHECKS: u32 = 3;

async fn verify_one(
    store: &Store,
    organization_id: &str,
    (head, rechecks): (i64, u32),
    trusted: &[Vec<u8>],
) -> Result<std::result::Result<Summary, Fault>> {
    // Entries up to the head as it was read: a hub that goes on writing meanwhile
    // appends past it, which is not tampering.
    let checkpoints = store
        .audit_checkpoints(organization_id, (1, i64::MAX))
        .await?;
    let mut chain = Chain::new(organization_id, (1, GENESIS), checkpoints, trusted.to_vec());
    if let Err(fault) = walk(store, organization_id, (1, head), &mut chain).await? {
        return Ok(Err(fault));
    }
    if let Some(fault) = forged_erasure(store, &chain).await? {
        return Ok(Err(fault));
    }
    let summary = match chain.finish(Some(head)) {
        Ok(summary) => summary,
        // An erasure entry or a checkpoint committed since the head was read lies past
        // it: check again up to what is stored now.
        Err(fault @ (Fault::Emptied { .. } | Fault::Missing { found: None, .. })) => {
            let stored = store.audit_last_position(organization_id).await?;
            if rechecks == 0 || stored <= head {
                return Ok(Err(fault));
            }
            return Box::pin(verify_one(
                store,
                organization_id,
                (stored, rechecks - 1),
                trusted,
            ))
            .await;
        }
        Err(fault) => return Ok(Err(fault)),
    };
    // Rows past the head: inserted. Read in this order, since a row and the head that
    // counts it commit together: a row read first is counted by a head read after.
    let stored = store.audit_last_position(organization_id).await?;
    let now_head = store.audit_head(organization_id).await?;
    if stored > now_head {
        return Ok(Err(Fault::Head {
            last: stored,
            head: now_head,
        }));
    }
    Ok(Ok(summary))
}

/// A range of an organization's log, as an export carries it.
#[derive(Debug, Clone)]
pub struct Export {
    pub entries: Vec<Record>,
    /// The checkpoints among `entries`.
    pub checkpoints: Vec<Checkpoint>,
    /// The hash of the entry before the first ([`GENESIS`] before entry 1).
    pub previous_hash: Vec<u8>,
    /// How many entries the log has now.
    pub head: i64,
    /// Where the next page starts, if the log goes on.
    pub next: Option<i64>,
    /// The organization's id, which every hash covers.
    pub organization_id: String,
}

/// Up to `size` entries of the log of organization `slug` (named `parent`) from
/// position `first`, for its own admin keys or the operator; NOT_FOUND for anyone else.
pub async fn export(
    store: &Store,
    caller: &Caller,
    (slug, parent): (&Slug, &str),
    first: i64,
    size: usize,
) -> Result<Export> {
    let org = store
        .organization(slug)
        .await?
        .filter(|o| match &caller.principal {
            Principal::Operator => true,
            Principal::Organization(me) => me.id == o.id,
        })
        .ok_or_else(|| Error::NotFound(format!("organization {parent:?}")))?;
    let first = first.max(1);
    let head = store.audit_head(&org.id).await?;
    let entries = store
        .audit_entries(&org.id, (first, i64::MAX), size)
        .await?;
    let previous_hash = if first == 1 {
        GENESIS.to_vec()
    } else {
        store
            .audit_entry_hash(&org.id, first - 1)
            .await?
            .unwrap_or_default()
    };
    let last = entries.last().map_or(first - 1, |e| e.position);
    let checkpoints = store.audit_checkpoints(&org.id, (first, last)).await?;
    // A full page may have more behind it, whatever the head said a moment before.
    let next = (entries.len() == size).then_some(last + 1);
    Ok(Export {
        entries,
        checkpoints,
        previous_hash,
        head,
        next,
        organization_id: org.id,
    })
}
