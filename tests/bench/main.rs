//! The hub under load: `cargo bench --bench hub [-- OPTIONS]`.
//!
//! Starts the release-built `liaison serve` as a separate process on a fresh SQLite or
//! PostgreSQL database, seeds it over gRPC, and drives it from this process (tonic
//! clients over a few HTTP/2 connections; the webhook receiver runs here too). Prints
//! a table, or JSON with `--json`, of throughput, latency percentiles, the hub's CPU
//! and peak RSS per scenario. `BENCHMARKS.md` records a run and explains the figures.
//!
//! ```text
//! cargo bench --bench hub                                  # SQLite, every scenario
//! cargo bench --bench hub -- --backend postgres --json     # PostgreSQL, JSON
//! cargo bench --bench hub -- --scenarios get_customer,list_customers --customers 1000000
//! ```

mod ceiling;
mod dbwork;
mod http;
mod load;
mod peers;
mod procs;
mod scenarios;
mod seed;

use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::scenarios::{Ctx, Row};

const ALL: &[&str] = &[
    "baseline_echo",
    "get_customer",
    "get_customer_http",
    "get_by_rule",
    "segments",
    "mapping",
    "list_customers",
    "update_customer",
    "update_customer_http",
    "log_interaction",
    "batch_upsert",
    "scorecard",
    "watch_latency",
    "webhook_latency",
    "webhook_throughput",
    "fan_out",
    "streams",
    "scale_out",
    "replicas",
    "db_ceiling",
];

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Parser, Debug)]
#[command(about = "Benchmarks a release-built hub in a separate process")]
struct Args {
    /// The database the hub runs on.
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// The PostgreSQL server; each run creates (and drops) a database of its own.
    #[arg(
        long,
        env = "LIAISON_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Customers seeded before the scenarios.
    #[arg(long, default_value_t = 10_000)]
    customers: usize,
    /// How many of them are granted to the partner (one CreateGrant each); all by default.
    #[arg(long)]
    grants: Option<usize>,
    /// Measured seconds per scenario (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent calls in the closed-loop scenarios.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Comma-separated scenarios to run [default: all].
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// WatchEvents streams held open in `streams`.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Updates per second while the streams are open.
    #[arg(long, default_value_t = 20)]
    stream_rate: u64,
    /// Cases in the quarter `scorecard` reads.
    #[arg(long, default_value_t = 100_000)]
    scorecard_cases: usize,
    /// Organizations in `fan_out`.
    #[arg(long, default_value_t = 100)]
    fan_out: usize,
    /// Extra hub settings, `LIAISON_…=VALUE` (repeatable), e.g.
    /// `--hub-env LIAISON_WEBHOOKS_MAX_IN_FLIGHT_PER_ENDPOINT=32`.
    #[arg(long, value_parser = parse_env)]
    hub_env: Vec<(String, String)>,
    /// The hub's log level (`LIAISON_LOG`); its log goes to a file.
    #[arg(long, default_value = "info")]
    hub_log: String,
    /// Copy the hubs' logs into this directory when the run ends.
    #[arg(long)]
    keep_logs: Option<std::path::PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Internal: run as the echo server.
    #[arg(long, hide = true)]
    serve_echo: bool,
}

#[derive(Serialize)]
struct Report {
    backend: Backend,
    customers: usize,
    granted: usize,
    seed_seconds: f64,
    hub_idle_rss_mb: f64,
    hub_seeded_rss_mb: f64,
    rows: Vec<Row>,
    ratios: Vec<(String, f64)>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_echo {
        return peers::serve_echo();
    }
    for s in &args.scenarios {
        if !ALL.contains(&s.as_str()) {
            anyhow::bail!("unknown scenario {s:?}; known: {}", ALL.join(", "));
        }
    }
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if k.starts_with("LIAISON_") => Ok((k.into(), v.into())),
        _ => Err(format!("expected LIAISON_NAME=VALUE, got {s:?}")),
    }
}

fn wanted(args: &Args, scenario: &str) -> bool {
    args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == scenario)
}

fn progress(args: &Args, what: &str) {
    if !args.json {
        eprintln!("· {what}");
    }
}

