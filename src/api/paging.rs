//! AIP-158 pagination: `page_size` and sealed, opaque `page_token`s.
//!
//! A token holds the key of the last item returned (lists are ordered by an immutable,
//! unique key, so a page never skips or repeats an item however the data changes
//! between calls), the caller it was given to, a digest of the query it belongs to and
//! an expiry, sealed with ChaCha20-Poly1305. A caller can neither read nor forge one, and
//! a token works only for the caller, method, parent, filter and order it came from.
//!
//! The sealing keys are the hub's: given in config (`server.page_token_keys`), or kept in
//! the database's settings so every replica shares them. The first key seals; every key
//! listed opens, so a rotated-out key keeps its tokens working until it is dropped
//! (`liaison admin rotate-page-token-key` keeps it for [`RETIRED_KEY_LIFETIME`]; every
//! replica seals with the new key within [`REFRESH_INTERVAL`]).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::auth::Caller;
use crate::domain::Principal;
use crate::domain::error::{Error, Result};
use crate::store::Store;

pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger requests are served this many; bigger pages only make slow responses.
pub const MAX_PAGE_SIZE: usize = 1000;
/// How long a token continues its list: long enough for a slow consumer between two
/// pages, short enough that a leaked token soon stops working.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a key stays able to open tokens after a rotation replaced it: well past
/// [`TOKEN_LIFETIME`], so no token handed out before the rotation is refused.
pub const RETIRED_KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The settings row that holds the keys when the config names none.
const SETTING: &str = "page_token_keys";
/// At most this often a replica rereads the keys when it meets a token sealed with a
/// key it does not know (a rotation it has not picked up yet).
const RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// How often a replica rereads the stored keys anyway, so a rotation reaches every
/// replica's sealing within this long (tokens of the old key keep opening meanwhile).
const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
const KEY_BYTES: usize = 32;
const KEY_ID_BYTES: usize = 4;
/// The first byte of every token: its format.
const VERSION: u8 = 1;

struct SealKey {
    id: [u8; KEY_ID_BYTES],
    key: LessSafeKey,
}

impl SealKey {
    fn new(bytes: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(bytes.len() == KEY_BYTES, "a key is {KEY_BYTES} bytes");
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; KEY_ID_BYTES];
        id.copy_from_slice(&digest[..KEY_ID_BYTES]);
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| anyhow::anyhow!("not a ChaCha20-Poly1305 key"))?;
        Ok(Self {
            id,
            key: LessSafeKey::new(key),
        })
    }
}

/// One key as kept in the settings: base64, and when it stops opening tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    key: String,
    /// Unix seconds; `None` for the sealing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retire_after: Option<i64>,
}

/// The hub's page-token keys; shared by every List.
pub struct PageTokens {
    /// The first key seals; all of them open.
    keys: RwLock<Vec<SealKey>>,
    /// Where the keys are kept, unless the config names them.
    store: Option<Store>,
    last_load: Mutex<Instant>,
}

impl PageTokens {
    /// Keys from the config (base64, 32 bytes each; the first seals), or else the ones
    /// kept in the database, created on first start.
    pub async fn load(store: &Store, configured: &[String]) -> anyhow::Result<Self> {
        let (keys, store) = if configured.is_empty() {
            (stored_keys(store).await?, Some(store.clone()))
        } else {
            (
                decode_keys(configured).context("server.page_token_keys")?,
                None,
            )
        };
        Ok(Self {
            keys: RwLock::new(keys),
            store,
            last_load: Mutex::new(Instant::now()),
        })
    }

    /// Keys given directly (tests, and hubs whose keys are in config).
    pub fn with_keys(keys: &[[u8; KEY_BYTES]]) -> Self {
        Self {
            keys: RwLock::new(
                keys.iter()
                    .map(|k| SealKey::new(k).expect("32 bytes"))
                    .collect(),
            ),
            store: None,
            last_load: Mutex::new(Instant::now()),
        }
    }

