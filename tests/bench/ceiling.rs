//! `db_ceiling`: the writes one UpdateCustomer commits, as raw sqlx in a loop with no
//! gRPC, auth or domain code: read the revision, update the customer, and then
//! - on SQLite, where events are numbered inline: take the next sequence of the
//!   vendor's and the retailer's feeds, insert their two events and the vendor
//!   endpoint's delivery, commit;
//! - on PostgreSQL, where a sequencer numbers events after the commit: read who
//!   hears of it (the owner's external id, the grants), add the history entry and
//!   the transaction's one inbox row (its two events), commit. The sequencer's
//!   batches are extra work this ceiling leaves out.
//!
//! It runs on the database the hub just used (the hub stopped), with the hub's own
//! connection settings: on SQLite one writer connection in WAL mode with
//! `synchronous = FULL` and `BEGIN IMMEDIATE`; on PostgreSQL a pool of 16, the
//! default `database.max_connections`; no ping before each statement on either.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

use crate::load::{Meter, closed_loop};
use crate::scenarios::Row;

/// The hub's default `database.max_connections`.
const PG_POOL: u32 = 16;

struct Ids {
    vendor: String,
    retail: String,
    endpoint: String,
    customers: Vec<String>,
}

async fn pool(url: &str) -> anyhow::Result<(AnyPool, bool)> {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    let options = AnyConnectOptions::from_str(url)?;
    let pool = if sqlite {
        AnyPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(sqlx::raw_sql(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
                         PRAGMA cache_size = -8000; PRAGMA temp_store = MEMORY;",
                    ))
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?
    } else {
        AnyPoolOptions::new()
            .max_connections(PG_POOL)
            .test_before_acquire(false)
            .connect_with(options)
            .await?
    };
    Ok((pool, sqlite))
}

async fn ids(pool: &AnyPool) -> anyhow::Result<Ids> {
    let org = async |slug: &str| -> anyhow::Result<String> {
        let (id,): (String,) = sqlx::query_as("SELECT id FROM organizations WHERE slug = $1")
            .bind(slug)
            .fetch_one(pool)
            .await?;
        Ok(id)
    };
    let (vendor, retail) = (org("vendor").await?, org("retail").await?);
    let (endpoint,): (String,) = sqlx::query_as(
        "SELECT id FROM webhook_endpoints WHERE organization_id = $1 AND url LIKE '%/vendor'",
    )
    .bind(&vendor)
    .fetch_one(pool)
    .await?;
    let customers: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM customers WHERE owner_id = $1 ORDER BY id LIMIT 10000")
            .bind(&vendor)
            .fetch_all(pool)
            .await?;
    Ok(Ids {
        vendor,
        retail,
        endpoint,
        customers: customers.into_iter().map(|(c,)| c).collect(),
    })
}

