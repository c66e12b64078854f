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
use crate::domain::audit::{self, Checkpoint, GENESIS, Hash, Header, Record};
use crate::domain::error::Result;

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
    header_position: i64,
    sequence: i64,
    event: &'a NewEvent,
    customer_id: Option<&'a str>,
    content: &'a [u8],
    content_hash: Hash,
    hash: Hash,
}

/// The customer a resource name is about (`customers/{id}` and what hangs off it).
fn customer_of(resource: &str) -> Option<&str> {
    let rest = resource.strip_prefix("customers/")?;
    Some(rest.split('/').next().unwrap_or(rest)).filter(|id| !id.is_empty())
}

#[derive(FromRow)]
struct EntryRow {
    position: i64,
    sequence: i64,
    event_id: String,
    r#type: String,
    resource: String,
    create_time: i64,
    content: Option<Vec<u8>>,
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
            content: r.content,
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
    /// Appends the audited ones of `numbered` (an organization's events with their
    /// sequences and stored bodies, in feed order) to `organization_id`'s chain after
    /// `head`, and moves the head. Then empties the content of every entry about a
    /// customer this batch erased (`erased`), in every organization's log.
    pub(in crate::store) async fn append_audit(
        &mut self,
        chains: &[Chain<'_>],
        erased: &[&str],
    ) -> Result<()> {
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
                let content_hash = audit::content_hash(content);
                let header = Header {
                    organization_id: org,
                    position,
                    sequence: *sequence,
                    event_id: &event.id,
                    event_type: event.event_type.as_str(),
                    resource: &event.resource,
                    create_time: super::micros(event.create_time),
                };
                let hash = audit::entry_hash(&header, &content_hash, &previous);
                rows.push(Appended {
                    organization_id: org,
                    header_position: position,
                    sequence: *sequence,
                    event,
                    customer_id: customer_of(&event.resource),
                    content,
                    content_hash,
                    hash,
                });
                previous = hash;
            }
            if position > head.position {
                heads.push((org, position, previous));
            }
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", placeholders(i * 11 + 1, 11)))
                .collect();
            let sql = format!(
                "INSERT INTO audit_entries (organization_id, position, sequence, event_id, type, \
                 resource, customer_id, create_time, content, content_hash, hash) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for r in chunk {
                query = query
                    .bind(r.organization_id)
                    .bind(r.header_position)
                    .bind(r.sequence)
                    .bind(&r.event.id)
                    .bind(r.event.event_type.as_str())
                    .bind(&r.event.resource)
                    .bind(r.customer_id)
                    .bind(super::micros(r.event.create_time))
                    .bind(r.content)
                    .bind(r.content_hash.as_slice())
                    .bind(r.hash.as_slice());
            }
            query.execute(self.conn()).await?;
        }
        for (org, position, hash) in heads {
            sqlx::query(
                "UPDATE event_feeds SET audit_position = $2, audit_hash = $3 \
                 WHERE organization_id = $1",
            )
            .bind(org)
            .bind(position)
            .bind(hash.as_slice())
            .execute(self.conn())
            .await?;
        }
        for customer in erased {
            sqlx::query(
                "UPDATE audit_entries SET content = NULL \
                 WHERE customer_id = $1 AND content IS NOT NULL",
            )
            .bind(*customer)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }
}

/// The customer an erasure event is about.
pub(in crate::store) fn erased_customer(event: &NewEvent) -> Option<&str> {
    (event.event_type == crate::domain::event::EventType::CustomerErased)
        .then(|| customer_of(&event.resource))
        .flatten()
}

impl Store {
    /// Every organization with entries, by slug.
    pub async fn audited_organizations(&self) -> Result<Vec<AuditedOrganization>> {
        Ok(sqlx::query_as(
            "SELECT f.organization_id, o.slug, f.audit_position FROM event_feeds f \
             JOIN organizations o ON o.id = f.organization_id \
             WHERE f.audit_position > 0 ORDER BY o.slug",
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

    /// Up to `limit` entries of `organization_id` from position `first`, in order.
    pub async fn audit_entries(
        &self,
        organization_id: &str,
        first: i64,
        limit: usize,
    ) -> Result<Vec<Record>> {
        let rows: Vec<EntryRow> = sqlx::query_as(&format!(
            "SELECT position, sequence, event_id, type, resource, create_time, content, \
             content_hash, hash FROM audit_entries WHERE organization_id = $1 AND position >= $2 \
             ORDER BY position LIMIT {limit}"
        ))
        .bind(organization_id)
        .bind(first)
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

    /// Stores a checkpoint; a second one at the same position (another replica's) is
    /// dropped.
    pub async fn insert_audit_checkpoint(
        &self,
        organization_id: &str,
        c: &Checkpoint,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO audit_checkpoints (organization_id, position, hash, create_time, \
             public_key, signature) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (organization_id, position) DO NOTHING",
        )
        .bind(organization_id)
        .bind(c.position)
        .bind(&c.hash)
        .bind(c.create_time)
        .bind(&c.public_key)
        .bind(&c.signature)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_know_the_customer_they_are_about() {
        assert_eq!(customer_of("customers/c1"), Some("c1"));
        assert_eq!(customer_of("customers/c1/grants/g1"), Some("c1"));
        assert_eq!(customer_of("customers/"), None);
        assert_eq!(customer_of("cases/k1"), None);
    }
}
