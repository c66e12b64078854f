//! One function per scenario; each returns a row of the report.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use liaison::pb;
use serde::Serialize;
use tonic::Status;

use crate::load::{Meter, Samples, Spent, XorShift, closed_loop, open_loop};
use crate::peers::{Hit, Receiver};
use crate::seed::{self, Conns, Fixture, Org};

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    /// What `throughput` counts per second.
    pub unit: &'static str,
    pub operations: u64,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    #[serde(flatten)]
    pub spent: Spent,
    pub note: String,
    /// PostgreSQL only: the database's work during the scenario.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<crate::dbwork::Work>,
}

impl Row {
    pub fn new(
        scenario: &str,
        unit: &'static str,
        mut samples: Samples,
        operations: u64,
        seconds: f64,
        spent: Spent,
        note: String,
    ) -> Row {
        samples.micros.sort_unstable();
        let s = &samples.micros;
        let note = match samples.first_error.take() {
            Some(e) => format!("{note}; first error: {e}"),
            None => note,
        };
        Row {
            scenario: scenario.into(),
            unit,
            operations,
            seconds,
            throughput: operations as f64 / seconds.max(1e-9),
            p50_ms: samples.quantile_ms(s, 0.50),
            p99_ms: samples.quantile_ms(s, 0.99),
            p999_ms: samples.quantile_ms(s, 0.999),
            max_ms: s.last().map_or(0.0, |m| *m as f64 / 1000.0),
            errors: samples.errors,
            spent,
            note,
            db: None,
        }
    }
}

/// What the scenarios share.
pub struct Ctx {
    pub fx: Fixture,
    /// The hub's database, for scenarios that seed history no API can backdate.
    pub db_url: String,
    pub receiver: Receiver,
    pub hub_pid: u32,
    pub hub_addr: String,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

impl Ctx {
    fn conns(&self) -> Conns {
        self.fx.conns.clone()
    }

