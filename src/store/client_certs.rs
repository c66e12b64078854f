//! Client certificates registered to organizations, for mutual TLS.

use jiff::Timestamp;
use sqlx::FromRow;
use sqlx::any::AnyExecutor;

use super::{Page, Store, Tx, corrupt, is_unique_violation, micros, timestamp};
use crate::domain::client_cert::{CertificateMatch, ClientCertificate, PresentedCertificate};
use crate::domain::error::{Error, Result};
use crate::domain::{OrgRef, Scopes, Slug};

const SELECT: &str = "SELECT c.id, c.organization_id, o.slug, o.state AS organization_state, \
     c.display_name, c.fingerprint, c.subject, c.scopes, c.create_time, c.revoke_time \
     FROM client_certificates c JOIN organizations o ON o.id = c.organization_id";

#[derive(FromRow)]
struct Row {
    id: String,
    organization_id: String,
    slug: String,
    organization_state: String,
    display_name: String,
    fingerprint: Option<String>,
    subject: Option<String>,
    scopes: String,
    create_time: i64,
    revoke_time: Option<i64>,
}

/// A registration found for a presented certificate, with its owner's state.
pub struct CertificateRecord {
    pub certificate: ClientCertificate,
    pub owner_active: bool,
}

impl TryFrom<Row> for CertificateRecord {
    type Error = Error;

    fn try_from(row: Row) -> Result<Self> {
        let matches = match (row.fingerprint, row.subject) {
            (Some(f), None) => CertificateMatch::Fingerprint(f),
            (None, Some(s)) => CertificateMatch::Subject(s),
            _ => return Err(corrupt("client certificate match", &row.id)),
        };
        let certificate = ClientCertificate {
            organization: OrgRef {
                id: row.organization_id,
                slug: Slug::parse(&row.slug).map_err(|_| corrupt("slug", &row.slug))?,
            },
            matches,
            display_name: row.display_name,
            scopes: Scopes::from_csv(&row.scopes).ok_or_else(|| corrupt("scopes", &row.scopes))?,
            create_time: timestamp(row.create_time)?,
            revoke_time: row.revoke_time.map(timestamp).transpose()?,
            id: row.id,
        };
        Ok(Self {
            certificate,
            owner_active: row.organization_state == "active",
        })
    }
}

fn columns(m: &CertificateMatch) -> (Option<&str>, Option<&str>) {
    match m {
        CertificateMatch::Fingerprint(f) => (Some(f), None),
        CertificateMatch::Subject(s) => (None, Some(s)),
    }
}

async fn by_id<'c>(
    db: impl AnyExecutor<'c>,
    organization_id: &str,
    id: &str,
) -> Result<Option<ClientCertificate>> {
    let sql = format!("{SELECT} WHERE c.id = $1 AND c.organization_id = $2");
    let row: Option<Row> = sqlx::query_as(&sql)
        .bind(id)
        .bind(organization_id)
        .fetch_optional(db)
        .await?;
    row.map(|r| CertificateRecord::try_from(r).map(|c| c.certificate))
        .transpose()
}

impl Store {
    /// The live registration matching `presented`: by fingerprint first (the exact
    /// certificate), then by subject common name.
    pub async fn client_certificate_for(
        &self,
        presented: &PresentedCertificate,
    ) -> Result<Option<CertificateRecord>> {
        let sql = format!(
            "{SELECT} WHERE c.revoke_time IS NULL AND (c.fingerprint = $1 OR c.subject = $2) \
             ORDER BY c.fingerprint IS NULL"
        );
        let row: Option<Row> = sqlx::query_as(&sql)
            .bind(&presented.fingerprint)
            .bind(presented.common_name.as_deref())
            .fetch_optional(self.reader())
            .await?;
        row.map(CertificateRecord::try_from).transpose()
    }

    /// An organization's registrations in creation order, after the one with id `after`.
    pub async fn client_certificates(
        &self,
        organization_id: &str,
        show_revoked: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<ClientCertificate>> {
        let sql = format!(
            "{SELECT} WHERE c.organization_id = $1 AND c.id > $2 \
             AND ($3 OR c.revoke_time IS NULL) ORDER BY c.id LIMIT $4"
        );
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(organization_id)
            .bind(after.unwrap_or(""))
            .bind(show_revoked)
            .bind(limit as i64 + 1)
            .fetch_all(self.reader())
            .await?;
        let items = rows
            .into_iter()
            .map(|r| CertificateRecord::try_from(r).map(|c| c.certificate))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(items, limit, |c| c.id.clone()))
    }
}

impl Tx {
    pub async fn insert_client_certificate(&mut self, c: &ClientCertificate) -> Result<()> {
        let (fingerprint, subject) = columns(&c.matches);
        let result = sqlx::query(
            "INSERT INTO client_certificates (id, organization_id, display_name, fingerprint, \
             subject, scopes, create_time, revoke_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&c.id)
        .bind(&c.organization.id)
        .bind(&c.display_name)
        .bind(fingerprint)
        .bind(subject)
        .bind(c.scopes.to_csv())
        .bind(micros(c.create_time))
        .bind(c.revoke_time.map(micros))
        .execute(self.conn())
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::AlreadyExists {
                reason: "CERTIFICATE_TAKEN",
                message: "a live registration already names this certificate".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn client_certificate(
        &mut self,
        organization_id: &str,
        id: &str,
    ) -> Result<Option<ClientCertificate>> {
        by_id(self.conn(), organization_id, id).await
    }

    pub async fn revoke_client_certificate(&mut self, id: &str, now: Timestamp) -> Result<()> {
        sqlx::query(
            "UPDATE client_certificates SET revoke_time = $1 WHERE id = $2 AND revoke_time IS NULL",
        )
        .bind(micros(now))
        .bind(id)
        .execute(self.conn())
        .await?;
        self.credentials_changed().await
    }
}
