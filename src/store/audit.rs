//! The audit log's rows: entries appended where events are numbered, checkpoints,
//! and the reads that verify and export them.
//!
//! Appending happens in [`Tx::append_audit`], called by the numbering step for each
//! organization whose feed it bumps: on SQLite inside the writer's transaction, on
//! PostgreSQL inside the sequencer's batch. Either way one writer at a time holds the
//! organization's head (`event_feeds.audit_position`, `audit_hash`), so the chain needs
//! no lock of its own.

use sqlx::FromRow;

use super::{NewEvent, Store, Tx, placeholders};
use crate::domain::audit::{self, Checkpoint, GENESIS, Hash, Header, Record, SALT_BYTES};
use crate::domain::error::{Error, Result};
use crate::domain::event::EventType;

/// Entries per multi-row INSERT (11 parameters each, under SQLite's 32,766).
const INSERT_CHUNK: usize = 500;

/// An organization's head: how many entries it has and the last one's hash.
#[derive(Debug, Clone, Default)]
pub struct AuditHead {
    pub position: i64,
    pub hash: Option<Vec<u8>>,
}

impl AuditHead {
    /// The head's hash. A damaged one (tampering) is logged and the chain goes on from
    /// the genesis hash, for verification to name: numbering the feeds must not stop.
    fn hash(&self) -> Result<Hash> {
        match &self.hash {
            None => Ok(GENESIS),
            Some(h) => Ok(h.as_slice().try_into().unwrap_or_else(|_| {
                tracing::error!(
                    position = self.position,
                    "an audit head's hash is damaged: the log was tampered with; \
                     run `liaison admin audit verify`"
                );
                GENESIS
            })),
        }
    }
}

/// One organization's part of a numbering batch: its head, and its events with their
/// sequences and stored bodies, in feed order.
pub(in crate::store) type Chain<'a> = (&'a str, AuditHead, Vec<(&'a NewEvent, i64, &'a [u8])>);

/// An entry on its way into the log.
struct Appended<'a> {
    organization_id: String,
    position: i64,
    sequence: i64,
    event_id: String,
    event_type: &'static str,
    resource: String,
    create_time: i64,
    customer_id: Option<String>,
    erases: Option<String>,
    /// With its salt; `None` when its customer is already erased.
    content: Option<(&'a [u8], [u8; SALT_BYTES])>,
    content_hash: Hash,
    hash: Hash,
}

impl Appended<'_> {
    /// Hashes an entry following `previous` (`content` `None`: stored empty).
    fn seal(mut self, content: &[u8], previous: &Hash) -> Result<Self> {
        let mut salt = [0u8; SALT_BYTES];
        getrandom::fill(&mut salt)
            .map_err(|e| Error::Internal(anyhow::anyhow!("no randomness: {e}")))?;
        self.content_hash = audit::content_hash(&salt, content);
        if let Some((_, s)) = &mut self.content {
            *s = salt;
        }
        let header = Header {
            organization_id: &self.organization_id,
            position: self.position,
            sequence: self.sequence,
            event_id: &self.event_id,
            event_type: self.event_type,
            resource: &self.resource,
            create_time: self.create_time,
            customer: self.customer_id.as_deref().unwrap_or(""),
            erases: self.erases.as_deref().unwrap_or(""),
        };
        self.hash = audit::entry_hash(&header, &self.content_hash, previous);
        Ok(self)
    }
}

