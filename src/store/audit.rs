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
    fn hash(&self) -> Result<Hash> {
        match &self.hash {
            None => Ok(GENESIS),
            Some(h) => h
                .as_slice()
                .try_into()
                .map_err(|_| super::corrupt("audit head hash of length", &h.len().to_string())),
        }
    }
}

/// One organization's part of a numbering batch: its head, and its events with their
/// sequences and stored bodies, in feed order.
pub(in crate::store) type Chain<'a> = (&'a str, AuditHead, Vec<(&'a NewEvent, i64, &'a [u8])>);

/// An entry on its way into the log.
struct Appended<'a> {
    organization_id: &'a str,
    position: i64,
    sequence: i64,
    event: &'a NewEvent,
    customer_id: Option<&'a str>,
    erases: Option<String>,
    /// With its salt; `None` when its customer is already erased.
    content: Option<(&'a [u8], [u8; SALT_BYTES])>,
    content_hash: Hash,
    hash: Hash,
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
        let gone = self.erased_among(&about).await?;
        let mut erased_now: Vec<&str> = events
            .iter()
            .filter(|e| e.event_type == EventType::CustomerErased)
            .filter_map(|e| e.customer_id.as_deref())
            .collect();
        erased_now.sort_unstable();
        erased_now.dedup();
        // Per erasure: the customer and those merged into it.
        let mut erasures: Vec<(&str, Vec<String>)> = vec![];
        for customer in erased_now {
            let mut erased = vec![customer.to_owned()];
            erased.extend(self.merged_into(customer).await?);
            erasures.push((customer, erased));
        }
        let mut rows: Vec<Appended<'_>> = vec![];
        let mut heads: Vec<(&str, i64, Hash)> = vec![];
        for (org, head, events) in chains {
            let mut position = head.position;
            let mut previous = head.hash()?;
            for (event, sequence, content) in events {
                if !audit::audited(event.event_type) {
                    continue;
                }
                position += 1;
                let customer_id = event.customer_id.as_deref();
                let erases = (event.event_type == EventType::CustomerErased)
                    .then(|| {
                        erasures
                            .iter()
                            .find(|(c, _)| Some(*c) == customer_id)
                            .map(|(_, all)| all.join(" "))
                    })
                    .flatten();
                let kept = event.event_type == EventType::CustomerErased
                    || customer_id.is_none_or(|c| !gone.iter().any(|g| g == c));
                let mut salt = [0u8; SALT_BYTES];
                getrandom::fill(&mut salt)
                    .map_err(|e| Error::Internal(anyhow::anyhow!("no randomness: {e}")))?;
                let content_hash = audit::content_hash(&salt, content);
                let header = Header {
                    organization_id: org,
                    position,
                    sequence: *sequence,
                    event_id: &event.id,
                    event_type: event.event_type.as_str(),
                    resource: &event.resource,
                    create_time: super::micros(event.create_time),
                    customer: customer_id.unwrap_or(""),
                    erases: erases.as_deref().unwrap_or(""),
                };
                let hash = audit::entry_hash(&header, &content_hash, &previous);
                rows.push(Appended {
                    organization_id: org,
                    position,
                    sequence: *sequence,
                    event,
                    customer_id,
                    erases,
                    content: kept.then_some((*content, salt)),
                    content_hash,
                    hash,
                });
                previous = hash;
            }
            if position > head.position {
                heads.push((org, position, previous));
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
                query = query.bind(*org).bind(*position).bind(hash.as_slice());
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
                    .bind(r.organization_id)
                    .bind(r.position)
                    .bind(r.sequence)
                    .bind(&r.event.id)
                    .bind(r.event.event_type.as_str())
                    .bind(&r.event.resource)
                    .bind(r.customer_id)
                    .bind(r.erases.as_deref())
                    .bind(super::micros(r.event.create_time))
                    .bind(content)
                    .bind(salt)
                    .bind(r.content_hash.as_slice())
                    .bind(r.hash.as_slice());
            }
            let done = query.execute(self.conn()).await?.rows_affected();
            if done < chunk.len() as u64 {
                let mut orgs: Vec<&str> = chunk.iter().map(|r| r.organization_id).collect();
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
