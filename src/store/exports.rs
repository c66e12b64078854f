//! Exports' files: one `exports` row per export operation, its content in
//! `export_chunks`, kept until it expires.

use jiff::Timestamp;
use sqlx::FromRow;

use super::{Store, Tx, corrupt, micros, timestamp};
use crate::domain::error::Result;
use crate::domain::export::{ExportFormat, ExportKind, ExportParams};

/// An export and how far its file has come.
#[derive(Debug, Clone)]
pub struct ExportFile {
    pub operation_id: String,
    pub organization_id: String,
    pub kind: ExportKind,
    pub format: ExportFormat,
    pub params: ExportParams,
    pub records: i64,
    pub size_bytes: i64,
    /// Set once the file is complete.
    pub expire_time: Option<Timestamp>,
}

#[derive(FromRow)]
struct ExportRow {
    operation_id: String,
    organization_id: String,
    kind: String,
    format: String,
    params: String,
    records: i64,
    size_bytes: i64,
    expire_time: Option<i64>,
}

impl TryFrom<ExportRow> for ExportFile {
    type Error = crate::domain::error::Error;

    fn try_from(r: ExportRow) -> Result<Self> {
        Ok(Self {
            kind: ExportKind::parse(&r.kind).ok_or_else(|| corrupt("export kind", &r.kind))?,
            format: ExportFormat::parse(&r.format)
                .ok_or_else(|| corrupt("export format", &r.format))?,
            params: serde_json::from_str(&r.params)
                .map_err(|_| corrupt("export parameters", &r.params))?,
            expire_time: r.expire_time.map(timestamp).transpose()?,
            operation_id: r.operation_id,
            organization_id: r.organization_id,
            records: r.records,
            size_bytes: r.size_bytes,
        })
    }
}

const COLUMNS: &str = "operation_id, organization_id, kind, format, params, records, size_bytes, \
     expire_time";

impl Store {
    pub async fn export_file(&self, operation_id: &str) -> Result<Option<ExportFile>> {
        let row: Option<ExportRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM exports WHERE operation_id = $1"
        ))
        .bind(operation_id)
        .fetch_optional(self.reader())
        .await?;
        row.map(ExportFile::try_from).transpose()
    }

    /// Starts the file of export `operation_id` again for the worker holding `token`
    /// (the one that took it last): what an earlier worker wrote is forgotten, and
    /// that worker's writes fail from now on.
    pub async fn restart_export(&self, operation_id: &str, token: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE exports SET records = 0, size_bytes = 0, expire_time = NULL, token = $1 \
             WHERE operation_id = $2",
        )
        .bind(token)
        .bind(operation_id)
        .execute(tx.conn())
        .await?;
        sqlx::query("DELETE FROM export_chunks WHERE operation_id = $1")
            .bind(operation_id)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Appends chunk `seq` of export `operation_id`, holding `records` more records,
    /// if the worker holding `token` still has it; false if another took it over.
    pub async fn append_export_chunk(
        &self,
        (operation_id, token): (&str, &str),
        seq: i64,
        data: &[u8],
        records: i64,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        // The export's row first: it orders this worker against a takeover.
        let held = sqlx::query(
            "UPDATE exports SET records = records + $1, size_bytes = size_bytes + $2 \
             WHERE operation_id = $3 AND token = $4",
        )
        .bind(records)
        .bind(data.len() as i64)
        .bind(operation_id)
        .bind(token)
        .execute(tx.conn())
        .await?;
        if held.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO export_chunks (operation_id, seq, data) VALUES ($1, $2, $3)")
            .bind(operation_id)
            .bind(seq)
            .bind(data)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Chunk `seq` of export `operation_id`, if there is one.
    pub async fn export_chunk(&self, operation_id: &str, seq: i64) -> Result<Option<Vec<u8>>> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT data FROM export_chunks WHERE operation_id = $1 AND seq = $2")
                .bind(operation_id)
                .bind(seq)
                .fetch_optional(self.reader())
                .await?;
        Ok(row.map(|(d,)| d))
    }

    /// Deletes exports that expired before `now` (their files and operations), ten
    /// at a time so no transaction holds the database long; how many.
    pub async fn prune_exports(&self, now: Timestamp) -> Result<u64> {
        let mut gone = 0;
        loop {
            // Expired files; and exports whose operation failed, was cancelled or
            // was deleted.
            let ids: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT e.operation_id, o.state FROM exports e \
                 LEFT JOIN operations o ON o.id = e.operation_id \
                 WHERE e.expire_time < $1 OR o.id IS NULL OR o.state IN ('failed', 'cancelled') \
                 ORDER BY e.operation_id LIMIT 10",
            )
            .bind(micros(now))
            .fetch_all(self.reader())
            .await?;
            if ids.is_empty() {
                return Ok(gone);
            }
            for (id, state) in ids {
                let mut tx = self.begin().await?;
                let mut gone_too = vec![
                    "DELETE FROM export_chunks WHERE operation_id = $1",
                    "DELETE FROM exports WHERE operation_id = $1",
                ];
                // A file that expired takes its operation along (it would answer done
                // with nothing); one that failed keeps it, to say why.
                if state.as_deref() == Some("succeeded") {
                    gone_too.push("DELETE FROM operations WHERE id = $1");
                }
                for sql in gone_too {
                    sqlx::query(sql).bind(&id).execute(tx.conn()).await?;
                }
                tx.commit().await?;
                gone += 1;
            }
        }
    }
}

impl Tx {
    /// Records a new export of operation `operation_id` (inserted in the same
    /// transaction).
    pub async fn insert_export(
        &mut self,
        operation_id: &str,
        organization_id: &str,
        (kind, format): (ExportKind, ExportFormat),
        params: &ExportParams,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO exports (operation_id, organization_id, kind, format, params, records, \
             size_bytes, expire_time) VALUES ($1, $2, $3, $4, $5, 0, 0, NULL)",
        )
        .bind(operation_id)
        .bind(organization_id)
        .bind(kind.as_str())
        .bind(format.as_str())
        .bind(serde_json::to_string(params).unwrap_or_default())
        .execute(self.conn())
        .await?;
        self.exports_queued = true;
        Ok(())
    }

    /// Ends export `operation_id` for the worker holding `token`: its file kept until
    /// `expire_time` (or, for one that did not succeed, dropped); false if another
    /// worker took it over.
    pub async fn end_export(
        &mut self,
        (operation_id, token): (&str, &str),
        expire_time: Timestamp,
        keep: bool,
    ) -> Result<bool> {
        let held = sqlx::query(
            "UPDATE exports SET expire_time = $1 WHERE operation_id = $2 AND token = $3",
        )
        .bind(micros(expire_time))
        .bind(operation_id)
        .bind(token)
        .execute(self.conn())
        .await?;
        if held.rows_affected() != 1 {
            return Ok(false);
        }
        if !keep {
            sqlx::query("DELETE FROM export_chunks WHERE operation_id = $1")
                .bind(operation_id)
                .execute(self.conn())
                .await?;
        }
        Ok(true)
    }

    /// How many exports of `organization_id` have not ended.
    pub async fn unfinished_exports(&mut self, organization_id: &str) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM exports e JOIN operations o ON o.id = e.operation_id \
             WHERE e.organization_id = $1 AND o.state IN ('pending', 'running')",
        )
        .bind(organization_id)
        .fetch_one(self.conn())
        .await?;
        Ok(n)
    }
}
