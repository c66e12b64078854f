//! Per-caller limits applied at the edge: token buckets per API key (or client
//! certificate) and per organization, and each organization's largest request.
//!
//! Buckets live in this replica's memory: behind a load balancer spreading a
//! partner's calls over N replicas, the partner gets up to N times the configured
//! rate. That is the usual trade (no database round trip per RPC); the README says so.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Caller;
use crate::config::{LimitsConfig, OrganizationLimits};
use crate::domain::Principal;
use crate::domain::error::{Error, Result};

/// Buckets kept before idle (full) ones are dropped; bounds memory under a flood of
/// distinct valid keys.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: f64,
    burst: f64,
}

impl Rate {
    fn new(per_second: f64, burst: u64) -> Option<Self> {
        (per_second > 0.0).then_some(Self {
            per_second,
            burst: burst as f64,
        })
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// When it will be full again if nothing is taken; from then on it is the same
    /// as no bucket and may be dropped.
    full_at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            updated: now,
            full_at: now,
        }
    }

    fn take(&mut self, rate: Rate) {
        self.tokens -= 1.0;
        self.full_at =
            self.updated + Duration::from_secs_f64((rate.burst - self.tokens) / rate.per_second);
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.updated = now;
    }

    /// How long until one token is there (zero if one is there now).
    fn wait(&self, rate: Rate) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / rate.per_second)
        }
    }
}

pub struct Limiter {
    config: LimitsConfig,
    max_message_bytes: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(config: &LimitsConfig, max_message_bytes: usize) -> Self {
        Self {
            config: config.clone(),
            max_message_bytes,
            buckets: Mutex::default(),
        }
    }

    fn overrides(&self, caller: &Caller) -> Option<&OrganizationLimits> {
        match &caller.principal {
            Principal::Organization(org) => self.config.organizations.get(org.slug.as_str()),
            Principal::Operator => None,
        }
    }

    /// Takes a token from the caller's key bucket and its organization's bucket, or
    /// neither: `Throttled` with the time until both have one.
    pub fn admit(&self, caller: &Caller) -> Result<()> {
        self.admit_at(caller, Instant::now())
    }

    fn admit_at(&self, caller: &Caller, now: Instant) -> Result<()> {
        let own = self.overrides(caller);
        let c = &self.config;
        let key_rate = Rate::new(
            own.and_then(|o| o.key_requests_per_second)
                .unwrap_or(c.key_requests_per_second),
            own.and_then(|o| o.key_burst).unwrap_or(c.key_burst),
        );
        let org_rate = match &caller.principal {
            Principal::Organization(_) => Rate::new(
                own.and_then(|o| o.organization_requests_per_second)
                    .unwrap_or(c.organization_requests_per_second),
                own.and_then(|o| o.organization_burst)
                    .unwrap_or(c.organization_burst),
            ),
            Principal::Operator => None,
        };
        let org_key = match &caller.principal {
            Principal::Organization(org) => format!("org:{}", org.id),
            Principal::Operator => String::new(),
        };
        let wanted: Vec<(String, Rate)> = [
            key_rate.map(|r| (format!("key:{}", caller.key_id), r)),
            org_rate.map(|r| (org_key, r)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| b.full_at > now);
        }
        let (mut wait, mut limited) = (Duration::ZERO, "key");
        for (key, rate) in &wanted {
            let bucket = buckets
                .entry(key.clone())
                .or_insert_with(|| Bucket::full(*rate, now));
            bucket.refill(*rate, now);
            if bucket.wait(*rate) > wait {
                wait = bucket.wait(*rate);
                limited = if key.starts_with("org:") {
                    "organization"
                } else {
                    "key"
                };
            }
        }
        if wait > Duration::ZERO {
            crate::metrics::metrics().rate_limited.inc();
            return Err(Error::Throttled {
                message: format!(
                    "rate limit reached for this {limited}; retry in {} ms",
                    wait.as_millis().max(1)
                ),
                retry_after: wait,
            });
        }
        for (key, rate) in &wanted {
            if let Some(bucket) = buckets.get_mut(key) {
                bucket.take(*rate);
            }
        }
        Ok(())
    }