/// Says how many warnings and errors the hubs logged (a run whose hub warned is not
/// a clean measurement), with the most frequent messages.
fn report_log_warnings(args: &Args, logs: &std::path::Path) {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let level = v["level"].as_str().unwrap_or_default();
            if level == "WARN" || level == "ERROR" {
                let message = v["message"].as_str().unwrap_or_default();
                let error = v["error"].as_str().unwrap_or_default();
                *counts
                    .entry(format!("{level} {message}: {error}"))
                    .or_default() += 1;
            }
        }
    }
    let total: usize = counts.values().sum();
    progress(args, &format!("hub logs: {total} warnings or errors"));
    let mut top: Vec<_> = counts.into_iter().collect();
    top.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (what, n) in top.into_iter().take(5) {
        progress(
            args,
            &format!("  {n} × {}", what.chars().take(200).collect::<String>()),
        );
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let postgres = matches!(args.backend, Backend::Postgres).then_some(args.postgres_url.as_str());
    let db = procs::Database::create(postgres).await?;
    let url = db.url();
    let logs = tempfile::tempdir()?;
    let result = measure(&args, &url, logs.path()).await;
    report_log_warnings(&args, logs.path());
    if let Some(keep) = &args.keep_logs {
        std::fs::create_dir_all(keep)?;
        for entry in std::fs::read_dir(logs.path())?.flatten() {
            std::fs::copy(entry.path(), keep.join(entry.file_name()))?;
        }
    }
    if let Some(dir) = db.dir() {
        let _ = std::fs::remove_dir_all(dir);
    }
    db.drop_now().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn measure(args: &Args, url: &str, logs: &std::path::Path) -> anyhow::Result<Report> {
    progress(args, &format!("hub {} on {:?}", procs::HUB, args.backend));
    let operator = procs::bootstrap(url).await?;
    let hub = procs::Hub::start(
        url,
        &args.hub_log,
        logs.join("hub.log"),
        &args
            .hub_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            // `scorecard` waits for the job to keep the days it seeds.
            .chain([("LIAISON_SCORECARDS_AGGREGATE_INTERVAL_SECS", "2")])
            .collect::<Vec<_>>(),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hub_idle_rss_mb = load::status_mb(hub.pid, "VmRSS:");
    let receiver = peers::Receiver::start().await?;
    let conns = seed::Conns::open(&hub.addr, seed::CONNECTIONS).await?;
    progress(args, &format!("seeding {} customers", args.customers));
    let grants = args.grants.unwrap_or(args.customers);
    let fx = seed::seed(conns, operator, args.customers, grants, &receiver.base).await?;
    progress(args, &format!("seeded in {:.0} s", fx.seed_seconds));
    let ctx = Ctx {
        fx,
        db_url: url.to_owned(),
        receiver,
        hub_pid: hub.pid,
        hub_addr: hub.addr.clone(),
        concurrency: args.concurrency,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(args.seconds),
    };
    ctx.drain().await?;
    let hub_seeded_rss_mb = load::status_mb(hub.pid, "VmRSS:");
    let mut rows = vec![];
    // PostgreSQL: the database's work per scenario (each measurement waits for the
    // hub's backends to flush their counts).
    let dbwork = dbwork::DbWork::connect(url).await?;
    let mut mark = match &dbwork {
        Some(d) => Some(d.start().await?),
        None => None,
    };
    if wanted(args, "baseline_echo") {
        progress(args, "baseline_echo");
        let (echo, addr, pid) = procs::start_echo().await?;
        rows.push(scenarios::baseline_echo(&ctx, &addr, pid).await?);
        drop(echo);
    }
    macro_rules! scenario {
        ($name:literal, $call:expr) => {
            if wanted(args, $name) {
                progress(args, $name);
                let mut row = $call.await?;
                if let (Some(d), Some(m)) = (&dbwork, mark.take()) {
                    let (work, next) = d.since(m).await?;
                    row.db = Some(work);
                    mark = Some(next);
                }
                rows.push(row);
            }
        };
    }
    scenario!("get_customer", scenarios::get_customer(&ctx));
    let grpc = rows.iter().find(|r| r.scenario == "get_customer").cloned();
    scenario!(
        "get_customer_http",
        http::get_customer_http(&ctx, grpc.as_ref())
    );
    scenario!("get_by_rule", scenarios::get_by_rule(&ctx));
    if wanted(args, "segments") {
        progress(args, "segments");
        rows.extend(scenarios::segments(&ctx).await?);
        // Its database work is not counted, nor left to the next scenario's.
        if let (Some(d), Some(m)) = (&dbwork, mark.take()) {
            mark = Some(d.since(m).await?.1);
        }
    }
    if wanted(args, "mapping") {
        progress(args, "mapping");
        rows.extend(scenarios::mapping(&ctx).await?);
        if let (Some(d), Some(m)) = (&dbwork, mark.take()) {
            mark = Some(d.since(m).await?.1);
        }
    }
    scenario!("list_customers", scenarios::list_customers(&ctx));
    scenario!("update_customer", scenarios::update_customer(&ctx));
    let grpc = rows
        .iter()
        .find(|r| r.scenario == "update_customer")
        .cloned();
    scenario!(
        "update_customer_http",
        http::update_customer_http(&ctx, grpc.as_ref())
    );
    scenario!("log_interaction", scenarios::log_interaction(&ctx));
    scenario!("batch_upsert", scenarios::batch_upsert(&ctx));
    if wanted(args, "scorecard") {
        progress(args, "scorecard (seeding a quarter of cases)");
        rows.extend(scenarios::scorecard(&ctx, args.scorecard_cases).await?);
        if let (Some(d), Some(m)) = (&dbwork, mark.take()) {
            mark = Some(d.since(m).await?.1);
        }
    }
    // The latency targets hold at a fixed rate, or at 80 % of the update throughput
    // this run measured where that is lower (a rate the hub cannot sustain measures
    // its queue, not its latency).
    let sustainable = |rate: u64| {
        rows.iter()
            .find(|r| r.scenario == "update_customer")
            .map_or(rate, |r| rate.min((r.throughput * 0.8) as u64).max(1))
    };
    let (watch_rate, webhook_rate) = (sustainable(1000), sustainable(500));
    scenario!("watch_latency", scenarios::watch_latency(&ctx, watch_rate));
    scenario!(
        "webhook_latency",
        scenarios::webhook_latency(&ctx, webhook_rate)
    );
    scenario!(
        "webhook_throughput",
        scenarios::webhook_throughput(&ctx, 9, 2000)
    );
    scenario!("fan_out", scenarios::fan_out(&ctx, args.fan_out, 20));
    scenario!(
        "streams",
        scenarios::streams(&ctx, args.streams, args.stream_rate)
    );
    // The scenarios with several hubs start hubs of their own; their database work is
    // not counted.
    drop(mark);
    if wanted(args, "scale_out") && matches!(args.backend, Backend::Postgres) {
        progress(args, "scale_out");
        rows.extend(scenarios::scale_out(&ctx, url, logs).await?);
    }
    if wanted(args, "replicas") && matches!(args.backend, Backend::Postgres) {
        progress(args, "replicas");
        rows.push(scenarios::replicas(&ctx, url, logs).await?);
    }
    let granted = ctx.fx.granted;
    let seed_seconds = ctx.fx.seed_seconds;
    drop(ctx);
    hub.stop().await;
    if matches!(args.backend, Backend::Postgres) {
        // Events committed and never numbered would wait here: every hub has stopped
        // (and `db_ceiling`, which adds inbox rows of its own, has not run yet).
        let pool = sqlx::PgPool::connect(url).await?;
        let left: (i64,) = sqlx::query_as("SELECT count(*) FROM event_inbox")
            .fetch_one(&pool)
            .await
            .unwrap_or((-1,));
        eprintln!("· event inbox rows left unnumbered: {}", left.0);
        pool.close().await;
    }
    if wanted(args, "db_ceiling") {
        progress(args, "db_ceiling");
        rows.push(
            ceiling::db_ceiling(
                url,
                args.concurrency,
                Duration::from_secs(1),
                Duration::from_secs(args.seconds),
            )
            .await?,
        );
    }
    let ratios = ratios(&rows);
    Ok(Report {
        backend: args.backend,
        customers: args.customers,
        granted,
        seed_seconds,
        hub_idle_rss_mb,
        hub_seeded_rss_mb,
        rows,
        ratios,
    })
}

/// The ratios the targets are stated in, from this run's rows.
fn ratios(rows: &[Row]) -> Vec<(String, f64)> {
    let rate = |name: &str| {
        rows.iter()
            .find(|r| r.scenario == name)
            .map(|r| r.throughput)
    };
    let mut out = vec![];
    if let (Some(get), Some(echo)) = (rate("get_customer"), rate("baseline_echo")) {
        out.push((
            "get_customer / baseline_echo (target ≥ 0.4)".into(),
            get / echo,
        ));
    }
    if let (Some(three), Some(one)) = (rate("three_hubs"), rate("one_hub")) {
        out.push(("three_hubs / one_hub (target ≥ 1.0)".into(), three / one));
    }
    if let (Some(update), Some(ceiling)) = (rate("update_customer"), rate("db_ceiling")) {
        out.push((
            "update_customer / db_ceiling (target ≥ 0.9)".into(),
            update / ceiling,
        ));
    }
    out
}

fn print_table(report: &Report) {
    println!(
        "\nbackend {:?}: {} customers ({} granted), seeded in {:.0} s; hub RSS idle {:.1} MB, seeded {:.1} MB\n",
        report.backend,
        report.customers,
        report.granted,
        report.seed_seconds,
        report.hub_idle_rss_mb,
        report.hub_seeded_rss_mb
    );
    println!(
        "{:<19} {:>9} {:>13} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>8} {:>7}",
        "scenario",
        "ops",
        "throughput",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "errors",
        "hub CPU",
        "hub RSS",
        "gen CPU"
    );
    for r in &report.rows {
        println!(
            "{:<19} {:>9} {:>8.0} {:<4} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>6.0}% {:>5.0} MB {:>6.0}%",
            r.scenario,
            r.operations,
            r.throughput,
            short_unit(r.unit),
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.errors,
            r.spent.hub_cpu_percent,
            r.spent.hub_peak_rss_mb,
            r.spent.loadgen_cpu_percent
        );
    }
    println!();
    for r in &report.rows {
        println!("{:<19} {}", r.scenario, r.note);
        for line in r.db.iter().flat_map(|w| w.lines()) {
            println!("{:<19} {line}", "");
        }
    }
    println!();
    for (what, value) in &report.ratios {
        println!("{what}: {value:.2}");
    }
}

fn short_unit(unit: &str) -> &str {
    unit.split('/').next().unwrap_or(unit)
}
