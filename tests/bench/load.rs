//! The load generator's parts: closed and open loops, latency samples, and what the
//! hub process spent (CPU from `/proc/PID/stat`, peak RSS from `VmHWM`, reset per
//! scenario through `clear_refs`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

/// Latencies in microseconds, and the failures among the calls.
#[derive(Debug, Default)]
pub struct Samples {
    pub micros: Vec<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Samples {
    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn failed(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    /// The `q` quantile (0..=1) in milliseconds; 0 with no samples.
    pub fn quantile_ms(&self, sorted: &[u64], q: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i] as f64 / 1000.0
    }
}

/// Runs `concurrency` workers that call `call(worker, iteration)` back to back for
/// `warmup + duration`; samples only the calls that start after the warmup. Returns
/// the samples and the measured seconds.
pub async fn closed_loop<F, Fut, E>(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    call: F,
) -> (Samples, f64)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut workers = vec![];
    for w in 0..concurrency {
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut i = 0u64;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let result = call(w, i).await;
                i += 1;
                if began < measure_from {
                    continue;
                }
                match result {
                    Ok(()) => samples.micros.push(began.elapsed().as_micros() as u64),
                    Err(e) => samples.failed(e),
                }
            }
            samples
        }));
    }
    let mut all = Samples::default();
    for w in workers {
        all.merge(w.await.expect("load worker"));
    }
    (all, duration.as_secs_f64())
}

/// Calls `call(i)` at `rate` per second for `duration`, whatever the answers' pace
/// (an open loop: a slow hub builds a backlog rather than slowing the load), with at
/// most `max_in_flight` outstanding. Returns the call latencies.
pub async fn open_loop<F, Fut, E>(
    rate: u64,
    duration: Duration,
    max_in_flight: usize,
    call: F,
) -> Samples
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let call = Arc::new(call);
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let total = rate * duration.as_secs();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        let permit = slots.clone().acquire_owned().await.expect("slots");
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let result = call(i).await;
            drop(permit);
            result
                .map(|()| began.elapsed().as_micros() as u64)
                .map_err(|e| e.to_string())
        }));
    }
    let mut samples = Samples::default();
    for t in tasks {
        match t.await.expect("open-loop call") {
            Ok(micros) => samples.micros.push(micros),
            Err(e) => samples.failed(e),
        }
    }
    samples
}

/// CPU time (user + system) of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3; utime and stime
    // are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / clock_ticks() as f64
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`) in MB.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What the hub and this process spent during one scenario.
pub struct Meter {
    hub: Option<u32>,
    hub_cpu: f64,
    own_cpu: f64,
    start: Instant,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spent {
    /// Percent of one core (200 is both cores of this machine).
    pub hub_cpu_percent: f64,
    pub hub_peak_rss_mb: f64,
    pub hub_rss_mb: f64,
    pub loadgen_cpu_percent: f64,
}

impl Meter {
    /// Starts measuring; resets the hub's peak RSS so that `VmHWM` covers this
    /// scenario only.
    pub fn start(hub: Option<u32>) -> Self {
        if let Some(pid) = hub {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
        Meter {
            hub,
            hub_cpu: hub.map_or(0.0, cpu_seconds),
            own_cpu: cpu_seconds(std::process::id()),
            start: Instant::now(),
        }
    }

    pub fn finish(&self) -> Spent {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        let own = cpu_seconds(std::process::id()) - self.own_cpu;
        match self.hub {
            Some(pid) => Spent {
                hub_cpu_percent: (cpu_seconds(pid) - self.hub_cpu) / wall * 100.0,
                hub_peak_rss_mb: status_mb(pid, "VmHWM:"),
                hub_rss_mb: status_mb(pid, "VmRSS:"),
                loadgen_cpu_percent: own / wall * 100.0,
            },
            None => Spent {
                hub_cpu_percent: 0.0,
                hub_peak_rss_mb: 0.0,
                hub_rss_mb: 0.0,
                loadgen_cpu_percent: own / wall * 100.0,
            },
        }
    }
}

/// A small deterministic generator, so runs pick the same customers.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
