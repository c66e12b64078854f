//! HTTP/JSON against gRPC: the same reads and writes as `get_customer` and
//! `update_customer`, sent as a partner's HTTP client would (HTTP/1.1 with keep-alive,
//! one connection per worker, through reqwest on hyper), at the same concurrency.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::load::{Meter, XorShift, closed_loop};
use crate::scenarios::{Ctx, Row};

/// One HTTP/1.1 client per worker: a request in flight holds its connection, so each
/// worker keeps one alive.
fn clients(concurrency: usize) -> Arc<Vec<reqwest::Client>> {
    // reqwest is built without a TLS provider of its own (the hub's is ring); plain
    // HTTP needs none, but the client insists on one being installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(
        (0..concurrency)
            .map(|_| {
                reqwest::Client::builder()
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("an HTTP client")
            })
            .collect(),
    )
}

/// The ratio of this row's throughput to the gRPC row's, in its note.
fn against(mut row: Row, grpc: Option<&Row>) -> Row {
    if let Some(grpc) = grpc {
        row.note = format!(
            "{}; {:.2}x the gRPC figure of this run ({:.0}/s)",
            row.note,
            row.throughput / grpc.throughput.max(1e-9),
            grpc.throughput
        );
    }
    row
}

/// `GET /v1/customers/{c}` as the retailer, over the customers granted to it.
pub async fn get_customer_http(ctx: &Ctx, grpc: Option<&Row>) -> anyhow::Result<Row> {
    let names = Arc::new(ctx.fx.customers[..ctx.fx.granted.max(1)].to_vec());
    let clients = clients(ctx.concurrency);
    let base = format!("http://{}", ctx.hub_addr);
    let key = format!("Bearer {}", ctx.fx.retail.read_key);
    let rngs = Arc::new(
        (0..ctx.concurrency)
            .map(|w| Mutex::new(XorShift::new(w as u64 + 1)))
            .collect::<Vec<_>>(),
    );
    let meter = Meter::start(Some(ctx.hub_pid));
    let (samples, secs) = closed_loop(ctx.concurrency, ctx.warmup, ctx.duration, move |w, _| {
        let name = names[rngs[w].lock().unwrap().below(names.len())].clone();
        let request = clients[w]
            .get(format!("{base}/v1/{name}"))
            .header("authorization", key.clone());
        async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            Ok(())
        }
    })
    .await;
    let n = samples.micros.len() as u64;
    let row = Row::new(
        "get_customer_http",
        "req/s",
        samples,
        n,
        secs,
        meter.finish(),
        format!(
            "concurrency {0}, HTTP/1.1 keep-alive, {0} connections; the retailer reads granted customers as JSON",
            ctx.concurrency
        ),
    );
    Ok(against(row, grpc))
}

/// `PATCH /v1/customers/{c}?updateMask=givenName` with the etag, as the vendor.
pub async fn update_customer_http(ctx: &Ctx, grpc: Option<&Row>) -> anyhow::Result<Row> {
    ctx.drain().await?;
    let names = Arc::new(ctx.fx.customers[..ctx.fx.granted.max(1)].to_vec());
    let etags: Arc<Vec<Mutex<String>>> =
        Arc::new(names.iter().map(|_| Mutex::new(String::new())).collect());
    let clients = clients(ctx.concurrency);
    let base = format!("http://{}", ctx.hub_addr);
    let key = format!("Bearer {}", ctx.fx.vendor.admin_key);
    let concurrency = ctx.concurrency;
    let per_worker = (names.len() / concurrency).max(1);
    let meter = Meter::start(Some(ctx.hub_pid));
    let (samples, secs) = closed_loop(concurrency, ctx.warmup, ctx.duration, move |w, i| {
        let index = (w + concurrency * (i as usize % per_worker)) % names.len();
        let (name, etag) = (names[index].clone(), etags[index].lock().unwrap().clone());
        let mut body = json!({"givenName": format!("H{w}x{i}")});
        if !etag.is_empty() {
            body["etag"] = Value::String(etag);
        }
        let request = clients[w]
            .patch(format!("{base}/v1/{name}?updateMask=givenName"))
            .header("authorization", key.clone())
            .header("content-type", "application/json")
            .body(body.to_string());
        let etags = etags.clone();
        async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            let updated: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            *etags[index].lock().unwrap() = updated["etag"].as_str().unwrap_or_default().into();
            Ok(())
        }
    })
    .await;
    let n = samples.micros.len() as u64;
    let row = Row::new(
        "update_customer_http",
        "upd/s",
        samples,
        n,
        secs,
        meter.finish(),
        format!(
            "concurrency {0}, HTTP/1.1 keep-alive, {0} connections, etag sent",
            ctx.concurrency
        ),
    );
    Ok(against(row, grpc))
}