    /// Waits until the vendor's endpoint has nothing left to deliver, so that one
    /// scenario's deliveries do not run into the next.
    pub async fn drain(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while seed::pending(&self.fx.conns, &self.fx.vendor, &self.fx.vendor_endpoint).await? > 0 {
            if Instant::now() > deadline {
                anyhow::bail!("webhook deliveries did not drain within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.receiver.settle(Duration::from_millis(300)).await;
        Ok(())
    }
}

fn get(name: String) -> pb::GetCustomerRequest {
    pb::GetCustomerRequest { name }
}

/// GetCustomer against `conns` (the hub, or the echo server) as `key`.
async fn gets(ctx: &Ctx, conns: Conns, key: &str, pid: u32, scenario: &str) -> Row {
    let names = Arc::new(ctx.fx.customers[..ctx.fx.granted.max(1)].to_vec());
    let clients: Vec<_> = (0..ctx.concurrency)
        .map(|w| Mutex::new(conns.customers(w, key)))
        .collect();
    let clients = Arc::new(clients);
    let rngs = Arc::new(
        (0..ctx.concurrency)
            .map(|w| Mutex::new(XorShift::new(w as u64 + 1)))
            .collect::<Vec<_>>(),
    );
    let meter = Meter::start(Some(pid));
    let (samples, secs) = closed_loop(ctx.concurrency, ctx.warmup, ctx.duration, move |w, _| {
        let name = names[rngs[w].lock().unwrap().below(names.len())].clone();
        let mut client = clients[w].lock().unwrap().clone();
        async move { client.get_customer(get(name)).await.map(|_| ()) }
    })
    .await;
    let n = samples.micros.len() as u64;
    Row::new(
        scenario,
        "req/s",
        samples,
        n,
        secs,
        meter.finish(),
        format!(
            "concurrency {}, {} connections",
            ctx.concurrency,
            crate::seed::CONNECTIONS
        ),
    )
}

pub async fn baseline_echo(ctx: &Ctx, echo_addr: &str, echo_pid: u32) -> anyhow::Result<Row> {
    let conns = Conns::open(echo_addr, crate::seed::CONNECTIONS).await?;
    let mut row = gets(ctx, conns, "echo", echo_pid, "baseline_echo").await;
    row.note = format!("{}; a bare tonic server, no auth or database", row.note);
    Ok(row)
}

pub async fn get_customer(ctx: &Ctx) -> anyhow::Result<Row> {
    let mut row = gets(
        ctx,
        ctx.conns(),
        &ctx.fx.retail.read_key,
        ctx.hub_pid,
        "get_customer",
    )
    .await;
    row.note = format!("{}; the retailer reads granted customers", row.note);
    Ok(row)
}

pub async fn list_customers(ctx: &Ctx) -> anyhow::Result<Row> {
    let conns = ctx.conns();
    let key = ctx.fx.vendor.read_key.clone();
    let state: Arc<Vec<Mutex<(_, String)>>> = Arc::new(
        (0..ctx.concurrency)
            .map(|w| Mutex::new((conns.customers(w, &key), String::new())))
            .collect(),
    );
    let meter = Meter::start(Some(ctx.hub_pid));
    let (samples, secs) = closed_loop(ctx.concurrency, ctx.warmup, ctx.duration, move |w, _| {
        let state = state.clone();
        async move {
            let (mut client, token) = state[w].lock().unwrap().clone();
            let page = client
                .list_customers(pb::ListCustomersRequest {
                    page_size: 50,
                    page_token: token,
                    filter: "tag = vip".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            state[w].lock().unwrap().1 = page.next_page_token;
            Ok::<_, Status>(())
        }
    })
    .await;
    let n = samples.micros.len() as u64;
    Ok(Row::new(
        "list_customers",
        "req/s",
        samples,
        n,
        secs,
        meter.finish(),
        "filter `tag = vip` (1 in 100), pages of 50, each worker pages through and restarts".into(),
    ))
}

/// Updates customers from disjoint sets per worker, sending the etag of the last
/// answer; returns the samples and seconds.
async fn updates(
    conns: Conns,
    vendor: &Org,
    customers: &[String],
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> (Samples, f64) {
    let names = Arc::new(customers.to_vec());
    let etags: Arc<Vec<Mutex<String>>> =
        Arc::new(names.iter().map(|_| Mutex::new(String::new())).collect());
    let clients: Arc<Vec<_>> = Arc::new(
        (0..concurrency)
            .map(|w| conns.customers(w, &vendor.admin_key))
            .collect(),
    );
    let per_worker = (names.len() / concurrency).max(1);
    closed_loop(concurrency, warmup, duration, move |w, i| {
        let index = (w + concurrency * (i as usize % per_worker)) % names.len();
        let (name, etag) = (names[index].clone(), etags[index].lock().unwrap().clone());
        let (mut client, etags) = (clients[w].clone(), etags.clone());
        async move {
            let updated = client
                .update_customer(update(name, etag, format!("U{w}x{i}")))
                .await?
                .into_inner();
            *etags[index].lock().unwrap() = updated.etag;
            Ok::<_, Status>(())
        }
    })
    .await
}

fn update(name: String, etag: String, given_name: String) -> pb::UpdateCustomerRequest {
    pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            name,
            etag,
            given_name,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["given_name".into()],
        }),
        request_id: String::new(),
    }
}

pub async fn update_customer(ctx: &Ctx) -> anyhow::Result<Row> {
    ctx.drain().await?;
    let meter = Meter::start(Some(ctx.hub_pid));
    let (samples, secs) = updates(
        ctx.conns(),
        &ctx.fx.vendor,
        &ctx.fx.customers[..ctx.fx.granted.max(1)],
        ctx.concurrency,
        ctx.warmup,
        ctx.duration,
    )
    .await;
    let spent = meter.finish();
    let n = samples.micros.len() as u64;
    Ok(Row::new(
        "update_customer",
        "upd/s",
        samples,
        n,
        secs,
        spent,
        format!(
            "concurrency {}, etag sent; each commit writes the customer, 2 events \
             (vendor, retailer) and 1 delivery, which the webhook worker sends meanwhile",
            ctx.concurrency
        ),
    ))
}

/// Purchases logged by the vendor on its granted customers, each with an amount in
/// one of two currencies, every other one private: the write that keeps customer
/// metrics (one running-totals upsert each).
pub async fn log_interaction(ctx: &Ctx) -> anyhow::Result<Row> {
    ctx.drain().await?;
    let conns = ctx.conns();
    let key = ctx.fx.vendor.admin_key.clone();
    let names = Arc::new(ctx.fx.customers[..ctx.fx.granted.max(1)].to_vec());
    let meter = Meter::start(Some(ctx.hub_pid));
    let (samples, secs) = closed_loop(ctx.concurrency, ctx.warmup, ctx.duration, move |w, i| {
        let mut client = conns.interactions(w, &key);
        let n = w as u64 * 1_000_003 + i;
        let parent = names[n as usize % names.len()].clone();
        let visibility = if n.is_multiple_of(2) {
            pb::InteractionVisibility::Shared
        } else {
            pb::InteractionVisibility::Organization
        };
        async move {
            client
                .log_interaction(pb::LogInteractionRequest {
                    parent,
                    interaction: Some(pb::Interaction {
                        r#type: pb::InteractionType::Purchase as i32,
                        occur_time: Some(prost_types::Timestamp {
                            seconds: 1_767_225_600 + (n % 86_400) as i64 * 60,
                            nanos: 0,
                        }),
                        summary: format!("Order {n}"),
                        visibility: visibility as i32,
                        amount: Some(pb::Money {
                            currency_code: if n.is_multiple_of(3) { "USD" } else { "EUR" }.into(),
                            units: (n % 500) as i64 + 1,
                            nanos: 250_000_000,
                        }),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                })
                .await
                .map(|_| ())
        }
    })
    .await;
    let spent = meter.finish();
    let n = samples.micros.len() as u64;
    Ok(Row::new(
        "log_interaction",
        "logged/s",
        samples,
        n,
        secs,
        spent,
        format!(
            "concurrency {}, purchases with amounts (half shared, half private) on \
             granted customers; each writes the interaction, its running totals and \
             the events to those who see it",
            ctx.concurrency
        ),
    ))
}

pub async fn batch_upsert(ctx: &Ctx) -> anyhow::Result<Row> {
    const BATCH: usize = 100;
    const WRITERS: usize = 4;
    let conns = ctx.conns();
    let key = ctx.fx.vendor.admin_key.clone();
    let meter = Meter::start(Some(ctx.hub_pid));
    let (samples, secs) = closed_loop(WRITERS, ctx.warmup, ctx.duration, move |w, i| {
        let mut client = conns.customers(w, &key);
        let customers = (0..BATCH)
            .map(|k| seed::person(&format!("B{w}x{i}"), k))
            .collect();
        async move {
            client
                .batch_upsert_customers(pb::BatchUpsertCustomersRequest {
                    customers,
                    request_id: String::new(),
                })
                .await
                .map(|_| ())
        }
    })
    .await;
    let spent = meter.finish();
    let n = samples.micros.len() as u64 * BATCH as u64;
    let row = Row::new(
        "batch_upsert",
        "customers/s",
        samples,
        n,
        secs,
        spent,
        format!("{WRITERS} writers, {BATCH} new customers a call; latency is per call"),
    );
    ctx.drain().await?;
    Ok(row)
}

/// Updates granted customers at `rate` per second for the run's duration, each to a
/// name no earlier round used (an unchanged record makes no event).
async fn paced_updates(ctx: &Ctx, rate: u64) -> Samples {
    static ROUND: AtomicU64 = AtomicU64::new(0);
    let round = ROUND.fetch_add(1, Ordering::SeqCst);
    let conns = ctx.conns();
    let names = Arc::new(ctx.fx.customers[..ctx.fx.granted.max(1)].to_vec());
    let key = ctx.fx.vendor.admin_key.clone();
    open_loop(rate, ctx.duration, 512, move |i| {
        let mut client = conns.customers(i as usize, &key);
        let name = names[i as usize % names.len()].clone();
        async move {
            client
                .update_customer(update(name, String::new(), format!("P{round}x{i}")))
                .await
                .map(|_| ())
        }
    })
    .await
}

/// Opens a WatchEvents stream of customer.updated events after `after` (see
/// [`collect`] for reading it).
async fn watch(
    conns: &Conns,
    i: usize,
    key: &str,
    after: i64,
) -> anyhow::Result<tonic::Streaming<pb::WatchEventsResponse>> {
    Ok(conns
        .events(i, key)
        .watch_events(pb::WatchEventsRequest {
            after_sequence: after,
            event_types: vec!["customer.updated".into()],
        })
        .await?
        .into_inner())
}

fn latency_micros(event: &pb::Event) -> u64 {
    let created = event.create_time.unwrap_or_default();
    let created = jiff::Timestamp::new(created.seconds, created.nanos).unwrap_or_default();
    jiff::Timestamp::now()
        .duration_since(created)
        .as_micros()
        .max(0) as u64
}

/// Reads `stream` until it has `want` events or `limit` passes; returns each one's
/// latency from its create_time.
async fn collect(
    mut stream: tonic::Streaming<pb::WatchEventsResponse>,
    want: usize,
    limit: Duration,
) -> Samples {
    let mut samples = Samples::default();
    let deadline = tokio::time::Instant::now() + limit;
    while samples.micros.len() < want {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(m))) => {
                if let Some(pb::watch_events_response::Message::Event(e)) = m.message {
                    samples.micros.push(latency_micros(&e));
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(status)) => {
                samples.errors += 1;
                samples.first_error = Some(status.to_string());
                break;
            }
            Err(_) => break,
        }
    }
    samples
}

pub async fn watch_latency(ctx: &Ctx, rate: u64) -> anyhow::Result<Row> {
    ctx.drain().await?;
    let conns = ctx.conns();
    let key = &ctx.fx.retail.read_key;
    let stream = watch(&conns, 0, key, seed::head(&conns, key).await?).await?;
    let want = (rate * ctx.duration.as_secs()) as usize;
    let meter = Meter::start(Some(ctx.hub_pid));
    let reader = tokio::spawn(collect(
        stream,
        want,
        ctx.duration + Duration::from_secs(30),
    ));
    let writes = paced_updates(ctx, rate).await;
    let mut samples = reader.await?;
    let spent = meter.finish();
    let missing = want.saturating_sub(samples.micros.len() + writes.errors as usize);
    samples.errors += writes.errors + missing as u64;
    if samples.first_error.is_none() {
        samples.first_error = writes.first_error.clone();
    }
    let n = samples.micros.len() as u64;
    let mut writes = writes;
    writes.micros.sort_unstable();
    Ok(Row::new(
        "watch_latency",
        "events/s",
        samples,
        n,
        ctx.duration.as_secs_f64(),
        spent,
        format!(
            "{rate} updates/s offered; latency is event create_time (in the commit) to \
             receipt by the retailer's stream; update p99 {:.1} ms; {missing} missing",
            writes.quantile_ms(&writes.micros, 0.99)
        ),
    ))
}

fn latencies(hits: &[Hit]) -> Samples {
    Samples {
        micros: hits.iter().map(|h| h.latency_micros).collect(),
        ..Default::default()
    }
}

pub async fn webhook_latency(ctx: &Ctx, rate: u64) -> anyhow::Result<Row> {
    ctx.drain().await?;
    let from = ctx.receiver.len();
    let meter = Meter::start(Some(ctx.hub_pid));
    let writes = paced_updates(ctx, rate).await;
    let want = (rate * ctx.duration.as_secs()) as usize - writes.errors as usize;
    ctx.receiver
        .wait_for(from + want, Duration::from_secs(60))
        .await;
    let spent = meter.finish();
    let hits: Vec<Hit> = ctx
        .receiver
        .since(from)
        .into_iter()
        .filter(|h| h.path == "/hooks/vendor" && h.event_type == "customer.updated")
        .collect();
    let mut samples = latencies(&hits);
    let missing = want.saturating_sub(hits.len());
    samples.errors = writes.errors + missing as u64;
    samples.first_error = writes.first_error.clone();
    Ok(Row::new(
        "webhook_latency",
        "deliveries/s",
        samples,
        hits.len() as u64,
        ctx.duration.as_secs_f64(),
        spent,
        format!(
            "{rate} updates/s offered; latency is event create_time to the signed POST \
             arriving at the receiver; {missing} missing"
        ),
    ))
}

pub async fn webhook_throughput(ctx: &Ctx, endpoints: usize, events: usize) -> anyhow::Result<Row> {
    ctx.drain().await?;
    let conns = ctx.conns();
    let vendor = &ctx.fx.vendor;
    let mut names = vec![];
    for k in 0..endpoints {
        names
            .push(seed::endpoint(&conns, vendor, &ctx.receiver.url(&format!("t{k}")), true).await?);
    }
    let from = ctx.receiver.len();
    // Every created customer is one event, delivered to each endpoint and the
    // vendor's own.
    let want = events * (endpoints + 1);
    let meter = Meter::start(Some(ctx.hub_pid));
    let start = Instant::now();
    let mut client = conns.customers(0, &vendor.admin_key);
    for b in 0..events.div_ceil(100) {
        let customers = (b * 100..((b + 1) * 100).min(events))
            .map(|k| seed::person("W", k))
            .collect();
        client
            .batch_upsert_customers(pb::BatchUpsertCustomersRequest {
                customers,
                request_id: String::new(),
            })
            .await?;
    }
    let written = start.elapsed().as_secs_f64();
    let all = ctx
        .receiver
        .wait_for(from + want, Duration::from_secs(120))
        .await;
    let spent = meter.finish();
    let hits = ctx.receiver.since(from);
    let secs = hits
        .last()
        .map_or(0.0, |h| h.at.duration_since(start).as_secs_f64());
    let mut samples = latencies(&hits);
    samples.errors = want.saturating_sub(hits.len()) as u64;
    for name in &names {
        seed::set_enabled(&conns, vendor, name, false).await?;
    }
    Ok(Row::new(
        "webhook_throughput",
        "deliveries/s",
        samples,
        hits.len() as u64,
        secs,
        spent,
        format!(
            "{events} events (written in {written:.1} s by BatchUpsert) to {} endpoints; \
             from the first write to the last delivery{}; latency from create_time",
            endpoints + 1,
            if all {
                ""
            } else {
                "; NOT ALL DELIVERED within 120 s"
            }
        ),
    ))
}

pub async fn fan_out(ctx: &Ctx, orgs: usize, rounds: usize) -> anyhow::Result<Row> {
    ctx.drain().await?;
    let conns = ctx.conns();
    let vendor = &ctx.fx.vendor;
    let customer = conns
        .customers(0, &vendor.admin_key)
        .batch_upsert_customers(pb::BatchUpsertCustomersRequest {
            customers: vec![seed::person("FAN", 0)],
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .customers
        .remove(0)
        .name;
    for k in 0..orgs {
        let org = seed::create_org(&conns, &ctx.fx.operator, &format!("fan{k:03}")).await?;
        seed::partner(&conns, vendor, &org).await?;
        seed::grant(&conns, 0, vendor, &customer, &org).await?;
        seed::endpoint(&conns, &org, &ctx.receiver.url(&format!("fan{k:03}")), true).await?;
    }
    ctx.receiver.settle(Duration::from_millis(500)).await;
    let mut client = conns.customers(0, &vendor.admin_key);
    let mut samples = Samples::default();
    let meter = Meter::start(Some(ctx.hub_pid));
    let start = Instant::now();
    for r in 0..rounds {
        let from = ctx.receiver.len();
        let began = Instant::now();
        client
            .update_customer(update(customer.clone(), String::new(), format!("F{r}")))
            .await?;
        // Each partner's endpoint, and the vendor's own.
        if ctx
            .receiver
            .wait_for(from + orgs + 1, Duration::from_secs(30))
            .await
        {
            let hits = ctx.receiver.since(from);
            let last = hits
                .iter()
                .filter(|h| h.path.starts_with("/hooks/fan"))
                .map(|h| h.at)
                .max()
                .unwrap_or(began);
            samples
                .micros
                .push(last.duration_since(began).as_micros() as u64);
        } else {
            samples.errors += 1;
        }
        ctx.receiver.settle(Duration::from_millis(100)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let spent = meter.finish();
    Ok(Row::new(
        "fan_out",
        "rounds/s",
        samples,
        rounds as u64,
        secs,
        spent,
        format!(
            "one update of a customer granted to {orgs} organizations, each with an \
             endpoint; latency is the update call to the last of the {orgs} deliveries"
        ),
    ))
}

pub async fn streams(ctx: &Ctx, n: usize, rate: u64) -> anyhow::Result<Row> {
    ctx.drain().await?;
    // At most 100 streams per connection, below the hub's per-connection limit.
    let conns = Conns::open(&ctx.hub_addr, n.div_ceil(100)).await?;
    let key = ctx.fx.retail.read_key.clone();
    let after = seed::head(&conns, &key).await?;
    let meter = Meter::start(Some(ctx.hub_pid));
    let mut opened = vec![];
    for i in 0..n {
        opened.push(watch(&conns, i, &key, after).await?);
    }
    let open_rss = crate::load::status_mb(ctx.hub_pid, "VmRSS:");
    let want = (rate * ctx.duration.as_secs()) as usize;
    let readers: Vec<_> = opened
        .into_iter()
        .map(|s| tokio::spawn(collect(s, want, ctx.duration + Duration::from_secs(30))))
        .collect();
    let writes = paced_updates(ctx, rate).await;
    let mut samples = Samples::default();
    for r in readers {
        samples.merge(r.await?);
    }
    let spent = meter.finish();
    let delivered = samples.micros.len();
    let missing = (want * n).saturating_sub(delivered + writes.errors as usize * n);
    samples.errors += writes.errors + missing as u64;
    Ok(Row::new(
        "streams",
        "events/s",
        samples,
        delivered as u64,
        ctx.duration.as_secs_f64(),
        spent,
        format!(
            "{n} WatchEvents streams of the retailer over {} connections, {rate} updates/s \
             (each to every stream); hub RSS {open_rss:.0} MB with the streams open; \
             {missing} missing",
            n.div_ceil(100)
        ),
    ))
}

/// Two more hubs on the database at `url` (logs `{name}2.log`, `{name}3.log`), once
/// the first hub's queue is drained; with connections to all three, the first hub's
/// first.
async fn two_more_hubs(
    ctx: &Ctx,
    url: &str,
    logs: &std::path::Path,
    name: &str,
) -> anyhow::Result<(Vec<crate::procs::Hub>, Vec<Conns>)> {
    ctx.drain().await?;
    let mut extra = vec![];
    for i in 2..=3 {
        extra.push(
            crate::procs::Hub::start(url, "info", logs.join(format!("{name}{i}.log")), &[]).await?,
        );
    }
    let mut all = vec![Conns::open(&ctx.hub_addr, 2).await?];
    for hub in &extra {
        all.push(Conns::open(&hub.addr, 2).await?);
    }
    Ok((extra, all))
}

/// `concurrency` updaters for `duration`, spread round-robin over `all` hubs, each
/// update with a request id; a call that fails on one hub is retried on the next with
/// the same id (counted in `retried`).
fn spread_updates(
    ctx: &Ctx,
    all: Arc<Vec<Conns>>,
    duration: Duration,
    retried: Arc<AtomicU64>,
) -> impl Future<Output = (Samples, f64)> + use<> {
    let key = ctx.fx.vendor.admin_key.clone();
    let names = Arc::new(ctx.fx.customers[..ctx.fx.granted.max(1)].to_vec());
    let concurrency = ctx.concurrency;
    let per_worker = (names.len() / concurrency).max(1);
    closed_loop(concurrency, Duration::ZERO, duration, move |w, i| {
        let (all, key, retried) = (all.clone(), key.clone(), retried.clone());
        let name = names[(w + concurrency * (i as usize % per_worker)) % names.len()].clone();
        async move {
            let request_id = uuid::Uuid::new_v4().to_string();
            let mut last = None;
            for k in 0..all.len() {
                let conns = &all[(w + i as usize + k) % all.len()];
                let mut request = update(name.clone(), String::new(), format!("R{w}x{i}"));
                request.request_id = request_id.clone();
                match conns.customers(w, &key).update_customer(request).await {
                    Ok(_) => return Ok(()),
                    Err(s) => {
                        retried.fetch_add(1, Ordering::SeqCst);
                        last = Some(s);
                    }
                }
            }
            Err(last.expect("a failure"))
        }
    })
}

/// The same updates (request ids, round-robin) on the first hub alone, then on three
/// hubs of one PostgreSQL database, nobody killed: what a second and third replica add
/// (the "three hubs / one hub"). The CPU column is the first hub only.
pub async fn scale_out(ctx: &Ctx, url: &str, logs: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let (extra, all) = two_more_hubs(ctx, url, logs, "scale").await?;
    let mut rows = vec![];
    for (scenario, hubs) in [("one_hub", 1), ("three_hubs", 3)] {
        let conns: Vec<Conns> = all[..hubs].to_vec();
        let retried = Arc::new(AtomicU64::new(0));
        let meter = Meter::start(Some(ctx.hub_pid));
        let (samples, secs) =
            spread_updates(ctx, Arc::new(conns), ctx.duration, retried.clone()).await;
        let spent = meter.finish();
        let n = samples.micros.len() as u64;
        rows.push(Row::new(
            scenario,
            "upd/s",
            samples,
            n,
            secs,
            spent,
            format!(
                "UpdateCustomer with a request id, round-robin over {hubs} hub(s) of one database \
                 (the others idle), {} calls retried; the CPU column is the first hub only",
                retried.load(Ordering::SeqCst)
            ),
        ));
        ctx.drain().await?;
    }
    for hub in extra {
        hub.stop().await;
    }
    Ok(rows)
}

/// Three hubs on one PostgreSQL database: `concurrency` updaters spread round-robin
/// over them, the third killed with SIGKILL halfway; a call that fails on a dead hub
/// is retried on the next with the same request id. Then checks the vendor's feed is
/// gapless and every event of the run reached the vendor's endpoint.
pub async fn replicas(ctx: &Ctx, url: &str, logs: &std::path::Path) -> anyhow::Result<Row> {
    let (mut extra, all) = two_more_hubs(ctx, url, logs, "replica").await?;
    let all = Arc::new(all);
    let key = ctx.fx.vendor.admin_key.clone();
    let before = seed::head(&ctx.fx.conns, &key).await?;
    let from = ctx.receiver.len();
    let retried = Arc::new(AtomicU64::new(0));
    let load = spread_updates(ctx, all.clone(), ctx.duration, retried.clone());
    let meter = Meter::start(Some(ctx.hub_pid));
    let victim = extra.pop().expect("a third hub");
    let kill = async {
        tokio::time::sleep(ctx.duration / 2).await;
        let mut child = victim.child;
        let _ = child.start_kill();
        let _ = child.wait().await;
    };
    let ((samples, secs), ()) = tokio::join!(load, kill);
    let spent = meter.finish();
    // The feed: gapless from before the run to its head.
    let mut sequences = vec![];
    let mut after = before;
    loop {
        let page = ctx
            .fx
            .conns
            .events(0, &ctx.fx.vendor.admin_key)
            .list_events(pb::ListEventsRequest {
                after_sequence: after,
                page_size: 1000,
                ..Default::default()
            })
            .await?
            .into_inner();
        if page.events.is_empty() {
            break;
        }
        after = page.events.last().map_or(after, |e| e.sequence);
        sequences.extend(page.events.into_iter().map(|e| (e.sequence, e.id)));
    }
    let gapless = sequences
        .iter()
        .enumerate()
        .all(|(k, (s, _))| *s == before + 1 + k as i64);
    // Deliveries: every event of the run at least once (the dead hub's leases run
    // out first, 40 s with the default timeout).
    let want: std::collections::HashSet<&str> =
        sequences.iter().map(|(_, id)| id.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (delivered, twice) = loop {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for h in ctx
            .receiver
            .since(from)
            .iter()
            .filter(|h| h.path == "/hooks/vendor")
        {
            *seen.entry(h.event_id.clone()).or_default() += 1;
        }
        let delivered = want.iter().filter(|id| seen.contains_key(**id)).count();
        if delivered == want.len() || Instant::now() > deadline {
            break (delivered, seen.values().filter(|n| **n > 1).count());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for hub in extra {
        hub.stop().await;
    }
    let n = samples.micros.len() as u64;
    Ok(Row::new(
        "replicas",
        "upd/s",
        samples,
        n,
        secs,
        spent,
        format!(
            "3 hubs on one database, round-robin, the third SIGKILLed after {:.1} s; \
             {} calls moved to another hub; vendor feed {} ({} events); {delivered} of \
             them delivered, {twice} twice; the CPU column is the first hub only",
            ctx.duration.as_secs_f64() / 2.0,
            retried.load(Ordering::SeqCst),
            if gapless { "gapless" } else { "HAS GAPS" },
            sequences.len(),
        ),
    ))
}

/// Runs `call` `n` times one after another (each alone on the hub) and returns its
/// row: single-call latency, not throughput under load.
async fn one_at_a_time<F, Fut>(
    ctx: &Ctx,
    scenario: &str,
    n: usize,
    note: String,
    mut call: F,
) -> Row
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    let meter = Meter::start(Some(ctx.hub_pid));
    let mut samples = Samples::default();
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        match call().await {
            Ok(()) => samples.micros.push(t.elapsed().as_micros() as u64),
            Err(e) => {
                samples.errors += 1;
                samples.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let ops = samples.micros.len() as u64;
    Row::new(scenario, "req/s", samples, ops, secs, meter.finish(), note)
}

/// Segments over the vendor's customers: one of 1 in 100 (`tag = vip`) and one of
/// every customer (`kind = PERSON`); counted and their first page listed, one call at
/// a time.
pub async fn segments(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let conns = ctx.conns();
    let vendor = &ctx.fx.vendor;
    let mut rows = vec![];
    for (label, filter) in [("vip", "tag = vip"), ("all", "kind = PERSON")] {
        let segment = conns
            .sharing(0, &vendor.admin_key)
            .create_segment(pb::CreateSegmentRequest {
                parent: vendor.name.clone(),
                segment: Some(pb::Segment {
                    display_name: label.into(),
                    filter: filter.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        let count = conns
            .sharing(0, &vendor.read_key)
            .count_segment_members(pb::CountSegmentMembersRequest {
                name: segment.name.clone(),
            })
            .await?
            .into_inner()
            .count;
        let client = conns.sharing(0, &vendor.read_key);
        let name = segment.name.clone();
        rows.push(
            one_at_a_time(
                ctx,
                &format!("segment_count_{label}"),
                20,
                format!("`{filter}`: {count} members; CountSegmentMembers, one at a time"),
                || {
                    let (mut client, name) = (client.clone(), name.clone());
                    async move {
                        client
                            .count_segment_members(pb::CountSegmentMembersRequest { name })
                            .await
                            .map(|_| ())
                    }
                },
            )
            .await,
        );
        rows.push(
            one_at_a_time(
                ctx,
                &format!("segment_page_{label}"),
                50,
                format!("`{filter}`: ListSegmentMembers, first page of 50, one at a time"),
                || {
                    let (mut client, name) = (client.clone(), name.clone());
                    async move {
                        client
                            .list_segment_members(pb::ListSegmentMembersRequest {
                                name,
                                page_size: 50,
                                page_token: String::new(),
                            })
                            .await
                            .map(|_| ())
                    }
                },
            )
            .await,
        );
    }
    Ok(rows)
}

/// A partner reads customers shared with it by a rule over every customer in a
/// segment (`kind = PERSON`, which holds them all), as `get_customer` reads them
/// through grants. Also times creating the rule, and a rule over every customer
/// without a segment.
pub async fn get_by_rule(ctx: &Ctx) -> anyhow::Result<Row> {
    let conns = ctx.conns();
    let vendor = &ctx.fx.vendor;
    let ruled = seed::create_org(&conns, &ctx.fx.operator, "ruled").await?;
    seed::partner(&conns, vendor, &ruled).await?;
    let segment = conns
        .sharing(0, &vendor.admin_key)
        .create_segment(pb::CreateSegmentRequest {
            parent: vendor.name.clone(),
            segment: Some(pb::Segment {
                display_name: "People".into(),
                filter: "kind = PERSON".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    let mut created_ms = vec![];
    for (segment, label) in [(String::new(), "every customer"), (segment.name, "segment")] {
        let t = Instant::now();
        let rule = conns
            .sharing(0, &vendor.admin_key)
            .create_sharing_rule(pb::CreateSharingRuleRequest {
                parent: vendor.name.clone(),
                sharing_rule: Some(pb::SharingRule {
                    display_name: label.into(),
                    segment,
                    grantee: ruled.name.clone(),
                    level: pb::AccessLevel::Read as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        created_ms.push(format!("{label} {:.1} ms", t.elapsed().as_secs_f64() * 1e3));
        if label == "every customer" {
            // Measure reads through the segment's rule alone.
            conns
                .sharing(0, &vendor.admin_key)
                .revoke_sharing_rule(pb::RevokeSharingRuleRequest {
                    name: rule.name,
                    ..Default::default()
                })
                .await?;
        }
    }
    let mut row = gets(ctx, conns, &ruled.read_key, ctx.hub_pid, "get_by_rule").await;
    row.note = format!(
        "{}; a partner reads customers a rule over a segment shares (no grants); CreateSharingRule over {} customers: {}",
        row.note,
        ctx.fx.customers.len(),
        created_ms.join(", ")
    );
    Ok(row)
}

/// An account mapping between the vendor (its segment of every person: all its
/// customers) and the retailer (its segment of every person it sees: the customers
/// granted to it): the comparison's time from AcceptAccountMapping to a finished
/// operation, and the hub's peak memory while it ran. Then the retailer asks for the
/// vendor's matching records (the vendor owns them all; the retailer's own none) with
/// one RequestOverlapAccess (1,000 access requests), and the vendor approves them with
/// one AnswerOverlapAccess (the retailer's grants give what was asked already, so each
/// approval keeps its grant).
pub async fn mapping(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    use liaison::google::longrunning::{GetOperationRequest, operation::Result as Outcome};
    let conns = ctx.conns();
    let (vendor, retail) = (&ctx.fx.vendor, &ctx.fx.retail);
    let mut segments = vec![];
    for org in [vendor, retail] {
        let s = conns
            .sharing(0, &org.admin_key)
            .create_segment(pb::CreateSegmentRequest {
                parent: org.name.clone(),
                segment: Some(pb::Segment {
                    display_name: "People".into(),
                    filter: "kind = PERSON".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        segments.push(s.name);
    }
    let t = Instant::now();
    let m = conns
        .mappings(0, &vendor.admin_key)
        .create_account_mapping(pb::CreateAccountMappingRequest {
            account_mapping: Some(pb::AccountMapping {
                partner: retail.name.clone(),
                requester_segments: vec![pb::MappingSegment {
                    segment: segments[0].clone(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    let create_ms = t.elapsed().as_secs_f64() * 1e3;
    let meter = Meter::start(Some(ctx.hub_pid));
    let t = Instant::now();
    let op = conns
        .mappings(0, &retail.admin_key)
        .accept_account_mapping(pb::AcceptAccountMappingRequest {
            name: m.name.clone(),
            segments: vec![segments[1].clone()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let accept_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut ops = conns.operations(0, &vendor.read_key);
    let done = loop {
        let o = ops
            .get_operation(GetOperationRequest {
                name: op.name.clone(),
            })
            .await?
            .into_inner();
        if o.done {
            break o;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seconds = t.elapsed().as_secs_f64();
    let spent = meter.finish();
    if let Some(Outcome::Error(e)) = &done.result {
        anyhow::bail!("the comparison failed: {}", e.message);
    }
    let read = done
        .metadata
        .as_ref()
        .and_then(|a| <pb::OperationMetadata as prost::Message>::decode(a.value.as_slice()).ok())
        .map_or(0, |m| m.done);
    let mapping = conns
        .mappings(0, &vendor.read_key)
        .get_account_mapping(pb::GetAccountMappingRequest {
            name: m.name.clone(),
        })
        .await?
        .into_inner();
    let both = mapping
        .overlaps
        .first()
        .and_then(|o| o.both)
        .map_or(0, |c| c.value);
    let samples = Samples {
        micros: vec![(seconds * 1e6) as u64],
        errors: 0,
        first_error: None,
    };
    let mut rows = vec![Row::new(
        "mapping_compare",
        "records/s",
        samples,
        read as u64,
        seconds,
        spent,
        format!(
            "AcceptAccountMapping to a finished comparison: {read} records read on both sides, {both} in both; CreateAccountMapping {create_ms:.0} ms (checks the segment's size), AcceptAccountMapping {accept_ms:.0} ms"
        ),
    )];
    let timed = async |label: &str,
                       call: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<i64, Status>> + '_>,
    >| {
        let meter = Meter::start(Some(ctx.hub_pid));
        let t = Instant::now();
        let result = call.await;
        let seconds = t.elapsed().as_secs_f64();
        let n = result.as_ref().map_or(0, |n| *n);
        Row::new(
            label,
            "records/s",
            Samples {
                micros: vec![(seconds * 1e6) as u64],
                errors: u64::from(result.is_err()),
                first_error: result.err().map(|e| e.to_string()),
            },
            n as u64,
            seconds,
            meter.finish(),
            format!("one call, {n} records"),
        )
    };
    let mut asker = conns.mappings(0, &retail.admin_key);
    rows.push(
        timed(
            "mapping_request_access",
            Box::pin(async {
                asker
                    .request_overlap_access(pb::RequestOverlapAccessRequest {
                        name: m.name.clone(),
                        segment: segments[1].clone(),
                        partner_segment: segments[0].clone(),
                        level: pb::AccessLevel::Read as i32,
                        reason: "benchmark".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().requested)
            }),
        )
        .await,
    );
    let mut answerer = conns.mappings(0, &vendor.admin_key);
    rows.push(
        timed(
            "mapping_answer_access",
            Box::pin(async {
                answerer
                    .answer_overlap_access(pb::AnswerOverlapAccessRequest {
                        name: m.name.clone(),
                        approve: true,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().answered)
            }),
        )
        .await,
    );
    Ok(rows)
}

/// Runs `sql` on the hub's database directly (history no API can backdate).
async fn execute(url: &str, sql: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await?;
        sqlx::raw_sql(sql).execute(&mut conn).await?;
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::raw_sql(sql).execute(&mut conn).await?;
    }
    Ok(())
}

async fn one_text(url: &str, sql: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let (value,): (String,) = if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await?;
        sqlx::query_as(sql).fetch_one(&mut conn).await?
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::query_as(sql).fetch_one(&mut conn).await?
    };
    Ok(value)
}

/// A partner scorecard for a quarter holding `cases` service cases between the
/// vendor and the retailer (each opened by the retailer, answered and closed), seeded
/// straight into the database across Q3 2026 with the partnership backdated to its
/// start: the hub's job aggregates and keeps every day from then to yesterday (timed
/// until the quarter reads), then reads merge the quarter's 92 kept days.
pub async fn scorecard(ctx: &Ctx, cases: usize) -> anyhow::Result<Vec<Row>> {
    let conns = ctx.conns();
    let (vendor, retail) = (&ctx.fx.vendor, &ctx.fx.retail);
    let url = &ctx.db_url;
    let id_of = async |org: &Org| {
        let slug = org.name.trim_start_matches("organizations/").to_owned();
        one_text(
            url,
            &format!("SELECT id FROM organizations WHERE slug = '{slug}'"),
        )
        .await
    };
    let (v, r) = (id_of(vendor).await?, id_of(retail).await?);
    let partnership = conns
        .partnerships(0, &vendor.read_key)
        .list_partnerships(pb::ListPartnershipsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .partnerships
        .remove(0)
        .name;
    let pid = partnership.trim_start_matches("partnerships/").to_owned();
    let customer = ctx.fx.customers[0]
        .trim_start_matches("customers/")
        .to_owned();
    // Q3 2026 in UTC microseconds, the cases spread evenly across it.
    let start: i64 = 1_782_864_000_000_000; // 2026-07-01T00:00:00Z
    let end: i64 = 1_790_812_800_000_000; // 2026-10-01T00:00:00Z
    let step = (end - start) / cases as i64;
    let t = Instant::now();
    let seed = format!(
        "UPDATE partnerships SET create_time = {start} - 86400000000 WHERE id = '{pid}';
         CREATE TABLE bench_n AS WITH RECURSIVE n(i) AS (SELECT CAST(0 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < {last}) SELECT i FROM n;
         INSERT INTO cases (id, template, state, title, description, priority, customer_id, fields,
             escalation_contacts, opened_by, closed, breached, due_time, create_time, update_time,
             state_time, revision)
           SELECT 'bench-' || i, 'service_case', 'closed', 'Bench case', '', 'normal', '{customer}', '{{}}',
             '[]', '{r}', 1, 0, NULL, {start} + i * {step}, {start} + i * {step} + 7200000000,
             {start} + i * {step} + 7200000000, 3 FROM bench_n;
         INSERT INTO case_participants (case_id, organization_id, role, add_time)
           SELECT 'bench-' || i, '{r}', 'retailer', {start} + i * {step} FROM bench_n;
         INSERT INTO case_participants (case_id, organization_id, role, add_time)
           SELECT 'bench-' || i, '{v}', 'vendor', {start} + i * {step} FROM bench_n;
         INSERT INTO case_history (id, case_id, kind, organization_id, member_id, transition,
             from_state, to_state, body, visibility, subject, create_time)
           SELECT 'bench-open-' || i, 'bench-' || i, 'case.opened', '{r}', NULL, '', '', 'new', '',
             'participants', '', {start} + i * {step} FROM bench_n;
         INSERT INTO case_history (id, case_id, kind, organization_id, member_id, transition,
             from_state, to_state, body, visibility, subject, create_time)
           SELECT 'bench-start-' || i, 'bench-' || i, 'case.transitioned', '{v}', NULL, 'start',
             'triaged', 'in_progress', '', 'participants', '',
             {start} + i * {step} + 60000000 * (10 + i % 97) FROM bench_n;
         INSERT INTO case_history (id, case_id, kind, organization_id, member_id, transition,
             from_state, to_state, body, visibility, subject, create_time)
           SELECT 'bench-close-' || i, 'bench-' || i, 'case.transitioned', '{r}', NULL, 'close',
             'resolved', 'closed', '', 'participants', '',
             {start} + i * {step} + 7200000000 + 300000000 * (i % 50) FROM bench_n;
         INSERT INTO case_sla_clocks (case_id, policy, target, warn_after, used, phase, phase_time,
             warn_time, breach_time)
           SELECT 'bench-' || i, 'first_response', 28800000000, 21600000000, 0, 'met',
             {start} + i * {step} + 60000000 * (10 + i % 97), NULL,
             CASE WHEN i % 20 = 0 THEN {start} + i * {step} + 28800000000 ELSE NULL END FROM bench_n;
         DROP TABLE bench_n;",
        last = cases - 1,
    );
    execute(url, &seed).await?;
    let seeded = t.elapsed().as_secs_f64();
    let ask = || pb::GetPartnershipScorecardRequest {
        name: partnership.clone(),
        period: pb::ScorecardPeriod::Quarter as i32,
        date: "2026-08-15".into(),
    };
    let mut client = conns.partnerships(0, &vendor.read_key);
    let meter = Meter::start(Some(ctx.hub_pid));
    let t = Instant::now();
    let cold = loop {
        match client.get_partnership_scorecard(ask()).await {
            Ok(card) => break card.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => return Err(s.into()),
        }
    };
    let cold_seconds = t.elapsed().as_secs_f64();
    let cold_spent = meter.finish();
    let days = one_text(
        url,
        &format!(
            "SELECT CAST(COUNT(*) AS TEXT) FROM scorecard_days WHERE partnership_id = '{pid}'"
        ),
    )
    .await?
    .parse::<u64>()?;
    let received = cold.parties.first().map_or(0, |p| p.cases_received);
    if received != cases as i64 || !cold.closed {
        anyhow::bail!(
            "the quarter counted {received} cases (closed: {}), not {cases}",
            cold.closed
        );
    }
    let median = cold.parties[0]
        .first_response
        .as_ref()
        .and_then(|s| s.median)
        .map_or(0, |d| d.seconds);
    let mut rows = vec![Row::new(
        "scorecard_aggregate",
        "days/s",
        Samples {
            micros: vec![(cold_seconds * 1e6) as u64],
            errors: 0,
            first_error: None,
        },
        days,
        cold_seconds,
        cold_spent,
        format!(
            "the job keeps {days} days ({cases} cases in Q3, seeded in {seeded:.0} s) until the quarter reads (rounds every 2 s, 100 days a round, included); first-response median {median} s"
        ),
    )];
    let meter = Meter::start(Some(ctx.hub_pid));
    let mut micros = vec![];
    let t = Instant::now();
    for _ in 0..100 {
        let one = Instant::now();
        let warm = client.get_partnership_scorecard(ask()).await?.into_inner();
        micros.push(one.elapsed().as_micros() as u64);
        if warm != cold {
            anyhow::bail!("a kept quarter reads differently from its first read");
        }
    }
    let seconds = t.elapsed().as_secs_f64();
    rows.push(Row::new(
        "scorecard_warm",
        "reads/s",
        Samples {
            micros,
            errors: 0,
            first_error: None,
        },
        100,
        seconds,
        meter.finish(),
        format!(
            "100 reads, one after another, of the same quarter ({cases} cases) from its kept days"
        ),
    ));
    Ok(rows)
}