    /// Reads `page_size` and `page_token` of a List by `caller`. `query` names
    /// everything besides the page that shapes the list (method, parent, filter, order);
    /// a token is valid only for the same caller and `query`, until it expires.
    pub async fn open(
        self: &Arc<Self>,
        caller: &Caller,
        page_size: i32,
        page_token: &str,
        query: &str,
    ) -> Result<PageRequest> {
        let size = match page_size {
            n if n < 0 => return Err(Error::invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        if self.store.is_some() && self.loaded_before(REFRESH_INTERVAL) {
            self.reload().await;
        }
        let holder = holder_of(caller);
        let query = query_digest(query);
        let after = if page_token.is_empty() {
            None
        } else {
            let sealed = self.unseal(page_token).await?;
            if sealed.holder != holder {
                return Err(Error::invalid(
                    "page_token",
                    "was given to another caller; start again without one",
                ));
            }
            if sealed.query != query {
                return Err(Error::invalid(
                    "page_token",
                    "belongs to a different query; send the same parent, filter and order \
                     as the first page",
                ));
            }
            if sealed.expires < jiff::Timestamp::now().as_second() {
                return Err(Error::invalid(
                    "page_token",
                    "has expired; start again without one",
                ));
            }
            Some(sealed.after)
        };
        Ok(PageRequest {
            size,
            after,
            holder,
            query,
            tokens: self.clone(),
        })
    }

    fn seal(&self, contents: &Sealed) -> String {
        let plain = serde_json::to_vec(contents).expect("token contents serialize");
        let keys = self.keys.read().expect("page keys lock");
        let key = keys.first().expect("at least one key");
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("randomness");
        let mut sealed = plain;
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([VERSION]),
                &mut sealed,
            )
            .expect("sealing in memory does not fail");
        let mut token = Vec::with_capacity(1 + KEY_ID_BYTES + NONCE_LEN + sealed.len());
        token.push(VERSION);
        token.extend_from_slice(&key.id);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(token)
    }

    async fn unseal(&self, token: &str) -> Result<Sealed> {
        let invalid = || {
            Error::invalid(
                "page_token",
                "is not a token this list returned; start again without one",
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        if bytes.len() < 1 + KEY_ID_BYTES + NONCE_LEN || bytes[0] != VERSION {
            return Err(invalid());
        }
        let (id, rest) = bytes[1..].split_at(KEY_ID_BYTES);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        if !self.knows(id) {
            // Perhaps sealed with a key another replica rotated in since we loaded ours.
            self.reload().await;
        }
        let keys = self.keys.read().expect("page keys lock");
        let key = keys.iter().find(|k| k.id == id).ok_or_else(|| {
            Error::invalid(
                "page_token",
                "was sealed with a key this hub no longer holds; start again without one",
            )
        })?;
        let mut plain = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| invalid())?;
        let opened = key
            .key
            .open_in_place(nonce, Aad::from([VERSION]), &mut plain)
            .map_err(|_| invalid())?;
        serde_json::from_slice(opened).map_err(|_| invalid())
    }

    fn knows(&self, id: &[u8]) -> bool {
        self.keys
            .read()
            .expect("page keys lock")
            .iter()
            .any(|k| k.id == id)
    }

    fn loaded_before(&self, age: Duration) -> bool {
        self.last_load.lock().expect("page keys lock").elapsed() >= age
    }

    /// Rereads the stored keys, at most once per [`RELOAD_INTERVAL`].
    async fn reload(&self) {
        let Some(store) = &self.store else { return };
        {
            let mut last = self.last_load.lock().expect("page keys lock");
            if last.elapsed() < RELOAD_INTERVAL {
                return;
            }
            *last = Instant::now();
        }
        match stored_keys(store).await {
            Ok(keys) => *self.keys.write().expect("page keys lock") = keys,
            Err(e) => tracing::warn!(error = %e, "could not reread the page-token keys"),
        }
    }
}

/// A new sealing key in the database's settings; the previous ones keep opening
/// tokens for [`RETIRED_KEY_LIFETIME`]. Replicas pick the new key up as they meet it.
pub async fn rotate_stored_key(store: &Store) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now().as_second();
    let retire = now + RETIRED_KEY_LIFETIME.as_secs() as i64;
    store
        .update_setting(SETTING, |current| {
            let mut keys: Vec<StoredKey> = match current {
                Some(raw) => serde_json::from_str(raw).context("the stored page-token keys")?,
                None => vec![],
            };
            keys.retain(|k| k.retire_after.is_none_or(|t| t > now));
            for k in &mut keys {
                k.retire_after.get_or_insert(retire);
            }
            keys.insert(0, fresh_key()?);
            Ok(serde_json::to_string(&keys)?)
        })
        .await
}

fn fresh_key() -> anyhow::Result<StoredKey> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(StoredKey {
        key: STANDARD.encode(bytes),
        retire_after: None,
    })
}

