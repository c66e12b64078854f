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

    /// Forgets what a worker wrote of export `operation_id` (another takes it over
    /// and starts again).
    pub async fn restart_export(&self, operation_id: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM export_chunks WHERE operation_id = $1")
            .bind(operation_id)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "UPDATE exports SET records = 0, size_bytes = 0, expire_time = NULL \
             WHERE operation_id = $1",
        )
        .bind(operation_id)
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    /// Appends chunk `seq` of export `operation_id`, holding `records` more records.
    pub async fn append_export_chunk(
        &self,
        operation_id: &str,
        seq: i64,
        data: &[u8],
        records: i64,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO export_chunks (operation_id, seq, data) VALUES ($1, $2, $3)")
            .bind(operation_id)
            .bind(seq)
            .bind(data)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "UPDATE exports SET records = records + $1, size_bytes = size_bytes + $2 \
             WHERE operation_id = $3",
        )
        .bind(records)
        .bind(data.len() as i64)
        .bind(operation_id)
        .execute(tx.conn())
        .await?;
        tx.commit().await
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

    /// Deletes the files of exports that expired before `now`; how many.
    pub async fn prune_exports(&self, now: Timestamp) -> Result<u64> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "DELETE FROM export_chunks WHERE operation_id IN \
             (SELECT operation_id FROM exports WHERE expire_time < $1)",
        )
        .bind(micros(now))
        .execute(tx.conn())
        .await?;
        let gone = sqlx::query("DELETE FROM exports WHERE expire_time < $1")
            .bind(micros(now))
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(gone.rows_affected())
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
        Ok(())
    }

    /// Marks export `operation_id` complete, its file kept until `expire_time`.
    pub async fn complete_export(
        &mut self,
        operation_id: &str,
        expire_time: Timestamp,
    ) -> Result<()> {
        sqlx::query("UPDATE exports SET expire_time = $1 WHERE operation_id = $2")
            .bind(micros(expire_time))
            .bind(operation_id)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}