/// One update's transaction.
async fn update(pool: &AnyPool, sqlite: bool, ids: &Ids, customer: &str) -> anyhow::Result<()> {
    let mut tx = if sqlite {
        pool.begin_with("BEGIN IMMEDIATE").await?
    } else {
        pool.begin().await?
    };
    let now = jiff::Timestamp::now().as_microsecond();
    let (profile, revision): (String, i64) =
        sqlx::query_as("SELECT profile, revision FROM customers WHERE id = $1")
            .bind(customer)
            .fetch_one(&mut *tx)
            .await?;
    let done = sqlx::query(
        "UPDATE customers SET profile = $1, sort_name = $2, update_time = $3, \
         revision = revision + 1 WHERE id = $4 AND revision = $5",
    )
    .bind(&profile)
    .bind(format!("u{now} family"))
    .bind(now)
    .bind(customer)
    .bind(revision)
    .execute(&mut *tx)
    .await?;
    anyhow::ensure!(done.rows_affected() == 1, "lost update");
    if !sqlite {
        // Who hears of it: the owner's external id and the grants (one read each).
        sqlx::query(
            "SELECT external_id FROM customer_external_ids WHERE customer_id = $1 AND org_id = $2",
        )
        .bind(customer)
        .bind(&ids.vendor)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "SELECT g.grantee_id, g.level, g.fields, p.state, x.external_id \
             FROM customer_grants g LEFT JOIN partnerships p ON p.id = g.partnership_id \
             LEFT JOIN customer_external_ids x ON x.customer_id = g.customer_id \
             AND x.org_id = g.grantee_id \
             WHERE g.customer_id = $1 AND g.revoke_time IS NULL ORDER BY g.grantee_id",
        )
        .bind(customer)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO customer_history (id, customer_id, time, org_id, key_id, action, \
             private_to, changes, note) VALUES ($1, $2, $3, $4, '', 'updated', NULL, $5, '')",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(customer)
        .bind(now)
        .bind(&ids.vendor)
        .bind(r#"[{"field":"given_name","old":"\"a\"","new":"\"b\""}]"#)
        .execute(&mut *tx)
        .await?;
        // Two encoded customer.updated events with their addressing are about this size.
        sqlx::query(
            "INSERT INTO event_inbox (xact, events) VALUES (pg_current_xact_id()::text::bigint, $1)",
        )
        .bind(vec![7u8; 1_000])
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(());
    }
    let mut feeds = [ids.vendor.as_str(), ids.retail.as_str()];
    feeds.sort_unstable();
    let mut sequences = vec![];
    for org in feeds {
        let (last,): (i64,) = sqlx::query_as(
            "INSERT INTO event_feeds (organization_id, last_sequence) VALUES ($1, 1) \
             ON CONFLICT (organization_id) \
             DO UPDATE SET last_sequence = event_feeds.last_sequence + excluded.last_sequence \
             RETURNING last_sequence",
        )
        .bind(org)
        .fetch_one(&mut *tx)
        .await?;
        sequences.push((org, last, uuid::Uuid::now_v7().to_string()));
    }
    let (vendor_event, vendor_sequence) = sequences
        .iter()
        .find(|(org, ..)| *org == ids.vendor)
        .map(|(_, s, id)| (id.clone(), *s))
        .expect("vendor feed");
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, endpoint_id, organization_id, event_id, \
         event_type, sequence, state, attempts, next_attempt_time, lease_until, create_time, \
         payload, paced) VALUES ($1, $2, $3, $4, 'customer.updated', $5, 'pending', 0, $6, \
         NULL, $6, NULL, 0)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(&ids.endpoint)
    .bind(&ids.vendor)
    .bind(&vendor_event)
    .bind(vendor_sequence)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    // An encoded customer.updated event is about this size.
    let body = vec![7u8; 420];
    let mut insert = sqlx::query(
        "INSERT INTO events (organization_id, sequence, id, type, resource, create_time, body) \
         VALUES ($1, $2, $3, 'customer.updated', $4, $5, $6), ($7, $8, $9, 'customer.updated', $10, $11, $12)",
    );
    let resource = format!("customers/{customer}");
    for (org, sequence, id) in &sequences {
        insert = insert
            .bind(*org)
            .bind(*sequence)
            .bind(id.as_str())
            .bind(resource.as_str())
            .bind(now)
            .bind(body.clone());
    }
    insert.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn db_ceiling(
    url: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Row> {
    let (pool, sqlite) = pool(url).await?;
    let ids = Arc::new(ids(&pool).await?);
    anyhow::ensure!(!ids.customers.is_empty(), "no customers to update");
    let meter = Meter::start(None);
    let shared = (pool.clone(), ids.clone());
    let (samples, secs) = closed_loop(concurrency, warmup, duration, move |w, i| {
        let (pool, ids) = shared.clone();
        async move {
            let n = ids.customers.len();
            let customer = &ids.customers[(w + concurrency * i as usize) % n];
            update(&pool, sqlite, &ids, customer).await
        }
    })
    .await;
    let spent = meter.finish();
    pool.close().await;
    let n = samples.micros.len() as u64;
    Ok(Row::new(
        "db_ceiling",
        "upd/s",
        samples,
        n,
        secs,
        spent,
        format!(
            "raw sqlx, concurrency {concurrency} on {}; the CPU column is this process",
            if sqlite {
                "one SQLite writer (WAL, synchronous = FULL)"
            } else {
                "a pool of 16"
            }
        ),
    ))
}