async fn stored_keys(store: &Store) -> anyhow::Result<Vec<SealKey>> {
    let first = serde_json::to_string(&[fresh_key()?])?;
    let raw = store
        .setting_or_insert(SETTING, &first)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stored: Vec<StoredKey> =
        serde_json::from_str(&raw).context("the stored page-token keys")?;
    let now = jiff::Timestamp::now().as_second();
    let live: Vec<String> = stored
        .into_iter()
        .filter(|k| k.retire_after.is_none_or(|t| t > now))
        .map(|k| k.key)
        .collect();
    decode_keys(&live).context("the stored page-token keys")
}

fn decode_keys(raw: &[String]) -> anyhow::Result<Vec<SealKey>> {
    anyhow::ensure!(!raw.is_empty(), "at least one key is needed");
    raw.iter()
        .enumerate()
        .map(|(i, k)| {
            let bytes = STANDARD
                .decode(k.trim())
                .with_context(|| format!("key {}: not base64", i + 1))?;
            SealKey::new(&bytes).with_context(|| format!("key {}", i + 1))
        })
        .collect()
}

/// What a token carries; sealed, so the caller reads none of it.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// Who it was given to (`org:ID` or `operator`).
    #[serde(rename = "h")]
    holder: String,
    /// The digest of the query it continues.
    #[serde(rename = "q")]
    query: String,
    /// Unix seconds after which it is refused.
    #[serde(rename = "e")]
    expires: i64,
    /// The key of the last item of the previous page.
    #[serde(rename = "a")]
    after: String,
}

fn holder_of(caller: &Caller) -> String {
    match &caller.principal {
        Principal::Organization(org) => format!("org:{}", org.id),
        Principal::Operator => "operator".to_owned(),
    }
}