#[derive(FromRow)]
struct EntryRow {
    position: i64,
    sequence: i64,
    event_id: String,
    r#type: String,
    resource: String,
    create_time: i64,
    customer_id: Option<String>,
    erases: Option<String>,
    content: Option<Vec<u8>>,
    salt: Option<Vec<u8>>,
    content_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl From<EntryRow> for Record {
    fn from(r: EntryRow) -> Self {
        Record {
            position: r.position,
            sequence: r.sequence,
            event_id: r.event_id,
            event_type: r.r#type,
            resource: r.resource,
            create_time: r.create_time,
            customer: r.customer_id.unwrap_or_default(),
            erases: r.erases.unwrap_or_default(),
            content: r.content,
            salt: r.salt,
            content_hash: r.content_hash,
            hash: r.hash,
        }
    }
}

#[derive(FromRow)]
struct CheckpointRow {
    position: i64,
    hash: Vec<u8>,
    create_time: i64,
    public_key: Vec<u8>,
    signature: Vec<u8>,
}

impl From<CheckpointRow> for Checkpoint {
    fn from(r: CheckpointRow) -> Self {
        Checkpoint {
            position: r.position,
            hash: r.hash,
            create_time: r.create_time,
            public_key: r.public_key,
            signature: r.signature,
        }
    }
}

/// An organization with an audit log, as verification walks them.
#[derive(Debug, Clone, FromRow)]
pub struct AuditedOrganization {
    pub organization_id: String,
    pub slug: String,
    pub audit_position: i64,
}

impl Tx {
    /// Appends the audited events of `chains` (per organization: its head, and its
    /// events with their sequences and stored bodies, in feed order) to each
    /// organization's log and moves the heads. An erasure in the batch empties every
    /// entry about its customer (and those merged into it), in every organization's
    /// log; an entry about a customer erased before is appended empty.
    pub(in crate::store) async fn append_audit(&mut self, chains: &[Chain<'_>]) -> Result<()> {
        let events: Vec<&NewEvent> = chains
            .iter()
            .flat_map(|(_, _, events)| events.iter().map(|(e, _, _)| *e))
            .filter(|e| audit::audited(e.event_type))
            .collect();
        let mut about: Vec<&str> = events
            .iter()
            .filter_map(|e| e.customer_id.as_deref())
            .collect();
        about.sort_unstable();
        about.dedup();
        // On PostgreSQL an event about a customer may be numbered in a batch after the
        // one that erased it (writers of other rows do not wait for the erasure); on
        // SQLite each transaction numbers its own events, after every earlier commit,
        // and none can write about an erased customer.
        let gone = if self.dialect == super::Dialect::Postgres {
            self.erased_among(&about).await?
        } else {
            vec![]
        };
        let mut erased_now: Vec<&str> = events
            .iter()
            .filter(|e| e.event_type == EventType::CustomerErased)
            .filter_map(|e| e.customer_id.as_deref())
            .collect();
        erased_now.sort_unstable();
        erased_now.dedup();
        // Per erasure: the customer and those merged into it, and who holds entries
        // about which of them (every such log gets an erasure entry naming them).
        let mut erasures: Vec<(&str, Vec<String>)> = vec![];
        for customer in &erased_now {
            let mut erased = vec![(*customer).to_owned()];
            erased.extend(self.merged_into(customer).await?);
            erasures.push((customer, erased));
        }
        let mut holders: Vec<(String, String)> = vec![];
        for (_, erased) in &erasures {
            holders.extend(self.holders_of(erased).await?);
        }
        // What an organization's erasure entry for `customer` names: what it knew of.
        let named = |org: &str, customer: &str| -> String {
            let mut ids: Vec<&str> = vec![customer];
            if let Some((_, all)) = erasures.iter().find(|(c, _)| *c == customer) {
                ids.extend(
                    all.iter()
                        .skip(1)
                        .map(String::as_str)
                        .filter(|id| holders.iter().any(|(o, c)| o == org && c == id)),
                );
            }
            ids.join(" ")
        };
        let mut rows: Vec<Appended<'_>> = vec![];
        let mut heads: Vec<(String, i64, Hash)> = vec![];
        // The erasures each organization's log records in this batch.
        let mut recorded: Vec<(String, &str)> = vec![];
        for (org, head, events) in chains {
            let mut position = head.position;
            let mut previous = head.hash()?;
            for (event, sequence, content) in events {
                if !audit::audited(event.event_type) {
                    continue;
                }
                position += 1;
                let customer_id = event.customer_id.as_deref();
                let erasure = event.event_type == EventType::CustomerErased;
                let erases = customer_id.filter(|_| erasure).map(|c| {
                    recorded.push(((*org).to_owned(), c));
                    named(org, c)
                });
                let kept = erasure || customer_id.is_none_or(|c| !gone.iter().any(|g| g == c));
                let row = Appended {
                    organization_id: (*org).to_owned(),
                    position,
                    sequence: *sequence,
                    event_id: event.id.clone(),
                    event_type: event.event_type.as_str(),
                    resource: event.resource.clone(),
                    create_time: super::micros(event.create_time),
                    customer_id: customer_id.map(str::to_owned),
                    erases,
                    content: kept.then_some((*content, [0; SALT_BYTES])),
                    content_hash: GENESIS,
                    hash: GENESIS,
                }
                .seal(content, &previous)?;
                previous = row.hash;
                rows.push(row);
            }
            if position > head.position {
                heads.push(((*org).to_owned(), position, previous));
            }
        }
        // Organizations holding entries about an erased customer that were not told of
        // the erasure (they no longer see the customer): an entry of the log alone (no
        // feed sequence) records it, so emptying their entries is accounted for.
        let now = super::micros(crate::domain::now());
        for (customer, _) in &erasures {
            let mut orgs: Vec<&str> = holders
                .iter()
                .filter(|(o, c)| {
                    erasures
                        .iter()
                        .any(|(x, all)| x == customer && all.contains(c))
                        && !recorded.iter().any(|(r, x)| r == o && x == customer)
                })
                .map(|(o, _)| o.as_str())
                .collect();
            orgs.sort_unstable();
            orgs.dedup();
            for org in orgs {
                let (position, previous) = match heads.iter().find(|(o, _, _)| o == org) {
                    Some((_, p, h)) => (*p, *h),
                    None => {
                        let head = self.audit_head_in_tx(org).await?;
                        (head.position, head.hash()?)
                    }
                };
                let known: Vec<&str> = holders
                    .iter()
                    .filter(|(o, c)| {
                        o == org
                            && erasures
                                .iter()
                                .any(|(x, all)| x == customer && all.contains(c))
                    })
                    .map(|(_, c)| c.as_str())
                    .collect();
                let first = known.first().copied().unwrap_or(customer);
                let row = Appended {
                    organization_id: org.to_owned(),
                    position: position + 1,
                    sequence: 0,
                    event_id: uuid::Uuid::now_v7().to_string(),
                    event_type: EventType::CustomerErased.as_str(),
                    resource: crate::domain::names::customer(first),
                    create_time: now,
                    customer_id: Some(first.to_owned()),
                    erases: Some(known.join(" ")),
                    content: Some((&[], [0; SALT_BYTES])),
                    content_hash: GENESIS,
                    hash: GENESIS,
                }
                .seal(&[], &previous)?;
                heads.retain(|(o, _, _)| o != org);
                heads.push((org.to_owned(), row.position, row.hash));
                rows.push(row);
            }
        }
        self.insert_entries(&rows).await?;
        // One statement for every head the batch moved.
        if !heads.is_empty() {
            let values: Vec<String> = (0..heads.len())
                .map(|i| format!("({})", placeholders(i * 3 + 1, 3)))
                .collect();
            let sql = format!(
                "WITH h (organization_id, position, hash) AS (VALUES {}) \
                 UPDATE event_feeds SET \
                 audit_position = (SELECT h.position FROM h \
                 WHERE h.organization_id = event_feeds.organization_id), \
                 audit_hash = (SELECT h.hash FROM h \
                 WHERE h.organization_id = event_feeds.organization_id) \
                 WHERE organization_id IN (SELECT organization_id FROM h)",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (org, position, hash) in &heads {
                query = query.bind(org).bind(*position).bind(hash.as_slice());
            }
            query.execute(self.conn()).await?;
        }
        for (_, erased) in &erasures {
            let sql = format!(
                "UPDATE audit_entries SET content = NULL, salt = NULL \
                 WHERE customer_id IN ({}) AND content IS NOT NULL AND type <> 'customer.erased'",
                placeholders(1, erased.len())
            );
            let mut query = sqlx::query(&sql);
            for customer in erased {
                query = query.bind(customer);
            }
            query.execute(self.conn()).await?;
        }
        Ok(())
    }

    /// Which organizations hold entries about which of `customers`.
    async fn holders_of(&mut self, customers: &[String]) -> Result<Vec<(String, String)>> {
        let sql = format!(
            "SELECT organization_id, customer_id FROM audit_entries WHERE customer_id IN ({}) \
             GROUP BY organization_id, customer_id",
            placeholders(1, customers.len())
        );
        let mut query = sqlx::query_as::<_, (String, String)>(&sql);
        for c in customers {
            query = query.bind(c);
        }
        Ok(query.fetch_all(self.conn()).await?)
    }

    /// `organization_id`'s head, read inside the numbering transaction.
    async fn audit_head_in_tx(&mut self, organization_id: &str) -> Result<AuditHead> {
        let row: Option<(i64, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT audit_position, audit_hash FROM event_feeds WHERE organization_id = $1",
        )
        .bind(organization_id)
        .fetch_optional(self.conn())
        .await?;
        Ok(
            row.map_or_else(AuditHead::default, |(position, hash)| AuditHead {
                position,
                hash,
            }),
        )
    }

    /// Writes `rows`, many a statement. A position already taken means the log was
    /// tampered with (its head moved back): the rows are dropped and the damage logged,
    /// for verification to name; the feeds go on being numbered.
    async fn insert_entries(&mut self, rows: &[Appended<'_>]) -> Result<()> {
        for chunk in rows.chunks(INSERT_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * 13 + 1, 13)))
                .collect();
            let sql = format!(
                "INSERT INTO audit_entries (organization_id, position, sequence, event_id, type, \
                 resource, customer_id, erases, create_time, content, salt, content_hash, hash) \
                 VALUES {} ON CONFLICT (organization_id, position) DO NOTHING",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for r in chunk {
                let (content, salt) = match &r.content {
                    Some((content, salt)) => (Some(*content), Some(salt.as_slice())),
                    None => (None, None),
                };
                query = query
                    .bind(&r.organization_id)
                    .bind(r.position)
                    .bind(r.sequence)
                    .bind(&r.event_id)
                    .bind(r.event_type)
                    .bind(&r.resource)
                    .bind(r.customer_id.as_deref())
                    .bind(r.erases.as_deref())
                    .bind(r.create_time)
                    .bind(content)
                    .bind(salt)
                    .bind(r.content_hash.as_slice())
                    .bind(r.hash.as_slice());
            }
            let done = query.execute(self.conn()).await?.rows_affected();
            if done < chunk.len() as u64 {
                let mut orgs: Vec<&str> =
                    chunk.iter().map(|r| r.organization_id.as_str()).collect();
                orgs.sort_unstable();
                orgs.dedup();
                tracing::error!(
                    organizations = ?orgs,
                    dropped = chunk.len() as u64 - done,
                    "audit entries found their positions taken: an audit log was tampered \
                     with; run `liaison admin audit verify`"
                );
            }
        }
        Ok(())
    }

    /// Which of `customers` are erased.
    async fn erased_among(&mut self, customers: &[&str]) -> Result<Vec<String>> {
        let mut out = vec![];
        for chunk in customers.chunks(INSERT_CHUNK) {
            let sql = format!(
                "SELECT id FROM customers WHERE state = 'erased' AND id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query_as::<_, (String,)>(&sql);
            for c in chunk {
                query = query.bind(*c);
            }
            out.extend(query.fetch_all(self.conn()).await?.into_iter().map(|r| r.0));
        }
        Ok(out)
    }

    /// The customers merged into `customer`.
    async fn merged_into(&mut self, customer: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM customers WHERE merged_into = $1")
                .bind(customer)
                .fetch_all(self.conn())
                .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

impl Store {
    /// Every organization with a log, by slug: also those whose head says none but
    /// which have entries or checkpoints, so a head reset to nothing hides no log.
    pub async fn audited_organizations(&self) -> Result<Vec<AuditedOrganization>> {
        Ok(sqlx::query_as(
            "SELECT o.id AS organization_id, o.slug, COALESCE(f.audit_position, 0) AS audit_position \
             FROM organizations o LEFT JOIN event_feeds f ON f.organization_id = o.id \
             WHERE f.audit_position > 0 \
             OR EXISTS (SELECT 1 FROM audit_entries e WHERE e.organization_id = o.id) \
             OR EXISTS (SELECT 1 FROM audit_checkpoints c WHERE c.organization_id = o.id) \
             ORDER BY o.slug",
        )
        .fetch_all(self.reader())
        .await?)
    }

    /// How many entries `organization_id` has (its head's position).
    pub async fn audit_head(&self, organization_id: &str) -> Result<i64> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT audit_position FROM event_feeds WHERE organization_id = $1")
                .bind(organization_id)
                .fetch_optional(self.reader())
                .await?;
        Ok(row.map_or(0, |r| r.0))
    }

    /// The largest position stored for `organization_id` (0: none).
    pub async fn audit_last_position(&self, organization_id: &str) -> Result<i64> {
        let row: (Option<i64>,) =
            sqlx::query_as("SELECT MAX(position) FROM audit_entries WHERE organization_id = $1")
                .bind(organization_id)
                .fetch_one(self.reader())
                .await?;
        Ok(row.0.unwrap_or(0))
    }

    /// Which of `customers` the hub did not erase (neither erased nor merged into an
    /// erased customer), or does not know.
    pub async fn not_erased(&self, customers: &[&str]) -> Result<Vec<String>> {
        let mut out = vec![];
        for chunk in customers.chunks(INSERT_CHUNK) {
            let sql = format!(
                "SELECT c.id FROM customers c LEFT JOIN customers s ON s.id = c.merged_into \
                 WHERE c.id IN ({}) AND (c.state = 'erased' OR s.state = 'erased')",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query_as::<_, (String,)>(&sql);
            for c in chunk {
                query = query.bind(*c);
            }
            let erased: Vec<String> = query
                .fetch_all(self.reader())
                .await?
                .into_iter()
                .map(|r| r.0)
                .collect();
            out.extend(
                chunk
                    .iter()
                    .filter(|c| !erased.iter().any(|e| e == *c))
                    .map(|c| (*c).to_owned()),
            );
        }
        Ok(out)
    }

    /// The newest checkpoint of `organization_id`, if any.
    pub async fn last_audit_checkpoint(&self, organization_id: &str) -> Result<Option<Checkpoint>> {
        let row: Option<CheckpointRow> = sqlx::query_as(
            "SELECT position, hash, create_time, public_key, signature FROM audit_checkpoints \
             WHERE organization_id = $1 ORDER BY position DESC LIMIT 1",
        )
        .bind(organization_id)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(Checkpoint::from))
    }

    /// Up to `limit` entries of `organization_id` at positions `first..=last`, in order.
    pub async fn audit_entries(
        &self,
        organization_id: &str,
        (first, last): (i64, i64),
        limit: usize,
    ) -> Result<Vec<Record>> {
        let rows: Vec<EntryRow> = sqlx::query_as(&format!(
            "SELECT position, sequence, event_id, type, resource, create_time, customer_id, \
             erases, content, salt, content_hash, hash FROM audit_entries \
             WHERE organization_id = $1 AND position >= $2 AND position <= $3 \
             ORDER BY position LIMIT {limit}"
        ))
        .bind(organization_id)
        .bind(first)
        .bind(last)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(Record::from).collect())
    }

    /// The stored hash of entry `position` of `organization_id`, if there is one.
    pub async fn audit_entry_hash(
        &self,
        organization_id: &str,
        position: i64,
    ) -> Result<Option<Vec<u8>>> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT hash FROM audit_entries WHERE organization_id = $1 AND position = $2",
        )
        .bind(organization_id)
        .bind(position)
        .fetch_optional(self.reader())
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// The checkpoints of `organization_id` at positions `first..=last`, in order.
    pub async fn audit_checkpoints(
        &self,
        organization_id: &str,
        (first, last): (i64, i64),
    ) -> Result<Vec<Checkpoint>> {
        let rows: Vec<CheckpointRow> = sqlx::query_as(
            "SELECT position, hash, create_time, public_key, signature FROM audit_checkpoints \
             WHERE organization_id = $1 AND position >= $2 AND position <= $3 ORDER BY position",
        )
        .bind(organization_id)
        .bind(first)
        .bind(last)
        .fetch_all(self.reader())
        .await?;
        Ok(rows.into_iter().map(Checkpoint::from).collect())
    }

    /// The heads not yet signed: each organization whose log grew since its last
    /// checkpoint, with its newest entry's position and hash.
    pub async fn unsigned_audit_heads(&self) -> Result<Vec<(String, i64, Vec<u8>)>> {
        Ok(sqlx::query_as(
            "SELECT f.organization_id, f.audit_position, f.audit_hash FROM event_feeds f \
             WHERE f.audit_position > 0 AND f.audit_position > COALESCE((SELECT MAX(c.position) \
             FROM audit_checkpoints c WHERE c.organization_id = f.organization_id), 0)",
        )
        .fetch_all(self.reader())
        .await?)
    }

    /// Stores checkpoints (organization id, checkpoint) in one transaction; one at a
    /// position already signed (another replica's) is dropped.
    pub async fn insert_audit_checkpoints(
        &self,
        checkpoints: &[(String, Checkpoint)],
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        for chunk in checkpoints.chunks(INSERT_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * 6 + 1, 6)))
                .collect();
            let sql = format!(
                "INSERT INTO audit_checkpoints (organization_id, position, hash, create_time, \
                 public_key, signature) VALUES {} ON CONFLICT (organization_id, position) DO NOTHING",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (org, c) in chunk {
                query = query
                    .bind(org)
                    .bind(c.position)
                    .bind(&c.hash)
                    .bind(c.create_time)
                    .bind(&c.public_key)
                    .bind(&c.signature);
            }
            query.execute(tx.conn()).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
