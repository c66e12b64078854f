//! Who is calling: API keys from `authorization: Bearer <key>` metadata.
//!
//! A key is looked up by the SHA-256 of its secret (fast; see [`ApiKeySecret::hash`]),
//! and the result is cached for [`CACHE_TTL`] so a busy partner does not cost a
//! database read per RPC. A cached entry holds only while the credential generation
//! it was read at is current (`Store::credentials`): revoking a key or a certificate,
//! or suspending an organization, on any replica or from `liaison admin`, empties
//! every replica's cache within a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;

pub use crate::domain::caller::Caller;
use crate::domain::client_cert::{PresentedCertificate, common_name, fingerprint};
use crate::domain::error::{Error, Result};
use crate::domain::{ApiKeySecret, Principal, now};
use crate::store::Store;

/// How long a looked-up key is trusted without asking the database again. Revocation
/// and suspension do not wait for it (the credential generation empties the cache);
/// it only bounds how long an entry lives in memory.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// Entries kept at most; beyond this the cache starts over rather than grow unbounded
/// under a flood of distinct (valid) keys.
const CACHE_CAPACITY: usize = 10_000;

/// The caller the edge attached to `request`.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Result<Caller> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated {
            reason: "MISSING_CREDENTIALS",
            message: "no API key was presented".into(),
        })
}

struct Cached {
    caller: Caller,
    expire_time: Option<Timestamp>,
    fetched: Instant,
    /// The credential generation current before the record was read.
    generation: u64,
}

pub struct Authenticator {
    store: Store,
    /// By `key:{hash}` for API keys and `cert:{fingerprint}` for client certificates.
    cache: Mutex<HashMap<String, Cached>>,
}

fn unauthenticated(reason: &'static str, message: &str) -> Error {
    Error::Unauthenticated {
        reason,
        message: message.to_owned(),
    }
}

impl Authenticator {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the value of an `authorization` header.
    pub async fn authenticate(&self, header: Option<&[u8]>) -> Result<Caller> {
        let header = header.ok_or_else(|| {
            unauthenticated(
                "MISSING_CREDENTIALS",
                "send an API key as `authorization: Bearer <key>` (gRPC metadata or HTTP header)",
            )
        })?;
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                unauthenticated(
                    "MALFORMED_CREDENTIALS",
                    "the authorization metadata or header must be `Bearer <key>`",
                )
            })?;
        let secret = ApiKeySecret::parse(token)
            .ok_or_else(|| unauthenticated("INVALID_KEY", "the API key is not valid"))?;
        let hash = secret.hash();
        let now = now();
        let cache_key = format!("key:{}", hash.0);
        let generation = self.store.credential_generation();
        let (caller, expire_time) = match self.cached(&cache_key) {
            Some(hit) => hit,
            None => {
                let record =
                    self.store.api_key_by_hash(&hash).await?.ok_or_else(|| {
                        unauthenticated("INVALID_KEY", "the API key is not valid")
                    })?;
                if record.key.revoke_time.is_some() {
                    return Err(unauthenticated(
                        "KEY_REVOKED",
                        "the API key has been revoked",
                    ));
                }
                if !record.owner_active {
                    return Err(unauthenticated(
                        "ORGANIZATION_SUSPENDED",
                        "the key's organization is suspended",
                    ));
                }
                let caller = Caller {
                    key_id: record.key.id,
                    principal: record.key.principal,
                    scopes: record.key.scopes,
                };
                self.remember(cache_key, &caller, record.key.expire_time, generation);
                (caller, record.key.expire_time)
            }
        };
        if expire_time.is_some_and(|t| t <= now) {
            return Err(unauthenticated("KEY_EXPIRED", "the API key has expired"));
        }
        Ok(caller)
    }

    /// Authenticates the leaf certificate (DER) a mutual TLS client presented; the TLS
    /// layer has already checked it against `tls.client_ca`, including its validity
    /// period. It must match a live registration of an active organization.
    pub async fn authenticate_certificate(&self, der: &[u8]) -> Result<Caller> {
        let fingerprint = fingerprint(der);
        let cache_key = format!("cert:{fingerprint}");
        let generation = self.store.credential_generation();
        if let Some((caller, _)) = self.cached(&cache_key) {
            return Ok(caller);
        }
        // The subject is read only on a miss; a hit costs one hash.
        let presented = PresentedCertificate {
            fingerprint,
            common_name: common_name(der),
        };
        let record = self
            .store
            .client_certificate_for(&presented)
            .await?
            .ok_or_else(|| {
                unauthenticated(
                    "UNKNOWN_CERTIFICATE",
                    "the client certificate is not registered to an organization",
                )
            })?;
        if !record.owner_active {
            return Err(unauthenticated(
                "ORGANIZATION_SUSPENDED",
                "the certificate's organization is suspended",
            ));
        }
        let certificate = record.certificate;
        let caller = Caller {
            key_id: format!("cert:{}", certificate.id),
            principal: Principal::Organization(certificate.organization),
            scopes: certificate.scopes,
        };
        self.remember(cache_key, &caller, None, generation);
        Ok(caller)
    }

    fn cached(&self, key: &str) -> Option<(Caller, Option<Timestamp>)> {
        let generation = self.store.credential_generation();
        let cache = self.cache.lock().expect("key cache poisoned");
        cache
            .get(key)
            .filter(|c| c.fetched.elapsed() < CACHE_TTL && c.generation == generation)
            .map(|c| (c.caller.clone(), c.expire_time))
    }

    fn remember(
        &self,
        key: String,
        caller: &Caller,
        expire_time: Option<Timestamp>,
        generation: u64,
    ) {
        let mut cache = self.cache.lock().expect("key cache poisoned");
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        let entry = Cached {
            caller: caller.clone(),
            expire_time,
            fetched: Instant::now(),
            generation,
        };
        cache.insert(key, entry);
    }

    /// Forgets every cached key: call after revoking a key or suspending an organization.
    pub fn forget_all(&self) {
        self.cache.lock().expect("key cache poisoned").clear();
    }
}