fn query_digest(query: &str) -> String {
    let digest = Sha256::digest(query.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// One page of a List as the caller asked for it.
pub struct PageRequest {
    pub size: usize,
    /// Continue after the item with this key.
    pub after: Option<String>,
    holder: String,
    query: String,
    tokens: Arc<PageTokens>,
}

impl PageRequest {
    /// The token for the page after the one that ended at `after` (empty if none).
    /// `after` must be the key of an item the caller was shown.
    pub fn next_token(&self, after: Option<String>) -> String {
        after
            .map(|after| {
                self.tokens.seal(&Sealed {
                    holder: self.holder.clone(),
                    query: self.query.clone(),
                    expires: jiff::Timestamp::now().as_second() + TOKEN_LIFETIME.as_secs() as i64,
                    after,
                })
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OrgRef, Scope, Scopes, Slug};

    fn caller(org: &str) -> Caller {
        Caller {
            key_id: "k".into(),
            principal: Principal::Organization(OrgRef {
                id: org.into(),
                slug: Slug::parse(org).unwrap(),
            }),
            scopes: Scopes::new(vec![Scope::Read]).unwrap(),
        }
    }

    fn tokens(keys: &[[u8; 32]]) -> Arc<PageTokens> {
        Arc::new(PageTokens::with_keys(keys))
    }

    #[tokio::test]
    async fn tokens_continue_only_the_caller_and_query_they_came_from() {
        let pages = tokens(&[[7; 32]]);
        let acme = caller("acme");
        let first = pages.open(&acme, 10, "", "members:acme").await.unwrap();
        let token = first.next_token(Some("secret-sort-value".into()));
        let again = pages.open(&acme, 10, &token, "members:acme").await.unwrap();
        assert_eq!(again.after.as_deref(), Some("secret-sort-value"));

        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        assert!(
            !bytes.windows(b"secret".len()).any(|w| w == b"secret"),
            "the token shows its contents"
        );
        let message = |e: Error| e.to_string();
        let other = pages
            .open(&caller("shop"), 10, &token, "members:acme")
            .await;
        assert!(message(other.err().unwrap()).contains("another caller"));
        let query = pages.open(&acme, 10, &token, "members:other").await;
        assert!(message(query.err().unwrap()).contains("different query"));
        assert!(
            pages
                .open(&acme, 10, "garbage!", "members:acme")
                .await
                .is_err()
        );
        // One flipped bit anywhere: refused.
        let mut forged = bytes.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let forged = URL_SAFE_NO_PAD.encode(forged);
        assert!(
            pages
                .open(&acme, 10, &forged, "members:acme")
                .await
                .is_err()
        );
        assert_eq!(first.next_token(None), "");
    }

    #[tokio::test]
    async fn expired_tokens_are_refused() {
        let pages = tokens(&[[7; 32]]);
        let acme = caller("acme");
        let token = pages.seal(&Sealed {
            holder: holder_of(&acme),
            query: query_digest("q"),
            expires: jiff::Timestamp::now().as_second() - 1,
            after: "x".into(),
        });
        let err = pages.open(&acme, 10, &token, "q").await.err().unwrap();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn a_rotated_out_key_still_opens_its_tokens() {
        let old = tokens(&[[1; 32]]);
        let acme = caller("acme");
        let token = old
            .open(&acme, 10, "", "q")
            .await
            .unwrap()
            .next_token(Some("k".into()));
        let rotated = tokens(&[[2; 32], [1; 32]]);
        let page = rotated.open(&acme, 10, &token, "q").await.unwrap();
        assert_eq!(page.after.as_deref(), Some("k"));
        let fresh = page.next_token(Some("k2".into()));
        // New tokens are sealed with the new key: a hub with only the old one refuses.
        assert!(old.open(&acme, 10, &fresh, "q").await.is_err());
        let dropped = tokens(&[[2; 32]]);
        let err = dropped.open(&acme, 10, &token, "q").await.err().unwrap();
        assert!(err.to_string().contains("no longer holds"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever a client sends as a token, and however a real one is mangled, the
        /// answer is a page or INVALID_ARGUMENT: never a panic, never INTERNAL.
        #[test]
        fn no_token_panics_or_fails_inside(
            raw in ".{0,200}",
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
            flip in 0usize..200,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let pages = tokens(&[[7; 32]]);
                let acme = caller("acme");
                let real = pages
                    .open(&acme, 1, "", "q")
                    .await
                    .unwrap()
                    .next_token(Some("k".into()));
                let mut mangled = URL_SAFE_NO_PAD.decode(&real).unwrap();
                let at = flip % mangled.len();
                mangled[at] ^= 0x5a;
                for token in [
                    raw.clone(),
                    URL_SAFE_NO_PAD.encode(&bytes),
                    URL_SAFE_NO_PAD.encode(&mangled),
                    format!("{real}{raw}"),
                ] {
                    if let Err(e) = pages.open(&acme, 1, &token, "q").await {
                        assert_eq!(crate::api::status::code(&e), tonic::Code::InvalidArgument, "{e}");
                        assert_eq!(e.reason(), "INVALID_PAGE_TOKEN");
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn sizes_default_and_clamp() {
        let pages = tokens(&[[7; 32]]);
        let acme = caller("acme");
        let size = |n| {
            let pages = pages.clone();
            let acme = acme.clone();
            async move { pages.open(&acme, n, "", "q").await.map(|p| p.size) }
        };
        assert_eq!(size(0).await.unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(size(5000).await.unwrap(), MAX_PAGE_SIZE);
        assert!(size(-1).await.is_err());
    }
}