    /// The largest request body the caller may send, framing included.
    pub fn max_request_bytes(&self, caller: &Caller) -> usize {
        self.overrides(caller)
            .and_then(|o| o.max_request_bytes)
            .map_or(self.max_message_bytes, |n| n as usize)
    }

    /// The organization's own cap on open WatchEvents streams, if it has one.
    pub fn max_streams(&self, slug: &str) -> Option<usize> {
        self.config
            .organizations
            .get(slug)
            .and_then(|o| o.max_streams)
            .map(|n| n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OrgRef, Scope, Scopes, Slug};

    fn caller(key: &str, org: &str) -> Caller {
        Caller {
            key_id: key.into(),
            principal: Principal::Organization(OrgRef {
                id: format!("id-{org}"),
                slug: Slug::parse(org).unwrap(),
            }),
            scopes: Scopes::new(vec![Scope::Read]).unwrap(),
        }
    }

    fn config() -> LimitsConfig {
        LimitsConfig {
            key_requests_per_second: 2.0,
            key_burst: 3,
            organization_requests_per_second: 4.0,
            organization_burst: 5,
            ..Default::default()
        }
    }

    #[test]
    fn a_burst_is_served_then_refused_until_tokens_return() {
        let limiter = Limiter::new(&config(), 1024);
        let t0 = Instant::now();
        let a = caller("k1", "acme");
        for _ in 0..3 {
            limiter.admit_at(&a, t0).unwrap();
        }
        let Err(Error::Throttled { retry_after, .. }) = limiter.admit_at(&a, t0) else {
            panic!("the fourth call in the same instant is refused");
        };
        assert_eq!(retry_after, Duration::from_millis(500));
        // Half a second later one token is back.
        limiter
            .admit_at(&a, t0 + Duration::from_millis(500))
            .unwrap();
        assert!(
            limiter
                .admit_at(&a, t0 + Duration::from_millis(500))
                .is_err()
        );
    }

    #[test]
    fn the_organization_bucket_spans_its_keys_and_spares_others() {
        let limiter = Limiter::new(&config(), 1024);
        let t0 = Instant::now();
        for key in ["k1", "k1", "k1", "k2", "k2"] {
            limiter.admit_at(&caller(key, "acme"), t0).unwrap();
        }
        let refused = limiter.admit_at(&caller("k3", "acme"), t0).unwrap_err();
        assert!(refused.to_string().contains("organization"), "{refused}");
        limiter.admit_at(&caller("k4", "bigshop"), t0).unwrap();
    }

    #[test]
    fn only_buckets_that_are_full_again_are_dropped() {
        let limiter = Limiter::new(&config(), 1024);
        let t0 = Instant::now();
        limiter.admit_at(&caller("k1", "acme"), t0).unwrap();
        let buckets = limiter.buckets.lock().unwrap();
        // One token taken at 2 per second: full again after half a second.
        assert_eq!(buckets["key:k1"].full_at, t0 + Duration::from_millis(500));
        // The organization's bucket: one of 5 at 4 per second.
        assert_eq!(
            buckets["org:id-acme"].full_at,
            t0 + Duration::from_millis(250)
        );
    }

    #[test]
    fn overrides_and_zero_rates() {
        let mut config = config();
        config.organizations.insert(
            "acme".into(),
            OrganizationLimits {
                key_requests_per_second: Some(0.0),
                organization_requests_per_second: Some(0.0),
                max_request_bytes: Some(2048),
                max_streams: Some(7),
                ..Default::default()
            },
        );
        let limiter = Limiter::new(&config, 4096);
        let t0 = Instant::now();
        for _ in 0..100 {
            limiter.admit_at(&caller("k1", "acme"), t0).unwrap();
        }
        assert_eq!(limiter.max_request_bytes(&caller("k1", "acme")), 2048);
        assert_eq!(limiter.max_request_bytes(&caller("k1", "bigshop")), 4096);
        assert_eq!(limiter.max_streams("acme"), Some(7));
        assert_eq!(limiter.max_streams("bigshop"), None);
    }
}
